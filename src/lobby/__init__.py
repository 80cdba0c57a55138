"""Lobby: service discovery by labels.

`from lobby import Lobby, AsyncLobby, LobbyException` gives the Python client; the daemon
lives in `lobby.daemon` and is started by the `lobbyd` console script (`lobby.lobbyd`).

The client names are loaded on first use (PEP 562), so `import lobby` stays cheap and
the daemon never loads httpx; lobbyctl asks through lobby._http (http.client), not httpx.
"""

from __future__ import annotations

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing (lobbyctl's start-up)
if TYPE_CHECKING:
    from typing import Any

    from lobby.client import AsyncLobby, Lobby, LobbyException

__version__ = "2.0.0"
__all__ = ["AsyncLobby", "Lobby", "LobbyException", "__version__"]

_CLIENT_NAMES = frozenset({"AsyncLobby", "Lobby", "LobbyException"})


def __getattr__(name: str) -> Any:
    if name in _CLIENT_NAMES:
        from lobby import client

        return getattr(client, name)
    raise AttributeError(f"module 'lobby' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | _CLIENT_NAMES)
