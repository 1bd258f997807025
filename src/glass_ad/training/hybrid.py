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
    pool_windows,
)
from glass_ad.training.preparation import NormalFeatures

IMAGES_PER_PASS = 16


@torch.no_grad()
def build_memory_bank(features: NormalFeatures, config: GlassConfig, grid: tuple[int, int]) -> MemoryBank:
    """The bank of the training images' patch vectors (model/memory_bank.py), on a `grid` of patches: with
    `bank_neighbours` > 0 a k-centre coreset of `bank_patches` vectors of every image (fewer when the bank
    would exceed `ROW_BUDGET`), each image's descriptor (`bank_descriptor`) and, with `bank_coarse_window`
    > 0, a k-centre coreset of `bank_coarse_rows` of its window means (fewer past half the row budget);
    with 0 neighbours one coreset of `memory_bank_fraction` of all patches."""
    images, rows_per_image = len(features), grid[0] * grid[1]
    if config.bank_neighbours > 0:
        keep = min(rows_per_image, config.bank_patches, max(16, ROW_BUDGET // max(1, images)))
        keep_windows = min(config.bank_coarse_rows, max(8, ROW_BUDGET // (2 * max(1, images))))
        window = min(config.bank_coarse_window, *grid)  # no larger than the grid
        patches, descriptors, windows = [], [], []
        for start in range(0, images, IMAGES_PER_PASS):
            rows = features.batch(np.arange(start, min(start + IMAGES_PER_PASS, images))).float().cpu()
            patches.append(_kept(rows, keep, config.seed + start))
            descriptors.append(image_descriptors(rows, config.bank_descriptor))
            if window > 0:
                pooled, _ = pool_windows(rows, grid, window)
                windows.append(_kept(pooled, keep_windows, config.seed + start))
        coarse = torch.cat(windows) if windows else None
        return MemoryBank(torch.cat(patches), torch.cat(descriptors), config.bank_neighbours, coarse, window)
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


def _kept(rows: torch.Tensor, count: int, seed: int) -> torch.Tensor:
    """A k-centre coreset of `count` of each image's B×P×D rows (all of them when P ≤ count), float16."""
    if count >= rows.shape[1]:
        return rows.half()
    pick = greedy_coreset_per_image(rows, count, seed=seed)
    return torch.gather(rows, 1, pick.unsqueeze(-1).expand(-1, -1, rows.shape[-1])).half()


@dataclass
class PreparedBank:
    """The hybrid score's memory bank, built before the first epoch (it depends on the frozen features only,
    so the run's time limit counts its cost), and the held-out normals' distances to it (the standardisation
    needs them; the calibration's pass over them costs as long again, which the time limit keeps free)."""

    bank: MemoryBank
    holdout_distances: torch.Tensor  # B×P×scales, raw
    build_s: float
    holdout_distance_s: float  # the pass that measured `holdout_distances`


@torch.no_grad()
def prepare_bank(
    features: NormalFeatures, holdout_features: torch.Tensor, config: GlassConfig, grid: tuple[int, int]
) -> PreparedBank:
    """Build the bank and measure the held-out normals' (B×P×D features) distances to it, timed."""
    started = time.perf_counter()
    bank = build_memory_bank(features, config, grid)
    built = time.perf_counter()
    distances = torch.cat([
        bank.distances(holdout_features[start : start + IMAGES_PER_PASS].float(), grid)
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
    nearest-neighbour distances on the held-out normal images (their mean and std over all patches). Their
    features are `holdout_features` when given (the validation set's, B×P×D), else computed here; their
    distances are `prepared`'s when given (measured by `prepare_bank` on the same features)."""
    if holdout is None or len(holdout) == 0:
        raise ValueError("the hybrid score needs held-out normal images to standardise its parts (--holdout > 0)")
    model.eval()
    bank = prepared.bank if prepared is not None else build_memory_bank(features, config, model.grid_shape)
    model.set_memory_bank(bank)  # on the model's device; the parts below are raw, whatever norm it holds
    logits, distances = [], []
    for start in range(0, len(holdout), IMAGES_PER_PASS):
        if holdout_features is not None:
            rows = holdout_features[start : start + IMAGES_PER_PASS].to(device)
        else:
            rows = model.features(holdout[start : start + IMAGES_PER_PASS].to(device).float() / 255.0)
        logits.append(model.patch_logits(rows).cpu())
        if prepared is None:
            distances.append(model.memory_bank.distances(rows, model.grid_shape).cpu())
    measured = prepared.holdout_distances if prepared is not None else torch.cat(distances)
    raw = torch.cat([torch.cat(logits).reshape(-1, 1), measured.reshape(-1, measured.shape[-1])], dim=1)
    mean, std = raw.mean(0), raw.std(0).clamp_min(1e-6)
    norm = [float(value) for pair in zip(mean, std) for value in pair]  # [mean, std] of each part
    model.set_memory_bank(bank, norm)
    return {
        "bank_size": bank.rows,
        "bank_images": len(bank.patches),
        "bank_neighbours": bank.neighbours if bank.retrieves else None,
        "bank_coarse_window": bank.window or None,
        "norm": norm,
    }
