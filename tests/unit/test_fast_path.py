"""The fast path (lobby.api.fast) answers exactly what the FastAPI routes answer.

Every hot GET is sent both to the fast path and to the FastAPI app alone
(`lobby.api.create_app`), over httpx's ASGI transport, and the answers must agree in
status, body and headers. Then what only the fast path does: gzip copies, streamed
big lists, no framework until a request needs it.
"""

from __future__ import annotations

import asyncio
import gzip
import subprocess
import sys
from typing import Any

import httpx
import orjson
import pytest

from lobby import answer
from lobby.api import create_app
from lobby.api.fast import FastApp, accepts_gzip, create_fast_app
from lobby.cache import Answers
from lobby.feed import ChangeFeed
from lobby.model import Discovery, pretty
from lobby.registry import Registry


class FakeNode:
    def __init__(self, registry: Registry) -> None:
        self.registry = registry
        self.answers = Answers(registry)

    def own_discovery(self) -> Discovery:
        return Discovery("me.example", ("service:me",))

    async def add_labels(self, labels: list[str]) -> None:
        raise AssertionError("not used")

    async def delete_labels(self, labels: list[str]) -> None:
        raise AssertionError("not used")

    def stats(self) -> dict[str, Any]:
        return {"nodes": len(self.registry), "index": self.registry.index}

    def health(self) -> tuple[bool, dict[str, str]]:
        return True, {}


def fill(registry: Registry, n: int) -> None:
    for i in range(n):
        labels = {f"service:{('web', 'db', 'mail')[i % 3]}", f"location:dc{i % 4}"}
        if i % 2:
            labels.add(f"prometheus:node:host:10.0.{i // 256}.{i % 256}")
        labels.add(f"public_ip4:10.1.{i // 256}.{i % 256}")
        registry.update(Discovery(f"node-{i:05d}.example", tuple(sorted(labels))))


PATHS = [
    "/",
    "/v1/discoveries",
    "/v1/discoveries?labels=service:web,location:dc1",
    "/v1/discoveries?labels=nothing:here",
    "/v1/discoveries?prefixes=location:,service:d",
    "/v1/discoveries?labels=&prefixes=public_ip4:",
    "/v1/discoveries?labels=a&labels=service:db",
    "/v1/discoveries?unknown=1",
    "/v1/resolve?label=service:db",
    "/v1/resolve?label=nobody",
    "/v1/resolve?label=",
    "/v1/resolve",
    "/v1/discovery",
    "/v1/stats",
    "/v1/prometheus/node",
    "/v1/prometheus/none",
    "/v1/prometheus/",
    "/v1/discoveries/",
    "/v1/health",
    "/v1/health?x=1",
    "/nothing",
]


def compared(response: httpx.Response) -> tuple[int, bytes, dict[str, str]]:
    headers = {k: v for k, v in response.headers.items() if k not in ("vary",)}
    return response.status_code, response.content, headers


@pytest.fixture
def registry() -> Registry:
    return Registry(ttl=300)


async def both(registry: Registry, token: str = "", feed: bool = True, read_token: str = "") -> Any:
    node = FakeNode(registry)
    changes = ChangeFeed(registry) if feed else None
    fast = create_fast_app(node, token, changes, node_exporter_port=9100, read_token=read_token)
    slow = create_app(node, token, changes, node_exporter_port=9100, read_token=read_token)
    return fast, slow


def client(app: Any) -> httpx.AsyncClient:
    return httpx.AsyncClient(  # httpx asks for gzip unless told otherwise
        transport=httpx.ASGITransport(app=app),
        base_url="http://lobby",
        headers={"Accept-Encoding": "identity"},
    )


@pytest.mark.parametrize("n", [0, 3, 200])
@pytest.mark.parametrize("feed", [True, False])
async def test_same_answers_as_the_framework(registry, n, feed):
    fill(registry, n)
    fast, slow = await both(registry, feed=feed)
    async with client(fast) as f, client(slow) as s:
        for path in PATHS:
            a, b = await f.get(path), await s.get(path)
            assert compared(a) == compared(b), path
            if a.status_code == 200 and feed and not path.startswith("/v1/health"):
                assert int(a.headers["x-lobby-index"]) == registry.index


@pytest.mark.parametrize(
    ("token", "read_token"), [("s3cret", ""), ("s3cret", "r3ad"), ("", "r3ad")]
)
async def test_same_answers_with_a_token(registry, token, read_token):
    fill(registry, 5)
    fast, slow = await both(registry, token=token, read_token=read_token)
    tokens = [{}, {"Authorization": "Token wrong"}, {"Authorization": "s3cret"}]
    tokens += [{"Authorization": f"Token {t}"} for t in (token, read_token) if t]
    async with client(fast) as f, client(slow) as s:
        for headers in tokens:
            for path in PATHS:
                a, b = await f.get(path, headers=headers), await s.get(path, headers=headers)
                assert compared(a) == compared(b), (path, headers)
        r = await f.get("/v1/discoveries")
        assert r.status_code == 403
        assert r.content == b'{\n "message": "access denied"\n}\n'


async def test_big_lists_are_streamed_and_not_kept(registry, monkeypatch):
    monkeypatch.setattr("lobby.cache.KEEP_MAX", 4096)
    fill(registry, 300)
    expected = pretty([d.to_dict() for d in registry.discoveries()])
    fast, slow = await both(registry)
    async with client(fast) as f, client(slow) as s:
        r = await f.get("/v1/discoveries")
        assert r.content == expected == (await s.get("/v1/discoveries")).content
        assert "content-length" not in r.headers  # chunked: encoded while sent
        assert isinstance(Answers(registry).listing(), answer.Slices)
        assert Answers(registry).all_json() == expected
        r = await f.get("/v1/discoveries", headers={"Accept-Encoding": "gzip"})
        assert r.headers["content-encoding"] == "gzip"
        assert r.content == expected  # httpx decodes it
        r = await f.get("/v1/discoveries?prefixes=location:")
        assert orjson.loads(r.content) == orjson.loads(
            pretty([{**d.to_dict()} for d in registry.with_prefixes(["location:"])])
        )
        r = await f.get("/v1/discoveries?labels=nothing:here")
        assert r.content == b"[]\n"


async def test_gzip_copy_for_clients_that_accept_it(registry):
    fill(registry, 200)
    fast, _ = await both(registry)
    async with client(fast) as f:
        plain = await f.get("/v1/discoveries", headers={"Accept-Encoding": "identity"})
        assert "content-encoding" not in plain.headers
        assert plain.headers["vary"] == "Accept-Encoding"
        for path in ("/v1/discoveries", "/v1/prometheus/node", "/v1/resolve?label=service:db"):
            want = (await f.get(path, headers={"Accept-Encoding": "identity"})).content
            raw = await f.send(
                f.build_request("GET", path, headers={"Accept-Encoding": "gzip, deflate"}),
                stream=True,
            )
            packed = b"".join([chunk async for chunk in raw.aiter_raw()])
            await raw.aclose()
            assert raw.headers["content-encoding"] == "gzip"
            assert int(raw.headers["content-length"]) == len(packed) < len(want)
            assert gzip.decompress(packed) == want
        small = await f.get("/v1/discovery", headers={"Accept-Encoding": "gzip"})
        assert "content-encoding" not in small.headers  # not worth it under 1 KiB
    answers = Answers(registry)
    assert answers.listing().gzip() is answers.listing().gzip()  # kept beside the plain


@pytest.mark.parametrize(
    ("value", "ok"),
    [
        (b"gzip", True),
        (b"gzip, deflate, br", True),
        (b"deflate, gzip;q=0.5", True),
        (b"GZIP", True),
        (b"x-gzip", True),
        (b"*", True),
        (b"gzip;q=0", False),
        (b"gzip;q=0, *", False),
        (b"*;q=0", False),
        (b"identity", False),
        (b"deflate", False),
        (b"", False),
        (b"gzip;q=bad", False),
    ],
)
def test_accept_encoding(value, ok):
    assert accepts_gzip(value) is ok


async def call(app: Any, path: str, query: bytes = b"") -> tuple[int, dict[bytes, bytes], bytes]:
    """One GET straight through the ASGI interface, the way uvicorn makes it."""
    messages: list[dict[str, Any]] = []
    asked = False
    gone = asyncio.Event()

    async def receive() -> dict[str, Any]:
        nonlocal asked
        if not asked:
            asked = True
            return {"type": "http.request", "body": b"", "more_body": False}
        await gone.wait()
        return {"type": "http.disconnect"}

    async def send(message: dict[str, Any]) -> None:
        messages.append(message)

    scope = {"type": "http", "method": "GET", "path": path, "query_string": query, "headers": []}
    await app(scope, receive, send)
    gone.set()
    start, *bodies = messages
    return start["status"], dict(start["headers"]), b"".join(m["body"] for m in bodies)


async def test_blocking_query_on_the_fast_path(registry):
    fill(registry, 2)
    fast, _ = await both(registry)
    index = registry.index
    held = asyncio.ensure_future(call(fast, "/v1/discoveries", b"index=%d&wait=30s" % index))
    await asyncio.sleep(0.05)
    assert not held.done()
    registry.update(Discovery("new.example", ("service:web",)))
    status, headers, body = await asyncio.wait_for(held, 10)
    assert status == 200
    assert int(headers[b"x-lobby-index"]) == registry.index > index
    assert b"new.example" in body
    status, _, body = await call(fast, "/v1/resolve", b"label=service:web&index=x")
    assert (status, body) == (400, b"invalid index 'x': expected a non-negative integer\n")
    status, _, _ = await call(fast, "/v1/stats", b"index=%d&wait=10ms" % registry.index)
    assert status == 200  # the wait ran out


async def test_the_framework_is_built_only_when_needed(registry):
    fill(registry, 2)
    node = FakeNode(registry)
    fast = create_fast_app(node, "", ChangeFeed(registry))
    assert isinstance(fast, FastApp)
    async with client(fast) as f:
        for path in ("/", "/v1/discoveries?labels=service:web", "/v1/stats", "/v1/prometheus/x"):
            assert (await f.get(path)).status_code == 200
        assert (await f.get("/v1/health")).status_code == 200  # a load balancer's probe
        assert not fast.slow_loaded
        assert (await f.get("/openapi.json")).status_code == 200
        assert fast.slow_loaded


async def test_both_paths_keep_one_set_of_prometheus_parts(registry):
    fill(registry, 4)
    fast = create_fast_app(FakeNode(registry), "", ChangeFeed(registry))
    assert isinstance(fast, FastApp)
    async with client(fast) as f:
        # a GET with a body goes to the framework's route
        answer = await f.get("/v1/prometheus/node", headers={"content-length": "0"})
        assert answer.status_code == 200 and len(answer.json()) == 2
        assert fast.slow_loaded
    assert list(fast.prometheus._parts) == ["node"]  # built by the framework's route


async def test_a_degraded_health_is_the_same_503(registry):
    node = FakeNode(registry)
    node.health = lambda: (False, {"NATS": "down", "Redis": "up"})  # type: ignore[method-assign]
    fast = create_fast_app(node, "s3cret", ChangeFeed(registry))
    slow = create_app(node, "s3cret", ChangeFeed(registry))
    async with client(fast) as f, client(slow) as s:
        a, b = await f.get("/v1/health"), await s.get("/v1/health")
        assert a.status_code == 503 and compared(a) == compared(b)
        assert a.json() == {"status": "degraded", "brokers": {"NATS": "down", "Redis": "up"}}
    assert not fast.slow_loaded


def test_the_daemon_imports_no_framework_to_serve_reads():
    code = (
        "import sys, lobby.daemon, lobby.api.fast, lobby.api.server; "
        "print(sorted(m for m in ('fastapi', 'pydantic', 'starlette') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


class Counted:
    def __init__(self) -> None:
        self.seen: list[tuple[str, int]] = []

    def http_request(self, route: str, code: int, seconds: float) -> None:
        assert seconds >= 0
        self.seen.append((route, code))


async def test_fast_answers_are_counted_by_route_template(registry):
    fill(registry, 3)
    metrics = Counted()
    fast = create_fast_app(FakeNode(registry), "s3cret", ChangeFeed(registry), metrics=metrics)
    auth = {"Authorization": "Token s3cret"}
    async with client(fast) as f:
        assert (await f.get("/v1/prometheus/node", headers=auth)).status_code == 200
        assert (await f.get("/v1/discoveries?labels=x", headers=auth)).status_code == 200
        assert (await f.get("/v1/resolve?label=x")).status_code == 403
    answer = fast.instant("/v1/discovery", b"", [(b"authorization", b"Token s3cret")])
    assert answer is not None and answer[0] == 200
    assert fast.instant("/v1/discoveries", b"index=1", []) is None  # blocking: not at once
    assert metrics.seen == [
        ("/v1/prometheus/{name}", 200),
        ("/v1/discoveries", 200),
        ("/v1/resolve", 403),
        ("/v1/discovery", 200),
    ]
