"""Heatmap overlays, score histograms and worst-case grids.

Images are ``uint8`` RGB arrays ``H x W x 3``. Matplotlib is only imported inside
:func:`score_histogram` and uses the Agg canvas directly (no global backend change).
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Sequence

import cv2
import numpy as np
from PIL import Image

__all__ = [
    "colourize",
    "overlay_panel",
    "colorbar",
    "region_boxes",
    "save_png",
    "score_histogram",
    "case_grid",
]

RED = (255, 0, 0)
GREEN = (0, 255, 0)
GREY = (128, 128, 128)
_TITLE_H = 28
LN9 = math.log(9.0)


def region_boxes(region: np.ndarray, anomaly_map: np.ndarray | None = None, min_area: int = 0) -> list[dict]:
    """Connected regions of a bool mask as boxes ``{x, y, width, height, area, peak}`` (pixels; ``peak``:
    the highest map value inside, when a map is given), largest first; regions under ``min_area`` pixels
    are left out."""
    mask = np.asarray(region).astype(np.uint8)
    count, labels, stats, _ = cv2.connectedComponentsWithStats(mask, connectivity=8)
    boxes = []
    for label in range(1, count):
        x, y, width, height, area = (int(v) for v in stats[label])
        if area < max(1, int(min_area)):
            continue
        box = {"x": x, "y": y, "width": width, "height": height, "area": area}
        if anomaly_map is not None:
            box["peak"] = float(np.asarray(anomaly_map)[labels == label].max())
        boxes.append(box)
    return sorted(boxes, key=lambda b: -b["area"])


def _drop_small(region: np.ndarray, min_area: int) -> np.ndarray:
    if min_area <= 1 or not region.any():
        return region
    count, labels, stats, _ = cv2.connectedComponentsWithStats(region.astype(np.uint8), connectivity=8)
    keep = np.zeros(count, bool)
    keep[1:] = stats[1:, cv2.CC_STAT_AREA] >= min_area
    return keep[labels]


def _hatch(tile: np.ndarray, image: np.ndarray, outside: np.ndarray) -> None:
    """Where ``outside`` (the area the model did not inspect): the image in faded grey under diagonal
    lines, so it never reads as a (blue) "normal" score."""
    if not outside.any():
        return
    h, w = outside.shape
    yy, xx = np.mgrid[0:h, 0:w]
    lines = ((xx + yy) % 8) < 2
    luminance = image.astype(np.float32).mean(axis=2, keepdims=True)
    faded = np.repeat(0.35 * luminance + 0.65 * GREY[0], 3, axis=2).astype(np.uint8)
    tile[outside] = faded[outside]
    tile[outside & lines] = (90, 90, 90)


def colourize(map01: np.ndarray) -> np.ndarray:
    """Map values in [0, 1] (clipped) to an RGB ``uint8`` image with the jet colormap."""
    m = np.nan_to_num(np.asarray(map01, dtype=np.float32), nan=0.0)
    if m.ndim != 2:
        raise ValueError("map01 must be 2-D")
    u8 = np.round(np.clip(m, 0.0, 1.0) * 255.0).astype(np.uint8)
    bgr = cv2.applyColorMap(u8, cv2.COLORMAP_JET)
    return cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)


def _as_rgb(image: np.ndarray) -> np.ndarray:
    img = np.asarray(image)
    if img.ndim == 2:
        img = np.stack([img] * 3, axis=-1)
    if img.ndim != 3 or img.shape[2] != 3:
        raise ValueError("image must be H x W x 3")
    if img.dtype != np.uint8:
        img = np.clip(img, 0, 255).astype(np.uint8)
    return np.ascontiguousarray(img)


def _draw_contours(canvas: np.ndarray, region: np.ndarray, color: tuple[int, int, int]) -> None:
    contours, _ = cv2.findContours(region.astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_NONE)
    if contours:
        cv2.drawContours(canvas, contours, -1, color, thickness=2)


def overlay_panel(
    image: np.ndarray,
    anomaly_map: np.ndarray,
    *,
    vmin: float,
    vmax: float,
    threshold: float | None = None,
    title: str | None = None,
    gt_mask: np.ndarray | None = None,
    inspected: np.ndarray | tuple[float, float, float, float] | None = None,
    outline: bool = True,
    min_area: int = 0,
    colorbar: bool = False,
) -> np.ndarray:
    """Three tiles side by side: original | heatmap over original | contours.

    The map is resized to the image size; the heatmap is ``(map - vmin) / (vmax - vmin)`` (use
    `Calibration.heat_range` so that every picture of a model shares one scale). The third tile outlines ``map >=
    threshold`` in red (with ``outline``; regions under ``min_area`` pixels left out) and, if given,
    ``gt_mask`` in green. ``inspected`` (a bool mask, or a box ``(y0, x0, y1, x1)`` in image pixels) marks
    what the model saw: elsewhere (the ends a centre crop drops) the heatmap is hatched grey, "not
    inspected", not coloured as normal. ``colorbar`` appends the colour scale with the threshold marked.
    An optional title bar (its text sized to the width) is added on top. Returns ``uint8`` RGB.
    """
    img = _as_rgb(image)
    h, w = img.shape[:2]
    amap = np.nan_to_num(np.asarray(anomaly_map, dtype=np.float32))
    if amap.ndim != 2:
        raise ValueError("anomaly_map must be 2-D")
    if amap.shape != (h, w):
        amap = cv2.resize(amap, (w, h), interpolation=cv2.INTER_LINEAR)
    span = float(vmax) - float(vmin)
    norm = (amap - float(vmin)) / span if span > 0 else np.zeros_like(amap)
    heat = cv2.addWeighted(img, 0.5, colourize(norm), 0.5, 0.0)
    seen = _inspected_mask(inspected, h, w)

    contour_tile = img.copy()
    if seen is not None:
        _hatch(heat, img, ~seen)
    if threshold is not None and outline:
        region = amap >= float(threshold)
        if seen is not None:
            region &= seen
        _draw_contours(contour_tile, _drop_small(region, min_area), RED)
        if seen is not None:  # the outline's width must not spill onto what the model did not see
            contour_tile[~seen] = img[~seen]
    if gt_mask is not None:
        gt = np.asarray(gt_mask).astype(np.uint8)
        if gt.ndim == 3:
            gt = gt.reshape(gt.shape[-2:]) if gt.shape[0] == 1 else gt[..., 0]
        if gt.shape != (h, w):
            gt = cv2.resize(gt, (w, h), interpolation=cv2.INTER_NEAREST)
        _draw_contours(contour_tile, gt > 0, GREEN)

    tiles = [img, heat, contour_tile]
    if colorbar:
        tiles.append(_colorbar_tile(h, vmin, vmax, threshold))
    panel = np.concatenate(tiles, axis=1)
    return _with_title(panel, title)


def _inspected_mask(inspected, h: int, w: int) -> np.ndarray | None:
    if inspected is None:
        return None
    if isinstance(inspected, tuple):
        y0, x0, y1, x1 = inspected
        mask = np.zeros((h, w), bool)
        mask[max(0, int(round(y0))) : int(round(y1)), max(0, int(round(x0))) : int(round(x1))] = True
        return mask
    mask = np.asarray(inspected).astype(bool)
    if mask.shape != (h, w):
        mask = cv2.resize(mask.astype(np.uint8), (w, h), interpolation=cv2.INTER_NEAREST).astype(bool)
    return mask


def _font_scale(width: int, height: int | None = None) -> float:
    """Hershey font scale for a picture ``width × height`` pixels: readable when small, not tiny when
    large, never taller than a fraction of a flat picture."""
    scale = width / 1100.0 if height is None else min(width / 1100.0, height / 250.0)
    return float(np.clip(scale, 0.35, 1.4))


def _put_text(canvas: np.ndarray, text: str, origin: tuple[int, int], scale: float, color=(0, 0, 0)) -> None:
    thickness = 1 if scale < 0.8 else 2
    cv2.putText(canvas, text, origin, cv2.FONT_HERSHEY_SIMPLEX, scale, color, thickness, cv2.LINE_AA)


def colorbar(height: int, vmin: float, vmax: float, threshold: float | None = None) -> np.ndarray:
    """The colour scale as a ``height``-pixel tall uint8 RGB strip with its labels (top = ``vmax``), the
    threshold marked by a black line and "thr"."""
    return _colorbar_tile(height, vmin, vmax, threshold)


def _colorbar_tile(height: int, vmin: float, vmax: float, threshold: float | None) -> np.ndarray:
    scale = float(np.clip(height / 400.0, 0.35, 0.8))
    label_w = int(62 * scale / 0.45)
    bar_w = max(8, height // 20)
    tile = np.full((height, bar_w + label_w + 6, 3), 255, np.uint8)
    ramp = np.repeat(np.linspace(1.0, 0.0, height, dtype=np.float32)[:, None], bar_w, axis=1)
    tile[:, 2 : 2 + bar_w] = colourize(ramp)
    span = float(vmax) - float(vmin)

    def row(value: float) -> int:
        fraction = (float(value) - float(vmin)) / span if span > 0 else 0.5
        return int(round((1.0 - np.clip(fraction, 0.0, 1.0)) * (height - 1)))

    text_h = cv2.getTextSize("0", cv2.FONT_HERSHEY_SIMPLEX, scale, 1)[0][1]
    x = bar_w + 5
    _put_text(tile, f"{vmax:.3g}", (x, text_h + 1), scale)
    _put_text(tile, f"{vmin:.3g}", (x, height - 2), scale)
    if threshold is not None and np.isfinite(threshold):
        y = row(threshold)
        cv2.line(tile, (0, y), (bar_w + 3, y), (0, 0, 0), max(2, height // 100))
        _put_text(tile, "thr", (x, int(np.clip(y + text_h // 2, text_h + 1, height - 2))), scale)
    return tile


def _with_title(tile: np.ndarray, title: str | None) -> np.ndarray:
    """Put a white bar with ``title`` in black above ``tile`` (no bar when title is empty).

    The font size follows the width (`_font_scale`); a title still too long is cut with "...".
    """
    if not title:
        return np.ascontiguousarray(tile)
    # Hershey fonts are ASCII only: replace anything else so arrows etc. don't print as '?'.
    text = str(title).replace("\u2192", "->")
    text = text.encode("ascii", "replace").decode("ascii")
    width = tile.shape[1]
    scale = _font_scale(width, tile.shape[0])
    (text_w, text_h), _ = cv2.getTextSize(text, cv2.FONT_HERSHEY_SIMPLEX, scale, 1)
    while text_w > width - 12 and len(text) > 4:
        text = text[: max(1, int(len(text) * (width - 12) / text_w) - 4)] + "..."
        (text_w, text_h), _ = cv2.getTextSize(text, cv2.FONT_HERSHEY_SIMPLEX, scale, 1)
    bar_h = max(_TITLE_H, text_h * 2 + 6)
    bar = np.full((bar_h, width, 3), 255, dtype=np.uint8)
    _put_text(bar, text, (6, (bar_h + text_h) // 2), scale)
    return np.ascontiguousarray(np.concatenate([bar, tile], axis=0))


def save_png(path: str | Path, rgb_array: np.ndarray) -> Path:
    """Save an RGB (or grey) ``uint8`` array as PNG, creating parent folders."""
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    arr = np.asarray(rgb_array)
    if arr.dtype != np.uint8:
        arr = np.clip(arr, 0, 255).astype(np.uint8)
    Image.fromarray(arr).save(p, format="PNG")
    return p


def score_histogram(
    normal_scores: Sequence[float] | np.ndarray,
    anomalous_scores: Sequence[float] | np.ndarray,
    threshold: float | None,
    path: str | Path,
    title: str = "",
) -> Path:
    """Save overlaid histograms of normal/anomalous scores with a threshold line."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    normal = np.asarray(normal_scores, dtype=np.float64).ravel()
    anomalous = np.asarray(anomalous_scores, dtype=np.float64).ravel()
    allv = np.concatenate([normal, anomalous])
    allv = allv[np.isfinite(allv)]
    if allv.size:
        lo, hi = float(allv.min()), float(allv.max())
        if threshold is not None and np.isfinite(threshold):
            lo, hi = min(lo, float(threshold)), max(hi, float(threshold))
        if hi <= lo:
            lo, hi = lo - 0.5, hi + 0.5
        bins = np.linspace(lo, hi, 31)
    else:
        bins = np.linspace(0.0, 1.0, 31)

    fig = Figure(figsize=(6, 4), dpi=100)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot(1, 1, 1)
    if normal.size:
        ax.hist(normal, bins=bins, alpha=0.6, color="tab:blue", label=f"normal (n={normal.size})")
    if anomalous.size:
        ax.hist(anomalous, bins=bins, alpha=0.6, color="tab:red", label=f"anomalous (n={anomalous.size})")
    if threshold is not None:
        ax.axvline(float(threshold), color="black", linestyle="--", label=f"threshold = {float(threshold):.4g}")
    ax.set_xlabel("image score")
    ax.set_ylabel("count")
    if title:
        ax.set_title(title)
    if ax.get_legend_handles_labels()[0]:
        ax.legend()
    fig.tight_layout()
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(p)
    return p


def case_grid(
    panels: list[np.ndarray],
    path: str | Path,
    columns: int = 2,
    titles: Sequence[str | None] | None = None,
) -> np.ndarray:
    """Pad panels to a common size, tile them ``columns`` wide, save as PNG, return the grid.

    ``titles`` (one per panel, ``None`` or ``""`` for none) adds a title bar above each panel.
    """
    if not panels:
        raise ValueError("case_grid needs at least one panel")
    if columns < 1:
        raise ValueError("columns must be >= 1")
    if titles is not None and len(titles) != len(panels):
        raise ValueError("titles must have one entry per panel")
    tiles = [_as_rgb(p) for p in panels]
    if titles is not None:
        tiles = [_with_title(t, title) for t, title in zip(tiles, titles)]
    th = max(t.shape[0] for t in tiles)
    tw = max(t.shape[1] for t in tiles)
    cols = min(columns, len(tiles))
    rows = math.ceil(len(tiles) / cols)
    grid = np.full((rows * th, cols * tw, 3), 255, dtype=np.uint8)  # white padding
    for i, t in enumerate(tiles):
        r, c = divmod(i, cols)
        grid[r * th : r * th + t.shape[0], c * tw : c * tw + t.shape[1]] = t
    save_png(path, grid)
    return grid
