"""Driving lobby.api in-process: over httpx (`client(api)`: a transport that calls
`Api.respond`), or as raw bytes through the real protocol (`Wire`: lobby.api.protocol
with a fake transport, as uvicorn's own tests do)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any
from urllib.parse import unquote

import httpx

from lobby.api.dispatch import Api
from lobby.api.http import MAX_BODY, Request, Response
from lobby.api.protocol import HttpProtocol, ServerState
from lobby.system.listener import ListenerLimits


class _Stream(httpx.AsyncByteStream):
    def __init__(self, response: Response) -> None:
        self.response = response

    async def __aiter__(self) -> AsyncIterator[bytes]:
        body = self.response.body
        if isinstance(body, bytes):
            yield body
        elif hasattr(body, "__aiter__"):
            async for chunk in body:
                yield chunk
        else:
            for chunk in body:
                yield chunk

    async def aclose(self) -> None:
        await self.response.aclose()


class ApiTransport(httpx.AsyncBaseTransport):
    """httpx requests answered by `Api.respond`, without a socket."""

    def __init__(self, api: Api, client: str = "127.0.0.1:40000") -> None:
        self.api = api
        self.client = client

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        body = await request.aread()
        raw_path, _, query = request.url.raw_path.partition(b"?")
        headers = [(name.lower(), value) for name, value in request.headers.raw]
        answer = await self.api.respond(
            Request(
                request.method,
                unquote(raw_path.decode("latin-1")),
                query,
                headers,
                body if len(body) <= MAX_BODY else b"",
                client=self.client,
                oversize=len(body) > MAX_BODY,
            )
        )
        if request.method == "HEAD":
            await answer.aclose()
            answer = Response(answer.status, answer.headers)
        return httpx.Response(answer.status, headers=answer.headers, stream=_Stream(answer))


def client(api: Api, **kwargs: Any) -> httpx.AsyncClient:
    kwargs.setdefault("base_url", "http://lobby")
    return httpx.AsyncClient(transport=ApiTransport(api), **kwargs)


class FakeTransport(asyncio.Transport):
    def __init__(self) -> None:
        super().__init__()
        self.written = bytearray()
        self.closed = False
        self.reading = True

    def write(self, data: bytes | bytearray | memoryview) -> None:
        assert not self.closed, "written after close"
        self.written += data

    def close(self) -> None:
        self.closed = True

    def is_closing(self) -> bool:
        return self.closed

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return ("127.0.0.1", 40000) if name == "peername" else default

    def pause_reading(self) -> None:
        self.reading = False

    def resume_reading(self) -> None:
        self.reading = True


class Wire:
    """One connection to `api` through lobby.api.protocol, fed raw bytes."""

    def __init__(self, api: Api, limits: ListenerLimits | None = None) -> None:
        self.limits = limits if limits is not None else api.limits
        self.state = ServerState(api)
        slot = self.limits.admit()
        assert slot is not None
        self.protocol = HttpProtocol(self.state, slot)
        self.transport = FakeTransport()
        self.protocol.connection_made(self.transport)

    def send(self, data: bytes) -> None:
        self.protocol.data_received(data)

    def lose(self) -> None:
        self.transport.closed = True
        self.protocol.connection_lost(None)

    def take(self) -> bytes:
        out = bytes(self.transport.written)
        self.transport.written.clear()
        return out

    async def settle(self, rounds: int = 20) -> None:
        for _ in range(rounds):
            await asyncio.sleep(0)


def answers(data: bytes) -> list[tuple[bytes, dict[bytes, bytes], bytes]]:
    """Split written bytes into (status line, headers, body) answers (content-length or
    chunked bodies; `date` dropped)."""
    out = []
    while data:
        head, sep, data = data.partition(b"\r\n\r\n")
        assert sep, head
        line, *lines = head.split(b"\r\n")
        headers = {}
        for item in lines:
            name, _, value = item.partition(b": ")
            headers[name] = value
        headers.pop(b"date", None)
        if headers.get(b"transfer-encoding") == b"chunked":
            body = b""
            while True:
                size_line, _, data = data.partition(b"\r\n")
                size = int(size_line, 16)
                body += data[:size]
                data = data[size + 2 :]
                if size == 0:
                    break
        else:
            size = int(headers.get(b"content-length", b"0"))
            body, data = data[:size], data[size:]
        out.append((line, headers, body))
    return out
