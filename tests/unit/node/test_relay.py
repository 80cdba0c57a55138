"""Several drivers at once and RELAY=true (SPEC §15): Presence on two in-memory brokers."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import orjson
import pytest
from fakes import FakeClock
from support import until

from lobby import config
from lobby.core.clock import Clock
from lobby.core.model import Discovery, add_relay, encode_envelope, encode_sync
from lobby.drivers.memory import MemoryBroker
from lobby.node.presence import Presence
from lobby.view.registry import Registry


def hi(host: str, *labels: str) -> bytes:
    return encode_envelope("hi", Discovery(host, tuple(sorted(labels))))


def bye(host: str) -> bytes:
    return encode_envelope("goodbye", Discovery(host, ()))


@pytest.fixture
async def node(tmp_path: Path) -> AsyncIterator[Callable[..., Any]]:
    """node(**env) -> (Presence on brokers "NATS" and "Redis", nats, redis, fake time)."""
    made: list[tuple[Presence, list[asyncio.Task[Any]]]] = []

    async def make(**env: str) -> tuple[Presence, MemoryBroker, MemoryBroker, FakeClock]:
        settings = config.load(
            {"HOSTNAME": "me", "LABELS_PATH": str(tmp_path), "DRIVER": "NATS,Redis", **env}
        )
        fake = FakeClock()
        clock = Clock(monotonic=fake, wall=lambda: 1_700_000_000.0)
        registry = Registry(settings.ttl, clock=clock.monotonic, wall_clock=clock.wall)
        p = Presence(settings, registry, clock=clock)
        nats, redis = MemoryBroker(), MemoryBroker()
        await p.start([("NATS", nats.driver()), ("Redis", redis.driver())])
        tasks = []
        if p.relay is not None:
            tasks.append(asyncio.create_task(p.relay.run()))
        made.append((p, tasks))
        await until(lambda: all(link.up for link in p.links), what="links up")
        return p, nats, redis, fake

    yield make
    for p, tasks in made:
        for task in tasks:
            task.cancel()
        await p.close()


def sent(broker: MemoryBroker, topic: str = "discovery") -> list[bytes]:
    """What went out on `topic`, without our own sync requests (sent on every link up)."""
    own_sync = encode_sync("me")
    return [data for t, data in broker.published if t == topic and data != own_sync]


async def settle() -> None:
    for _ in range(10):
        await asyncio.sleep(0)


async def test_one_registry_hears_every_link_and_counts_per_link(node):
    p, nats, redis, _ = await node()
    nats.inject("discovery", hi("n", "service:a"))
    redis.inject("discovery", hi("r"))
    redis.inject("discovery", hi("n", "service:a"))  # the same node on both: one record
    redis.inject("discovery", b"junk")
    await until(lambda: p.received == 4)
    assert [d.hostname for d in p.registry.discoveries()] == ["n", "r"]
    links = p.link_stats()
    assert (links["NATS"]["received"], links["Redis"]["received"]) == (1, 3)
    assert links["Redis"]["address"] == "memory://" and links["NATS"]["connected"]
    assert p.stats()["relay"] is None
    assert sent(nats) == [hi("n", "service:a")]  # no relay: nothing forwarded


async def test_announces_on_every_link(node):
    p, nats, redis, _ = await node()
    p.announcer.wake()
    announcer = asyncio.create_task(p.announcer.run())
    await until(lambda: hi("me") in sent(nats) and hi("me") in sent(redis))
    announcer.cancel()
    assert all(link.announcements >= 1 for link in p.links)
    assert p.sent == sum(link.announcements for link in p.links)


async def test_each_link_pauses_only_the_nodes_heard_last_through_it(node):
    # KEEP_ALIVE 100: no echo falls due (it would hold its link too) in the 62 s skipped
    p, nats, redis, fake = await node(TTL="30", KEEP_ALIVE="100")
    nats.inject("discovery", hi("n"))
    redis.inject("discovery", hi("r"))
    await until(lambda: len(p.registry) == 2)
    redis.set_up(False)
    assert p.registry.link_paused(p.links[1].clock) and not p.registry.link_paused(p.links[0].clock)
    assert p.link_stats()["Redis"]["expiry_paused"] and p.link_stats()["NATS"]["connected"]
    fake.now += 31
    assert [d.hostname for d in p.registry.discoveries()] == ["r"]
    redis.set_up(True)
    assert not p.registry.paused
    fake.now += 31
    assert p.registry.discoveries() == []


async def test_relay_forwards_hi_goodbye_and_sync_byte_for_byte_plus_relay(node):
    p, nats, redis, _ = await node(RELAY="true")
    packets = [hi("go-peer", "service:smtp"), bye("go-peer")]
    for data in packets:
        redis.inject("discovery", data)
    redis.inject("sync", encode_sync("py-peer"))
    await until(lambda: len(sent(nats)) == 2 and len(sent(nats, "sync")) == 1)
    assert sent(nats) == [add_relay(data, "me") for data in packets]
    assert sent(nats, "sync") == [add_relay(encode_sync("py-peer"), "me")]
    assert orjson.loads(sent(nats)[0])["relay"] == "me"
    assert p.relay is not None
    assert p.stats()["relay"] == {"relayed": {"Redis->NATS": 3}, "lost": {}, "queued": 0}


async def test_relay_never_forwards_relayed_invalid_or_own_packets(node):
    p, nats, redis, _ = await node(RELAY="true")
    redis.inject("discovery", add_relay(hi("far"), "other-relay"))  # relayed already
    redis.inject("sync", add_relay(encode_sync("far"), "other-relay"))
    redis.inject("discovery", b'{"message":"hi","discovery":{"hostname":""}}')  # invalid
    redis.inject("sync", b"junk")
    redis.inject("discovery", hi("me"))  # our own: we announce on every link ourselves
    redis.inject("sync", encode_sync("me"))
    nats.inject("discovery", hi("marker"))  # forwarded the other way, last
    await until(lambda: len(sent(redis)) == 4)
    await settle()
    assert sent(nats) == [hi("marker")]
    assert sent(nats, "sync") == []
    assert sent(redis)[-1] == add_relay(hi("marker"), "me")
    # the relayed packet is still a valid announcement for this node
    assert p.registry.get("far") is not None


async def test_relay_ignores_its_own_forwarded_copies(node):
    p, nats, _redis, _ = await node(RELAY="true")
    nats.inject("discovery", add_relay(hi("ghost"), "me"))  # as if echoed back to us
    nats.inject("discovery", hi("marker"))
    await until(lambda: "marker" in p.registry)
    assert "ghost" not in p.registry


async def test_relay_counts_what_it_cannot_forward(node):
    p, nats, redis, _ = await node(RELAY="true")
    nats.set_up(False)
    redis.inject("discovery", hi("go-peer"))
    await until(lambda: "go-peer" in p.registry)
    assert p.relay is not None
    assert p.relay.lost == {"Redis->NATS": 1} and not p.relay.relayed


async def test_relay_does_not_push_a_packet_over_the_size_limit(node):
    from lobby.core.model import MAX_PACKET_BYTES

    p, nats, redis, _ = await node(RELAY="true")
    labels: list[str] = []
    while len(hi("big", *labels, "zz:")) + 1000 < MAX_PACKET_BYTES - 5:
        labels.append(f"{len(labels):02d}:" + "y" * 1000)
    short = len(hi("big", *labels, "zz:"))
    big = hi("big", *labels, "zz:" + "y" * (MAX_PACKET_BYTES - 5 - short))
    assert len(big) == MAX_PACKET_BYTES - 5  # valid, but no room for the relay field
    redis.inject("discovery", big)
    await until(lambda: "big" in p.registry)
    assert p.relay is not None and p.relay.lost == {"Redis->NATS": 1}
    assert sent(nats) == []


async def test_relay_with_a_full_queue_loses_and_counts(node):
    p, nats, _redis, _ = await node(RELAY="true")
    assert p.relay is not None
    p.relay._queue_max = 2
    for i in range(5):  # synchronously: the pump gets no turn in between
        p.receiver.on_message(p.links[1], "discovery", hi(f"n{i}"))
    await until(lambda: len(sent(nats)) == 2)
    assert p.relay.relayed == {"Redis->NATS": 2} and p.relay.lost == {"Redis->NATS": 3}


async def test_daemon_runs_every_driver_and_shows_each_link(tmp_path):
    from lobby.daemon import Daemon

    nats, redis = MemoryBroker(), MemoryBroker()
    settings = config.load(
        {
            "HOSTNAME": "me",
            "DISABLE_API": "true",
            "LABELS_PATH": str(tmp_path),
            "DRIVER": "NATS,Redis",
            "RELAY": "true",
        }
    )
    daemon = Daemon(settings, drivers=[("NATS", nats.driver()), ("Redis", redis.driver())])
    task = asyncio.create_task(daemon.run())
    await until(lambda: hi("me") in sent(nats) and hi("me") in sent(redis), what="announced")
    redis.inject("discovery", hi("go-peer"))
    await until(lambda: add_relay(hi("go-peer"), "me") in sent(nats), what="relayed")
    stats = daemon.stats()
    assert stats["broker"] == {
        "driver": "NATS,Redis",
        "address": "memory://, memory://",
        "connected": True,
        "expiry_paused": False,
    }
    assert list(stats["brokers"]) == ["NATS", "Redis"]
    assert stats["brokers"]["Redis"]["received"] >= 2  # our hi and go-peer's
    assert stats["relay"]["relayed"] == {"Redis->NATS": 1}
    assert daemon.driver is daemon.drivers[0][1]
    daemon.stop()
    assert await asyncio.wait_for(task, 5) == 0
