"""Resumable training: an interrupted and resumed run ends with the same model as an uninterrupted one;
settings that differ are refused; SIGINT/SIGTERM become a clean stop that never cuts a state write."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from glass_ad.config import make_config
from glass_ad.data.demo_data import make_demo_dataset
from glass_ad.model.checkpoint import read_checkpoint
from glass_ad.training import resume as resume_module
from glass_ad.training.resume import STATE_NAME, ResumeError, TrainingInterrupted, describe_state
from glass_ad.training.trainer import train

QUIET = dict(progress=False, echo=lambda _: None)


def _config(**overrides):
    # Early stopping that never stops (best-epoch tracking still runs) and a cosine schedule: the restored
    # stopper and scheduler states both matter for the final model.
    values = dict(
        backbone="efficientnet_lite0", image_size=64, epochs=3, batch_size=4, early_stopping=True, patience=50,
        lr_schedule="cosine", precision="fp32", seed=3, num_threads=1,
    )  # fmt: skip
    values.update(overrides)
    return make_config("fast", **values)


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    return make_demo_dataset(tmp_path_factory.mktemp("data"), n_train=16, n_test_good=1, n_test_defect=1, size=64)


@pytest.fixture(scope="module")
def uninterrupted(data, tmp_path_factory):
    run = tmp_path_factory.mktemp("whole")
    return run, train(data, run, _config(), **QUIET)


def _interrupt_after(monkeypatch, epoch: int) -> None:
    """Deliver 'SIGINT' right after the state of `epoch` is written (what a signal during the next epoch does)."""
    save = resume_module.TrainState.save

    def save_then_stop(self, done, *args, **kwargs):
        path = save(self, done, *args, **kwargs)
        if done == epoch:
            raise TrainingInterrupted(signal.SIGINT)
        return path

    monkeypatch.setattr(resume_module.TrainState, "save", save_then_stop)


def _without_time(history):
    return [{k: v for k, v in record.items() if k not in ("elapsed_s", "epoch_s")} for record in history]


def test_resumed_run_equals_uninterrupted_run(data, uninterrupted, tmp_path, monkeypatch):
    whole_run, whole = uninterrupted
    assert not (whole_run / STATE_NAME).exists()  # removed once the checkpoint is written

    run = tmp_path / "run"
    with monkeypatch.context() as patch:
        _interrupt_after(patch, 1)
        with pytest.raises(KeyboardInterrupt):
            train(data, run, _config(), **QUIET)
    assert not (run / "model.pt").exists()
    state = torch.load(run / STATE_NAME, weights_only=True)  # plain tensors, numbers, lists and dicts
    assert state["epoch"] == 1 and len(state["history"]) == 1
    assert describe_state(run) == "epoch 1 of 3"
    assert not list(run.glob(f".{STATE_NAME}.*"))  # no temporary file left behind

    lines: list[str] = []
    resumed = train(data, run, _config(), resume=True, progress=False, echo=lines.append)
    assert not (run / STATE_NAME).exists()
    # The backbone's images per pass are the interrupted run's, not chosen again (rounding may differ by chunk).
    chunk = state["backbone_chunk"]
    assert f"backbone: {f'{chunk} image(s)' if chunk else 'the whole batch'} per pass (as in the interrupted run)" in lines
    assert (resumed.epochs_run, resumed.best_epoch) == (whole.epochs_run, whole.best_epoch)
    assert _without_time(resumed.history) == _without_time(whole.history)
    assert resumed.history[-1]["elapsed_s"] >= state["elapsed_s"]  # wall time counts both sessions
    a, b = read_checkpoint(whole.checkpoint), read_checkpoint(resumed.checkpoint)
    for part in ("adaptor", "discriminator"):
        assert a[part].keys() == b[part].keys()
        for key in a[part]:
            assert torch.equal(a[part][key], b[part][key]), f"{part}.{key}"
    assert torch.equal(a["centre"], b["centre"])
    assert a["calibration"]["image_threshold"] == b["calibration"]["image_threshold"]


def test_interrupted_after_its_last_epoch(data, tmp_path, monkeypatch):
    """Stopped early (or at the last epoch), interrupted before the checkpoint: the resume trains no more."""
    config = _config(epochs=4, patience=1, stop_window=1, lr_schedule="constant")
    whole = train(data, tmp_path / "whole", config, **QUIET)
    run = tmp_path / "run"
    with monkeypatch.context() as patch:
        _interrupt_after(patch, whole.epochs_run)
        with pytest.raises(KeyboardInterrupt):
            train(data, run, config, **QUIET)
    resumed = train(data, run, config, resume=True, **QUIET)
    assert (resumed.epochs_run, resumed.best_epoch) == (whole.epochs_run, whole.best_epoch)
    assert resumed.stopped_by == whole.stopped_by
    assert _without_time(resumed.history) == _without_time(whole.history)
    a, b = read_checkpoint(whole.checkpoint), read_checkpoint(resumed.checkpoint)
    assert all(torch.equal(a["discriminator"][k], b["discriminator"][k]) for k in a["discriminator"])


def test_resume_refuses_other_settings_and_data(data, tmp_path, monkeypatch):
    run = tmp_path / "run"
    with monkeypatch.context() as patch:
        _interrupt_after(patch, 1)
        with pytest.raises(KeyboardInterrupt):
            train(data, run, _config(), **QUIET)
    with pytest.raises(ResumeError, match=r"settings differ .*lr 0\.001 -> 0\.002") as refused:
        train(data, run, _config(lr=2e-3), resume=True, **QUIET)
    assert "\n" not in str(refused.value)
    with pytest.raises(ResumeError, match="epochs 3 -> 5"):  # the cosine schedule depends on it
        train(data, run, _config(epochs=5), resume=True, **QUIET)
    other = make_demo_dataset(tmp_path / "other", n_train=8, n_test_good=1, n_test_defect=1, size=64)
    with pytest.raises(ResumeError, match="trained on .*give the same data set"):
        train(other, run, _config(), resume=True, **QUIET)
    assert describe_state(run) == "epoch 1 of 3"  # refusals leave the state as it was
    with pytest.raises(ResumeError, match="nothing to resume"):
        train(data, tmp_path / "empty", _config(), resume=True, **QUIET)


def test_resume_refuses_a_data_set_changed_in_place(tmp_path, monkeypatch):
    data = make_demo_dataset(tmp_path / "data", n_train=12, n_test_good=1, n_test_defect=1, size=64)
    run = tmp_path / "run"
    with monkeypatch.context() as patch:
        _interrupt_after(patch, 1)
        with pytest.raises(KeyboardInterrupt):
            train(data, run, _config(epochs=2), **QUIET)
    good = sorted((data / "train" / "good").glob("*.png"))
    replaced, deleted = good[2], good[5]
    replaced.write_bytes(good[0].read_bytes())  # one image replaced (another's content)
    os.utime(replaced, ns=(1, 1))
    deleted.unlink()  # one deleted
    with pytest.raises(ResumeError) as refused:
        train(data, run, _config(epochs=2), resume=True, **QUIET)
    message = str(refused.value)
    assert "\n" not in message and "data set changed" in message
    assert f"train/good/{replaced.name}" in message and f"train/good/{deleted.name}" in message
    assert "replaced" in message and "removed" in message
    assert (run / STATE_NAME).is_file()  # the state stays for a resume on the restored data


def test_which_settings_may_change():
    saved = _config(lr_schedule="constant").to_dict()
    changed = lambda **values: resume_module._setting_changes(saved, {**saved, **values}, epochs_done=2)  # noqa: E731
    assert changed(num_threads=4) == [] and changed(time_limit_min=30) == []  # a new limit only moves the stop
    assert changed(epochs=40) == [] and changed(epochs=2) == []  # constant rate: any count not below the epochs done
    assert changed(epochs=1) == ["epochs 3 -> 1"]
    assert changed(epochs=40, lr_schedule="cosine") == ["epochs 3 -> 40", "lr_schedule 'constant' -> 'cosine'"]
    assert changed(seed=1, device="cuda") == ["device 'auto' -> 'cuda'", "seed 3 -> 1"]


def test_time_limit_stops_between_epochs_and_keeps_a_finished_run(data, tmp_path):
    """A limit shorter than one epoch: the run stops after its first epoch (never inside it) and still
    calibrates and writes its checkpoint; the epoch's own duration is in the history."""
    lines: list[str] = []
    result = train(data, tmp_path / "run", _config(epochs=3, time_limit_min=1e-4), progress=False, echo=lines.append)
    assert result.epochs_run == 1 and len(result.history) == 1 and result.checkpoint.exists()
    assert 0 < result.history[0]["epoch_s"] <= result.history[0]["elapsed_s"]
    assert any(line.startswith("time limit: stopped after epoch 1 ") for line in lines)
    assert result.stopped_by == "time limit"
    assert read_checkpoint(result.checkpoint)["training"]["stopped_by"] == "time limit"


def test_resume_counts_the_time_spent_and_may_lift_the_limit(data, tmp_path, monkeypatch):
    limited = _config(epochs=3, time_limit_min=1e-4)
    for lifted, (epochs, stopped_by) in ((False, (1, "time limit")), (True, (3, "epochs"))):
        run = tmp_path / f"run_{lifted}"
        with monkeypatch.context() as patch:
            _interrupt_after(patch, 1)  # right after epoch 1's state, before the limit is looked at
            with pytest.raises(KeyboardInterrupt):
                train(data, run, limited, **QUIET)
        config = _config(epochs=3, time_limit_min=0.0) if lifted else limited
        resumed = train(data, run, config, resume=True, **QUIET)
        assert (resumed.epochs_run, resumed.stopped_by) == (epochs, stopped_by)


# The two signal tests run in a fresh interpreter: a signal sent to the whole test process can land in
# the native threads that other tests' libraries (ONNX Runtime, OpenVINO) leave behind.
_SIGNALS_CHILD = """
import os, signal, time
from glass_ad.training import resume as resume_module
from glass_ad.training.resume import TrainingInterrupted, interruptible

previous = signal.getsignal(signal.SIGTERM)
for kind, code in ((signal.SIGINT, 130), (signal.SIGTERM, 143)):
    try:
        with interruptible():
            os.kill(os.getpid(), kind)
            time.sleep(5)  # the handler runs at the next bytecode
        raise SystemExit("no TrainingInterrupted")
    except TrainingInterrupted as stopped:
        assert stopped.exit_code == code, stopped.exit_code
assert signal.getsignal(signal.SIGTERM) is previous  # handlers restored after the block

written = []
try:
    with interruptible():
        with resume_module._hold_signals():
            os.kill(os.getpid(), signal.SIGINT)
            time.sleep(0.2)  # the handler has run by now: it must only take note
            written.append("complete")
    raise SystemExit("no TrainingInterrupted")
except TrainingInterrupted:
    pass
assert written == ["complete"], written
print("ok")
"""


def test_signals_become_training_interrupted_and_wait_for_the_state_write():
    result = subprocess.run([sys.executable, "-c", _SIGNALS_CHILD], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0 and result.stdout.strip() == "ok", result.stderr[-2000:]


# SIGINT through a real `glass train` process, the resume command it prints, and the CLI refusals are rows of
# the bad-input matrix (tests/test_reliability.py, group "Interrupted training").
