"""The service's response models and request bodies: they are its OpenAPI schema (``/openapi.json``)."""

from __future__ import annotations

import datetime as dt
from typing import Any, Literal, Optional

from pydantic import BaseModel, Field

__all__ = [
    "BATCH_BODY",
    "ERRORS",
    "UPLOAD_BODY",
    "BatchItem",
    "BatchResult",
    "ColorScale",
    "InspectResult",
    "InspectionPage",
    "InspectionRecord",
    "Review",
    "Timing",
]


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


_BINARY = {"type": "string", "format": "binary"}


def _request_body(field: str, schema: dict[str, Any], *, raw: bool) -> dict[str, Any]:
    """OpenAPI request body: multipart with one required `field`, and with `raw` the bytes as the body too."""
    content: dict[str, Any] = {
        "multipart/form-data": {"schema": {"type": "object", "required": [field], "properties": {field: schema}}}
    }
    if raw:
        content.update({"application/octet-stream": {"schema": dict(_BINARY)}, "image/*": {"schema": dict(_BINARY)}})
    return {"requestBody": {"required": True, "content": content}}


UPLOAD_BODY = _request_body("file", dict(_BINARY), raw=True)
BATCH_BODY = _request_body("files", {"type": "array", "items": dict(_BINARY)}, raw=False)
ERRORS = {
    400: {"description": "not a readable image, or a malformed body"},
    401: {"description": "missing or wrong API token"},
    404: {"description": "no such model"},
    413: {"description": "body or image too large"},
    415: {"description": "unsupported content type"},
    503: {"description": "models still loading, or the inspection log unavailable"},
}
