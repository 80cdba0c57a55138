"""ApiServer.stop: requests still running at the deadline end without a traceback (SPEC §14.2).

The daemon closes the change feed first, so streams and blocking queries end by
themselves; this is the safety net for whatever else still runs when the deadline
passes (here: handlers that never return), over a real socket.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import pytest
from support import until

from lobby.api.dispatch import Api
from lobby.api.http import Response
from lobby.api.routes import ROUTES, Context, Route
from lobby.api.server import ApiServer, bind
from lobby.core.model import Discovery
from lobby.view.cache import Answers
from lobby.view.registry import Registry


class Node:
    registry = Registry(ttl=30)
    answers = Answers(registry)

    def own_discovery(self) -> Discovery:
        return Discovery("me", ())

    async def add_labels(self, labels: list[str]) -> None: ...

    async def delete_labels(self, labels: list[str]) -> None: ...

    def stats(self) -> dict[str, Any]:
        return {}

    def health(self) -> tuple[bool, dict[str, str]]:
        return True, {}


async def never(api: Context, req: Any, args: Any) -> Response:
    await asyncio.Event().wait()
    raise AssertionError


async def part() -> Any:
    yield b"part"
    await asyncio.Event().wait()


def started(api: Context, req: Any, args: Any) -> Response:  # its headers, then hangs mid-body
    return Response(200, [], part())


ROUTES_PLUS = (*ROUTES, Route("GET", "/started", started), Route("GET", "/not-started", never))


async def request(port: int, path: str) -> bytes:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(f"GET {path} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
    await writer.drain()
    data = await reader.read()  # until the server closes
    writer.close()
    return data


@pytest.mark.parametrize("path", ["/started", "/not-started"])
async def test_requests_cut_at_the_deadline_end_quietly(path, caplog) -> None:
    caplog.set_level(logging.DEBUG)
    sock = bind("127.0.0.1", 0)
    port = sock.getsockname()[1]
    server = ApiServer(Api(Node(), routes=ROUTES_PLUS), sock)
    serving = asyncio.create_task(server.serve())
    await until(lambda: server.started, what="server started")
    idle_reader, idle_writer = await asyncio.open_connection("127.0.0.1", port)
    client = asyncio.create_task(request(port, path))
    await until(lambda: any(c._task for c in server.state.connections), what="the request running")

    await server.stop(timeout=0.2)
    await asyncio.wait_for(serving, 5)
    answer = await asyncio.wait_for(client, 5)
    assert await asyncio.wait_for(idle_reader.read(), 5) == b""  # an idle one: just closed
    idle_writer.close()
    sock.close()

    if path == "/started":
        assert answer.endswith(b"part\r\n0\r\n\r\n")  # the body ended properly
    else:
        assert answer.startswith(b"HTTP/1.1 503 ") and answer.endswith(b"lobbyd is stopping\n")
    assert not server.state.connections
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR], caplog.text
    assert "Traceback" not in caplog.text
