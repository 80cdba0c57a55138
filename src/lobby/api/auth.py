"""The token check, applied to every request by `lobby.api.dispatch` (404s and
/openapi.json included) except the routes the table marks public.

`TOKEN` allows every request, `READ_TOKEN` (SPEC §13.2) only GET and HEAD; when
either is set every request needs one of them (so READ_TOKEN alone makes the API
read-only). Token checks are constant-time (hmac.compare_digest), and both tokens are
always compared. Public routes (the health check, /docs and its assets, the
dashboard's own files under /ui) tell nothing about the cluster.
"""

from __future__ import annotations

import hmac
from typing import Final

READ_METHODS: Final = frozenset({"GET", "HEAD"})


class Guard:
    """TOKEN and READ_TOKEN."""

    def __init__(self, token: str, read_token: str = "") -> None:
        self.expected = f"Token {token}".encode() if token else b""
        self.expected_read = f"Token {read_token}".encode() if read_token else b""
        self.protected = bool(token or read_token)

    def allowed(self, given: bytes, method: str) -> bool:
        # both compared every time: the answer's timing tells nothing about either
        full = bool(self.expected) & hmac.compare_digest(given, self.expected)
        read = bool(self.expected_read) & hmac.compare_digest(given, self.expected_read)
        return full or (read and method in READ_METHODS)
