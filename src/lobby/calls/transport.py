"""A blocking lobbyd client on a plain socket: what lobbyctl uses to ask lobbyd.

It has `Lobby`'s request methods and answers exactly as `Lobby` does (the same `_Call`s
from lobby.calls.requests, the same errors), but it is built for a process that asks one
question and exits: it imports neither httpx nor asyncio, nor even http.client, whose
import alone (ssl and the email parser) takes longer than all the rest of a
`lobbyctl resolve` (bench/README.md, "lobbyctl"). `ssl` is loaded only for https.

The HTTP it speaks is the small part lobbyd needs: one HTTP/1.1 request per connection
(`Connection: close`), an answer with a Content-Length, chunked, or read to the end;
through the http:// proxy that HTTP_PROXY, HTTPS_PROXY or ALL_PROXY name unless NO_PROXY
exempts the host (a tunnel for https), as httpx does for `Lobby`.
`watch` is not here: lobbyctl's `watch` uses `lobby.client.Lobby`, loaded when it runs.
"""

from __future__ import annotations

import os
import socket
from collections.abc import Iterable
from types import TracebackType

from lobby.calls import requests as _calls
from lobby.calls.requests import DEFAULT_TIMEOUT, Answer

TYPE_CHECKING = False  # no typing at run time (lobby._calls says why)
if TYPE_CHECKING:
    import ssl
    from typing import Any, Self, TypeVar

    from lobby.calls.requests import _Call

    T = TypeVar("T")

_MAX_HEAD = 64 * 1024  # status line and headers; lobbyd sends a few hundred bytes


class _Disconnected(Exception):
    """lobbyd closed the connection before its answer was complete."""


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
        user_agent: str = "lobbyctl",
    ) -> None:
        """`user_agent`: lobbyctl passes its version too (`lobbyctl/2.0.0`)."""
        self.host, self.port, self.proto, self.base_url = _calls.base_url(host, port, proto)
        self.token = token
        self.timeout = timeout
        self.user_agent = user_agent
        self._address = host[1:-1] if host.startswith("[") and host.endswith("]") else host
        self._host_header = self.base_url.partition("://")[2]
        self._context = _context(verify) if self.proto == "https" else None

    def _run(self, call: _Call[T]) -> T:
        target = call.target()
        head = [
            f"Host: {self._host_header}",
            "Accept: */*",
            "Connection: close",
            f"User-Agent: {self.user_agent}",
        ]
        if self.token:
            head.append(f"Authorization: Token {self.token}")
        for name, value in (call.headers() or {}).items():
            head.append(f"{name}: {value}")
        if call.body is not None or call.method in ("POST", "DELETE"):
            head.append(f"Content-Length: {len(call.body or b'')}")
        try:
            status, reason, headers, body = self._exchange(call.method, target, head, call.body)
        except (OSError, _Disconnected) as exc:
            raise _calls.unreachable(self.base_url, call, _reason(exc)) from exc
        if not reason:
            reason = _phrase(status)
        answer = Answer(
            status, reason, headers.get("content-type", ""), body, self.base_url + target
        )
        return call.answer(answer)

    def _exchange(
        self, method: str, target: str, head: list[str], body: bytes | None
    ) -> tuple[int, str, dict[str, str], bytes]:
        """Send the request on a new connection (through the environment's proxy, as
        httpx would); the answer's status, reason, headers (lower-case names), body."""
        proxy = _proxy(self.proto, self._address)
        address = (proxy[0], proxy[1]) if proxy else (self._address, self.port)
        sock = socket.create_connection(address, timeout=self.timeout)
        try:
            if proxy and self.proto == "http":  # the whole URL, to the proxy
                target = self.base_url + target
                if proxy[2]:
                    head = [*head, f"Proxy-Authorization: {proxy[2]}"]
            elif proxy:  # https: a tunnel through the proxy
                _connect(sock, self._host_header, proxy[2])
            if self._context is not None:
                sock = self._context.wrap_socket(sock, server_hostname=self._address)
            lines = [f"{method} {target} HTTP/1.1", *head]
            sock.sendall(("\r\n".join(lines) + "\r\n\r\n").encode("utf-8") + (body or b""))
            with sock.makefile("rb") as stream:
                return _read_answer(stream)
        finally:
            sock.close()

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
        """Nothing to close: each request has its own connection."""

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


_PROXY_VARIABLES = ("http_proxy", "https_proxy", "all_proxy")


def _proxy(proto: str, host: str) -> tuple[str, int, str] | None:
    """The proxy the environment names for `proto`://`host`, as httpx (so `Lobby`) uses
    it: HTTP_PROXY, HTTPS_PROXY, ALL_PROXY and NO_PROXY, lower case first. (host, port,
    Proxy-Authorization value or ""), or None for a direct connection."""
    if not any(os.environ.get(n) or os.environ.get(n.upper()) for n in _PROXY_VARIABLES):
        return None
    import urllib.request  # only with a proxy set: it costs lobbyctl's start-up ~40 ms
    from urllib.parse import unquote, urlsplit

    proxies = urllib.request.getproxies_environment()
    url = proxies.get(proto) or proxies.get("all")
    if not url or urllib.request.proxy_bypass(host):  # NO_PROXY
        return None
    parts = urlsplit(url if "://" in url else f"http://{url}")
    if parts.scheme != "http" or not parts.hostname:
        raise OSError(
            f"proxy {parts.scheme}://{parts.hostname}: lobbyctl uses http:// proxies only"
        )
    auth = ""
    if parts.username:
        import base64

        pair = f"{unquote(parts.username)}:{unquote(parts.password or '')}"
        auth = "Basic " + base64.b64encode(pair.encode()).decode()
    return parts.hostname, parts.port or 80, auth


def _connect(sock: socket.socket, authority: str, auth: str) -> None:
    """Open a tunnel to `authority` (host:port) through the proxy on `sock`."""
    lines = [f"CONNECT {authority} HTTP/1.1", f"Host: {authority}"]
    if auth:
        lines.append(f"Proxy-Authorization: {auth}")
    sock.sendall(("\r\n".join(lines) + "\r\n\r\n").encode())
    answer = b""
    while b"\r\n\r\n" not in answer:  # byte by byte: nothing of the tunnel is read here
        byte = sock.recv(1)
        if not byte or len(answer) > _MAX_HEAD:
            raise _Disconnected("the proxy closed the connection")
        answer += byte
    status = answer.split(b"\r\n", 1)[0].decode("latin-1")
    if status.split(" ")[1:2] != ["200"]:
        raise _Disconnected(f"the proxy refused the tunnel: {status}")


def _read_answer(stream: Any) -> tuple[int, str, dict[str, str], bytes]:
    status_line = stream.readline(_MAX_HEAD)
    if not status_line:
        raise _Disconnected("Server disconnected without sending a response.")
    version, _, rest = status_line.decode("latin-1").rstrip("\r\n").partition(" ")
    code, _, reason = rest.partition(" ")
    if not version.startswith("HTTP/") or not code.isdigit():
        raise _Disconnected(f"not an HTTP answer: {status_line[:40]!r}")
    headers: dict[str, str] = {}
    size = len(status_line)
    while True:
        line = stream.readline(_MAX_HEAD)
        size += len(line)
        if not line.endswith(b"\n") or size > _MAX_HEAD:
            raise _Disconnected("the answer's headers are cut short or too long")
        if line in (b"\r\n", b"\n"):
            break
        name, _, value = line.decode("latin-1").partition(":")
        headers[name.strip().lower()] = value.strip()
    if int(code) in (204, 304) or 100 <= int(code) < 200:
        return int(code), reason, headers, b""
    if "chunked" in headers.get("transfer-encoding", "").lower():
        body = _read_chunked(stream)
    elif headers.get("content-length", "").isdigit():
        length = int(headers["content-length"])
        body = stream.read(length)
        if len(body) != length:
            raise _Disconnected("Server disconnected before the whole answer came.")
    else:
        body = stream.read()
    return int(code), reason, headers, body


def _read_chunked(stream: Any) -> bytes:
    parts: list[bytes] = []
    while True:
        line = stream.readline(1024)
        size_text = line.split(b";", 1)[0].strip()
        if not line.endswith(b"\n") or not size_text:
            raise _Disconnected("Server disconnected before the whole answer came.")
        try:
            size = int(size_text, 16)
        except ValueError:
            raise _Disconnected(f"bad chunk size {size_text[:20]!r}") from None
        if size == 0:
            while stream.readline(_MAX_HEAD) not in (b"\r\n", b"\n", b""):
                pass  # trailers
            return b"".join(parts)
        chunk = stream.read(size + 2)
        if len(chunk) != size + 2:
            raise _Disconnected("Server disconnected before the whole answer came.")
        parts.append(chunk[:size])


def _phrase(status: int) -> str:
    from http import HTTPStatus  # only for an answer without a reason phrase

    try:
        return HTTPStatus(status).phrase
    except ValueError:
        return ""


def _reason(exc: BaseException) -> str:
    """Why a request failed, worded as httpx words it for `Lobby`."""
    if isinstance(exc, TimeoutError):
        return f"timed out ({exc})" if str(exc) else "timed out"
    return str(exc) or type(exc).__name__
