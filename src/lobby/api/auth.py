"""What stands in front of every route, 404s and /openapi.json included.

`TOKEN` allows every request, `READ_TOKEN` (SPEC §13.2) only GET and HEAD; when
either is set every request needs one of them (so READ_TOKEN alone makes the API
read-only). Token checks are constant-time (hmac.compare_digest), and both tokens are
always compared. A body announced as larger than MAX_BODY is refused before any
route reads it.

A few GET paths are public, since they tell nothing: the dashboard's own files
(GET /ui/...; the page asks for the token before its first data call, lobby.api.ui),
and those `public` names: the health check and the static /docs page.
"""

from __future__ import annotations

import hmac
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Final

from lobby.api._responses import send_denied, send_plain

if TYPE_CHECKING:
    from starlette.types import ASGIApp, Receive, Scope, Send
else:
    ASGIApp = Receive = Scope = Send = Any

MAX_BODY: Final = 1024 * 1024
UI_PREFIX: Final = "/ui"


READ_METHODS: Final = frozenset({"GET", "HEAD"})


def is_public(method: str, path: str) -> bool:
    """True for the dashboard's own files (lobby.api.ui): they carry no data, so they
    need no token."""
    return method in ("GET", "HEAD") and (path == UI_PREFIX or path.startswith(UI_PREFIX + "/"))


class Guard:
    """Token check and body-size limit in front of every route."""

    def __init__(
        self,
        app: ASGIApp,
        token: str,
        read_token: str = "",
        public: Callable[[str], bool] = lambda path: False,
    ) -> None:
        self.app = app
        self.expected = f"Token {token}".encode() if token else b""
        self.expected_read = f"Token {read_token}".encode() if read_token else b""
        self.protected = bool(token or read_token)
        self.public = public

    def allowed(self, given: bytes, method: str) -> bool:
        # both compared every time: the answer's timing tells nothing about either
        full = bool(self.expected) & hmac.compare_digest(given, self.expected)
        read = bool(self.expected_read) & hmac.compare_digest(given, self.expected_read)
        return full or (read and method in READ_METHODS)

    def permits(self, method: str, path: str, authorization: bytes) -> bool:
        """Whether a request with this `Authorization` header value may go on (the
        check every route gets, the fast path's included)."""
        if not self.protected or is_public(method, path) or (method == "GET" and self.public(path)):
            return True
        return self.allowed(authorization, method)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = dict(scope["headers"])
        if not self.permits(scope["method"], scope["path"], headers.get(b"authorization", b"")):
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
