"""Every request goes through `Api.dispatch`, once: what the route table says is
applied here and nowhere else.

In order: the route is found (its template names the request in the metrics); the
token is checked (`lobby.api.auth`; public routes need none); a body past 1 MiB gets
413; an unknown path 404 (307 to the same path without or with its final slash when
that one exists), a known path with another method 405 with `Allow`; a watcher (the
event stream, a blocking query) takes a slot under API_MAX_WATCHERS or gets 503; a
blocking query (`?index=N`) is held; the handler answers; a JSON body gets its
headers, `X-Lobby-Index` on blocking-capable routes and the gzip copy where the route
and the client allow it. Then the answer is counted and timed, and access-logged.

`dispatch` is synchronous as long as nothing must wait: a GET whose answer is cached
bytes returns a `Response` at once, and the protocol writes it from its callback.
Otherwise it returns a coroutine (a held query, an async handler) for the protocol to
run as a task. `respond` is the same for callers without a socket: `await
api.respond(Request("GET", path, query))`.
"""

from __future__ import annotations

import inspect
import logging
import time
from collections.abc import Awaitable, Callable, Coroutine, Mapping
from functools import cached_property
from typing import Any, Final, cast
from urllib.parse import quote

from lobby.api.answers import Node
from lobby.api.auth import Guard
from lobby.api.blocking import held_for, hold
from lobby.api.http import JSON_TYPE, HttpError, Request, Response, denied, json_answer, plain
from lobby.api.ops import UNMATCHED, Metrics
from lobby.api.relayed import AgentSide, Ask, relay
from lobby.api.routes import ROUTES, Route
from lobby.core.answer import Answer, Slices
from lobby.system.listener import ListenerLimits
from lobby.view.feed import ChangeFeed
from lobby.view.prometheus import PrometheusSD

log = logging.getLogger("lobby")
access_log = logging.getLogger("uvicorn.access")  # the name logs and their readers know

_JSON: Final = JSON_TYPE.encode()
_VARY: Final = (b"vary", b"Accept-Encoding")
_GZIP: Final = (b"content-encoding", b"gzip")
_RETRY: Final = (b"retry-after", b"5")
_CLOSE: Final = (b"connection", b"close")

Dispatched = Response | Coroutine[Any, Any, Response]
_NO_ARGS: Final[dict[str, str]] = {}
_MATCHED_MAX: Final = 1024  # paths whose template match is kept
_MATCHED_PATH_MAX: Final = 256  # ... each at most this long


_ACCEPTS: dict[bytes, bool] = {}  # clients repeat their Accept-Encoding: parsed once
_ACCEPTS_MAX: Final = 256


def accepts_gzip(value: bytes) -> bool:
    """Whether an `Accept-Encoding` header value accepts gzip (RFC 9110 §12.5.3)."""
    known = _ACCEPTS.get(value)
    if known is None:
        if len(_ACCEPTS) >= _ACCEPTS_MAX:
            _ACCEPTS.clear()
        known = _ACCEPTS[value] = _accepts_gzip(value)
    return known


def _accepts_gzip(value: bytes) -> bool:
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


class _Table:
    """The routes by path: exact paths, then templates with one final `{param}` (one
    path segment; `{param:path}`: the rest of the path, slashes included)."""

    def __init__(self, routes: tuple[Route, ...]) -> None:
        self.exact: dict[str, dict[str, Route]] = {}
        # (prefix, parameter, whether it may hold slashes, the values it admits, route)
        self.templates: list[tuple[str, str, bool, frozenset[str] | None, Route]] = []
        for route in routes:
            head, brace, rest = route.path.partition("{")
            if brace:
                name, _, kind = rest.rstrip("}").partition(":")
                choices = next((p.choices for p in route.params if p.name == name), None)
                self.templates.append((head, name, kind == "path", choices, route))
            else:
                self.exact.setdefault(route.path, {})[route.method] = route
        # templates matched (or not) by path: clients repeat theirs
        self._matched: dict[str, tuple[dict[str, Route], dict[str, str]] | None] = {}

    def find(self, path: str) -> tuple[dict[str, Route], dict[str, str]] | None:
        """The routes of this path by method, with the path's parameters (shared: read
        them, never change them)."""
        found = self.exact.get(path)
        if found is not None:
            return found, _NO_ARGS
        try:
            return self._matched[path]
        except KeyError:
            pass
        matched = self._match(path)
        if len(path) <= _MATCHED_PATH_MAX:
            if len(self._matched) >= _MATCHED_MAX:  # someone trying every path
                self._matched.clear()
            self._matched[path] = matched
        return matched

    def _match(self, path: str) -> tuple[dict[str, Route], dict[str, str]] | None:
        methods: dict[str, Route] = {}
        args: dict[str, str] = {}
        for prefix, name, slashes, choices, route in self.templates:
            if not path.startswith(prefix):
                continue
            value = path[len(prefix) :]
            if not value or ("/" in value and not slashes):
                continue
            if choices is not None and value not in choices:
                continue
            methods.setdefault(route.method, route)
            args = {name: value}
        return (methods, args) if methods else None


class Api:
    """The HTTP API of one node: the route table with what its handlers read."""

    def __init__(
        self,
        node: Node,
        token: str = "",
        feed: ChangeFeed | None = None,
        *,
        node_exporter_port: int = 9100,
        read_token: str = "",
        checks: Callable[[], list[dict[str, Any]]] | None = None,
        metrics: Metrics | None = None,
        limits: ListenerLimits | None = None,
        access_log: bool = False,
        routes: tuple[Route, ...] = ROUTES,
        agent: AgentSide | None = None,
    ) -> None:
        """`limits`: whose watcher slots the event streams and held queries take
        (API_MAX_WATCHERS); `routes`: the table (tests add their own); `agent`: on an
        agent (SPEC §20), how it asks listeners (lobby.api.relayed)."""
        self.agent = agent
        self.node = node
        self.registry = node.registry
        self.answers = node.answers
        self.feed = feed
        self.checks = checks
        self.metrics = metrics
        self.limits = limits if limits is not None else ListenerLimits()
        self.access_log = access_log
        self.guard = Guard(token, read_token)
        self.prometheus = PrometheusSD(self.answers, node_exporter_port)
        self.routes = tuple(r for r in routes if r.when is None or r.when(self))
        self._table = _Table(self.routes)
        self._async = frozenset(r for r in self.routes if inspect.iscoroutinefunction(r.answer))

    @cached_property
    def ui_assets(self) -> dict[str, Any]:
        from lobby.api import ui  # read on the first dashboard request

        return ui.load()

    def openapi(self) -> Response:
        return self._document

    @cached_property
    def _document(self) -> Response:
        from lobby.api.openapi import document

        body = document(self.routes, self.guard.protected, self.feed is not None)
        return json_answer(body)

    # -- the one path of every request ---------------------------------------------------

    async def respond(self, req: Request) -> Response:
        """The answer to a request, whatever it takes."""
        answer = self.dispatch(req)
        return answer if isinstance(answer, Response) else await answer

    def dispatch(self, req: Request) -> Dispatched:
        """The answer at once, or a coroutine that makes it (see the module docstring)."""
        started = time.perf_counter()
        method = "GET" if req.method == "HEAD" else req.method
        found = self._table.find(req.path)
        route = args = None
        if found is not None:
            methods, args = found
            route = methods.get(method)
            template = (route or next(iter(methods.values()))).path
        else:
            template = UNMATCHED
        if not (route is not None and route.public) and self.guard.protected and not req.trusted:
            given = req.header(b"authorization") or b""
            if not self.guard.allowed(given, req.method):
                return self._done(req, denied(), template, started)
        try:
            if req.oversize:
                raise HttpError(413, "request body over 1 MiB")
            if route is None:
                raise self._no_route(req, found)
            assert args is not None
            if self.agent is not None and route.cluster and not route.watcher:
                release = None  # an agent: a listener answers (lobby.api.relayed)
                if route.blocking and b"index" in req.query:  # held there, a slot here
                    if not self.limits.acquire_watcher():
                        return self._done(req, self._busy(), template, started)
                    release = self.limits.release_watcher
                return self._relayed(self.agent.ask, route, req, started, release)
            if route.watcher:  # the event stream: a slot for as long as it is open
                if not self.limits.acquire_watcher():
                    return self._done(req, self._busy(), template, started)
                return self._answer(route, req, args, started, self.limits.release_watcher)
            if route.blocking and self.feed is not None and b"index" in req.query:
                params = req.params
                hold_for = held_for(self.feed, params) if "index" in params else None
                if hold_for is not None:  # a slot for as long as it is held
                    if not self.limits.acquire_watcher():
                        return self._done(req, self._busy(), template, started)
                    release = self.limits.release_watcher
                    return self._held(route, req, args, started, hold_for, release)
            return self._answer(route, req, args, started)
        except _Redirect as exc:
            answer = Response(exc.status, [*exc.headers, (b"content-length", b"0")])
            return self._done(req, answer, template, started)
        except HttpError as exc:
            return self._done(req, plain(exc.status, exc.message, exc.headers), template, started)

    def _answer(
        self,
        route: Route,
        req: Request,
        args: Mapping[str, str],
        started: float,
        release: Callable[[], None] | None = None,
    ) -> Dispatched:
        """Call the handler: its answer now, or the coroutine that awaits it (an async
        handler's, or what a synchronous handler returned to wait for: an answer being
        built, lobby.view.prometheus)."""
        if route in self._async:
            return self._awaited(route, req, args, started, release)
        try:
            reply = route.answer(self, req, args)
            if reply.__class__ is not Answer and isinstance(reply, Awaitable):
                return self._awaited(route, req, args, started, release, reply)
            answer = self._finish(route, req, reply, release)
        except BaseException as exc:
            answer = _failed(exc, release)
        return self._done(req, answer, route.path, started)

    async def _awaited(
        self,
        route: Route,
        req: Request,
        args: Mapping[str, str],
        started: float,
        release: Callable[[], None] | None,
        pending: Awaitable[Any] | None = None,
    ) -> Response:
        try:
            reply = route.answer(self, req, args) if pending is None else pending
            assert isinstance(reply, Awaitable)
            answer = self._finish(route, req, await reply, release)
        except BaseException as exc:
            answer = _failed(exc, release)
        return self._done(req, answer, route.path, started)

    async def _relayed(
        self,
        ask: Ask,
        route: Route,
        req: Request,
        started: float,
        release: Callable[[], None] | None,
    ) -> Response:
        wanted = req.header(b"accept-encoding") if route.gzip else None
        try:
            answer = await relay(ask, req, wanted is not None and accepts_gzip(wanted))
        finally:
            if release is not None:
                release()
        return self._done(req, answer, route.path, started)

    async def _held(
        self,
        route: Route,
        req: Request,
        args: Mapping[str, str],
        started: float,
        hold_for: tuple[int, float],
        release: Callable[[], None],
    ) -> Response:
        """A blocking query: held (a watcher meanwhile), then answered as usual."""
        assert self.feed is not None
        try:
            await hold(self.feed, *hold_for)
        finally:
            release()
        answer = self._answer(route, req, args, started)
        return answer if isinstance(answer, Response) else await answer

    def _finish(
        self, route: Route, req: Request, reply: Any, release: Callable[[], None] | None
    ) -> Response:
        """A handler's reply as a Response: a JSON body gets its headers here."""
        if isinstance(reply, Answer):
            answer = self._whole(route, req, reply)
        elif isinstance(reply, Response):
            answer = reply
            if route.blocking and self.feed is not None:
                answer.headers.append((b"x-lobby-index", b"%d" % self.registry.index))
        else:
            headers = [(b"content-type", _JSON)]
            if route.blocking and self.feed is not None:
                headers.append((b"x-lobby-index", b"%d" % self.registry.index))
            if route.gzip:
                headers.append(_VARY)
            body: Any
            if isinstance(reply, bytes):
                body = reply
            else:
                assert isinstance(reply, Slices)
                if not (
                    route.gzip
                    and (wanted := req.header(b"accept-encoding")) is not None
                    and accepts_gzip(wanted)
                ):
                    return Response(200, headers, reply.chunks(), release)
                headers.append(_GZIP)
                body = reply.gzipped
                if body is None:  # made while it is sent, a slice at a time, then kept
                    return Response(200, headers, reply.gzip_chunks(), release)
            headers.insert(0, (b"content-length", b"%d" % len(body)))
            answer = Response(200, headers, body)
        if release is not None:
            if answer.streamed and answer.release is None:
                answer.release = release
            elif answer.release is not release:
                release()
        return answer

    def _whole(self, route: Route, req: Request, reply: Answer) -> Response:
        """A cached answer's Response: made (and its headers encoded) once per variant
        (X-Lobby-Index or not, Vary or not, gzip or not) and index, kept beside the
        answer, so a hot GET costs no header building."""
        indexed = route.blocking and self.feed is not None
        index = self.registry.index if indexed else -1
        packed = None
        if (
            route.gzip
            and (wanted := req.header(b"accept-encoding")) is not None
            and accepts_gzip(wanted)
        ):
            packed = reply.gzip()
        variant = (indexed, route.gzip, packed is not None)
        kept = reply.sent.get(variant)
        if kept is not None and kept[0] == index:
            return cast(Response, kept[1])
        headers = [(b"content-type", _JSON)]
        if indexed:
            headers.append((b"x-lobby-index", b"%d" % index))
        if route.gzip:
            headers.append(_VARY)
        body = reply.body
        if packed is not None:
            body = packed
            headers.append(_GZIP)
        headers.insert(0, (b"content-length", b"%d" % len(body)))
        response = Response(200, headers, body).encoded()
        reply.sent[variant] = (index, response)
        return response

    def _no_route(
        self, req: Request, found: tuple[dict[str, Route], dict[str, str]] | None
    ) -> HttpError:
        if found is not None:
            allowed = list(found[0])
            if "GET" in allowed:
                allowed.insert(allowed.index("GET") + 1, "HEAD")
            return HttpError(405, "Method Not Allowed", [(b"allow", ", ".join(allowed).encode())])
        other = req.path[:-1] if req.path.endswith("/") else req.path + "/"
        if other != "" and self._table.find(other) is not None:
            target = other + ("?" + req.query.decode("latin-1") if req.query else "")
            return _Redirect(target)
        return HttpError(404, "Not Found")

    def _busy(self) -> Response:
        limits = self.limits
        limits.warn(
            logging.WARNING,
            "API: %d event streams and blocking queries open, the most allowed: answering 503",
            limits.watchers,
        )
        text = (
            f"too many event streams and blocking queries ({limits.max_watchers} open); "
            "try again later"
        )
        return plain(503, text, [_CLOSE, _RETRY])

    def _done(self, req: Request, answer: Response, template: str, started: float) -> Response:
        """Count, time and log an answer (a stream: counted when it ends)."""
        metrics = self.metrics
        if metrics is not None:
            if answer.streamed:
                release = answer.release

                def counted() -> None:
                    if release is not None:
                        release()
                    metrics.http_request(template, answer.status, time.perf_counter() - started)

                answer.release = counted
            else:
                metrics.http_request(template, answer.status, time.perf_counter() - started)
        if self.access_log:
            target = quote(req.path)  # as uvicorn logged it
            if req.query:
                target += "?" + req.query.decode("latin-1")
            access_log.info(
                '%s - "%s %s HTTP/%s" %d',
                req.client,
                req.method,
                target,
                req.version,
                answer.status,
            )
        return answer


def _failed(exc: BaseException, release: Callable[[], None] | None) -> Response:
    """A handler failed: its slot is given back either way; an HttpError is its answer,
    anything else (a bug, a cancellation) goes on up."""
    if release is not None:
        release()
    if not isinstance(exc, HttpError):
        raise exc
    return plain(exc.status, exc.message, exc.headers)


class _Redirect(HttpError):
    def __init__(self, location: str) -> None:
        super().__init__(307, "", [(b"location", location.encode())])


__all__ = ["Api", "Dispatched", "accepts_gzip"]
