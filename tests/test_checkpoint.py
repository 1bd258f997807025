"""The typed checkpoint and its calibration (checkpoint.py, decision.py): round trips, the on-disk format, the
fallback of a checkpoint without calibration, and one decision rule for `glass test` and `Detector`.

No training: an untrained 64 px EfficientNet-Lite0 model stands in (its scores are as good as any for
checking that every reader of a checkpoint decides the same way).
"""

from __future__ import annotations

import ast
import csv
import dataclasses
from pathlib import Path

import numpy as np
import pytest
import torch

from glass_ad.config import make_config
from glass_ad.data.demo_data import make_demo_dataset
from glass_ad.evaluation.calibration import calibrate_holdout
from glass_ad.model.checkpoint import Checkpoint, CheckpointError, read_checkpoint
from glass_ad.model.decision import FALLBACK_METHOD, Calibration, F1Thresholds, Normalization
from glass_ad.model.glass_model import build_model
from glass_ad.model.training_record import TrainingRecord

STORED_CALIBRATION = {
    "method": "holdout-normal-quantile",
    "target_false_alarm_rate": 0.01,
    "holdout_images": 4,
    "image_threshold": 0.61,
    "pixel_threshold": 0.55,
    "image_normalization": {"center": 0.61, "scale": 0.04},
    "pixel_normalization": {"center": 0.55, "scale": 0.03},
    "holdout_image_scores": [0.5, 0.52, 0.58, 0.61],
    "warning": "only 4 held-out images",
}


@pytest.fixture(scope="module")
def config():
    return make_config("fast", backbone="efficientnet_lite0", image_size=64)


@pytest.fixture(scope="module")
def model(config):
    torch.manual_seed(0)
    m = build_model(config).eval()
    m.feature_scale.fill_(0.5)
    return m


@pytest.fixture(scope="module")
def checkpoint(model, config) -> Checkpoint:
    return Checkpoint.from_model(
        model,
        config,
        calibration=STORED_CALIBRATION,
        training={"data_root": "/data/x", "category": None, "epochs_run": 2, "history": [{"epoch": 1, "loss": 0.5}]},
        hypothesis="manifold",
        centre=torch.zeros(64, model.embed_dim),
        provenance={"package_version": "0", "data_fingerprint": "ab" * 32},
        bit_depth=12,
    )


def _same(a, b) -> bool:
    """Deep equality of plain checkpoint dicts (tensors compared by value)."""
    if isinstance(a, torch.Tensor) or isinstance(b, torch.Tensor):
        return isinstance(a, torch.Tensor) and isinstance(b, torch.Tensor) and torch.equal(a, b)
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(_same(a[k], b[k]) for k in a)
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b))
    return a == b


# ------------------------------------------------------------------------------------------ format


def test_save_load_round_trip_is_exact_and_plain(checkpoint, model, tmp_path):
    path = checkpoint.save(tmp_path / "run" / "model.pt")
    assert sorted(p.name for p in path.parent.iterdir()) == ["model.pt"]  # atomic: no temporary left
    plain = torch.load(path, weights_only=True)  # tensors and primitives only
    assert plain["format"] == "glass-ad/1" and plain["input"] == {"bit_depth": 12}
    assert plain["calibration"] == STORED_CALIBRATION  # the stored calibration, unchanged
    loaded = Checkpoint.load(tmp_path / "run")
    assert _same(loaded.to_dict(), plain)
    assert loaded.config == checkpoint.config and loaded.bit_depth == 12 and loaded.hypothesis == "manifold"
    assert loaded.training.epochs_run == 2 and loaded.training.history[0]["loss"] == 0.5
    assert loaded.backbone.name == "efficientnet_lite0" and loaded.calibration == checkpoint.calibration
    x = torch.rand(2, 3, 64, 64)
    with torch.no_grad():
        assert torch.equal(model(x).anomaly_maps, loaded.build_model("cpu")(x).anomaly_maps)


def test_the_stored_form_is_a_plain_dict(model, config, tmp_path):
    Checkpoint.from_model(model, config, hypothesis="manifold", training={"epochs_run": 1}).save(tmp_path / "model.pt")
    plain = read_checkpoint(tmp_path)
    assert isinstance(plain, dict) and plain["calibration"] == {} and plain["hypothesis"] == "manifold"
    torch.save(plain, tmp_path / "copy.pt")  # any writer of the same dict gives the same checkpoint
    assert _same(read_checkpoint(tmp_path / "copy.pt"), plain)


def test_unknown_entries_survive_a_rewrite(checkpoint, tmp_path):
    plain = checkpoint.to_dict()
    plain["site_note"] = "line 3"
    plain["calibration"] = {**plain["calibration"], "reviewer": "qa"}
    path = tmp_path / "model.pt"
    torch.save(plain, path)
    loaded = Checkpoint.load(path)
    loaded.save(path)
    again = torch.load(path, weights_only=True)
    assert again["site_note"] == "line 3" and again["calibration"]["reviewer"] == "qa"
    assert again["config_digest"] == plain["config_digest"]


def test_changed_settings_get_a_new_digest(checkpoint, tmp_path):
    edited = dataclasses.replace(checkpoint, config=checkpoint.config.replace(seed=7))
    Checkpoint.load(edited.save(tmp_path / "model.pt"))  # a deliberate change is not "edited by hand"


@pytest.mark.parametrize(
    "payload,fragment",
    [
        (b"", "is empty (0 bytes)"),
        ({"weight": torch.zeros(3)}, "is not a glass-ad checkpoint"),
        ("wrong-type", "has the wrong type"),
    ],
)
def test_refusals_are_one_line(checkpoint, tmp_path, payload, fragment):
    path = tmp_path / "model.pt"
    if isinstance(payload, bytes):
        path.write_bytes(payload)
    elif payload == "wrong-type":
        plain = checkpoint.to_dict()
        plain["backbone"] = {**plain["backbone"], "channels": ["x", "y"]}
        torch.save(plain, path)
    else:
        torch.save(payload, path)
    with pytest.raises(CheckpointError) as info:
        Checkpoint.load(path)
    assert fragment in str(info.value) and "\n" not in str(info.value)


# ------------------------------------------------------------------------------------- calibration


def test_calibration_round_trip_and_operating_points():
    stored = {**STORED_CALIBRATION, "f1_image_threshold": 0.7, "f1_pixel_threshold": None, "f1_val_images": 9}
    calibration = Calibration.from_dict(stored)
    assert calibration.f1 == F1Thresholds(0.7, None, method=None, val_images=9)
    assert calibration.operating_point("far") == ("far", 0.61, 0.55)
    assert calibration.operating_point("f1") == ("f1", 0.7, 0.55)  # no F1 pixel threshold: the false-alarm one
    assert calibration.operating_point(0.3) == ("custom", 0.3, 0.55)
    with pytest.raises(ValueError, match="'f1'"):
        calibration.operating_point("best")
    again = Calibration.from_dict(calibration.to_dict())
    assert again == calibration
    assert calibration.image_normalization(0.61) == pytest.approx(0.5)
    assert float(calibration.image_normalization(torch.tensor([0.61]))[0]) == pytest.approx(0.5)


def test_checkpoint_without_calibration_has_one_documented_behaviour():
    fallback = Calibration.fallback()
    assert fallback == Calibration.from_dict({}) == Calibration.from_dict(None)
    assert fallback.is_fallback and fallback.method == FALLBACK_METHOD
    assert fallback.operating_point("far") == ("far", 0.5, 0.5)
    assert fallback.image_normalization == Normalization.around(0.5)
    assert fallback.image_normalization(0.0) == pytest.approx(0.1) and fallback.image_normalization(0.5) == pytest.approx(0.5)
    assert fallback.to_dict() == {}  # nothing invented is stored
    with pytest.raises(ValueError, match="no F1 threshold"):
        fallback.operating_point("f1")
    partial = Calibration.from_dict({"image_threshold": 0.3})
    assert partial.pixel_threshold == 0.5 and partial.image_normalization == Normalization.around(0.3)


def test_a_holdout_calibration_survives_its_stored_form(model, config):
    holdout = torch.randint(0, 256, (4, 3, 64, 64), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    stored = calibrate_holdout(model, holdout, config, "cpu").to_dict()
    assert isinstance(stored, dict) and stored["holdout_images"] == 4 and "warning" in stored
    typed = Calibration.from_dict(stored)
    assert typed.to_dict() == stored and not typed.is_fallback


def test_training_record_keeps_absent_and_present_apart():
    assert not TrainingRecord.from_dict(None).recorded
    record = TrainingRecord.from_dict({"epochs_run": 3, "custom": 1})
    assert record.epochs_run == 3 and record.to_dict()["custom"] == 1
    assert "history" not in record.summary()


# ----------------------------------------------------------------------- inference vs export, threads


def test_inference_graph_lives_with_inference():
    from glass_ad.inference import engines, export, predict

    # One graph: defined with the engines, used by the Detector and exported as it is — under that one
    # name (no older names re-exported by predict or export).
    assert engines.InferenceGraph.__module__ == "glass_ad.inference.engines"
    assert not hasattr(predict, "InferenceGraph") and export.inference_graph is engines.inference_graph
    # No library module sets PyTorch's process-wide thread count for good: only the CLI does, and training's
    # `cpu_threads` block, which restores the caller's count when it ends.
    package = Path(__import__("glass_ad").__file__).parent
    for path in package.rglob("*.py"):
        if path.name.startswith("cli") or path.parent.name == "cli":
            continue
        calls = [
            node for node in ast.walk(ast.parse(path.read_text()))
            if isinstance(node, ast.Call) and getattr(node.func, "attr", None) == "set_num_threads"
        ]  # fmt: skip
        allowed = path.relative_to(package).as_posix() == "training/trainer.py" and len(calls) == 2
        assert not calls or allowed, path


def test_detector_leaves_torch_threads_alone(checkpoint, tmp_path):
    from glass_ad.inference.predict import Detector

    checkpoint.save(tmp_path / "model.pt")
    before = torch.get_num_threads()
    Detector.load(tmp_path, device="cpu", threads=before + 1)
    assert torch.get_num_threads() == before


# --------------------------------------------------------------------- one decision rule everywhere


@pytest.fixture(scope="module")
def demo(tmp_path_factory) -> Path:
    return make_demo_dataset(tmp_path_factory.mktemp("data"), n_train=4, n_test_good=4, n_test_defect=4, size=64)


def _test_decisions(run: Path, data: Path, csv_path: Path) -> tuple[dict, dict[str, float]]:
    from glass_ad.evaluation.tester import test as run_test

    report = run_test(run, data, progress=False, pictures=False, scores_csv=csv_path, workers=0)
    with open(csv_path, newline="") as handle:
        scores = {row["path"]: float(row["score"]) for row in csv.DictReader(handle)}
    return report, scores


@pytest.mark.parametrize("calibrated", [True, False], ids=["calibrated", "without calibration"])
def test_glass_test_and_detector_decide_alike(checkpoint, demo, tmp_path, calibrated):
    from glass_ad.inference.predict import Detector

    run = tmp_path / "run"
    uncalibrated = dataclasses.replace(checkpoint, calibration=Calibration.fallback())
    uncalibrated.save(run / "model.pt")
    if calibrated:  # thresholds in the middle of the test scores, so that both decisions occur
        scores = np.array([p.score for p in Detector.load(run, device="cpu")(sorted((demo / "test").rglob("*.png")))])
        middle = float(np.median(scores))
        stored = {**STORED_CALIBRATION, "image_threshold": middle, "image_normalization": {"center": middle, "scale": 0.01}}
        dataclasses.replace(checkpoint, calibration=Calibration.from_dict(stored)).save(run / "model.pt")
    report, scores = _test_decisions(run, demo, tmp_path / "scores.csv")
    detector = Detector.load(run, device="cpu")
    stored_threshold = report["stored_threshold"]
    assert stored_threshold["image_threshold"] == detector.image_threshold
    assert stored_threshold["pixel_threshold"] == detector.pixel_threshold
    assert stored_threshold["source"] == ("holdout-normal-quantile" if calibrated else FALLBACK_METHOD)
    predictions = detector([Path(p) for p in scores])
    flagged = 0
    for (path, score), prediction in zip(scores.items(), predictions):
        assert prediction.score == pytest.approx(score, abs=1e-5)
        if abs(score - detector.image_threshold) > 1e-5:  # not a tie within float noise
            assert prediction.is_anomalous == (score >= stored_threshold["image_threshold"]), path
        flagged += prediction.is_anomalous
    assert flagged == stored_threshold["tp"] + stored_threshold["fp"]
