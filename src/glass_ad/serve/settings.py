"""What `glass serve` can set: `ServeSettings` (checked when made, so a bad option fails before serving)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

from glass_ad.inference.engines import ENGINES
from glass_ad.serve.models import ModelSpec, parse_model_spec

__all__ = ["TOKEN_ENV", "ServeSettings"]

TOKEN_ENV = "GLASS_SERVE_TOKEN"  # the API token when --token is not given


@dataclass
class ServeSettings:
    """Everything `glass serve` can set. `runs`: ``RUN_DIR`` or ``NAME=RUN_DIR`` entries."""

    runs: list[str]
    data_dir: Path = Path("serve-data")
    db: Optional[str] = None  # SQLAlchemy URL, postgresql://…, or a SQLite file; default DATA_DIR/inspections.db
    engine: str = "torch"
    device: str = "auto"
    threshold: str = "far"
    threads: Optional[int] = None
    max_batch: int = 8
    max_wait_ms: float = 2.0
    token: Optional[str] = None
    max_upload_bytes: int = 20 * 1024 * 1024
    max_pixels: int = 40_000_000
    max_batch_images: int = 32
    keep_overlays: bool = True  # store overlay/mask PNGs when a request asks for them
    specs: list[ModelSpec] = field(default_factory=list, init=False)

    def __post_init__(self) -> None:
        self.data_dir = Path(self.data_dir)
        if self.engine not in ENGINES:
            raise ValueError(f"engine must be one of {', '.join(ENGINES)}, got {self.engine!r}")
        if self.max_batch < 1 or self.max_batch_images < 1:
            raise ValueError("max_batch and max_batch_images must be >= 1")
        if self.max_wait_ms < 0:
            raise ValueError("max_wait_ms must be >= 0")
        if not self.runs:
            raise ValueError("give at least one RUN_DIR")
        specs = [parse_model_spec(run) for run in self.runs]
        names = [spec.name for spec in specs]
        duplicates = sorted({name for name in names if names.count(name) > 1})
        if duplicates:
            raise ValueError(f"two models are named {', '.join(duplicates)}: name them with NAME=RUN_DIR")
        self.specs = specs
