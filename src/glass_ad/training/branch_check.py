"""GLASS-j's check: does the branch the spectrogram rule picked train, and train the better detector?

The spectrogram rule (synthesis/spectrum.py) is the paper's first guess between the manifold (GLASS-m) and
the hypersphere (GLASS-h). It looks at the mean training image only, so it cannot know whether the picked
branch's GAS can be told from normal on this product's features, nor which branch's discriminator finds
anomalies better. Before training, the picked branch is trained on its own copy of the untrained adaptor
and discriminator for `branch_check_steps` of training's own steps (normal + GAS + LAS, on the cached
normal features) and measured on the held-out validation set: the separation of held-out normal patches
from their GAS copies (`val_gas_separation`) and model selection's own score (`val_score`: held-out
normals against their LAS and unseen-family anomalies). The other branch is probed the same way when the
pick's GAS stays near chance, and whenever the pick is the hypersphere. The rule's pick stays unless
* its GAS stays near chance and the other branch's separates clearly better, or
* it is the hypersphere, and the manifold's GAS trains and its validation score is higher by at least
  `VALIDATION_MARGIN`.
A live manifold pick is not compared: on the products measured, the hypersphere led on validation only in
a close pair whose lead changes sign with the probe's random streams (MPDD seed 1), and on that product it
localised worse on the test split (docs/benchmarks.md, "How much the check's comparison of two live
branches moves"). Comparing would add noise and a probe's time.
A switch is said. The measurements are stored with the model (`glass info`). The probes have their own
random streams: a run that keeps the pick trains exactly as without the check.
"""

from __future__ import annotations

import copy
import dataclasses
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import NamedTuple

import numpy as np
import torch

from glass_ad.config import GlassConfig
from glass_ad.model.glass_model import GlassModel
from glass_ad.synthesis import gas as gas_module
from glass_ad.training.loop import iterations_per_epoch, make_optimisation, train_one_epoch
from glass_ad.training.preparation import FeatureSetup, SynthesisSetup
from glass_ad.training.step import step_loss
from glass_ad.training.validation import GAS_DEAD_AUROC, ValidationSet, gas_separation, validate

# The other branch must separate at least this much better than a dead pick to replace it.
SWITCH_MARGIN = 0.1
# ... or, when the pick is a live hypersphere, the manifold must train and score at least this much higher on
# validation (model selection's `val_score`).
# After 50 probe steps as the run makes them (bf16, the run's LAS pool; four probe streams each), a clearly
# weaker hypersphere trailed by 0.041-0.090 (MPDD seed 0) and 0.18-0.25 (MTD, its GAS dead); a close pair
# (MPDD seed 1) moved between -0.073 and +0.075 (docs/benchmarks.md, "How much the check's comparison of
# two live branches moves"). 0.03 is more than one step of a 5-image holdout's score (0.02) and below
# every clear gap.
VALIDATION_MARGIN = 0.03


class ProbePoint(NamedTuple):
    step: int
    separation: float  # held-out GAS separation
    validation: float | None  # model selection's score on the held-out validation set (None: not given)
    # the worse synthetic family's patch AUROC on the held-out set (None: not given); measured for the
    # benchmarks, not compared by the check (docs/benchmarks.md, "How much the check's comparison of two
    # live branches moves")
    localisation: float | None = None


@dataclass(frozen=True)
class BranchCheck:
    """What the check measured and decided (stored in the checkpoint's training record)."""

    proposed: str  # the spectrogram rule's pick
    chosen: str
    separations: dict[str, float]  # held-out GAS separation after `steps` probe steps, per branch tried
    steps: int
    seconds: float
    # model selection's validation score after the probe, per branch (empty: checked without validation)
    validation: dict[str, float] = field(default_factory=dict)

    @property
    def reason(self) -> str:
        """Why the pick changed (empty when it did not)."""
        if not self.switched:
            return ""
        if self.separations[self.proposed] < GAS_DEAD_AUROC:
            return "its GAS stayed near chance"
        return "the other branch scored higher on validation"

    @property
    def switched(self) -> bool:
        return self.chosen != self.proposed

    def describe(self) -> str:
        measured = "held-out GAS separation " + ", ".join(f"{k} {v:.2f}" for k, v in self.separations.items())
        if self.validation:
            measured += "; validation score " + ", ".join(f"{k} {v:.3f}" for k, v in self.validation.items())
        if self.switched:
            return (
                f"hypothesis: {self.chosen} instead of the spectrogram's {self.proposed}: {self.reason} "
                f"after {self.steps} probe steps ({measured}; {self.seconds:.0f} s)"
            )
        return (
            f"hypothesis check: {self.chosen} trains and stays "
            f"({measured} after {self.steps} probe steps; {self.seconds:.0f} s)"
        )

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
    val: ValidationSet | None = None,
) -> list[ProbePoint]:
    """Train a copy of `model`'s adaptor and discriminator with the GAS branch of `hypothesis` for `steps`
    steps on the cached normal features — training's own steps (normal + GAS + LAS) when `synthesis` is
    given, else the normal and GAS branches only — and return the held-out GAS separation (normal patches of
    `held_out`, Nv×P×D, vs their GAS copies), and with `val` model selection's validation score and the
    worse synthetic family's patch AUROC, after the last step, or after every `every` steps. `model` and the
    training's random streams are not touched."""
    trial = copy.deepcopy(model)
    trial.train()
    optimisation = make_optimisation(trial, config)
    rng, las_rng = np.random.default_rng(seed), np.random.default_rng(seed + 1)
    generator = torch.Generator().manual_seed(seed)
    count = len(setup.features)
    batch = min(config.batch_size, count)
    if synthesis is not None:
        synthesis = dataclasses.replace(synthesis, hypothesis=hypothesis)
    measured: list[ProbePoint] = []

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
        separation = gas_separation(trial, held_out, settings, centre_now(), config.radius_quantile, seed=seed)
        if val is None:
            measured.append(ProbePoint(done, separation, None))
        else:
            record = validate(trial, val, selection=config.selection)
            worse_family = min(record["val_las_separation"], record["val_unseen_separation"])
            measured.append(ProbePoint(done, separation, record["val_score"], worse_family))
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
    return check_branch(
        model, setup, held_out, config, synthesis.hypothesis, synthesis=synthesis, val=val, bf16=bf16, echo=echo
    )


def check_branch(
    model: GlassModel,
    setup: FeatureSetup,
    held_out: torch.Tensor,
    config: GlassConfig,
    proposed: str,
    *,
    synthesis: SynthesisSetup | None = None,
    val: ValidationSet | None = None,
    bf16: bool = False,
    echo: Callable[[str], None] = print,
) -> BranchCheck:
    """Probe the proposed branch and, when its GAS stays near chance or (with a validation set `val`) when it
    is the hypersphere, the other. Switch when the proposed GAS is dead and the other separates clearly
    better (by SWITCH_MARGIN), or when a proposed hypersphere and the manifold both train and the manifold
    scores higher on validation by VALIDATION_MARGIN. Returns the decision and its evidence."""
    started = time.perf_counter()
    # Never longer than the run itself (a short run's pick is checked over its own length).
    steps = min(config.branch_check_steps, config.epochs * iterations_per_epoch(config, len(setup.features)))
    other = "hypersphere" if proposed == "manifold" else "manifold"

    separations: dict[str, float] = {}
    validation: dict[str, float] = {}

    def probe(hypothesis: str) -> None:
        last = probe_branch(
            model, setup, held_out, config, hypothesis, steps, synthesis=synthesis, seed=config.seed, bf16=bf16, val=val
        )[-1]
        separations[hypothesis] = last.separation
        if last.validation is not None:
            validation[hypothesis] = last.validation

    probe(proposed)
    chosen = proposed
    dead = separations[proposed] < GAS_DEAD_AUROC
    if dead or (val is not None and proposed == "hypersphere"):
        probe(other)
        if dead:
            if separations[other] >= max(GAS_DEAD_AUROC, separations[proposed] + SWITCH_MARGIN):
                chosen = other
        elif separations[other] >= GAS_DEAD_AUROC and validation[other] >= validation[proposed] + VALIDATION_MARGIN:
            chosen = other
    result = BranchCheck(proposed, chosen, separations, steps, time.perf_counter() - started, validation)
    echo(result.describe())
    return result
