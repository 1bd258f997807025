"""The service's routes: health, models, inspection (one image or a batch), the inspection log and its
pictures, the report and the web page — each a thin call into `Service`."""

from __future__ import annotations

import asyncio
import datetime as dt
from pathlib import Path
from typing import Any, Literal, Optional

import numpy as np
from fastapi import FastAPI, HTTPException, Query, Request
from fastapi import Path as PathParam
from fastapi.responses import FileResponse, HTMLResponse, JSONResponse, Response
from fastapi.staticfiles import StaticFiles

from glass_ad.serve.images import Upload, png_bytes
from glass_ad.serve.metrics import CONTENT_TYPE_LATEST
from glass_ad.serve.schemas import (
    BATCH_BODY,
    ERRORS,
    UPLOAD_BODY,
    BatchResult,
    InspectionPage,
    InspectionRecord,
    InspectResult,
    Review,
)
from glass_ad.serve.service import LOG_RETRY_AFTER, Service, name_of, record
from glass_ad.serve.uploads import read_uploads

__all__ = ["STATIC_DIR", "add_routes", "colorbar_png"]

STATIC_DIR = Path(__file__).with_name("static")


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
    from glass_ad.evaluation.visualize import colourize

    ramp = np.repeat(np.linspace(1.0, 0.0, height, dtype=np.float32)[:, None], width, axis=1)
    return png_bytes(colourize(ramp))


def add_routes(app: FastAPI, service: Service) -> None:
    """Every route of the service, on ``app``, served from ``service``."""
    settings = service.settings

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

    @app.get("/v1/models/{name}", tags=["models"], summary="One model", responses={404: ERRORS[404], 503: ERRORS[503]})
    def get_model(name: str) -> dict[str, Any]:
        return service.model(name).info

    @app.post(
        "/v1/models/{name}/inspect",
        tags=["inspect"],
        summary="Inspect one image (multipart field 'file', or the raw bytes as image/* or application/octet-stream)",
        response_model=InspectResult,
        response_model_exclude_none=True,
        openapi_extra=UPLOAD_BODY,
        responses=ERRORS,
    )
    async def inspect(
        request: Request,
        name: str = PathParam(description="model name (see /v1/models)"),
        overlay: bool = Query(False, description="render the heatmap overlay and region mask, store them, return links"),
        inline: bool = Query(False, description="also return the overlay and mask PNGs base64-encoded in the answer"),
        filename: Optional[str] = Query(None, max_length=255, description="name to log for a raw-bytes upload"),
    ) -> dict[str, Any]:
        model = service.model(name)
        upload = (await read_uploads(request, service.scratch, field_name="file", max_files=1, filename=filename))[0]
        return await service.inspect(model, upload, overlay=overlay, inline=inline)

    @app.post(
        "/v1/models/{name}/inspect-batch",
        tags=["inspect"],
        summary="Inspect several images (multipart, one 'files' part each); per-image results or errors",
        response_model=BatchResult,
        response_model_exclude_none=True,
        openapi_extra=BATCH_BODY,
        responses=ERRORS,
    )
    async def inspect_batch(
        request: Request,
        name: str,
        overlay: bool = Query(False),
        inline: bool = Query(False),
    ) -> dict[str, Any]:
        model = service.model(name)
        uploads = await read_uploads(request, service.scratch, field_name="files", max_files=settings.max_batch_images, filename=None)

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
