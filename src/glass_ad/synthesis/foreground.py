"""Foreground masks computed from the image, and the object-or-texture decision.

The paper keeps LAS anomalies on the object by intersecting the Perlin mask with a binarised normal image;
the reference code only loads pre-made mask files. Here the mask comes from the image itself:

1. grey (or, for colour images, the HSV saturation when it separates better) → Gaussian blur → Otsu;
2. polarity: the class that covers less of the image border is the object (objects sit in the middle,
   the background reaches the borders);
3. closing, hole filling, removal of specks (< 0.5 % of the image), then a dilation so the mask is
   generous and anomalies can sit on the object's edge.

An image "shows an object" when the result covers 5–95 % of the image and touches at most 35 % of the
border. Otherwise :func:`foreground_mask` returns an all-True mask (LAS may use the whole image), which is
always a safe answer.

:func:`is_object_category` (``foreground="auto"``) says object when at least 75 % of the images show an
object, the median coverage of those lies in 10–90 %, and the coverage is stable (interquartile range
≤ 0.25): the images of one object category show the same object at a similar size, while Otsu on a
texture gives blobs that reach every border.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import cv2
import numpy as np
from scipy import ndimage

__all__ = ["foreground_mask", "is_object_category", "analyse_foreground", "ForegroundInfo"]

MIN_COVERAGE, MAX_COVERAGE = 0.05, 0.95  # per image: outside this the mask is degenerate
MAX_BORDER_TOUCH = 0.35  # fraction of border pixels the object may cover
MIN_SPECK = 0.005  # connected components smaller than this fraction of the image are noise
CATEGORY_MIN_OBJECT_SHARE = 0.75
CATEGORY_COVERAGE = (0.10, 0.90)
CATEGORY_MAX_IQR = 0.25


@dataclass(frozen=True)
class ForegroundInfo:
    """What the foreground analysis of one image found."""

    mask: np.ndarray  # H×W bool, dilated; all True when `is_object` is False
    coverage: float  # fraction of the image in the (undilated) object mask
    border_touch: float  # fraction of border pixels inside the (undilated) object mask
    is_object: bool


def _border(mask: np.ndarray) -> np.ndarray:
    return np.concatenate([mask[0], mask[-1], mask[1:-1, 0], mask[1:-1, -1]])


def _otsu(channel: np.ndarray) -> tuple[np.ndarray, float]:
    """Otsu binarisation and its separability η = between-class / total variance (0..1)."""
    threshold, binary = cv2.threshold(channel, 0, 1, cv2.THRESH_BINARY + cv2.THRESH_OTSU)
    binary = binary.astype(bool)
    total = float(channel.var())
    share = float(binary.mean())
    if total <= 1e-9 or share in (0.0, 1.0):
        return binary, 0.0
    values = channel.astype(np.float32)
    between = share * (1 - share) * (float(values[binary].mean()) - float(values[~binary].mean())) ** 2
    return binary, between / total


def _odd(value: float) -> int:
    return max(3, int(value) | 1)


def analyse_foreground(image: np.ndarray) -> ForegroundInfo:
    """Foreground analysis of an H×W×3 (or H×W) uint8 image; see the module docstring for the rule."""
    image = np.asarray(image)
    if image.dtype != np.uint8:
        image = np.clip(image, 0, 255).astype(np.uint8)
    height, width = image.shape[:2]
    side = min(height, width)
    blur = _odd(side / 64)
    grey = image if image.ndim == 2 else cv2.cvtColor(np.ascontiguousarray(image[..., :3]), cv2.COLOR_RGB2GRAY)
    candidates = [cv2.GaussianBlur(grey, (blur, blur), 0)]
    coloured = image.ndim == 3 and not (
        np.array_equal(image[..., 0], image[..., 1]) and np.array_equal(image[..., 1], image[..., 2])
    )
    if coloured:
        # A coloured object on a grey background (or vice versa) can differ more in saturation than in grey.
        saturation = cv2.cvtColor(np.ascontiguousarray(image[..., :3]), cv2.COLOR_RGB2HSV)[..., 1]
        candidates.append(cv2.GaussianBlur(saturation, (blur, blur), 0))
    binary = max((_otsu(c) for c in candidates), key=lambda found: found[1])[0]

    if _border(binary).mean() > _border(~binary).mean():
        binary = ~binary
    close = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (_odd(side / 32),) * 2)
    binary = cv2.morphologyEx(binary.astype(np.uint8), cv2.MORPH_CLOSE, close).astype(bool)
    binary = ndimage.binary_fill_holes(binary)
    labels, count = ndimage.label(binary)
    if count > 1:
        sizes = np.bincount(labels.ravel(), minlength=count + 1)
        keep = sizes >= MIN_SPECK * binary.size
        keep[0] = False
        binary = keep[labels]

    coverage = float(binary.mean())
    touch = float(_border(binary).mean())
    is_object = MIN_COVERAGE <= coverage <= MAX_COVERAGE and touch <= MAX_BORDER_TOUCH
    if not is_object:
        return ForegroundInfo(np.ones((height, width), dtype=bool), coverage, touch, False)
    grow = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (_odd(side / 24),) * 2)
    mask = cv2.dilate(binary.astype(np.uint8), grow).astype(bool)
    return ForegroundInfo(mask, coverage, touch, True)


def foreground_mask(image: np.ndarray) -> np.ndarray:
    """H×W bool foreground of an H×W×3 uint8 image: the object, generously dilated, or all True when no
    object stands out (degenerate coverage or a mask that reaches much of the border)."""
    return analyse_foreground(image).mask


def is_object_category(images: Sequence[np.ndarray]) -> bool:
    """True when the images show an object on a background (use foreground masks), False for textures
    and surfaces (LAS uses the whole image). Rule in the module docstring; empty input → False."""
    if len(images) == 0:
        return False
    infos = [analyse_foreground(image) for image in images]
    objects = [info for info in infos if info.is_object]
    if len(objects) < CATEGORY_MIN_OBJECT_SHARE * len(infos):
        return False
    coverage = np.array([info.coverage for info in objects])
    low, high = CATEGORY_COVERAGE
    q25, median, q75 = np.percentile(coverage, [25, 50, 75])
    return bool(low <= median <= high and q75 - q25 <= CATEGORY_MAX_IQR)
