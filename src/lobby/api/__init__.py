"""The HTTP layer: the fast path (`fast`), routes (`app`), the token guard (`auth`),
blocking queries (`blocking`), the change feed's HTTP faces (`events`), the server
(`server`). Only `app` and `events` import FastAPI: `create_app` is imported from
`app` when it is first asked for, so importing this package imports no framework.
"""

from __future__ import annotations

from typing import Any

__all__ = ["create_app"]


def __getattr__(name: str) -> Any:
    if name == "create_app":
        from lobby.api.app import create_app

        return create_app
    raise AttributeError(f"module 'lobby.api' has no attribute {name!r}")
