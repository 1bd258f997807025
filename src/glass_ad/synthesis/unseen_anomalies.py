"""A second synthetic anomaly family that training never draws: for model selection only.

Validating on LAS anomalies alone rewards a model for specialising on LAS (same mask family, same texture
pool): on MTD, validation scores kept rising while real-defect localisation fell. This family shares
nothing with LAS but the idea of a local change:

* **stroke** — a thin curvilinear line (a smooth random walk, 1–3 px wide at 288 px, 40–160 px long),
  darker or brighter than the surface by a random factor: cracks, scratches, hairs;
* **blob** — a smooth elliptical intensity change (no texture, no hard edge), 12–60 px across, ±8–25 %
  of the grey level: stains, uneven surfaces, dents seen as shading.

Changes are intensity-only (the same factor on every channel), so they look plausible on grey and colour
products alike. Patch labels are the masks max-pooled by the feature stride, as for LAS. Everything is
drawn from the given generator, so a fixed seed gives a fixed validation set.

A rectangular network input H×W (``shape``) gets H×W maps: lengths and widths scale with the short side
(``min(H, W) / 288``), start points without a foreground lie in the central 80 % of each axis. A square draws
exactly what it always did.
"""

from __future__ import annotations

import math

import cv2
import numpy as np
import torch

from glass_ad.config import GlassConfig
from glass_ad.synthesis.las import FEATURE_STRIDE, LASBatch, foreground_arrays, patch_labels
from glass_ad.synthesis.perlin import as_hw

__all__ = ["UnseenAnomalySynthesizer"]


class UnseenAnomalySynthesizer:
    """Builds stroke / blob anomalies for a B×3×H×W float batch in [0, 1] (``__call__`` like LAS).

    ``shape`` = (H, W) of a rectangular input; None: ``image_size × image_size``.
    """

    blob_half_axes = (6.0, 30.0)  # range of a blob's half-axes in px at 288 (scaled with the short side)

    def __init__(
        self,
        image_size: int,
        feature_stride: int = FEATURE_STRIDE,
        stroke_share: float = 0.5,
        *,
        shape: tuple[int, int] | None = None,
    ) -> None:
        self.shape = as_hw(image_size if shape is None else shape)
        self.image_size = min(self.shape) if shape is not None else int(image_size)
        self.stride = int(feature_stride)
        self.stroke_share = float(stroke_share)

    @classmethod
    def from_config(cls, config: GlassConfig, *, feature_stride: int = FEATURE_STRIDE) -> UnseenAnomalySynthesizer:
        """The unseen family for `config`'s network input (``config.input_shape``)."""
        shape = tuple(getattr(config, "input_shape", (config.image_size, config.image_size)))
        return cls(config.image_size, feature_stride, shape=shape)

    @property
    def _scale(self) -> float:
        """Lengths are given at 288 px; they scale with the short side (the square's side as before)."""
        return min(self.shape) / 288.0

    def _start(self, rng: np.random.Generator, foreground: np.ndarray | None) -> tuple[float, float]:
        height, width = self.shape
        if foreground is not None and foreground.any():
            ys, xs = np.nonzero(foreground)
            i = rng.integers(len(ys))
            return float(xs[i]), float(ys[i])
        # x first, then y: the square's draw order.
        x = float(rng.uniform(width * 0.1, width - width * 0.1))
        y = float(rng.uniform(height * 0.1, height - height * 0.1))
        return x, y

    def stroke(self, rng: np.random.Generator, foreground: np.ndarray | None) -> tuple[np.ndarray, np.ndarray]:
        """(weight map in [0, 1], binary mask) of one thin curved line."""
        scale = self._scale
        x, y = self._start(rng, foreground)
        angle = rng.uniform(0, 2 * math.pi)
        length = rng.uniform(40, 160) * scale
        step = 4.0 * scale
        points = [(x, y)]
        for _ in range(max(2, int(length / step))):
            angle += rng.normal(0.0, 0.25)
            x, y = x + step * math.cos(angle), y + step * math.sin(angle)
            points.append((x, y))
        width = max(1, int(round(rng.uniform(1, 3) * scale)))
        mask = np.zeros(self.shape, dtype=np.uint8)
        cv2.polylines(mask, [np.round(np.asarray(points)).astype(np.int32)], False, 1, thickness=width)
        weight = cv2.GaussianBlur(mask.astype(np.float32), (0, 0), 0.6 * scale)
        weight = np.clip(weight / max(weight.max(), 1e-6), 0, 1)
        return weight, mask.astype(bool)

    def blob(self, rng: np.random.Generator, foreground: np.ndarray | None) -> tuple[np.ndarray, np.ndarray]:
        """(weight map in [0, 1], binary mask = weight > 0.5) of one smooth elliptical shading."""
        scale = self._scale
        cx, cy = self._start(rng, foreground)
        a, b = rng.uniform(*self.blob_half_axes, size=2) * scale
        theta = rng.uniform(0, math.pi)
        yy, xx = np.mgrid[0 : self.shape[0], 0 : self.shape[1]].astype(np.float32)
        dx, dy = xx - cx, yy - cy
        u = (dx * math.cos(theta) + dy * math.sin(theta)) / a
        v = (-dx * math.sin(theta) + dy * math.cos(theta)) / b
        weight = np.exp(-0.5 * (u * u + v * v) * 4.0).astype(np.float32)  # 0.5 at about the ellipse's half-axes
        return weight, weight > 0.5

    def __call__(self, images: torch.Tensor, foreground: torch.Tensor | None, rng: np.random.Generator) -> LASBatch:
        batch, (height, width) = images.shape[0], self.shape
        if tuple(images.shape[-2:]) != (height, width):
            raise ValueError(f"expected B×3×{height}×{width} images, got {tuple(images.shape)}")
        fg = foreground_arrays(foreground, batch, self.shape)
        weights = np.zeros((batch, height, width), dtype=np.float32)
        masks = np.zeros((batch, height, width), dtype=bool)
        gains = np.zeros(batch, dtype=np.float32)
        kinds: list[str] = []
        for i in range(batch):
            fg_i = None if fg is None else fg[i]
            if rng.random() < self.stroke_share:
                weights[i], masks[i] = self.stroke(rng, fg_i)
                gains[i] = rng.uniform(0.3, 0.7) if rng.random() < 0.7 else rng.uniform(1.4, 2.0)
                kinds.append("stroke")
            else:
                weights[i], masks[i] = self.blob(rng, fg_i)
                change = rng.uniform(0.08, 0.25)
                gains[i] = 1.0 - change if rng.random() < 0.5 else 1.0 + change
                kinds.append("blob")
            if not masks[i].any():  # a stroke that left the frame: keep the contract "mask non-empty"
                weights[i], masks[i] = self.blob(rng, None)
                kinds[-1] = "blob"
        device, dtype = images.device, images.dtype
        weight = torch.from_numpy(weights).to(device=device, dtype=dtype).unsqueeze(1)
        gain = torch.from_numpy(gains).to(device=device, dtype=dtype).view(-1, 1, 1, 1)
        out = (images * (1.0 + weight * (gain - 1.0))).clamp(0.0, 1.0)
        mask = torch.from_numpy(masks).to(device=device, dtype=dtype).unsqueeze(1)
        labels = patch_labels(mask, self.stride)
        return LASBatch(out, mask, labels, gain.view(-1), kinds)
