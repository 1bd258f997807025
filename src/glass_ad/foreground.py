"""Foreground masks computed from the image (the reference code only loads pre-made mask files).

Rule: grey → blur → Otsu threshold; the object is the class that touches the image border less; closing,
hole filling and a small dilation keep it generous so anomalies may sit on the object's edge. A result
that covers under 5 % or over 95 % of the image, or whose foreground still touches much of the border,
is not an object: the whole image is returned.
"""

from __future__ import annotations

import cv2
import numpy as np
from scipy import ndimage

MIN_COVERAGE, MAX_COVERAGE = 0.05, 0.95
MAX_BORDER_TOUCH = 0.35  # fraction of border pixels the foreground may cover and still be an object


def _border(mask: np.ndarray) -> np.ndarray:
    return np.concatenate([mask[0], mask[-1], mask[:, 0], mask[:, -1]])


def _object_mask(image: np.ndarray) -> np.ndarray | None:
    grey = cv2.cvtColor(image, cv2.COLOR_RGB2GRAY) if image.ndim == 3 else image
    size = max(3, (min(grey.shape) // 64) | 1)
    grey = cv2.GaussianBlur(grey, (size, size), 0)
    _, binary = cv2.threshold(grey, 0, 1, cv2.THRESH_BINARY + cv2.THRESH_OTSU)
    binary = binary.astype(bool)
    if _border(binary).mean() > _border(~binary).mean():
        binary = ~binary
    kernel = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (size * 2 + 1, size * 2 + 1))
    binary = cv2.morphologyEx(binary.astype(np.uint8), cv2.MORPH_CLOSE, kernel).astype(bool)
    binary = ndimage.binary_fill_holes(binary)
    coverage = binary.mean()
    if not MIN_COVERAGE <= coverage <= MAX_COVERAGE or _border(binary).mean() > MAX_BORDER_TOUCH:
        return None
    return cv2.dilate(binary.astype(np.uint8), kernel).astype(bool)


def foreground_mask(image: np.ndarray) -> np.ndarray:
    """H×W bool foreground of an H×W×3 uint8 image (all True when no object stands out)."""
    mask = _object_mask(image)
    return mask if mask is not None else np.ones(image.shape[:2], dtype=bool)


def is_object_category(images: list[np.ndarray]) -> bool:
    """True when most images show one object on a background (use foreground masks), False for textures."""
    if not images:
        return False
    found = [_object_mask(image) is not None for image in images]
    return float(np.mean(found)) >= 0.75
