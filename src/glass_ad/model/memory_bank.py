"""A memory bank of normal patch vectors and the nearest-neighbour distance to it.

Used by the optional hybrid score (`--score hybrid`): the discriminator's logit plus the distance from each
patch vector to the nearest normal training patch, each standardised on the held-out normal images. The
bank is a greedy k-centre coreset of the training patches (the farthest point first, so that rare normal
patterns stay represented), chosen on a random projection for speed.

The distance is computed as √(‖q‖² − 2 q·b + ‖b‖²) with one matrix product, which exports to ONNX as plain
MatMul/ReduceMin nodes.
"""

from __future__ import annotations

import torch
from torch import nn

__all__ = ["greedy_coreset", "MemoryBank"]


@torch.no_grad()
def greedy_coreset(
    features: torch.Tensor, count: int, *, seed: int = 0, projection_dim: int = 128, pool: int | None = 200_000
) -> torch.Tensor:
    """Indices of `count` rows of `features` (N×D) picked by k-centre greedy selection.

    Selection runs on a random Gaussian projection to `projection_dim` dimensions (distances are kept up to
    a small distortion) over a random pool of at most `pool` rows (None: all rows, PatchCore's setting), which
    bounds the cost to O(count·pool). Each pick costs one matrix-vector product over the pool (squared
    distances ‖x‖² − 2x·c + ‖c‖²), which reads the projected pool once.
    """
    total = len(features)
    count = max(1, min(int(count), total))
    generator = torch.Generator().manual_seed(seed)
    size = total if pool is None else max(count, min(total, pool))
    candidates = torch.randperm(total, generator=generator)[:size]
    dim = features.shape[1]
    projection = torch.randn(dim, min(projection_dim, dim), generator=generator) / min(projection_dim, dim) ** 0.5
    reduced = torch.cat([features[candidates[i : i + 65536]].float() @ projection for i in range(0, size, 65536)])
    squared_norms = (reduced * reduced).sum(dim=1)
    chosen = torch.empty(count, dtype=torch.long)
    index = int(torch.randint(len(reduced), (1,), generator=generator))
    chosen[0] = index
    distance = squared_norms - 2 * (reduced @ reduced[index]) + squared_norms[index]
    for i in range(1, count):
        index = int(distance.argmax())
        chosen[i] = index
        torch.minimum(distance, squared_norms - 2 * (reduced @ reduced[index]) + squared_norms[index], out=distance)
    return candidates[chosen]


class MemoryBank(nn.Module):
    """Nearest-neighbour distance of N×D queries to a fixed M×D bank (buffers only, no parameters)."""

    def __init__(self, bank: torch.Tensor):
        super().__init__()
        bank = bank.detach().float()
        self.register_buffer("bank", bank)
        self.register_buffer("bank_sq", (bank * bank).sum(dim=1))

    def forward(self, queries: torch.Tensor) -> torch.Tensor:
        queries = queries.float()
        squared = (queries * queries).sum(dim=1, keepdim=True) - 2.0 * queries @ self.bank.T + self.bank_sq
        return squared.amin(dim=1).clamp_min(0.0).sqrt()

    def rescale_(self, factor: float) -> "MemoryBank":
        """Multiply the bank by `factor` (used when a feature scale is folded into other layers)."""
        self.bank.mul_(factor)
        self.bank_sq.mul_(factor * factor)
        return self
