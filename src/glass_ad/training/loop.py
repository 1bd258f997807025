"""The optimisers, one epoch of training and the time limit between epochs."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from glass_ad.config import GlassConfig
from glass_ad.model.glass_model import GlassModel
from glass_ad.synthesis import gas as gas_module
from glass_ad.synthesis.las import ignore_near_mask
from glass_ad.training.averaging import WeightAverage
from glass_ad.training.distributed import Distributed
from glass_ad.training.preparation import NormalFeatures, SynthesisSetup
from glass_ad.training.step import las_images_per_step, training_step


@dataclass
class Optimisation:
    """AdamW for D at twice the rate, Adam with weight decay for A (the reference's choice); cosine or
    constant schedule over the configured epochs; the weights' moving average when one is kept."""

    optimizers: list[torch.optim.Optimizer]
    schedulers: list[Any] = field(default_factory=list)
    average: WeightAverage | None = None

    @property
    def lr(self) -> float:
        """This epoch's rate in --lr terms (D runs at 2×)."""
        return self.optimizers[0].param_groups[0]["lr"] / 2

    def end_epoch(self) -> None:
        for scheduler in self.schedulers:
            scheduler.step()


@dataclass
class TimeLimit:
    """A wall-clock limit on a run (`seconds` 0: none): no epoch starts that would end past it, less the
    `reserve_s` its finishing is expected to take after the last epoch. The next epoch is expected to last
    as long as the slowest so far (validation included), so a run stops in time on a slow or busy CPU as
    well as on a fast one."""

    seconds: float
    longest_epoch_s: float = 0.0
    reserve_s: float = 0.0

    @classmethod
    def from_history(cls, minutes: float, history: list[dict[str, float]], reserve_s: float = 0.0) -> TimeLimit:
        """The limit of a run (resumed or not): the slowest epoch of its `history` so far."""
        return cls(minutes * 60.0, max((record.get("epoch_s", 0.0) for record in history), default=0.0), reserve_s)

    def record(self, epoch_seconds: float) -> None:
        self.longest_epoch_s = max(self.longest_epoch_s, epoch_seconds)

    def allows_another(self, elapsed_s: float) -> bool:
        """Whether one more epoch, and the finishing after it, fit after `elapsed_s` seconds of the run."""
        return not self.seconds or elapsed_s + self.longest_epoch_s + self.reserve_s <= self.seconds


def make_optimisation(model: GlassModel, config: GlassConfig, *, images: int | None = None) -> Optimisation:
    """The optimisers and schedule of `model`; given the number of training `images` and `ema_epochs`, also
    the weights' moving average over about `ema_epochs` epochs of steps."""
    optimizers: list[torch.optim.Optimizer] = [torch.optim.AdamW(model.discriminator.parameters(), lr=config.lr * 2)]
    if config.adaptor:
        optimizers.append(
            torch.optim.Adam(model.adaptor.parameters(), lr=config.lr, weight_decay=config.adaptor_weight_decay)
        )
    schedulers = [
        torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=config.epochs)
        for optimizer in optimizers
        if config.lr_schedule == "cosine"
    ]
    average = None
    if config.ema_epochs and images is not None:
        steps = config.ema_epochs * iterations_per_epoch(config, images)
        average = WeightAverage(model, decay=max(0.0, 1.0 - 1.0 / steps))
    return Optimisation(optimizers, schedulers, average)


def iterations_per_epoch(config: GlassConfig, images: int) -> int:
    """The reference's `images_per_epoch` worth of batches, at most one pass over the images."""
    return min(math.ceil((config.images_per_epoch + 1) / config.batch_size), math.ceil(images / config.batch_size))


def train_one_epoch(
    model: GlassModel,
    optimisation: Optimisation,
    features: NormalFeatures,
    synthesis: SynthesisSetup,
    config: GlassConfig,
    settings: gas_module.GASSettings,
    centre: torch.Tensor,
    *,
    order_rng: np.random.Generator,
    las_rng: np.random.Generator,
    generator: torch.Generator,
    bf16: bool = False,
    group: Distributed | None = None,
    average: WeightAverage | None = None,
    on_step: Any = None,
) -> dict[str, float]:
    """One pass of `iterations_per_epoch` batches; returns the mean of each step statistic.

    `order_rng` shuffles the images (the same stream on every rank), `las_rng` draws the LAS anomalies and
    `generator` the patch subsets and GAS noise (per rank in data-parallel training; one stream otherwise).
    `average`, when given, follows the weights after every step.
    """
    group = group or Distributed()
    device = centre.device
    iterations = iterations_per_epoch(config, len(features))
    order = order_rng.permutation(len(features))
    synchronize = group.average_gradients if group.active else None
    steps: list[dict[str, float]] = []
    for it in range(iterations):
        index = np.sort(order[it * config.batch_size : (it + 1) * config.batch_size])
        if len(index) < 2:
            break
        index = group.shard(index)
        normal = features.batch(index)
        las_features = las_labels = None
        las_index = index[: las_images_per_step(len(index), config)]
        if config.las and synthesis.las_pool is not None:
            las_features, las_labels = synthesis.las_pool.batch(las_index, las_rng)
        elif config.las:
            batch = features.images[las_index].float() / 255.0
            foreground = synthesis.foreground[las_index] if synthesis.foreground is not None else None
            synthetic = synthesis.las(batch, foreground, las_rng)
            with torch.no_grad():
                las_features = model.features(synthetic.images.to(device))
            las_labels = ignore_near_mask(synthetic.patch_labels, synthesis.las.grid_shape, config.las_ignore_margin)
            las_labels = las_labels.to(device)
        stats = training_step(
            model,
            optimisation.optimizers,
            normal,
            las_features,
            las_labels,
            centre,
            config,
            settings,
            generator,
            bf16,
            synchronize,
        )
        if average is not None:
            average.update()
        steps.append(stats)
        if on_step is not None:
            on_step(it + 1, iterations, stats)
    group.average_buffers(model.discriminator)
    return {k: float(np.mean([s[k] for s in steps if k in s])) for k in steps[0]}
