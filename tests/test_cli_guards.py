"""The command line's guards (issue 28, sections 4 and 5): refusals that are one line, outputs that never
land among the inputs, a full disk named as such, edited or broken models never used silently, a changed
data set never resumed, and no empty folder or stale temporary file left behind.

One tiny model is trained for the module (64 px, EfficientNet-Lite0, 1 epoch)."""

from __future__ import annotations

import errno
import json
import os
import re
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from glass_ad.cli import app
from glass_ad.config import make_config
from glass_ad.data.demo_data import make_demo_dataset
from glass_ad.model.checkpoint import Checkpoint, CheckpointError
from glass_ad.safety import DiskFullError, write_atomic
from glass_ad.training import resume as resume_module
from glass_ad.training.resume import STATE_NAME
from glass_ad.training.trainer import train

pytestmark = pytest.mark.usefixtures("one_torch_thread")

QUIET = {"progress": False, "echo": lambda _: None}
TINY = ["--backbone", "efficientnet_lite0", "--image-size", "64", "--epochs", "1", "--threads", "1", "-q"]
TORCH_DISK_FULL = "[enforce fail at inline_container.cc:672] . unexpected pos 3904 vs 3802"


def _config(**overrides):
    values = {
        "backbone": "efficientnet_lite0", "image_size": 64, "epochs": 2, "batch_size": 4, "early_stopping": False,
        "seed": 3, "num_threads": 1,
    }  # fmt: skip
    values.update(overrides)
    return make_config("fast", **values)


def _glass(*args):
    return CliRunner().invoke(app, [str(a) for a in args])


def _one_line_error(result, fragment: str) -> str:
    assert result.exit_code != 0, result.output
    assert "Traceback" not in result.output
    lines = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(lines) == 1, result.stderr
    assert fragment in lines[0], lines[0]
    return lines[0]


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    return make_demo_dataset(tmp_path_factory.mktemp("data"), n_train=16, n_test_good=3, n_test_defect=3, size=64)


@pytest.fixture(scope="module")
def run(data, tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("run")
    train(data, folder, _config(epochs=1), **QUIET)
    return folder


@pytest.fixture()
def images(data, tmp_path) -> Path:
    folder = tmp_path / "imgs"
    folder.mkdir()
    for path in sorted((data / "test" / "good").glob("*.png")):
        (folder / path.name).write_bytes(path.read_bytes())
    return folder


def _copy_run(run: Path, target: Path) -> Path:
    target.mkdir()
    (target / "model.pt").write_bytes((run / "model.pt").read_bytes())
    return target


# ------------------------------------------------------------------------------------- export (§4)


def test_export_help_names_the_openvino_extra():
    text = " ".join(re.sub(r"[│╭╮╰╯─]", " ", _glass("export", "--help").stdout).split())
    assert 'pip install "glass-ad[openvino]"' in text
    assert "int8" in text and "ONNX is exported in fp32" in text


@pytest.mark.parametrize("precision", ["int8", "fp16"])
def test_onnx_export_refuses_a_precision_it_would_not_apply(run, tmp_path, precision):
    result = _glass("export", run, "--format", "onnx", "--precision", precision, "--out", tmp_path / "out" / "m.onnx")
    _one_line_error(result, "--format openvino --precision int8")
    assert not (tmp_path / "out").exists()  # nothing written, no folder made


def test_nan_weights_fail_export_verification_and_predict(run, images, tmp_path):
    broken = _copy_run(run, tmp_path / "nan")
    checkpoint = Checkpoint.load(broken)
    for tensor in checkpoint.discriminator.values():
        if tensor.is_floating_point():
            tensor.fill_(float("nan"))
    checkpoint.save(broken)  # a model that trained into NaN (its digest is consistent)
    _one_line_error(_glass("export", broken, "--out", tmp_path / "e" / "m.onnx"), "not finite")
    assert not (tmp_path / "e").exists()
    # predict: a NaN score is an error, never "normal", and never a bare NaN in predictions.json
    _one_line_error(_glass("predict", broken, images, "--out", tmp_path / "p", "-q"), "non-finite score")
    assert not (tmp_path / "p").exists()


# -------------------------------------------------------------------------------- determinism (§5)
# Two runs with the same seed: tests/test_chunking.py::test_two_runs_with_the_same_seed_train_bit_identical_weights


# ------------------------------------------------------------------------------------- resume (§5)


def test_a_killed_state_write_leaves_no_temporary_file_after_the_next_start(data, tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    stale = [run / f".{STATE_NAME}.k3x9q.tmp", run / ".model.pt.abc123.tmp"]
    for path in stale:
        path.write_bytes(b"half a state")  # what SIGKILL during the write leaves
    train(data, run, _config(epochs=1), **QUIET)
    assert not any(path.exists() for path in stale)
    assert not list(run.glob(".*.tmp"))


# ------------------------------------------------------------------------------------ disk full (§5)


@pytest.mark.parametrize("failure", [RuntimeError(TORCH_DISK_FULL), OSError(errno.ENOSPC, "No space left on device")])
def test_a_full_disk_is_one_line_and_nothing_is_half_written(run, tmp_path, monkeypatch, failure):
    target = _copy_run(run, tmp_path / "r") / "model.pt"
    before = target.read_bytes()
    checkpoint = Checkpoint.load(target)

    def full_disk(obj, f, *args, **kwargs):
        Path(f).write_bytes(b"PK\x03\x04 partial")
        raise failure

    monkeypatch.setattr(torch, "save", full_disk)
    with pytest.raises(DiskFullError) as info:
        checkpoint.save(target)
    assert str(info.value).startswith("disk full: could not write") and "\n" not in str(info.value)
    assert target.read_bytes() == before  # the old checkpoint is untouched
    assert sorted(p.name for p in target.parent.iterdir()) == ["model.pt"]  # no temporary file


def test_write_atomic_names_a_full_disk(tmp_path, monkeypatch):
    def no_space(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "fsync", no_space)
    with pytest.raises(DiskFullError, match="disk full"):
        write_atomic(tmp_path / "a.json", "{}")
    assert list(tmp_path.iterdir()) == []


def test_glass_train_says_disk_full_when_the_state_write_fails(data, tmp_path, monkeypatch):
    def full_disk(obj, f, *args, **kwargs):
        raise RuntimeError(TORCH_DISK_FULL)

    monkeypatch.setattr(resume_module.torch, "save", full_disk)
    result = _glass("train", data, "--out", tmp_path / "run", *TINY)
    _one_line_error(result, "disk full: could not write")
    assert not list((tmp_path / "run").glob(".*.tmp")) if (tmp_path / "run").exists() else True


# --------------------------------------------------------------------------- edited checkpoint (§5)


def test_an_edited_stored_threshold_is_refused(run, tmp_path):
    edited = _copy_run(run, tmp_path / "edited")
    plain = torch.load(edited / "model.pt", weights_only=True)
    plain["calibration"]["image_threshold"] = 0.99
    torch.save(plain, edited / "model.pt")
    with pytest.raises(CheckpointError, match=r"thresholds \(calibration\) .* were changed after"):
        Checkpoint.load(edited)
    plain["calibration"]["image_threshold"] = Checkpoint.load(run).calibration.image_threshold
    plain["discriminator"] = {k: v + 1 if v.is_floating_point() else v for k, v in plain["discriminator"].items()}
    torch.save(plain, edited / "model.pt")
    with pytest.raises(CheckpointError, match="weights .* were changed after"):
        Checkpoint.load(edited)
    _one_line_error(_glass("info", edited), "were changed after")


def test_glass_calibrate_style_rewrites_keep_a_valid_digest(run, tmp_path):
    copy = _copy_run(run, tmp_path / "copy")
    checkpoint = Checkpoint.load(copy)
    Checkpoint.load(checkpoint.save(copy))  # written through the API: a new digest, accepted


# ------------------------------------------------------------------------------ bad options (§5)


@pytest.mark.parametrize("command", ["predict", "test"])
def test_negative_threads_are_one_line(run, data, images, tmp_path, command):
    args = [run, images, "--out", tmp_path / "o"] if command == "predict" else [run, data, "--report", tmp_path / "o"]
    result = _glass(command, *args, "--threads", "-2")
    assert result.exit_code == 2 and "Traceback" not in result.output and "--threads" in result.output
    assert not (tmp_path / "o").exists()


@pytest.mark.parametrize("value", ["nan", "inf", "-inf"])
def test_a_non_finite_threshold_is_refused(run, images, tmp_path, value):
    result = _glass("predict", run, images, "--out", tmp_path / "o", "--threshold", value, "-q")
    _one_line_error(result, "finite number")
    assert not (tmp_path / "o").exists()


# ---------------------------------------------------------------------- writes into inputs (§5)


def test_predict_refuses_the_folder_of_an_input_file(run, images):
    before = sorted(p.name for p in images.iterdir())
    result = _glass("predict", run, images / before[0], "--out", images, "-q")
    _one_line_error(result, "is the folder of the input")
    assert sorted(p.name for p in images.iterdir()) == before


def test_predict_refuses_an_output_inside_the_data_set_of_its_input(run, data):
    test_dir = data / "test"
    before = sorted(p.name for p in test_dir.iterdir())
    result = _glass("predict", run, test_dir / "good", "--out", test_dir, "-q")
    _one_line_error(result, "inside the data set")
    assert sorted(p.name for p in test_dir.iterdir()) == before  # no test/overlays: `glass test` still works


def test_train_keeps_the_users_config_and_history(data, run, tmp_path):
    out = tmp_path / "R"
    out.mkdir()
    config = out / "config.yaml"
    config.write_text("epochs: 1\nimage_size: 64\nbackbone: efficientnet_lite0\n")
    _one_line_error(_glass("train", data, "--out", out, "--config", config, *TINY), "would be overwritten")
    _one_line_error(_glass("train", data, "--out", out, "--config", config, *TINY, "--force"), "would be overwritten")
    elsewhere = tmp_path / "settings.yaml"
    elsewhere.write_text(config.read_text())
    _one_line_error(_glass("train", data, "--out", out, "--config", elsewhere, *TINY), "--force")
    (out / "history.csv").write_text("epoch,loss\n")
    config.unlink()
    _one_line_error(_glass("train", data, "--out", out, *TINY), "history.csv")
    assert sorted(p.name for p in out.iterdir()) == ["history.csv"]


# ------------------------------------------------------------------------------------- minor (§5)


def test_a_refusal_after_the_checks_leaves_no_empty_run_folder(tmp_path):
    data = make_demo_dataset(tmp_path / "data", n_train=2, n_test_good=1, n_test_defect=1, size=64)
    out = tmp_path / "new" / "run"
    result = _glass("train", data, "--out", out, *TINY)  # too few images: refused by the preparation
    assert result.exit_code != 0 and "Traceback" not in result.output
    assert not out.exists() and not (tmp_path / "new").exists()


def test_predict_that_scores_nothing_leaves_no_empty_output_folder(run, tmp_path):
    empty = tmp_path / "empty_in"
    empty.mkdir()
    (empty / "broken.png").write_bytes(b"not a png")
    result = _glass("predict", run, empty, "--out", tmp_path / "o", "-q")
    _one_line_error(result, "no image could be processed")
    assert not (tmp_path / "o").exists()


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="no FIFOs here")
def test_a_fifo_in_a_folder_is_listed_with_its_reason(run, images, tmp_path):
    os.mkfifo(images / "pipe.png")
    result = _glass("predict", run, images, "--out", tmp_path / "o", "--format", "json", "-q")
    assert result.exit_code == 0, result.output
    assert "pipe.png" in result.stderr and "named pipe (FIFO)" in result.stderr
    summary = json.loads((tmp_path / "o" / "predictions.json").read_text())
    assert [e["path"] for e in summary["errors"]] == [str(images / "pipe.png")] and summary["n_images"] == 3
