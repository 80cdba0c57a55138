"""uvicorn in the daemon's own event loop, on a socket bound before anything else.

The socket is bound first so that a port in use fails the start at once (exit 1)
instead of after the broker connected. The daemon owns SIGTERM/SIGINT, so uvicorn's
own signal handling is switched off. With TLS_CERT and TLS_KEY (checked when the
settings were loaded) uvicorn serves HTTPS on the same socket.

Connections are accepted by `lobby.listener.Listener`, not uvicorn's
`loop.create_server`, and served by `lobby.api.limits.BoundedHttpTools`: the API's
bounds (connections, watchers, header deadline, idle timeout, header size) hold at
the protocol level, for every request.
"""

from __future__ import annotations

import contextlib
import logging
import socket
from collections.abc import Callable, Generator
from typing import TYPE_CHECKING, Any

import uvicorn

from lobby.api.limits import REFUSAL, Instant, WatcherGate, protocol_factory
from lobby.config import Settings
from lobby.listener import Listener, ListenerLimits, fd_budget_warning, open_file_limit

if TYPE_CHECKING:  # no framework imported to serve
    from starlette.types import Scope

log = logging.getLogger("lobby")


def bind(host: str, port: int) -> socket.socket:
    family, kind, proto, _, address = socket.getaddrinfo(
        host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
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


class _Server(uvicorn.Server):
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
    ) -> None:
        self.sock = sock
        self.scheme = "https" if tls_cert else "http"
        self.limits = limits or ListenerLimits()
        instant = getattr(app, "instant", None)  # the fast path's (lobby.api.fast)
        if is_watcher is not None:
            app = WatcherGate(app, self.limits, is_watcher)
        cfg = uvicorn.Config(
            app,
            log_level="warning",
            access_log=False,
            lifespan="off",
            server_header=False,
            timeout_graceful_shutdown=1,
            ssl_certfile=tls_cert or None,
            ssl_keyfile=tls_key or None,
            timeout_keep_alive=self.limits.idle_timeout,  # type: ignore[arg-type]
            ws="none",
            http="httptools",
        )
        self._server = _Server(cfg)
        self._server.limits = self.limits
        self._server.instant = instant

    async def serve(self) -> None:
        host, port = self.sock.getsockname()[:2]
        log.info("API listening on %s://%s:%d", self.scheme, host, port)
        warning = fd_budget_warning(
            self.limits.max_connections, "API_MAX_CONNECTIONS", open_file_limit()
        )
        if warning:
            log.warning("%s", warning)
        await self._server.serve(sockets=[self.sock])

    def stats(self) -> dict[str, int]:
        return self.limits.stats()

    def stop(self) -> None:
        self._server.should_exit = True
        self._server.force_exit = True
