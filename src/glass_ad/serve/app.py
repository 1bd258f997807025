"""`glass serve`: the FastAPI application.

    from glass_ad.serve import ServeSettings, create_app
    app = create_app(ServeSettings(runs=["runs/mtd"], data_dir="serve-data"))   # run with uvicorn

One process holds one or more trained models (loaded once, in the background: 503 until ready), scores
uploads through a per-model micro-batcher, and writes every inspection to the log (`store.py`) before it
answers: a request is either logged or answered with an error. Routes are listed in docs/serve.md and in
the OpenAPI schema at ``/openapi.json``.
"""

from __future__ import annotations

import asyncio
import base64
import datetime as dt
import json
import logging
import os
import secrets
import threading
import time
import uuid
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Optional

import numpy as np
from fastapi import FastAPI, HTTPException, Query, Request
from fastapi import Path as PathParam
from fastapi.responses import FileResponse, HTMLResponse, JSONResponse, RedirectResponse, Response
from fastapi.staticfiles import StaticFiles
from pydantic import BaseModel, Field
from sqlalchemy.exc import SQLAlchemyError
from starlette.concurrency import run_in_threadpool
from starlette.routing import Match

from glass_ad.serve.batching import BatcherClosed, MicroBatcher
from glass_ad.serve.images import BadImage, ImageTooLarge, Upload, clean_scratch, decode_upload, png_bytes
from glass_ad.serve.metrics import CONTENT_TYPE_LATEST, ServiceMetrics
from glass_ad.serve.models import ModelSpec, ServedModel, load_served_model, parse_model_spec
from glass_ad.serve.store import DatabaseError, InspectionLog, database_url, redact_url

log = logging.getLogger(__name__)

__all__ = ["ServeSettings", "create_app", "TOKEN_ENV"]

TOKEN_ENV = "GLASS_SERVE_TOKEN"
TOKEN_COOKIE = "glass_token"
STATIC_DIR = Path(__file__).with_name("static")
PUBLIC_PATHS = ("/healthz", "/readyz")
IMAGE_CONTENT_TYPES = ("application/octet-stream",)  # plus any image/*
ENGINES = ("torch", "onnx", "openvino")
LOG_RETRY_AFTER = "5"  # seconds a client should wait after a 503 for an unavailable log


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


# ---------------------------------------------------------------------------------------------------
# Response models (they are the OpenAPI schema)


class ColorScale(BaseModel):
    min: float = Field(description="anomaly-map value drawn at the bottom of the colour bar (a typical normal pixel)")
    max: float
    pixel_threshold: float = Field(
        description="the normal maps' level (middle of the bar); the predicted region is where an image's map rises at "
        "least region_height of the way from it to the image's own peak"
    )


class Timing(BaseModel):
    decode_ms: float
    inference_ms: float = Field(description="queueing for a batch + the network pass")
    render_ms: float
    log_ms: float
    total_ms: float


class InspectionRecord(BaseModel):
    id: int
    created_at: dt.datetime
    model: str
    model_version: str
    engine: str
    filename: Optional[str] = None
    image_sha256: str
    image_bytes: int
    width: int
    height: int
    score: float = Field(description="raw image score")
    normalized_score: float = Field(description="in (0, 1); the false-alarm threshold maps to 0.5")
    decision: Literal["normal", "anomalous"]
    threshold: float = Field(description="image threshold the decision used (raw score)")
    threshold_kind: str
    region_fraction: float
    latency_ms: float
    overlay_url: Optional[str] = None
    mask_url: Optional[str] = None
    review: Optional[Literal["defect", "good"]] = None
    reviewed_at: Optional[dt.datetime] = None


class InspectResult(InspectionRecord):
    precision: Optional[str] = Field(None, description="of the engine's model: fp32, or an OpenVINO IR's fp16 / int8")
    color_scale: ColorScale
    timing: Timing
    overlay_png_base64: Optional[str] = None
    mask_png_base64: Optional[str] = None


class BatchItem(BaseModel):
    index: int
    filename: Optional[str] = None
    result: Optional[InspectResult] = None
    error: Optional[str] = None
    status: int = Field(description="the status this image alone would have had")


class BatchResult(BaseModel):
    model: str
    results: list[BatchItem]


class InspectionPage(BaseModel):
    items: list[InspectionRecord]
    next_before_id: Optional[int] = Field(description="pass as before_id for the next (older) page")
    total: Optional[int] = None


class Review(BaseModel):
    label: Optional[Literal["defect", "good"]] = Field(description="operator's verdict; null clears it")


_UPLOAD_BODY = {
    "requestBody": {
        "required": True,
        "content": {
            "multipart/form-data": {
                "schema": {
                    "type": "object",
                    "required": ["file"],
                    "properties": {"file": {"type": "string", "format": "binary"}},
                }
            },
            "application/octet-stream": {"schema": {"type": "string", "format": "binary"}},
            "image/*": {"schema": {"type": "string", "format": "binary"}},
        },
    }
}
_BATCH_BODY = {
    "requestBody": {
        "required": True,
        "content": {
            "multipart/form-data": {
                "schema": {
                    "type": "object",
                    "required": ["files"],
                    "properties": {"files": {"type": "array", "items": {"type": "string", "format": "binary"}}},
                }
            }
        },
    }
}
_ERRORS = {
    400: {"description": "not a readable image, or a malformed body"},
    401: {"description": "missing or wrong API token"},
    404: {"description": "no such model"},
    413: {"description": "body or image too large"},
    415: {"description": "unsupported content type"},
    503: {"description": "models still loading, or the inspection log unavailable"},
}


# ---------------------------------------------------------------------------------------------------
# The service state


class Service:
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
            tmp = folder / f".{stem}-{suffix}.tmp"
            tmp.write_bytes(data)
            os.replace(tmp, target)
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


# ---------------------------------------------------------------------------------------------------
# ASGI middleware: metrics (outermost), API token, body size limit


async def _send_json(send, status: int, body: dict[str, Any], headers: list[tuple[bytes, bytes]] = ()) -> None:
    payload = json.dumps(body).encode()
    await send({
        "type": "http.response.start",
        "status": status,
        "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(payload)).encode()), *headers],
    })  # fmt: skip
    await send({"type": "http.response.body", "body": payload})


class _MetricsMiddleware:
    def __init__(self, app, metrics: ServiceMetrics) -> None:
        self.app, self.metrics = app, metrics

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        start, status = time.perf_counter(), [500]

        async def capture(message) -> None:
            if message["type"] == "http.response.start":
                status[0] = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, capture)
        finally:
            # The route template, not the raw path: labels stay few whatever clients send. Answers sent
            # before routing (401 from the token check, 413 from Content-Length) are matched here.
            name = getattr(scope.get("route"), "path", None) or _route_template(scope)
            self.metrics.requests.labels(scope["method"], name, str(status[0])).inc()
            self.metrics.latency.labels(scope["method"], name).observe(time.perf_counter() - start)


def _route_template(scope) -> str:
    app = scope.get("app")
    for route in getattr(getattr(app, "router", None), "routes", ()):
        match, _ = route.matches(scope)
        if match is not Match.NONE:
            return getattr(route, "path", None) or "unmatched"
    return "unmatched"


class _TokenMiddleware:
    """Every route but the health checks needs ``Authorization: Bearer TOKEN`` or the page's cookie;
    ``GET /?token=TOKEN`` sets that cookie (HttpOnly, SameSite=Strict) for the browser."""

    def __init__(self, app, token: str) -> None:
        self.app, self.token = app, token

    def _ok(self, value: str | None) -> bool:
        return value is not None and secrets.compare_digest(value.encode(), self.token.encode())

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http" or scope["path"] in PUBLIC_PATHS:
            return await self.app(scope, receive, send)
        request = Request(scope)
        header = request.headers.get("authorization", "")
        bearer = header[7:].strip() if header.lower().startswith("bearer ") else None
        if self._ok(bearer) or self._ok(request.cookies.get(TOKEN_COOKIE)):
            return await self.app(scope, receive, send)
        if scope["path"] == "/" and self._ok(request.query_params.get("token")):
            response = RedirectResponse("/", status_code=303)
            response.set_cookie(TOKEN_COOKIE, self.token, httponly=True, samesite="strict")
            return await response(scope, receive, send)
        await _send_json(
            send, 401, {"detail": "API token required: send 'Authorization: Bearer TOKEN' (browser: open /?token=TOKEN)"},
            [(b"www-authenticate", b"Bearer")],
        )  # fmt: skip


class _BodyTooLarge(Exception):
    pass


class _BodyLimitMiddleware:
    """413 for bodies over the limit: at once from Content-Length, or while a chunked body arrives."""

    def __init__(self, app, max_bytes: int) -> None:
        self.app, self.max_bytes = app, max_bytes

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        message = {"detail": f"request body larger than the limit of {self.max_bytes} bytes"}
        length = dict(scope["headers"]).get(b"content-length")
        if length is not None:
            try:
                too_large = int(length) > self.max_bytes
            except ValueError:
                return await _send_json(send, 400, {"detail": "invalid Content-Length"})
            if too_large:
                return await _send_json(send, 413, message, [(b"connection", b"close")])
        received, started = [0], [False]

        async def counting_receive():
            event = await receive()
            if event["type"] == "http.request":
                received[0] += len(event.get("body", b""))
                if received[0] > self.max_bytes:
                    raise _BodyTooLarge()
            return event

        async def tracking_send(event) -> None:
            if event["type"] == "http.response.start":
                started[0] = True
            await send(event)

        try:
            await self.app(scope, counting_receive, tracking_send)
        except _BodyTooLarge:
            if not started[0]:
                await _send_json(send, 413, message, [(b"connection", b"close")])


# ---------------------------------------------------------------------------------------------------
# Request bodies


class _TooManyFiles(ValueError):
    pass


def _parse_multipart(body: bytes, content_type: str, scratch: Path, max_files: int) -> list[Upload]:
    from python_multipart.multipart import create_form_parser

    files: list[Upload] = []

    def on_file(part) -> None:
        if len(files) >= max_files:
            raise _TooManyFiles(f"more than {max_files} images in one request")
        handle = part.file_object
        handle.seek(0)
        raw_name = part.file_name
        name = raw_name.decode("utf-8", "replace") if isinstance(raw_name, bytes) else raw_name
        field_name = part.field_name.decode("utf-8", "replace") if isinstance(part.field_name, bytes) else part.field_name
        files.append(Upload(handle.read(), name or None, field_name))
        part.close()

    # Whole parts stay in memory (the body is already capped); nothing is spooled outside DATA/.
    config = {"MAX_MEMORY_FILE_SIZE": len(body) + 1, "UPLOAD_DIR": str(scratch)}
    parser = create_form_parser({"Content-Type": content_type.encode("latin-1")}, lambda _field: None, on_file, config)
    parser.write(body)
    parser.finalize()
    return files


async def _uploads(request: Request, service: Service, *, field_name: str, max_files: int, filename: str | None) -> list[Upload]:
    content_type = request.headers.get("content-type", "")
    kind = content_type.split(";", 1)[0].strip().lower()
    body = await request.body()
    if kind == "multipart/form-data":
        try:
            files = await run_in_threadpool(_parse_multipart, body, content_type, service.scratch, max_files)
        except _TooManyFiles as error:
            raise HTTPException(400, str(error)) from None
        except Exception as error:  # noqa: BLE001 - any parser complaint is the client's malformed body
            raise HTTPException(400, f"malformed multipart body: {error}") from None
        named = [f for f in files if f.part == field_name]
        if not named:
            raise HTTPException(400, f"the multipart body needs a file in the field '{field_name}'")
        return named
    if kind.startswith("image/") or kind in IMAGE_CONTENT_TYPES:
        if max_files > 1:
            raise HTTPException(415, "inspect-batch takes multipart/form-data with one 'files' part per image")
        return [Upload(body, filename)]
    raise HTTPException(
        415, f"unsupported content type {kind or '(none)'!r}: send multipart/form-data (field '{field_name}'), "
        "image/* or application/octet-stream",
    )  # fmt: skip


def _parse_time(value: str | None, name: str) -> dt.datetime | None:
    if value is None or value == "":
        return None
    try:
        when = dt.datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        raise HTTPException(422, f"{name} must be an ISO 8601 time (e.g. 2025-01-31T08:00:00Z), got {value!r}") from None
    return when if when.tzinfo is not None else when.replace(tzinfo=dt.timezone.utc)


def colorbar_png(height: int = 256, width: int = 16) -> bytes:
    """The heatmap colour scale, top = maximum, as a PNG (same colormap as the overlays)."""
    from glass_ad.evaluation.visualize import colorize

    ramp = np.repeat(np.linspace(1.0, 0.0, height, dtype=np.float32)[:, None], width, axis=1)
    return png_bytes(colorize(ramp))


# ---------------------------------------------------------------------------------------------------
# The app


def create_app(settings: ServeSettings) -> FastAPI:
    """The FastAPI app. The inspection log is opened (and its schema created or migrated) here, so that a
    bad `--db` fails before serving (`DatabaseError`); models load in the background once it starts."""
    service = Service(settings)
    service.open_log()

    @asynccontextmanager
    async def lifespan(_app: FastAPI):
        await run_in_threadpool(service.start)
        try:
            yield
        finally:
            await run_in_threadpool(service.stop)

    from glass_ad import __version__ as package_version

    app = FastAPI(
        title="glass-ad inspection service",
        version=package_version,
        description="GLASS anomaly detection: inspect images, browse the inspection log.",
        lifespan=lifespan,
        # FastAPI's interactive docs pages load their scripts from a CDN; the service stays offline-clean
        # and publishes the schema itself at /openapi.json.
        docs_url=None,
        redoc_url=None,
    )
    app.state.service = service

    async def log_down(_request: Request, error: Exception) -> JSONResponse:
        # Reads and reviews of the log while its database is down: 503 with the reason, not a 500.
        log.error("inspection log unavailable: %s", error)
        return JSONResponse({"detail": log_unavailable(error)}, status_code=503, headers={"Retry-After": LOG_RETRY_AFTER})

    app.add_exception_handler(SQLAlchemyError, log_down)
    app.add_exception_handler(DatabaseError, log_down)
    app.add_middleware(_BodyLimitMiddleware, max_bytes=settings.max_upload_bytes)
    token = settings.token or os.environ.get(TOKEN_ENV) or None
    if token:
        app.add_middleware(_TokenMiddleware, token=token)
    app.add_middleware(_MetricsMiddleware, metrics=service.metrics)

    @app.get("/healthz", tags=["health"], summary="The process is up (no token needed)")
    def healthz() -> dict[str, str]:
        return {"status": "ok"}

    @app.get(
        "/readyz", tags=["health"], summary="Every model is loaded (503 while loading or after a failure)",
        responses={503: {"description": "loading, or a model failed to load"}},
    )  # fmt: skip
    def readyz() -> JSONResponse:
        status = service.status()
        problem = service.log_problem()
        status["log"] = "ok" if problem is None else problem
        if problem is not None and status["status"] == "ready":
            status["status"] = "log unavailable"
        ready = service.ready and problem is None
        service.metrics.ready.set(1 if ready else 0)
        return JSONResponse(status, status_code=200 if ready else 503, headers=None if ready else {"Retry-After": LOG_RETRY_AFTER})

    @app.get("/metrics", tags=["health"], summary="Prometheus metrics", response_class=Response)
    def metrics() -> Response:
        return Response(service.metrics.render(), media_type=CONTENT_TYPE_LATEST)

    @app.get("/v1/models", tags=["models"], summary="Loaded models: backbone, image size, thresholds, training data")
    def list_models() -> dict[str, Any]:
        return {
            "models": [service.models[name].info for name in sorted(service.models)],
            **service.status(),
            "log": {"backend": service.log.backend if service.log else None},
        }

    @app.get("/v1/models/{name}", tags=["models"], summary="One model", responses={404: _ERRORS[404], 503: _ERRORS[503]})
    def get_model(name: str) -> dict[str, Any]:
        return service.model(name).info

    @app.post(
        "/v1/models/{name}/inspect",
        tags=["inspect"],
        summary="Inspect one image (multipart field 'file', or the raw bytes as image/* or application/octet-stream)",
        response_model=InspectResult,
        response_model_exclude_none=True,
        openapi_extra=_UPLOAD_BODY,
        responses=_ERRORS,
    )
    async def inspect(
        request: Request,
        name: str = PathParam(description="model name (see /v1/models)"),
        overlay: bool = Query(False, description="render the heatmap overlay and region mask, store them, return links"),
        inline: bool = Query(False, description="also return the overlay and mask PNGs base64-encoded in the answer"),
        filename: Optional[str] = Query(None, max_length=255, description="name to log for a raw-bytes upload"),
    ) -> dict[str, Any]:
        model = service.model(name)
        upload = (await _uploads(request, service, field_name="file", max_files=1, filename=filename))[0]
        return await service.inspect(model, upload, overlay=overlay, inline=inline)

    @app.post(
        "/v1/models/{name}/inspect-batch",
        tags=["inspect"],
        summary="Inspect several images (multipart, one 'files' part each); per-image results or errors",
        response_model=BatchResult,
        response_model_exclude_none=True,
        openapi_extra=_BATCH_BODY,
        responses=_ERRORS,
    )
    async def inspect_batch(
        request: Request,
        name: str,
        overlay: bool = Query(False),
        inline: bool = Query(False),
    ) -> dict[str, Any]:
        model = service.model(name)
        uploads = await _uploads(request, service, field_name="files", max_files=settings.max_batch_images, filename=None)

        async def one(index: int, upload: Upload) -> dict[str, Any]:
            try:
                result = await service.inspect(model, upload, overlay=overlay, inline=inline)
            except HTTPException as error:
                if error.status_code == 503:
                    raise
                return {"index": index, "filename": name_of(upload), "error": error.detail, "status": error.status_code}
            return {"index": index, "filename": name_of(upload), "result": result, "status": 200}

        # Concurrently, so that the images of one request share network passes with each other.
        results = await asyncio.gather(*(one(i, u) for i, u in enumerate(uploads)))
        return {"model": name, "results": results}

    @app.get("/v1/inspections", tags=["log"], summary="Page through the inspection log, newest first", response_model=InspectionPage)
    def list_inspections(
        since: Optional[str] = Query(None, description="ISO 8601 time, inclusive (UTC when no zone is given)"),
        until: Optional[str] = Query(None, description="ISO 8601 time, exclusive"),
        decision: Optional[Literal["normal", "anomalous"]] = None,
        model: Optional[str] = Query(None, max_length=64),
        review: Optional[Literal["defect", "good", "none"]] = None,
        before_id: Optional[int] = Query(None, ge=1, description="next_before_id of the previous page"),
        limit: int = Query(50, ge=1, le=500),
        total: bool = Query(False, description="also count all rows (slower on big logs)"),
    ) -> dict[str, Any]:
        page = service.log.query(
            since=_parse_time(since, "since"), until=_parse_time(until, "until"), decision=decision, model=model,
            review=review, before_id=before_id, limit=limit,
        )  # fmt: skip
        return {
            "items": [record(row) for row in page.rows],
            "next_before_id": page.next_before,
            "total": service.log.count() if total else None,
        }

    def _row(inspection_id: int) -> dict[str, Any]:
        row = service.log.get(inspection_id)
        if row is None:
            raise HTTPException(404, f"no inspection {inspection_id}")
        return row

    @app.get("/v1/inspections/{inspection_id}", tags=["log"], response_model=InspectionRecord, responses={404: {"description": "no such inspection"}})
    def get_inspection(inspection_id: int) -> dict[str, Any]:
        return record(_row(inspection_id))

    @app.post("/v1/inspections/{inspection_id}/review", tags=["log"], summary="Record the operator's verdict", response_model=InspectionRecord)
    def review_inspection(inspection_id: int, body: Review) -> dict[str, Any]:
        if not service.log.set_review(inspection_id, body.label):
            raise HTTPException(404, f"no inspection {inspection_id}")
        return record(_row(inspection_id))

    def _picture(inspection_id: int, column: str) -> FileResponse:
        relative = _row(inspection_id).get(column)
        if not relative:
            raise HTTPException(404, f"inspection {inspection_id} has no stored picture (inspect with overlay=true)")
        # The path comes from the log (written by this service), and must stay inside DATA/overlays.
        path = (service.data_dir / relative).resolve()
        if not path.is_relative_to(service.pictures) or not path.is_file():
            raise HTTPException(404, f"the picture of inspection {inspection_id} is gone")
        return FileResponse(path, media_type="image/png")

    png = {"content": {"image/png": {}}, "description": "PNG"}

    @app.get("/v1/inspections/{inspection_id}/overlay.png", tags=["log"], response_class=FileResponse, responses={200: png})
    def get_overlay(inspection_id: int) -> FileResponse:
        return _picture(inspection_id, "overlay_path")

    @app.get("/v1/inspections/{inspection_id}/mask.png", tags=["log"], response_class=FileResponse, responses={200: png})
    def get_mask(inspection_id: int) -> FileResponse:
        return _picture(inspection_id, "mask_path")

    bar = colorbar_png()

    @app.get("/v1/colorbar.png", tags=["models"], summary="The overlay colour scale (top = max)", response_class=Response, responses={200: png})
    def get_colorbar() -> Response:
        return Response(bar, media_type="image/png", headers={"Cache-Control": "max-age=3600"})

    @app.get("/report", tags=["log"], summary="False-alarm and defect rates over time (HTML)", response_class=HTMLResponse)
    def report_page(bucket: Literal["auto", "hour", "day", "week"] = "auto") -> HTMLResponse:
        from glass_ad.serve.report import render_report

        return HTMLResponse(render_report(service.log, bucket=bucket, title="glass-ad inspection report"))

    @app.get("/", include_in_schema=False)
    def index() -> FileResponse:
        return FileResponse(STATIC_DIR / "index.html", media_type="text/html")

    app.mount("/static", StaticFiles(directory=STATIC_DIR), name="static")
    return app
