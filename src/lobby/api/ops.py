"""What operators ask of the API (SPEC §14.1): /metrics, /v1/health, request metrics.

- `GET /metrics`: lobby.metrics' exposition (the text format; OpenMetrics when the
  scraper asks for it). Read-protected like every GET. prometheus_client is imported
  by the first scrape, not before (lobby.metrics).
- `GET /v1/health`: 200 `{"status": "ok", "brokers": {...}}` while every broker link
  is up (and echoes our own announcements), else 503 `{"status": "degraded", ...}`.
  No token, and nothing about other nodes: safe for a load balancer.
- Every answer is counted by route template (`/v1/prometheus/{name}`, never the raw
  path; `unmatched` for paths no route knows) and status code, and timed, by
  `lobby.api.dispatch` (403s included).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Final, Protocol

from lobby.api.http import Response, json_answer
from lobby.core.model import pretty

UNMATCHED: Final = "unmatched"


class Metrics(Protocol):
    """What the API needs of lobby.metrics.Metrics."""

    def render(self, accept: str = "") -> tuple[bytes, str]: ...

    def http_request(self, route: str, code: int, seconds: float) -> None: ...


def health_answer(health: Callable[[], tuple[bool, dict[str, str]]]) -> Response:
    ok, brokers = health()
    body = pretty({"status": "ok" if ok else "degraded", "brokers": brokers})
    return json_answer(body, 200 if ok else 503)


def metrics_answer(metrics: Metrics, accept: bytes | None) -> Response:
    body, content_type = metrics.render((accept or b"").decode("latin-1"))
    return Response(
        200,
        [(b"content-length", b"%d" % len(body)), (b"content-type", content_type.encode())],
        body,
    )
