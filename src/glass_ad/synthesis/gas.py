"""Global Anomaly Synthesis (GAS): feature-level anomalies near the normal distribution.

g = u + ε (ε ~ N(0, σ²)), then `ascent_steps` normalised gradient-ascent steps of size η on
L_gas = BCE(D(g), 1), with a truncated projection every `project_every` steps:

* manifold (GLASS-m): g − u rescaled so that r1 ≤ ‖g − u‖ ≤ r2;
* hypersphere (GLASS-h): g − c rescaled so that r′1 ≤ ‖g − c‖ ≤ 2r′1, with c the per-position mean
  normal feature and r′1 the `radius_quantile` of the normal distances to c. With the default "relative"
  shell the bounds are raised per vector so that a copy always lies at least r1 (at most r2) further from c
  than its own normal vector u: max(r′1, ‖u − c‖ + r1) ≤ ‖g − c‖ ≤ max(2r′1, ‖u − c‖ + r2). The paper's
  shell (``hypersphere_shell="paper"``) holds the outer quarter of the normal vectors themselves, so their
  GAS copies stay where they were and are labelled anomalous: on real objects D never separated GAS from
  normal. Vectors well inside r′1 get the paper's shell unchanged (docs/method.md, deviation 18).

All lengths (σ·√D, η, r1, r2) are multiplied by `unit`: the measured spacing of the normal features
(median distance from a normal patch to its nearest neighbour in other normal images, in adaptor space,
see :mod:`glass_ad.model.geometry`). So r1 = 0.5 means "half the typical gap between neighbouring normal
patches" for every backbone, and the adaptor cannot make GAS trivial or invisible by rescaling its output.
r′1 is a quantile of the data already and needs no unit.

The ascent always runs in float32 (autocast off): a bf16-rounded input would erase most components of
one ascent step.

The returned v keeps the adaptor's gradient through u (v = u + δ with δ a constant), so the GAS loss
trains A as well as D.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from glass_ad.config import GAS_MODES, HYPERSPHERE_SHELLS, GlassConfig

HYPOTHESES = ("manifold", "hypersphere")  # the resolved ones ("auto" is decided before GAS runs)


@dataclass(frozen=True)
class GASSettings:
    """What one GAS call needs. Built from a `GlassConfig` by :meth:`from_config` (the config holds the
    defaults; nothing here repeats them)."""

    hypothesis: str  # "manifold" or "hypersphere"
    mode: str  # one of GAS_MODES
    noise_std: float
    steps: int
    step_size: float
    project_every: int
    r1: float  # in units of `unit`
    r2: float
    unit: float = 1.0  # length unit of noise_std, step_size, r1, r2: the measured normal spacing (1: raw)
    shell: str = "relative"  # hypersphere bounds: "relative" (at least r1 outside u's own radius) or "paper"

    def __post_init__(self) -> None:
        if self.shell not in HYPERSPHERE_SHELLS:
            raise ValueError(f"hypersphere shell must be one of {', '.join(HYPERSPHERE_SHELLS)} (got {self.shell!r})")
        if self.mode not in GAS_MODES:
            raise ValueError(f"GAS mode must be one of {', '.join(GAS_MODES)} (got {self.mode!r})")
        if self.hypothesis not in HYPOTHESES:
            raise ValueError(f"GAS hypothesis must be one of {', '.join(HYPOTHESES)} (got {self.hypothesis!r})")

    @classmethod
    def from_config(cls, config: GlassConfig, hypothesis: str, unit: float = 1.0) -> GASSettings:
        """The GAS settings of `config`; `unit` is the current normal spacing, used only when the scale
        rule is on (``config.feature_spacing`` not None), else lengths are absolute (unit 1)."""
        return cls(
            hypothesis=hypothesis,
            mode=config.gas,
            noise_std=config.noise_std,
            steps=config.ascent_steps,
            step_size=config.ascent_step_size,
            project_every=config.project_every,
            r1=config.r1,
            r2=config.r2,
            unit=unit if config.feature_spacing is not None else 1.0,
            shell=config.hypersphere_shell,
        )

    @property
    def ascends(self) -> bool:
        """Gradient ascent runs in modes "ascent" and "full"."""
        return GAS_MODES.index(self.mode) >= GAS_MODES.index("ascent")

    @property
    def projects(self) -> bool:
        """The truncated projection runs in mode "full" only."""
        return self.mode == "full"


__all__ = [
    "GASSettings",
    "HYPOTHESES",
    "truncate_norm",
    "hypersphere_radius",
    "hypersphere_bounds",
    "synthesize",
    "project_las_features",
]


def truncate_norm(delta: torch.Tensor, low: torch.Tensor | float, high: torch.Tensor | float) -> torch.Tensor:
    """Rescale each row of `delta` so that its L2 norm lies in [low, high] (direction kept)."""
    norm = delta.norm(dim=1, keepdim=True)
    target = norm.clamp(min=low, max=high)
    return delta * (target / (norm + 1e-10))


def hypersphere_radius(points: torch.Tensor, centres: torch.Tensor, quantile: float) -> torch.Tensor:
    """r′1: the `quantile` (``GlassConfig.radius_quantile``) of ‖x − c‖ over normal patch vectors (no gradient)."""
    with torch.no_grad():
        distances = (points - centres).norm(dim=1)
        if distances.numel() > 1_000_000:  # torch.quantile's input limit; a random subset is plenty
            distances = distances[torch.randperm(distances.numel(), device=distances.device)[:1_000_000]]
        return torch.quantile(distances.float(), quantile)


def hypersphere_bounds(
    u: torch.Tensor, centres: torch.Tensor, radius: torch.Tensor | float, settings: GASSettings
) -> tuple[torch.Tensor | float, torch.Tensor | float]:
    """The shell [low, high] of ‖g − c‖ for the GAS copies of the rows of `u` (lengths already in features'
    units): the paper's [r′1, 2r′1], raised per row to [‖u − c‖ + r1, ‖u − c‖ + r2] where that lies further
    out ("relative" shell), so that no copy is left inside or at its own normal vector's radius."""
    if settings.shell == "paper":
        return radius, 2 * radius
    own = (u - centres).norm(dim=1, keepdim=True)
    unit = float(settings.unit)
    low = torch.maximum(own + settings.r1 * unit, torch.as_tensor(radius, dtype=own.dtype, device=own.device))
    high = torch.maximum(own + settings.r2 * unit, torch.as_tensor(2 * radius, dtype=own.dtype, device=own.device))
    return low, high


def synthesize(
    discriminator: nn.Module,
    normal: torch.Tensor,
    settings: GASSettings,
    *,
    centres: torch.Tensor | None = None,
    radius: torch.Tensor | None = None,
    generator: torch.Generator | None = None,
    noise: torch.Tensor | None = None,
) -> torch.Tensor:
    """Return GAS features v for the N×D normal features `normal` (which may carry gradient).

    During the ascent D sees normal and synthetic vectors together, as in the reference, so its batch
    normalisation statistics are those of the mixed batch. `noise` replaces the N(0, 1) draw that σ scales
    (probes of other noise shapes; training never passes it).
    """
    u = normal.detach().float()
    unit = float(settings.unit)
    if noise is None:
        # Drawn on the generator's device (a CPU generator cannot fill a CUDA tensor), then moved.
        noise_device = generator.device if generator is not None else u.device
        noise = torch.randn(u.shape, generator=generator, device=noise_device, dtype=torch.float32)
    g = u + noise.to(u.device, torch.float32) * (settings.noise_std * unit)
    if settings.ascends:
        hypersphere = settings.hypothesis == "hypersphere"
        if hypersphere and (centres is None or radius is None):
            raise ValueError("the hypersphere projection needs centres and radius")
        step_size, r1, r2 = settings.step_size * unit, settings.r1 * unit, settings.r2 * unit
        # u and D's weights stay fixed during the ascent, so D's first layer on u (half of every ascent
        # call's matrix work, forward) is computed once; batch norm still sees the mixed batch each step.
        split = hasattr(discriminator, "first_layer") and hasattr(discriminator, "after_first_layer")
        if hypersphere:
            low, high = hypersphere_bounds(u, centres, radius, settings)
        with torch.autocast(u.device.type, enabled=False):
            with torch.no_grad():
                first_u = discriminator.first_layer(u) if split else None
            for step in range(settings.steps):
                g = g.detach().requires_grad_(True)
                with torch.enable_grad():
                    if split:
                        hidden = torch.cat([first_u, discriminator.first_layer(g)])
                        scores = discriminator.after_first_layer(hidden)[len(u) :].float()
                    else:
                        scores = discriminator(torch.cat([u, g]))[len(u) :].float()
                    loss = F.binary_cross_entropy(scores, torch.ones_like(scores))
                    (grad,) = torch.autograd.grad(loss, [g])
                with torch.no_grad():
                    g = g + step_size * grad / (grad.norm(dim=1, keepdim=True) + 1e-10)
                    if settings.projects and (step + 1) % settings.project_every == 0:
                        if hypersphere:
                            g = centres + truncate_norm(g - centres, low, high)
                        else:
                            g = u + truncate_norm(g - u, r1, r2)
    delta = (g - u).detach()
    return normal.float() + delta


def project_las_features(
    features: torch.Tensor, labels: torch.Tensor, centres: torch.Tensor, radius: torch.Tensor
) -> torch.Tensor:
    """Hypersphere mode: move LAS anomaly vectors (label 1) into the shell [2r′1, 4r′1] around c."""
    anomalous = labels > 0.5
    if not anomalous.any():
        return features
    moved = centres[anomalous] + truncate_norm(features[anomalous] - centres[anomalous], 2 * radius, 4 * radius)
    out = features.clone()
    out[anomalous] = moved
    return out
