"""What stands in front of every route, 404s and /openapi.json included.

The token check is constant-time (hmac.compare_digest); a body announced as larger
than MAX_BODY is refused before any route reads it. A few GET paths are public
(`public`): the health check and the static /docs page, which tell nothing.
"""

from __future__ import annotations

import hmac
from collections.abc import Callable
from typing import Final

from starlette.types import ASGIApp, Receive, Scope, Send

from lobby.api._responses import send_denied, send_plain

MAX_BODY: Final = 1024 * 1024


class Guard:
    """Token check and body-size limit in front of every route."""

    def __init__(
        self, app: ASGIApp, token: str, public: Callable[[str], bool] = lambda path: False
    ) -> None:
        self.app = app
        self.expected = f"Token {token}".encode() if token else b""
        self.public = public

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = dict(scope["headers"])
        if self.expected and not (scope["method"] == "GET" and self.public(scope["path"])):
            given = headers.get(b"authorization", b"")
            if not hmac.compare_digest(given, self.expected):
                await send_denied(send)
                return
        length = headers.get(b"content-length")
        if length is not None:
            try:
                too_big = int(length) > MAX_BODY
            except ValueError:
                await send_plain(send, 400, "invalid Content-Length")
                return
            if too_big:
                await send_plain(send, 413, "request body over 1 MiB")
                return
        await self.app(scope, receive, send)
