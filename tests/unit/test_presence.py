"""Presence without a Daemon: an injected clock, an in-memory broker, no sleeping."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from lobby import config
from lobby.clock import Clock
from lobby.drivers.memory import MemoryBroker
from lobby.model import Discovery, encode_envelope
from lobby.presence import Presence
from lobby.registry import Registry


class FakeTime:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def fake() -> FakeTime:
    return FakeTime()


def make(tmp_path: Path, fake: FakeTime, **env: str) -> Presence:
    settings = config.load(
        {"HOSTNAME": "me", "DISABLE_API": "1", "LABELS_PATH": str(tmp_path), **env}
    )
    clock = Clock(monotonic=fake, wall=lambda: 1_700_000_000.0)
    registry = Registry(settings.ttl, clock=clock.monotonic, wall_clock=clock.wall)
    return Presence(settings, registry, clock=clock)


async def settle() -> None:
    for _ in range(5):
        await asyncio.sleep(0)


async def test_starts_paused_and_resumes_when_linked(tmp_path, fake):
    p = make(tmp_path, fake)
    assert p.registry.paused  # nothing is live until linked
    await p.start([("memory", MemoryBroker().driver())])
    await settle()
    assert p.links[0].up and not p.registry.paused


async def test_echo_silence_pauses_expiry_from_the_last_echo(tmp_path, fake):
    p = make(tmp_path, fake, KEEP_ALIVE="5", TTL="30")
    broker = MemoryBroker()
    await p.start([("memory", broker.driver())])
    await settle()
    link = p.links[0]
    p.on_message(link, "discovery", encode_envelope("hi", Discovery("me", ())))
    heard = fake.now
    fake.now += 10  # exactly 2 x KEEP_ALIVE: not yet
    p.watch_echo()
    assert not p.registry.paused
    fake.now += 0.5
    p.watch_echo()
    assert p.registry.paused and not link.echo_ok
    # the registry's clock stands still from the last echo on
    assert p.registry._links[link.index].paused_at == heard
    p.on_message(link, "discovery", encode_envelope("hi", Discovery("me", ())))
    assert link.echo_ok and not p.registry.paused


async def test_register_false_never_watches_its_echo(tmp_path, fake):
    p = make(tmp_path, fake, REGISTER="false", KEEP_ALIVE="1")
    await p.start([("memory", MemoryBroker().driver())])
    await settle()
    fake.now += 3600
    p.watch_echo()
    assert not p.registry.paused


async def test_packets_reach_the_registry_and_garbage_is_counted(tmp_path, fake):
    p = make(tmp_path, fake)
    await p.start([("memory", MemoryBroker().driver())])
    link = p.links[0]
    p.on_message(link, "discovery", encode_envelope("hi", Discovery("peer", ("a:1",))))
    p.on_message(link, "discovery", b"not json")
    assert p.registry.get("peer") is not None
    assert p.received == 2 and p.rejected == {"not_json": 1}
    p.on_message(link, "discovery", encode_envelope("goodbye", Discovery("peer", ())))
    assert "peer" not in p.registry


async def test_link_down_pauses_and_up_asks_for_sync(tmp_path, fake):
    p = make(tmp_path, fake)
    broker = MemoryBroker()
    await p.start([("memory", broker.driver())])
    await settle()
    broker.set_up(False)
    assert p.registry.paused
    broker.set_up(True)
    await settle()
    assert not p.registry.paused
    assert ("sync", b'{"message":"sync","hostname":"me"}') in broker.published


async def test_each_link_pauses_its_own_clock(tmp_path, fake):
    p = make(tmp_path, fake)
    one, two = MemoryBroker(), MemoryBroker()
    await p.start([("one", one.driver()), ("two", two.driver())])
    assert [link.index for link in p.links] == [0, 1] and p.registry.links == 2
    assert p.registry.link_paused(0) and p.registry.link_paused(1)  # until linked
    await settle()
    assert not p.registry.paused
    two.set_up(False)
    assert p.registry.paused  # some link is: GET /v1/stats broker.expiry_paused
    assert p.registry.link_paused(1) and not p.registry.link_paused(0)
    two.set_up(True)
    assert not p.registry.paused


async def test_labels_from_env_and_runtime_file(tmp_path, fake):
    p = make(tmp_path, fake, LABELS="env:1")
    await p.add_labels(["run:1"])
    assert p.own_discovery() == Discovery("me", ("env:1", "run:1"), 0)
    assert (tmp_path / "_runtime").read_text() == "run:1\n"
    await p.delete_labels(["run:1", "env:1"])
    assert p.own_discovery().labels == ("env:1",)
