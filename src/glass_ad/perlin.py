"""Perlin-noise masks for Local Anomaly Synthesis.

Each mask: gradient noise at a lattice scale (2^a, 2^b), a, b ∈ {0..5} drawn independently, rotated by a
random angle in (−90°, 90°) and thresholded at 0.5. Two such masks are combined: with p ~ U(0, 1),
p ≤ 1/3 → m1 (single), 1/3 < p ≤ 2/3 → m1 ∧ m2, else m1 ∨ m2 — each rule a third of the time.
"""

from __future__ import annotations

import math

import cv2
import numpy as np

THRESHOLD = 0.5
MAX_SCALE_EXP = 6  # exclusive: scales 1, 2, 4, …, 32 lattice cells per side


def _fade(t: np.ndarray) -> np.ndarray:
    return t * t * t * (t * (t * 6 - 15) + 10)


def perlin_noise(shape: tuple[int, int], scale: tuple[int, int], rng: np.random.Generator) -> np.ndarray:
    """2-D gradient (Perlin) noise of `shape` with `scale` lattice cells per axis; values ≈ [−1, 1]."""
    height, width = shape
    cells_y, cells_x = scale
    angles = rng.random((cells_y + 1, cells_x + 1)) * 2 * math.pi
    grad_y, grad_x = np.sin(angles).astype(np.float32), np.cos(angles).astype(np.float32)
    # Position of every row / column in lattice units: the grid is separable, so keep 1-D vectors.
    ys = np.arange(height, dtype=np.float32) * (cells_y / height)
    xs = np.arange(width, dtype=np.float32) * (cells_x / width)
    iy, ix = ys.astype(np.int64), xs.astype(np.int64)
    fy, fx = (ys - iy)[:, None], (xs - ix)[None, :]

    def corner(dy: int, dx: int) -> np.ndarray:
        rows, cols = np.ix_(iy + dy, ix + dx)
        return grad_x[rows, cols] * (fx - dx) + grad_y[rows, cols] * (fy - dy)

    wy, wx = _fade(fy), _fade(fx)
    c00, c01, c10, c11 = corner(0, 0), corner(0, 1), corner(1, 0), corner(1, 1)
    top = c00 + wx * (c01 - c00)
    bottom = c10 + wx * (c11 - c10)
    return math.sqrt(2) * (top + wy * (bottom - top))


def perlin_mask(size: int, rng: np.random.Generator, max_scale_exp: int = MAX_SCALE_EXP) -> np.ndarray:
    """One binary mask: noise at a random scale, randomly rotated, thresholded at 0.5."""
    scale = (2 ** int(rng.integers(0, max_scale_exp)), 2 ** int(rng.integers(0, max_scale_exp)))
    noise = perlin_noise((size, size), scale, rng).astype(np.float32)
    angle = float(rng.uniform(-90.0, 90.0))
    rotation = cv2.getRotationMatrix2D((size / 2.0, size / 2.0), angle, 1.0)
    noise = cv2.warpAffine(noise, rotation, (size, size), flags=cv2.INTER_LINEAR, borderValue=0.0)
    return noise > THRESHOLD


def combined_perlin_mask(size: int, rng: np.random.Generator) -> tuple[np.ndarray, str]:
    """Two masks combined by the ∧ / ∨ / single rule; returns (mask, rule name)."""
    first, second = perlin_mask(size, rng), perlin_mask(size, rng)
    p = rng.random()
    if p <= 1 / 3:
        return first, "single"
    if p <= 2 / 3:
        return first & second, "and"
    return first | second, "or"
