"""One training step: the normal branch, GAS (noise, gradient ascent, projections) and LAS (focal loss with
OHEM) on the same share of patch vectors, one summed loss, Adam(A) + AdamW(D)."""

from __future__ import annotations

import time
from collections.abc import Callable

import torch

from glass_ad.config import GlassConfig
from glass_ad.model.glass_model import GlassModel
from glass_ad.synthesis import gas as gas_module
from glass_ad.synthesis.las import IGNORED
from glass_ad.training.losses import bce, las_loss
from glass_ad.training.precision import choose_precision


def use_bf16(precision: str, device: torch.device, dim: int = 432, hidden: int = 1024) -> bool:
    """Whether training arithmetic runs under bf16 autocast ("auto": measured, see precision.py)."""
    return choose_precision(precision, device, dim, hidden).bf16


def training_step(
    model: GlassModel,
    optimizers: list[torch.optim.Optimizer],
    normal: torch.Tensor,
    las_features: torch.Tensor | None,
    las_labels: torch.Tensor | None,
    centre: torch.Tensor,
    config: GlassConfig,
    settings: gas_module.GASSettings,
    generator: torch.Generator,
    bf16: bool = False,
    synchronize: Callable[[GlassModel], None] | None = None,
    timings: dict[str, float] | None = None,
) -> dict[str, float]:
    """One optimisation step on B×P×D normal features and (optionally) B×P×D LAS features. `synchronize`
    runs between backward and the update (data-parallel training averages the gradients there); `timings`,
    when given, accumulates the seconds spent in GAS synthesis under "gas" (`glass benchmark`)."""
    for optimizer in optimizers:
        optimizer.zero_grad(set_to_none=True)
    with torch.autocast(normal.device.type, dtype=torch.bfloat16, enabled=bf16):
        loss, stats = step_loss(model, normal, las_features, las_labels, centre, config, settings, generator, timings)
    loss.backward()
    if synchronize is not None:
        synchronize(model)
    for optimizer in optimizers:
        optimizer.step()
    return stats


def sample_rows(count: int, keep: int, generator: torch.Generator, device: torch.device) -> torch.Tensor | None:
    """Indices of `keep` random rows out of `count` (None: keep all of them)."""
    if keep >= count:
        return None
    return torch.randperm(count, generator=generator)[: max(2, keep)].to(device)


def patch_vectors_per_step(batch: int, patches: int, config: GlassConfig) -> int:
    """How many patch vectors each branch trains on in a step of `batch` images of `patches` patches."""
    keep = int(batch * patches * config.patch_fraction)
    if config.max_patches_per_image is not None:
        keep = min(keep, batch * config.max_patches_per_image)
    return max(2, keep)


def las_images_per_step(batch: int, config: GlassConfig) -> int:
    """How many of a step's `batch` images get a LAS copy (the first ones): `las_fraction`, at least 2."""
    return max(2, round(batch * config.las_fraction))


def step_loss(
    model: GlassModel,
    normal: torch.Tensor,
    las_features: torch.Tensor | None,
    las_labels: torch.Tensor | None,
    centre: torch.Tensor,
    config: GlassConfig,
    settings: gas_module.GASSettings,
    generator: torch.Generator,
    timings: dict[str, float] | None = None,
) -> tuple[torch.Tensor, dict[str, float]]:
    """The loss of one step (normal + GAS + LAS branches) and its per-branch statistics."""
    batch, _, dim = normal.shape
    centres = centre.repeat(batch, 1)
    rows = normal.reshape(-1, dim)
    # Each branch trains on the same number of patch vectors: `patch_fraction` of the batch's B·P, at most
    # `max_patches_per_image` per image (larger inputs then cost about the same per step).
    keep = patch_vectors_per_step(batch, len(rows) // batch, config)
    pick = sample_rows(len(rows), keep, generator, rows.device)
    if pick is not None:
        rows, centres_u = rows[pick], centres[pick]
    else:
        centres_u = centres
    # Feature geometry (distances, projections, ascent steps) stays float32 even under autocast.
    u = model.adaptor(rows).float()
    fake = labels = centres_fake = None
    if las_features is not None:
        las_rows, labels = las_features.reshape(-1, dim), las_labels.reshape(-1)
        centres_fake = centre.repeat(las_features.shape[0], 1)
        pick = sample_rows(len(las_rows), keep, generator, las_rows.device)
        if pick is not None:
            las_rows, labels, centres_fake = las_rows[pick], labels[pick], centres_fake[pick]
        counted = labels != IGNORED  # patches next to a mask may be left out (config.las_ignore_margin)
        if not counted.all():
            las_rows, labels, centres_fake = las_rows[counted], labels[counted], centres_fake[counted]
        fake = model.adaptor(las_rows).float()

    # r'1: 75 % quantile of normal distances to the centre (normal LAS patches count as normal).
    radius = None
    if settings.hypothesis == "hypersphere":
        normal_points = u if fake is None else torch.cat([fake[labels < 0.5], u])
        normal_centres = centres_u if fake is None else torch.cat([centres_fake[labels < 0.5], centres_u])
        radius = gas_module.hypersphere_radius(normal_points, normal_centres, config.radius_quantile)

    loss_terms: dict[str, torch.Tensor] = {}
    stats: dict[str, float] = {}
    count = len(u)
    if config.gas != "off":
        subset = sample_rows(count, int(count * config.gas_patch_fraction), generator, u.device)
        if subset is None:
            subset = torch.arange(count, device=u.device)
        started = time.perf_counter()
        v = gas_module.synthesize(
            model.discriminator, u[subset], settings, centres=centres_u[subset], radius=radius, generator=generator
        )
        if timings is not None:
            if v.device.type == "cuda":
                torch.cuda.synchronize(v.device)
            timings["gas"] = timings.get("gas", 0.0) + time.perf_counter() - started
        scores = model.discriminator(torch.cat([u, v])).float()
        true_scores, gas_scores = scores[:count], scores[count:]
        loss_terms["normal"] = bce(true_scores, 0.0)
        loss_terms["gas"] = bce(gas_scores, 1.0)
        stats["p_gas"] = float((gas_scores.detach() >= 0.5).float().mean())  # GAS vectors called anomalous
    else:
        true_scores = model.discriminator(u).float()
        loss_terms["normal"] = bce(true_scores, 0.0)

    if fake is not None:
        if settings.hypothesis == "hypersphere":
            fake = gas_module.project_las_features(fake, labels, centres_fake, radius)
        fake_scores = model.discriminator(fake).float().squeeze(1)
        loss_terms["las"] = las_loss(fake_scores, labels, config.focal_gamma, config.ohem_quantile)

    weights = {"las": config.las_weight}  # the reference sums the three terms with weight 1
    loss = sum(value * weights.get(name, 1.0) for name, value in loss_terms.items())
    stats.update({f"loss_{k}": float(v.detach()) for k, v in loss_terms.items()})
    stats["loss"] = float(loss.detach())
    stats["p_true"] = float((true_scores.detach() < 0.5).float().mean())  # normal vectors called normal
    if radius is not None:
        stats["radius"] = float(radius)
    return loss, stats
