"""The API server in the daemon's own event loop, on a socket bound before anything else.

The socket is bound first so that a port in use fails the start at once (exit 1)
instead of after the broker connected. Connections are accepted by
`lobby.system.listener.Listener` and served by `lobby.api.protocol.HttpProtocol`, which hands
every request to `lobby.api.dispatch.Api`: the API's bounds (connections, watchers,
header deadline, idle timeout, header size) hold for every request. With TLS_CERT and
TLS_KEY (checked when the settings were loaded) the same socket serves HTTPS.

Stopping is quiet (SPEC §14.2): the daemon first closes the change feed, which ends
every event stream and answers every held blocking query, so each request finishes
normally; `stop` then closes the connections, each after its answer. Whatever is
still running at the deadline (a client that stopped reading) is ended properly: a
streamed body gets its last chunk, an answer not begun a 503; nothing logs a traceback.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import ssl

from lobby.api.dispatch import Api
from lobby.api.protocol import REFUSAL, HttpProtocol, ServerState
from lobby.config import Settings
from lobby.system.listener import Listener, ListenerLimits, Slot, fd_budget_warning, open_file_limit

log = logging.getLogger("lobby")


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


class ApiServer:
    """The API's listener and the connections it serves (lobby.api.protocol)."""

    def __init__(
        self,
        api: Api,
        sock: socket.socket,
        limits: ListenerLimits | None = None,
        *,
        tls_cert: str = "",
        tls_key: str = "",
    ) -> None:
        self.api = api
        self.sock = sock
        self.scheme = "https" if tls_cert else "http"
        self.limits = limits if limits is not None else api.limits
        self.ssl = tls_context(tls_cert, tls_key) if tls_cert else None
        self.state = ServerState(api)
        self.listener: Listener | None = None
        self._stop = asyncio.Event()

    @classmethod
    def from_settings(cls, s: Settings, api: Api, sock: socket.socket) -> ApiServer:
        return cls(api, sock, api.limits, tls_cert=s.tls_cert, tls_key=s.tls_key)

    @property
    def started(self) -> bool:
        return self.listener is not None

    async def serve(self) -> None:
        """Accept and serve until `stop`."""
        host, port = self.sock.getsockname()[:2]
        warning = fd_budget_warning(
            self.limits.max_connections, "API_MAX_CONNECTIONS", open_file_limit()
        )
        if warning:
            log.warning("%s", warning)
        state = self.state

        def make(slot: Slot) -> asyncio.Protocol:
            return HttpProtocol(state, slot)

        listener = Listener(self.sock, make, self.limits, name="API", refusal=REFUSAL, ssl=self.ssl)
        listener.start()
        self.listener = listener
        log.info("API listening on %s://%s:%d", self.scheme, host, port)
        try:
            while not self._stop.is_set():
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(5):
                        await self._stop.wait()
                listener.flush_logs()  # summaries of floods that stopped
        finally:
            listener.close()

    def stats(self) -> dict[str, int]:
        return self.limits.stats()

    async def stop(self, timeout: float) -> None:
        """Stop accepting, let the open requests finish for up to `timeout` s, then end
        them (lobby.api.protocol.ServerState.stop)."""
        self._stop.set()
        if self.listener is not None:
            self.listener.close()
            await self.listener.wait_closed()
        await self.state.stop(timeout)


def tls_context(cert: str, key: str) -> ssl.SSLContext:
    """The API's HTTPS context (the files were checked when the settings were loaded)."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert, key)
    return context
