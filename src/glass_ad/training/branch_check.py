"""GLASS-j's check: does the GAS branch the spectrogram rule picked actually train?

The spectrogram rule (synthesis/spectrum.py) is the paper's first guess between the manifold (GLASS-m) and
the hypersphere (GLASS-h). It looks at the mean training image only, so it cannot know whether the picked
branch's GAS can be told from normal on this product's features. Before training, the picked branch is
trained on a copy of the untrained adaptor and discriminator for `branch_check_steps` of training's own steps
(normal + GAS + LAS, on the cached normal features), and the discriminator's separation of held-out normal
patches from their GAS copies is measured as in validation (`val_gas_separation`). The rule's pick stays
unless its GAS stays near chance; then the other branch is probed the same way and used if it separates
clearly better, and the switch is said. The separations are stored with the model (`glass info`). The probe
has its own random streams: a run that keeps the pick trains exactly as without the check.
"""

from __future__ import annotations

import copy
import dataclasses
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass

import numpy as np
import torch

from glass_ad.config import GlassConfig
from glass_ad.model.glass_model import GlassModel
from glass_ad.synthesis import gas as gas_module
from glass_ad.training.loop import iterations_per_epoch, make_optimisation, train_one_epoch
from glass_ad.training.preparation import FeatureSetup, SynthesisSetup
from glass_ad.training.step import step_loss
from glass_ad.training.validation import GAS_DEAD_AUROC, ValidationSet, gas_separation

# The other branch must separate at least this much better than a dead pick to replace it.
SWITCH_MARGIN = 0.1


@dataclass(frozen=True)
class BranchCheck:
    """What the check measured and decided (stored in the checkpoint's training record)."""

    proposed: str  # the spectrogram rule's pick
    chosen: str
    separations: dict[str, float]  # held-out GAS separation after `steps` probe steps, per branch tried
    steps: int
    seconds: float

    @property
    def switched(self) -> bool:
        return self.chosen != self.proposed

    def describe(self) -> str:
        measured = ", ".join(f"{name} {value:.2f}" for name, value in self.separations.items())
        if self.switched:
            return (
                f"hypothesis: {self.chosen} instead of the spectrogram's {self.proposed}: its GAS stayed near chance "
                f"after {self.steps} probe steps (held-out GAS separation {measured}; {self.seconds:.0f} s)"
            )
        return f"hypothesis check: {self.chosen} trains (held-out GAS separation {measured} after {self.steps} probe steps; {self.seconds:.0f} s)"

    def as_dict(self) -> dict:
        return asdict(self)


def probe_branch(
    model: GlassModel,
    setup: FeatureSetup,
    held_out: torch.Tensor,
    config: GlassConfig,
    hypothesis: str,
    steps: int,
    *,
    synthesis: SynthesisSetup | None = None,
    seed: int = 0,
    bf16: bool = False,
    every: int | None = None,
) -> list[tuple[int, float]]:
    """Train a copy of `model`'s adaptor and discriminator with the GAS branch of `hypothesis` for `steps`
    steps on the cached normal features — training's own steps (normal + GAS + LAS) when `synthesis` is
    given, else the normal and GAS branches only — and return the held-out GAS separation (normal patches of
    `held_out`, Nv×P×D, vs their GAS copies) after the last step, or after every `every` steps. `model` and
    the training's random streams are not touched."""
    trial = copy.deepcopy(model)
    trial.train()
    optimisation = make_optimisation(trial, config)
    rng, las_rng = np.random.default_rng(seed), np.random.default_rng(seed + 1)
    generator = torch.Generator().manual_seed(seed)
    count = len(setup.features)
    batch = min(config.batch_size, count)
    if synthesis is not None:
        synthesis = dataclasses.replace(synthesis, hypothesis=hypothesis)
    measured: list[tuple[int, float]] = []

    def settings_now() -> gas_module.GASSettings:
        unit = setup.spacing_probe.spacing(trial.adaptor) if config.feature_spacing is not None else 1.0
        return gas_module.GASSettings.from_config(config, hypothesis, unit)

    def centre_now() -> torch.Tensor:
        with torch.no_grad():
            return trial.adaptor(setup.mean_feature)

    settings, done = settings_now(), 0
    stops = sorted({steps, *(range(every, steps, every) if every else ())})
    for stop in stops:
        while done < stop:
            chunk = stop - done
            if synthesis is not None:  # training's own steps: at most one pass over the images per call
                chunk = min(chunk, iterations_per_epoch(config, count))
                part = config.replace(images_per_epoch=chunk * config.batch_size - 1)
                train_one_epoch(
                    trial, optimisation, setup.features, synthesis, part, settings, centre_now(),
                    order_rng=rng, las_rng=las_rng, generator=generator, bf16=bf16,
                )  # fmt: skip
            else:
                chunk = min(chunk, 25)
                for _ in range(chunk):
                    normal = setup.features.batch(np.sort(rng.choice(count, batch, replace=False))).float()
                    for optimizer in optimisation.optimizers:
                        optimizer.zero_grad(set_to_none=True)
                    with torch.autocast(normal.device.type, dtype=torch.bfloat16, enabled=bf16):
                        loss, _ = step_loss(trial, normal, None, None, centre_now(), config, settings, generator)
                    loss.backward()
                    for optimizer in optimisation.optimizers:
                        optimizer.step()
            done += chunk
            settings = settings_now()  # the adaptor moves: GAS's unit is re-measured, as between epochs
        value = gas_separation(trial, held_out, settings, centre_now(), config.radius_quantile, seed=seed)
        measured.append((done, value))
    return measured


def decide_branch(
    model: GlassModel,
    setup: FeatureSetup,
    val: ValidationSet | None,
    config: GlassConfig,
    synthesis: SynthesisSetup,
    kept: dict | None = None,
    bf16: bool = False,
    echo: Callable[[str], None] = print,
) -> BranchCheck | None:
    """The run's branch check when the spectrogram rule picked the branch: the interrupted run's decision
    (`kept`) when resuming, else measured now on the held-out normals of `val` (None: not checked)."""
    if config.hypothesis != "auto" or not config.branch_check_steps or config.gas == "off":
        return None
    if kept:
        decision = BranchCheck(**kept)
        echo(f"hypothesis: {decision.chosen} (as decided by the interrupted run's check)")
        return decision
    if val is None:
        return None
    held_out = val.normal.to(setup.mean_feature.device)
    return check_branch(model, setup, held_out, config, synthesis.hypothesis, synthesis=synthesis, bf16=bf16, echo=echo)


def check_branch(
    model: GlassModel,
    setup: FeatureSetup,
    held_out: torch.Tensor,
    config: GlassConfig,
    proposed: str,
    *,
    synthesis: SynthesisSetup | None = None,
    bf16: bool = False,
    echo: Callable[[str], None] = print,
) -> BranchCheck:
    """Probe the proposed branch; if its GAS stays near chance, probe the other and switch when that one
    separates clearly better (by SWITCH_MARGIN). Returns the decision and its evidence."""
    started = time.perf_counter()
    # Never longer than the run itself (a short run's pick is checked over its own length).
    steps = min(config.branch_check_steps, config.epochs * iterations_per_epoch(config, len(setup.features)))
    other = "hypersphere" if proposed == "manifold" else "manifold"

    def probe(hypothesis: str) -> float:
        curve = probe_branch(model, setup, held_out, config, hypothesis, steps, synthesis=synthesis, seed=config.seed, bf16=bf16)
        return curve[-1][1]

    separations = {proposed: probe(proposed)}
    chosen = proposed
    if separations[proposed] < GAS_DEAD_AUROC:
        separations[other] = probe(other)
        if separations[other] >= max(GAS_DEAD_AUROC, separations[proposed] + SWITCH_MARGIN):
            chosen = other
    result = BranchCheck(proposed, chosen, separations, steps, time.perf_counter() - started)
    echo(result.describe())
    return result
