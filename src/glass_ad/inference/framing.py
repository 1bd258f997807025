"""Framing: where a frame's network input comes from and where its map goes back, in plain numpy.

The one specification of the geometry that every inference path uses: `predict.Detector` (the region it
inspects), the exported graph's preprocessing (`frame_graph.wrap_frames` builds the same integers and
weights from ONNX operators) and the torch-free runtime (`runtime.Runtime` feeds older crop-input models
through `preprocess` and `map_to_original`). `crop_box` (the resized size and the crop's offsets), `resize_weights`
(one axis of PyTorch's bilinear resize, antialiased when shrinking), `preprocess` and `map_to_original`
reproduce `glass_ad.data.datasets.Preprocessor` (the training pipeline; tests/test_runtime.py holds both to
the same pixels) and are the reference an integrator can port to any language. numpy only.
"""

from __future__ import annotations

from collections.abc import Sequence
from fractions import Fraction

import numpy as np

__all__ = ["crop_box", "crop_in_original", "input_shape", "map_to_original", "preprocess", "resize_weights", "stretched_size"]


def stretched_size(image_size: int, resize: int | None = None, shape: Sequence[int] | None = None) -> tuple[int, int]:
    """``(round(H·m), round(W·m))``: the resized frame of ``fit="stretch"`` and the least size of
    ``fit="crop"``, with ``m = R / min(H, W)``, ``R = resize or min(H, W)`` (exact rationals, rounded half
    to even)."""
    target_h, target_w = input_shape(image_size, shape)
    short = min(target_h, target_w)
    side = int(resize) if resize else short
    return round(Fraction(target_h * side, short)), round(Fraction(target_w * side, short))


def input_shape(image_size: int, shape: Sequence[int] | None = None) -> tuple[int, int]:
    """``(H, W)`` of the network input: ``shape`` when given, else the ``image_size`` square."""
    if shape is None:
        return int(image_size), int(image_size)
    height, width = (int(n) for n in shape)
    if height < 1 or width < 1:
        raise ValueError(f"invalid network input shape {height}x{width}")
    return height, width


def crop_box(
    height: int, width: int, image_size: int, resize: int | None = None, fit: str = "crop", shape: Sequence[int] | None = None
) -> tuple[int, int, int, int]:
    """``(resized_h, resized_w, top, left)``: the frame is resized to ``resized_h × resized_w``, then the
    ``H × W`` network input (``shape``, default the ``image_size`` square) at ``(top, left)`` is cut out.

    With ``R = resize or min(H, W)`` and the margin ``m = R / min(H, W)``:
    ``fit="stretch"``: ``(round(H·m), round(W·m))``; ``fit="crop"`` (keep the aspect ratio): with
    ``f = max(H·m / height, W·m / width)``, ``(max(round(H·m), round(height·f)), max(round(W·m),
    round(width·f)))``. The crop is centred: ``top = round((resized_h − H) / 2)``, ``left = round((resized_w
    − W) / 2)``. Every ``round`` is Python's (half to even) of the exact rational value, so the integers
    are the same in `Preprocessor.crop_box` and in the exported graph (`frame_graph`), which computes them in
    integer arithmetic. For a square this is: the shorter side becomes ``R``, the longer one keeps the aspect
    ratio (never below ``R``); stretch makes both ``R``.
    """
    height, width = int(height), int(width)
    target_h, target_w = input_shape(image_size, shape)
    short = min(target_h, target_w)
    side = int(resize) if resize else short
    if height < 1 or width < 1:
        raise ValueError(f"invalid image size {width}x{height}")
    base_h, base_w = stretched_size(image_size, resize, shape)
    if fit == "stretch":
        new_h, new_w = base_h, base_w
    elif fit == "crop":
        scale = max(Fraction(target_h * side, short * height), Fraction(target_w * side, short * width))
        new_h, new_w = max(base_h, round(height * scale)), max(base_w, round(width * scale))
    else:
        raise ValueError(f"fit must be 'crop' or 'stretch', got {fit!r}")
    return new_h, new_w, round(Fraction(new_h - target_h, 2)), round(Fraction(new_w - target_w, 2))


def resize_weights(in_size: int, out_size: int, rows: Sequence[int] | np.ndarray | None = None) -> np.ndarray:
    """The ``out_size × in_size`` matrix (or only its ``rows``) of a 1-D bilinear resize, float32.

    Output pixel ``i`` has its centre at ``c = s·(i + ½)`` input pixels (``s = in/out``); input pixel ``j``
    gets the weight ``max(0, 1 − |(j − c + ½) / max(s, 1)|)``, and each row is divided by its sum. When
    shrinking (``s > 1``) this is the antialiased triangle filter; when enlarging it is ordinary bilinear
    interpolation with the edge pixel repeated — both as PyTorch's ``interpolate(mode="bilinear",
    align_corners=False)`` computes them, which `Preprocessor` uses.
    """
    if in_size < 1 or out_size < 1:
        raise ValueError(f"sizes must be positive, got {in_size} → {out_size}")
    scale = np.float32(in_size) / np.float32(out_size)
    invscale = np.float32(1.0) / scale if scale >= 1 else np.float32(1.0)
    index = np.arange(out_size) if rows is None else np.asarray(rows)
    center = scale * (index.astype(np.float32) + np.float32(0.5))
    taps = np.arange(in_size, dtype=np.float32)
    weights = np.maximum(np.float32(0.0), 1 - np.abs(((taps[None, :] - center[:, None]) + np.float32(0.5)) * invscale))
    total = weights.sum(axis=1, keepdims=True, dtype=np.float32)
    return (weights / np.where(total > 0, total, 1)).astype(np.float32)


def preprocess(
    image: np.ndarray, image_size: int, resize: int | None = None, fit: str = "crop", shape: Sequence[int] | None = None
) -> np.ndarray:
    """uint8 ``h×w×3`` (or ``h×w``) frame → the network input, uint8 ``H×W×3`` (``shape``, default the
    ``image_size`` square).

    Resize (`resize_weights` along each axis, pixels scaled to [0, 1]), take the centred ``H×W`` of
    `crop_box`, clip to [0, 1], multiply by 255 and round half to even — the pixels `Preprocessor` and
    `predict.Detector` give the model.
    """
    array = np.asarray(image)
    if array.ndim == 2:
        array = np.repeat(array[:, :, None], 3, axis=2)
    if array.ndim != 3 or array.shape[2] != 3 or array.dtype != np.uint8:
        raise ValueError(f"expected a uint8 H×W×3 image, got {array.dtype} {tuple(array.shape)}")
    height, width = array.shape[:2]
    new_h, new_w, top, left = crop_box(height, width, image_size, resize, fit, shape)
    target_h, target_w = input_shape(image_size, shape)
    if (new_h, new_w) == (height, width):
        out = array[top : top + target_h, left : left + target_w].astype(np.float32) / np.float32(255.0)
    else:
        rows = resize_weights(height, new_h, np.arange(top, top + target_h))  # H × h
        cols = resize_weights(width, new_w, np.arange(left, left + target_w))  # W × w
        pixels = array.astype(np.float32) / np.float32(255.0)
        out = np.einsum("tw,hwc->htc", cols, pixels, optimize=True)  # along the width first, then the height
        out = np.einsum("sh,htc->stc", rows, out, optimize=True)
    return np.rint(np.clip(out, 0.0, 1.0) * np.float32(255.0)).astype(np.uint8)


def map_to_original(
    anomaly_map: np.ndarray,
    original_hw: tuple[int, int],
    image_size: int,
    resize: int | None = None,
    fit: str = "crop",
    shape: Sequence[int] | None = None,
) -> np.ndarray:
    """An ``H×W`` map (``shape``, default the ``image_size`` square) → float32 ``h×w`` on the original frame
    (0 where the crop cut the frame).

    The map is placed at the crop's position in the resized frame (zeros around it) and resized back to
    ``h×w`` with `resize_weights` — `Preprocessor.map_to_original`.
    """
    values = np.asarray(anomaly_map, dtype=np.float32)
    if values.ndim != 2:
        values = values.reshape(values.shape[-2:])
    height, width = int(original_hw[0]), int(original_hw[1])
    new_h, new_w, top, left = crop_box(height, width, image_size, resize, fit, shape)
    target_h, target_w = input_shape(image_size, shape)
    if values.shape != (target_h, target_w):
        raise ValueError(f"expected an {target_h}×{target_w} map, got {values.shape}")
    if (new_h, new_w) == (height, width):
        out = np.zeros((height, width), np.float32)
        out[top : top + target_h, left : left + target_w] = values
        return out
    rows = resize_weights(new_h, height)[:, top : top + target_h]  # h × H (columns of the resized frame)
    cols = resize_weights(new_w, width)[:, left : left + target_w]  # w × W
    return (rows @ values @ cols.T).astype(np.float32)


def crop_in_original(
    height: int, width: int, image_size: int, resize: int | None = None, fit: str = "crop", shape: Sequence[int] | None = None
) -> tuple[float, float, float, float]:
    """The network input's region in the original frame's pixel coordinates: ``(y0, x0, y1, x1)``, floats,
    end exclusive (what `Detector.overlay` hatches outside of)."""
    new_h, new_w, top, left = crop_box(height, width, image_size, resize, fit, shape)
    target_h, target_w = input_shape(image_size, shape)
    sy, sx = int(height) / new_h, int(width) / new_w
    return top * sy, left * sx, (top + target_h) * sy, (left + target_w) * sx
