"""GLASS-j: choose manifold or hypersphere GAS from the spectrum of the mean training image.

Steps (constants of the reference's ``distribution_judge``): the mean image as 8-bit (the reference
truncates, it does not round) → resize to 289×289 (bilinear) → grey → 39×39 box blur → 2-D DFT, zero
frequency shifted to the centre (144, 144) → magnitude 20·ln|F| → the points above 170 (|F| > e^8.5).

With n points, ``side_x = max |x − 144|``, ``side_y = max |y − 144|`` and R their largest distance from the
centre:

* density1 = n / (4 · max(side_x, 1) · max(side_y, 1))  — fill of the bounding box;
* density2 = n / #(grid points within R of the centre)  — fill of the disc. As in the reference the grid is
  the index grid of a 2h × 2w array starting at 0, so for R > 144 only part of the disc is counted.

Hypersphere iff (density1 > 0.21 or density2 > 0.21) and R > 12 and n > 60; manifold otherwise. A dense,
wide blob of strong low frequencies (an aligned object on a plain background) means the normal features
form one compact cloud; a few isolated peaks (textures, surfaces — their mean image is nearly flat) mean a
manifold. An all-black mean image has no points (n = 0): manifold, no division by zero.

A rectangular network input (H×W, ``GlassConfig.input_shape``) gives an H×W mean image; it is stretched to
289×289 like any other, so the rule and its constants stay those of the reference (the decision equals the
one on that mean image squeezed to a square, which is what square training with ``fit="stretch"`` sees). A
square mean image goes through exactly the same steps as before.
"""

from __future__ import annotations

from typing import Any, Iterable

import cv2
import numpy as np

__all__ = ["spectrogram_stats", "choose_hypothesis", "mean_image"]

SIZE = 289
BLUR = 39
LEVEL = 170.0
DENSITY = 0.21
MIN_RADIUS = 12
MIN_POINTS = 60


def _grid_points_within(squared_radius: int) -> int:
    """Points of the reference's index grid (2·SIZE × 2·SIZE, origin at 0) within the given squared
    distance of the centre, counted row by row (exact integer arithmetic, no 578² array)."""
    centre, extent = SIZE // 2, 2 * SIZE
    dy = np.arange(extent, dtype=np.int64) - centre
    remaining = squared_radius - dy * dy
    rows = remaining >= 0
    half = np.floor(np.sqrt(np.maximum(remaining, 0))).astype(np.int64)
    half += (half + 1) ** 2 <= remaining  # guard the float square root at perfect squares
    half -= half * half > remaining
    low = np.maximum(-half, -centre)
    high = np.minimum(half, extent - 1 - centre)
    return int(np.sum(np.where(rows, high - low + 1, 0)))


def spectrogram_stats(mean_image: np.ndarray) -> dict[str, Any]:
    """Statistics of the thresholded log spectrum of an H×W×3 RGB (or H×W grey) image with values in [0, 255]
    (any H and W: it is resized to 289×289 first)."""
    image = np.asarray(mean_image)
    if image.ndim not in (2, 3):
        raise ValueError(f"expected an H×W or H×W×3 image, got shape {image.shape}")
    if image.dtype != np.uint8:
        image = np.clip(np.nan_to_num(image.astype(np.float64)), 0, 255).astype(np.uint8)  # truncation
    if image.ndim == 3:
        image = np.ascontiguousarray(image[..., :3]) if image.shape[2] >= 3 else np.ascontiguousarray(image[..., 0])
    resized = cv2.resize(image, (SIZE, SIZE), interpolation=cv2.INTER_LINEAR)
    grey = cv2.cvtColor(resized, cv2.COLOR_RGB2GRAY) if resized.ndim == 3 else resized
    grey = cv2.blur(grey, (BLUR, BLUR))  # on 8 bits, like the reference

    spectrum = np.fft.fftshift(np.fft.fft2(grey.astype(np.float64)))
    with np.errstate(divide="ignore"):  # |F| = 0 gives −inf: below the level, as intended
        magnitude = 20.0 * np.log(np.abs(spectrum))
    centre = SIZE // 2
    ys, xs = np.nonzero(magnitude > LEVEL)
    n = int(ys.size)
    if n:
        dy, dx = ys - centre, xs - centre
        side_x, side_y = int(np.abs(dx).max()), int(np.abs(dy).max())
        squared_radius = int((dx * dx + dy * dy).max())
    else:
        side_x = side_y = squared_radius = 0
    radius = float(np.sqrt(squared_radius))
    within = _grid_points_within(squared_radius) if n else 0
    density1 = n / (4.0 * max(side_x, 1) * max(side_y, 1))
    density2 = n / within if within else 0.0
    return {
        "n": n,
        "side_x": side_x,
        "side_y": side_y,
        "radius": radius,
        "density1": float(density1),
        "density2": float(density2),
    }


def choose_hypothesis(mean_image: np.ndarray) -> tuple[str, dict[str, Any]]:
    """``("hypersphere" | "manifold", stats)`` by the spectrogram rule (module docstring)."""
    stats = spectrogram_stats(mean_image)
    dense = stats["density1"] > DENSITY or stats["density2"] > DENSITY
    hypersphere = dense and stats["radius"] > MIN_RADIUS and stats["n"] > MIN_POINTS
    return ("hypersphere" if hypersphere else "manifold"), stats


def mean_image(images: Iterable[np.ndarray]) -> np.ndarray:
    """Pixel-wise mean (float64, H×W×3, values in [0, 255]) of uint8 H×W×3 images of one size.

    Streams: only the running sum is kept, so any number of images fits in memory.
    """
    total: np.ndarray | None = None
    count = 0
    for image in images:
        array = np.asarray(image)
        if total is None:
            total = np.zeros(array.shape, dtype=np.float64)
        elif array.shape != total.shape:
            raise ValueError(f"all images must have the same shape: {array.shape} after {total.shape}")
        total += array
        count += 1
    if total is None:
        raise ValueError("mean_image needs at least one image")
    return total / count
