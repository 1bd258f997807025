"""Geometry of the normal patch features: the length unit of GAS.

GAS perturbs normal features by absolute lengths (noise σ, ascent step η, truncation radii r1/r2). Whether
such a perturbation lands *just off* the normal manifold — hard but separable, as the paper intends —
depends on how far apart normal patches lie, which differs by backbone, layer and product. A global
per-component standard deviation does not capture it: measured on MTD with EfficientNet-Lite2, features
rescaled to a per-component std of 0.5 put held-out normal patches a median distance of about 10 from
their nearest training patch, so GAS at r1 = 0.5 stayed inside the normal cloud and the discriminator never
told it apart (docs/benchmarks.md).

The unit used here is the **normal spacing**: the median Euclidean distance from a normal patch vector to
its nearest neighbour among the patches of *other* normal images (a PatchCore-style bank). Features are
scaled once so that this spacing is 1 before the adaptor, and GAS re-measures it in adaptor space every
epoch (the adaptor is trained and may stretch or shrink its output), so r1 = 0.5 always means half the
typical gap between a normal patch and the closest other normal patch.

The same measurement also gives the principal spread of the features (PCA standard deviations), printed
and stored with the model so that a dead or trivial GAS can be diagnosed from the checkpoint alone.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, Callable

import numpy as np
import torch

__all__ = ["SpacingProbe", "FeatureGeometry", "nearest_distances", "measure_geometry"]


def nearest_distances(queries: torch.Tensor, bank: torch.Tensor, chunk: int = 2048) -> torch.Tensor:
    """Distance from every row of `queries` (N×D) to its nearest row of `bank` (M×D), float32."""
    out = []
    bank = bank.float()
    for start in range(0, len(queries), chunk):
        out.append(torch.cdist(queries[start : start + chunk].float(), bank).amin(dim=1))
    return torch.cat(out) if out else torch.empty(0)


@dataclass
class SpacingProbe:
    """Fixed patches of normal images for measuring the spacing: queries come from other images than the bank."""

    queries: torch.Tensor  # Nq×D patch features (before the adaptor)
    bank: torch.Tensor  # Nb×D patch features of other images

    @classmethod
    def from_features(
        cls,
        features: torch.Tensor,
        rng: np.random.Generator,
        *,
        query_images: int = 4,
        max_queries: int = 2048,
        max_bank: int = 24_576,
    ) -> "SpacingProbe":
        """Split N×P×D features of normal images into query images and bank images (disjoint)."""
        count = len(features)
        if count < 2:
            raise ValueError("measuring the feature spacing needs at least 2 normal images")
        order = rng.permutation(count)
        n_query = max(1, min(query_images, count // 4))
        queries = features[order[:n_query]].reshape(-1, features.shape[-1])
        bank = features[order[n_query:]].reshape(-1, features.shape[-1])
        if len(queries) > max_queries:
            queries = queries[np.sort(rng.choice(len(queries), max_queries, replace=False))]
        if len(bank) > max_bank:
            bank = bank[np.sort(rng.choice(len(bank), max_bank, replace=False))]
        return cls(queries.float().clone(), bank.float().clone())

    @torch.no_grad()
    def spacing(self, transform: Callable[[torch.Tensor], torch.Tensor] | None = None) -> float:
        """Median nearest-neighbour distance, optionally after `transform` (e.g. the adaptor)."""
        queries, bank = self.queries, self.bank
        if transform is not None:
            queries, bank = transform(queries).float(), transform(bank).float()
        return float(nearest_distances(queries, bank).median())


@dataclass
class FeatureGeometry:
    """What the scale rule measured on the raw (unscaled) features; stored in the checkpoint."""

    raw_spacing: float  # median nearest-neighbour distance before scaling
    scale: float  # factor applied to the features (spacing after scaling = target)
    spacing_q10: float  # 10 % / 90 % quantiles of the nearest-neighbour distance, after scaling
    spacing_q90: float
    component_std: float  # mean per-component standard deviation, after scaling
    principal_std_min: float  # smallest / median / largest PCA standard deviation, after scaling
    principal_std_median: float
    principal_std_max: float

    def to_dict(self) -> dict[str, float]:
        return asdict(self)

    def describe(self) -> str:
        return (
            f"normal spacing (median NN distance) {self.raw_spacing:.4g} raw -> scale {self.scale:.4g}; "
            f"after scaling: NN 10-90 % {self.spacing_q10:.2f}-{self.spacing_q90:.2f}, component std "
            f"{self.component_std:.3f}, principal std {self.principal_std_min:.3f} / "
            f"{self.principal_std_median:.3f} / {self.principal_std_max:.3f} (min / median / max)"
        )

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "FeatureGeometry":
        return cls(**{k: float(data[k]) for k in cls.__dataclass_fields__})


@torch.no_grad()
def measure_geometry(probe: SpacingProbe, target_spacing: float | None) -> FeatureGeometry:
    """Measure the raw features' spacing and spread; the scale brings the spacing to `target_spacing`
    (None: scale 1, raw features as the reference code)."""
    distances = nearest_distances(probe.queries, probe.bank)
    raw = float(distances.median())
    scale = 1.0 if target_spacing is None else float(target_spacing) / max(raw, 1e-12)
    sample = probe.bank[: min(len(probe.bank), 8192)] * scale
    centred = sample - sample.mean(0, keepdim=True)
    principal = torch.linalg.svdvals(centred) / max(1.0, (len(sample) - 1) ** 0.5)
    return FeatureGeometry(
        raw_spacing=raw,
        scale=scale,
        spacing_q10=float(torch.quantile(distances, 0.1)) * scale,
        spacing_q90=float(torch.quantile(distances, 0.9)) * scale,
        component_std=float(sample.std(0).mean()),
        principal_std_min=float(principal.min()),
        principal_std_median=float(principal.median()),
        principal_std_max=float(principal.max()),
    )
