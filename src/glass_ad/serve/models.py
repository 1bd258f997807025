"""The models a service holds: where they come from, their names and versions, what `/v1/models` shows."""

from __future__ import annotations

import hashlib
import math
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from glass_ad.inference.predict import Detector
from glass_ad.model.checkpoint import checkpoint_path
from glass_ad.serve.batching import MicroBatcher

__all__ = ["ModelSpec", "ServedModel", "parse_model_spec", "checkpoint_version", "load_served_model"]

NAME_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")


@dataclass(frozen=True)
class ModelSpec:
    name: str
    run: Path


def parse_model_spec(value: str | os.PathLike) -> ModelSpec:
    """``RUN_DIR`` (named after the folder) or ``NAME=RUN_DIR``; the checkpoint must exist."""
    text = str(value)
    name, _, path = text.partition("=") if "=" in text else ("", "", text)
    run = Path(path)
    checkpoint = checkpoint_path(run)
    if not checkpoint.is_file():
        raise FileNotFoundError(f"no checkpoint at {checkpoint} (train one with `glass train DATA --out RUN_DIR`)")
    if not name:
        name = (checkpoint.parent if checkpoint.name == "model.pt" else checkpoint.with_suffix("")).resolve().name
    if not NAME_PATTERN.match(name):
        raise ValueError(f"model name {name!r} must be 1-64 letters, digits, '_', '.' or '-' (use NAME=RUN_DIR)")
    return ModelSpec(name, run)


def checkpoint_version(path: str | os.PathLike) -> str:
    """First 16 hex digits of the checkpoint file's SHA-256: changes whenever the model does."""
    digest = hashlib.sha256()
    with open(checkpoint_path(path), "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()[:16]


def _finite(value: Any) -> float | None:
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return number if math.isfinite(number) else None


@dataclass
class ServedModel:
    """One loaded model with its batcher. `score(prepared)` runs through the batcher."""

    name: str
    version: str
    run: Path
    detector: Detector
    batcher: MicroBatcher
    info: dict[str, Any] = field(default_factory=dict)

    def close(self) -> None:
        self.batcher.close()


def describe(name: str, version: str, detector: Detector, max_batch: int) -> dict[str, Any]:
    checkpoint = detector.checkpoint
    training = checkpoint.training
    cal = detector.calibration
    vmin, vmax = detector.heat_range()
    return {
        "name": name,
        "version": version,
        "engine": detector.engine_name,
        "precision": detector.engine_precision,
        "backbone": checkpoint.backbone.name,
        "layers": list(checkpoint.backbone.layers),
        "image_size": detector.image_size,
        "input_shape": list(detector.input_shape),  # (height, width) of the network input
        "hypothesis": checkpoint.hypothesis,
        "thresholds": {
            "kind": detector.threshold_kind,
            "image": detector.image_threshold,
            "pixel": detector.pixel_threshold,
            "target_false_alarm_rate": _finite(cal.target_false_alarm_rate),
            "f1_image": _finite(cal.f1.image_threshold if cal.f1 is not None else None),
        },
        "color_scale": {"min": vmin, "max": vmax, "pixel_threshold": detector.pixel_threshold},
        # What the OK/NG threshold in use promises: the estimated false-alarm rate, its interval and evidence.
        "operating_point": detector.operating_summary(),
        "training": {
            # The folder name only: the service does not publish its file-system layout.
            "data": Path(str(training.data_root)).name if training.data_root else None,
            "category": training.category,
            "train_images": training.train_images,
            "holdout_images": training.holdout_images,
            "epochs_run": training.epochs_run,
            "best_epoch": training.best_epoch,
        },
        "max_batch": max_batch,
    }


def load_served_model(
    spec: ModelSpec,
    *,
    engine: str = "torch",
    device: str = "auto",
    threshold: str | float = "far",
    threads: int | None = None,
    max_batch: int = 8,
    max_wait_s: float = 0.002,
    on_batch=None,
) -> ServedModel:
    """Load the detector once, warm it up with one batch, start its batcher."""
    detector = Detector.load(spec.run, device=device, engine=engine, threshold=threshold, threads=threads, batch_size=max_batch)
    height, width = detector.input_shape
    detector.score_prepared(np.zeros((1, height, width, 3), dtype=np.uint8))  # first call allocates; not on a request

    def process(images: list[np.ndarray]) -> list[tuple[float, float, np.ndarray]]:
        scores, normalized, maps = detector.score_prepared(np.stack(images))
        return [(float(s), float(n), m) for s, n, m in zip(scores, normalized, maps)]

    version = checkpoint_version(spec.run)
    batcher = MicroBatcher(
        process,
        max_batch=max_batch,
        max_wait_s=max_wait_s,
        name=f"model-{spec.name}",
        on_batch=(lambda n, s: on_batch(spec.name, n, s)) if on_batch else None,
    )
    return ServedModel(spec.name, version, spec.run, detector, batcher, describe(spec.name, version, detector, max_batch))
