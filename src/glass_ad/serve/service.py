"""The service state behind the routes: `Service` loads the models (in the background), opens the
inspection log, and runs one inspection — decode, score (micro-batched), render, log — before it answers."""

from __future__ import annotations

import base64
import datetime as dt
import logging
import threading
import time
import uuid
from typing import Any

import numpy as np
from fastapi import HTTPException
from sqlalchemy.exc import SQLAlchemyError
from starlette.concurrency import run_in_threadpool

from glass_ad.safety import atomic_path
from glass_ad.serve.batching import BatcherClosed, MicroBatcher
from glass_ad.serve.images import BadImage, ImageTooLarge, Upload, clean_scratch, decode_upload, png_bytes
from glass_ad.serve.metrics import ServiceMetrics
from glass_ad.serve.models import ServedModel, load_served_model
from glass_ad.serve.settings import ServeSettings
from glass_ad.serve.store import DatabaseError, InspectionLog, database_url, redact_url

log = logging.getLogger(__name__)

__all__ = ["LOG_RETRY_AFTER", "Service", "log_unavailable", "name_of", "record"]

LOG_RETRY_AFTER = "5"  # seconds a client should wait after a 503 for an unavailable log


class Service:
    """What one `glass serve` process holds (models, inspection log, metrics) and does (one inspection)."""

    def __init__(self, settings: ServeSettings) -> None:
        self.settings = settings
        self.data_dir = settings.data_dir.resolve()
        self.scratch = self.data_dir / "incoming"
        self.pictures = self.data_dir / "overlays"
        self.metrics = ServiceMetrics()
        self.models: dict[str, ServedModel] = {}
        self.errors: dict[str, str] = {}
        self.ready = False
        self.log: InspectionLog | None = None
        self.writer: MicroBatcher | None = None
        self.db_url = database_url(settings.db, self.data_dir)
        self._loader: threading.Thread | None = None
        self._stopping = threading.Event()

    def open_log(self) -> None:
        """Connect to the log and create or migrate its schema (`DatabaseError` with the reason)."""
        if self.log is None:
            self.data_dir.mkdir(parents=True, exist_ok=True)
            self.log = InspectionLog.open(self.db_url)
            log.info("inspection log: %s", redact_url(self.db_url))

    def start(self) -> None:
        self.open_log()
        # A killed process leaves its uploads' scratch files behind; no request is running yet.
        removed = clean_scratch(self.scratch)
        if removed:
            log.info("removed %d stale upload scratch file(s) from %s", removed, self.scratch)

        def commit(rows: list[dict[str, Any]]) -> list[int]:
            self.metrics.log_rows.observe(len(rows))
            return self.log.write_many(rows)

        self.writer = MicroBatcher(commit, max_batch=256, max_wait_s=0.0, name="inspection-log")
        self._loader = threading.Thread(target=self._load_models, name="model-loader", daemon=True)
        self._loader.start()

    def _load_models(self) -> None:
        s = self.settings
        for spec in s.specs:
            if self._stopping.is_set():
                return
            try:
                model = load_served_model(
                    spec, engine=s.engine, device=s.device, threshold=s.threshold, threads=s.threads,
                    max_batch=s.max_batch, max_wait_s=s.max_wait_ms / 1000.0, on_batch=self.metrics.observe_batch,
                )  # fmt: skip
            except Exception as error:  # noqa: BLE001 - reported by /readyz and on every request
                log.error("model %s (%s) failed to load: %s", spec.name, spec.run, error)
                self.errors[spec.name] = f"{type(error).__name__}: {error}"
                continue
            self.models[spec.name] = model
            self.metrics.models_loaded.set(len(self.models))
            log.info("model %s loaded (version %s)", spec.name, model.version)
        self.ready = not self.errors and len(self.models) == len(s.specs)
        self.metrics.ready.set(1 if self.ready else 0)

    def stop(self) -> None:
        self._stopping.set()
        if self._loader is not None:
            self._loader.join(timeout=60)
        for model in self.models.values():
            model.close()
        if self.writer is not None:
            self.writer.close()
        if self.log is not None:
            self.log.close()
            self.log = None

    def log_problem(self) -> str | None:
        """None when the inspection log answers a trivial query, else the reason (for /readyz)."""
        if self.log is None:
            return "the inspection log is not open"
        try:
            self.log.ping()
        except (SQLAlchemyError, DatabaseError) as error:
            log.error("inspection log unavailable: %s", error)
            return log_unavailable(error)
        return None

    def status(self) -> dict[str, Any]:
        loading = [spec.name for spec in self.settings.specs if spec.name not in self.models and spec.name not in self.errors]
        state = "ready" if self.ready else ("loading" if loading else "failed")
        return {"status": state, "loaded": sorted(self.models), "loading": loading, "errors": self.errors}

    def model(self, name: str) -> ServedModel:
        if name in self.models:
            return self.models[name]
        known = {spec.name for spec in self.settings.specs}
        if name not in known:
            raise HTTPException(404, f"no model named {name!r} (loaded: {', '.join(sorted(known))})")
        if name in self.errors:
            raise HTTPException(503, f"model {name!r} failed to load: {self.errors[name]}")
        raise HTTPException(503, f"model {name!r} is still loading", headers={"Retry-After": "2"})

    # ------------------------------------------------------------------------------------- inspection

    def _render(
        self, model: ServedModel, rgb: np.ndarray, score: float, normalized: float, small: np.ndarray, pictures: bool
    ) -> tuple[dict[str, Any], bytes | None, bytes | None]:
        from glass_ad.inference.predict import Prediction

        detector = model.detector
        full = detector.preprocessor.map_to_original(small, rgb.shape[:2])
        region = detector.region_of(full)  # the same region rule as glass predict and the runtime
        prediction = Prediction(
            score=score, normalized=normalized, is_anomalous=bool(score >= detector.image_threshold),
            anomaly_map=full, region=region, threshold=detector.image_threshold,
        )  # fmt: skip
        summary = prediction.to_dict()
        overlay = mask = None
        if pictures:
            # No title bar: the page and the JSON carry the verdict; the bar would crowd small images.
            overlay = png_bytes(detector.overlay(prediction, image=rgb, title=""))
            mask = png_bytes(region.astype(np.uint8) * 255)
        return summary, overlay, mask

    def _store_pictures(self, overlay: bytes, mask: bytes) -> tuple[str, str]:
        # Names come from uuid4, never from the request; written atomically inside DATA/overlays/.
        day = dt.datetime.now(dt.timezone.utc).strftime("%Y%m%d")
        folder = self.pictures / day
        folder.mkdir(parents=True, exist_ok=True)
        stem = uuid.uuid4().hex
        paths = []
        for suffix, data in (("overlay", overlay), ("mask", mask)):
            target = folder / f"{stem}-{suffix}.png"
            with atomic_path(target) as tmp:  # no fsync: a lost picture is not worth a disk flush per request
                tmp.write_bytes(data)
            paths.append(target.relative_to(self.data_dir).as_posix())
        return paths[0], paths[1]

    async def inspect(self, model: ServedModel, upload: Upload, *, overlay: bool, inline: bool) -> dict[str, Any]:
        """Decode, score (batched), render, log; raises HTTPException with the reason on failure."""
        start = time.perf_counter()
        try:
            rgb = await run_in_threadpool(
                decode_upload, upload, self.scratch, max_pixels=self.settings.max_pixels,
                bit_depth=getattr(model.detector, "bit_depth", None),
            )  # fmt: skip
            prepared = await run_in_threadpool(model.detector.prepare, rgb)
        except ImageTooLarge as error:
            self.metrics.rejected.labels(model.name, "too_large").inc()
            raise HTTPException(413, str(error)) from None
        except BadImage as error:
            self.metrics.rejected.labels(model.name, "unreadable").inc()
            raise HTTPException(400, str(error)) from None
        decoded = time.perf_counter()
        try:
            score, normalized, small = await model.batcher.run(prepared)
        except BatcherClosed:
            raise HTTPException(503, "the service is shutting down") from None
        scored = time.perf_counter()
        pictures = overlay or inline
        summary, overlay_png, mask_png = await run_in_threadpool(
            self._render, model, rgb, score, normalized, small, pictures
        )
        overlay_path = mask_path = None
        if pictures and overlay and self.settings.keep_overlays:
            overlay_path, mask_path = await run_in_threadpool(self._store_pictures, overlay_png, mask_png)
        rendered = time.perf_counter()
        row = {
            "created_at": dt.datetime.now(dt.timezone.utc),
            "model_name": model.name,
            "model_version": model.version,
            "engine": model.detector.engine_name,
            "filename": name_of(upload),
            "image_sha256": upload.sha256,
            "image_bytes": len(upload.data),
            "width": summary["width"],
            "height": summary["height"],
            "score": summary["score"],
            "normalized_score": summary["normalized_score"],
            "decision": summary["decision"],
            "threshold": summary["threshold"],
            "threshold_kind": model.detector.threshold_kind,
            "region_fraction": summary["region_fraction"],
            "overlay_path": overlay_path,
            "mask_path": mask_path,
            "latency_ms": (rendered - start) * 1000.0,
        }
        try:
            row["id"] = await self.writer.run(row)
        except BatcherClosed:
            raise HTTPException(503, "the service is shutting down; the inspection was not logged") from None
        except Exception as error:  # noqa: BLE001 - the answer must not claim a logged inspection
            log.error("inspection log write failed: %s", error)
            raise HTTPException(
                503, f"{log_unavailable(error)}; not inspected", headers={"Retry-After": LOG_RETRY_AFTER}
            ) from None
        done = time.perf_counter()
        self.metrics.decisions.labels(model.name, summary["decision"]).inc()
        result = record(row)
        result["precision"] = model.detector.engine_precision
        result["color_scale"] = model.info["color_scale"]
        result["timing"] = {
            "decode_ms": (decoded - start) * 1000.0,
            "inference_ms": (scored - decoded) * 1000.0,
            "render_ms": (rendered - scored) * 1000.0,
            "log_ms": (done - rendered) * 1000.0,
            "total_ms": (done - start) * 1000.0,
        }
        if inline and overlay_png is not None:
            result["overlay_png_base64"] = base64.b64encode(overlay_png).decode("ascii")
            result["mask_png_base64"] = base64.b64encode(mask_png).decode("ascii")
        return result


def name_of(upload: Upload) -> str | None:
    """The client's file name as logged and echoed: folders and control characters stripped."""
    return upload.label if upload.filename else None


def log_unavailable(error: BaseException) -> str:
    # The exception's class only: driver messages can name hosts, users and SQL.
    return f"the inspection log is unavailable ({type(error).__name__})"


def record(row: dict[str, Any]) -> dict[str, Any]:
    """A log row as the API shows it (file paths become links)."""
    out = {
        "id": row["id"],
        "created_at": row["created_at"],
        "model": row["model_name"],
        **{k: row[k] for k in (
            "model_version", "engine", "filename", "image_sha256", "image_bytes", "width", "height", "score",
            "normalized_score", "decision", "threshold", "threshold_kind", "region_fraction", "latency_ms",
        )},  # fmt: skip
        "review": row.get("review"),
        "reviewed_at": row.get("reviewed_at"),
        "overlay_url": f"/v1/inspections/{row['id']}/overlay.png" if row.get("overlay_path") else None,
        "mask_url": f"/v1/inspections/{row['id']}/mask.png" if row.get("mask_path") else None,
    }
    return out
