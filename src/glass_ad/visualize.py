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

__all__ = ["colorize", "overlay_panel", "save_png", "score_histogram", "case_grid"]

RED = (255, 0, 0)
GREEN = (0, 255, 0)
_TITLE_H = 28


def colorize(map01: np.ndarray) -> np.ndarray:
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
) -> np.ndarray:
    """Three tiles side by side: original | heatmap over original | contours.

    The map is resized to the image size; the heatmap is ``(map - vmin) / (vmax - vmin)``.
    The third tile outlines ``map >= threshold`` in red and, if given, ``gt_mask`` in green.
    An optional title bar is added on top. Returns ``uint8`` RGB.
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
    heat = cv2.addWeighted(img, 0.5, colorize(norm), 0.5, 0.0)

    contour_tile = img.copy()
    if threshold is not None:
        _draw_contours(contour_tile, amap >= float(threshold), RED)
    if gt_mask is not None:
        gt = np.asarray(gt_mask).astype(np.uint8)
        if gt.ndim == 3:
            gt = gt.reshape(gt.shape[-2:]) if gt.shape[0] == 1 else gt[..., 0]
        if gt.shape != (h, w):
            gt = cv2.resize(gt, (w, h), interpolation=cv2.INTER_NEAREST)
        _draw_contours(contour_tile, gt > 0, GREEN)

    panel = np.concatenate([img, heat, contour_tile], axis=1)
    return _with_title(panel, title)


def _with_title(tile: np.ndarray, title: str | None) -> np.ndarray:
    """Put a white bar with ``title`` in black above ``tile`` (no bar when title is empty)."""
    if not title:
        return np.ascontiguousarray(tile)
    bar = np.full((_TITLE_H, tile.shape[1], 3), 255, dtype=np.uint8)
    # Hershey fonts are ASCII only: replace anything else so arrows etc. don't print as '?'.
    text = str(title).replace("\u2192", "->")
    text = text.encode("ascii", "replace").decode("ascii")
    cv2.putText(bar, text, (6, _TITLE_H - 9), cv2.FONT_HERSHEY_SIMPLEX, 0.55, (0, 0, 0), 1, cv2.LINE_AA)
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
