"""lobby.api.protocol in-process: raw bytes in through a fake transport, answers out.
Keep-alive and pipelining in request order, HTTP/1.0, HEAD, bodies in (Content-Length,
chunked, over 1 MiB), chunked answers out, the head deadline and size bound, malformed
requests, the idle timeout, and a client that goes away while its query is held."""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import pytest
from apiwire import Wire, answers

from lobby.api.dispatch import Api
from lobby.api.http import Response
from lobby.api.routes import ROUTES, Context, Route
from lobby.core.model import Discovery
from lobby.system.listener import ListenerLimits
from lobby.view.cache import Answers
from lobby.view.feed import ChangeFeed
from lobby.view.registry import Registry


class Node:
    def __init__(self, registry: Registry) -> None:
        self.registry = registry
        self.answers = Answers(registry)
        self.added: list[list[str]] = []

    def own_discovery(self) -> Discovery:
        return Discovery("me.example", ("service:me",))

    async def add_labels(self, labels: list[str]) -> None:
        await asyncio.sleep(0.01)
        self.added.append(labels)

    async def delete_labels(self, labels: list[str]) -> None:
        self.added.append([])

    def stats(self) -> dict[str, Any]:
        return {"nodes": len(self.registry)}

    def health(self) -> tuple[bool, dict[str, str]]:
        return True, {}


@pytest.fixture
def registry() -> Registry:
    registry = Registry(ttl=300)
    for i in range(3):
        registry.update(Discovery(f"n{i}.example", ("service:web",)))
    return registry


@pytest.fixture
def api(registry: Registry) -> Api:
    limits = ListenerLimits(read_timeout=0.2, idle_timeout=0.2, max_request_bytes=2048)
    return Api(Node(registry), "", ChangeFeed(registry), limits=limits)


def get(path: str, *headers: str, method: str = "GET", version: str = "1.1") -> bytes:
    return "\r\n".join([f"{method} {path} HTTP/{version}", "Host: x", *headers, "", ""]).encode()


async def test_pipelined_answers_keep_request_order(api: Api, registry: Registry) -> None:
    wire = Wire(api)
    post = b"POST /v1/labels HTTP/1.1\r\nHost: x\r\nContent-Length: 4\r\n\r\na:b\n"
    wire.send(get("/v1/discovery") + post + get("/v1/resolve?label=service:web") + get("/x"))
    first = wire.take()  # the first is answered at once, the POST waits for its task
    assert [a[0] for a in answers(first)] == [b"HTTP/1.1 200 OK"]
    await asyncio.sleep(0.1)
    rest = answers(wire.take())
    assert [(line, body) for line, _, body in rest] == [
        (b"HTTP/1.1 200 OK", b"OK"),
        (b"HTTP/1.1 200 OK", b'[\n  "n0.example",\n  "n1.example",\n  "n2.example"\n]\n'),
        (b"HTTP/1.1 404 Not Found", b"Not Found\n"),
    ]
    assert api.node.added == [["a:b"]]  # type: ignore[attr-defined]
    assert not wire.transport.closed  # keep-alive


async def test_http_1_0_and_connection_close(api: Api) -> None:
    wire = Wire(api)
    wire.send(get("/v1/discovery", version="1.0"))
    [(_, headers, body)] = answers(wire.take())
    assert headers[b"connection"] == b"close" and body.startswith(b"{")
    assert wire.transport.closed
    wire = Wire(api)
    wire.send(get("/v1/discovery", "Connection: close"))
    assert b"connection: close\r\n" in wire.take() and wire.transport.closed


async def test_head_gets_the_headers_of_get_and_no_body(api: Api) -> None:
    wire = Wire(api)
    wire.send(get("/v1/discoveries"))
    whole = wire.take()
    wire.send(get("/v1/discoveries", method="HEAD"))
    head = wire.take()
    assert whole.startswith(head) and head.endswith(b"\r\n\r\n")
    assert b"content-length: " in head
    wire.send(get("/v1/discoveries", method="OPTIONS"))
    [(line, headers, body)] = answers(wire.take())
    assert (line, headers[b"allow"], body) == (
        b"HTTP/1.1 405 Method Not Allowed",
        b"GET, HEAD",
        b"Method Not Allowed\n",
    )


async def test_bodies_in_chunks_and_over_the_limit(api: Api) -> None:
    wire = Wire(api)
    wire.send(
        b"POST /v1/labels HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
        b"4\r\nc:d\n\r\n4\r\ne:f\n\r\n0\r\n\r\n"
    )
    await asyncio.sleep(0.05)
    assert answers(wire.take())[0][2] == b"OK"
    assert api.node.added == [["c:d", "e:f"]]  # type: ignore[attr-defined]
    big = Wire(api)  # announced too big: 413 at once, the connection closed
    big.send(b"POST /v1/labels HTTP/1.1\r\nHost: x\r\nContent-Length: 2000000\r\n\r\nxx")
    [(line, _, body)] = answers(big.take())
    assert (line, body) == (b"HTTP/1.1 413 Request Entity Too Large", b"request body over 1 MiB\n")
    assert big.transport.closed
    chunked = Wire(api)  # chunked past 1 MiB
    chunked.send(b"DELETE /v1/labels HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n")
    for _ in range(5):
        chunked.send(b"40000\r\n" + b"x" * 0x40000 + b"\r\n")
    assert answers(chunked.take())[0][0] == b"HTTP/1.1 413 Request Entity Too Large"
    assert chunked.transport.closed
    assert api.node.added == [["c:d", "e:f"]]  # type: ignore[attr-defined]


async def test_expect_continue(api: Api) -> None:
    wire = Wire(api)
    wire.send(
        b"POST /v1/labels HTTP/1.1\r\nHost: x\r\nContent-Length: 4\r\nExpect: 100-continue\r\n\r\n"
    )
    assert wire.take() == b"HTTP/1.1 100 Continue\r\n\r\n"
    wire.send(b"g:h\n")
    await asyncio.sleep(0.05)
    assert answers(wire.take())[0][2] == b"OK"


async def test_big_lists_go_out_in_chunks(api: Api, registry: Registry, monkeypatch) -> None:
    monkeypatch.setattr("lobby.view.cache.KEEP_MAX", 100)
    for i in range(600):
        registry.update(Discovery(f"m{i:04d}.example", ("service:db",)))
    wire = Wire(api)
    turns = 0

    async def count() -> None:
        nonlocal turns
        while True:
            turns += 1
            await asyncio.sleep(0)

    counter = asyncio.ensure_future(count())
    await asyncio.sleep(0)
    seen: list[int] = []  # the counter's turns at each write
    write = wire.transport.write

    def watched(data: bytes | bytearray | memoryview) -> None:
        seen.append(turns)
        write(data)

    wire.transport.write = watched  # type: ignore[method-assign]
    wire.send(get("/v1/discoveries") + get("/v1/discovery"))
    await asyncio.sleep(0.05)
    counter.cancel()
    out = wire.take()
    assert b"transfer-encoding: chunked\r\n" in out
    # head, 2 slices (600 nodes, 512 a slice), the brackets, the end: the loop ran
    # between the slices (a client reading fast never pauses the writes)
    assert len(seen) >= 4 and len(set(seen[1:4])) == 3, seen
    (_, _, body), (_, _, own) = answers(out)
    assert body == Answers(registry).all_json()
    assert own.startswith(b'{\n  "hostname": "me.example"')


async def test_bad_requests_and_bounds(api: Api) -> None:
    limits = api.limits
    bad = Wire(api)
    bad.send(b"\x16\x03\x01 this is not HTTP\r\n\r\n")
    assert bad.take().startswith(b"HTTP/1.1 400 Bad Request\r\n") and bad.transport.closed
    assert limits.bad_requests == 1
    big = Wire(api)
    big.send(b"GET /" + b"a" * 3000)
    assert big.take().startswith(b"HTTP/1.1 431 ") and big.transport.closed
    assert limits.too_large == 1
    slow = Wire(api)
    slow.send(b"GET /v1/discoveries HTTP/1.1\r\n")
    await asyncio.sleep(0.3)
    assert slow.take().startswith(b"HTTP/1.1 408 ") and slow.transport.closed
    silent = Wire(api)
    await asyncio.sleep(0.3)
    assert silent.transport.closed and silent.take() == b""
    assert limits.read_timeouts == 2
    idle = Wire(api)
    idle.send(get("/v1/health"))
    assert idle.take().startswith(b"HTTP/1.1 200 OK\r\n")
    await asyncio.sleep(0.3)
    assert idle.transport.closed and limits.idle_closed == 1


async def test_a_client_that_goes_away_ends_its_held_query(api: Api, registry: Registry) -> None:
    wire = Wire(api)
    wire.send(get(f"/v1/discoveries?index={registry.index}"))
    await wire.settle()
    assert api.limits.watchers == 1 and api.feed is not None and api.feed.waiting == 1
    wire.lose()
    await wire.settle()
    assert api.limits.watchers == 0 and api.feed.waiting == 0
    assert wire.limits.connections == 0


async def test_event_stream_heartbeats_and_ends_when_the_feed_closes(registry: Registry) -> None:
    feed = ChangeFeed(registry, heartbeat=0.05)
    api = Api(Node(registry), "", feed)
    wire = Wire(api)
    wire.send(get("/v1/events?labels=service:web"))
    await asyncio.sleep(0.12)
    out = wire.take()
    assert b"content-type: text/event-stream; charset=utf-8\r\n" in out
    assert b"event: join" in out and b": keep-alive\n\n" in out
    assert api.limits.watchers == 1
    feed.close()
    await wire.settle()
    assert wire.take().endswith(b"0\r\n\r\n")  # the stream ended properly
    assert api.limits.watchers == 0 and not wire.transport.closed


async def test_stop_ends_what_is_left_quietly(registry: Registry, caplog) -> None:
    async def hangs(api: Context, req: Any, args: Any) -> Response:
        await asyncio.Event().wait()
        raise AssertionError

    async def part() -> Any:
        yield b"part"
        await asyncio.Event().wait()

    def started(api: Context, req: Any, args: Any) -> Response:
        return Response(200, [], part())

    routes = (*ROUTES, Route("GET", "/hangs", hangs), Route("GET", "/started", started))
    api = Api(Node(registry), "", ChangeFeed(registry), routes=routes)
    a, b, idle = Wire(api), Wire(api), Wire(api)
    b.state = a.state = idle.state
    for wire in (a, b, idle):
        idle.state.connections.add(wire.protocol)
        wire.protocol.state = idle.state
    a.send(get("/hangs"))
    b.send(get("/started"))
    await a.settle()
    await idle.state.stop(0.1)
    await a.settle()
    assert a.take().endswith(b"lobbyd is stopping\n") and a.transport.closed
    assert b.take().endswith(b"part\r\n0\r\n\r\n") and b.transport.closed
    assert idle.transport.closed
    assert "Traceback" not in caplog.text


async def test_a_failing_handler_gets_500_and_the_connection_closes(registry: Registry) -> None:
    def broken(api: Context, req: Any, args: Any) -> Response:
        raise RuntimeError("a bug")

    async def broken_later(api: Context, req: Any, args: Any) -> Response:
        raise RuntimeError("a bug")

    routes = (*ROUTES, Route("GET", "/broken", broken), Route("GET", "/later", broken_later))
    api = Api(Node(registry), "", ChangeFeed(registry), routes=routes)
    for path in ("/broken", "/later"):
        wire = Wire(api)
        wire.send(get(path) + get("/v1/health"))
        await wire.settle()
        [(line, _, body)] = answers(wire.take())
        assert (line, body) == (b"HTTP/1.1 500 Internal Server Error", b"internal error\n")
        assert wire.transport.closed


async def test_access_log_lines_as_uvicorn_wrote_them(registry: Registry, caplog) -> None:
    caplog.set_level(logging.INFO, "uvicorn.access")
    api = Api(Node(registry), "s3cret", ChangeFeed(registry), access_log=True)
    wire = Wire(api)
    wire.send(get("/v1/prometheus/a%20b?x=1") + get("/v1/health", method="HEAD"))
    lines = [r.getMessage() for r in caplog.records if r.name == "uvicorn.access"]
    assert lines == [
        '127.0.0.1:40000 - "GET /v1/prometheus/a%20b?x=1 HTTP/1.1" 403',
        '127.0.0.1:40000 - "HEAD /v1/health HTTP/1.1" 200',
    ]
    quiet = Api(Node(registry), "", ChangeFeed(registry))
    Wire(quiet).send(get("/v1/health"))
    assert len([r for r in caplog.records if r.name == "uvicorn.access"]) == 2  # off by default


async def test_absolute_form_and_fragments_name_the_same_resource(api: Api) -> None:
    def without_date(answer: tuple[bytes, dict[bytes, bytes], bytes]) -> tuple[Any, ...]:
        line, headers, body = answer
        return line, {k: v for k, v in headers.items() if k != b"date"}, body

    wire = Wire(api)
    wire.send(get("/v1/resolve?label=service:web"))
    [plain] = answers(wire.take())
    assert plain[0] == b"HTTP/1.1 200 OK" and b"n0.example" in plain[2]
    for target in (
        "http://x/v1/resolve?label=service:web",  # absolute-form, as a proxy sends it
        "/v1/resolve?label=service:web#frag",
        "/v1/%72esolve?label=service:web",  # a percent-encoded path
    ):
        wire.send(get(target))
        assert [without_date(a) for a in answers(wire.take())] == [without_date(plain)], target
    wire.send(get("/v1/resolve?label=nobody"))
    assert answers(wire.take())[0][2] == b"[]\n"  # the query string is read, not dropped


def test_the_date_header_is_the_imf_fixdate_of_rfc_9110() -> None:
    import random
    from email.utils import formatdate

    from lobby.api.protocol import http_date

    assert http_date(784111777) == b"Sun, 06 Nov 1994 08:49:37 GMT"  # RFC 9110's example
    rng = random.Random(27)
    for now in [0, 951782400, 1796628878, *(rng.randrange(0, 2**33) for _ in range(500))]:
        assert http_date(now) == formatdate(now, usegmt=True).encode(), now
