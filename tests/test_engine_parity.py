"""`glass test` scores what is deployed: the same rounded uint8 inputs as `glass predict` and every engine
(torch, ONNX Runtime, OpenVINO), the engine and its precision named in every result; a read-only array is
scored without PyTorch's warning; the int8 export is quiet.

One tiny model is trained once for the module (64 px, EfficientNet-Lite0, 1 epoch: seconds on a CPU) on a
generated data set whose test images are larger than the model's input, so resizing leaves fractional grey
levels that the rounding must remove.
"""

from __future__ import annotations

import csv
import json
import logging
import warnings
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from glass_ad.cli import app
from glass_ad.config import make_config
from glass_ad.data.demo_data import make_demo_dataset
from glass_ad.data.io import read_image
from glass_ad.evaluation.tester import test as run_test
from glass_ad.inference.export import export_onnx
from glass_ad.inference.predict import CSV_COLUMNS, Detector
from glass_ad.training.trainer import train

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    # 96 px images for a 64 px model: the resize produces non-integer grey levels.
    return make_demo_dataset(tmp_path_factory.mktemp("data"), n_train=16, n_test_good=4, n_test_defect=4, size=96)


@pytest.fixture(scope="module")
def run(data, tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("run")
    # The default hybrid score, each image against its 4 nearest training images (the retrieval in every engine).
    config = make_config(
        "fast", epochs=1, image_size=64, backbone="efficientnet_lite0", early_stopping=False, num_threads=1,
        bank_neighbours=4,
    )
    train(data, folder, config, progress=False, echo=lambda _: None)
    return folder


@pytest.fixture(scope="module")
def onnx_file(run) -> Path:
    return export_onnx(run).path  # RUN_DIR/model.onnx: the default of --engine onnx


def _scores(run, data, **kwargs) -> dict:
    return run_test(run, data, progress=False, pictures=False, device="cpu", **kwargs)


def _scores_csv(path: Path) -> dict[str, float]:
    with open(path, newline="") as handle:
        return {row["path"]: float(row["score"]) for row in csv.DictReader(handle)}


def test_torch_test_scores_are_the_detectors(run, data, tmp_path):
    """`glass test` (torch) and `glass predict` (Detector, torch) give each test image the same score: the
    tester rounds the resized image to uint8 as the Detector and training do (before: up to ~1e-2 apart)."""
    table = tmp_path / "scores.csv"
    run_test(run, data, progress=False, pictures=False, device="cpu", scores_csv=table)
    tested = _scores_csv(table)
    detector = Detector.load(run, device="cpu", engine="torch", batch_size=8)
    predicted = {p.path: p.score for p in detector(sorted(tested))}
    assert set(tested) == set(predicted) and len(tested) >= 8
    worst = max(abs(tested[path] - predicted[path]) for path in tested)
    scale = max(1.0, max(abs(score) for score in predicted.values()))  # hybrid scores are not in [0, 1]
    assert worst < 1e-5 * scale, f"glass test and glass predict differ by {worst:.2e} on one image"


def test_test_command_with_torch_and_onnx_engines_agrees(run, data, onnx_file, tmp_path):
    runner = CliRunner()
    reports = {}
    for engine in ("torch", "onnx"):
        out = tmp_path / f"{engine}.json"
        args = [
            "test",
            str(run),
            str(data),
            "--json",
            str(out),
            "--no-pictures",
            "--quiet",
            "--engine",
            engine,
            "--device",
            "cpu",
        ]
        if engine == "onnx":
            args += ["--onnx", str(onnx_file)]
        result = runner.invoke(app, args)
        assert result.exit_code == 0, result.output
        assert f"({engine} fp32)" in result.output
        reports[engine] = json.loads(out.read_text())
        assert reports[engine]["engine"] == engine and reports[engine]["precision"] == "fp32"
    torch_r, onnx_r = reports["torch"], reports["onnx"]
    assert abs(torch_r["image_auroc"] - onnx_r["image_auroc"]) <= 1e-6
    assert abs(torch_r["pixel_auroc"] - onnx_r["pixel_auroc"]) <= 1e-3
    # Per image (the library call behind the command: the CLI's --json holds no per-image scores).
    tables = {engine: tmp_path / f"scores_{engine}.csv" for engine in ("torch", "onnx")}
    _scores(run, data, scores_csv=tables["torch"])
    _scores(run, data, scores_csv=tables["onnx"], engine=Detector.load(run, engine="onnx").engine)
    a, b = _scores_csv(tables["torch"]), _scores_csv(tables["onnx"])
    assert set(a) == set(b)
    assert max(abs(a[p] - b[p]) for p in a) < 1e-3


def test_onnx_engine_default_file_and_missing_file(run, data, onnx_file, tmp_path):
    # Without --onnx the engine reads RUN_DIR/model.onnx (written by the fixture).
    result = CliRunner().invoke(app, ["test", str(run), str(data), "--no-pictures", "--quiet", "--engine", "onnx"])
    assert result.exit_code == 0, result.output
    missing = tmp_path / "nothing.onnx"
    result = CliRunner().invoke(
        app, ["test", str(run), str(data), "--no-pictures", "--quiet", "--engine", "onnx", "--onnx", str(missing)]
    )
    assert result.exit_code == 2 and "no ONNX model" in result.output and "Traceback" not in result.output


def test_predictions_record_engine_and_precision(run, data, onnx_file, tmp_path):
    images = [str(p) for p in sorted((data / "test").rglob("*.png"))[:3]]
    for engine, fmt in (("torch", "json"), ("onnx", "csv")):
        out = tmp_path / engine
        result = CliRunner().invoke(
            app,
            [
                "predict",
                str(run),
                *images,
                "--out",
                str(out),
                "--engine",
                engine,
                "--format",
                fmt,
                "--no-overlays",
                "--quiet",
            ],
        )
        assert result.exit_code == 0, result.output
        if fmt == "json":
            payload = json.loads((out / "predictions.json").read_text())
            assert payload["engine"] == engine and payload["precision"] == "fp32"
            assert all(row["engine"] == engine and row["precision"] == "fp32" for row in payload["predictions"])
        else:
            with open(out / "predictions.csv", newline="") as handle:
                rows = list(csv.DictReader(handle))
            assert tuple(rows[0]) == CSV_COLUMNS and {"engine", "precision"} <= set(CSV_COLUMNS)
            assert all(row["engine"] == engine and row["precision"] == "fp32" for row in rows)


def test_openvino_int8_is_told_apart_from_fp32_and_exports_quietly(run, data, onnx_file, tmp_path, capfd, caplog):
    pytest.importorskip("openvino")
    pytest.importorskip("nncf")
    from glass_ad.inference.openvino_export import QUANTISED_PRODUCTS, export_openvino

    caplog.set_level(logging.DEBUG)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        int8 = export_openvino(
            run, tmp_path / "int8.xml", precision="int8", calibration=data, calibration_limit=4, holdout_limit=4,
            fast=True, max_changed=1.0, max_score_error=float("inf"), max_mean_error=float("inf"),
            bank_product="int8",
        )  # a one-epoch model: the decision check runs, nothing is refused
    assert int8.bank_product == "int8" and int8.bank_timing is None and "quantised (as asked)" in int8.bank_line()
    captured = capfd.readouterr()
    noise = [r for r in caplog.records if r.name.startswith("nncf") and r.levelno < logging.WARNING]
    assert not noise, [r.getMessage() for r in noise][:3]
    said = captured.out + captured.err
    assert "INFO:nncf" not in said and "CUDA" not in said, said
    # What is left: NNCF's one progress bar of the calibration pass (a slow step with 64 frames).
    assert all("Statistics collection" in line for line in said.splitlines() if line.strip()), said
    assert not [w for w in caught if "cuda" in str(w.message).lower()], [str(w.message) for w in caught]
    # The hybrid's distances and standardisation stay float32: in the head only the discriminator's first
    # layer and the bank's products q·b (fine and coarse) read quantised values. Quantised, the squared
    # distances' terms moved MTD's image scores by up to 11; the level pooling, its input range set on
    # normals, clipped what anomalies add (openvino_export.ignored_patterns).
    import openvino as ov

    quantised = {
        target.get_node().get_friendly_name(): target.get_node().get_type_name()
        for node in ov.Core().read_model(int8.path).get_ordered_ops()
        if node.get_type_name() == "FakeQuantize"
        for target in node.output(0).get_target_inputs()
    }
    readers = {name: kind for name, kind in quantised.items() if "/head/" in name}
    # A hybrid model's backbone stays float32 (openvino_export.HYBRID_IGNORED_PATTERNS).
    assert not [name for name in quantised if "/backbone/" in name], quantised
    # (A ShapeOf node reads a quantised tensor's shape only: the coarse part's window pooling needs it.)
    assert readers and set(readers.values()) - {"ShapeOf"} == {"Convolution", "MatMul"}, readers
    # The MatMuls that read int8: the bank's q·b and the coarse part's window product, no other.
    assert sorted(name for name, kind in readers.items() if kind == "MatMul") == sorted(QUANTISED_PRODUCTS), readers
    assert all("/head/first/" in name for name, kind in readers.items() if kind == "Convolution"), readers
    assert ov.Core().read_model(int8.path).get_rt_info(["glass_ad", "bank_product"]).astype(str) == "int8"
    fp32 = export_openvino(run, tmp_path / "fp32.xml")

    precisions = {}
    for path in (int8.path, fp32.path):
        detector = Detector.load(run, engine="openvino", onnx_path=path)
        assert detector.engine_name == "openvino"
        precisions[path.stem] = detector.engine_precision
        report = _scores(run, data, engine=detector.engine)
        assert report["engine"] == "openvino" and report["precision"] == detector.engine_precision
    assert precisions == {"int8": "int8", "fp32": "fp32"}


def test_bank_product_timing_decides_the_auto_choice():
    pytest.importorskip("openvino")
    from glass_ad.inference.openvino_export import BANK_PRODUCT_GAIN, BankProductTiming, time_bank_product

    timing = time_bank_product(64, 32, 96, threads=1, repeats=2)
    assert timing.fp32_ms > 0 and timing.int8_ms > 0
    assert timing.int8_pays == (timing.int8_ms <= BANK_PRODUCT_GAIN * timing.fp32_ms)
    assert BankProductTiming(10.0, 8.0).int8_pays and not BankProductTiming(10.0, 8.5).int8_pays
    assert BankProductTiming(25.1, 9.1).line() == "9.1 ms per image in int8 against 25.1 ms in float32 on this CPU"


def test_the_export_says_when_int8_does_not_pay(tmp_path):
    from glass_ad.inference.openvino_export import INT8_WORTH, OpenVinoExport

    paying = OpenVinoExport(tmp_path / "a.xml", "int8", speedup=1.64).speed_line()
    assert paying.startswith("int8 runs at 1.64× the speed") and "does not pay" not in paying
    assert "int8 does not pay here" in OpenVinoExport(tmp_path / "a.xml", "int8", speedup=INT8_WORTH - 0.01).speed_line()
    assert OpenVinoExport(tmp_path / "a.xml", "fp32").speed_line() == ""


def test_real_warnings_stay_visible_during_the_quiet_export():
    """The quiet context silences NNCF's INFO lines and the CUDA-probe warning only."""
    from glass_ad.inference.openvino_export import quiet_quantization

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with quiet_quantization():
            logging.getLogger("nncf").info("Statistics collection ...")
            logging.getLogger("nncf").warning("a real problem")
            warnings.warn("CUDA initialization: no NVIDIA driver found", UserWarning)
            warnings.warn("something the user should see", UserWarning)
    messages = [str(w.message) for w in caught]
    assert messages == ["something the user should see"]


def test_nncf_log_level_is_restored():
    from glass_ad.inference.openvino_export import quiet_quantization

    logger = logging.getLogger("nncf")
    before = logger.level
    with quiet_quantization():
        assert logger.getEffectiveLevel() >= logging.WARNING
    assert logger.level == before


def test_read_only_array_gives_no_pytorch_warning(run, data):
    detector = Detector.load(run, device="cpu", engine="torch")
    image = read_image(min((data / "test").rglob("*.png")))
    frozen = image.copy()
    frozen.flags.writeable = False
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # any warning fails the test
        a = detector(frozen)
        prepared = detector.prepare(image)
        prepared.flags.writeable = False
        detector.score_prepared(prepared[None])
    b = detector(image)
    assert a.score == b.score


def test_an_in_graph_model_with_a_resize_margin_is_refused(data, tmp_path):
    """A graph that resizes frames with a margin would resize the crops again: refused with what to do."""
    run = tmp_path / "margin"
    config = make_config(
        "fast", epochs=1, image_size=64, resize=72, backbone="efficientnet_lite0", early_stopping=False, num_threads=1
    )
    train(data, run, config, progress=False, echo=lambda _: None)
    export_onnx(run, verify=False)
    result = CliRunner().invoke(app, ["test", str(run), str(data), "--no-pictures", "--quiet", "--engine", "onnx"])
    assert result.exit_code == 2 and "--no-preprocessing" in result.output and "Traceback" not in result.output
    crops = export_onnx(run, tmp_path / "crops.onnx", preprocessing=False, verify=False).path
    result = CliRunner().invoke(
        app, ["test", str(run), str(data), "--no-pictures", "--quiet", "--engine", "onnx", "--onnx", str(crops)]
    )
    assert result.exit_code == 0, result.output


def test_decision_check_counts_changes_and_shifts_against_brute_force():
    """`check_decisions` on stand-in engines: int8 = fp32 + a known shift per image."""
    from glass_ad.inference.exported import INPUT_NAME, OUTPUT_NAMES
    from glass_ad.inference.openvino_export import check_decisions

    def frame(value: int) -> np.ndarray:
        return np.full((4, 4, 3), value, dtype=np.uint8)

    normals, anomalies = [frame(v) for v in (10, 48, 30)], [frame(v) for v in (52, 90)]
    shift = {10: 0.01, 48: 0.03, 30: -0.02, 52: -0.05, 90: -0.1}  # 48 and 52 cross the threshold 0.5

    class Reference:
        def run(self, names, feed):
            return [np.array([feed[INPUT_NAME][0, 0, 0, 0] / 100.0])]

    class Compiled:
        def output(self, name):
            return name

        def __call__(self, batch):
            value = int(batch[0, 0, 0, 0])
            return {OUTPUT_NAMES[0]: np.array([value / 100.0 + shift[value]])}

    check = check_decisions(Reference(), Compiled(), 0.5, normals, anomalies, 0.5, 0.5, score_scale=0.2)
    assert (check.normals, check.anomalies, check.changed) == (3, 2, 2)
    assert check.max_abs_diff == pytest.approx(0.1) and check.mean_abs_diff == pytest.approx(0.21 / 5)
    assert check.shift_normals == pytest.approx(0.02 / 3) and check.shift_anomalies == pytest.approx(-0.075)
    assert check.passed  # 2 of 5 changed ≤ 50 %, 0.1 ≤ 0.5 × 0.2, no bar on the mean
    assert "mean shift +0.0067 on the normal images, -0.0750 on the anomalies" in check.line()
    # The mean |difference| 0.042 is 0.21 of the score scale 0.2: refused under a bar of 0.2, passed under 0.22.
    for bar, passed in ((0.2, False), (0.22, True)):
        again = check_decisions(Reference(), Compiled(), 0.5, normals, anomalies, 0.5, 0.5, 0.2, max_mean_error=bar)
        assert again.passed == passed and f"= 0.210 of it (allowed {bar:g})" in again.line()
