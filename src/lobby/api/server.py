"""uvicorn in the daemon's own event loop, on a socket bound before anything else.

The socket is bound first so that a port in use fails the start at once (exit 1)
instead of after the broker connected. The daemon owns SIGTERM/SIGINT, so uvicorn's
own signal handling is switched off, and so is its logging setup (`log_config=None`):
its lines go through lobbyd's formatter (lobby.logs).

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
from collections.abc import Generator
from typing import Any, Final

import uvicorn
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from lobby.api._responses import messages

log = logging.getLogger("lobby")

# uvicorn's own deadline, after which it cancels requests with an ERROR line; ours
# (the `timeout` of ApiServer.stop) always comes first
_UVICORN_GRACE: Final = 30


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
                    await asyncio.wait_for(send(message), 0.2)


class ApiServer:
    def __init__(self, app: Any, sock: socket.socket, *, access_log: bool = False) -> None:
        self.sock = sock
        self._app = _Quiet(app)
        cfg = uvicorn.Config(
            self._app,
            log_config=None,  # lobby.logs set up the loggers
            log_level=None,
            access_log=access_log,
            lifespan="off",
            server_header=False,
            timeout_graceful_shutdown=_UVICORN_GRACE,
        )
        self._server = _Server(cfg)
        self._done = asyncio.Event()

    async def serve(self) -> None:
        log.info("API listening on http://%s:%d", *self.sock.getsockname()[:2])
        try:
            await self._server.serve(sockets=[self.sock])
        finally:
            self._done.set()

    async def stop(self, timeout: float) -> None:
        """Stop accepting, let the open requests finish for up to `timeout` s, then end them."""
        self._app.stopping = True
        self._server.should_exit = True
        if self._server.started:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._done.wait(), timeout)
        self._server.force_exit = True
