"""uvicorn in the daemon's own event loop, on a socket bound before anything else.

The socket is bound first so that a port in use fails the start at once (exit 1)
instead of after the broker connected. The daemon owns SIGTERM/SIGINT, so uvicorn's
own signal handling is switched off. With TLS_CERT and TLS_KEY (checked when the
settings were loaded) uvicorn serves HTTPS on the same socket.
"""

from __future__ import annotations

import contextlib
import logging
import socket
from collections.abc import Generator
from typing import Any

import uvicorn

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
    sock.set_inheritable(True)
    return sock


class _Server(uvicorn.Server):
    @contextlib.contextmanager
    def capture_signals(self) -> Generator[None, None, None]:
        yield  # the daemon owns SIGTERM/SIGINT


class ApiServer:
    def __init__(
        self, app: Any, sock: socket.socket, *, tls_cert: str = "", tls_key: str = ""
    ) -> None:
        self.sock = sock
        self.scheme = "https" if tls_cert else "http"
        cfg = uvicorn.Config(
            app,
            log_level="warning",
            access_log=False,
            lifespan="off",
            http="httptools",  # named, so that uvicorn imports neither h11 nor wsproto
            ws="none",
            server_header=False,
            timeout_graceful_shutdown=1,
            ssl_certfile=tls_cert or None,
            ssl_keyfile=tls_key or None,
        )
        self._server = _Server(cfg)

    async def serve(self) -> None:
        host, port = self.sock.getsockname()[:2]
        log.info("API listening on %s://%s:%d", self.scheme, host, port)
        await self._server.serve(sockets=[self.sock])

    def stop(self) -> None:
        self._server.should_exit = True
        self._server.force_exit = True
