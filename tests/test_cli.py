"""The `glass` command as a user types it: train, test, info, demo, ablate, preview — and their refusals.

One tiny model is trained through `glass train` for the whole module (64 px, EfficientNet-Lite0, 1 epoch,
16 generated training images). `glass test` is checked against the `Detector` (the deployment API) on the
same images. Every refusal must be: a non-zero exit, one clear line (`error: …`, or Click's
"Invalid value for '--option'" for a malformed option), no traceback, and no file written or changed.

The bad-input matrix of test_reliability.py (damaged checkpoints, existing results without --force, bad
images) is not repeated here.
"""

from __future__ import annotations

import csv
import hashlib
import json
import re
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from glass_ad.cli import app
from glass_ad.data.demo_data import make_demo_dataset
from glass_ad.data.layouts import load_dataset
from glass_ad.evaluation import metrics
from glass_ad.inference.predict import Detector

TINY = ["--backbone", "efficientnet_lite0", "--image-size", "64", "--epochs", "1", "--threads", "1", "-q"]


def _glass(*args) -> "CliRunner.invoke":
    return CliRunner().invoke(app, [str(a) for a in args])


def _ok(result) -> str:
    assert result.exit_code == 0, result.output + result.stderr
    return result.stdout


def _digest(*roots: Path) -> dict[str, str]:
    """Every file under the roots with its content hash (and every folder): what a refusal must not change."""
    found = {}
    for root in roots:
        if root.is_file():
            found[str(root)] = hashlib.sha256(root.read_bytes()).hexdigest()
            continue
        for path in sorted(root.rglob("*")) if root.exists() else []:
            found[str(path)] = hashlib.sha256(path.read_bytes()).hexdigest() if path.is_file() else "folder"
    return found


def _pixels(path: Path) -> np.ndarray:
    with Image.open(path) as image:
        assert image.format == "PNG"
        return np.asarray(image.convert("RGB")).astype(int)


def _refusal(result) -> str:
    """A refused command: non-zero exit, no traceback, one clear line. Returns that line."""
    assert result.exit_code == 2, (result.exit_code, result.output, result.stderr, result.exception)
    assert result.exception is None or isinstance(result.exception, SystemExit), repr(result.exception)
    text = result.stdout + result.stderr
    assert "Traceback" not in text, text
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    if errors:
        assert len(errors) == 1 and result.stderr.strip() == errors[0], result.stderr
        return errors[0]
    # A malformed option: Click's usage error, framed; its message is the line naming the option.
    usage = [line.strip(" │") for line in result.stderr.splitlines() if "Invalid value for" in line]
    assert len(usage) == 1, result.stderr
    return usage[0]


# ---------------------------------------------------------------------------------------------------
# One tiny data set and model for the module


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    return make_demo_dataset(tmp_path_factory.mktemp("data"), n_train=16, n_test_good=3, n_test_defect=3, size=64)


@pytest.fixture(scope="module")
def trained(data, tmp_path_factory) -> tuple[Path, str]:
    run = tmp_path_factory.mktemp("runs") / "run"
    # --max-patches-per-image 0 lifts the fast recipe's cap (no effect at 8×8 patches; stored as "none").
    result = _glass("train", data, "--out", run, "--no-early-stopping", "--max-patches-per-image", "0", *TINY)
    return run, _ok(result)


@pytest.fixture(scope="module")
def run(trained) -> Path:
    return trained[0]


@pytest.fixture(scope="module")
def detector_scores(run, data) -> dict[str, object]:
    """The Detector's raw and normalised scores of every test image, with the labels."""
    samples = load_dataset(data).test
    predictions = Detector.load(run, device="cpu").predict([str(s.path) for s in samples])
    return {
        "paths": [str(s.path) for s in samples],
        "labels": np.array([s.label for s in samples]),
        "scores": np.array([p.score for p in predictions]),
        "normalized": np.array([p.normalized for p in predictions]),
    }


# ---------------------------------------------------------------------------------------------------
# train, info


@pytest.mark.slow
def test_train_reports_what_info_shows(trained):
    run, output = trained
    assert {p.name for p in run.iterdir()} >= {"model.pt", "config.yaml", "history.csv"}
    saved = re.search(r"saved (\S+) \(hypothesis (\w+), (\d+) epochs, stopped by ([a-z ]+), model of epoch (\d+),", output)
    threshold = re.search(r"image threshold (\d+\.\d{4}) for a 1\.0 % false-alarm rate \(from (\d+) held-out", output)
    assert saved and threshold, output
    info = json.loads(_ok(_glass("info", run)))
    assert saved.group(1) == str(run / "model.pt")
    training = info["training"]
    assert (info["hypothesis"], training["epochs_run"], training["stopped_by"], training["best_epoch"]) == (
        saved.group(2), int(saved.group(3)), saved.group(4), int(saved.group(5)),
    )  # fmt: skip
    assert f"{info['calibration']['image_threshold']:.4f}" == threshold.group(1)
    assert info["calibration"]["holdout_images"] == int(threshold.group(2))
    # The decision line (estimate, 95 % interval, evidence) is printed by train and shown by info.
    assert info["decision"] in output and info["decision"].startswith(f"threshold {threshold.group(1)}: ")
    assert "held-out normal images" in info["decision"]
    # The options given are the settings stored, and config.yaml repeats them.
    assert info["backbone"]["name"] == "efficientnet_lite0"
    assert (info["config"]["image_size"], info["config"]["epochs"], info["config"]["early_stopping"]) == (64, 1, False)
    assert info["config"]["max_patches_per_image"] is None and info["config"]["patch_fraction"] == 0.25
    assert info["training"]["train_images"] + info["training"]["holdout_images"] == 16
    assert len(info["branches"]["epochs"]) == 1
    yaml_lines = (run / "config.yaml").read_text().splitlines()
    assert "backbone: efficientnet_lite0" in yaml_lines and "image_size: 64" in yaml_lines and "epochs: 1" in yaml_lines
    with (run / "history.csv").open(newline="") as handle:
        assert [row["epoch"] for row in csv.DictReader(handle)] == ["1"]


# ---------------------------------------------------------------------------------------------------
# test: the command agrees with the Detector on the same images


@pytest.mark.slow
def test_glass_test_agrees_with_the_detector(run, data, detector_scores, tmp_path, read_histogram):
    output = _ok(_glass("test", run, data, "--json", tmp_path / "m.json", "--report", tmp_path / "pics", "-q"))
    report = json.loads((tmp_path / "m.json").read_text())
    scores, labels, normalized = detector_scores["scores"], detector_scores["labels"], detector_scores["normalized"]
    assert (report["n_images"], report["n_anomalous"], report["n_normal"]) == (9, 6, 3)
    assert report["image_auroc"] == pytest.approx(metrics.image_auroc(scores, labels), abs=1e-9)
    assert report["image_ap"] == pytest.approx(metrics.image_ap(scores, labels), abs=1e-9)
    stored = report["stored_threshold"]
    flagged = scores >= stored["image_threshold"]
    counts = (int((flagged & (labels == 1)).sum()), int((flagged & (labels == 0)).sum()),
              int((~flagged & (labels == 0)).sum()), int((~flagged & (labels == 1)).sum()))  # fmt: skip
    assert (stored["tp"], stored["fp"], stored["tn"], stored["fn"]) == counts
    # A continuous function of the normal images' scores: equal only if the scores are.
    assert report["normalized_scores"]["normal_median"] == pytest.approx(float(np.median(normalized[labels == 0])), abs=1e-5)
    # What is printed is what is written.
    assert f"image AUROC {100 * report['image_auroc']:.1f} | pixel AUROC {100 * report['pixel_auroc']:.1f}" in output
    assert f"stored threshold {stored['image_threshold']:.4f}: precision {100 * stored['precision']:.1f}" in output
    parts = read_histogram(tmp_path / "pics" / "score_histogram.png", min_bar_height=10)
    assert parts["normal"] and parts["anomalous"] and len(parts["dark"]) == 3  # both classes, the threshold line


@pytest.mark.slow
def test_per_image_scores_of_the_cli_equal_the_detectors(run, data, detector_scores, tmp_path):
    # `glass test --json` holds no per-image scores; `glass suite --model` runs the same tester and writes them.
    out = tmp_path / "suite"
    _ok(_glass("suite", data, "--model", run, "--out", out, "--no-pictures", "-q"))
    (category,) = [p for p in out.iterdir() if p.is_dir()]
    with (category / "scores.csv").open(newline="") as handle:
        listed = {row["path"]: float(row["score"]) for row in csv.DictReader(handle)}
    assert sorted(listed) == sorted(detector_scores["paths"])
    expected = dict(zip(detector_scores["paths"], detector_scores["scores"].tolist()))
    for path, score in listed.items():
        assert score == pytest.approx(expected[path], rel=1e-4, abs=1e-5), path


# ---------------------------------------------------------------------------------------------------
# ablate, preview


@pytest.mark.slow
def test_ablate_trains_one_variant_per_value_and_resumes(data, tmp_path):
    out = tmp_path / "ablate"
    args = ["ablate", data, "--out", out, "--study", "gas", "--values", "off,noise", *TINY]
    printed = _ok(_glass(*args))
    with (out / "results.csv").open(newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert [r["variant"] for r in rows] == ["gas=off", "gas=noise", "Mean"]
    for row, gas in zip(rows, ("off", "noise")):
        info = json.loads(_ok(_glass("info", out / row["variant"])))
        assert info["config"]["gas"] == gas and info["config"]["backbone"] == "efficientnet_lite0"
        measured = json.loads((out / row["variant"] / "metrics.json").read_text())
        assert float(row["image AUROC (%)"]) == pytest.approx(100 * measured["image_auroc"], abs=0.05 + 1e-9)
    assert "| **Mean** |" in printed
    stamps = {p: p.stat().st_mtime_ns for p in out.rglob("model.pt")}
    _ok(_glass(*args))  # everything done: nothing retrained
    assert {p: p.stat().st_mtime_ns for p in out.rglob("model.pt")} == stamps


@pytest.mark.slow
def test_preview_commands_draw_what_was_asked(run, data, tmp_path):
    las = tmp_path / "las.png"
    assert _ok(_glass("preview", "las", data, "--out", las, "--count", "3", "--image-size", "64")).strip() == f"saved {las}"
    assert _pixels(las).shape == (2 * (24 + 64), 2 * 3 * 64, 3)  # 3 panels of normal | LAS | mask, 2 per row

    features = tmp_path / "features.png"
    _ok(_glass("preview", "features", run, data, "--out", features, "--images", "2", "--points", "300"))
    pixels = _pixels(features)
    r, g, b = pixels[..., 0], pixels[..., 1], pixels[..., 2]
    assert ((b > r + 40) & (b > g + 10)).sum() > 50 and ((r > g + 60) & (r > b + 60) & (np.abs(g - b) < 25)).sum() > 50

    heatmaps = tmp_path / "heatmaps.png"
    _ok(_glass("preview", "heatmaps", run, data, "--out", heatmaps, "--count", "4", "--columns", "2"))
    grid = _pixels(heatmaps)
    rows = np.split(grid, 2, axis=0)
    panels = [half for row in rows for half in np.split(row, 2, axis=1)]
    green = [int(np.all(panel == (0, 255, 0), axis=-1).sum()) for panel in panels]
    assert all(green[:3]) and green[3] == 0  # 3 defective images with their ground truth, then a good one


@pytest.mark.slow
def test_demo_generates_trains_tests_and_draws(tmp_path):
    out = tmp_path / "demo"
    printed = _ok(_glass("demo", "--out", out, "--epochs", "1", "-q"))
    split = load_dataset(out / "data" / "surface")
    assert (len(split.train), len(split.test)) == (60, 12 + 2 * 12)
    report = json.loads((out / "metrics.json").read_text())
    assert report["n_images"] == 36 and report["image_size"] == 128 and report["epochs_run"] == 1
    assert report["image_auroc"] > 0.5  # one epoch already ranks defects above chance
    assert f"image AUROC {100 * report['image_auroc']:.1f} |" in printed
    heatmaps = _pixels(out / "report" / "heatmaps.png")
    assert heatmaps.shape[1] % 2 == 0 and heatmaps.shape[0] % 4 == 0  # 8 panels, 2 per row
    assert np.all(heatmaps == (0, 255, 0), axis=-1).any()  # ground truth drawn on the defects
    assert (out / "report" / "score_histogram.png").is_file() and (out / "run" / "model.pt").is_file()


# ---------------------------------------------------------------------------------------------------
# Refusals: exit 2, one clear line, nothing written


def _not_a_checkpoint(tmp_path: Path) -> Path:
    image = tmp_path / "inputs" / "photo.png"
    image.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.full((32, 32, 3), 90, np.uint8)).save(image)
    return image


REFUSALS_WITHOUT_A_MODEL = {
    # name: (arguments, with {data} {missing} {empty} {png} {out} filled in; the expected fragment)
    "train: missing data folder": (["train", "{missing}", "--out", "{out}", *TINY], "data-set folder is missing"),
    "train: empty data folder": (["train", "{empty}", "--out", "{out}", *TINY], "cannot detect the layout"),
    "train: --epochs 0": (["train", "{data}", "--out", "{out}", *TINY[:4], "--epochs", "0", "-q"], "epochs must be >= 1"),
    "train: unknown --hypothesis": (["train", "{data}", "--out", "{out}", "--hypothesis", "sphere"], "Invalid value for '--hypothesis'"),
    "train: --image-size not a number": (["train", "{data}", "--out", "{out}", "--image-size", "big"], "Invalid value for '--image-size'"),
    "test: an image given as the model": (["test", "{png}", "{data}", "--json", "{out}/m.json", "-q"], "is not a glass-ad checkpoint"),
    "info: an image given as the model": (["info", "{png}"], "is not a glass-ad checkpoint"),
    "info: missing run folder": (["info", "{missing}"], "no checkpoint at"),
    "info: empty run folder": (["info", "{empty}"], "no checkpoint at"),
    "demo: --epochs not a number": (["demo", "--out", "{out}", "--epochs", "many"], "Invalid value for '--epochs'"),
    "ablate: missing data folder": (["ablate", "{missing}", "--out", "{out}", "--study", "las"], "no categories under"),
    "ablate: empty data folder": (["ablate", "{empty}", "--out", "{out}", "--study", "las"], "no categories under"),
    "ablate: unknown --study": (["ablate", "{data}", "--out", "{out}", "--study", "colour"], "Invalid value for '--study'"),
    "ablate: unknown gas value": (["ablate", "{data}", "--out", "{out}", "--study", "gas", "--values", "strong"], "gas values must be off, noise, ascent or full"),
    "preview las: missing data folder": (["preview", "las", "{missing}", "--out", "{out}/l.png"], "data-set folder is missing"),
    "preview las: empty data folder": (["preview", "las", "{empty}", "--out", "{out}/l.png"], "cannot detect the layout"),
    "preview las: --count 0": (["preview", "las", "{data}", "--out", "{out}/l.png", "--count", "0"], "Invalid value for '--count'"),
    "preview features: an image given as the model": (["preview", "features", "{png}", "{data}", "--out", "{out}/f.png"], "is not a glass-ad checkpoint"),
    "preview scores: no scores.csv": (["preview", "scores", "{empty}", "--out", "{out}/s.png"], "no scores.csv"),
}  # fmt: skip


def _fill(args: list[str], **places: Path) -> list[str]:
    return [str(a).format(**{k: str(v) for k, v in places.items()}) for a in args]


@pytest.mark.parametrize("name", list(REFUSALS_WITHOUT_A_MODEL))
def test_refusals_without_a_model(name, data, tmp_path):
    args, fragment = REFUSALS_WITHOUT_A_MODEL[name]
    empty = tmp_path / "empty"
    empty.mkdir()
    png = _not_a_checkpoint(tmp_path)
    out = tmp_path / "out"
    before = _digest(data, tmp_path)
    message = _refusal(_glass(*_fill(args, data=data, missing=tmp_path / "missing", empty=empty, png=png, out=out)))
    assert fragment in message, message
    assert _digest(data, tmp_path) == before and not out.exists()


@pytest.mark.slow
@pytest.mark.parametrize(
    "name,args,fragment",
    [
        ("test: missing data folder", ["test", "{run}", "{missing}", "--json", "{out}/m.json", "-q"], "data-set folder is missing"),
        ("test: empty data folder", ["test", "{run}", "{empty}", "--json", "{out}/m.json", "-q"], "cannot detect the layout"),
        ("preview heatmaps: empty data folder", ["preview", "heatmaps", "{run}", "{empty}", "--out", "{out}/h.png"], "cannot detect the layout"),
        ("preview features: missing data folder", ["preview", "features", "{run}", "{missing}", "--out", "{out}/f.png"], "data-set folder is missing"),
    ],
)  # fmt: skip
def test_refusals_with_a_model(name, args, fragment, run, data, tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    out = tmp_path / "out"
    before = _digest(run, data, tmp_path)
    message = _refusal(_glass(*_fill(args, run=run, data=data, missing=tmp_path / "missing", empty=empty, out=out)))
    assert fragment in message, message
    assert _digest(run, data, tmp_path) == before and not out.exists()


@pytest.mark.slow
def test_a_text_file_given_as_the_model_is_named_as_such(run, data, tmp_path):
    before = _digest(run, data)
    message = _refusal(_glass("info", run / "history.csv"))
    assert _digest(run, data) == before
    assert "is not a glass-ad checkpoint" in message, message


def test_demo_with_zero_epochs_is_refused_before_any_work(tmp_path):
    out = tmp_path / "demo"
    message = _refusal(_glass("demo", "--out", out, "--epochs", "0", "-q"))
    assert "epochs must be >= 1" in message and not out.exists()


def test_preview_never_overwrites_its_input(tmp_path):
    copy = tmp_path / "surface"
    make_demo_dataset(tmp_path, n_train=4, n_test_good=1, n_test_defect=1, size=64)
    target = sorted((copy / "train" / "good").iterdir())[0]
    before = _digest(copy)
    result = _glass("preview", "las", copy, "--out", target, "--count", "2", "--image-size", "64")
    assert _digest(copy) == before, "the training image was replaced by the preview"
    message = _refusal(result)
    assert "is the input" in message or "inside the input folder" in message, message
