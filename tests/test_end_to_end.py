"""Train on a tiny generated data set, then check the model found the defects (CPU, seconds; marked slow)."""

import csv
import json

import numpy as np
import pytest
import torch
from PIL import Image

from glass_ad.config import make_config
from glass_ad.data.demo_data import make_demo_dataset
from glass_ad.data.io import read_mask
from glass_ad.data.layouts import load_dataset
from glass_ad.evaluation import metrics
from glass_ad.evaluation.tester import test as run_test
from glass_ad.inference.predict import Detector
from glass_ad.model.checkpoint import read_checkpoint
from glass_ad.training.trainer import train


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
    said = []
    result = train(data, run, _config(), progress=False, echo=said.append)
    (run / "said.txt").write_text("\n".join(said))
    return run, result


def test_the_hybrid_bank_is_built_before_the_first_epoch(trained):
    """The bank depends on the frozen features only: built during the set-up, the time limit counts it."""
    run, _ = trained
    said = (run / "said.txt").read_text().splitlines()
    built = next(i for i, line in enumerate(said) if line.startswith("hybrid score: memory bank built before the epochs"))
    first_epoch = next(i for i, line in enumerate(said) if line.startswith("epoch "))
    assert built < first_epoch
    assert any(line.startswith("hybrid score: memory bank of ") for line in said[first_epoch:])  # set at the end


@pytest.mark.slow
def test_defects_are_found(trained, data, tmp_path, read_histogram):
    run, result = trained
    report = run_test(
        run, data, json_path=tmp_path / "m.json", report_dir=tmp_path / "pics", scores_csv=tmp_path / "scores.csv", progress=False
    )  # fmt: skip
    assert report["image_auroc"] > 0.85  # chance is 0.5
    assert report["pixel_auroc"] > 0.8
    assert set(report["per_defect_type"]) == {"scratch", "spot"}
    written = json.loads((tmp_path / "m.json").read_text())
    assert written["image_auroc"] == pytest.approx(report["image_auroc"])

    # Every figure recomputed from the Detector (the deployment path) on the same test images.
    samples = load_dataset(data).test
    with (tmp_path / "scores.csv").open(newline="") as handle:
        listed = {row["path"]: float(row["score"]) for row in csv.DictReader(handle)}
    predictions = Detector.load(run, device="cpu").predict([str(s.path) for s in samples])
    scores = np.array([p.score for p in predictions])
    labels = np.array([s.label for s in samples])
    maps = np.stack([p.anomaly_map for p in predictions])
    masks = np.stack([read_mask(s.mask_path) if s.label else np.zeros(maps.shape[1:], bool) for s in samples])
    assert [listed[str(s.path)] for s in samples] == pytest.approx(scores.tolist(), rel=1e-4, abs=1e-5)
    assert report["image_auroc"] == pytest.approx(metrics.image_auroc(scores, labels), abs=1e-9)
    assert report["image_ap"] == pytest.approx(metrics.image_ap(scores, labels), abs=1e-9)
    assert report["pixel_auroc"] == pytest.approx(metrics.pixel_auroc(maps, masks), abs=1e-4)
    assert report["pixel_ap"] == pytest.approx(metrics.pixel_ap(maps, masks), abs=1e-3)
    assert report["aupro"] == pytest.approx(metrics.aupro(maps, masks), abs=1e-3)
    spot = np.array([s.defect_type == "spot" for s in samples])
    keep = spot | (labels == 0)
    spot_report = report["per_defect_type"]["spot"]
    assert spot_report["n"] == int(spot.sum())
    assert spot_report["image_auroc"] == pytest.approx(metrics.image_auroc(scores[keep], spot[keep]))
    assert spot_report["pixel_auroc"] == pytest.approx(metrics.pixel_auroc(maps[keep], masks[keep]), abs=1e-4)
    assert spot_report["aupro"] == pytest.approx(metrics.aupro(maps[keep], masks[keep]), abs=1e-3)
    assert spot_report["anomalous_pixels"] == int(masks[spot].sum())
    threshold = report["stored_threshold"]["image_threshold"]
    assert report["stored_threshold"]["tp"] == int(((scores >= threshold) & (labels == 1)).sum())
    assert report["stored_threshold"]["fp"] == int(((scores >= threshold) & (labels == 0)).sum())

    # The histogram shows both classes and the stored threshold between the spines.
    with Image.open(tmp_path / "pics" / "score_histogram.png") as picture:
        assert picture.format == "PNG" and picture.size == (600, 400)
    parts = read_histogram(tmp_path / "pics" / "score_histogram.png", min_bar_height=10)
    assert parts["normal"] and parts["anomalous"] and len(parts["dark"]) == 3


@pytest.mark.slow
def test_checkpoint_is_self_contained(trained):
    run, result = trained
    checkpoint = read_checkpoint(run)  # weights_only=True inside
    assert checkpoint["hypothesis"] in ("manifold", "hypersphere")
    assert checkpoint["centre"].shape == (64, checkpoint["embed_dim"])
    assert checkpoint["calibration"]["image_threshold"] > 0
    assert checkpoint["training"]["holdout_images"] >= 4
    # No test image was read during training: only train/good paths are recorded.
    assert all("/train/good/" in p for p in checkpoint["training"]["holdout_paths"])


@pytest.mark.slow
def test_seeded_runs_are_reproducible(data, tmp_path):
    config = _config(epochs=1)
    a = train(data, tmp_path / "a", config, progress=False, echo=lambda _: None)
    b = train(data, tmp_path / "b", config, progress=False, echo=lambda _: None)
    ca, cb = read_checkpoint(a.checkpoint), read_checkpoint(b.checkpoint)
    for key in ca["discriminator"]:
        assert torch.equal(ca["discriminator"][key], cb["discriminator"][key]), key


@pytest.mark.slow
@pytest.mark.parametrize("hypothesis", ["manifold", "hypersphere"])
def test_both_hypotheses_train(data, tmp_path, hypothesis):
    result = train(data, tmp_path, _config(epochs=1, hypothesis=hypothesis), progress=False, echo=lambda _: None)
    assert result.hypothesis == hypothesis
    assert all(torch.isfinite(torch.tensor(r["loss"])) for r in result.history)


@pytest.mark.slow
def test_cosine_schedule_decays_the_learning_rate(data, tmp_path):
    config = _config(epochs=3, lr_schedule="cosine", lr=1e-3)
    result = train(data, tmp_path, config, progress=False, echo=lambda _: None)
    rates = [record["lr"] for record in result.history]
    # CosineAnnealingLR over 3 epochs: lr·(1 + cos(π·t/3))/2 for t = 0, 1, 2.
    assert rates == pytest.approx([1e-3, 0.75e-3, 0.25e-3])


def test_unknown_schedule_is_rejected():
    with pytest.raises(ValueError, match="lr_schedule"):
        _config(lr_schedule="step")


@pytest.mark.slow
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


@pytest.mark.slow
def test_a_runs_validation_split_is_rebuilt_after_training(trained, data):
    """Measurements after training (benchmarks/) see exactly what model selection saw."""
    from glass_ad.training.validation import rebuild_run_validation, validate

    run, result = trained
    rebuilt = rebuild_run_validation(run, data)
    assert len(rebuilt.val.normal) == len(rebuilt.images.holdout) == read_checkpoint(run)["training"]["holdout_images"]
    kept = result.history[result.best_epoch - 1]
    again = validate(rebuilt.model, rebuilt.val)
    for key in ("val_image_auroc", "val_patch_ap", "val_unseen_image_auroc", "val_unseen_patch_ap"):
        assert again[key] == pytest.approx(kept[key], abs=1e-6), key
