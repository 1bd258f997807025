"""Perlin-noise masks for Local Anomaly Synthesis (LAS).

One mask: 2-D gradient noise whose lattice has ``2^a × 2^b`` cells (``a, b`` drawn independently from
``{0..5}``), rotated about the image centre by an angle drawn from (−90°, 90°) and thresholded at 0.5.
Two such masks ``m1, m2`` and ``p ~ U(0, 1)`` give the final mask. The paper writes the rule as
``p ≤ 1/3 → m1 ∧ m2``, ``1/3 < p ≤ 2/3 → m1 ∨ m2``, else ``m1``; the reference code assigns the thirds the
other way round (``p > 2/3 → ∨``, ``1/3 < p ≤ 2/3 → ∧``, else ``m1``). ``p`` is uniform, so both give each
rule with probability 1/3; this module follows the code.

:func:`draw_perlin_mask` is the one redraw loop (∧ foreground, redraw until large enough) used by LAS
(:mod:`glass_ad.synthesis.las`) and the weak-defect test sets (:mod:`glass_ad.research.weak_defects`); what to do when every
draw fails stays with the caller.
"""

from __future__ import annotations

import math

import cv2
import numpy as np

__all__ = [
    "THRESHOLD",
    "MIN_SCALE_EXP",
    "MAX_SCALE_EXP",
    "perlin_noise",
    "perlin_mask",
    "combined_perlin_mask",
    "draw_perlin_mask",
    "as_hw",
]

THRESHOLD = 0.5
MIN_SCALE_EXP = 0
MAX_SCALE_EXP = 6  # exclusive: lattices of 1, 2, 4, 8, 16 or 32 cells per side (the reference's 0..6)


def _fade(t: np.ndarray) -> np.ndarray:
    """Perlin's quintic 6t⁵ − 15t⁴ + 10t³: zero first and second derivative at the lattice points."""
    return t * t * t * (t * (t * 6.0 - 15.0) + 10.0)


def perlin_noise(shape: tuple[int, int], scale: tuple[int, int], generator: np.random.Generator) -> np.ndarray:
    """Gradient (Perlin) noise of ``shape`` with ``scale[i]`` lattice cells along axis ``i``.

    Values lie in about [−1, 1] (the √2 factor stretches the natural ±√½ range, as the reference does).
    Every cell spans ``ceil(shape / scale)`` pixels; when the shape is not divisible by the scale the noise
    is computed on the enclosing padded grid and cropped. Returns float32.
    """
    height, width = int(shape[0]), int(shape[1])
    cells_y, cells_x = max(1, int(scale[0])), max(1, int(scale[1]))
    step_y, step_x = -(-height // cells_y), -(-width // cells_x)  # pixels per cell (ceil)
    angles = generator.random((cells_y + 1, cells_x + 1)) * (2.0 * math.pi)
    # Gradient component 0 pairs with the axis-0 offset, component 1 with the axis-1 offset.
    # The √2 output factor is folded into the gradients (everything is linear in them).
    g0 = (np.cos(angles) * math.sqrt(2.0)).astype(np.float32)
    g1 = (np.sin(angles) * math.sqrt(2.0)).astype(np.float32)
    # Every cell has the same sub-pixel offsets, so the field is laid out as cells_y × step_y × cells_x × step_x.
    # The corner dot products are sums of a y-only and an x-only term; interpolating along y first keeps all
    # of that on the small cells_y × step_y × cells_x × 1 grid, and only a few products touch every pixel.
    fy = (np.arange(step_y, dtype=np.float32) / step_y)[None, :, None, None]
    fx = (np.arange(step_x, dtype=np.float32) / step_x)[None, None, None, :]
    wy, wx = _fade(fy), _fade(fx)

    def column(dx: int) -> tuple[np.ndarray, np.ndarray]:
        """Noise along y at lattice column ``dx`` as ``a + b · (fx − dx)`` (a, b: cells_y×step_y×cells_x×1)."""
        top0 = g0[:cells_y, dx : dx + cells_x][:, None, :, None]
        bottom0 = g0[1:, dx : dx + cells_x][:, None, :, None]
        top1 = g1[:cells_y, dx : dx + cells_x][:, None, :, None]
        bottom1 = g1[1:, dx : dx + cells_x][:, None, :, None]
        a = top0 * fy + wy * (bottom0 * (fy - 1.0) - top0 * fy)
        b = top1 + wy * (bottom1 - top1)
        return a, b

    a0, b0 = column(0)
    a1, b1 = column(1)
    # noise = (a0 + b0·fx) + wx · ((a1 + b1·(fx − 1)) − (a0 + b0·fx))
    noise = a0 + b0 * fx
    noise += wx * ((a1 - a0) - b1) + (wx * fx) * (b1 - b0)
    noise = noise.reshape(cells_y * step_y, cells_x * step_x)[:height, :width]
    return np.ascontiguousarray(noise)


def as_hw(size: int | tuple[int, int]) -> tuple[int, int]:
    """``size`` (an int side of a square, or ``(height, width)``) as ``(height, width)``."""
    return (int(size), int(size)) if np.isscalar(size) else (int(size[0]), int(size[1]))


def perlin_mask(
    size: int | tuple[int, int],
    rng: np.random.Generator,
    min_scale_exp: int = MIN_SCALE_EXP,
    max_scale_exp: int = MAX_SCALE_EXP,
    threshold: float = THRESHOLD,
) -> np.ndarray:
    """One binary mask (bool, ``size × size`` or ``H × W``): noise at scale ``(2^a, 2^b)`` with
    ``a, b ∈ [min_scale_exp, max_scale_exp)``, rotated by U(−90°, 90°), thresholded at ``threshold``."""
    height, width = as_hw(size)
    scale = (2 ** int(rng.integers(min_scale_exp, max_scale_exp)), 2 ** int(rng.integers(min_scale_exp, max_scale_exp)))
    noise = perlin_noise((height, width), scale, rng)
    angle = float(rng.uniform(-90.0, 90.0))
    # Rotation about the pixel-grid centre, bilinear, zero outside (the reference: imgaug Affine, order 1,
    # constant 0): corners that rotate in from outside the image stay below the threshold.
    rotation = cv2.getRotationMatrix2D(((width - 1) / 2.0, (height - 1) / 2.0), angle, 1.0)
    noise = cv2.warpAffine(
        noise, rotation, (width, height), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT, borderValue=0.0
    )
    return noise > threshold


def combined_perlin_mask(
    size: int | tuple[int, int],
    rng: np.random.Generator,
    min_scale_exp: int = MIN_SCALE_EXP,
    max_scale_exp: int = MAX_SCALE_EXP,
) -> tuple[np.ndarray, str]:
    """Two Perlin masks combined by the ∧ / ∨ / single rule; returns ``(mask bool, "and" | "or" | "single")``.

    Draw order (fixed, so results are reproducible from a seed): ``m1``, ``m2``, then ``p``. The mask may be
    empty (a coarse lattice can stay below the threshold everywhere); callers redraw.
    """
    first = perlin_mask(size, rng, min_scale_exp, max_scale_exp)
    second = perlin_mask(size, rng, min_scale_exp, max_scale_exp)
    p = float(rng.random())
    if p > 2.0 / 3.0:
        return first | second, "or"
    if p > 1.0 / 3.0:
        return first & second, "and"
    return first, "single"


def draw_perlin_mask(
    size: int | tuple[int, int],
    rng: np.random.Generator,
    *,
    foreground: np.ndarray | None = None,
    min_pixels: float = 1.0,
    max_draws: int = 32,
    foreground_tries: int | None = None,
) -> tuple[np.ndarray, str]:
    """A combined Perlin mask (bool ``H × W``) ∧ ``foreground``, and its rule, redrawn until it covers at
    least ``min_pixels`` pixels.

    Non-square sizes (rectangular network inputs, full-resolution weak-defect images) are drawn on the
    enclosing ``max(H, W)`` square and centre-cropped, so a lattice scale and the rotation mean the same at
    every aspect ratio; a square size draws exactly what it always did (same seed, same mask). After ``foreground_tries`` draws that miss (None: never) the
    foreground is given up and the Perlin mask alone is used. When all ``max_draws`` draws fall short, the
    largest mask drawn is returned (the first one on ties; empty when every draw was): the caller decides
    what an empty mask means.
    """
    height, width = as_hw(size)
    side = max(height, width)
    top, left = (side - height) // 2, (side - width) // 2
    best: tuple[np.ndarray, str] | None = None
    for attempt in range(max_draws):
        square, rule = combined_perlin_mask(side, rng)
        mask = square[top : top + height, left : left + width]
        if foreground is not None:
            mask = mask & foreground
        covered = int(np.count_nonzero(mask))
        if covered >= max(1.0, min_pixels):
            return mask, rule
        if best is None or covered > int(np.count_nonzero(best[0])):
            best = (mask, rule)
        if foreground_tries is not None and attempt + 1 == foreground_tries:
            foreground = None  # the foreground keeps missing the Perlin blobs: give it up
    if best is None:  # max_draws < 1
        return np.zeros((height, width), dtype=bool), "single"
    return best
