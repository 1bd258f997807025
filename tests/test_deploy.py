"""Deployment: Detector (PyTorch and ONNX Runtime), `glass predict`, `glass export`, `glass calibrate`.

One tiny model is trained once for the module (64 px, EfficientNet-Lite0, 1 epoch: seconds on a CPU).
Parity is checked on the demo images and frames of other sizes and colour made from them, and (marked
`realdata`, skipped without it) on MTD test images of several sizes from ../shared/data/mtd.
"""

from __future__ import annotations

import csv
import json
import math
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

from glass_ad.cli import app
from glass_ad.config import GlassConfig, make_config
from glass_ad.data.demo_data import make_demo_dataset
from glass_ad.data.io import read_image, read_mask
from glass_ad.evaluation.calibration import _PIXEL_SPANS, f1_calibration, load_validation_set
from glass_ad.inference.export import export_onnx
from glass_ad.inference.exported import read_metadata
from glass_ad.inference.predict import CSV_COLUMNS, Detector
from glass_ad.inference.runtime import Prediction
from glass_ad.model.checkpoint import Checkpoint, read_checkpoint
from glass_ad.model.decision import Normalization
from glass_ad.research.benchmark import onnx_throughput
from glass_ad.training.trainer import train

PARITY_TOLERANCE = 1e-4


pytestmark = pytest.mark.usefixtures("one_torch_thread")


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
def frames(data, tmp_path_factory) -> list[Path]:
    """Images of several sizes and kinds, no real data needed: the demo test images (64 px RGB), then a
    wide RGB frame and a tall grey one made from them (the last image is grey on purpose)."""
    demo = sorted((data / "test").rglob("*.png"))
    folder = tmp_path_factory.mktemp("frames")
    wide, tall = folder / "wide_rgb.png", folder / "tall_grey.png"
    Image.open(demo[-1]).convert("RGB").resize((200, 120), Image.BILINEAR).save(wide)
    Image.open(demo[-5]).convert("L").resize((61, 113), Image.BILINEAR).save(tall)
    return [*demo, wide, tall]


@pytest.fixture(scope="module")
def mtd_images(mtd_root) -> list[Path]:
    """Two MTD test images per defect type (grey, of several sizes); skips without ../shared/data/mtd."""
    found = [sorted(p.glob("*.png"))[:2] for p in sorted((mtd_root / "test").iterdir()) if p.is_dir()]
    images = [path for group in found for path in group]
    if not images:
        pytest.skip(f"no MTD test images under {mtd_root / 'test'}")
    return images


@pytest.fixture(scope="module")
def torch_detector(run) -> Detector:
    return Detector.load(run, device="cpu", engine="torch", batch_size=4)


# ------------------------------------------------------------------------------------------ parity


def _check_onnx_matches_pytorch(run: Path, torch_detector: Detector, images: list[Path]) -> None:
    onnx_detector = Detector.load(run, engine="onnx", batch_size=3)  # another batch size on purpose
    a, b = torch_detector(images), onnx_detector(images)
    assert len(a) == len(b) == len(images)
    score_diff = max(abs(x.score - y.score) for x, y in zip(a, b))
    norm_diff = max(abs(x.normalized - y.normalized) for x, y in zip(a, b))
    map_diff = max(float(np.abs(x.anomaly_map - y.anomaly_map).max()) for x, y in zip(a, b))
    assert score_diff < PARITY_TOLERANCE and norm_diff < PARITY_TOLERANCE and map_diff < PARITY_TOLERANCE
    for x, path in zip(a, images):
        original = read_image(path)
        assert x.anomaly_map.shape == original.shape[:2] and x.anomaly_map.dtype == np.float32
        # The region: the pixel threshold raised half-way to this map's own peak (docs/deploy.md).
        peak, level = float(x.anomaly_map.max()), torch_detector.pixel_threshold
        if peak > level:
            level += 0.5 * (peak - level)
        assert x.region.dtype == np.bool_ and np.array_equal(x.region, x.anomaly_map >= level)
        assert torch_detector.region_level(x.anomaly_map) == pytest.approx(level)
        assert x.is_anomalous == (x.score >= torch_detector.image_threshold)
        assert x.path == str(path)


def test_onnx_runtime_matches_pytorch_on_frames(run, onnx_file, frames, torch_detector):
    assert len({read_image(path).shape for path in frames}) == 3  # 64 px RGB, wide RGB, tall grey
    _check_onnx_matches_pytorch(run, torch_detector, frames)


def test_onnx_runtime_matches_pytorch_on_real_images(run, onnx_file, mtd_images, torch_detector):
    _check_onnx_matches_pytorch(run, torch_detector, mtd_images)


@pytest.mark.xfail(
    strict=True,
    reason="bug: on frames whose resize lands pixels on exact halves (61x61 upscaled to 64, a 2x shrink of 128x128) "
    "the numpy reference framing.preprocess, Detector.prepare (PyTorch) and the in-graph ONNX preprocessing round "
    "some pixels to different grey levels (float ties before round-half-to-even); scores then differ by ~2e-4",
)
def test_preprocessing_is_the_same_pixels_on_tie_prone_frames(run, onnx_file, data, torch_detector, tmp_path):
    from glass_ad.inference.runtime import Runtime, preprocess

    source = Image.open(sorted((data / "test").rglob("*.png"))[-1]).convert("RGB")
    frames = []
    for size in ((61, 61), (128, 128)):
        frames.append(tmp_path / f"frame_{size[0]}x{size[1]}.png")
        source.resize(size, Image.BILINEAR).save(frames[-1])
    box = torch_detector.preprocessor
    for path in frames:
        pixels = read_image(path)
        assert np.array_equal(preprocess(pixels, box.image_size, box.resize, box.fit), torch_detector.prepare(pixels)), path.name
    a, b = torch_detector(frames), Runtime(onnx_file)(frames)
    assert max(abs(x.score - y.score) for x, y in zip(a, b)) < PARITY_TOLERANCE


def test_exported_model_takes_frames_and_carries_what_deciding_needs(run, onnx_file, frames, torch_detector, tmp_path):
    from glass_ad.inference.runtime import Runtime

    meta = read_metadata(onnx_file)
    for key in ("image_threshold", "pixel_threshold", "f1_image_threshold", "normalization_center",
                "pixel_normalization_scale", "bit_depth", "fit", "resize", "package_version", "export_package_version"):  # fmt: skip
        assert key in meta
    assert meta["preprocessing"] == "in-graph"
    assert meta["image_size"] == meta["image_height"] == meta["image_width"] == "64"  # a square: H = W = S
    runtime = Runtime(onnx_file, batch_size=3)  # torch-free: nothing but the ONNX file
    assert runtime.image_threshold == torch_detector.image_threshold
    a, b = torch_detector(frames), runtime(frames)
    assert [x.decision for x in a] == [y.decision for y in b]
    assert max(abs(x.score - y.score) for x, y in zip(a, b)) < 1e-3
    assert all(x.anomaly_map.shape == y.anomaly_map.shape for x, y in zip(a, b))
    assert meta["region_height"] == "0.5" and runtime.region_height == 0.5  # the same region rule without torch
    for x, y in zip(a, b):
        assert runtime.region_level(y.anomaly_map) == pytest.approx(torch_detector.region_level(x.anomaly_map), abs=1e-3)
    assert meta["decision"] == Checkpoint.load(run).calibration.decision_line() and float(meta["false_alarm_high"]) > 0
    # The S×S graph (preprocessing outside) still exports, and the runtime feeds it by the numpy reference.
    crop = export_onnx(run, tmp_path / "crop.onnx", preprocessing=False)
    assert read_metadata(crop.path)["preprocessing"] == "external"
    c = Runtime(crop.path)(frames)
    # The numpy reference rounds a few pixels of the tie-prone tall frame differently (the xfail below):
    # its standardised hybrid score (about 18) moves by ~1e-4 of itself.
    assert max(abs(x.score - y.score) / max(1.0, abs(x.score)) for x, y in zip(a, c)) < 1e-3


# ------------------------------------------------------------------------------ rectangular inputs


def _rectangular_run(folder: Path, fit: str, resize: int | None) -> Path:
    """An untrained 64×128 model saved as a run: the deployment path needs the shape, not the training."""
    from glass_ad.model.glass_model import build_model

    config = make_config(
        "fast", image_size=64, image_shape=(64, 128), resize=resize, fit=fit, backbone="efficientnet_lite0", num_threads=1
    )
    torch.manual_seed(0)
    model = build_model(config)
    assert model.input_shape == (64, 128) and model.grid_shape == (8, 16)
    Checkpoint.from_model(model, config).save(folder)
    return folder


@pytest.mark.parametrize("fit,resize", [("stretch", None), ("crop", 72)])
def test_rectangular_model_exports_and_onnx_matches_pytorch_on_frames_of_any_size(fit, resize, tmp_path):
    from glass_ad.inference.runtime import Runtime

    run = _rectangular_run(tmp_path / "run", fit, resize)
    result = export_onnx(run)
    assert max(result.max_abs_diff.values()) < PARITY_TOLERANCE  # frames of (H + 13)×(2W + 5)
    meta = read_metadata(result.path)
    assert (meta["image_size"], meta["image_height"], meta["image_width"]) == ("64", "64", "128")
    assert meta["fit"] == fit and meta["resize"] == str(resize or "")

    rng = np.random.default_rng(5)
    # Frame sizes without the exact-half pixel ties of a 9/8 enlargement (64×128 at resize 72: the known
    # one-grey-level rounding difference, see test_preprocessing_is_the_same_pixels_on_tie_prone_frames).
    sizes = [(100, 300), (90, 70), (37, 200), (300, 500)] + ([(64, 128), (64, 128)] if resize is None else [(100, 300)])
    frames = [rng.integers(0, 256, (h, w, 3), dtype=np.uint8) for h, w in sizes]
    frames.append(rng.integers(0, 256, (150, 40), dtype=np.uint8))  # grey, portrait
    torch_detector = Detector.load(run, device="cpu", engine="torch", batch_size=4)
    assert torch_detector.input_shape == (64, 128) and torch_detector.prepare(frames[1]).shape == (64, 128, 3)
    a = torch_detector(frames)
    b = Detector.load(run, engine="onnx", batch_size=3)(frames)
    c = Runtime(result.path, batch_size=2)(frames)
    assert Runtime(result.path).input_shape == (64, 128)
    for x, y, z, frame in zip(a, b, c, frames):
        assert x.anomaly_map.shape == y.anomaly_map.shape == z.anomaly_map.shape == frame.shape[:2]
        assert abs(x.score - y.score) < PARITY_TOLERANCE and abs(x.normalized - y.normalized) < PARITY_TOLERANCE
        assert float(np.abs(x.anomaly_map - y.anomaly_map).max()) < PARITY_TOLERANCE
        assert abs(x.score - z.score) < PARITY_TOLERANCE and float(np.abs(x.anomaly_map - z.anomaly_map).max()) < PARITY_TOLERANCE

    # Preprocessing outside the graph: the H×W network input, fed by the numpy reference.
    crop = export_onnx(run, tmp_path / "crop.onnx", preprocessing=False)
    assert max(crop.max_abs_diff.values()) < PARITY_TOLERANCE
    assert "image_height x image_width" in read_metadata(crop.path)["input"]
    d = Runtime(crop.path)(frames)
    assert max(abs(x.score - y.score) for x, y in zip(a, d)) < 1e-3
    assert all(x.anomaly_map.shape == y.anomaly_map.shape for x, y in zip(a, d))


def test_an_onnx_file_of_another_input_shape_is_refused(run, onnx_file, tmp_path):
    rectangular = _rectangular_run(tmp_path / "run", "stretch", None)
    with pytest.raises(ValueError, match="input shape 64x64 ≠ 64x128.*re-export"):
        Detector.load(rectangular, engine="onnx", onnx_path=onnx_file)


def test_predict_saves_maps_masks_and_boxes(run, frames, tmp_path):
    from glass_ad.inference.predict import predict_files

    summary = predict_files(run, frames[:2], tmp_path / "npy", progress=False, save_maps="npy", save_masks=True,
                            overlays=False, threshold=-1e9)  # fmt: skip
    rows = json.loads((tmp_path / "npy" / "predictions.json").read_text())["predictions"]
    for row in rows:
        raw = np.load(row["map"])
        mask = np.asarray(Image.open(row["mask"]))
        assert raw.shape == mask.shape == (row["height"], row["width"]) and raw.dtype == np.float32
        assert set(np.unique(mask)) <= {0, 255} and (mask > 0).mean() == pytest.approx(row["region_fraction"])
        assert all(set(box) == {"x", "y", "width", "height", "area", "peak"} for box in row["boxes"])
        assert sum(box["area"] for box in row["boxes"]) == int((mask > 0).sum())
    summary = predict_files(run, frames[:1], tmp_path / "png", progress=False, save_maps="png", overlays=False)
    row = json.loads((tmp_path / "png" / "predictions.json").read_text())["predictions"][0]
    png, raw = np.asarray(Image.open(row["map"])), np.load(tmp_path / "npy" / "maps" / Path(rows[0]["map"]).relative_to(tmp_path / "npy" / "maps"))
    low, high = summary["maps"]["png_low"], summary["maps"]["png_high"]
    assert png.dtype == np.uint16 and png.shape == raw.shape
    assert np.abs(low + (high - low) * png / 65535.0 - np.clip(raw, low, high)).max() <= (high - low) / 65535.0
    with pytest.raises(ValueError, match="save_maps"):
        predict_files(run, frames[:1], tmp_path / "bad", progress=False, save_maps="tiff")


def test_exported_graph_is_the_inference_graph(run, onnx_file):
    meta = read_metadata(onnx_file)
    checkpoint = read_checkpoint(run)
    assert int(meta["image_size"]) == 64
    assert float(meta["image_threshold"]) == checkpoint["calibration"]["image_threshold"]
    # The PyTorch model alone (float input) gives the ONNX raw outputs for the same uint8 pixels.
    model = Checkpoint.load(run).build_model()
    images = np.random.default_rng(1).integers(0, 256, (3, 64, 64, 3), dtype=np.uint8)
    detector = Detector.load(run, engine="onnx")
    scores, normalized, maps = detector.score_prepared(images)
    with torch.no_grad():
        out = model(torch.from_numpy(images).permute(0, 3, 1, 2).float() / 255.0)
    # The default hybrid's scores are standardised distances (about 13 here): float32 rounding scales with them.
    scale = max(1.0, float(np.abs(scores).max()))
    assert np.abs(scores - out.image_scores.numpy()).max() < PARITY_TOLERANCE * scale
    assert np.abs(maps - out.anomaly_maps.numpy()).max() < PARITY_TOLERANCE * scale
    assert maps.shape == (3, 64, 64) and scores.shape == normalized.shape == (3,)


def test_normalized_score_threshold_is_half_monotone_and_same_in_onnx(run, onnx_file):
    calibration = read_checkpoint(run)["calibration"]
    params, threshold = calibration["image_normalization"], calibration["image_threshold"]
    assert float(Normalization.from_dict(params)(torch.tensor([threshold]))[0]) == pytest.approx(0.5, abs=1e-6)
    assert float(Normalization.from_dict(params)(np.array([threshold]))[0]) == pytest.approx(0.5, abs=1e-12)
    grid = np.linspace(threshold - 1.0, threshold + 1.0, 2001)
    values = Normalization.from_dict(params)(grid)
    assert np.all(np.diff(values) >= 0)
    assert np.allclose(values, 1.0 / (1.0 + np.exp(-(grid - params["center"]) / params["scale"])), rtol=0, atol=1e-12)
    # The curve's scale: the median held-out normal score maps to 0.1 (a narrow curve when it equals the threshold).
    median = float(np.median(calibration["holdout_image_scores"]))
    if threshold - median > 1e-6 * math.log(9.0):
        assert params["center"] == threshold and params["scale"] == pytest.approx((threshold - median) / math.log(9.0), rel=1e-9)
        assert float(Normalization.from_dict(params)(np.array([median]))[0]) == pytest.approx(0.1, abs=1e-9)
    else:
        assert params["scale"] == pytest.approx(max(abs(threshold) * 1e-3, 1e-6), rel=1e-9)
    # ONNX's normalised output is the same formula applied to its raw output.
    images = np.random.default_rng(2).integers(0, 256, (4, 64, 64, 3), dtype=np.uint8)
    raw, normalized, _ = Detector.load(run, engine="onnx").score_prepared(images)
    expected = Normalization.from_dict(params)(torch.from_numpy(raw)).numpy()
    assert np.abs(normalized - expected).max() < 1e-6


# --------------------------------------------------------------------------------------------- inputs


def test_array_pil_and_path_give_the_same_prediction(torch_detector, frames, tmp_path):
    path = frames[-1]
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


def _bad_folder(root: Path, frames: list[Path]) -> Path:
    folder = root / "inputs"
    (folder / "nested").mkdir(parents=True)
    (folder / "no_images").mkdir()
    for i, path in enumerate(frames[:2]):
        shutil.copy(path, folder / "nested" / f"good_{i}{path.suffix}")
    Image.open(frames[0]).convert("RGB").save(folder / "as_jpeg.jpg")
    (folder / "zero.png").write_bytes(b"")
    (folder / "garbage.png").write_bytes(b"\x89PNG not really" * 20)
    Image.new("L", (1, 1)).save(folder / "tiny.png")
    return folder


def test_predict_command_skips_bad_files_and_writes_results(run, frames, tmp_path):
    folder = _bad_folder(tmp_path, frames)
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
    calibration = Checkpoint.load(run).calibration
    center, scale = calibration.image_normalization.centre, calibration.image_normalization.scale
    for row in rows:
        score = float(row["score"])
        # The model's normalisation (decision.Normalization) of this row's raw score, and its decision.
        assert float(row["normalized_score"]) == pytest.approx(1.0 / (1.0 + math.exp(-(score - center) / scale)), abs=1e-6)
        assert float(row["threshold"]) == calibration.image_threshold
        assert row["decision"] == ("anomalous" if score >= calibration.image_threshold else "normal")
        overlay = Image.open(row["overlay"])
        assert max(int(row["width"]), int(row["height"])) <= 1024  # drawn at full size: three tiles wide
        # three tiles, then the colour scale (a strip narrower than a tile for these sizes)
        assert 3 * int(row["width"]) < overlay.size[0] < 4 * int(row["width"]) and overlay.mode == "RGB"


def test_predict_command_json_and_all_bad_input(run, onnx_file, frames, tmp_path):
    runner = CliRunner()
    out = tmp_path / "json"
    result = runner.invoke(app, ["predict", str(run), str(frames[0]), "--out", str(out), "--engine", "onnx", "--no-overlays", "-q"])
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


def test_calibrate_normals_refits_the_false_alarm_point_and_info_shows_it(run, data, tmp_path):
    copy = tmp_path / "run"
    copy.mkdir()
    shutil.copy(run / "model.pt", copy / "model.pt")
    before = Checkpoint.load(copy).calibration
    normals = make_demo_dataset(tmp_path / "more", n_train=30, n_test_good=1, n_test_defect=1, size=64, seed=11) / "train" / "good"
    runner = CliRunner()
    result = runner.invoke(app, ["calibrate", str(copy), "--normals", str(normals), "-q"])
    assert result.exit_code == 0, result.output
    after = Checkpoint.load(copy).calibration
    held_out = len(before.holdout_image_scores)
    assert after.image_estimate.images == held_out + 30 == len(after.holdout_image_scores)
    assert len(after.holdout_map_maxima) == held_out + 30 and after.pixel_rule == "normal-pixel-quantile"
    # 34 normal images cannot hold 1 % (n·target < 0.5): the threshold is just above the largest pooled score
    assert after.image_threshold == np.nextafter(max(after.holdout_image_scores), np.inf)
    assert after.pixel_threshold != before.pixel_threshold  # the pooled normal map values decide the region
    assert after.image_estimate.high - after.image_estimate.low < before.image_estimate.high - before.image_estimate.low
    assert f"now:    {after.decision_line()}" in result.stdout
    assert f"({held_out} held-out + 30 from `glass calibrate --normals`)" in after.decision_line()
    assert after.image_normalization(after.image_threshold) == pytest.approx(0.5)
    assert Detector.load(copy).image_threshold == after.image_threshold  # every reader decides by the new point
    assert Detector.load(copy).operating_line() == after.decision_line()
    summary = Detector.load(copy).operating_summary()
    assert summary["line"] == after.decision_line() and summary["normal_images"] == held_out + 30
    assert summary["interval_95"] == [after.image_estimate.low, after.image_estimate.high] and summary["region_height"] == 0.5
    json.dumps(summary)  # JSON-ready for the service's model page
    custom = Detector.load(copy, threshold=0.99).operating_line()
    assert custom.startswith("custom threshold 0.9900: estimated false-alarm rate ")

    info = runner.invoke(app, ["info", str(copy)])
    assert info.exit_code == 0
    shown = json.loads(info.output)
    assert list(shown)[0] == "decision" and shown["decision"] == after.decision_line()
    assert after.decision_line().startswith(f"threshold {after.image_threshold:.4f}: estimated false-alarm rate ")

    again = runner.invoke(app, ["calibrate", str(copy), "--normals", str(normals), "-q"])
    assert again.exit_code != 0 and "already part of" in again.stderr  # never counted twice
    trained_on = runner.invoke(app, ["calibrate", str(copy), "--normals", str(data / "train" / "good"), "-q"])
    assert trained_on.exit_code != 0 and "never saw" in trained_on.stderr
    assert Checkpoint.load(copy).calibration == after
    neither = runner.invoke(app, ["calibrate", str(copy)])
    assert neither.exit_code != 0 and "--normals" in neither.stderr


def test_calibrate_normals_upgrades_an_older_checkpoint(run, tmp_path):
    import dataclasses

    from glass_ad.model.decision import Calibration

    checkpoint = Checkpoint.load(run)
    current = checkpoint.calibration
    older = {  # the fields a checkpoint written before the tail model holds
        "method": "holdout-normal-quantile", "target_false_alarm_rate": 0.01,
        "holdout_images": len(current.holdout_image_scores), "image_threshold": max(current.holdout_image_scores),
        "pixel_threshold": 0.3, "image_normalization": {"center": 0.5, "scale": 0.05},
        "pixel_normalization": {"center": 0.3, "scale": 0.05}, "holdout_image_scores": list(current.holdout_image_scores),
    }  # fmt: skip
    (tmp_path / "run").mkdir()
    dataclasses.replace(checkpoint, calibration=Calibration.from_dict(older)).save(tmp_path / "run" / "model.pt")
    before = Checkpoint.load(tmp_path / "run").calibration
    assert before.image_estimate is None and before.region_height is None and "older pixel-value quantile" in before.decision_line()
    assert Detector.load(tmp_path / "run").region_level(np.array([[0.1, 0.9]])) == 0.3  # the older plain rule
    normals = make_demo_dataset(tmp_path / "more", n_train=12, n_test_good=1, n_test_defect=1, size=64, seed=12) / "train" / "good"
    result = CliRunner().invoke(app, ["calibrate", str(tmp_path / "run"), "--normals", str(normals), "-q"])
    assert result.exit_code == 0, result.output
    after = Checkpoint.load(tmp_path / "run").calibration
    assert after.image_estimate.images == len(current.holdout_image_scores) + 12
    assert len(after.holdout_map_maxima) == 12 and after.region_height == 0.5  # map maxima: the new normals only
    assert "older pixel-value quantile" not in after.decision_line()


def test_operating_point_benchmark_measures_a_run(run, data, tmp_path):
    import os
    import subprocess
    import sys

    script = Path(__file__).resolve().parents[1] / "benchmarks" / "operating_point.py"
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1] / "src")}
    out, rows = tmp_path / "op.json", tmp_path / "op.csv"
    done = subprocess.run(
        [sys.executable, str(script), str(run), str(data), "--json", str(out), "--threads", "1", "--results", str(rows)],
        capture_output=True, text=True, env=env, timeout=300,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    result = json.loads(out.read_text())
    stored = result["decision"]["stored"]
    assert stored["good_images"] == 4 and stored["defective_images"] == 8
    assert set(result["region"]) == {"stored", "pixel-quantile", "map-maximum", "map-max+half", "pixel-q+half"}
    assert result["region"]["stored"]["threshold"] == Checkpoint.load(run).calibration.pixel_threshold
    assert "promise kept" in done.stdout and result["stored_decision_line"] in done.stdout
    (row,) = list(csv.DictReader(rows.open()))  # its row of results/operating_point.csv, with the machine
    assert row["good_images"] == "4" and row["score"] == Checkpoint.load(run).config.score and row["cpu"]


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
    detector = Detector.load(copy, threshold="f1")
    assert detector.image_threshold == after["f1_image_threshold"] and detector.pixel_threshold == after["f1_pixel_threshold"]

    # The thresholds are F1-optimal on the set they were computed on: brute force over every threshold,
    # with the deployed model's scores and maps (Detector) and the ground-truth masks.
    samples, _ = load_validation_set(data / "test")
    predictions = Detector.load(copy, device="cpu", engine="torch")([s.path for s in samples])
    scores = np.array([p.score for p in predictions])
    labels = np.array([s.label for s in samples])
    best_image_f1 = max(_f1(scores >= t, labels) for t in scores)
    assert after["f1_image_f1"] == pytest.approx(best_image_f1, abs=1e-9)
    assert _f1(scores >= after["f1_image_threshold"], labels) == pytest.approx(best_image_f1, abs=1e-9)
    # Halfway between two scores (a margin on both sides), never on a score, unless it is the lowest one.
    assert after["f1_image_threshold"] not in set(scores[scores > scores.min()].tolist())

    maps = np.concatenate([p.anomaly_map.ravel() for p in predictions])
    truth = np.concatenate([
        (read_mask(s.mask_path) if s.mask_path else np.zeros(p.anomaly_map.shape, bool)).ravel()
        for s, p in zip(samples, predictions)
    ])  # fmt: skip
    assert truth.size == maps.size and 0 < truth.sum() < truth.size
    pixel_threshold, pixel_f1 = after["f1_pixel_threshold"], after["f1_pixel_f1"]
    # The stored F1 is the F1 of its threshold (by the definition, pixel by pixel) ...
    assert _f1(maps >= pixel_threshold, truth) == pytest.approx(pixel_f1, abs=1e-3)
    # ... the best of all thresholds on the calibration's grid (20000 steps over the score's span: [0, 1] for
    # the discriminator's probabilities, a wider one for the default hybrid's standardised scores) ...
    low, high = _PIXEL_SPANS[Checkpoint.load(copy).config.score]
    steps = (pixel_threshold - low) / (high - low) * 20_000
    assert steps == pytest.approx(round(steps), abs=1e-4)
    _, grid_f1 = _f1_at_every_threshold(np.floor(np.clip((maps - low) / (high - low), 0, 1) * 20_000), truth)
    assert pixel_f1 == pytest.approx(grid_f1.max(), abs=1e-3)
    # ... and no threshold at all (every distinct map value) does better by more than the grid's step costs.
    _, exact_f1 = _f1_at_every_threshold(maps.astype(np.float64), truth)
    assert pixel_f1 <= exact_f1.max() + 1e-3 and pixel_f1 >= exact_f1.max() - 5e-3

    # The library function gives what the command stored.
    model, checkpoint = Checkpoint.load(copy).build_model(), read_checkpoint(copy)
    direct = f1_calibration(model, samples, GlassConfig.from_dict(checkpoint["config"]), "cpu")
    assert direct["f1_image_threshold"] == pytest.approx(after["f1_image_threshold"])
    assert direct["f1_pixel_threshold"] == pytest.approx(after["f1_pixel_threshold"])

    from glass_ad.evaluation.tester import test as run_test

    report = run_test(copy, data, progress=False, pictures=False)
    assert report["f1_threshold"]["image_threshold"] == after["f1_image_threshold"]
    assert report["stored_threshold"]["image_threshold"] == before["image_threshold"]


def _f1(flagged: np.ndarray, truth: np.ndarray) -> float:
    """F1 of flagged (predicted anomalous) against the truth, from the definition."""
    tp = int(np.sum(flagged & (truth == 1)))
    fp = int(np.sum(flagged & (truth == 0)))
    fn = int(np.sum(~flagged & (truth == 1)))
    return 2 * tp / (2 * tp + fp + fn) if tp else 0.0


def _f1_at_every_threshold(values: np.ndarray, truth: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """For every distinct value t: F1 of `values >= t` (sorted high to low, counts by cumulative sums)."""
    order = np.argsort(-values, kind="stable")
    ordered, positive = values[order], truth[order].astype(np.int64)
    tp, fp = np.cumsum(positive), np.cumsum(1 - positive)
    last = np.r_[np.flatnonzero(ordered[1:] != ordered[:-1]), len(ordered) - 1]  # end of each group of ties
    tp, fp = tp[last], fp[last]
    fn = positive.sum() - tp
    return ordered[last], 2 * tp / np.maximum(2 * tp + fp + fn, 1)


# ------------------------------------------------------------------------------------------ OpenVINO


def test_openvino_export_fp32(run, data, onnx_file, frames, tmp_path):
    pytest.importorskip("openvino")
    from glass_ad.inference.openvino_export import export_openvino
    from glass_ad.inference.openvino_export import read_metadata as ov_metadata
    from glass_ad.inference.runtime import Runtime

    fp32 = export_openvino(run, tmp_path / "model.xml")
    assert fp32.path.is_file() and fp32.path.with_suffix(".bin").is_file()
    assert max(fp32.max_abs_diff.values()) < 1e-3  # vs ONNX Runtime, with the f32 precision hint
    meta = ov_metadata(fp32.path)
    assert meta["inference_precision_hint"] == "f32" and meta["precision"] == "fp32" and meta["preprocessing"] == "in-graph"
    onnx_runtime, openvino = Runtime(onnx_file), Runtime(fp32.path)
    assert openvino.providers == ["OpenVINO:CPU"]
    a, b = onnx_runtime(frames), openvino(frames)
    assert [x.decision for x in a] == [y.decision for y in b]
    # Relative to the score: the tie-prone tall frame scores about 18 (standardised hybrid parts).
    assert max(abs(x.score - y.score) / max(1.0, abs(x.score)) for x, y in zip(a, b)) < 1e-3
    detector = Detector.load(run, engine="openvino", onnx_path=fp32.path)  # checked against the checkpoint
    assert detector.engine_name == "openvino"
    assert [p.decision for p in detector(frames)] == [x.decision for x in a]

    result = CliRunner().invoke(app, ["export", str(run), "--format", "openvino", "--precision", "int8", "--out", str(tmp_path / "q.xml")])
    assert result.exit_code == 2 and "--calibration" in result.output
    result = CliRunner().invoke(app, ["export", str(run), "--bank-product", "int8", "--out", str(tmp_path / "q.onnx")])
    assert result.exit_code == 2 and "--bank-product int8 is not supported with --format onnx" in result.output
    result = CliRunner().invoke(
        app, ["export", str(run), "--format", "openvino", "--precision", "int8", "--calibration", str(data),
              "--bank-product", "int4", "--out", str(tmp_path / "q.xml")],
    )  # fmt: skip
    assert result.exit_code == 2 and "bank product must be one of auto, int8, fp32" in result.output
    assert not (tmp_path / "q.xml").exists()


def test_openvino_int8_export_runs(run, data, onnx_file, frames, tmp_path):
    pytest.importorskip("openvino")
    pytest.importorskip("nncf")  # not in the test extra (large); the int8 path is checked where it is installed
    from glass_ad.inference.openvino_export import export_openvino
    from glass_ad.inference.openvino_export import read_metadata as ov_metadata
    from glass_ad.inference.runtime import Runtime

    a = Runtime(onnx_file)(frames[:2])
    # A one-epoch model's scores are not stable enough for the default decision check: the check runs and
    # is reported, with nothing refused.
    int8 = export_openvino(
        run, tmp_path / "int8.xml", precision="int8", calibration=data, calibration_limit=4, holdout_limit=4, fast=True,
        max_changed=1.0, max_score_error=float("inf"), max_mean_error=float("inf"),
    )  # fmt: skip
    assert int8.calibration_images == 4 and int8.synthetic_images == 1 and ov_metadata(int8.path)["precision"] == "int8"
    # The default (hybrid) model: `auto` timed the bank's product on this CPU and chose by that.
    assert int8.bank_timing is not None and int8.bank_product == ("int8" if int8.bank_timing.int8_pays else "fp32")
    assert ov_metadata(int8.path)["bank_product"] == int8.bank_product and "measured" in int8.bank_line()
    # Its speed against the same graph in float32 is measured on this CPU and said in one line.
    assert int8.speedup is not None and int8.speedup > 0 and "× the speed of the same graph in float32" in int8.speed_line()
    assert int8.check is not None and int8.check.normals == 4 and int8.check.anomalies == 2 and int8.check.passed
    assert "held-out images" in int8.check.line() and "\n" not in int8.check.line()
    quantized = Runtime(int8.path)(frames[:2])
    assert all(np.isfinite(p.score) and p.anomaly_map.shape == x.anomaly_map.shape for p, x in zip(quantized, a))


def test_openvino_int8_export_is_refused_when_decisions_move(run, data, tmp_path):
    """The held-out decision check refuses in one line and writes nothing (here: no score may move at all)."""
    pytest.importorskip("openvino")
    pytest.importorskip("nncf")
    from glass_ad.inference.openvino_export import export_openvino

    target = tmp_path / "int8.xml"
    with pytest.raises(ValueError, match="int8 export refused") as error:
        export_openvino(
            run, target, precision="int8", calibration=data, calibration_limit=4, holdout_limit=4, fast=True,
            max_changed=0.0, max_score_error=0.0,
        )  # fmt: skip
    assert "\n" not in str(error.value) and "was not written" in str(error.value)
    assert not target.exists() and not target.with_suffix(".bin").exists() and list(tmp_path.iterdir()) == []


def test_int8_calibration_and_held_out_normals_are_disjoint(data):
    from glass_ad.inference.openvino_export import split_normals

    calibration, held = split_normals(data, 6, 4)
    assert len(calibration) == 6 and len(held) == 4
    seen = {frame.tobytes() for frame in calibration}
    assert not any(frame.tobytes() in seen for frame in held)
    # Fewer normals than both limits: shared in their proportion, never leaving the check without images.
    available = len(split_normals(data, 1000, 0)[0])
    calibration, held = split_normals(data, 128, 128)
    assert len(calibration) + len(held) == available and abs(len(calibration) - len(held)) <= 1 and held
    seen = {frame.tobytes() for frame in calibration}
    assert not any(frame.tobytes() in seen for frame in held)


def test_int8_export_refuses_a_folder_of_one_normal_image(run, data, tmp_path):
    pytest.importorskip("openvino")
    from glass_ad.inference.openvino_export import export_openvino

    folder = tmp_path / "one"
    folder.mkdir()
    shutil.copy(sorted((data / "train" / "good").iterdir())[0], folder / "only.png")
    with pytest.raises(ValueError, match="int8 needs at least 2 normal images .* found 1$"):
        export_openvino(run, tmp_path / "int8.xml", precision="int8", calibration=folder)
    assert not (tmp_path / "int8.xml").exists()
