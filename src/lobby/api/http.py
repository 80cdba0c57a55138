"""A request and its answer, with no socket: what `lobby.api.dispatch.Api.respond` takes
and gives, and what `lobby.api.protocol` parses into and writes out.

Headers are `(name, value)` byte pairs, names in lower case. A `Response` body is the
whole answer (`bytes`) or an iterator of chunks (sync: a big list encoded slice by
slice, `lobby.core.answer.Slices`; async: an event stream), which the protocol sends with
chunked transfer encoding. A streamed response may hold a watcher slot
(API_MAX_WATCHERS): whoever consumes it calls `aclose()` once done, which ends the
stream and gives the slot back.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass, field
from typing import Final
from urllib.parse import parse_qsl

JSON_TYPE: Final = "application/json; charset=UTF-8"
TEXT_TYPE: Final = "text/plain; charset=utf-8"
# Go's echo answers a failed token check with JSONPretty(" "): one-space indent.
DENIED: Final = b'{\n "message": "access denied"\n}\n'
MAX_BODY: Final = 1024 * 1024  # request bodies past it: 413

Headers = list[tuple[bytes, bytes]]
Body = bytes | Iterator[bytes] | AsyncIterator[bytes]

_JSON: Final = JSON_TYPE.encode()
_TEXT: Final = TEXT_TYPE.encode()

_parsed: dict[bytes, dict[str, str]] = {}  # clients repeat their queries: parse once
_PARSED_MAX: Final = 1024
_NO_QUERY: Final[dict[str, str]] = {}


def parse_query(raw: bytes) -> dict[str, str]:
    """Query parameters, the last of repeated names winning; the dict is shared (cached
    per query string): read it, never change it."""
    if not raw:
        return _NO_QUERY
    query = _parsed.get(raw)
    if query is None:
        if len(_parsed) >= _PARSED_MAX:
            _parsed.clear()
        query = _parsed[raw] = dict(parse_qsl(raw.decode("latin-1"), keep_blank_values=True))
    return query


@dataclass(slots=True)
class Request:
    """One HTTP request: `path` percent-decoded, `query` the raw query string."""

    method: str
    path: str
    query: bytes = b""
    headers: Headers = field(default_factory=list)
    body: bytes = b""
    client: str = ""  # "host:port", for the access log
    version: str = "1.1"
    oversize: bool = False  # the body passed MAX_BODY (and was not kept)
    # made in-process, never from a socket: an agent's query, whose token the agent
    # checked (lobby.api.relayed); the guard lets it through
    trusted: bool = False

    def header(self, name: bytes) -> bytes | None:
        """The last value of a header (`name` in lower case), or None."""
        found = None
        for key, value in self.headers:
            if key == name:
                found = value
        return found

    @property
    def params(self) -> dict[str, str]:
        return parse_query(self.query)


class Response:
    """Status, headers and body; `release` runs once when a streamed body is done.

    `wire`, when set, is `headers` already encoded (`name: value\r\n` each, no
    `connection` among them): a response kept and sent again and again (a cached
    answer's, lobby.api.dispatch) is encoded once, not per request.
    """

    __slots__ = ("body", "headers", "release", "status", "wire")

    def __init__(
        self,
        status: int,
        headers: Headers,
        body: Body = b"",
        release: Callable[[], None] | None = None,
    ) -> None:
        self.status = status
        self.headers = headers
        self.body = body
        self.release = release
        self.wire: bytes | None = None

    def encoded(self) -> Response:
        """This response with `wire` set (when no header is `connection`); returns self."""
        if all(name != b"connection" for name, _ in self.headers):
            self.wire = b"".join([b"%s: %s\r\n" % pair for pair in self.headers])
        return self

    @property
    def streamed(self) -> bool:
        return not isinstance(self.body, bytes)

    async def aclose(self) -> None:
        """End a streamed body (if it is still open) and give its watcher slot back."""
        closer = getattr(self.body, "aclose", None) or getattr(self.body, "close", None)
        if closer is not None:
            with contextlib.suppress(Exception):
                result = closer()
                if result is not None:
                    await result
        release, self.release = self.release, None
        if release is not None:
            release()

    async def read(self) -> bytes:
        """The whole body (for answers that end; not for an event stream)."""
        body = self.body
        try:
            if isinstance(body, bytes):
                return body
            if isinstance(body, Iterator):
                return b"".join(body)
            return b"".join([chunk async for chunk in body])
        finally:
            await self.aclose()


class HttpError(Exception):
    """Raised by a handler: a plain-text answer with this status and message."""

    def __init__(self, status: int, message: str, headers: Headers | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.headers = headers or []


def plain(status: int, text: str, headers: Headers | None = None) -> Response:
    """A plain-text answer: one line, newline added."""
    body = (text + "\n").encode()
    return Response(
        status,
        [*(headers or ()), (b"content-length", b"%d" % len(body)), (b"content-type", _TEXT)],
        body,
    )


def json_answer(body: bytes, status: int = 200) -> Response:
    headers = [(b"content-length", b"%d" % len(body)), (b"content-type", _JSON)]
    return Response(status, headers, body)


DENIED_HEADERS: Final = [(b"content-type", _JSON), (b"content-length", b"%d" % len(DENIED))]


def denied() -> Response:
    return Response(403, DENIED_HEADERS, DENIED)
