"""`glass serve`: an HTTP inspection service with a web page and an inspection log.

* `app.py` — the FastAPI app (`create_app(ServeSettings(...))`), routes, token and size-limit middleware.
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
    from glass_ad.serve.app import ServeSettings, create_app


def __getattr__(name: str) -> Any:
    # Lazy, so that `glass --help` works without the serve extra installed.
    if name in __all__:
        from glass_ad.serve import app

        return getattr(app, name)
    raise AttributeError(name)
