"""The API's bounds, at the protocol level: they hold for every request, whatever app
or fast path answers it (lobby.listener explains the limits themselves).

`BoundedHttpTools` is uvicorn's httptools protocol with:

- a header deadline (API_HEADER_TIMEOUT): the request line and headers must be
  complete within it, counted from the connection's start or from the first byte of
  the next request on a keep-alive connection; past it the connection is closed (408
  when part of a request came). uvicorn has no such timer, so a client sending one
  byte at a time could hold a connection forever;
- a size bound on the request line plus headers (API_MAX_HEADER_BYTES): 431 and
  closed, counted on the raw bytes while the head is incomplete (httptools and
  uvicorn buffer a header or URL without limit), and exactly on the parsed URL and
  headers when the head came in reads larger than the bound;
- the idle keep-alive timeout (API_IDLE_TIMEOUT, uvicorn's own timer), counted;
- malformed requests answered 400 and counted, logged rate-limited (uvicorn logs a
  warning for each one: a log flood for whoever sends garbage);
- its connection slot (lobby.listener.Slot) released when the connection ends.

`WatcherGate` wraps the whole ASGI app and caps the requests that stay open
(`is_watcher`: event streams and blocking queries) at API_MAX_WATCHERS: past it, 503
with a message and `Connection: close`.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Final, Protocol

import httptools

from lobby.api._responses import TEXT_TYPE
from lobby.api._uvicorn import STATUS_LINE, HttpToolsProtocol
from lobby.listener import ListenerLimits, Slot

if TYPE_CHECKING:  # no framework imported to serve
    from starlette.types import ASGIApp, Receive, Scope, Send

log = logging.getLogger("lobby")

# A whole answer: status, headers, body.
Whole = tuple[int, list[tuple[bytes, bytes]], bytes]


class Instant(Protocol):
    """What answers a request whole, at once, from its path, query string and headers
    (lobby.api.fast.FastApp); None: the request must go through the ASGI app."""

    def instant(
        self, path: str, query_string: bytes, headers: list[tuple[bytes, bytes]]
    ) -> Whole | None:
        """A GET."""
        ...

    def not_allowed(
        self, method: str, path: str, headers: list[tuple[bytes, bytes]]
    ) -> Whole | None:
        """A HEAD or an OPTIONS."""
        ...


_AT_ONCE: Final = (b"GET", b"HEAD", b"OPTIONS")  # the methods an Instant may answer

_REASONS: Final = {
    400: "Bad Request",
    408: "Request Timeout",
    431: "Request Header Fields Too Large",
    503: "Service Unavailable",
}


def plain_answer(status: int, text: str) -> bytes:
    """A whole HTTP/1.1 answer that closes the connection, for the protocol to write."""
    body = (text + "\n").encode()
    head = (
        f"HTTP/1.1 {status} {_REASONS[status]}\r\ncontent-type: {TEXT_TYPE}\r\n"
        f"content-length: {len(body)}\r\nconnection: close\r\n\r\n"
    )
    return head.encode() + body


REFUSAL: Final = plain_answer(503, "too many connections; try again later")


class _HeadTooLarge(Exception):
    """Raised from a parser callback to stop parsing an over-long head (httptools
    re-raises it as the context of an HttpParserCallbackError)."""


class BoundedHttpTools(HttpToolsProtocol):
    """uvicorn's httptools protocol within a `ListenerLimits` (see the module docstring)."""

    def __init__(
        self, *args: Any, slot: Slot, instant: Instant | None = None, **kwargs: Any
    ) -> None:
        super().__init__(*args, **kwargs)
        self.instant = instant
        self._answered = False  # the request whose message completes was answered at once
        self.slot = slot
        self.limits: ListenerLimits = slot.limits
        self._head_timer: asyncio.TimerHandle | None = None
        self._head_pending = False  # a request head is expected or under way
        self._head_since = 0.0  # loop.time() when it began: the deadline counts from here
        self._head_bytes = 0  # raw bytes received for it so far
        self._in_body = False  # between headers complete and message complete

    # -- connection ---------------------------------------------------------------------

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._head_begins()
        self._arm_head_timer()

    def connection_lost(self, exc: Exception | None) -> None:
        self._cancel_head_timer()
        self.slot.release()
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        if self.transport.is_closing():
            return
        self._unset_keepalive_if_required()
        if not self._in_body:  # a head is under way, or the next one begins
            if not self._head_pending:
                self._head_begins()
            self._head_bytes += len(data)
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            return  # no WebSocket here (ws="none"): the request is served as plain HTTP
        except httptools.HttpParserError as exc:
            if isinstance(exc.__context__, _HeadTooLarge):
                self._too_large()
            else:
                self.limits.bad_requests += 1
                self.limits.warn(logging.INFO, "API: invalid HTTP request from %s", self._peer())
                self._answer(400, "invalid HTTP request")
            return
        if self._head_pending:  # the head is not complete (most requests come whole)
            if self._head_bytes > self.limits.max_request_bytes:
                self._too_large()
            else:
                self._arm_head_timer()

    def timeout_keep_alive_handler(self) -> None:
        if not self.transport.is_closing():
            self.limits.idle_closed += 1
        super().timeout_keep_alive_handler()

    # -- parser callbacks ---------------------------------------------------------------

    def on_message_begin(self) -> None:
        super().on_message_begin()
        if not self._head_pending:  # a pipelined request after a complete one
            self._head_begins()

    def on_headers_complete(self) -> None:
        self._head_pending = False
        self._cancel_head_timer()
        if self._head_bytes > self.limits.max_request_bytes:  # big reads: count exactly
            size = len(self.url) + sum(len(n) + len(v) + 4 for n, v in self.headers)
            if size > self.limits.max_request_bytes:
                raise _HeadTooLarge
        self._head_bytes = 0
        self._in_body = True
        if self.instant is not None and self._answer_at_once(self.instant):
            return
        super().on_headers_complete()

    def on_message_complete(self) -> None:
        self._in_body = False
        if self._answered:
            self._answered = False
            return
        super().on_message_complete()

    def _answer_at_once(self, instant: Instant) -> bool:
        """The fast path at the protocol level: a GET (or a HEAD or OPTIONS refused)
        that `instant` answers whole is written in one piece right here, without an
        ASGI task or its messages (as uvicorn would write it: its default headers
        first). Only when no answer is under way on this connection, so pipelined
        answers keep their order."""
        parser = self.parser
        if (self.cycle is not None and not self.cycle.response_complete) or self.pipeline:
            return False
        method = parser.get_method()
        if method not in _AT_ONCE or parser.should_upgrade():
            return False
        parsed = httptools.parse_url(self.url)
        raw_path: bytes = parsed.path
        if b"%" in raw_path or self.root_path:
            return False  # uvicorn's own decoding, then the ASGI app
        path = raw_path.decode("ascii")
        if method == b"GET":
            answer = instant.instant(path, parsed.query or b"", self.headers)
        else:
            answer = instant.not_allowed(method.decode(), path, self.headers)
        if answer is None:
            return False
        status, headers, body = answer
        if method == b"HEAD":
            body = b""  # its headers say what a GET would get
        keep_alive = parser.get_http_version() != "1.0" and parser.should_keep_alive()
        content = [STATUS_LINE[status]]
        for name, value in (*self.server_state.default_headers, *headers):
            content += (name, b": ", value, b"\r\n")
        if not keep_alive:
            content.append(b"connection: close\r\n")
        content += (b"\r\n", body)
        self.transport.write(b"".join(content))
        if self.access_log:  # as uvicorn logs an answer
            host, port = self.client or ("", 0)
            query = parsed.query
            target = path + ("?" + query.decode("ascii") if query else "")
            version = parser.get_http_version()
            self.access_logger.info(
                '%s - "%s %s HTTP/%s" %d',
                f"{host}:{port}",
                method.decode(),
                target,
                version,
                status,
            )
        self._answered = True
        if keep_alive:
            self.on_response_complete()  # counts it, arms the keep-alive timer
        else:
            self.server_state.total_requests += 1
            self.transport.close()
        return True

    # -- internals ----------------------------------------------------------------------

    def _head_begins(self) -> None:
        self._head_pending = True
        self._head_since = self.loop.time()
        self._head_bytes = 0

    def _arm_head_timer(self) -> None:
        if self._head_timer is None:
            deadline = self._head_since + self.limits.read_timeout
            self._head_timer = self.loop.call_at(deadline, self._head_timeout)

    def _cancel_head_timer(self) -> None:
        if self._head_timer is not None:
            self._head_timer.cancel()
            self._head_timer = None

    def _head_timeout(self) -> None:
        self._head_timer = None
        if self.transport.is_closing() or not self._head_pending:
            return
        self.limits.read_timeouts += 1
        if self._head_bytes:
            self._answer(408, "request headers not complete in time")
        else:
            self.transport.close()

    def _too_large(self) -> None:
        self.limits.too_large += 1
        self._answer(431, f"request line and headers over {self.limits.max_request_bytes} bytes")

    def _answer(self, status: int, text: str) -> None:
        """Answer and close; with a response under way, just close (no interleaving)."""
        self._cancel_head_timer()
        if self.cycle is None or self.cycle.response_complete:
            self.transport.write(plain_answer(status, text))
        self.transport.close()

    def _peer(self) -> str:
        return f"{self.client[0]}:{self.client[1]}" if self.client else "?"


def protocol_factory(
    config: Any, server_state: Any, app_state: dict[str, Any], instant: Instant | None = None
) -> Callable[[Slot], asyncio.Protocol]:
    """What `lobby.listener.Listener` calls for each admitted connection."""

    def make(slot: Slot) -> asyncio.Protocol:
        return BoundedHttpTools(
            config=config,
            server_state=server_state,
            app_state=app_state,
            slot=slot,
            instant=instant,
        )

    return make


class WatcherGate:
    """At most `limits.max_watchers` long-lived requests at once; past it, 503."""

    def __init__(
        self, app: ASGIApp, limits: ListenerLimits, is_watcher: Callable[[Scope], bool]
    ) -> None:
        self.app = app
        self.limits = limits
        self.is_watcher = is_watcher

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or not self.is_watcher(scope):
            await self.app(scope, receive, send)
            return
        limits = self.limits
        if not limits.acquire_watcher():
            limits.warn(
                logging.WARNING,
                "API: %d event streams and blocking queries open, the most allowed: answering 503",
                limits.watchers,
            )
            body = (
                f"too many event streams and blocking queries ({limits.max_watchers} open); "
                "try again later\n"
            ).encode()
            await send(
                {
                    "type": "http.response.start",
                    "status": 503,
                    "headers": [
                        (b"content-type", TEXT_TYPE.encode()),
                        (b"content-length", str(len(body)).encode()),
                        (b"connection", b"close"),
                        (b"retry-after", b"5"),
                    ],
                }
            )
            await send({"type": "http.response.body", "body": body})
            return
        try:
            await self.app(scope, receive, send)
        finally:
            limits.release_watcher()
