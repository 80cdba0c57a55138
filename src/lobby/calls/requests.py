"""What the clients send to lobbyd and how they read its answers, without any I/O.

Shared by `lobby.client` (httpx, the published `Lobby` and `AsyncLobby`) and
`lobby.calls.transport` (the standard library's http.client, what lobbyctl uses): each API method
is a `_Call` (what to send and how to read the answer); a client only moves the bytes.
This module imports nothing but the standard library's lightest parts, so lobbyctl
starts fast: no httpx, no asyncio.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable
from urllib.parse import quote, urlencode

# typing and dataclasses are a quarter of a `lobbyctl resolve` (bench/README.md,
# "lobbyctl"): neither is imported at run time.
TYPE_CHECKING = False
if TYPE_CHECKING:
    import ssl
    from typing import Any, Generic, TypeVar

    T = TypeVar("T")

    class _Generic(Generic[T]):
        pass
else:
    T = None

    class _Generic:
        """`Generic` for mypy; at run time `_Call[T]` is `_Call` itself."""

        def __class_getitem__(cls, item: object) -> type:
            return cls


DEFAULT_TIMEOUT = 10.0
PROTOCOLS = ("http", "https")


class LobbyException(Exception):
    """lobbyd answered something other than 200, or could not be reached.

    `str(exc)` is the daemon's message ("access denied", "query parameter label is
    required", ...) or the reason the connection failed; `status_code` is the HTTP
    status, None when no answer came; `url` is what was requested.
    """

    __module__ = "lobby.client"  # where users import it from (lobby.client, lobby)

    def __init__(self, message: str, status_code: int | None = None, url: str = "") -> None:
        super().__init__(message)
        self.message = message
        self.status_code = status_code
        self.url = url


class Answer:
    """An HTTP answer as both clients see it."""

    __slots__ = ("body", "content_type", "reason", "status", "url")

    def __init__(self, status: int, reason: str, content_type: str, body: bytes, url: str) -> None:
        self.status = status
        self.reason = reason
        self.content_type = content_type
        self.body = body
        self.url = url

    @property
    def text(self) -> str:
        return self.body.decode("utf-8", errors="replace")


class _Call(_Generic[T]):
    """One API request: what to send and how to read the answer."""

    __slots__ = ("body", "method", "params", "path", "plain", "read")

    def __init__(
        self,
        method: str,
        path: str,
        read: Callable[[Any], T],  # turns the decoded answer into the method's result
        params: dict[str, str] | None = None,
        body: bytes | None = None,
        plain: bool = False,  # the answer is text ("OK"), not JSON
    ) -> None:
        self.method = method
        self.path = path
        self.read = read
        self.params = params
        self.body = body
        self.plain = plain

    def headers(self) -> dict[str, str] | None:
        return {"Content-Type": "text/plain; charset=utf-8"} if self.body is not None else None

    def target(self) -> str:
        """The path with its query string, encoded as httpx encodes `params`."""
        if not self.params:
            return self.path
        return f"{self.path}?{urlencode(self.params)}"

    def answer(self, answer: Answer) -> T:
        if answer.status != 200:
            raise LobbyException(error_message(answer), answer.status, answer.url)
        if self.plain:
            return self.read(answer.text)
        try:
            value = json.loads(answer.body)
        except ValueError:
            shown = answer.text[:60]
            raise LobbyException(f"the answer is not JSON: {shown!r}", 200, answer.url) from None
        try:
            return self.read(value)
        except TypeError as exc:
            raise LobbyException(f"unexpected answer: {exc}", answer.status, answer.url) from None


def error_message(answer: Answer) -> str:
    """The daemon's message: plain text, or `message` of a JSON body (the 403)."""
    text = answer.text.strip()
    if answer.content_type.startswith("application/json"):
        try:
            doc = json.loads(answer.body)
        except ValueError:
            doc = None
        if isinstance(doc, dict) and isinstance(doc.get("message"), str):
            return str(doc["message"])
    return text or answer.reason or f"HTTP {answer.status}"


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


def discovery() -> _Call[dict[str, Any]]:
    return _Call("GET", "/v1/discovery", _obj)


def discoveries(params: dict[str, str] | None = None) -> _Call[list[dict[str, Any]]]:
    return _Call("GET", "/v1/discoveries", _objs, params)


def by_labels(labels: Iterable[str]) -> _Call[list[dict[str, Any]]]:
    return discoveries({"labels": _filter("labels", labels)})


def by_prefixes(prefixes: Iterable[str]) -> _Call[list[dict[str, Any]]]:
    return discoveries({"prefixes": _filter("prefixes", prefixes)})


def resolve(label: str) -> _Call[list[str]]:
    return _Call("GET", "/v1/resolve", _strs, {"label": label})


def prometheus(name: str) -> _Call[list[dict[str, Any]]]:
    if not name:
        raise ValueError("the Prometheus service name is empty")
    return _Call("GET", f"/v1/prometheus/{quote(name, safe='')}", _objs)


def checks() -> _Call[list[dict[str, Any]]]:
    return _Call("GET", "/v1/checks", _objs)


def labels(method: str, items: Iterable[str]) -> _Call[str]:
    return _Call(method, "/v1/labels", _text, body=_label_body(items), plain=True)


# -- the event stream (GET /v1/events) --------------------------------------------------

# A stream is quiet between events except for a comment every 15 s; a minute without
# even that means the connection is dead.
STREAM_READ_TIMEOUT = 60.0
RECONNECT_DELAY = 1.0


def watch_params(
    labels: Iterable[str] | None, prefixes: Iterable[str] | None
) -> dict[str, str] | None:
    if labels is not None:
        return {"labels": _filter("labels", labels)}
    if prefixes is not None:
        return {"prefixes": _filter("prefixes", prefixes)}
    return None


class EventParser:
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


# -- settings both clients check alike ---------------------------------------------------


def base_url(host: str, port: int | str, proto: str) -> tuple[str, int, str, str]:
    """(host, port, proto, base URL) checked; ValueError when one is bad."""
    proto = str(proto).lower()
    if proto not in PROTOCOLS:
        raise ValueError(f"proto must be http or https, not {proto!r}")
    number = _port(port)
    if not host or any(c.isspace() or c in "/?#@" for c in host):
        raise ValueError(f"invalid host {host!r}")
    # A bare IPv6 address needs brackets in a URL.
    shown = f"[{host}]" if ":" in host and not host.startswith("[") else host
    return host, number, proto, f"{proto}://{shown}:{number}"


def _port(port: int | str) -> int:
    # lobby-python built its URL with string formatting, so a port from os.environ worked.
    if isinstance(port, str) and port.strip().isdigit():
        port = int(port)
    if isinstance(port, bool) or not isinstance(port, int) or not 1 <= port <= 65535:
        raise ValueError(f"port must be a number from 1 to 65535, not {port!r}")
    return port


def tls(verify: bool | str | ssl.SSLContext) -> bool | ssl.SSLContext:
    """httpx's `verify`, with True meaning the system's CAs (httpx alone would use
    certifi's bundle) and a path meaning that PEM file of CAs."""
    import ssl

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


def unreachable(base: str, call: _Call[Any], reason: str) -> LobbyException:
    return LobbyException(f"cannot reach lobbyd at {base}: {reason}", None, base + call.path)
