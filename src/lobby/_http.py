"""A blocking lobbyd client on the standard library's http.client: what lobbyctl uses.

It has `Lobby`'s request methods and answers exactly as `Lobby` does (the same `_Call`s
from lobby._calls, the same errors), but imports neither httpx nor asyncio, so a
`lobbyctl resolve` starts in a fraction of the time (bench/README.md, "lobbyctl").
`watch` is not here: lobbyctl's `watch` uses `lobby.client.Lobby`, loaded when it runs.
One connection is kept for the client's life (render asks several questions).
"""

from __future__ import annotations

import http.client
import socket
from collections.abc import Iterable
from types import TracebackType
from typing import TYPE_CHECKING, Any, Self, TypeVar

from lobby import _calls
from lobby._calls import DEFAULT_TIMEOUT, Answer, _Call

if TYPE_CHECKING:
    import ssl

T = TypeVar("T")


class HttpLobby:
    """`Lobby(host, port, token, proto, timeout=..., verify=...)` for one process's
    questions; ValueError for a bad setting, LobbyException for a failed request."""

    def __init__(
        self,
        host: str = "localhost",
        port: int | str = 1313,
        token: str = "",
        proto: str = "http",
        *,
        timeout: float = DEFAULT_TIMEOUT,
        verify: bool | str | ssl.SSLContext = True,
    ) -> None:
        self.host, self.port, self.proto, self.base_url = _calls.base_url(host, port, proto)
        self.token = token
        self._headers = {"Authorization": f"Token {token}"} if token else {}
        connect_to = host[1:-1] if host.startswith("[") and host.endswith("]") else host
        self._conn: http.client.HTTPConnection
        if self.proto == "https":
            self._conn = http.client.HTTPSConnection(
                connect_to, self.port, timeout=timeout, context=_context(verify)
            )
        else:
            self._conn = http.client.HTTPConnection(connect_to, self.port, timeout=timeout)

    def _run(self, call: _Call[T]) -> T:
        target = call.target()
        headers = {**self._headers, **(call.headers() or {})}
        try:
            try:
                response = self._ask(call, target, headers)
            except (http.client.RemoteDisconnected, ConnectionResetError, BrokenPipeError):
                # the kept connection was closed by lobbyd between two questions
                self._conn.close()
                response = self._ask(call, target, headers)
            body = response.read()
        except (OSError, http.client.HTTPException) as exc:
            self._conn.close()
            raise _calls.unreachable(self.base_url, call, _reason(exc)) from exc
        answer = Answer(
            response.status,
            response.reason,
            response.getheader("Content-Type", ""),
            body,
            self.base_url + target,
        )
        if response.will_close:
            self._conn.close()
        return call.answer(answer)

    def _ask(
        self, call: _Call[Any], target: str, headers: dict[str, str]
    ) -> http.client.HTTPResponse:
        self._conn.request(call.method, target, body=call.body, headers=headers)
        return self._conn.getresponse()

    def get_discovery(self) -> dict[str, Any]:
        return self._run(_calls.discovery())

    def get_discoveries(self) -> list[dict[str, Any]]:
        return self._run(_calls.discoveries())

    def find_by_labels(self, labels: Iterable[str]) -> list[dict[str, Any]]:
        return self._run(_calls.by_labels(labels))

    def find_by_prefixes(self, prefixes: Iterable[str]) -> list[dict[str, Any]]:
        return self._run(_calls.by_prefixes(prefixes))

    def resolve(self, label: str) -> list[str]:
        return self._run(_calls.resolve(label))

    def prometheus(self, name: str) -> list[dict[str, Any]]:
        return self._run(_calls.prometheus(name))

    def checks(self) -> list[dict[str, Any]]:
        return self._run(_calls.checks())

    def add_labels(self, labels: Iterable[str]) -> str:
        return self._run(_calls.labels("POST", labels))

    def delete_labels(self, labels: Iterable[str]) -> str:
        return self._run(_calls.labels("DELETE", labels))

    def close(self) -> None:
        self._conn.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.base_url!r})"


def _context(verify: bool | str | ssl.SSLContext) -> ssl.SSLContext:
    """`verify` as `Lobby` takes it, made an SSLContext (False: no check at all)."""
    import ssl

    checked = _calls.tls(verify)
    if checked is False or checked is True:
        context = ssl.create_default_context()
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
        return context
    return checked


def _reason(exc: BaseException) -> str:
    """Why a request failed, worded as httpx words it for `Lobby`."""
    if isinstance(exc, socket.timeout | TimeoutError):
        return f"timed out ({exc})" if str(exc) else "timed out"
    if isinstance(exc, socket.gaierror):
        return str(exc)
    return str(exc) or type(exc).__name__
