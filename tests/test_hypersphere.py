"""The hypersphere branch (GLASS-h): the relative GAS shell, and GLASS-j's check that the picked branch trains."""

from __future__ import annotations

import json
import types

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from glass_ad.config import make_config
from glass_ad.model.discriminator import Discriminator
from glass_ad.model.geometry import SpacingProbe, measure_geometry
from glass_ad.synthesis.gas import GASSettings, hypersphere_bounds, synthesize
from glass_ad.training import branch_check
from glass_ad.training.branch_check import BranchCheck, ProbePoint, check_branch, probe_branch
from glass_ad.training.preparation import FeatureSetup, FeaturesInMemory


def _settings(shell: str, **overrides) -> GASSettings:
    values = dict(hypothesis="hypersphere", mode="full", noise_std=0.015, steps=4, step_size=0.005, project_every=2)
    values |= dict(r1=1.5, r2=3.0, unit=0.5, shell=shell) | overrides
    return GASSettings(**values)


def _points(seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    centres = torch.randn(400, 24, generator=generator)
    radii = torch.linspace(0.2, 12.0, 400)[:, None]  # inner, middle and outer vectors
    direction = torch.nn.functional.normalize(torch.randn(400, 24, generator=generator), dim=1)
    return centres + radii * direction, centres


def test_relative_shell_puts_every_copy_further_out_than_its_own_vector():
    u, centres = _points()
    radius = torch.quantile((u - centres).norm(dim=1), 0.75)
    settings = _settings("relative")
    v = synthesize(Discriminator(24, hidden=32), u, settings, centres=centres, radius=radius, generator=torch.Generator().manual_seed(0))
    own, new = (u - centres).norm(dim=1), (v - centres).norm(dim=1)
    r1, r2 = settings.r1 * settings.unit, settings.r2 * settings.unit
    assert torch.all(new >= torch.maximum(own + r1, radius) - 1e-4)
    assert torch.all(new <= torch.maximum(own + r2, 2 * radius) + 1e-4)
    assert torch.all((v - u).norm(dim=1) >= r1 - 1e-4)  # no copy is left on its own normal vector
    inner = own + r2 < radius  # well inside r'1: the paper's shell, unchanged
    assert inner.sum() > 50
    assert torch.all((new[inner] >= radius - 1e-4) & (new[inner] <= 2 * radius + 1e-4))


def test_paper_shell_keeps_the_reference_bounds_and_leaves_outer_vectors_in_place():
    u, centres = _points()
    radius = torch.quantile((u - centres).norm(dim=1), 0.75)
    v = synthesize(
        Discriminator(24, hidden=32), u, _settings("paper"), centres=centres, radius=radius, generator=torch.Generator().manual_seed(0)
    )
    own, new = (u - centres).norm(dim=1), (v - centres).norm(dim=1)
    assert torch.all((new >= radius - 1e-4) & (new <= 2 * radius + 1e-4))
    # The failure the relative shell fixes: vectors already in [r'1, 2r'1] barely move, yet are labelled GAS.
    outer = (own > radius) & (own < 2 * radius - 0.1)
    assert outer.sum() > 50
    assert float((v - u)[outer].norm(dim=1).max()) < 0.1
    low, high = hypersphere_bounds(u, centres, radius, _settings("paper"))
    assert float(low) == float(radius) and float(high) == float(2 * radius)


def test_unknown_shell_is_refused():
    with pytest.raises(ValueError, match="shell"):
        _settings("wider")
    with pytest.raises(ValueError, match="hypersphere_shell"):
        make_config("fast", hypersphere_shell="wider").validate()


def _real_features(root, count: int = 24):
    from glass_ad.data.layouts import load_dataset
    from glass_ad.data.preprocessing import Preprocessor, choose_fit
    from glass_ad.model.glass_model import build_model
    from glass_ad.training.preparation import decode_images

    config = make_config("fast", image_size=128, seed=0)
    model = build_model(config).eval()
    train = load_dataset(root).train
    samples = train[:: max(1, len(train) // count)][:count]
    images, _ = decode_images(samples, Preprocessor(128, None, choose_fit(train)), progress=False)
    with torch.no_grad():
        raw = torch.cat([model.features(images[i : i + 8].float() / 255) for i in range(0, len(images), 8)])
    train_raw, held_out_raw = raw[: count - 6], raw[count - 6 :]
    probe = SpacingProbe.from_features(train_raw, np.random.default_rng(0))
    scale = measure_geometry(probe, 1.0).scale
    model.feature_scale.fill_(scale)
    train_features = train_raw * scale
    setup = FeatureSetup(
        FeaturesInMemory(train_features),
        None,
        SpacingProbe(probe.queries * scale, probe.bank * scale),
        train_features.mean(0),
    )
    return model, setup, held_out_raw * scale, config


@pytest.mark.slow
@pytest.mark.parametrize("data", ["mtd_root", "mpdd_root"])
def test_hypersphere_gas_separates_on_real_features(data, request):
    """MTD (a texture) and MPDD metal_plate (an object) forced to the hypersphere: a few hundred normal + GAS
    steps must teach D to tell held-out normal patches from their GAS copies."""
    model, setup, held_out, config = _real_features(request.getfixturevalue(data))
    curve = probe_branch(model, setup, held_out, config, "hypersphere", 300, seed=0)
    assert curve[-1][1] >= 0.9, curve


def _decide(monkeypatch, proposed: str, separations: dict[str, float], scores: dict[str, float] | None = None) -> BranchCheck:
    """The check's decision with the probe replaced by fixed results (with `scores`, a validation set is given);
    also asserts that exactly the branches it reports were probed."""
    config = make_config("fast", branch_check_steps=10)
    calls = []

    def fake_probe(model, setup, held_out, config, hypothesis, steps, *, val=None, **kwargs):
        calls.append(hypothesis)
        return [ProbePoint(steps, separations[hypothesis], scores[hypothesis] if val is not None else None)]

    monkeypatch.setattr(branch_check, "probe_branch", fake_probe)
    setup = types.SimpleNamespace(features=range(400))  # the probe itself is replaced: only its size is read
    val = object() if scores is not None else None
    result = check_branch(None, setup, None, config, proposed, val=val, echo=lambda _: None)
    assert list(result.separations) == calls
    return result


def test_branch_check_switches_only_from_a_dead_branch_to_a_clearly_better_one(monkeypatch):
    def decide(proposed: str, separations: dict[str, float]) -> BranchCheck:
        return _decide(monkeypatch, proposed, separations)

    alive = decide("hypersphere", {"hypersphere": 0.95, "manifold": 0.99})
    assert alive.steps == 10
    assert alive.chosen == "hypersphere" and list(alive.separations) == ["hypersphere"]  # the other is not probed
    dead = decide("hypersphere", {"hypersphere": 0.48, "manifold": 0.93})
    assert dead.chosen == "manifold" and dead.switched and "instead of" in dead.describe()
    assert "near chance" in dead.reason
    both_dead = decide("manifold", {"manifold": 0.50, "hypersphere": 0.55})
    assert both_dead.chosen == "manifold"  # not clearly better: the spectrogram's pick stays


def test_branch_check_moves_a_live_hypersphere_only_to_a_manifold_that_validates_clearly_better(monkeypatch):
    """With a validation set a hypersphere pick is compared with the manifold: it gives way only to a live
    manifold whose validation score is higher by VALIDATION_MARGIN. A live manifold pick is not compared."""
    margin = branch_check.VALIDATION_MARGIN

    def decide(proposed: str, separations: dict[str, float], scores: dict[str, float]) -> BranchCheck:
        return _decide(monkeypatch, proposed, separations, scores)

    alive = {"hypersphere": 0.95, "manifold": 0.99}
    better = decide("hypersphere", alive, {"hypersphere": 0.40, "manifold": 0.40 + 2 * margin})
    assert better.chosen == "manifold" and better.reason == "the other branch scored higher on validation"
    assert better.validation == {"hypersphere": 0.40, "manifold": 0.40 + 2 * margin}
    assert "validation score" in better.describe() and "instead of" in better.describe()
    close = decide("hypersphere", alive, {"hypersphere": 0.40, "manifold": 0.40 + margin / 2})
    assert close.chosen == "hypersphere" and not close.reason  # within the margin: the rule's pick stays
    other_dead = decide("hypersphere", {"hypersphere": 0.95, "manifold": 0.30}, {"hypersphere": 0.40, "manifold": 0.90})
    assert other_dead.chosen == "hypersphere"  # a branch whose GAS does not train is never switched to
    assert set(other_dead.validation) == {"manifold", "hypersphere"}
    # A live manifold pick: the hypersphere is not probed, however it might have scored.
    manifold = decide("manifold", {"manifold": 0.95, "hypersphere": 0.97}, {"manifold": 0.40, "hypersphere": 0.90})
    assert manifold.chosen == "manifold" and list(manifold.separations) == ["manifold"]
    assert manifold.validation == {"manifold": 0.40} and "hypersphere" not in manifold.describe()
    # A dead manifold pick is still checked against the hypersphere's GAS.
    dead_manifold = decide("manifold", {"manifold": 0.45, "hypersphere": 0.90}, {"manifold": 0.40, "hypersphere": 0.30})
    assert dead_manifold.chosen == "hypersphere" and "near chance" in dead_manifold.reason
    # Checkpoints written before the validation comparison load without it.
    old = BranchCheck("hypersphere", "manifold", {"hypersphere": 0.5, "manifold": 0.9}, 10, 1.0)
    assert old.validation == {} and "near chance" in old.reason


@pytest.mark.slow
def test_the_branch_check_is_stored_with_the_model_and_shown_by_info(tmp_path):
    from glass_ad.cli import app
    from glass_ad.data.demo_data import make_demo_dataset
    from glass_ad.model.checkpoint import Checkpoint
    from glass_ad.training.trainer import train

    data = make_demo_dataset(tmp_path / "data", n_train=40, n_test_good=2, n_test_defect=2, size=64)
    config = make_config("fast", backbone="efficientnet_lite0", image_size=64, epochs=1, seed=0, branch_check_steps=4)
    lines: list[str] = []
    result = train(data, tmp_path / "run", config, progress=False, echo=lines.append)
    stored = Checkpoint.load(result.checkpoint).training.extra["branch_check"]
    assert stored["steps"] == 4 and stored["chosen"] == result.hypothesis
    # With a validation split the pick is scored; a hypersphere pick (or a dead one) is probed against the other.
    proposed = stored["proposed"]
    compared = proposed == "hypersphere" or stored["separations"][proposed] < 0.6
    expected = {"manifold", "hypersphere"} if compared else {proposed}
    assert set(stored["separations"]) == set(stored["validation"]) == expected
    assert any(line.startswith(("hypothesis check:", "hypothesis: ")) and "probe steps" in line for line in lines)
    shown = CliRunner().invoke(app, ["info", str(tmp_path / "run")])
    assert shown.exit_code == 0, shown.output
    assert json.loads(shown.output)["hypothesis_check"]["chosen"] == result.hypothesis
    short = make_config("fast", backbone="efficientnet_lite0", image_size=64, epochs=1, seed=0, branch_check_steps=500)
    shorter = train(data, tmp_path / "short", short, progress=False, echo=lambda _: None)
    assert Checkpoint.load(shorter.checkpoint).training.extra["branch_check"]["steps"] == 5  # one epoch: 36 images / 8
    forced = make_config("fast", backbone="efficientnet_lite0", image_size=64, epochs=1, seed=0, hypothesis="manifold", branch_check_steps=4)
    lines.clear()
    train(data, tmp_path / "forced", forced, progress=False, echo=lines.append)
    assert not any("probe steps" in line for line in lines)  # a forced hypothesis is not second-guessed
