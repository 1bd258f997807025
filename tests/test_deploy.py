"""Deployment: Detector (PyTorch and ONNX Runtime), `glass predict`, `glass export`, `glass calibrate`.

One tiny model is trained once for the module (64 px, EfficientNet-Lite0, 1 epoch: seconds on a CPU).
Parity is checked on real images (MTD test images of several sizes when ../shared/data/mtd exists).
"""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

from glass_ad.calibration import f1_calibration, load_validation_set, normalize_scores
from glass_ad.cli import app
from glass_ad.config import GlassConfig, make_config
from glass_ad.demo_data import make_demo_dataset
from glass_ad.export import export_onnx, onnx_throughput, read_metadata
from glass_ad.io import read_image
from glass_ad.model import load_model, read_checkpoint
from glass_ad.predict import CSV_COLUMNS, Detector, Prediction
from glass_ad.trainer import train

SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
PARITY_TOLERANCE = 1e-4


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    # The tiny 64 px model gains nothing from threads, and on a shared, busy CPU OpenMP's two threads
    # wait on each other for milliseconds per operation (measured: 1.8 s vs 0.02 s per batch).
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    return make_demo_dataset(tmp_path_factory.mktemp("data"), n_train=24, n_test_good=4, n_test_defect=4, size=64)


@pytest.fixture(scope="module")
def run(data, tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("run")
    config = make_config("fast", epochs=1, image_size=64, backbone="efficientnet_lite0", early_stopping=False, num_threads=1)
    train(data, folder, config, progress=False, echo=lambda _: None)
    return folder


@pytest.fixture(scope="module")
def onnx_file(run) -> Path:
    result = export_onnx(run)  # default location RUN_DIR/model.onnx, where Detector looks for it
    assert result.path == run / "model.onnx"
    assert result.opset >= 17
    assert max(result.max_abs_diff.values()) < PARITY_TOLERANCE
    return result.path


@pytest.fixture(scope="module")
def real_images(data) -> list[Path]:
    """A few real images of different sizes: MTD test images when present, else the demo test images."""
    mtd = SHARED_DATA / "mtd" / "test"
    if mtd.is_dir():
        found = [sorted(p.glob("*.png"))[:2] for p in sorted(mtd.iterdir()) if p.is_dir()]
        images = [path for group in found for path in group]
        if images:
            return images
    return sorted((data / "test").rglob("*.png"))


@pytest.fixture(scope="module")
def torch_detector(run) -> Detector:
    return Detector.load(run, device="cpu", engine="torch", batch_size=4)


# ------------------------------------------------------------------------------------------ parity


def test_onnx_runtime_matches_pytorch_on_real_images(run, onnx_file, real_images, torch_detector):
    onnx_detector = Detector.load(run, engine="onnx", batch_size=3)  # another batch size on purpose
    a, b = torch_detector(real_images), onnx_detector(real_images)
    assert len(a) == len(b) == len(real_images)
    score_diff = max(abs(x.score - y.score) for x, y in zip(a, b))
    norm_diff = max(abs(x.normalized - y.normalized) for x, y in zip(a, b))
    map_diff = max(float(np.abs(x.anomaly_map - y.anomaly_map).max()) for x, y in zip(a, b))
    assert score_diff < PARITY_TOLERANCE and norm_diff < PARITY_TOLERANCE and map_diff < PARITY_TOLERANCE
    for x, path in zip(a, real_images):
        original = read_image(path)
        assert x.anomaly_map.shape == original.shape[:2] and x.anomaly_map.dtype == np.float32
        assert x.region.dtype == np.bool_ and np.array_equal(x.region, x.anomaly_map >= torch_detector.pixel_threshold)
        assert x.is_anomalous == (x.score >= torch_detector.image_threshold)
        assert x.path == str(path)


def test_exported_model_takes_frames_and_carries_what_deciding_needs(run, onnx_file, real_images, torch_detector, tmp_path):
    from glass_ad.runtime import Runtime

    meta = read_metadata(onnx_file)
    for key in ("image_threshold", "pixel_threshold", "f1_image_threshold", "normalization_center",
                "pixel_normalization_scale", "bit_depth", "fit", "resize", "package_version", "export_package_version"):  # fmt: skip
        assert key in meta
    assert meta["preprocessing"] == "in-graph"
    runtime = Runtime(onnx_file, batch_size=3)  # torch-free: nothing but the ONNX file
    assert runtime.image_threshold == torch_detector.image_threshold
    a, b = torch_detector(real_images), runtime(real_images)
    assert [x.decision for x in a] == [y.decision for y in b]
    assert max(abs(x.score - y.score) for x, y in zip(a, b)) < 1e-3
    assert all(x.anomaly_map.shape == y.anomaly_map.shape for x, y in zip(a, b))
    # The S×S graph (preprocessing outside) still exports, and the runtime feeds it by the numpy reference.
    crop = export_onnx(run, tmp_path / "crop.onnx", preprocessing=False)
    assert read_metadata(crop.path)["preprocessing"] == "external"
    c = Runtime(crop.path)(real_images)
    assert max(abs(x.score - y.score) for x, y in zip(a, c)) < 1e-3


def test_predict_saves_maps_masks_and_boxes(run, real_images, tmp_path):
    from glass_ad.predict import predict_files

    summary = predict_files(run, real_images[:2], tmp_path / "npy", progress=False, save_maps="npy", save_masks=True,
                            overlays=False, threshold=-1e9)  # fmt: skip
    rows = json.loads((tmp_path / "npy" / "predictions.json").read_text())["predictions"]
    for row in rows:
        raw = np.load(row["map"])
        mask = np.asarray(Image.open(row["mask"]))
        assert raw.shape == mask.shape == (row["height"], row["width"]) and raw.dtype == np.float32
        assert set(np.unique(mask)) <= {0, 255} and (mask > 0).mean() == pytest.approx(row["region_fraction"])
        assert all(set(box) == {"x", "y", "width", "height", "area", "peak"} for box in row["boxes"])
        assert sum(box["area"] for box in row["boxes"]) == int((mask > 0).sum())
    summary = predict_files(run, real_images[:1], tmp_path / "png", progress=False, save_maps="png", overlays=False)
    row = json.loads((tmp_path / "png" / "predictions.json").read_text())["predictions"][0]
    png, raw = np.asarray(Image.open(row["map"])), np.load(tmp_path / "npy" / "maps" / Path(rows[0]["map"]).relative_to(tmp_path / "npy" / "maps"))
    low, high = summary["maps"]["png_low"], summary["maps"]["png_high"]
    assert png.dtype == np.uint16 and png.shape == raw.shape
    assert np.abs(low + (high - low) * png / 65535.0 - np.clip(raw, low, high)).max() <= (high - low) / 65535.0
    with pytest.raises(ValueError, match="save_maps"):
        predict_files(run, real_images[:1], tmp_path / "bad", progress=False, save_maps="tiff")


def test_exported_graph_is_the_inference_graph(run, onnx_file):
    meta = read_metadata(onnx_file)
    checkpoint = read_checkpoint(run)
    assert int(meta["image_size"]) == 64
    assert float(meta["image_threshold"]) == checkpoint["calibration"]["image_threshold"]
    # The PyTorch model alone (float input) gives the ONNX raw outputs for the same uint8 pixels.
    model, _ = load_model(run)
    images = np.random.default_rng(1).integers(0, 256, (3, 64, 64, 3), dtype=np.uint8)
    detector = Detector.load(run, engine="onnx")
    scores, normalized, maps = detector.score_prepared(images)
    with torch.no_grad():
        out = model(torch.from_numpy(images).permute(0, 3, 1, 2).float() / 255.0)
    assert np.abs(scores - out.image_scores.numpy()).max() < PARITY_TOLERANCE
    assert np.abs(maps - out.anomaly_maps.numpy()).max() < PARITY_TOLERANCE
    assert maps.shape == (3, 64, 64) and scores.shape == normalized.shape == (3,)


def test_normalized_score_threshold_is_half_monotone_and_same_in_onnx(run, onnx_file):
    calibration = read_checkpoint(run)["calibration"]
    params, threshold = calibration["image_normalization"], calibration["image_threshold"]
    assert float(normalize_scores(torch.tensor([threshold]), params)[0]) == pytest.approx(0.5, abs=1e-6)
    assert float(normalize_scores(np.array([threshold]), params)[0]) == pytest.approx(0.5, abs=1e-12)
    grid = np.linspace(threshold - 1.0, threshold + 1.0, 2001)
    values = normalize_scores(grid, params)
    assert np.all(np.diff(values) >= 0) and values.min() >= 0.0 and values.max() <= 1.0
    # ONNX's normalised output is the same formula applied to its raw output.
    images = np.random.default_rng(2).integers(0, 256, (4, 64, 64, 3), dtype=np.uint8)
    raw, normalized, _ = Detector.load(run, engine="onnx").score_prepared(images)
    expected = normalize_scores(torch.from_numpy(raw), params).numpy()
    assert np.abs(normalized - expected).max() < 1e-6


# --------------------------------------------------------------------------------------------- inputs


def test_array_pil_and_path_give_the_same_prediction(torch_detector, real_images, tmp_path):
    path = real_images[-1]
    pixels = read_image(path)
    grey_path = tmp_path / "grey16.png"
    grey16 = (pixels[:, :, 0].astype(np.uint16) * 257)  # full-range 16-bit: read back as the same 8 bits
    Image.fromarray(grey16).save(grey_path)
    inputs = [path, str(path), pixels, Image.open(path), pixels[:, :, 0], grey_path]
    if not np.array_equal(pixels[:, :, 0], pixels[:, :, 1]):  # colour image: grey variants differ
        inputs = inputs[:4]
    results = torch_detector(inputs)
    single = torch_detector(pixels)
    assert isinstance(single, Prediction) and isinstance(results, list)
    for other in results:
        assert other.score == pytest.approx(single.score, abs=1e-6)
        assert np.allclose(other.anomaly_map, single.anomaly_map, atol=1e-6)
        assert np.array_equal(other.region, single.region)
    assert results[0].path == str(path) and results[2].path is None


def test_bad_inputs_raise_one_line_errors(torch_detector, tmp_path):
    empty = tmp_path / "empty.png"
    empty.write_bytes(b"")
    with pytest.raises(ValueError, match="empty"):
        torch_detector(empty)
    with pytest.raises(ValueError, match="1x1 pixels"):
        torch_detector(np.zeros((1, 1, 3), np.uint8))
    with pytest.raises(TypeError, match="numpy array, a PIL image or a path"):
        torch_detector(42)
    with pytest.raises(ValueError, match="'f1'"):
        Detector.load(torch_detector.source, threshold="best")


# ------------------------------------------------------------------------------------------- commands


def _bad_folder(root: Path, real_images: list[Path]) -> Path:
    folder = root / "inputs"
    (folder / "nested").mkdir(parents=True)
    (folder / "no_images").mkdir()
    for i, path in enumerate(real_images[:2]):
        shutil.copy(path, folder / "nested" / f"good_{i}{path.suffix}")
    Image.open(real_images[0]).convert("RGB").save(folder / "as_jpeg.jpg")
    (folder / "zero.png").write_bytes(b"")
    (folder / "garbage.png").write_bytes(b"\x89PNG not really" * 20)
    Image.new("L", (1, 1)).save(folder / "tiny.png")
    return folder


def test_predict_command_skips_bad_files_and_writes_results(run, real_images, tmp_path):
    folder = _bad_folder(tmp_path, real_images)
    out = tmp_path / "out"
    runner = CliRunner()
    result = runner.invoke(app, ["predict", str(run), str(folder), str(folder / "no_images"), "--out", str(out), "--format", "csv", "-q"])
    assert result.exit_code == 0, result.output
    errors = [line for line in result.stderr.splitlines() if line.startswith("skipped:")]
    assert len(errors) == 4  # zero-byte, garbage, 1x1, folder without images: one line each
    for name in ("zero.png", "garbage.png", "tiny.png", "no_images"):
        assert sum(name in line for line in errors) == 1, errors
    assert "3 images" in result.stdout and "4 skipped" in result.stdout
    with open(out / "predictions.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert tuple(rows[0].keys()) == CSV_COLUMNS
    assert len(rows) == 3 and {r["decision"] for r in rows} <= {"normal", "anomalous"}
    for row in rows:
        assert 0.0 <= float(row["normalized_score"]) <= 1.0
        overlay = Image.open(row["overlay"])
        assert max(int(row["width"]), int(row["height"])) <= 1024  # drawn at full size: three tiles wide
        # three tiles, then the colour scale (a strip narrower than a tile for these sizes)
        assert 3 * int(row["width"]) < overlay.size[0] < 4 * int(row["width"]) and overlay.mode == "RGB"


def test_predict_command_json_and_all_bad_input(run, onnx_file, real_images, tmp_path):
    runner = CliRunner()
    out = tmp_path / "json"
    result = runner.invoke(app, ["predict", str(run), str(real_images[0]), "--out", str(out), "--engine", "onnx", "--no-overlays", "-q"])
    assert result.exit_code == 0, result.output
    report = json.loads((out / "predictions.json").read_text())
    assert report["engine"] == "onnx" and report["n_images"] == 1 and report["n_failed"] == 0
    assert set(report["predictions"][0]) >= {"path", "score", "normalized_score", "decision", "width", "height"}
    assert report["threshold"]["kind"] == "far"

    bad = tmp_path / "bad.png"
    bad.write_bytes(b"")
    result = runner.invoke(app, ["predict", str(run), str(bad), str(tmp_path / "missing.png"), "--out", str(tmp_path / "x"), "-q"])
    assert result.exit_code != 0
    assert "no image could be processed" in result.stderr


def test_export_command(run, tmp_path):
    result = CliRunner().invoke(app, ["export", str(run), "--format", "onnx", "--out", str(tmp_path / "m.onnx")])
    assert result.exit_code == 0, result.output
    assert (tmp_path / "m.onnx").is_file() and "max |difference|" in result.stdout
    assert onnx_throughput(tmp_path / "m.onnx", 64, batch_size=2, repeats=1) > 0


def test_calibrate_adds_f1_thresholds_and_keeps_the_false_alarm_one(run, data, tmp_path):
    copy = tmp_path / "run"
    copy.mkdir()
    shutil.copy(run / "model.pt", copy / "model.pt")
    before = read_checkpoint(copy)["calibration"]
    result = CliRunner().invoke(app, ["calibrate", str(copy), "--val", str(data / "test"), "-q"])
    assert result.exit_code == 0, result.output
    after = read_checkpoint(copy)["calibration"]
    for key, value in before.items():
        assert after[key] == value  # false-alarm threshold, normalisation, holdout scores: untouched
    assert {"f1_image_threshold", "f1_pixel_threshold", "f1_val_images"} <= set(after)
    normal, defects = len(list((data / "test" / "good").iterdir())), len(list((data / "test").rglob("*.png")))
    assert after["f1_val_images"] == defects and after["f1_val_anomalous"] == defects - normal
    assert 0.0 <= after["f1_pixel_threshold"] <= 1.0
    assert Detector.load(copy, threshold="f1").image_threshold == after["f1_image_threshold"]

    # The function itself: the threshold is F1-optimal on the set it was computed on.
    model, checkpoint = load_model(copy)
    samples, _ = load_validation_set(data / "test")
    direct = f1_calibration(model, samples, GlassConfig.from_dict(checkpoint["config"]), "cpu")
    assert direct["f1_image_threshold"] == pytest.approx(after["f1_image_threshold"])
    flag_all = 2 * (defects - normal) / (2 * (defects - normal) + normal)  # F1 of calling every image a defect
    assert direct["f1_image_f1"] >= flag_all - 1e-9

    from glass_ad.tester import test as run_test

    report = run_test(copy, data, progress=False, pictures=False)
    assert report["f1_threshold"]["image_threshold"] == after["f1_image_threshold"]
    assert report["stored_threshold"]["image_threshold"] == before["image_threshold"]


# ------------------------------------------------------------------------------------------ OpenVINO


def test_openvino_export_fp32(run, onnx_file, real_images, tmp_path):
    pytest.importorskip("openvino")
    from glass_ad.openvino_export import export_openvino, read_metadata as ov_metadata
    from glass_ad.runtime import Runtime

    fp32 = export_openvino(run, tmp_path / "model.xml")
    assert fp32.path.is_file() and fp32.path.with_suffix(".bin").is_file()
    assert max(fp32.max_abs_diff.values()) < 1e-3  # vs ONNX Runtime, with the f32 precision hint
    meta = ov_metadata(fp32.path)
    assert meta["inference_precision_hint"] == "f32" and meta["precision"] == "fp32" and meta["preprocessing"] == "in-graph"
    onnx_runtime, openvino = Runtime(onnx_file), Runtime(fp32.path)
    assert openvino.providers == ["OpenVINO:CPU"]
    a, b = onnx_runtime(real_images), openvino(real_images)
    assert [x.decision for x in a] == [y.decision for y in b]
    assert max(abs(x.score - y.score) for x, y in zip(a, b)) < 1e-3
    detector = Detector.load(run, engine="openvino", onnx_path=fp32.path)  # checked against the checkpoint
    assert detector.engine_name == "openvino"
    assert [p.decision for p in detector(real_images)] == [x.decision for x in a]

    result = CliRunner().invoke(app, ["export", str(run), "--format", "openvino", "--precision", "int8", "--out", str(tmp_path / "q.xml")])
    assert result.exit_code == 2 and "--calibration" in result.output


def test_openvino_int8_export_runs(run, data, onnx_file, real_images, tmp_path):
    pytest.importorskip("openvino")
    pytest.importorskip("nncf")  # not in the test extra (large); the int8 path is checked where it is installed
    from glass_ad.openvino_export import export_openvino, read_metadata as ov_metadata
    from glass_ad.runtime import Runtime

    a = Runtime(onnx_file)(real_images[:2])
    int8 = export_openvino(run, tmp_path / "int8.xml", precision="int8", calibration=data, calibration_limit=4, fast=True)
    assert int8.calibration_images == 4 and ov_metadata(int8.path)["precision"] == "int8"
    quantized = Runtime(int8.path)(real_images[:2])
    assert all(np.isfinite(p.score) and p.anomaly_map.shape == x.anomaly_map.shape for p, x in zip(quantized, a))
