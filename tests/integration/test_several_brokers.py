"""Several brokers at once and relays between them (SPEC §15), with real processes.

Real nats-server and redis-server (the session's, on this test's own subject and
channel), real lobbyd processes, a Go peer written as Go's bytes on Redis, and raw
subscribers (`Tap`) that record what each broker carried.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import orjson
import pytest
from support import GoPeer, Lobbyd, NatsServer, RedisServer, Tap, free_port, wait_for

KEEP_ALIVE = 1
TTL = 3
FAST = {"KEEP_ALIVE": str(KEEP_ALIVE), "TTL": str(TTL), "CLEAN_EVERY": "1"}


@pytest.fixture
def envs(nats_server: NatsServer, redis_server: RedisServer, channel: str) -> dict[str, Any]:
    nats = {"NATS_URL": nats_server.url, "NATS_DISCOVERY_CHANNEL": channel}
    redis = {"REDIS_PORT": str(redis_server.port), "REDIS_CHANNEL": channel}
    return {
        "nats": {**nats, "DRIVER": "NATS", **FAST},
        "redis": {**redis, "DRIVER": "Redis", **FAST},
        "both": {**nats, **redis, "DRIVER": "redis,NATS", **FAST},  # any case, any order
        "relay": {**nats, **redis, "DRIVER": "NATS,Redis", "RELAY": "true", **FAST},
    }


@pytest.fixture
def later() -> Iterator[Callable[[Callable[[], object]], None]]:
    """later(stop): call `stop` at teardown, whatever happened (taps, Go peers)."""
    stops: list[Callable[[], object]] = []
    yield stops.append
    for stop in reversed(stops):
        stop()


def lists(node: Lobbyd, *hosts: str) -> bool:
    return node.hostnames() == sorted(hosts)


def leave_reason(node: Lobbyd, hostname: str, since_index: int, timeout: float = 10) -> str:
    """The reason of `hostname`'s first leave after `since_index`, from /v1/events."""
    headers = {"Last-Event-ID": str(since_index)}
    with (
        httpx.Client(base_url=node.url, timeout=timeout) as client,
        client.stream("GET", "/v1/events", headers=headers) as stream,
    ):
        event = ""
        for line in stream.iter_lines():
            if line.startswith("event: "):
                event = line.removeprefix("event: ")
            elif line.startswith("data: ") and event == "leave":
                data = orjson.loads(line.removeprefix("data: "))
                if data["hostname"] == hostname:
                    return str(data.get("reason", ""))
    raise AssertionError(f"no leave of {hostname} in {node.name}'s events")


def index(node: Lobbyd) -> int:
    return int(node.get("/v1/discoveries").headers["X-Lobby-Index"])


def test_node_on_both_brokers_lists_the_nats_only_and_the_redis_only_node(envs, spawn):
    # NATS in DRIVER and no NATS_URL: the embedded nats-server, as with NATS alone
    port = free_port()
    embedded = {**envs["both"], "NATS_URL": "", "EMBEDDED_NATS_PORT": str(port)}
    both = spawn("both", embedded)
    n = spawn("n", {**envs["nats"], "NATS_URL": f"nats://127.0.0.1:{port}"})
    r = spawn("r", envs["redis"])
    wait_for(lambda: lists(both, "both", "n", "r"), what="both lists every node")
    wait_for(lambda: lists(n, "both", "n") and lists(r, "both", "r"), what="islands")

    stats = both.get("/v1/stats").json()
    assert list(stats["brokers"]) == ["Redis", "NATS"]  # DRIVER's order
    for name, link in stats["brokers"].items():
        assert link["connected"] and not link["expiry_paused"], (name, link)
        assert link["received"] > 0 and link["announcements"] > 0, (name, link)
    assert stats["broker"]["driver"] == "Redis,NATS" and stats["broker"]["connected"]
    assert stats["relay"] is None
    assert stats["brokers"]["NATS"]["address"] == f"nats://127.0.0.1:{port}"
    # a single driver keeps the old shape, plus the same under brokers
    single = n.get("/v1/stats").json()
    assert single["broker"]["driver"] == "NATS" and list(single["brokers"]) == ["NATS"]
    assert single["broker"]["address"] == single["brokers"]["NATS"]["address"]


def test_islands_joined_by_relays(envs, spawn, nats_server, redis_server, channel, later):
    """A Go peer on Redis only and our node on NATS only see one cluster through a relay;
    a goodbye crosses it; two relays make no loop; without relays the islands part."""
    redis_tap = Tap(redis_server, channel).start()
    nats_tap = Tap(nats_server, channel).start()
    later(redis_tap.stop)
    later(nats_tap.stop)
    go = GoPeer(redis_server.port, channel, "go.example", ["service:smtp"]).start()
    later(lambda: go.stop(goodbye=False))
    py = spawn("py", envs["nats"])
    relay1 = spawn("relay1", envs["relay"])
    everyone = ["go.example", "py", "relay1"]
    wait_for(lambda: lists(py, *everyone) and lists(relay1, *everyone), what="one cluster")
    assert py.get("/v1/resolve", params={"label": "service:smtp"}).json() == ["go.example"]

    # the Go side gets py's packet byte for byte, plus the relay field
    def relayed_py() -> list[bytes]:
        return [d for _, d in redis_tap.packets() if b'"hostname":"py"' in d]

    wait_for(relayed_py, what="py's hi on Redis")
    original = next(d for _, d in nats_tap.packets() if b'"hostname":"py"' in d)
    assert relayed_py()[0] == original[:-1] + b',"relay":"relay1"}'

    # a goodbye crosses the relay: py drops the Go peer at once, not by expiry
    before = index(py)
    go.stop(goodbye=True)  # (stopping twice is harmless)
    assert leave_reason(py, "go.example", before) == "goodbye"
    assert any(
        doc["message"] == "goodbye" and doc.get("relay") == "relay1"
        for doc in nats_tap.docs()
        if doc["discovery"]["hostname"] == "go.example"
    )
    go = GoPeer(redis_server.port, channel, "go.example", ["service:smtp"]).start()
    later(lambda: go.stop(goodbye=False))

    # two relays: every packet crosses at most one relay, so each broker carries a
    # bounded number of packets per keep-alive, and none twice relayed
    relay2 = spawn("relay2", envs["relay"])
    everyone = ["go.example", "py", "relay1", "relay2"]
    wait_for(lambda: lists(py, *everyone) and lists(relay2, *everyone), what="two relays")
    start = time.monotonic()
    time.sleep(4 * KEEP_ALIVE)
    window = time.monotonic() - start
    seen: dict[str, Counter[tuple[str, str | None]]] = {}
    for name, tap in (("nats", nats_tap), ("redis", redis_tap)):
        docs = tap.docs(since=start)
        seen[name] = Counter((d["discovery"]["hostname"], d.get("relay")) for d in docs)
    both_ways = {("relay1", "relay2"), ("relay2", "relay1"), ("relay1", None), ("relay2", None)}
    assert set(seen["nats"]) == both_ways | {
        ("py", None),
        ("go.example", "relay1"),
        ("go.example", "relay2"),
    }
    assert set(seen["redis"]) == both_ways | {
        ("go.example", None),
        ("py", "relay1"),
        ("py", "relay2"),
    }
    keep_alives = window / KEEP_ALIVE + 2
    for name, counts in seen.items():
        # 7 kinds of packet, one per keep-alive each (a loop would grow without bound)
        assert sum(counts.values()) <= 7 * keep_alives, (name, counts)
        print(
            f"\nFIGURE {name} packets per keep-alive with 2 relays: {sum(counts.values()) / (window / KEEP_ALIVE):.1f}"
        )
    relay_stats = relay1.get("/v1/stats").json()["relay"]
    assert relay_stats["relayed"]["NATS->Redis"] > 0 and relay_stats["relayed"]["Redis->NATS"] > 0

    # without the relays the islands lose each other after TTL
    before = index(py)
    relay1.kill()
    relay2.kill()
    wait_for(lambda: lists(py, "py"), TTL + 10, what="py alone again")
    assert leave_reason(py, "go.example", before) == "expired"
    quiet = time.monotonic()
    time.sleep(KEEP_ALIVE * 1.5)
    assert [d for d in redis_tap.docs(since=quiet) if d["discovery"]["hostname"] == "py"] == []
