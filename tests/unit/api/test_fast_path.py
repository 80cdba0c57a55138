"""The one dispatch (lobby.api.dispatch.Api): what each hot route answers, the fast
synchronous path (a cached answer is a `Response` at once, no coroutine), gzip copies,
streamed big lists, blocking queries, request metrics, and no framework imported.
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
from apiwire import client as api_client

from lobby.api.dispatch import Api, accepts_gzip
from lobby.api.http import Request, Response
from lobby.core import answer
from lobby.core.model import Discovery, pretty
from lobby.view.cache import Answers
from lobby.view.feed import ChangeFeed
from lobby.view.prometheus import PrometheusSD
from lobby.view.registry import Registry


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


@pytest.fixture
def registry() -> Registry:
    return Registry(ttl=300)


def make(registry: Registry, token: str = "", feed: bool = True, **kwargs: Any) -> Api:
    changes = ChangeFeed(registry) if feed else None
    return Api(FakeNode(registry), token, changes, node_exporter_port=9100, **kwargs)


def client(api: Api) -> httpx.AsyncClient:
    return api_client(api, headers={"Accept-Encoding": "identity"})


def listing(registry: Registry, **query: str) -> bytes:
    from lobby.api.answers import discoveries_answer

    prepared = discoveries_answer(Answers(registry), query.get("labels"), query.get("prefixes"))
    assert prepared is not None
    body = prepared()
    return body if isinstance(body, bytes) else body.body


@pytest.mark.parametrize("n", [0, 3, 200])
@pytest.mark.parametrize("feed", [True, False])
async def test_each_hot_route_answers_its_bytes(registry, n, feed):
    fill(registry, n)
    api = make(registry, feed=feed)
    web = [d.hostname for d in registry.discoveries() if "service:web" in d.labels]
    expected = {
        "/": (200, listing(registry)),
        "/v1/discoveries": (200, listing(registry)),
        "/v1/discoveries?labels=service:web,location:dc1": (
            200,
            listing(registry, labels="service:web,location:dc1"),
        ),
        "/v1/discoveries?labels=nothing:here": (200, b"[]\n"),
        "/v1/discoveries?prefixes=location:,service:d": (
            200,
            listing(registry, prefixes="location:,service:d"),
        ),
        "/v1/discoveries?labels=&prefixes=public_ip4:": (
            200,
            listing(registry, prefixes="public_ip4:"),
        ),
        "/v1/discoveries?labels=a&labels=service:db": (200, listing(registry, labels="service:db")),
        "/v1/discoveries?unknown=1": (200, listing(registry)),
        "/v1/resolve?label=service:web": (200, pretty(web)),
        "/v1/resolve?label=nobody": (200, b"[]\n"),
        "/v1/resolve?label=": (400, b"query parameter label is required\n"),
        "/v1/resolve": (400, b"query parameter label is required\n"),
        "/v1/discovery": (200, pretty(Discovery("me.example", ("service:me",)).to_dict())),
        "/v1/stats": (200, pretty({"nodes": len(registry), "index": registry.index})),
        "/v1/prometheus/none": (200, b"[]\n"),
        "/v1/prometheus/": (404, b"Not Found\n"),
        "/v1/health": (200, pretty({"status": "ok", "brokers": {}})),
        "/v1/health?x=1": (200, pretty({"status": "ok", "brokers": {}})),
        "/nothing": (404, b"Not Found\n"),
    }
    async with client(api) as c:
        for path, (status, body) in expected.items():
            r = await c.get(path)
            assert (r.status_code, r.content) == (status, body), path
            if status == 200:
                assert r.headers["content-type"] == "application/json; charset=UTF-8"
                assert int(r.headers["content-length"]) == len(body)
            hot = status == 200 and path.startswith(("/v1/d", "/v1/r", "/v1/s", "/?", "/v1/p"))
            if hot and feed:
                assert int(r.headers["x-lobby-index"]) == registry.index, path
            if path.startswith("/v1/health"):
                assert "x-lobby-index" not in r.headers
        redirect = await c.get("/v1/discoveries/?labels=x")
        assert (redirect.status_code, redirect.headers["location"]) == (
            307,
            "/v1/discoveries?labels=x",
        )
        sd = PrometheusSD(Answers(registry), 9100).cached("node")
        want = sd.body if isinstance(sd, answer.Answer) else b"".join(sd.chunks())
        assert (await c.get("/v1/prometheus/node")).content == want


@pytest.mark.parametrize(
    ("token", "read_token"), [("s3cret", ""), ("s3cret", "r3ad"), ("", "r3ad")]
)
async def test_tokens(registry, token, read_token):
    fill(registry, 5)
    api = make(registry, token, read_token=read_token)
    wrong = [{}, {"Authorization": "Token wrong"}, {"Authorization": "s3cret"}]
    right = [{"Authorization": f"Token {t}"} for t in (token, read_token) if t]
    async with client(api) as c:
        for path in ("/", "/v1/discoveries", "/v1/resolve?label=x", "/v1/stats", "/nothing"):
            for headers in wrong:
                r = await c.get(path, headers=headers)
                assert r.status_code == 403, (path, headers)
                assert r.content == b'{\n "message": "access denied"\n}\n'
                assert r.headers["content-type"] == "application/json; charset=UTF-8"
            for headers in right:
                assert (await c.get(path, headers=headers)).status_code != 403
        for headers in wrong:  # public
            assert (await c.get("/v1/health", headers=headers)).status_code == 200
            assert (await c.get("/docs", headers=headers)).status_code == 200
            assert (await c.get("/ui/", headers=headers)).status_code == 200
        if read_token:  # a write with the read token: 403
            r = await c.post("/v1/labels", content="x:1\n", headers=right[-1])
            assert r.status_code == 403


async def test_cached_gets_are_answered_at_once_without_a_coroutine(registry):
    fill(registry, 20)
    api = make(registry)
    for path, query in [
        ("/v1/discoveries", b""),
        ("/v1/discoveries", b"labels=service:web"),
        ("/v1/resolve", b"label=service:web"),
        ("/v1/prometheus/node", b""),
        ("/v1/health", b""),
        ("/v1/stats", b""),
        ("/nothing", b""),
    ]:
        answer = api.dispatch(Request("GET", path, query))
        assert isinstance(answer, Response) and isinstance(answer.body, bytes), path
    held = api.dispatch(Request("GET", "/v1/discoveries", b"index=%d" % registry.index))
    assert not isinstance(held, Response)  # a blocking query waits: a coroutine
    held.close()
    assert api.limits.watchers == 1  # its slot: given back when it ends
    api.limits.release_watcher()
    labels = api.dispatch(Request("POST", "/v1/labels", b"", [], b"x:1\n"))
    assert not isinstance(labels, Response)  # an async handler
    labels.close()


async def test_respond_answers_without_a_socket(registry):
    fill(registry, 3)
    api = make(registry)
    answer = await api.respond(Request("GET", "/v1/discoveries", b"labels=service:db"))
    assert answer.status == 200
    assert await answer.read() == listing(registry, labels="service:db")
    answer = await api.respond(Request("PUT", "/v1/discoveries"))
    assert (answer.status, dict(answer.headers)[b"allow"]) == (405, b"GET, HEAD")


async def test_big_lists_are_streamed_and_not_kept(registry, monkeypatch):
    monkeypatch.setattr("lobby.view.cache.KEEP_MAX", 4096)
    fill(registry, 300)
    expected = pretty([d.to_dict() for d in registry.discoveries()])
    api = make(registry)
    async with client(api) as f:
        r = await f.get("/v1/discoveries")
        assert r.content == expected
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
    api = make(registry)
    async with client(api) as f:
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
        assert "vary" not in small.headers
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


async def test_blocking_query(registry):
    fill(registry, 2)
    api = make(registry)
    index = registry.index
    held = asyncio.ensure_future(
        api.respond(Request("GET", "/v1/discoveries", b"index=%d&wait=30s" % index))
    )
    await asyncio.sleep(0.05)
    assert not held.done()
    assert api.limits.watchers == 1
    registry.update(Discovery("new.example", ("service:web",)))
    answer = await asyncio.wait_for(held, 10)
    headers = dict(answer.headers)
    assert answer.status == 200
    assert int(headers[b"x-lobby-index"]) == registry.index > index
    assert b"new.example" in await answer.read()
    assert api.limits.watchers == 0
    answer = await api.respond(Request("GET", "/v1/resolve", b"label=service:web&index=x"))
    assert (answer.status, answer.body) == (
        400,
        b"invalid index 'x': expected a non-negative integer\n",
    )
    answer = await api.respond(Request("GET", "/v1/stats", b"index=%d&wait=10ms" % registry.index))
    assert answer.status == 200  # the wait ran out
    # a client that goes away: the held request is cancelled and gives its slot back
    gone = asyncio.ensure_future(
        api.respond(Request("GET", "/v1/discoveries", b"index=%d" % registry.index))
    )
    await asyncio.sleep(0.05)
    assert api.limits.watchers == 1
    gone.cancel()
    await asyncio.gather(gone, return_exceptions=True)
    assert api.limits.watchers == 0


async def test_watchers_past_the_cap_get_503(registry):
    from lobby.system.listener import ListenerLimits

    api = make(registry, limits=ListenerLimits(max_watchers=1))
    first = asyncio.ensure_future(
        api.respond(Request("GET", "/v1/discoveries", b"index=%d" % registry.index))
    )
    await asyncio.sleep(0.01)
    busy = await api.respond(Request("GET", "/v1/events"))
    assert busy.status == 503
    assert busy.body == b"too many event streams and blocking queries (1 open); try again later\n"
    assert (b"retry-after", b"5") in busy.headers and (b"connection", b"close") in busy.headers
    assert api.limits.watchers_refused == 1
    first.cancel()
    await asyncio.gather(first, return_exceptions=True)
    stream = await api.respond(Request("GET", "/v1/events"))
    assert stream.status == 200 and api.limits.watchers == 1
    await stream.aclose()
    assert api.limits.watchers == 0


async def test_a_degraded_health_is_503(registry):
    node = FakeNode(registry)
    node.health = lambda: (False, {"NATS": "down", "Redis": "up"})  # type: ignore[method-assign]
    api = Api(node, "s3cret", ChangeFeed(registry))
    async with client(api) as c:
        r = await c.get("/v1/health")
        assert r.status_code == 503
        assert r.json() == {"status": "degraded", "brokers": {"NATS": "down", "Redis": "up"}}


def test_the_daemon_imports_no_framework_to_serve():
    code = (
        "import sys, lobby.daemon, lobby.api.dispatch, lobby.api.server; "
        "print(sorted(m for m in ('fastapi', 'pydantic', 'starlette', 'uvicorn') "
        "if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


class Counted:
    def __init__(self) -> None:
        self.seen: list[tuple[str, int]] = []
        self.seconds: list[float] = []

    def http_request(self, route: str, code: int, seconds: float) -> None:
        self.seen.append((route, code))
        self.seconds.append(seconds)

    def render(self, accept: str = "") -> tuple[bytes, str]:
        return b"", "text/plain"


async def test_answers_are_counted_by_route_template(registry):
    fill(registry, 3)
    metrics = Counted()
    api = make(registry, "s3cret", metrics=metrics)
    auth = {"Authorization": "Token s3cret"}
    async with client(api) as f:
        assert (await f.get("/v1/prometheus/node", headers=auth)).status_code == 200
        assert (await f.get("/v1/discoveries?labels=x", headers=auth)).status_code == 200
        assert (await f.get("/v1/resolve?label=x")).status_code == 403
        assert (await f.get("/no/such", headers=auth)).status_code == 404
        assert (await f.put("/v1/stats", headers=auth)).status_code == 405
    assert metrics.seen == [
        ("/v1/prometheus/{name}", 200),
        ("/v1/discoveries", 200),
        ("/v1/resolve", 403),
        ("unmatched", 404),
        ("/v1/stats", 405),
    ]
    # each a measured duration in seconds: more than nothing, far less than a second
    assert all(0 < seconds < 1 for seconds in metrics.seconds), metrics.seconds


async def test_query_answers_are_kept_by_the_normalised_query(registry):
    fill(registry, 40)
    node = FakeNode(registry)
    node.answers = Answers(registry, wall=lambda: 1000.0)  # lists show last_check: no tick
    api = Api(node, "", ChangeFeed(registry))

    def get(path: str, query: bytes, *headers: tuple[bytes, bytes]) -> Response:
        answer = api.dispatch(Request("GET", path, query, list(headers)))
        assert isinstance(answer, Response) and answer.status == 200
        return answer

    web = b"labels=service:web,location:dc1"
    first = get("/v1/discoveries", web)
    assert first.body == listing(registry, labels="service:web,location:dc1")
    # another spelling of the same query: the same kept answer
    assert get("/v1/discoveries", b"labels=location:dc1,,service:web,location:dc1") is first
    assert get("/", web) is first  # GET / is the same list
    assert get("/v1/discoveries", web) is first  # sent again as it was made
    assert len(first.body) >= answer.GZIP_MIN
    packed = get("/v1/discoveries", web, (b"accept-encoding", b"gzip"))
    assert packed is not first and (b"content-encoding", b"gzip") in packed.headers
    assert gzip.decompress(packed.body) == first.body
    resolved = get("/v1/resolve", b"label=service:web")
    assert get("/v1/resolve", b"label=service:web") is resolved
    assert get("/v1/resolve", b"label=service:db").body != resolved.body
    sd = get("/v1/prometheus/node", b"")
    assert get("/v1/prometheus/node", b"") is sd
    # a change: every kept answer is made again, with the new index
    registry.update(Discovery("node-00001.example", ("location:dc1", "service:web", "x:y")))
    for path, query, before in [
        ("/v1/discoveries", web, first),
        ("/v1/resolve", b"label=service:web", resolved),
        ("/v1/prometheus/node", b"", sd),
    ]:
        after = get(path, query)
        assert after is not before, path
        assert dict(after.headers)[b"x-lobby-index"] == b"%d" % registry.index, path
        assert (b"x-lobby-index", b"%d" % (registry.index - 1)) in before.headers, path
    assert b'"x:y"' in get("/v1/discoveries", b"labels=x:y").body
    members = sd.body.count(b"Targets")
    assert get("/v1/prometheus/node", b"").body.count(b"Targets") == members - 1  # 00001 left


async def test_a_big_list_is_gzipped_while_sent_then_kept(registry, monkeypatch):
    monkeypatch.setattr("lobby.view.cache.KEEP_MAX", 4096)
    fill(registry, 1200)  # 3 slices of 512
    node = FakeNode(registry)
    node.answers = Answers(registry, wall=lambda: 1000.0)  # one second: one Slices
    api = Api(node, "", ChangeFeed(registry))
    expected = pretty([d.to_dict() for d in registry.discoveries()])
    ask = Request("GET", "/v1/discoveries", b"", [(b"accept-encoding", b"gzip")])
    first = api.dispatch(ask)
    assert isinstance(first, Response) and first.streamed  # made slice by slice
    assert (b"content-encoding", b"gzip") in first.headers
    pieces = list(first.body)  # type: ignore[arg-type]
    assert len(pieces) >= 3  # one a slice (some empty: the compressor keeps its output)
    assert gzip.decompress(b"".join(pieces)) == expected
    again = api.dispatch(ask)  # the copy made meanwhile is kept: sent whole
    assert isinstance(again, Response) and not again.streamed
    assert again.body == b"".join(pieces)
    assert dict(again.headers)[b"content-length"] == b"%d" % len(again.body)
    plain = api.dispatch(Request("GET", "/v1/discoveries"))
    assert isinstance(plain, Response) and plain.streamed
    assert b"".join(plain.body) == expected  # type: ignore[arg-type]
