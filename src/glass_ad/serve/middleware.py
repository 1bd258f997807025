"""The service's ASGI middleware: metrics (outermost), API token, body size limit.

Plain ASGI rather than Starlette's BaseHTTPMiddleware, so that a 401 or 413 is answered before a body is
read, and a chunked body is cut off as soon as it passes the limit.
"""

from __future__ import annotations

import json
import secrets
import time
from typing import Any

from fastapi import Request
from fastapi.responses import RedirectResponse
from starlette.routing import Match

from glass_ad.serve.metrics import ServiceMetrics

__all__ = ["BodyLimitMiddleware", "MetricsMiddleware", "PUBLIC_PATHS", "TOKEN_COOKIE", "TokenMiddleware"]

TOKEN_COOKIE = "glass_token"
PUBLIC_PATHS = ("/healthz", "/readyz")


async def _send_json(send, status: int, body: dict[str, Any], headers: list[tuple[bytes, bytes]] = ()) -> None:
    payload = json.dumps(body).encode()
    await send({
        "type": "http.response.start",
        "status": status,
        "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(payload)).encode()), *headers],
    })  # fmt: skip
    await send({"type": "http.response.body", "body": payload})


class MetricsMiddleware:
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


class TokenMiddleware:
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


class BodyLimitMiddleware:
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
