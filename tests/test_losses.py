import math

import torch

from glass_ad.training.losses import bce, focal_loss, las_loss, ohem_select


def test_focal_loss_reference_values():
    # −(1−p_t)^2·ln(p_t): p=0.9 for a defect, p=0.3 for a normal patch (p_t = 0.7).
    assert math.isclose(float(focal_loss(torch.tensor([0.9]), torch.tensor([1.0]))), -(0.1**2) * math.log(0.9), rel_tol=1e-5)
    assert math.isclose(float(focal_loss(torch.tensor([0.3]), torch.tensor([0.0]))), -(0.3**2) * math.log(0.7), rel_tol=1e-5)
    both = focal_loss(torch.tensor([0.9, 0.3]), torch.tensor([1.0, 0.0]))
    assert math.isclose(float(both), 0.5 * (-(0.1**2) * math.log(0.9) - (0.3**2) * math.log(0.7)), rel_tol=1e-5)


def test_focal_loss_with_gamma_zero_is_bce():
    p = torch.tensor([0.2, 0.7, 0.95])
    y = torch.tensor([0.0, 1.0, 1.0])
    assert torch.isclose(focal_loss(p, y, gamma=0.0), torch.nn.functional.binary_cross_entropy(p, y), atol=1e-6)


def test_ohem_keeps_the_hardest_half():
    scores = torch.tensor([0.1, 0.9, 0.4, 0.6, 0.2, 0.8])
    targets = torch.tensor([0.0, 0.0, 1.0, 1.0, 1.0, 0.0])
    keep = ohem_select(scores, targets, 0.5)
    errors = (scores - targets) ** 2
    assert keep.sum() == 3
    assert errors[keep].min() >= errors[~keep].max()
    assert set(torch.nonzero(keep).flatten().tolist()) == {1, 4, 5}


def test_las_loss_only_counts_hard_examples():
    scores = torch.tensor([0.01, 0.02, 0.5, 0.6])
    targets = torch.tensor([0.0, 0.0, 1.0, 0.0])
    expected = focal_loss(scores[2:], targets[2:])
    assert torch.isclose(las_loss(scores, targets), expected)


def test_bce_constant_target():
    assert math.isclose(float(bce(torch.tensor([0.5]), 1.0)), math.log(2), rel_tol=1e-6)
