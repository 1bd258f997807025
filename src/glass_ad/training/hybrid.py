"""After the last epoch: the optional hybrid score's memory bank and norms."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from glass_ad.config import GlassConfig
from glass_ad.model.glass_model import GlassModel
from glass_ad.model.memory_bank import greedy_coreset
from glass_ad.training.preparation import NormalFeatures


@torch.no_grad()
def build_hybrid_score(
    model: GlassModel,
    features: NormalFeatures,
    holdout: torch.Tensor | None,
    config: GlassConfig,
    device: torch.device,
    *,
    progress: bool = False,
) -> dict[str, Any]:
    """Set the model's memory bank (a coreset of the training patch vectors) and standardise the logit and the
    nearest-neighbour distance on the held-out normal images (their mean and std over all patches)."""
    if holdout is None or len(holdout) == 0:
        raise ValueError("the hybrid score needs held-out normal images to standardise its parts (--holdout > 0)")
    model.eval()
    rows_per_image = model.num_patches
    count = max(1, int(round(len(features) * rows_per_image * config.memory_bank_fraction)))
    # A random pool of at most 64 patch vectors per image keeps the greedy selection's cost bounded.
    per_image = min(rows_per_image, 64)
    generator = torch.Generator().manual_seed(config.seed)
    pool = []
    for start in range(0, len(features), 16):
        index = np.arange(start, min(start + 16, len(features)))
        rows = features.batch(index).float().cpu()
        pick = torch.stack([torch.randperm(rows_per_image, generator=generator)[:per_image] for _ in index])
        pool.append(torch.gather(rows, 1, pick.unsqueeze(-1).expand(-1, -1, rows.shape[-1])).flatten(0, 1))
    pool_rows = torch.cat(pool)
    bank = pool_rows[greedy_coreset(pool_rows, min(count, len(pool_rows)), seed=config.seed)]
    model.set_memory_bank(bank.to(device))
    parts = []
    for start in range(0, len(holdout), 16):
        batch = holdout[start : start + 16].to(device).float() / 255.0
        patch_features = model.features(batch)
        parts.append(model.hybrid_parts(patch_features.reshape(-1, patch_features.shape[-1])).cpu())
    raw = torch.cat(parts)  # standardised with the neutral norm (0, 1, 0, 1): raw values
    mean, std = raw.mean(0), raw.std(0).clamp_min(1e-6)
    model.set_memory_bank(bank.to(device), [mean[0], std[0], mean[1], std[1]])
    return {"bank_size": len(bank), "norm": [float(mean[0]), float(std[0]), float(mean[1]), float(std[1])]}
