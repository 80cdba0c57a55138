"""The HTTP layer: routes (`app`), the token guard (`auth`), the change feed's HTTP
faces (`events`), the server (`server`). Importing it imports FastAPI, so the daemon
imports it only when the API is enabled.
"""

from __future__ import annotations

from lobby.api.app import create_app

__all__ = ["create_app"]
