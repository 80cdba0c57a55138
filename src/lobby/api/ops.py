"""What operators ask of the API (SPEC §14.1): /metrics, /v1/health, and request metrics.

- `GET /metrics`: lobby.metrics' exposition (the text format; OpenMetrics when the
  scraper asks for it). Read-protected like every GET.
- `GET /v1/health`: 200 `{"status": "ok", "brokers": {...}}` while every broker link
  is up (and echoes our own announcements), else 503 `{"status": "degraded", ...}`.
  No token, and nothing about other nodes: safe for a load balancer.
- `HttpMetrics`, outside the token guard so that 403s count too, counts every answer
  by route template (`/v1/prometheus/{name}`, never the raw path; `unmatched` for
  paths no route knows) and status code, and times it.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from typing import Any, Final, Protocol

from fastapi import FastAPI, Request
from fastapi.responses import Response
from starlette.routing import BaseRoute, Match
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from lobby.api._responses import json_response
from lobby.model import pretty

HEALTH: Final = "/v1/health"
METRICS: Final = "/metrics"
UNMATCHED: Final = "unmatched"


class Metrics(Protocol):
    """What the API needs of lobby.metrics.Metrics."""

    def render(self, accept: str = "") -> tuple[bytes, str]: ...

    def http_request(self, route: str, code: int, seconds: float) -> None: ...


def is_public(path: str) -> bool:
    return path == HEALTH


def add_routes(
    app: FastAPI, health: Callable[[], tuple[bool, dict[str, str]]], metrics: Metrics | None
) -> None:
    @app.get(
        HEALTH,
        summary="200 while every broker link is up, else 503; needs no token",
        responses={503: {"description": "a broker link is down"}},
    )
    async def health_check() -> Response:
        ok, brokers = health()
        body = {"status": "ok" if ok else "degraded", "brokers": brokers}
        return json_response(pretty(body), 200 if ok else 503)

    if metrics is None:
        return

    @app.get(
        METRICS,
        summary="Prometheus metrics",
        response_class=Response,
        responses={200: {"content": {"text/plain": {"schema": {"type": "string"}}}}},
    )
    async def metrics_page(request: Request) -> Response:
        body, content_type = metrics.render(request.headers.get("accept", ""))
        return Response(body, headers={"Content-Type": content_type})


def route_of(scope: Scope, routes: Sequence[BaseRoute]) -> str:
    """The template of the route that answered (or would have): never the raw path."""
    route: Any = scope.get("route")
    if route is None:  # answered before routing (token guard, body limit)
        for candidate in routes:
            match, _ = candidate.matches(scope)
            if match is not Match.NONE:
                route = candidate
                break
    path = getattr(route, "path", None)
    return path if isinstance(path, str) else UNMATCHED


class HttpMetrics:
    """Counts and times every HTTP answer (lobby_http_requests_total, ..._duration_seconds)."""

    def __init__(self, app: ASGIApp, metrics: Metrics, routes: Sequence[BaseRoute]) -> None:
        self.app = app
        self.metrics = metrics
        self.routes = routes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = 0

        async def send_status(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_status)
        finally:
            if status:
                took = time.perf_counter() - started
                self.metrics.http_request(route_of(scope, self.routes), status, took)
