"""Python client for the lobbyd HTTP API (SPEC §5, §10).

`Lobby` keeps the names and return types of the published `lobby-python` 1.0 client, so
its users switch by changing nothing; `AsyncLobby` has the same methods as coroutines.

Both twins share everything but the I/O: each method builds a `_Call` (what to send and
how to read the answer) and hands it to its client's `_run`. The client checks only what
would otherwise be sent wrongly — a newline inside a label (bodies are one label per
line), a comma inside a filter (the API splits `labels=`/`prefixes=` on commas), an empty
name — and leaves the rest (label syntax, empty resolve label) to the daemon, the
authority, whose 400 comes back as `LobbyException`.

This module must stay light: lobbyctl imports it, so no pydantic, no lobby.model.
"""

from __future__ import annotations

import asyncio
import json
import ssl
import time
from collections.abc import AsyncIterator, Callable, Iterable, Iterator
from dataclasses import dataclass
from types import TracebackType
from typing import Any, Generic, Self, TypeVar
from urllib.parse import quote

import httpx

T = TypeVar("T")

DEFAULT_TIMEOUT = 10.0
PROTOCOLS = ("http", "https")


class LobbyException(Exception):
    """lobbyd answered something other than 200, or could not be reached.

    `str(exc)` is the daemon's message ("access denied", "query parameter label is
    required", ...) or the reason the connection failed; `status_code` is the HTTP
    status, None when no answer came; `url` is what was requested.
    """

    def __init__(self, message: str, status_code: int | None = None, url: str = "") -> None:
        super().__init__(message)
        self.message = message
        self.status_code = status_code
        self.url = url


# -- what to send and how to read the answer (shared by both twins) ---------------------


@dataclass(frozen=True, slots=True)
class _Call(Generic[T]):
    method: str
    path: str
    read: Callable[[Any], T]  # turns the decoded answer into the method's result
    params: dict[str, str] | None = None
    body: bytes | None = None
    plain: bool = False  # the answer is text ("OK"), not JSON

    def request(self) -> dict[str, Any]:
        """Keyword arguments for httpx's `request`."""
        headers = {"Content-Type": "text/plain; charset=utf-8"} if self.body is not None else None
        return {
            "method": self.method,
            "url": self.path,
            "params": self.params,
            "content": self.body,
            "headers": headers,
        }

    def answer(self, response: httpx.Response) -> T:
        url = str(response.request.url)
        if response.status_code != 200:
            raise LobbyException(_error_message(response), response.status_code, url)
        if self.plain:
            return self.read(response.text)
        try:
            value = response.json()
        except ValueError:
            shown = response.text[:60]
            raise LobbyException(f"the answer is not JSON: {shown!r}", 200, url) from None
        try:
            return self.read(value)
        except TypeError as exc:
            raise LobbyException(f"unexpected answer: {exc}", response.status_code, url) from None


def _error_message(response: httpx.Response) -> str:
    """The daemon's message: plain text, or `message` of a JSON body (the 403)."""
    text = response.text.strip()
    if response.headers.get("content-type", "").startswith("application/json"):
        try:
            doc = response.json()
        except ValueError:
            doc = None
        if isinstance(doc, dict) and isinstance(doc.get("message"), str):
            return str(doc["message"])
    return text or response.reason_phrase or f"HTTP {response.status_code}"


def _obj(value: Any) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise TypeError(f"expected a JSON object, got {type(value).__name__}")
    return value


def _objs(value: Any) -> list[dict[str, Any]]:
    if not isinstance(value, list) or not all(isinstance(v, dict) for v in value):
        raise TypeError("expected a JSON list of objects")
    return value


def _strs(value: Any) -> list[str]:
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise TypeError("expected a JSON list of strings")
    return value


def _text(value: Any) -> str:
    return str(value)


def _as_list(what: str, items: Iterable[str]) -> list[str]:
    # A bare string is iterable too: "service:web" would become 11 one-letter labels.
    if isinstance(items, str):
        raise TypeError(f"{what} must be a list of strings, not a string")
    out = list(items)
    for item in out:
        if not isinstance(item, str):
            raise TypeError(f"{what} must be strings, got {item!r}")
    return out


def _label_body(labels: Iterable[str]) -> bytes:
    """One label per line, as POST/DELETE /v1/labels expect."""
    items = _as_list("labels", labels)
    for label in items:
        if "\n" in label or "\r" in label:
            raise ValueError(f"label {label!r} contains a line break")
        if not label.strip():
            raise ValueError("a label is empty")
    return "".join(f"{label}\n" for label in items).encode()


def _filter(what: str, items: Iterable[str]) -> str:
    """`a,b` for `labels=`/`prefixes=`; the API splits on commas, so none may hold one."""
    values = _as_list(what, items)
    if not values:
        raise ValueError(f"give at least one of the {what}")
    for value in values:
        if not value:
            raise ValueError(f"empty string among the {what}")
        if "," in value:
            raise ValueError(f"{value!r} contains a comma: the API cannot filter on it")
    return ",".join(values)


def _discovery() -> _Call[dict[str, Any]]:
    return _Call("GET", "/v1/discovery", _obj)


def _discoveries(params: dict[str, str] | None = None) -> _Call[list[dict[str, Any]]]:
    return _Call("GET", "/v1/discoveries", _objs, params)


def _resolve(label: str) -> _Call[list[str]]:
    return _Call("GET", "/v1/resolve", _strs, {"label": label})


def _prometheus(name: str) -> _Call[list[dict[str, Any]]]:
    if not name:
        raise ValueError("the Prometheus service name is empty")
    return _Call("GET", f"/v1/prometheus/{quote(name, safe='')}", _objs)


def _checks() -> _Call[list[dict[str, Any]]]:
    return _Call("GET", "/v1/checks", _objs)


def _labels(method: str, labels: Iterable[str]) -> _Call[str]:
    return _Call(method, "/v1/labels", _text, body=_label_body(labels), plain=True)


# -- the event stream (GET /v1/events) --------------------------------------------------

# A stream is quiet between events except for a comment every 15 s; a minute without
# even that means the connection is dead.
_STREAM_READ_TIMEOUT = 60.0
_RECONNECT_DELAY = 1.0


def _watch_params(
    labels: Iterable[str] | None, prefixes: Iterable[str] | None
) -> dict[str, str] | None:
    if labels is not None:
        return {"labels": _filter("labels", labels)}
    if prefixes is not None:
        return {"prefixes": _filter("prefixes", prefixes)}
    return None


class _EventParser:
    """Server-Sent Events, line by line; remembers the last id to resume from."""

    def __init__(self) -> None:
        self.last_id = ""
        self._kind = ""
        self._data: list[str] = []

    def headers(self) -> dict[str, str]:
        return {"Last-Event-ID": self.last_id} if self.last_id else {}

    def feed(self, line: str) -> dict[str, Any] | None:
        """A finished event (a dict with its name under "event"), or None."""
        if not line:
            kind, data = self._kind, self._data
            self._kind, self._data = "", []
            if not kind and not data:
                return None
            try:
                event = json.loads("\n".join(data)) if data else {}
            except ValueError:
                event = {}
            if not isinstance(event, dict):
                event = {"data": event}
            event["event"] = kind or "message"
            return event
        if line.startswith(":"):
            return None  # comment: the server's keep-alive
        name, _, value = line.partition(":")
        value = value.removeprefix(" ")
        if name == "event":
            self._kind = value
        elif name == "data":
            self._data.append(value)
        elif name == "id":
            self.last_id = value
        return None


def _stream_error(response: httpx.Response) -> LobbyException:
    return LobbyException(_error_message(response), response.status_code, str(response.request.url))


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
        proto = str(proto).lower()
        if proto not in PROTOCOLS:
            raise ValueError(f"proto must be http or https, not {proto!r}")
        self.port = _port(port)
        if not host or any(c.isspace() or c in "/?#@" for c in host):
            raise ValueError(f"invalid host {host!r}")
        self.host = host
        self.proto = proto
        self.token = token
        # A bare IPv6 address needs brackets in a URL.
        shown = f"[{host}]" if ":" in host and not host.startswith("[") else host
        self.base_url = f"{proto}://{shown}:{self.port}"
        try:
            httpx.URL(self.base_url)
        except httpx.InvalidURL as exc:
            raise ValueError(f"invalid host {host!r}: {exc}") from None
        headers = {"Authorization": f"Token {token}"} if token else {}
        self._stream_timeout = httpx.Timeout(timeout, read=_STREAM_READ_TIMEOUT)
        options: dict[str, Any] = {"base_url": self.base_url, "timeout": timeout}
        options["headers"] = headers
        if proto == "https":
            options["verify"] = _tls(verify)
        self._open(options)

    def _open(self, options: dict[str, Any]) -> None:
        """Create the httpx client of this twin."""
        raise NotImplementedError

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.base_url!r})"


def _tls(verify: bool | str | ssl.SSLContext) -> bool | ssl.SSLContext:
    """httpx's `verify`, with True meaning the system's CAs (httpx alone would use
    certifi's bundle) and a path meaning that PEM file of CAs."""
    if isinstance(verify, ssl.SSLContext) or verify is False:
        return verify
    if verify is True:
        return ssl.create_default_context()
    if isinstance(verify, str):
        try:
            return ssl.create_default_context(cafile=verify)
        except (OSError, ssl.SSLError) as exc:
            reason = getattr(exc, "strerror", None) or getattr(exc, "reason", None) or exc
            raise ValueError(f"cannot use {verify!r} as CA file: {reason}") from None
    raise ValueError(f"verify must be a bool, a CA file path or an SSLContext, not {verify!r}")


def _port(port: int | str) -> int:
    # lobby-python built its URL with string formatting, so a port from os.environ worked.
    if isinstance(port, str) and port.strip().isdigit():
        port = int(port)
    if isinstance(port, bool) or not isinstance(port, int) or not 1 <= port <= 65535:
        raise ValueError(f"port must be a number from 1 to 65535, not {port!r}")
    return port


def _reason(exc: httpx.RequestError) -> str:
    reason = str(exc) or type(exc).__name__
    if isinstance(exc, httpx.TimeoutException):
        reason = f"timed out ({reason})" if str(exc) else "timed out"
    return reason


def _unreachable(base_url: str, call: _Call[Any], exc: httpx.RequestError) -> LobbyException:
    message = f"cannot reach lobbyd at {base_url}: {_reason(exc)}"
    return LobbyException(message, None, base_url + call.path)


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
            response = self._http.request(**call.request())
        except httpx.RequestError as exc:
            raise _unreachable(self.base_url, call, exc) from exc
        return call.answer(response)

    def get_discovery(self) -> dict[str, Any]:
        """The packet of the node this client talks to."""
        return self._run(_discovery())

    def get_discoveries(self) -> list[dict[str, Any]]:
        """Every live discovery, sorted by hostname."""
        return self._run(_discoveries())

    def find_by_labels(self, labels: Iterable[str]) -> list[dict[str, Any]]:
        """Discoveries with any of `labels`, each carrying only its matching labels."""
        return self._run(_discoveries({"labels": _filter("labels", labels)}))

    def find_by_prefixes(self, prefixes: Iterable[str]) -> list[dict[str, Any]]:
        """Discoveries with a label starting with any of `prefixes` (matching labels only)."""
        return self._run(_discoveries({"prefixes": _filter("prefixes", prefixes)}))

    def resolve(self, label: str) -> list[str]:
        """Hostnames of the nodes that carry `label`."""
        return self._run(_resolve(label))

    def prometheus(self, name: str) -> list[dict[str, Any]]:
        """Prometheus HTTP SD target groups (`Targets`, `Labels`) for service `name`."""
        return self._run(_prometheus(name))

    def checks(self) -> list[dict[str, Any]]:
        """The node's health checks: labels, state, last result (GET /v1/checks)."""
        return self._run(_checks())

    def add_labels(self, labels: Iterable[str]) -> str:
        """Add runtime labels to the node; returns "OK"."""
        return self._run(_labels("POST", labels))

    def delete_labels(self, labels: Iterable[str]) -> str:
        """Remove runtime labels from the node; returns "OK"."""
        return self._run(_labels("DELETE", labels))

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
        params = _watch_params(labels, prefixes)
        parser = _EventParser()
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
            time.sleep(_RECONNECT_DELAY)

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
            response = await self._http.request(**call.request())
        except httpx.RequestError as exc:
            raise _unreachable(self.base_url, call, exc) from exc
        return call.answer(response)

    async def get_discovery(self) -> dict[str, Any]:
        """The packet of the node this client talks to."""
        return await self._run(_discovery())

    async def get_discoveries(self) -> list[dict[str, Any]]:
        """Every live discovery, sorted by hostname."""
        return await self._run(_discoveries())

    async def find_by_labels(self, labels: Iterable[str]) -> list[dict[str, Any]]:
        """Discoveries with any of `labels`, each carrying only its matching labels."""
        return await self._run(_discoveries({"labels": _filter("labels", labels)}))

    async def find_by_prefixes(self, prefixes: Iterable[str]) -> list[dict[str, Any]]:
        """Discoveries with a label starting with any of `prefixes` (matching labels only)."""
        return await self._run(_discoveries({"prefixes": _filter("prefixes", prefixes)}))

    async def resolve(self, label: str) -> list[str]:
        """Hostnames of the nodes that carry `label`."""
        return await self._run(_resolve(label))

    async def prometheus(self, name: str) -> list[dict[str, Any]]:
        """Prometheus HTTP SD target groups (`Targets`, `Labels`) for service `name`."""
        return await self._run(_prometheus(name))

    async def checks(self) -> list[dict[str, Any]]:
        """The node's health checks: labels, state, last result (GET /v1/checks)."""
        return await self._run(_checks())

    async def add_labels(self, labels: Iterable[str]) -> str:
        """Add runtime labels to the node; returns "OK"."""
        return await self._run(_labels("POST", labels))

    async def delete_labels(self, labels: Iterable[str]) -> str:
        """Remove runtime labels from the node; returns "OK"."""
        return await self._run(_labels("DELETE", labels))

    async def watch(
        self,
        labels: Iterable[str] | None = None,
        prefixes: Iterable[str] | None = None,
        *,
        reconnect: bool = True,
        on_link: LinkReport | None = None,
    ) -> AsyncIterator[dict[str, Any]]:
        """`Lobby.watch` as an async generator: `async for event in lobby.watch(): ...`."""
        params = _watch_params(labels, prefixes)
        parser = _EventParser()
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
            await asyncio.sleep(_RECONNECT_DELAY)

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
