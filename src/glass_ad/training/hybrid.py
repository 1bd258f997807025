"""After the last epoch: the hybrid score's memory bank and norms."""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from glass_ad.config import GlassConfig
from glass_ad.model.glass_model import GlassModel
from glass_ad.model.memory_bank import (
    ROW_BUDGET,
    MemoryBank,
    greedy_coreset,
    greedy_coreset_per_image,
    image_descriptors,
)
from glass_ad.training.preparation import NormalFeatures

IMAGES_PER_PASS = 16


@torch.no_grad()
def build_memory_bank(features: NormalFeatures, config: GlassConfig, rows_per_image: int) -> MemoryBank:
    """The bank of the training images' patch vectors (model/memory_bank.py): with `bank_neighbours` > 0 a
    k-centre coreset of `bank_patches` vectors of every image (fewer when the bank would exceed `ROW_BUDGET`)
    and each image's descriptor (`bank_descriptor`); with 0 one coreset of `memory_bank_fraction` of all patches."""
    images = len(features)
    if config.bank_neighbours > 0:
        keep = min(rows_per_image, config.bank_patches, max(16, ROW_BUDGET // max(1, images)))
        patches, descriptors = [], []
        for start in range(0, images, IMAGES_PER_PASS):
            rows = features.batch(np.arange(start, min(start + IMAGES_PER_PASS, images))).float().cpu()
            pick = greedy_coreset_per_image(rows, keep, seed=config.seed + start)
            patches.append(torch.gather(rows, 1, pick.unsqueeze(-1).expand(-1, -1, rows.shape[-1])).half())
            descriptors.append(image_descriptors(rows, config.bank_descriptor))
        return MemoryBank(torch.cat(patches), torch.cat(descriptors), config.bank_neighbours)
    count = max(1, int(round(images * rows_per_image * config.memory_bank_fraction)))
    # A random pool of at most 64 patch vectors per image keeps the greedy selection's cost bounded.
    per_image = min(rows_per_image, 64)
    generator = torch.Generator().manual_seed(config.seed)
    pool = []
    for start in range(0, images, IMAGES_PER_PASS):
        index = np.arange(start, min(start + IMAGES_PER_PASS, images))
        rows = features.batch(index).float().cpu()
        pick = torch.stack([torch.randperm(rows_per_image, generator=generator)[:per_image] for _ in index])
        pool.append(torch.gather(rows, 1, pick.unsqueeze(-1).expand(-1, -1, rows.shape[-1])).flatten(0, 1))
    pool_rows = torch.cat(pool)
    return MemoryBank(pool_rows[greedy_coreset(pool_rows, min(count, len(pool_rows)), seed=config.seed)])


@dataclass
class PreparedBank:
    """The hybrid score's memory bank, built before the first epoch (it depends on the frozen features only,
    so the run's time limit counts its cost), and the held-out normals' distances to it (the standardisation
    needs them; the calibration's pass over them costs as long again, which the time limit keeps free)."""

    bank: MemoryBank
    holdout_distances: torch.Tensor  # B×P, raw
    build_s: float
    holdout_distance_s: float  # the pass that measured `holdout_distances`


@torch.no_grad()
def prepare_bank(
    features: NormalFeatures, holdout_features: torch.Tensor, config: GlassConfig, rows_per_image: int
) -> PreparedBank:
    """Build the bank and measure the held-out normals' (B×P×D features) distances to it, timed."""
    started = time.perf_counter()
    bank = build_memory_bank(features, config, rows_per_image)
    built = time.perf_counter()
    distances = torch.cat([
        bank(holdout_features[start : start + IMAGES_PER_PASS].float())
        for start in range(0, len(holdout_features), IMAGES_PER_PASS)
    ])  # fmt: skip
    return PreparedBank(bank, distances, built - started, time.perf_counter() - built)


@torch.no_grad()
def build_hybrid_score(
    model: GlassModel,
    features: NormalFeatures,
    holdout: torch.Tensor | None,
    config: GlassConfig,
    device: torch.device,
    *,
    progress: bool = False,
    prepared: PreparedBank | None = None,
    holdout_features: torch.Tensor | None = None,
) -> dict[str, Any]:
    """Set the model's memory bank (`prepared`'s, or one built here) and standardise the logit and the
    nearest-neighbour distance on the held-out normal images (their mean and std over all patches). Their
    features are `holdout_features` when given (the validation set's, B×P×D), else computed here; their
    distances are `prepared`'s when given (measured by `prepare_bank` on the same features)."""
    if holdout is None or len(holdout) == 0:
        raise ValueError("the hybrid score needs held-out normal images to standardise its parts (--holdout > 0)")
    model.eval()
    bank = prepared.bank if prepared is not None else build_memory_bank(features, config, model.num_patches)
    model.set_memory_bank(bank)  # on the model's device; the parts below are raw, whatever norm it holds
    logits, distances = [], []
    for start in range(0, len(holdout), IMAGES_PER_PASS):
        if holdout_features is not None:
            rows = holdout_features[start : start + IMAGES_PER_PASS].to(device)
        else:
            rows = model.features(holdout[start : start + IMAGES_PER_PASS].to(device).float() / 255.0)
        logits.append(model.patch_logits(rows).cpu())
        if prepared is None:
            distances.append(model.memory_bank(rows).cpu())
    measured = prepared.holdout_distances if prepared is not None else torch.cat(distances)
    raw = torch.stack([torch.cat(logits).flatten(), measured.flatten()], dim=1)
    mean, std = raw.mean(0), raw.std(0).clamp_min(1e-6)
    model.set_memory_bank(bank, [mean[0], std[0], mean[1], std[1]])
    return {
        "bank_size": bank.rows,
        "bank_images": len(bank.patches),
        "bank_neighbours": bank.neighbours if bank.retrieves else None,
        "norm": [float(mean[0]), float(std[0]), float(mean[1]), float(std[1])],
    }
