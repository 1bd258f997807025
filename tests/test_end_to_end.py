"""Train on a tiny generated data set, then check the model found the defects (CPU, seconds)."""

import json

import pytest
import torch

from glass_ad.config import make_config
from glass_ad.demo_data import make_demo_dataset
from glass_ad.model import read_checkpoint
from glass_ad.tester import test as run_test
from glass_ad.trainer import train


def _config(**overrides):
    values = dict(backbone="efficientnet_lite0", image_size=64, epochs=6, early_stopping=False, seed=0)
    values.update(overrides)
    return make_config("fast", **values)


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return make_demo_dataset(tmp_path_factory.mktemp("data"), n_train=40, n_test_good=10, n_test_defect=10, size=64)


@pytest.fixture(scope="module")
def trained(data, tmp_path_factory):
    run = tmp_path_factory.mktemp("run")
    result = train(data, run, _config(), progress=False, echo=lambda _: None)
    return run, result


def test_defects_are_found(trained, data, tmp_path):
    run, result = trained
    report = run_test(run, data, json_path=tmp_path / "m.json", report_dir=tmp_path / "pics", progress=False)
    assert report["image_auroc"] > 0.85  # chance is 0.5
    assert report["pixel_auroc"] > 0.8
    for key in ("image_auroc", "pixel_auroc", "aupro", "image_ap", "pixel_ap"):
        assert 0.0 <= report[key] <= 1.0
    assert set(report["per_defect_type"]) == {"scratch", "spot"}
    written = json.loads((tmp_path / "m.json").read_text())
    assert written["image_auroc"] == pytest.approx(report["image_auroc"])
    assert (tmp_path / "pics" / "score_histogram.png").stat().st_size > 0


def test_checkpoint_is_self_contained(trained):
    run, result = trained
    checkpoint = read_checkpoint(run)  # weights_only=True inside
    assert checkpoint["hypothesis"] in ("manifold", "hypersphere")
    assert checkpoint["centre"].shape == (64, checkpoint["embed_dim"])
    assert checkpoint["calibration"]["image_threshold"] > 0
    assert checkpoint["training"]["holdout_images"] >= 4
    # No test image was read during training: only train/good paths are recorded.
    assert all("/train/good/" in p for p in checkpoint["training"]["holdout_paths"])


def test_seeded_runs_are_reproducible(data, tmp_path):
    config = _config(epochs=1)
    a = train(data, tmp_path / "a", config, progress=False, echo=lambda _: None)
    b = train(data, tmp_path / "b", config, progress=False, echo=lambda _: None)
    ca, cb = read_checkpoint(a.checkpoint), read_checkpoint(b.checkpoint)
    for key in ca["discriminator"]:
        assert torch.equal(ca["discriminator"][key], cb["discriminator"][key]), key


@pytest.mark.parametrize("hypothesis", ["manifold", "hypersphere"])
def test_both_hypotheses_train(data, tmp_path, hypothesis):
    result = train(data, tmp_path, _config(epochs=1, hypothesis=hypothesis), progress=False, echo=lambda _: None)
    assert result.hypothesis == hypothesis
    assert all(torch.isfinite(torch.tensor(r["loss"])) for r in result.history)


def test_cosine_schedule_decays_the_learning_rate(data, tmp_path):
    config = _config(epochs=3, lr_schedule="cosine", lr=1e-3)
    result = train(data, tmp_path, config, progress=False, echo=lambda _: None)
    rates = [record["lr"] for record in result.history]
    # CosineAnnealingLR over 3 epochs: lr·(1 + cos(π·t/3))/2 for t = 0, 1, 2.
    assert rates == pytest.approx([1e-3, 0.75e-3, 0.25e-3])


def test_unknown_schedule_is_rejected():
    with pytest.raises(ValueError, match="lr_schedule"):
        _config(lr_schedule="step")


def test_every_branch_is_measured_and_gas_is_alive(trained):
    """The history holds each branch's own effect: losses, GAS/LAS/unseen separations, the spacing."""
    from typer.testing import CliRunner

    from glass_ad.cli import app

    run, result = trained
    last = result.history[-1]
    for key in ("loss_normal", "loss_gas", "loss_las", "p_gas", "spacing", "val_gas_separation",
                "val_las_separation", "val_unseen_separation", "val_score"):
        assert key in last, key
    assert last["val_gas_separation"] > 0.7  # chance is 0.5; GAS is separable on held-out normals: the branch trains D
    assert last["loss_gas"] < 0.6931  # below ln 2: better than chance
    checkpoint = read_checkpoint(run)
    assert checkpoint["geometry"]["scale"] > 0 and 0 < checkpoint["geometry"]["spacing_q10"] <= 1.0
    shown = CliRunner().invoke(app, ["info", str(run)])
    assert shown.exit_code == 0, shown.output
    info = json.loads(shown.output)
    assert len(info["branches"]["epochs"]) == len(result.history)
    assert info["branches"]["warning"] is None
    assert info["geometry"]["raw_spacing"] > 0
