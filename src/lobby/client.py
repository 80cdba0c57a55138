"""Python client for the lobbyd HTTP API (SPEC §5, §10).

`Lobby` keeps the names and return types of the published `lobby-python` 1.0 client, so
its users switch by changing nothing; `AsyncLobby` has the same methods as coroutines.

Both twins share everything but the I/O: each method builds a `_Call` (what to send and
how to read the answer) and hands it to its client's `_run`. The client checks only what
would otherwise be sent wrongly — a newline inside a label (bodies are one label per
line), a comma inside a filter (the API splits `labels=`/`prefixes=` on commas), an empty
name — and leaves the rest (label syntax, empty resolve label) to the daemon, the
authority, whose 400 comes back as `LobbyException`.

What both share without I/O lives in lobby._calls; lobbyctl asks through lobby._http (the
standard library's http.client) and loads this module only for `watch`. No pydantic,
no lobby.model here.
"""

from __future__ import annotations

import asyncio
import ssl
import time
from collections.abc import AsyncIterator, Callable, Iterable, Iterator
from types import TracebackType
from typing import Any, Self, TypeVar

import httpx

from lobby.calls import requests as _calls
from lobby.calls.requests import (
    DEFAULT_TIMEOUT,
    PROTOCOLS,
    RECONNECT_DELAY,
    STREAM_READ_TIMEOUT,
    Answer,
    EventParser,
    LobbyException,
    _Call,
    _obj,
    by_labels,
    by_prefixes,
    checks,
    discoveries,
    discovery,
    error_message,
    prometheus,
    resolve,
    tls,
    unreachable,
    watch_params,
)

T = TypeVar("T")

__all__ = ["DEFAULT_TIMEOUT", "PROTOCOLS", "AsyncLobby", "Lobby", "LobbyException"]

# the pieces' old names here (lobby.client._EventParser, ...), for whoever used them
_EventParser = EventParser
_tls = tls
_port = _calls._port


def _answer(call: _Call[T], response: httpx.Response) -> T:
    return call.answer(_read(response))


def _read(response: httpx.Response) -> Answer:
    return Answer(
        response.status_code,
        response.reason_phrase,
        response.headers.get("content-type", ""),
        response.content,
        str(response.request.url),
    )


def _request(call: _Call[Any]) -> dict[str, Any]:
    """Keyword arguments for httpx's `request`."""
    return {
        "method": call.method,
        "url": call.path,
        "params": call.params,
        "content": call.body,
        "headers": call.headers(),
    }


def _stream_error(response: httpx.Response) -> LobbyException:
    answer = _read(response)
    return LobbyException(error_message(answer), response.status_code, answer.url)


# -- the two clients ---------------------------------------------------------------------


class _Base:
    """What both twins share: checked settings and the base URL.

    `host`, `port` (a number, or digits in a string), `token` ("" for none), `proto`
    (http or https) and, keyword-only, `timeout` in seconds and `verify` for https,
    as httpx takes it: True (the system's CAs; SSL_CERT_FILE honoured), False (no
    check at all), the path of a PEM file of CAs, or an ssl.SSLContext. ValueError
    when one is bad.
    """

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
        try:
            httpx.URL(self.base_url)
        except httpx.InvalidURL as exc:
            raise ValueError(f"invalid host {host!r}: {exc}") from None
        headers = {"Authorization": f"Token {token}"} if token else {}
        self._stream_timeout = httpx.Timeout(timeout, read=STREAM_READ_TIMEOUT)
        options: dict[str, Any] = {"base_url": self.base_url, "timeout": timeout}
        options["headers"] = headers
        if proto == "https":
            options["verify"] = tls(verify)
        self._open(options)

    def _open(self, options: dict[str, Any]) -> None:
        """Create the httpx client of this twin."""
        raise NotImplementedError

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.base_url!r})"


def _reason(exc: httpx.RequestError) -> str:
    reason = str(exc) or type(exc).__name__
    if isinstance(exc, httpx.TimeoutException):
        reason = f"timed out ({reason})" if str(exc) else "timed out"
    return reason


def _unreachable(base_url: str, call: _Call[Any], exc: httpx.RequestError) -> LobbyException:
    return unreachable(base_url, call, _reason(exc))


# watch(on_link=...): told (False, reason) once when the daemon is lost, (True, "") when back
LinkReport = Callable[[bool, str], None]


class _WatchLink:
    """When a watch lost its daemon, and when it got it back; each told once."""

    def __init__(self, report: LinkReport | None) -> None:
        self.report = report
        self.connected = False  # connected at least once
        self.lost = False

    def up(self) -> None:
        self.connected = True
        if self.lost:
            self.lost = False
            if self.report is not None:
                self.report(True, "")

    def down(self, exc: httpx.RequestError) -> None:
        if not self.lost:
            self.lost = True
            if self.report is not None:
                self.report(False, _reason(exc))


class Lobby(_Base):
    """Blocking client: `Lobby(host="localhost", port=1313, token="", proto="http")`."""

    def _open(self, options: dict[str, Any]) -> None:
        self._http = httpx.Client(**options)

    def _run(self, call: _Call[T]) -> T:
        try:
            response = self._http.request(**_request(call))
        except httpx.RequestError as exc:
            raise _unreachable(self.base_url, call, exc) from exc
        return _answer(call, response)

    def get_discovery(self) -> dict[str, Any]:
        """The packet of the node this client talks to."""
        return self._run(discovery())

    def get_discoveries(self) -> list[dict[str, Any]]:
        """Every live discovery, sorted by hostname."""
        return self._run(discoveries())

    def find_by_labels(self, labels: Iterable[str]) -> list[dict[str, Any]]:
        """Discoveries with any of `labels`, each carrying only its matching labels."""
        return self._run(by_labels(labels))

    def find_by_prefixes(self, prefixes: Iterable[str]) -> list[dict[str, Any]]:
        """Discoveries with a label starting with any of `prefixes` (matching labels only)."""
        return self._run(by_prefixes(prefixes))

    def resolve(self, label: str) -> list[str]:
        """Hostnames of the nodes that carry `label`."""
        return self._run(resolve(label))

    def prometheus(self, name: str) -> list[dict[str, Any]]:
        """Prometheus HTTP SD target groups (`Targets`, `Labels`) for service `name`."""
        return self._run(prometheus(name))

    def checks(self) -> list[dict[str, Any]]:
        """The node's health checks: labels, state, last result (GET /v1/checks)."""
        return self._run(checks())

    def add_labels(self, labels: Iterable[str]) -> str:
        """Add runtime labels to the node; returns "OK"."""
        return self._run(_calls.labels("POST", labels))

    def delete_labels(self, labels: Iterable[str]) -> str:
        """Remove runtime labels from the node; returns "OK"."""
        return self._run(_calls.labels("DELETE", labels))

    def watch(
        self,
        labels: Iterable[str] | None = None,
        prefixes: Iterable[str] | None = None,
        *,
        reconnect: bool = True,
        on_link: LinkReport | None = None,
    ) -> Iterator[dict[str, Any]]:
        """Live changes: dicts with "event" (join, update, leave, reset), "hostname",
        "labels", "index" and, for leave, "reason" (goodbye, expired, unmatched).

        Starts with a `join` for every node in the (filtered) view. After a dropped
        connection it reconnects every second and resumes where it left off (a `reset`
        and a fresh snapshot when the daemon cannot); LobbyException when the first
        connection fails or the daemon refuses. `on_link(False, reason)` is called once
        when the daemon cannot be reached any more, `on_link(True, "")` when it is back.
        """
        params = watch_params(labels, prefixes)
        parser = EventParser()
        link = _WatchLink(on_link)
        while True:
            try:
                with self._http.stream(
                    "GET",
                    "/v1/events",
                    params=params,
                    headers=parser.headers(),
                    timeout=self._stream_timeout,
                ) as response:
                    if response.status_code != 200:
                        response.read()
                        raise _stream_error(response)
                    link.up()
                    for line in response.iter_lines():
                        if (event := parser.feed(line)) is not None:
                            yield event
            except httpx.RequestError as exc:
                if not link.connected or not reconnect:
                    raise _unreachable(
                        self.base_url, _Call("GET", "/v1/events", _obj), exc
                    ) from exc
                link.down(exc)
            if not reconnect:
                return
            time.sleep(RECONNECT_DELAY)

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


class AsyncLobby(_Base):
    """`Lobby` with coroutines: `async with AsyncLobby() as lobby: await lobby.resolve(...)`."""

    def _open(self, options: dict[str, Any]) -> None:
        self._http = httpx.AsyncClient(**options)

    async def _run(self, call: _Call[T]) -> T:
        try:
            response = await self._http.request(**_request(call))
        except httpx.RequestError as exc:
            raise _unreachable(self.base_url, call, exc) from exc
        return _answer(call, response)

    async def get_discovery(self) -> dict[str, Any]:
        """The packet of the node this client talks to."""
        return await self._run(discovery())

    async def get_discoveries(self) -> list[dict[str, Any]]:
        """Every live discovery, sorted by hostname."""
        return await self._run(discoveries())

    async def find_by_labels(self, labels: Iterable[str]) -> list[dict[str, Any]]:
        """Discoveries with any of `labels`, each carrying only its matching labels."""
        return await self._run(by_labels(labels))

    async def find_by_prefixes(self, prefixes: Iterable[str]) -> list[dict[str, Any]]:
        """Discoveries with a label starting with any of `prefixes` (matching labels only)."""
        return await self._run(by_prefixes(prefixes))

    async def resolve(self, label: str) -> list[str]:
        """Hostnames of the nodes that carry `label`."""
        return await self._run(resolve(label))

    async def prometheus(self, name: str) -> list[dict[str, Any]]:
        """Prometheus HTTP SD target groups (`Targets`, `Labels`) for service `name`."""
        return await self._run(prometheus(name))

    async def checks(self) -> list[dict[str, Any]]:
        """The node's health checks: labels, state, last result (GET /v1/checks)."""
        return await self._run(checks())

    async def add_labels(self, labels: Iterable[str]) -> str:
        """Add runtime labels to the node; returns "OK"."""
        return await self._run(_calls.labels("POST", labels))

    async def delete_labels(self, labels: Iterable[str]) -> str:
        """Remove runtime labels from the node; returns "OK"."""
        return await self._run(_calls.labels("DELETE", labels))

    async def watch(
        self,
        labels: Iterable[str] | None = None,
        prefixes: Iterable[str] | None = None,
        *,
        reconnect: bool = True,
        on_link: LinkReport | None = None,
    ) -> AsyncIterator[dict[str, Any]]:
        """`Lobby.watch` as an async generator: `async for event in lobby.watch(): ...`."""
        params = watch_params(labels, prefixes)
        parser = EventParser()
        link = _WatchLink(on_link)
        while True:
            try:
                async with self._http.stream(
                    "GET",
                    "/v1/events",
                    params=params,
                    headers=parser.headers(),
                    timeout=self._stream_timeout,
                ) as response:
                    if response.status_code != 200:
                        await response.aread()
                        raise _stream_error(response)
                    link.up()
                    async for line in response.aiter_lines():
                        if (event := parser.feed(line)) is not None:
                            yield event
            except httpx.RequestError as exc:
                if not link.connected or not reconnect:
                    raise _unreachable(
                        self.base_url, _Call("GET", "/v1/events", _obj), exc
                    ) from exc
                link.down(exc)
            if not reconnect:
                return
            await asyncio.sleep(RECONNECT_DELAY)

    async def close(self) -> None:
        await self._http.aclose()

    aclose = close  # httpx's name for it

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()
