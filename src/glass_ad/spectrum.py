"""GLASS-j: choose manifold or hypersphere GAS from the mean training image's spectrum.

Mean image → grey → 289×289 → 39×39 box blur → 2-D DFT, centred → magnitude 20·ln|F| → points above
170. With n points, their largest |dx| and |dy| from the centre and their largest radius R:
density1 = n / (4·max|dx|·max|dy|) and density2 = n / (grid points within R of the centre, counted over
a 2h×2w index grid as the reference does). Hypersphere iff (density1 > 0.21 or density2 > 0.21) and
R > 12 and n > 60; manifold otherwise. A concentrated, dense low-frequency blob (an aligned object on a
plain background) means the normal features form a compact cloud: hypersphere.
"""

from __future__ import annotations

from typing import Any

import cv2
import numpy as np

SIZE = 289
BLUR = 39
LEVEL = 170.0
DENSITY = 0.21
MIN_RADIUS = 12
MIN_POINTS = 60


def spectrogram_stats(mean_image: np.ndarray) -> dict[str, Any]:
    """Statistics of the thresholded log spectrum of an H×W×3 (RGB, 0–255) or H×W image."""
    image = np.asarray(mean_image, dtype=np.float32)
    grey = image if image.ndim == 2 else cv2.cvtColor(image, cv2.COLOR_RGB2GRAY)
    # The reference blurs an 8-bit image: keep the same quantisation.
    grey = np.clip(grey, 0, 255).astype(np.uint8)
    grey = cv2.resize(grey, (SIZE, SIZE), interpolation=cv2.INTER_LINEAR)
    grey = cv2.blur(grey, (BLUR, BLUR)).astype(np.float32)
    spectrum = np.fft.fftshift(np.fft.fft2(grey))
    magnitude = 20.0 * np.log(np.abs(spectrum) + 1e-12)
    cy, cx = SIZE // 2, SIZE // 2
    ys, xs = np.nonzero(magnitude > LEVEL)
    n = int(len(ys))
    side_x = int(np.abs(xs - cx).max()) if n else 0
    side_y = int(np.abs(ys - cy).max()) if n else 0
    radius = float(np.sqrt((xs - cx) ** 2 + (ys - cy) ** 2).max()) if n else 0.0
    grid_y, grid_x = np.indices((2 * SIZE, 2 * SIZE))
    within = int(np.count_nonzero((grid_x - cx) ** 2 + (grid_y - cy) ** 2 <= radius**2))
    density1 = n / (4.0 * max(side_x, 1) * max(side_y, 1))
    density2 = n / (within + 1e-10)
    return {
        "n": n,
        "side_x": side_x,
        "side_y": side_y,
        "radius": radius,
        "density1": density1,
        "density2": density2,
    }


def choose_hypothesis(mean_image: np.ndarray) -> tuple[str, dict[str, Any]]:
    """("hypersphere" | "manifold", stats) by the spectrogram rule."""
    stats = spectrogram_stats(mean_image)
    dense = stats["density1"] > DENSITY or stats["density2"] > DENSITY
    hypersphere = dense and stats["radius"] > MIN_RADIUS and stats["n"] > MIN_POINTS
    return ("hypersphere" if hypersphere else "manifold"), stats
