"""Losses: BCE for the normal and GAS branches, focal loss with OHEM for the LAS branch."""

from __future__ import annotations

import torch
import torch.nn.functional as F

EPS = 1e-6


def bce(scores: torch.Tensor, target: float) -> torch.Tensor:
    """Binary cross-entropy of probabilities against a constant label (0 normal, 1 anomalous)."""
    return F.binary_cross_entropy(scores, torch.full_like(scores, target))


def focal_loss(scores: torch.Tensor, targets: torch.Tensor, gamma: float = 2.0) -> torch.Tensor:
    """Mean focal loss −(1−p_t)^γ·log(p_t) of probabilities `scores` against {0,1} `targets` (no α)."""
    p_true = torch.where(targets > 0.5, scores, 1.0 - scores).clamp(EPS, 1.0)
    return (-(1.0 - p_true) ** gamma * torch.log(p_true)).mean()


def ohem_select(scores: torch.Tensor, targets: torch.Tensor, quantile: float = 0.5) -> torch.Tensor:
    """Boolean mask of the hard examples: squared error (score − target)² at or above its `quantile`."""
    error = (scores.detach() - targets) ** 2
    if quantile <= 0:
        return torch.ones_like(error, dtype=torch.bool)
    return error >= torch.quantile(error.flatten().float(), quantile)


def las_loss(scores: torch.Tensor, targets: torch.Tensor, gamma: float = 2.0, quantile: float = 0.5) -> torch.Tensor:
    """OHEM(Focal(D(u+), mask)): focal loss over the hardest `1 − quantile` of the LAS patches."""
    keep = ohem_select(scores, targets, quantile)
    return focal_loss(scores[keep], targets[keep], gamma)
