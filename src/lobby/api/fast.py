"""The fast path: hot GET answers straight to the server's `send`, before FastAPI.

Through FastAPI a request costs about 100 µs of routing, validation and middleware
layers, for a body that already sits in the registry's cache. This raw ASGI app
answers the hot reads itself: `GET /`, `/v1/discoveries` (with `labels=` or
`prefixes=`), `/v1/resolve?label=`, `/v1/prometheus/{name}`, `/v1/discovery` and
`/v1/stats`. What stands in front of every route is applied in the same order: the
token check (`Guard.permits`), the blocking query (`blocking.hold`), `X-Lobby-Index`.
`GET /v1/health` (public, 200 or 503) is answered here too, unless it is a blocking
query: a load balancer's probe must not build the framework (+17 MiB of RSS).

Everything else goes to the FastAPI app, which is built on the first request that
needs it: another method or path, a request with a body, HEAD, an invalid request
(its error is FastAPI's), `/openapi.json`, `/docs`, `/v1/events`. A daemon that only
serves reads never imports FastAPI or pydantic.

The bodies are the FastAPI routes' bytes. A client that accepts gzip gets the cached
gzip copy of any answer of 1 KiB or more (`Content-Encoding: gzip`; these routes
always say `Vary: Accept-Encoding`). A list too big to keep (`lobby.answer.Slices`)
is sent chunk by chunk as it is encoded, with chunked transfer encoding.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Final, Literal, Protocol
from urllib.parse import parse_qsl

from lobby.answer import Answer, Slices
from lobby.api._responses import DENIED, JSON_TYPE, send_denied
from lobby.api.answers import Body, Node, Prepared, discoveries_answer, resolve_answer
from lobby.api.auth import Guard
from lobby.api.blocking import hold
from lobby.feed import ChangeFeed
from lobby.model import pretty
from lobby.prometheus import PrometheusSD

if TYPE_CHECKING:
    from starlette.types import ASGIApp, Receive, Scope, Send

else:
    ASGIApp = Receive = Scope = Send = Any

_JSON: Final = JSON_TYPE.encode()
_PROMETHEUS: Final = "/v1/prometheus/"
_HEALTH: Final = "/v1/health"
_VARY: Final = (b"vary", b"Accept-Encoding")
_GZIP: Final = (b"content-encoding", b"gzip")
_DENIED_LENGTH: Final = b"%d" % len(DENIED)
_NOT_ALLOWED: Final = b"Method Not Allowed\n"  # as lobby.api.app's _plain_error says it
_NOT_ALLOWED_HEADERS: Final = [
    (b"allow", b"GET"),
    (b"content-length", b"%d" % len(_NOT_ALLOWED)),
    (b"content-type", b"text/plain; charset=utf-8"),
]


class HttpMetrics(Protocol):
    """What the fast path counts its answers with (lobby.metrics.Metrics)."""

    def http_request(self, route: str, code: int, seconds: float) -> None: ...


def _template(path: str) -> str:
    """The route template of a hot path (as FastAPI's routes name them)."""
    return "/v1/prometheus/{name}" if path.startswith(_PROMETHEUS) else path


def _authorization(headers: list[tuple[bytes, bytes]]) -> bytes | None:
    """The `Authorization` header's value (empty without one); None for a request with
    a body, which the framework answers (`_check` reads the same headers in its loop)."""
    authorization = b""
    for key, value in headers:
        if key == b"authorization":
            authorization = value
        elif key == b"content-length" or key == b"transfer-encoding":
            return None
    return authorization


def accepts_gzip(value: bytes) -> bool:
    """Whether an `Accept-Encoding` header value accepts gzip (RFC 9110 §12.5.3)."""
    value = value.lower()
    if b"gzip" not in value and b"*" not in value:
        return False
    star = False
    for item in value.decode("latin-1").split(","):
        coding, _, params = item.partition(";")
        coding = coding.strip()
        if coding not in ("gzip", "x-gzip", "*"):
            continue
        q = 1.0
        for param in params.split(";"):
            key, _, val = param.partition("=")
            if key.strip() == "q":
                try:
                    q = float(val)
                except ValueError:
                    q = 0.0
        if coding == "*":
            star = q > 0
        else:
            return q > 0
    return star


_parsed: dict[bytes, dict[str, str]] = {}  # clients repeat their queries: parse once
_PARSED_MAX: Final = 1024
_NO_QUERY: Final[dict[str, str]] = {}


def _query(scope: Scope) -> dict[str, str]:
    """Query parameters as Starlette reads them (the last of repeated names wins); the
    dict is shared: read it, never change it."""
    raw: bytes = scope["query_string"]
    if not raw:
        return _NO_QUERY
    query = _parsed.get(raw)
    if query is None:
        if len(_parsed) >= _PARSED_MAX:
            _parsed.clear()
        query = _parsed[raw] = dict(parse_qsl(raw.decode("latin-1"), keep_blank_values=True))
    return query


class FastApp:
    """The hot GET routes answered here; every other request goes to `slow()`."""

    def __init__(
        self,
        node: Node,
        token: str,
        feed: ChangeFeed | None,
        *,
        node_exporter_port: int = 9100,
        read_token: str = "",
        metrics: HttpMetrics | None = None,
        slow: Callable[[], ASGIApp],
    ) -> None:
        self.node = node
        self.metrics = metrics
        self.registry = node.registry
        self.answers = node.answers
        self.feed = feed
        self.guard = Guard(self._to_slow, token, read_token)
        self.prometheus = PrometheusSD(node.answers, node_exporter_port)
        self._make_slow = slow
        self._slow: ASGIApp | None = None
        # path -> (route, whether its answers may be gzipped)
        self._routes: dict[str, tuple[Callable[[Scope], Prepared], bool]] = {
            "/": (self._discoveries, True),
            "/v1/discoveries": (self._discoveries, True),
            "/v1/resolve": (self._resolve, True),
            "/v1/discovery": (self._discovery, False),
            "/v1/stats": (self._stats, False),
        }

    @property
    def slow_loaded(self) -> bool:
        """Whether the FastAPI app has been built (for tests and memory checks)."""
        return self._slow is not None

    def slow(self) -> ASGIApp:
        if self._slow is None:
            self._slow = self._make_slow()
        return self._slow

    async def _to_slow(self, scope: Scope, receive: Receive, send: Send) -> None:
        await self.slow()(scope, receive, send)

    def _route(self, path: str) -> tuple[Callable[[Scope], Prepared], bool] | None:
        found = self._routes.get(path)
        if found is None and path.startswith(_PROMETHEUS):
            name = path[len(_PROMETHEUS) :]
            if name and "/" not in name:
                found = (self._prometheus_route(name), True)
        return found

    def _check(
        self, path: str, scope: Scope
    ) -> tuple[Literal["slow", "denied"] | Prepared, bool, bool]:
        """What stands in front of a hot route: (the prepared answer, or "slow" or
        "denied"; whether the client takes gzip; whether the route may gzip)."""
        found = self._route(path)
        if found is None:
            return "slow", False, False
        authorization = b""
        gzip = False
        for key, value in scope["headers"]:
            if key == b"authorization":
                authorization = value
            elif key == b"accept-encoding":
                gzip = accepts_gzip(value)
            elif key == b"content-length" or key == b"transfer-encoding":
                return "slow", False, False  # a GET with a body: the guard's
        if not self.guard.permits("GET", path, authorization):
            return "denied", False, False
        route, compressible = found
        prepared = route(scope)
        return ("slow" if prepared is None else prepared), gzip and compressible, compressible

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] != "GET":
            await self.slow()(scope, receive, send)
            return
        started = time.perf_counter()
        path = scope["path"]
        if path == _HEALTH:
            health = self._health(scope["query_string"], scope["headers"], started)
            if health is None:
                await self.slow()(scope, receive, send)
                return
            status, headers, body = health
            await send({"type": "http.response.start", "status": status, "headers": headers})
            await send({"type": "http.response.body", "body": body})
            return
        prepared, gzip, vary = self._check(path, scope)
        if prepared == "slow":
            await self.slow()(scope, receive, send)
            return
        try:
            await self._answer(scope, receive, send, prepared, gzip, vary)
        finally:
            if self.metrics is not None:
                status = 403 if prepared == "denied" else 200
                self.metrics.http_request(_template(path), status, time.perf_counter() - started)

    async def _answer(
        self,
        scope: Scope,
        receive: Receive,
        send: Send,
        prepared: Literal["denied"] | Prepared,
        gzip: bool,
        vary: bool,
    ) -> None:
        if prepared == "denied":
            await send_denied(send)
            return
        assert callable(prepared)
        feed = self.feed
        if feed is not None and b"index" in scope["query_string"]:
            held = await hold(feed, scope, receive, send)
            if held is None:
                return
        answer = prepared()
        whole = self._whole(answer, gzip, vary)
        if whole is not None:
            headers, body = whole
            await send({"type": "http.response.start", "status": 200, "headers": headers})
            await send({"type": "http.response.body", "body": body})
            return
        assert isinstance(answer, Slices)
        await send({"type": "http.response.start", "status": 200, "headers": self._headers(vary)})
        for chunk in answer.chunks():
            await send({"type": "http.response.body", "body": chunk, "more_body": True})
        await send({"type": "http.response.body", "body": b""})

    def instant(
        self, path: str, query_string: bytes, headers: list[tuple[bytes, bytes]]
    ) -> tuple[int, list[tuple[bytes, bytes]], bytes] | None:
        """The whole answer to a GET, computed at once (status, headers, body), for the
        HTTP protocol to write without an ASGI task (`lobby.api.limits`); None when it
        must go through `__call__`: a blocking query, a streamed list, anything that is
        not a hot route."""
        if self.feed is not None and b"index" in query_string:
            return None
        started = time.perf_counter()
        if path == _HEALTH:
            return self._health(query_string, headers, started)
        prepared, gzip, vary = self._check(path, {"headers": headers, "query_string": query_string})
        if prepared == "slow":
            return None
        if prepared == "denied":
            answer = (403, [(b"content-type", _JSON), (b"content-length", _DENIED_LENGTH)], DENIED)
        else:
            assert callable(prepared)
            whole = self._whole(prepared(), gzip, vary)
            if whole is None:
                return None
            answer = (200, *whole)
        if self.metrics is not None:
            self.metrics.http_request(_template(path), answer[0], time.perf_counter() - started)
        return answer

    def not_allowed(
        self, method: str, path: str, headers: list[tuple[bytes, bytes]]
    ) -> tuple[int, list[tuple[bytes, bytes]], bytes] | None:
        """HEAD or OPTIONS on a hot route: the framework's answer (405, `Allow: GET`;
        or the guard's 403), without building the framework for it: a monitor's HEAD
        probe must not cost an idle daemon 20 MiB. None: the framework's to answer."""
        if path != _HEALTH and self._route(path) is None:
            return None
        started = time.perf_counter()
        authorization = _authorization(headers)
        if authorization is None:
            return None  # a body: the guard's checks first, in the framework
        if self.guard.permits(method, path, authorization):
            answer = (405, _NOT_ALLOWED_HEADERS, _NOT_ALLOWED)
        else:
            answer = (403, [(b"content-type", _JSON), (b"content-length", _DENIED_LENGTH)], DENIED)
        if self.metrics is not None:
            self.metrics.http_request(_template(path), answer[0], time.perf_counter() - started)
        return answer

    def _health(
        self, query_string: bytes, headers: list[tuple[bytes, bytes]], started: float
    ) -> tuple[int, list[tuple[bytes, bytes]], bytes] | None:
        """GET /v1/health as lobby.api.ops answers it (no token, no X-Lobby-Index); None
        for the framework: a blocking query, a request with a body."""
        if self.feed is not None and b"index" in query_string:
            return None
        if _authorization(headers) is None:  # a body
            return None
        ok, brokers = self.node.health()
        body = pretty({"status": "ok" if ok else "degraded", "brokers": brokers})
        status = 200 if ok else 503
        if self.metrics is not None:
            self.metrics.http_request(_HEALTH, status, time.perf_counter() - started)
        return status, [(b"content-length", b"%d" % len(body)), (b"content-type", _JSON)], body

    def _headers(self, vary: bool) -> list[tuple[bytes, bytes]]:
        headers = [(b"content-type", _JSON)]
        if self.feed is not None:
            headers.append((b"x-lobby-index", b"%d" % self.registry.index))
        if vary:
            headers.append(_VARY)
        return headers

    def _whole(
        self, answer: Body, gzip: bool, vary: bool
    ) -> tuple[list[tuple[bytes, bytes]], bytes] | None:
        """Headers and body of an answer sent whole; None for a list to stream."""
        headers = self._headers(vary)
        if isinstance(answer, bytes):
            body = answer
        elif gzip and (packed := answer.gzip()) is not None:
            body = packed
            headers.append(_GZIP)
        elif isinstance(answer, Answer):
            body = answer.body
        else:
            return None
        headers.insert(0, (b"content-length", b"%d" % len(body)))
        return headers, body

    # -- routes: the same answers as lobby.api.app's ----------------------------------

    def _discoveries(self, scope: Scope) -> Prepared:
        query = _query(scope)
        return discoveries_answer(self.answers, query.get("labels"), query.get("prefixes"))

    def _resolve(self, scope: Scope) -> Prepared:
        label = _query(scope).get("label")
        if not label:
            return None  # 400 from the framework
        return resolve_answer(self.answers, label)

    def _discovery(self, scope: Scope) -> Prepared:
        node = self.node
        return lambda: pretty(node.own_discovery().to_dict())

    def _stats(self, scope: Scope) -> Prepared:
        node = self.node
        return lambda: pretty(node.stats())

    def _prometheus_route(self, name: str) -> Callable[[Scope], Prepared]:
        prometheus = self.prometheus
        return lambda scope: lambda: prometheus.cached(name)


def create_fast_app(
    node: Node,
    token: str = "",
    feed: ChangeFeed | None = None,
    *,
    node_exporter_port: int = 9100,
    read_token: str = "",
    metrics: Any = None,
    **more: Any,
) -> FastApp:
    """The daemon's ASGI app: the fast path, and the FastAPI app behind it built on
    first need by `lobby.api.app.create_app`, with the same arguments (`more`: those
    only the FastAPI app uses)."""

    def slow() -> ASGIApp:
        from lobby.api.app import create_app

        app: ASGIApp = create_app(
            node,
            token,
            feed,
            node_exporter_port=node_exporter_port,
            read_token=read_token,
            metrics=metrics,
            prometheus=fast.prometheus,  # one set of kept parts for both paths
            **more,
        )
        return app

    fast = FastApp(
        node,
        token,
        feed,
        node_exporter_port=node_exporter_port,
        read_token=read_token,
        metrics=metrics,
        slow=slow,
    )
    return fast
