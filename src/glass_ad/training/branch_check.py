"""GLASS-j's check: does the GAS branch the spectrogram rule picked actually train?

The spectrogram rule (synthesis/spectrum.py) is the paper's first guess between the manifold (GLASS-m) and
the hypersphere (GLASS-h). It looks at the mean training image only, so it cannot know whether the picked
branch's GAS can be told from normal on this product's features. Before training, each branch is tried on a
copy of the untrained adaptor and discriminator for a few hundred normal + GAS steps on the cached normal
features (no LAS: it does not depend on the branch), and the discriminator's separation of held-out normal
patches from their GAS copies is measured as in validation (`val_gas_separation`). The rule's pick stays
unless its GAS stays near chance while the other branch's separates clearly; then the other is used and the
switch is said. Both separations are stored with the model (`glass info`).
"""

from __future__ import annotations

import copy
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass

import numpy as np
import torch

from glass_ad.config import GlassConfig
from glass_ad.model.glass_model import GlassModel
from glass_ad.synthesis import gas as gas_module
from glass_ad.training.loop import make_optimisation
from glass_ad.training.preparation import FeatureSetup
from glass_ad.training.step import step_loss
from glass_ad.training.validation import GAS_DEAD_AUROC, gas_separation

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
    seed: int = 0,
    bf16: bool = False,
    every: int | None = None,
) -> list[tuple[int, float]]:
    """Train a copy of `model`'s adaptor and discriminator with the normal and GAS branches of `hypothesis`
    for `steps` steps on the cached normal features, and return the held-out GAS separation (normal patches
    of `held_out`, Nv×P×D, vs their GAS copies) after the last step, or after every `every` steps. `model` is
    not changed."""
    trial = copy.deepcopy(model)
    trial.train()
    optimisation = make_optimisation(trial, config)
    rng = np.random.default_rng(seed)
    generator = torch.Generator().manual_seed(seed)
    count = len(setup.features)
    batch = min(config.batch_size, count)
    measured: list[tuple[int, float]] = []

    def settings_now() -> gas_module.GASSettings:
        unit = setup.spacing_probe.spacing(trial.adaptor) if config.feature_spacing is not None else 1.0
        return gas_module.GASSettings.from_config(config, hypothesis, unit)

    settings = settings_now()
    for step in range(1, steps + 1):
        if step % 25 == 1 and step > 1:  # the adaptor moves: re-measure GAS's unit now and then, as epochs do
            settings = settings_now()
        with torch.no_grad():
            centre = trial.adaptor(setup.mean_feature)
        normal = setup.features.batch(np.sort(rng.choice(count, batch, replace=False))).float()
        for optimizer in optimisation.optimizers:
            optimizer.zero_grad(set_to_none=True)
        with torch.autocast(normal.device.type, dtype=torch.bfloat16, enabled=bf16):
            loss, _ = step_loss(trial, normal, None, None, centre, config, settings, generator)
        loss.backward()
        for optimizer in optimisation.optimizers:
            optimizer.step()
        if step == steps or (every and step % every == 0):
            with torch.no_grad():
                centre = trial.adaptor(setup.mean_feature)
            value = gas_separation(trial, held_out, settings_now(), centre, config.radius_quantile, seed=seed)
            measured.append((step, value))
    return measured


def check_branch(
    model: GlassModel,
    setup: FeatureSetup,
    held_out: torch.Tensor,
    config: GlassConfig,
    proposed: str,
    *,
    bf16: bool = False,
    echo: Callable[[str], None] = print,
) -> BranchCheck:
    """Probe the proposed branch; if its GAS stays near chance, probe the other and switch when that one
    separates clearly better (by SWITCH_MARGIN). Returns the decision and its evidence."""
    started = time.perf_counter()
    steps = config.branch_check_steps
    other = "hypersphere" if proposed == "manifold" else "manifold"
    separations = {proposed: probe_branch(model, setup, held_out, config, proposed, steps, seed=config.seed, bf16=bf16)[-1][1]}
    chosen = proposed
    if separations[proposed] < GAS_DEAD_AUROC:
        separations[other] = probe_branch(model, setup, held_out, config, other, steps, seed=config.seed, bf16=bf16)[-1][1]
        if separations[other] >= separations[proposed] + SWITCH_MARGIN:
            chosen = other
    result = BranchCheck(proposed, chosen, separations, steps, time.perf_counter() - started)
    echo(result.describe())
    return result
