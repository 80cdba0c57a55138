"""ApiServer.stop: requests still running at the deadline end without a traceback (SPEC §14.2).

The daemon closes the change feed first, so streams and blocking queries end by
themselves; this is the safety net for whatever else still runs when the deadline
passes (here: a handler that never returns), which the event loop then cancels.
"""

from __future__ import annotations

import asyncio
import logging

import pytest
from starlette.types import Receive, Scope, Send
from support import until

from lobby.api.server import ApiServer, bind


async def hanging_app(scope: Scope, receive: Receive, send: Send) -> None:
    if scope["type"] != "http":
        return
    if scope["path"] == "/started":  # answered its headers, then hangs mid-body
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"part", "more_body": True})
    await asyncio.Event().wait()


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
    server = ApiServer(hanging_app, sock)
    serving = asyncio.create_task(server.serve())
    await until(lambda: server._server.started, what="server started")
    client = asyncio.create_task(request(port, path))
    await until(lambda: server._server.server_state.tasks, what="the request running")
    running = set(server._server.server_state.tasks)

    await server.stop(timeout=0.2)
    await asyncio.wait_for(serving, 5)
    for task in running:  # what asyncio.run does with what is left at the end
        task.cancel()
    await asyncio.gather(*running, return_exceptions=True)
    answer = await asyncio.wait_for(client, 5)

    if path == "/started":
        assert answer.endswith(b"part\r\n0\r\n\r\n")  # the body ended properly
    else:
        assert answer.startswith(b"HTTP/1.1 503 ") and answer.endswith(b"lobbyd is stopping\n")
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR], caplog.text
    assert "Traceback" not in caplog.text
