"""Resumable training: the state of the last completed epoch, and interrupts that end cleanly.

After every epoch `train` writes ``RUN/train_state.pt`` (atomically: a unique temporary file renamed over
the old one) holding everything the next epoch depends on: the adaptor and discriminator weights (with
batch-norm statistics), the optimiser and learning-rate scheduler states, every random state the loop
draws from (the numpy generator, the torch generator, the global torch RNG, CUDA's when training there),
the early-stopping state, the weights' moving average (when on), the best weights and their epoch, the
history and the training arithmetic. `TrainState.save` takes the run's `Progress` and `RandomStreams`
(progress.py) whole, and `restore` fills them.
``train(..., resume=True)`` (``glass train --resume``) redoes the deterministic set-up (decoding, feature
cache, geometry, validation set), then restores that state right before the next epoch, so the resumed
run ends with the same model as an uninterrupted one with the same seed. The file is removed once the
checkpoint is written.

The file holds only tensors, numbers, strings, lists and dicts: it loads with ``torch.load(...,
weights_only=True)``. A resume whose settings differ from the interrupted run's is refused (only
``epochs`` — with a constant learning rate, not below the epochs done — and ``num_threads`` may change),
and so is a data set changed in place (a training image added, removed, replaced or rewritten: the state
records each one's size and modification time). A new start removes temporary files of a state write
that a SIGKILL cut short.

:func:`interruptible` turns SIGINT/SIGTERM into :class:`TrainingInterrupted`; a signal that arrives while
the state is being written is held until the write is complete, so an interrupt never costs more than
the epoch in progress.
"""

from __future__ import annotations

import os
import pickle
import signal
import threading
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch

from glass_ad.provenance import data_listing, listing_changes
from glass_ad.safety import atomic_path, remove_stale_temporaries
from glass_ad.training.averaging import trainable_state
from glass_ad.training.branch_check import BranchCheck
from glass_ad.training.loop import Optimisation
from glass_ad.training.progress import Progress, RandomStreams

__all__ = [
    "STATE_NAME",
    "ResumeError",
    "TrainState",
    "TrainingInterrupted",
    "describe_state",
    "interruptible",
    "read_state",
]

STATE_NAME = "train_state.pt"
STATE_FORMAT = "glass-ad-train-state/1"
# Settings that may differ on resume without changing any epoch's result (epochs: see `_epochs_change`;
# a new time limit only moves the stop).
FREE_SETTINGS = ("num_threads", "time_limit_min")


class ResumeError(ValueError):
    """A resume that cannot continue the interrupted run (one line)."""


class TrainingInterrupted(KeyboardInterrupt):
    """Training stopped by SIGINT or SIGTERM; the state of the last completed epoch is on disk."""

    def __init__(self, signum: int):
        self.signum = int(signum)
        super().__init__(signal.Signals(self.signum).name)

    @property
    def exit_code(self) -> int:
        """The shell's convention: 128 + signal number (130 for SIGINT, 143 for SIGTERM)."""
        return 128 + self.signum


# ---------------------------------------------------------------------------------------------------
# Signals


class _Signals:
    installed = False
    writing = False  # a state file is being written: hold the signal until it is complete
    pending: int | None = None


def _on_signal(signum: int, frame: Any) -> None:
    if _Signals.writing:
        _Signals.pending = signum
        return
    raise TrainingInterrupted(signum)


@contextmanager
def interruptible() -> Iterator[None]:
    """SIGINT and SIGTERM raise :class:`TrainingInterrupted` inside the block (main thread only; elsewhere
    the block runs unchanged)."""
    if threading.current_thread() is not threading.main_thread() or _Signals.installed:
        yield
        return
    kinds = [signal.SIGINT] + ([signal.SIGTERM] if hasattr(signal, "SIGTERM") else [])
    previous = {kind: signal.signal(kind, _on_signal) for kind in kinds}
    _Signals.installed, _Signals.pending = True, None
    try:
        yield
    finally:
        for kind, handler in previous.items():
            signal.signal(kind, handler)
        _Signals.installed = False


@contextmanager
def _hold_signals() -> Iterator[None]:
    """Signals that arrive inside the block take effect when it ends."""
    _Signals.writing = True
    try:
        yield
    finally:
        _Signals.writing = False
    pending, _Signals.pending = _Signals.pending, None
    if pending is not None:
        raise TrainingInterrupted(pending)


# ---------------------------------------------------------------------------------------------------
# The state file


def state_path(run_dir: str | os.PathLike) -> Path:
    return Path(run_dir) / STATE_NAME


def read_state(run_dir: str | os.PathLike, *, mmap: bool = False) -> dict[str, Any]:
    """The saved state of an interrupted run in ``run_dir`` (ResumeError when absent or unusable)."""
    path = state_path(run_dir)
    if not path.is_file():
        raise ResumeError(f"nothing to resume in '{run_dir}': no interrupted training there ({STATE_NAME} not found)")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            state = torch.load(path, map_location="cpu", weights_only=True, mmap=mmap)
    except pickle.UnpicklingError:
        raise ResumeError(f"{path} is not a training state written by glass train; start over with --force") from None
    except (RuntimeError, EOFError, OSError, ValueError, KeyError, IndexError, AttributeError) as error:
        raise ResumeError(f"{path} is damaged or truncated ({type(error).__name__}); start over with --force") from None
    if not isinstance(state, dict) or state.get("format") != STATE_FORMAT:
        raise ResumeError(f"{path} is not a training state of this glass-ad version; start over with --force")
    return state


def describe_state(run_dir: str | os.PathLike) -> str | None:
    """'epoch K of N' of the saved state in ``run_dir``, or None when there is none (cheap: memory-mapped)."""
    try:
        state = read_state(run_dir, mmap=True)
    except ResumeError:
        return None
    return f"epoch {state['epoch']} of {state['config']['epochs']}"


def _setting_changes(saved: dict[str, Any], given: dict[str, Any], epochs_done: int) -> list[str]:
    changes = []
    for key in sorted(set(saved) | set(given)):
        old, new = saved.get(key), given.get(key)
        if old == new or key in FREE_SETTINGS:
            continue
        if key == "epochs" and given.get("lr_schedule") == "constant" and isinstance(new, int) and new >= epochs_done:
            continue  # a constant rate does not depend on the number of epochs
        changes.append(f"{key} {old!r} -> {new!r}")
    return changes


def _data_identity(data_root: str | os.PathLike, category: str | None, layout: str) -> dict[str, Any]:
    return {"data_root": str(Path(data_root).resolve()), "category": category, "layout": layout}


def _training_files(data_root: str | os.PathLike, category: str | None, layout: str) -> dict[str, list[int]] | None:
    """`provenance.data_listing` of the data set's training images (None when it cannot be listed: the
    preparation then says why)."""
    from glass_ad.data.layouts import load_dataset

    try:
        dataset = load_dataset(data_root, layout, category=category)
    except (ValueError, OSError):
        return None
    return data_listing([sample.path for sample in dataset.train], dataset.root)


class TrainState:
    """The resume state of one run folder: checked and loaded at the start of ``train(resume=True)``,
    written after every epoch, removed once the checkpoint is written."""

    def __init__(
        self,
        run_dir: str | os.PathLike,
        config: Any,
        data_root: str | os.PathLike,
        category: str | None,
        layout: str,
        device: torch.device,
        *,
        resume: bool = False,
    ) -> None:
        self.path = state_path(run_dir)
        self.config = config.to_dict()  # as given, before `train` resolves "auto" settings
        self.data = _data_identity(data_root, category, layout)
        self.device = torch.device(device)
        self.loaded: dict[str, Any] | None = None
        # Temporary files of a state (or checkpoint) write cut by SIGKILL: no writer is running now.
        for name in (STATE_NAME, "model.pt"):
            remove_stale_temporaries(self.path.parent, name)
        self.files = _training_files(data_root, category, layout)  # sizes and times, checked on resume
        if not resume:
            self.path.unlink(missing_ok=True)  # a fresh run: an older state must not be resumed by mistake
            return
        state = read_state(run_dir)
        if state["data"] != self.data:
            raise ResumeError(
                f"cannot resume: the interrupted run trained on {state['data']['data_root']}"
                + (f" (category {state['data']['category']})" if state["data"]["category"] else "")
                + "; give the same data set"
            )
        saved_files = state.get("files")
        changed = listing_changes(saved_files, self.files) if saved_files is not None and self.files is not None else None
        if changed:
            raise ResumeError(
                f"cannot resume: the data set changed since the interrupted run ({changed}); restore it, or start "
                f"over with --force"
            )
        changes = _setting_changes(state["config"], self.config, int(state["epoch"]))
        if changes:
            raise ResumeError(
                f"cannot resume: settings differ from the interrupted run ({', '.join(changes)}); give the same "
                f"options, or start over with --force"
            )
        self.loaded = state

    @property
    def resuming(self) -> bool:
        """Whether an interrupted run's state was loaded (``train(resume=True)``, checked)."""
        return self.loaded is not None

    def kept(self, key: str) -> Any:
        """A set-up decision of the interrupted run that the resume keeps (``"backbone_chunk"``,
        ``"branch_check"``), or None: a fresh run, or a state without it."""
        return None if self.loaded is None else self.loaded.get(key)

    def save(
        self, epoch: int, progress: Progress, model: torch.nn.Module, optimisation: Optimisation, streams: RandomStreams
    ) -> Path:
        """Write the state after ``epoch`` completed epochs (atomically; signals wait for the write)."""
        stopper, average = progress.stopper, optimisation.average
        state = {
            "format": STATE_FORMAT,
            "config": self.config,
            "data": self.data,
            "files": self.files,  # training files: size and modification time (a changed data set is refused)
            "epoch": int(epoch),
            "model": {k: v.cpu() for k, v in trainable_state(model).items()},
            "optimizers": [optimizer.state_dict() for optimizer in optimisation.optimizers],
            "schedulers": [scheduler.state_dict() for scheduler in optimisation.schedulers],
            "rng": {  # the LAS stream is the order stream itself: resume is single-process
                "numpy": streams.order.bit_generator.state,
                "generator": streams.generator.get_state(),
                "torch": torch.get_rng_state(),
                "cuda": torch.cuda.get_rng_state_all() if self.device.type == "cuda" else [],
            },
            "stopper": {
                "scores": [float(s) for s in stopper.scores],
                "best_score": float(stopper.best_score),
                "best_trend": float(stopper.best_trend),
                "stale": int(stopper.stale),
            },
            "best_state": progress.best_state,
            "best_epoch": int(progress.best_epoch),
            "history": [dict(record) for record in progress.history],
            "bf16": bool(progress.bf16),
            "elapsed_s": float(progress.history[-1]["elapsed_s"]),  # the run's time at the end of the epoch
            "average": average.state_dict() if average is not None else None,
            "backbone_chunk": int(progress.backbone_chunk),
            "branch_check": progress.branch_check.as_dict() if progress.branch_check is not None else None,
        }
        with _hold_signals():
            _save_atomic(state, self.path)
        return self.path

    def restore(
        self, progress: Progress, model: torch.nn.Module, optimisation: Optimisation, streams: RandomStreams
    ) -> None:
        """Fill `progress` and put the rest of the loaded state into the loop's objects. Called right before
        the next epoch: every random state is the one it ended with."""
        state = self.loaded
        if state is None:
            raise ResumeError("no training state was loaded")
        model.load_state_dict({k: v.to(self.device) for k, v in state["model"].items()}, strict=False)
        for optimizer, saved in zip(optimisation.optimizers, state["optimizers"], strict=True):
            optimizer.load_state_dict(saved)
        for scheduler, saved in zip(optimisation.schedulers, state["schedulers"], strict=True):
            scheduler.load_state_dict(saved)
        if optimisation.average is not None:
            optimisation.average.load_state_dict({k: v.to(self.device) for k, v in state["average"].items()})
        for key, value in state["stopper"].items():
            setattr(progress.stopper, key, list(value) if key == "scores" else value)
        streams.order.bit_generator.state = state["rng"]["numpy"]
        streams.generator.set_state(state["rng"]["generator"])
        torch.set_rng_state(state["rng"]["torch"])
        if self.device.type == "cuda" and state["rng"]["cuda"]:
            torch.cuda.set_rng_state_all(state["rng"]["cuda"])
        best_state = state["best_state"]
        progress.best_state = None if best_state is None else {k: v.to(self.device) for k, v in best_state.items()}
        progress.best_epoch = int(state["best_epoch"])
        progress.history = list(state["history"])
        progress.bf16 = bool(state["bf16"])
        progress.started -= float(state["elapsed_s"])  # the run's clock goes on from the interrupted session's
        progress.backbone_chunk = int(state.get("backbone_chunk", progress.backbone_chunk))
        branch_check = state.get("branch_check")
        progress.branch_check = BranchCheck(**branch_check) if branch_check else None

    def remove(self) -> None:
        """The run is complete: nothing is left to resume."""
        self.path.unlink(missing_ok=True)


def _save_atomic(state: dict[str, Any], path: Path) -> None:
    with atomic_path(path) as tmp, open(tmp, "wb") as handle:
        torch.save(state, handle)
        handle.flush()
        os.fsync(handle.fileno())
