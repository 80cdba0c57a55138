"""What stands in front of every route, 404s and /openapi.json included.

The token check is constant-time (hmac.compare_digest); a body announced as larger
than MAX_BODY is refused before any route reads it.
"""

from __future__ import annotations

import hmac
from typing import TYPE_CHECKING, Any, Final

from lobby.api._responses import send_denied, send_plain

if TYPE_CHECKING:
    from starlette.types import ASGIApp, Receive, Scope, Send
else:
    ASGIApp = Receive = Scope = Send = Any

MAX_BODY: Final = 1024 * 1024


class Guard:
    """Token check and body-size limit in front of every route."""

    def __init__(self, app: ASGIApp, token: str) -> None:
        self.app = app
        self.expected = f"Token {token}".encode() if token else b""

    def permits(self, method: str, authorization: bytes) -> bool:
        """Whether a request with this `Authorization` header value may go on."""
        if not self.expected:
            return True
        return hmac.compare_digest(authorization, self.expected)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = dict(scope["headers"])
        if not self.permits(scope["method"], headers.get(b"authorization", b"")):
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
