"""How a model was trained, as its checkpoint records it: `TrainingRecord` (``training`` in ``model.pt``)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Mapping

__all__ = ["TrainingRecord"]


_TRAINING_KEYS = (
    "data_root", "category", "train_images", "holdout_images", "holdout_paths", "epochs_run", "best_epoch",
    "stopped_by", "wall_time_s", "precision", "processes", "history",
)  # fmt: skip


@dataclass(frozen=True)
class TrainingRecord:
    """How the model was trained (absent fields: None; an empty record for library-built checkpoints)."""

    data_root: str | None = None
    category: str | None = None
    train_images: int | None = None
    holdout_images: int | None = None
    holdout_paths: tuple[str, ...] = ()
    epochs_run: int | None = None
    best_epoch: int | None = None
    stopped_by: str | None = None  # what ended training: "epochs", "early stopping" or "time limit"
    wall_time_s: float | None = None
    precision: str | None = None
    processes: int = 1  # data-parallel ranks (torchrun); 1: one process
    history: tuple[dict[str, Any], ...] = ()  # one record per epoch (losses, separations, validation)
    extra: Mapping[str, Any] = field(default_factory=dict)
    recorded: bool = True  # False: the file had no training entry

    @classmethod
    def from_dict(cls, data: Mapping[str, Any] | None) -> "TrainingRecord":
        if not data:
            return cls(recorded=data is not None)
        values = {k: data[k] for k in _TRAINING_KEYS if k in data}
        values["holdout_paths"] = tuple(str(p) for p in values.get("holdout_paths") or ())
        values["history"] = tuple(dict(r) for r in values.get("history") or ())
        return cls(**values, extra={k: v for k, v in data.items() if k not in _TRAINING_KEYS})

    def to_dict(self) -> dict[str, Any]:
        out = {k: getattr(self, k) for k in _TRAINING_KEYS}
        out["holdout_paths"] = list(self.holdout_paths)
        out["history"] = [dict(r) for r in self.history]
        return {**out, **self.extra}

    def summary(self) -> dict[str, Any]:
        """The record without the per-epoch history and the held-out file list (`glass info`)."""
        return {k: v for k, v in self.to_dict().items() if k not in ("history", "holdout_paths")}
