"""HTTP/1.1 on httptools' parser, for `lobby.api.dispatch.Api`: the API's own protocol.

One `HttpProtocol` per connection, made by `lobby.system.listener.Listener` with the
connection's `Slot`. It parses requests into `lobby.api.http.Request`s, hands each to
`Api.dispatch`, and writes the answers back in request order (keep-alive,
pipelining):

- an answer `dispatch` gives at once (cached bytes: the hot GETs) is written from the
  parser's callback in one `write`, without a task;
- anything else (a held blocking query, a label write, an event stream, a big list
  encoded slice by slice) runs in one task per request, cancelled when the client goes
  away; requests pipelined behind it wait their turn;
- a streamed body goes out with chunked transfer encoding (HTTP/1.0: until close),
  waiting whenever the transport's buffer is full; HEAD gets GET's headers only.

The bounds (lobby.listener explains them) hold here for every request:

- a header deadline (API_HEADER_TIMEOUT): the request line and headers must be
  complete within it, counted from the connection's start or from the first byte of
  the next request on a keep-alive connection; past it the connection is closed (408
  when part of a request came);
- a size bound on the request line plus headers (API_MAX_HEADER_BYTES): 431 and
  closed, counted on the raw bytes while the head is incomplete, and exactly on the
  URL and headers when the head came in reads larger than the bound;
- the idle keep-alive timeout (API_IDLE_TIMEOUT), counted;
- malformed requests answered 400 and counted, logged rate-limited;
- request bodies (Content-Length or chunked) kept up to 1 MiB: past it the request is
  answered at once (403 or 413) and the connection closed;
- its connection slot released when the connection ends.

Stopping (`ServerState.stop`, from lobby.api.server): idle connections close at once,
busy ones after their answer; at the deadline an answer still under way is ended
properly (a streamed body gets its last chunk, an answer not begun a 503) and closed,
without a traceback.
"""

from __future__ import annotations

import asyncio
import contextlib
import http
import logging
import time
from collections import deque
from collections.abc import AsyncIterator, Coroutine, Iterator
from typing import Any, Final, cast
from urllib.parse import unquote

import httptools

from lobby.api.dispatch import Api
from lobby.api.http import MAX_BODY, TEXT_TYPE, Request, Response
from lobby.system.listener import ListenerLimits, Slot

log = logging.getLogger("lobby")

_REASONS: Final = {status.value: status.phrase for status in http.HTTPStatus}
_STATUS_LINES: dict[int, bytes] = {}
_QUEUED_MAX: Final = 16  # pipelined requests waiting their turn before reading pauses


_DAYS: Final = (b"Mon", b"Tue", b"Wed", b"Thu", b"Fri", b"Sat", b"Sun")
_MONTHS: Final = (
    b"Jan", b"Feb", b"Mar", b"Apr", b"May", b"Jun",
    b"Jul", b"Aug", b"Sep", b"Oct", b"Nov", b"Dec",
)  # fmt: skip


def http_date(now: float) -> bytes:
    """The IMF-fixdate of RFC 9110 (`Sun, 06 Nov 1994 08:49:37 GMT`), as
    email.utils.formatdate(usegmt=True) writes it, without importing the email
    package for it (1 MiB of an idle daemon's RSS)."""
    t = time.gmtime(now)
    return b"%s, %02d %s %04d %02d:%02d:%02d GMT" % (
        _DAYS[t.tm_wday],
        t.tm_mday,
        _MONTHS[t.tm_mon - 1],
        t.tm_year,
        t.tm_hour,
        t.tm_min,
        t.tm_sec,
    )


def status_line(status: int) -> bytes:
    line = _STATUS_LINES.get(status)
    if line is None:
        line = _STATUS_LINES[status] = b"HTTP/1.1 %d %s\r\n" % (
            status,
            _REASONS.get(status, "").encode(),
        )
    return line


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


class ServerState:
    """What the connections of one server share: the open ones, the date header."""

    def __init__(self, api: Api) -> None:
        self.api = api
        self.connections: set[HttpProtocol] = set()
        self.stopping = False
        self._date_at = -1
        self._date = b""
        self._empty: asyncio.Event | None = None

    def date(self) -> bytes:
        now = int(time.time())
        if now != self._date_at:
            self._date_at = now
            self._date = b"date: %s\r\n" % http_date(now)
        return self._date

    def left(self, connection: HttpProtocol) -> None:
        self.connections.discard(connection)
        if not self.connections and self._empty is not None:
            self._empty.set()

    async def stop(self, timeout: float) -> None:
        """Close idle connections now, busy ones after their answer; at the deadline,
        end what is left quietly."""
        self.stopping = True
        for connection in list(self.connections):
            connection.shutdown()
        if self.connections:
            self._empty = asyncio.Event()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(timeout):  # not wait_for: see lobby.feed
                    await self._empty.wait()
        for connection in list(self.connections):
            connection.abort_quietly()


class HttpProtocol(asyncio.Protocol):
    """One HTTP connection (see the module docstring)."""

    def __init__(self, state: ServerState, slot: Slot) -> None:
        self.state = state
        self.api = state.api
        self.slot = slot
        self.limits: ListenerLimits = slot.limits
        self.loop = asyncio.get_running_loop()
        self.parser = httptools.HttpRequestParser(self)
        self.transport: asyncio.Transport | None = None
        self.client = ""
        # the request being parsed
        self._url = b""
        self._headers: list[tuple[bytes, bytes]] = []
        self._body: list[bytes] = []
        self._body_size = 0
        self._request: Request | None = None  # its head is complete
        self._keep_alive = True
        # answers, in request order
        self._queue: deque[tuple[Request, bool]] = deque()
        self._task: asyncio.Task[None] | None = None  # the answer under way, if any
        self._head_written = False  # ... has written its status line and headers
        self._chunked = False  # ... sends its body in chunks
        self._ignoring = False  # the rest of the input is not read (a body over the limit)
        self._closing = False  # close once the answers under way are written
        self._aborted = False
        # bounds
        self._head_timer: asyncio.TimerHandle | None = None
        self._head_pending = False  # a request head is expected or under way
        self._head_since = 0.0  # loop.time() when it began: the deadline counts from here
        self._head_bytes = 0  # raw bytes received for it so far
        self._in_body = False  # between headers complete and message complete
        self._idle_timer: asyncio.TimerHandle | None = None
        self._idle_from = 0.0  # loop.time() of the last answer
        # flow control
        self._writable = asyncio.Event()
        self._writable.set()
        self._paused_writing = False
        self._paused_queue = False

    # -- connection ---------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's: no subclass of it
        peer = self.transport.get_extra_info("peername")
        if isinstance(peer, tuple) and len(peer) >= 2:
            self.client = f"{peer[0]}:{peer[1]}"
        self.state.connections.add(self)
        if self.state.stopping:  # accepted (a TLS handshake under way) as the server stopped
            self.transport.close()
            return
        self._head_begins()
        self._arm_head_timer()

    def connection_lost(self, exc: Exception | None) -> None:
        self._cancel_head_timer()
        self._cancel_idle_timer()
        self.slot.release()
        self.state.left(self)
        self._queue.clear()
        self._writable.set()  # a writer waiting for room: its task is cancelled below
        if self._task is not None:
            self._task.cancel()

    def pause_writing(self) -> None:
        self._writable.clear()
        self._paused_writing = True
        self._reading()

    def resume_writing(self) -> None:
        self._writable.set()
        self._paused_writing = False
        self._reading()

    def data_received(self, data: bytes) -> None:
        transport = self.transport
        if transport is None or transport.is_closing() or self._ignoring:
            return
        if not self._in_body:  # a head is under way, or the next one begins
            if not self._head_pending:
                self._head_begins()
            self._head_bytes += len(data)
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            return  # no WebSocket here: the request was served as plain HTTP
        except httptools.HttpParserError as exc:
            if isinstance(exc.__context__, _HeadTooLarge):
                self._too_large()
            else:
                self.limits.bad_requests += 1
                self.limits.warn(logging.INFO, "API: invalid HTTP request from %s", self._peer())
                self._refuse(400, "invalid HTTP request")
            return
        if self._head_pending:  # the head is not complete (most requests come whole)
            if self._head_bytes > self.limits.max_request_bytes:
                self._too_large()
            else:
                self._arm_head_timer()

    # -- parser callbacks ---------------------------------------------------------------

    def on_message_begin(self) -> None:
        self._url = b""
        self._headers = []
        self._body = []
        self._body_size = 0
        self._request = None
        if not self._head_pending:  # a pipelined request after a complete one
            self._head_begins()

    def on_url(self, url: bytes) -> None:
        self._url += url

    def on_header(self, name: bytes, value: bytes) -> None:
        self._headers.append((name.lower(), value))

    def on_headers_complete(self) -> None:
        self._head_pending = False
        self._cancel_head_timer()
        if self._head_bytes > self.limits.max_request_bytes:  # big reads: count exactly
            size = len(self._url) + sum(len(n) + len(v) + 4 for n, v in self._headers)
            if size > self.limits.max_request_bytes:
                raise _HeadTooLarge
        self._head_bytes = 0
        self._in_body = True
        parser = self.parser
        url = self._url
        if url[:1] == b"/" and b"#" not in url:  # origin-form, as clients send it
            raw_path, _, query = url.partition(b"?")
        else:  # absolute-form (a proxy's) or a fragment: the parser's URL split
            parsed = httptools.parse_url(url)
            raw_path, query = parsed.path, parsed.query or b""
        path = raw_path.decode("latin-1")
        if "%" in path:
            path = unquote(path)
        version = parser.get_http_version()
        self._keep_alive = version != "1.0" and parser.should_keep_alive()
        self._request = Request(
            parser.get_method().decode("ascii"),
            path,
            query,
            self._headers,
            client=self.client,
            version=version,
        )
        length = None
        expect = False
        for name, value in self._headers:
            if name == b"content-length":
                length = value
            elif name == b"expect" and value.lower() == b"100-continue":
                expect = True
        if length is not None and int(length) > MAX_BODY:
            self._oversize()
        elif expect and self._task is None and not self._queue and self.transport is not None:
            self.transport.write(b"HTTP/1.1 100 Continue\r\n\r\n")

    def on_body(self, body: bytes) -> None:
        if self._request is None or self._request.oversize:
            return
        self._body_size += len(body)
        if self._body_size > MAX_BODY:
            self._oversize()
        else:
            self._body.append(body)

    def on_message_complete(self) -> None:
        self._in_body = False
        request, self._request = self._request, None
        if request is None or request.oversize:
            return
        if self._body:
            request.body = b"".join(self._body)
            self._body = []
        self._enqueue(request, self._keep_alive)

    def _oversize(self) -> None:
        """A body over 1 MiB: answered now (403 or 413), the rest never read."""
        request = self._request
        assert request is not None
        request.oversize = True
        self._body = []
        self._ignoring = True
        self._enqueue(request, False)

    # -- answering ----------------------------------------------------------------------

    def _enqueue(self, request: Request, keep_alive: bool) -> None:
        self._queue.append((request, keep_alive))
        if self._task is None:
            self._next()
        elif len(self._queue) > _QUEUED_MAX and not self._paused_queue:
            self._paused_queue = True
            self._reading()

    def _next(self) -> None:
        """Answer the queued requests in order: at once while their answers are ready,
        else in a task (which calls this again when done)."""
        transport = self.transport
        while self._queue and self._task is None:
            if transport is None or transport.is_closing():
                self._queue.clear()
                return
            request, keep_alive = self._queue.popleft()
            try:
                answer = self.api.dispatch(request)
            except Exception:
                log.exception("API: error answering %s %s", request.method, request.path)
                transport.write(plain_answer(500, "internal error"))
                transport.close()
                return
            if isinstance(answer, Response) and not answer.streamed:
                keep_alive = self._write_whole(answer, request, keep_alive)
                if not keep_alive or self._closing:
                    transport.close()
                    return
            else:
                self._head_written = False
                self._task = self.loop.create_task(self._answer(answer, request, keep_alive))
                return
        if self._paused_queue:
            self._paused_queue = False
            self._reading()
        if not self._queue and self._task is None:
            if self._closing:
                if transport is not None:
                    transport.close()
            elif transport is not None and not transport.is_closing():
                self._idle_from = self.loop.time()
                if self._idle_timer is None:  # one timer, moved on when it fires early
                    at = self._idle_from + self.limits.idle_timeout
                    self._idle_timer = self.loop.call_at(at, self._idle)

    async def _answer(
        self,
        answer: Response | Coroutine[Any, Any, Response],
        request: Request,
        keep_alive: bool,
    ) -> None:
        response = None
        try:
            response = answer if isinstance(answer, Response) else await answer
            if not response.streamed:
                keep_alive = self._write_whole(response, request, keep_alive)
            else:
                keep_alive = await self._write_stream(response, request, keep_alive)
        except asyncio.CancelledError:
            if isinstance(answer, Coroutine):
                answer.close()  # never started: no "never awaited" warning
            raise
        except Exception:
            log.exception("API: error answering %s %s", request.method, request.path)
            keep_alive = False
            if not self._head_written and self.transport is not None:
                self.transport.write(plain_answer(500, "internal error"))
        finally:
            if response is not None:
                await response.aclose()
        self._task = None
        transport = self.transport
        if transport is None or self._aborted:
            return
        if not keep_alive:
            transport.close()
            return
        self._next()

    def _write_whole(self, response: Response, request: Request, keep_alive: bool) -> bool:
        """Write a whole answer; whether the connection stays open."""
        assert self.transport is not None and isinstance(response.body, bytes)
        wire = response.wire
        if wire is not None and keep_alive and not self._closing:  # the hot path
            parts = [status_line(response.status), self.state.date(), wire, b"\r\n"]
            if request.method != "HEAD":
                parts.append(response.body)
            self.transport.write(b"".join(parts))
            return True
        head, keep_alive = self._head(response, keep_alive, chunked=False)
        if request.method == "HEAD":
            self.transport.write(head)
        else:
            self.transport.write(head + response.body)
        return keep_alive

    async def _write_stream(self, response: Response, request: Request, keep_alive: bool) -> bool:
        transport = self.transport
        assert transport is not None
        chunked = request.version != "1.0"
        head, keep_alive = self._head(response, keep_alive and chunked, chunked=chunked)
        transport.write(head)
        self._head_written = True
        self._chunked = chunked
        if request.method == "HEAD":
            return keep_alive
        body = response.body
        if isinstance(body, Iterator):
            # each chunk is made on the loop (a big list: a slice encoded); a client
            # that reads fast never fills the transport's buffer, so without a turn of
            # the loop between chunks the whole list (14.6 MiB at 50,000 nodes, about
            # 100 ms) would be made in one go while every other client waits
            for chunk in body:
                await self._send(chunk, chunked)
                await asyncio.sleep(0)
        else:
            assert isinstance(body, AsyncIterator)
            async for chunk in body:
                await self._send(chunk, chunked)
        if chunked and not transport.is_closing():
            transport.write(b"0\r\n\r\n")
        self._chunked = False
        return keep_alive

    async def _send(self, chunk: bytes, chunked: bool) -> None:
        transport = self.transport
        if not chunk or transport is None:
            return
        if not self._writable.is_set():
            await self._writable.wait()
        if transport.is_closing():
            raise asyncio.CancelledError  # the client went away
        if chunked:
            transport.write(b"%x\r\n%s\r\n" % (len(chunk), chunk))
        else:
            transport.write(chunk)

    def _head(self, response: Response, keep_alive: bool, *, chunked: bool) -> tuple[bytes, bool]:
        parts = [status_line(response.status), self.state.date()]
        for name, value in response.headers:
            if name == b"connection":
                keep_alive = keep_alive and value.lower() != b"close"
                continue
            parts += (name, b": ", value, b"\r\n")
        if chunked:
            parts.append(b"transfer-encoding: chunked\r\n")
        if not keep_alive or self._closing:
            parts.append(b"connection: close\r\n")
        parts.append(b"\r\n")
        return b"".join(parts), keep_alive

    # -- stopping -----------------------------------------------------------------------

    def shutdown(self) -> None:
        """The server is stopping: close now if idle, else after the answers under way."""
        self._closing = True
        self._queue.clear()
        if self._task is None and self.transport is not None:
            self.transport.close()

    def abort_quietly(self) -> None:
        """The deadline passed: end the answer under way properly, then close."""
        self._aborted = True
        transport = self.transport
        if transport is not None and not transport.is_closing():
            if not self._head_written:
                transport.write(plain_answer(503, "lobbyd is stopping"))
            elif self._chunked:
                transport.write(b"0\r\n\r\n")
            transport.close()
        if self._task is not None:
            self._task.cancel()

    # -- bounds -------------------------------------------------------------------------

    def _reading(self) -> None:
        transport = self.transport
        if transport is None or transport.is_closing():
            return
        if self._paused_writing or self._paused_queue:
            transport.pause_reading()
        else:
            transport.resume_reading()

    def _idle(self) -> None:
        """API_IDLE_TIMEOUT after the last answer, with nothing sent or under way since."""
        self._idle_timer = None
        transport = self.transport
        if transport is None or transport.is_closing():
            return
        if self._task is not None or self._queue or self._in_body or self._head_bytes:
            return  # busy: armed again after the next answer
        at = self._idle_from + self.limits.idle_timeout
        if self.loop.time() < at:
            self._idle_timer = self.loop.call_at(at, self._idle)
            return
        self.limits.idle_closed += 1
        transport.close()

    def _cancel_idle_timer(self) -> None:
        if self._idle_timer is not None:
            self._idle_timer.cancel()
            self._idle_timer = None

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
        transport = self.transport
        if transport is None or transport.is_closing() or not self._head_pending:
            return
        if self._task is not None and not self._head_bytes:
            return  # an answer under way (an event stream): the client need not send
        self.limits.read_timeouts += 1
        if self._head_bytes:
            self._refuse(408, "request headers not complete in time")
        else:
            transport.close()

    def _too_large(self) -> None:
        self.limits.too_large += 1
        self._refuse(431, f"request line and headers over {self.limits.max_request_bytes} bytes")

    def _refuse(self, status: int, text: str) -> None:
        """Answer and close; with an answer under way, just close (no interleaving)."""
        self._cancel_head_timer()
        transport = self.transport
        if transport is None:
            return
        if self._task is None:
            transport.write(plain_answer(status, text))
        transport.close()

    def _peer(self) -> str:
        return self.client or "?"


__all__ = ["REFUSAL", "HttpProtocol", "ServerState", "http_date", "plain_answer", "status_line"]
