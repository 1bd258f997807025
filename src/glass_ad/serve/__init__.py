"""`glass serve`: an HTTP inspection service with a web page and an inspection log.

* `app.py` — `create_app(ServeSettings(...))`: the FastAPI app put together from the parts below.
* `settings.py` — `ServeSettings`: everything `glass serve` can set.
* `service.py` — `Service`: models, the log, and one inspection from upload to logged answer.
* `routes.py` — the HTTP routes; `schemas.py` — their response models (the OpenAPI schema).
* `uploads.py` — request bodies (multipart or raw bytes) → uploads.
* `middleware.py` — ASGI middleware: metrics, API token, body size limit.
* `batching.py` — `MicroBatcher`: concurrent requests share network passes; log rows share commits.
* `models.py` — the models a service holds (names, versions, `/v1/models` descriptions).
* `images.py` — uploads → RGB with the library's reader; PNG encoding.
* `store.py` — the inspection log (SQLAlchemy; SQLite by default, PostgreSQL by URL), schema and migration.
* `report.py` — `glass report`: flag, false-alarm and defect rates over time as one HTML file.
* `metrics.py` — Prometheus metrics.
* `static/` — the web page (plain HTML + JavaScript, no external assets).

Needs the ``serve`` extra: ``pip install "glass-ad[serve]"``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

__all__ = ["ServeSettings", "create_app"]

if TYPE_CHECKING:  # pragma: no cover
    from glass_ad.serve.app import create_app
    from glass_ad.serve.settings import ServeSettings


def __getattr__(name: str) -> Any:
    # Lazy, so that `glass --help` works without the serve extra installed.
    if name == "create_app":
        from glass_ad.serve.app import create_app

        return create_app
    if name == "ServeSettings":
        from glass_ad.serve.settings import ServeSettings

        return ServeSettings
    raise AttributeError(name)
