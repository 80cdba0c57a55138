"""uvicorn in the daemon's own event loop, on a socket bound before anything else.

The socket is bound first so that a port in use fails the start at once (exit 1)
instead of after the broker connected. The daemon owns SIGTERM/SIGINT, so uvicorn's
own signal handling is switched off, and so is its logging setup (`log_config=None`):
its lines go through lobbyd's formatter (lobby.logs). With TLS_CERT and TLS_KEY
(checked when the settings were loaded) uvicorn serves HTTPS on the same socket.

Connections are accepted by `lobby.listener.Listener`, not uvicorn's
`loop.create_server`, and served by `lobby.api.limits.BoundedHttpTools`: the API's
bounds (connections, watchers, header deadline, idle timeout, header size) hold at
the protocol level, for every request.

Stopping is quiet (SPEC §14.2): the daemon first closes the change feed, which ends
every event stream and answers every held blocking query, so each request finishes
normally; `stop` then lets uvicorn close the connections. Whatever is still running
at the deadline (a client that stopped reading) is ended by `_Quiet`, which finishes
its answer instead of letting a cancellation reach uvicorn as "Exception in ASGI
application" with a traceback.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
from collections.abc import Callable, Generator
from typing import TYPE_CHECKING, Any, Final

from lobby.api._responses import messages
from lobby.api._uvicorn import Config, Server
from lobby.api.limits import REFUSAL, Instant, WatcherGate, protocol_factory
from lobby.config import Settings
from lobby.listener import Listener, ListenerLimits, fd_budget_warning, open_file_limit

if TYPE_CHECKING:  # no framework imported to serve
    from starlette.types import ASGIApp, Message, Receive, Scope, Send

log = logging.getLogger("lobby")

# uvicorn's own deadline, after which it cancels requests with an ERROR line; ours
# (the `timeout` of ApiServer.stop) always comes first
_UVICORN_GRACE: Final = 30


def bind(host: str, port: int) -> socket.socket:
    # an ASCII name as bytes: a str goes through the "idna" codec, whose import
    # (stringprep, unicodedata) costs 0.4 MiB of RSS for nothing
    name: str | bytes = host.encode("ascii") if host.isascii() else host
    family, kind, proto, _, address = socket.getaddrinfo(
        name, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
    )[0]
    sock = socket.socket(family, kind, proto)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind(address)
    except OSError:
        sock.close()
        raise
    return sock  # not inheritable: a child (CALLBACK, nats-server) must not hold the port


def api_limits(s: Settings) -> ListenerLimits:
    """The API listener's bounds, from the API_* settings."""
    return ListenerLimits(
        max_connections=s.api_max_connections,
        read_timeout=s.api_header_timeout,
        idle_timeout=s.api_idle_timeout,
        max_request_bytes=s.api_max_header_bytes,
        max_watchers=s.api_max_watchers,
    )


class _Server(Server):
    limits: ListenerLimits
    instant: Instant | None = None

    @contextlib.contextmanager
    def capture_signals(self) -> Generator[None, None, None]:
        yield  # the daemon owns SIGTERM/SIGINT

    async def on_tick(self, counter: int) -> bool:
        if counter % 50 == 0:  # every 5 s
            for listener in self.servers:
                listener.flush_logs()  # type: ignore[attr-defined]
        return await super().on_tick(counter)

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        """uvicorn's startup with our own accept loop (lobby.listener.Listener)."""
        await self.lifespan.startup()
        make = protocol_factory(self.config, self.server_state, self.lifespan.state, self.instant)
        ssl = self.config.ssl  # None unless uvicorn was given a certificate
        listeners = [
            Listener(sock, make, self.limits, name="API", refusal=REFUSAL, ssl=ssl)
            for sock in sockets or []
        ]
        for listener in listeners:
            listener.start()
        # uvicorn's shutdown only calls close() and wait_closed() on these
        self.servers = listeners  # type: ignore[assignment]
        self.started = True


class _Quiet:
    """Ends a request cancelled at shutdown with a complete answer, without a traceback."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app
        self.stopping = False

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        started = complete = False

        async def tracked(message: Message) -> None:
            nonlocal started, complete
            if message["type"] == "http.response.start":
                started = True
            elif message["type"] == "http.response.body" and not message.get("more_body"):
                complete = True
            await send(message)

        try:
            await self.app(scope, receive, tracked)
        except asyncio.CancelledError:
            if not self.stopping or scope["type"] != "http" or complete:
                raise
            ending: tuple[Message, ...] = (
                ({"type": "http.response.body", "body": b"", "more_body": False},)
                if started
                else messages(503, b"lobbyd is stopping\n")
            )
            with contextlib.suppress(Exception, asyncio.CancelledError):
                for message in ending:
                    async with asyncio.timeout(0.2):
                        await send(message)


class ApiServer:
    def __init__(
        self,
        app: Any,
        sock: socket.socket,
        limits: ListenerLimits | None = None,
        is_watcher: Callable[[Scope], bool] | None = None,
        *,
        tls_cert: str = "",
        tls_key: str = "",
        access_log: bool = False,
    ) -> None:
        self.sock = sock
        self.scheme = "https" if tls_cert else "http"
        self.limits = limits or ListenerLimits()
        instant = app if hasattr(app, "not_allowed") else None  # lobby.api.fast.FastApp
        if is_watcher is not None:
            app = WatcherGate(app, self.limits, is_watcher)
        self._app = _Quiet(app)
        cfg = Config(
            self._app,
            log_config=None,  # lobby.logs set up the loggers
            log_level=None,
            access_log=access_log,
            lifespan="off",
            server_header=False,
            timeout_graceful_shutdown=_UVICORN_GRACE,
            ssl_certfile=tls_cert or None,
            ssl_keyfile=tls_key or None,
            timeout_keep_alive=self.limits.idle_timeout,  # type: ignore[arg-type]
            ws="none",
            http="httptools",
        )
        self._server = _Server(cfg)
        self._server.limits = self.limits
        self._server.instant = instant
        self._done = asyncio.Event()

    @classmethod
    def from_settings(cls, s: Settings, app: Any, sock: socket.socket) -> ApiServer:
        from lobby.api.blocking import is_watcher

        return cls(
            app,
            sock,
            api_limits(s),
            is_watcher,
            tls_cert=s.tls_cert,
            tls_key=s.tls_key,
            access_log=s.access_log,
        )

    async def serve(self) -> None:
        host, port = self.sock.getsockname()[:2]
        log.info("API listening on %s://%s:%d", self.scheme, host, port)
        warning = fd_budget_warning(
            self.limits.max_connections, "API_MAX_CONNECTIONS", open_file_limit()
        )
        if warning:
            log.warning("%s", warning)
        try:
            await self._server.serve(sockets=[self.sock])
        finally:
            self._done.set()

    def stats(self) -> dict[str, int]:
        return self.limits.stats()

    async def stop(self, timeout: float) -> None:
        """Stop accepting, let the open requests finish for up to `timeout` s, then end them."""
        self._app.stopping = True
        self._server.should_exit = True
        if self._server.started:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(timeout):  # not wait_for: see lobby.feed
                    await self._done.wait()
        self._server.force_exit = True
