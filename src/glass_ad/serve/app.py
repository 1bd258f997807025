"""`glass serve`: the FastAPI application, put together from its parts (settings, service, middleware, routes).

    from glass_ad.serve import ServeSettings, create_app
    app = create_app(ServeSettings(runs=["runs/mtd"], data_dir="serve-data"))   # run with uvicorn

One process holds one or more trained models (loaded once, in the background: 503 until ready), scores
uploads through a per-model micro-batcher, and writes every inspection to the log (`store.py`) before it
answers: a request is either logged or answered with an error. Routes are listed in docs/serve.md and in
the OpenAPI schema at ``/openapi.json``.
"""

from __future__ import annotations

import logging
import os
from contextlib import asynccontextmanager

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse
from sqlalchemy.exc import SQLAlchemyError
from starlette.concurrency import run_in_threadpool

from glass_ad.serve.middleware import BodyLimitMiddleware, MetricsMiddleware, TokenMiddleware
from glass_ad.serve.routes import add_routes
from glass_ad.serve.service import LOG_RETRY_AFTER, Service, log_unavailable
from glass_ad.serve.settings import TOKEN_ENV, ServeSettings
from glass_ad.serve.store import DatabaseError

log = logging.getLogger(__name__)

__all__ = ["create_app"]


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
    app.add_middleware(BodyLimitMiddleware, max_bytes=settings.max_upload_bytes)
    token = settings.token or os.environ.get(TOKEN_ENV) or None
    if token:
        app.add_middleware(TokenMiddleware, token=token)
    app.add_middleware(MetricsMiddleware, metrics=service.metrics)
    add_routes(app, service)
    return app
