"""Local Anomaly Synthesis (LAS): textures pasted into normal images under Perlin masks.

x+ = x ⊙ (1 − m) + (1 − β) · texture ⊙ m + β · x ⊙ m, with m = Perlin mask ∧ foreground (redrawn until
non-empty) and β ~ N(0.5, 0.1²) clipped to [0.2, 0.8]. The patch labels are m max-pooled by the feature
stride.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from .perlin import combined_perlin_mask

MAX_REDRAWS = 50


@dataclass
class LASBatch:
    images: torch.Tensor  # B×3×S×S in [0, 1]
    masks: torch.Tensor  # B×1×S×S in {0, 1}
    patch_labels: torch.Tensor  # B×(S/stride)² in {0, 1}, row-major
    betas: torch.Tensor  # B
    modes: list[str]


class LocalAnomalySynthesizer:
    def __init__(
        self,
        image_size: int,
        textures,
        *,
        beta_mean: float = 0.5,
        beta_std: float = 0.1,
        beta_min: float = 0.2,
        beta_max: float = 0.8,
        feature_stride: int = 8,
    ):
        self.image_size = image_size
        self.textures = textures
        self.beta_mean, self.beta_std = beta_mean, beta_std
        self.beta_min, self.beta_max = beta_min, beta_max
        self.stride = feature_stride

    def draw_mask(self, rng: np.random.Generator, foreground: np.ndarray | None) -> tuple[np.ndarray, str]:
        """A Perlin mask inside the foreground whose patch-level label is not empty."""
        for _ in range(MAX_REDRAWS):
            mask, mode = combined_perlin_mask(self.image_size, rng)
            if foreground is not None:
                mask = mask & foreground
            if mask.any():
                return mask, mode
        # A tiny foreground can make every draw miss it: fall back to the plain Perlin mask.
        while True:
            mask, mode = combined_perlin_mask(self.image_size, rng)
            if mask.any():
                return mask, mode

    def draw_beta(self, rng: np.random.Generator, count: int) -> np.ndarray:
        return np.clip(rng.normal(self.beta_mean, self.beta_std, size=count), self.beta_min, self.beta_max)

    def __call__(self, images: torch.Tensor, foreground: torch.Tensor | None, rng: np.random.Generator) -> LASBatch:
        batch = len(images)
        masks, textures, modes = [], [], []
        for i in range(batch):
            fg = foreground[i, 0].cpu().numpy().astype(bool) if foreground is not None else None
            mask, mode = self.draw_mask(rng, fg)
            masks.append(torch.from_numpy(mask))
            modes.append(mode)
            textures.append(torch.from_numpy(self.textures.sample(rng)))
        mask = torch.stack(masks).unsqueeze(1).to(images.dtype)
        texture = torch.stack(textures).permute(0, 3, 1, 2).to(images.dtype) / 255.0
        betas = torch.from_numpy(self.draw_beta(rng, batch)).to(images.dtype)
        beta = betas.view(-1, 1, 1, 1)
        overlay = (1 - beta) * texture + beta * images
        out = images * (1 - mask) + overlay * mask
        labels = F.max_pool2d(mask, self.stride).flatten(1)
        return LASBatch(out, mask, labels, betas, modes)
