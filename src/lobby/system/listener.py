"""Bounded TCP listeners: what a client may hold, for the API and any future listener.

Every socket lobbyd serves to the network goes through a `Listener` with a
`ListenerLimits`, so that no client, hostile or broken, can take more than its share:

- **Connections** (`max_connections`). Past the cap a new connection is accepted and
  closed at once, with a short refusal written first (`refusal`, e.g. an HTTP 503), so
  a client is never left hanging in the listen queue.
- **Descriptors.** When `accept` fails for lack of file descriptors (EMFILE, ENFILE)
  or kernel memory, the listener logs one line (rate-limited), stops accepting for a
  moment (0.1 s doubling to 1 s) and keeps serving the connections it has. Asyncio
  would log a traceback per failure; uvloop (libuv) would silently accept and close.
  `fd_budget_warning` says at start when `max_connections` does not fit the limit.
- **Time and size** are enforced by the protocol, which knows where a request ends:
  `read_timeout` (a request -- an HTTP request line and headers, a DNS message --
  must arrive whole within it), `idle_timeout` (a keep-alive connection with nothing
  to do), `max_request_bytes` (the request line and headers, or a message).
- **Watchers** (`max_watchers`): long-lived requests such as event streams and
  blocking queries, a lower cap inside `max_connections`.

Using it for a new listener (DNS over TCP, say):

    limits = ListenerLimits(max_connections=200, read_timeout=5, idle_timeout=10,
                            max_request_bytes=65535)
    listener = Listener(sock, lambda slot: DnsTcpProtocol(slot), limits, name="DNS")
    listener.start()      # sock is bound; start() calls listen()
    ...
    listener.close()

The factory gets the connection's `Slot`; the protocol must call `slot.release()`
in `connection_lost` (release is idempotent) and arm its own read/idle timers from
`slot.limits`. The HTTP API's protocol (`lobby.api.protocol`) is the worked example.
Counters are plain attributes of `ListenerLimits` (and `stats()`), for /v1/stats and
/metrics.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
import socket
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Final

from lobby.system.ratelimit import RateLimitedLog

log = logging.getLogger("lobby")

# accept() failures that mean "out of descriptors or kernel memory": back off and retry
_EXHAUSTED: Final = frozenset({errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM})
# accept() failures of one connection (it went away before we took it): just go on
_GONE: Final = frozenset({errno.ECONNABORTED, errno.EPROTO, errno.EPERM, errno.ETIMEDOUT})
FD_RESERVE: Final = 64  # descriptors left for the broker, label files, inotify, children
BACKOFF_START: Final = 0.1
BACKOFF_MAX: Final = 1.0
ACCEPT_BATCH: Final = 64  # connections taken per wake-up, so one listener cannot starve the loop


@dataclass
class ListenerLimits:
    """The bounds of one listener, and its counters (plain attributes, for export)."""

    max_connections: int = 1000
    read_timeout: float = 10.0
    idle_timeout: float = 5.0
    max_request_bytes: int = 32768
    max_watchers: int = 500
    # counters
    connections: int = 0  # open now
    watchers: int = 0  # long-lived requests open now
    accepted: int = 0
    refused: int = 0  # connections closed at once: over max_connections
    watchers_refused: int = 0  # long-lived requests answered "busy": over max_watchers
    accept_errors: int = 0  # accept() failed for lack of descriptors or memory
    read_timeouts: int = 0  # requests not complete within read_timeout
    idle_closed: int = 0  # keep-alive connections closed after idle_timeout
    too_large: int = 0  # requests over max_request_bytes
    bad_requests: int = 0  # requests that could not be parsed
    warn: RateLimitedLog = field(
        default_factory=lambda: RateLimitedLog(log, burst=3, every=60), repr=False
    )

    def admit(self) -> Slot | None:
        """A slot for a new connection, or None when the listener is full."""
        if self.connections >= self.max_connections:
            self.refused += 1
            return None
        self.connections += 1
        self.accepted += 1
        return Slot(self)

    def acquire_watcher(self) -> bool:
        if self.watchers >= self.max_watchers:
            self.watchers_refused += 1
            return False
        self.watchers += 1
        return True

    def release_watcher(self) -> None:
        self.watchers -= 1

    def stats(self) -> dict[str, int]:
        return {
            "connections": self.connections,
            "max_connections": self.max_connections,
            "watchers": self.watchers,
            "max_watchers": self.max_watchers,
            "accepted": self.accepted,
            "refused": self.refused,
            "watchers_refused": self.watchers_refused,
            "accept_errors": self.accept_errors,
            "read_timeouts": self.read_timeouts,
            "idle_closed": self.idle_closed,
            "too_large": self.too_large,
            "bad_requests": self.bad_requests,
        }


class Slot:
    """One admitted connection's place under `max_connections`."""

    __slots__ = ("_held", "limits")

    def __init__(self, limits: ListenerLimits) -> None:
        self.limits = limits
        self._held = True

    def release(self) -> None:
        """Give the place back; safe to call more than once."""
        if self._held:
            self._held = False
            self.limits.connections -= 1


def open_file_limit() -> int | None:
    """The soft RLIMIT_NOFILE, or None where there is none (or it is unlimited)."""
    try:
        import resource
    except ImportError:  # pragma: no cover - not Unix
        return None
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    return None if soft == resource.RLIM_INFINITY else soft


def fd_budget_warning(max_connections: int, setting: str, limit: int | None) -> str | None:
    """A warning when `max_connections` plus a reserve does not fit the descriptor limit."""
    if limit is None or max_connections + FD_RESERVE <= limit:
        return None
    return (
        f"{setting}={max_connections} does not fit the open file limit of {limit} "
        f"(with {FD_RESERVE} kept for everything else): past about {max(limit - FD_RESERVE, 0)} "
        "connections, accept will fail and new clients wait; lower it or raise the limit"
    )


class Listener:
    """Accepts connections on a bound socket for `factory`, within `limits`.

    It replaces `loop.create_server` (whose accept loop gives no say over refusing and
    running out of descriptors) and offers the same `close()` / `wait_closed()`.
    """

    def __init__(
        self,
        sock: socket.socket,
        factory: Callable[[Slot], asyncio.Protocol],
        limits: ListenerLimits,
        *,
        name: str,
        refusal: bytes = b"",
        backlog: int = 2048,
        ssl: Any = None,
    ) -> None:
        """`refusal`: written to a connection refused at the cap (plain TCP only);
        `ssl`: an SSLContext, whose handshake must end within `limits.read_timeout`."""
        self.sock = sock
        self.factory = factory
        self.limits = limits
        self.name = name
        self.refusal = refusal
        self.backlog = backlog
        self.ssl = ssl
        self._loop: asyncio.AbstractEventLoop | None = None
        self._reading = False
        self._closed = False
        self._delay = BACKOFF_START
        self._retry: asyncio.TimerHandle | None = None
        self._pending: set[asyncio.Task[Any]] = set()
        self._accept_log = RateLimitedLog(log, burst=1, every=60)
        self._refuse_log = RateLimitedLog(log, burst=1, every=60)

    def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        self.sock.setblocking(False)
        self.sock.listen(self.backlog)
        self._resume()

    def is_serving(self) -> bool:
        return self._loop is not None and not self._closed

    def close(self) -> None:
        """Stop accepting (the socket stays open; its owner closes it)."""
        self._closed = True
        self._pause()
        if self._retry is not None:
            self._retry.cancel()
            self._retry = None

    def flush_logs(self) -> None:
        """Log the summaries of floods that stopped (call now and then)."""
        self._accept_log.flush()
        self._refuse_log.flush()
        self.limits.warn.flush()

    async def wait_closed(self) -> None:
        if self._pending:
            await asyncio.wait(self._pending, timeout=1)

    # -- accepting ----------------------------------------------------------------------

    def _resume(self) -> None:
        self._retry = None
        if self._closed or self._reading or self._loop is None:
            return
        self._loop.add_reader(self.sock.fileno(), self._accept)
        self._reading = True

    def _pause(self) -> None:
        if self._reading and self._loop is not None:
            self._loop.remove_reader(self.sock.fileno())
        self._reading = False

    def _accept(self) -> None:
        for _ in range(ACCEPT_BATCH):
            try:
                conn, _ = self.sock.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:
                if exc.errno in _GONE:
                    continue
                self._back_off(exc)
                return
            self._delay = BACKOFF_START
            slot = self.limits.admit()
            if slot is None:
                self._refuse(conn)
            else:
                self._serve(conn, slot)

    def _back_off(self, exc: OSError) -> None:
        """Out of descriptors (or another accept failure): stop accepting for a moment."""
        assert self._loop is not None
        if exc.errno in _EXHAUSTED:
            self.limits.accept_errors += 1
        self._accept_log(
            logging.WARNING,
            "%s: cannot accept connections: %s; %d open, retrying every %.1f s at most",
            self.name,
            exc.strerror or exc,
            self.limits.connections,
            BACKOFF_MAX,
        )
        self._pause()
        self._retry = self._loop.call_later(self._delay, self._resume)
        self._delay = min(self._delay * 2, BACKOFF_MAX)

    def _refuse(self, conn: socket.socket) -> None:
        """Over the cap: answer at once and close, never leave the client hanging."""
        self._refuse_log(
            logging.WARNING,
            "%s: %d connections open, the most allowed: refusing new ones",
            self.name,
            self.limits.connections,
        )
        with contextlib.suppress(OSError):
            conn.setblocking(False)
            # empty what the client already sent, so close() sends FIN, not RST, and the
            # client gets to read the refusal
            with contextlib.suppress(BlockingIOError):
                conn.recv(65536)
            if self.refusal and self.ssl is None:
                conn.send(self.refusal)
        conn.close()

    def _serve(self, conn: socket.socket, slot: Slot) -> None:
        assert self._loop is not None
        try:
            conn.setblocking(False)
        except OSError:  # pragma: no cover - the client is already gone
            slot.release()
            conn.close()
            return
        tls: dict[str, Any] = {}
        if self.ssl is not None:
            tls = {"ssl": self.ssl, "ssl_handshake_timeout": self.limits.read_timeout}
        task = self._loop.create_task(
            self._loop.connect_accepted_socket(lambda: self.factory(slot), conn, **tls)
        )
        self._pending.add(task)
        task.add_done_callback(lambda t: self._connected(t, conn, slot))

    def _connected(self, task: asyncio.Task[Any], conn: socket.socket, slot: Slot) -> None:
        self._pending.discard(task)
        if task.cancelled() or task.exception() is not None:
            if not task.cancelled():
                log.debug("%s: connection failed to start: %r", self.name, task.exception())
            slot.release()
            with contextlib.suppress(OSError):
                conn.close()


__all__ = [
    "Listener",
    "ListenerLimits",
    "Slot",
    "fd_budget_warning",
    "open_file_limit",
]
