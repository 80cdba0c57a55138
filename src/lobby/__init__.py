"""Lobby: service discovery by labels.

`from lobby import Lobby, LobbyException` gives the Python client; the daemon lives in
`lobby.daemon` and is started by the `lobbyd` console script.
"""

__version__ = "2.0.0"
