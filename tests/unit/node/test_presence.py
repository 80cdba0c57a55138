"""Presence without a Daemon: an injected clock, an in-memory broker, no sleeping."""

from __future__ import annotations

import asyncio
from pathlib import Path

import orjson
import pytest
from fakes import FakeClock

from lobby import config
from lobby.core.clock import Clock
from lobby.core.model import Discovery, encode_envelope
from lobby.drivers.memory import MemoryBroker
from lobby.node.presence import Presence
from lobby.view.registry import Registry


@pytest.fixture
def fake() -> FakeClock:
    return FakeClock()


def make(tmp_path: Path, fake: FakeClock, **env: str) -> Presence:
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
    p.receiver.on_message(link, "discovery", encode_envelope("hi", Discovery("me", ())))
    heard = fake.now
    fake.now += 7.49  # just under 1.5 x KEEP_ALIVE: not yet
    p.watch_echo()
    assert not p.registry.paused
    fake.now += 0.02
    # nobody has to tick: the registry itself holds the link at its first read
    assert p.registry.paused
    p.watch_echo()
    assert not link.echo_ok
    # the registry's clock stands still from the last echo on
    assert link.clock.paused_at == heard
    p.receiver.on_message(link, "discovery", encode_envelope("hi", Discovery("me", ())))
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
    p.receiver.on_message(link, "discovery", encode_envelope("hi", Discovery("peer", ("a:1",))))
    p.receiver.on_message(link, "discovery", b"not json")
    assert p.registry.get("peer") is not None
    assert p.received == 2 and p.rejected == {"not_json": 1}
    p.receiver.on_message(link, "discovery", encode_envelope("goodbye", Discovery("peer", ())))
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
    clocks = [link.clock for link in p.links]
    assert clocks == [p.registry.first_link, p.registry.links[1]] and len(p.registry.links) == 2
    assert p.registry.link_paused(clocks[0]) and p.registry.link_paused(clocks[1])  # until linked
    await settle()
    assert not p.registry.paused
    two.set_up(False)
    assert p.registry.paused  # some link is: GET /v1/stats broker.expiry_paused
    assert p.registry.link_paused(clocks[1]) and not p.registry.link_paused(clocks[0])
    two.set_up(True)
    assert not p.registry.paused


async def test_labels_from_env_and_runtime_file(tmp_path, fake):
    p = make(tmp_path, fake, LABELS="env:1")
    await p.add_labels(["run:1"])
    assert p.own_discovery() == Discovery("me", ("env:1", "run:1"), 0)
    assert (tmp_path / "_runtime").read_text() == "run:1\n"
    await p.delete_labels(["run:1", "env:1"])
    assert p.own_discovery().labels == ("env:1",)


# -- read your own writes, and never expire ourselves (SPEC §5, issue 24) ------------


def echo(p: Presence, labels: tuple[str, ...] = ()) -> None:
    p.receiver.on_message(p.links[0], "discovery", encode_envelope("hi", Discovery("me", labels)))


async def test_a_label_write_is_in_our_own_record_before_any_echo(tmp_path, fake):
    p = make(tmp_path, fake, LABELS="env:1")
    await p.start([("memory", MemoryBroker().driver())])
    await settle()
    echo(p, ("env:1",))  # listed from our first echo on
    index = p.registry.index
    await p.add_labels(["run:1"])
    assert p.registry.get("me").labels == ("env:1", "run:1")
    assert p.registry.resolve("run:1") == ["me"] and p.registry.index == index + 1
    echo(p, ("env:1",))  # an echo sent before the write comes back after it
    assert p.registry.get("me").labels == ("env:1", "run:1")  # the write stands
    echo(p, ("env:1", "run:1"))  # the write's own echo changes nothing
    assert p.registry.index == index + 1
    await p.delete_labels(["run:1"])
    assert p.registry.resolve("run:1") == [] and p.registry.get("me").labels == ("env:1",)


async def test_register_false_is_not_listed_after_a_label_write(tmp_path, fake):
    p = make(tmp_path, fake, REGISTER="false")
    await p.start([("memory", MemoryBroker().driver())])
    await settle()
    await p.add_labels(["run:1"])
    assert "me" not in p.registry and p.own_discovery().labels == ("run:1",)


async def test_we_never_expire_ourselves_nor_leave_on_a_goodbye_in_our_name(tmp_path, fake):
    p = make(tmp_path, fake, KEEP_ALIVE="1", TTL="3")
    await p.start([("memory", MemoryBroker().driver())])
    await settle()
    echo(p)
    fake.now += 1.0
    p.registry.expect_echo(
        p.links[0].clock, since=fake.now, within=3600
    )  # keep the link's clock running
    fake.now += 100
    assert "me" in p.registry
    p.receiver.on_message(p.links[0], "discovery", encode_envelope("goodbye", Discovery("me", ())))
    assert "me" in p.registry
    await p.leave()  # after our own goodbye, its echo removes us as any other node
    p.receiver.on_message(p.links[0], "discovery", encode_envelope("goodbye", Discovery("me", ())))
    assert "me" not in p.registry


# -- signing (SPEC §13.1) -------------------------------------------------------------

K1 = "AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8="  # bytes 0..31
K2 = "ZGVmZ2hpamtsbW5vcHFyc3R1dnd4eXp7fH1+f4CBgoM="  # bytes 100..131
NOW_MS = 1_700_000_000_000


def signed_envelope(message, hostname, labels=(), ts=NOW_MS, key=K1) -> bytes:
    from lobby.core.signing import Keyring, decode_key

    sig = Keyring([decode_key(key)]).sign(message, hostname, ts, labels)
    return encode_envelope(message, Discovery(hostname, tuple(labels)), (ts, sig))


async def test_with_keys_we_sign_everything_we_send(tmp_path, fake):
    p = make(tmp_path, fake, SIGNING_KEYS=K1, LABELS="a:1")
    broker = MemoryBroker()
    await p.start([("memory", broker.driver())])
    await settle()
    await p.announcer.publish(p.links[0], "hi", p.announcer.envelope("hi", p.own_discovery()))
    sent = dict(broker.published)
    hi = orjson.loads(sent["discovery"])
    sync = orjson.loads(sent["sync"])
    # the sync request went first, on connecting; ts strictly increases
    assert sync["ts"] == NOW_MS and sync["hostname"] == "me"
    assert hi["ts"] == NOW_MS + 1 and hi["sig"].startswith(p.gate.keyring.signer.id + ".")
    # and a peer with the key accepts both
    peer = make(tmp_path / "peer", fake, SIGNING_KEYS=K1, HOSTNAME="peer")
    await peer.start([("memory", MemoryBroker().driver())])
    peer.receiver.on_message(peer.links[0], "discovery", sent["discovery"])
    assert peer.registry.get("me") == Discovery("me", ("a:1",), 1_700_000_000)
    assert not peer.rejected


async def test_with_keys_forgeries_change_nothing_and_are_counted(tmp_path, fake):
    p = make(tmp_path, fake, SIGNING_KEYS=K1)
    await p.start([("memory", MemoryBroker().driver())])
    link = p.links[0]
    captured = signed_envelope("hi", "real", ("x:1",))
    p.receiver.on_message(link, "discovery", captured)
    assert "real" in p.registry
    forged = [
        encode_envelope("hi", Discovery("invented", ())),  # unsigned
        encode_envelope("goodbye", Discovery("real", ())),  # unsigned goodbye
        signed_envelope("goodbye", "real", ts=NOW_MS + 1, key=K2),  # unknown key
        captured.replace(b"x:1", b"x:2"),  # a flipped byte
        signed_envelope("hi", "real", ("x:1",), ts=NOW_MS - 31_000),  # stale
        captured,  # the very packet again
    ]
    for data in forged:
        p.receiver.on_message(link, "discovery", data)
    assert p.registry.get("real").labels == ("x:1",) and "invented" not in p.registry
    assert p.rejected == {
        "unsigned": 2,
        "unknown_key": 1,
        "bad_signature": 1,
        "stale": 1,
        "duplicate": 1,
    }
    p.receiver.on_message(link, "discovery", signed_envelope("goodbye", "real", ts=NOW_MS + 2))
    p.receiver.on_message(link, "discovery", captured)  # replayed after the goodbye
    assert "real" not in p.registry and p.rejected["replay"] == 1
    stats = p.stats()["signing"]
    assert stats["enabled"] and stats["signed_nodes"] == 0
    assert K1 not in str(p.stats())


async def test_unsigned_or_forged_sync_requests_are_ignored(tmp_path, fake):
    p = make(tmp_path, fake, SIGNING_KEYS=K1)
    await p.start([("memory", MemoryBroker().driver())])
    p.receiver.on_sync(p.links[0], b'{"message":"sync","hostname":"peer"}')
    assert p.rejected == {"sync_unsigned": 1} and not p.announcer._sync_pending
    from lobby.core.model import encode_sync
    from lobby.core.signing import Keyring, decode_key

    sig = Keyring([decode_key(K1)]).sign("sync", "peer", NOW_MS, ())
    p.receiver.on_sync(p.links[0], encode_sync("peer", (NOW_MS, sig)))
    assert p.announcer._sync_pending  # a signed request is answered


async def test_accept_unsigned_lists_go_peers_but_never_a_signed_name_unsigned(tmp_path, fake):
    p = make(tmp_path, fake, SIGNING_KEYS=K1, ACCEPT_UNSIGNED="true")
    await p.start([("memory", MemoryBroker().driver())])
    link = p.links[0]
    p.receiver.on_message(link, "discovery", encode_envelope("hi", Discovery("go", ("g:1",))))
    p.receiver.on_message(link, "discovery", signed_envelope("hi", "py", ("p:1",)))
    p.receiver.on_message(link, "discovery", encode_envelope("hi", Discovery("py", ("evil:1",))))
    p.receiver.on_message(link, "discovery", encode_envelope("goodbye", Discovery("py", ())))
    assert p.registry.get("go").labels == ("g:1",) and p.registry.get("py").labels == ("p:1",)
    assert p.rejected == {"unsigned": 2}
    stats = p.stats()["signing"]
    assert (stats["signed_nodes"], stats["unsigned_nodes"]) == (1, 1)


async def test_a_batch_is_applied_in_order_and_a_failing_packet_loses_only_itself(
    tmp_path, fake, caplog
):
    p = make(tmp_path, fake)
    await p.start([("memory", MemoryBroker().driver())])
    await settle()
    link = p.links[0]

    def listener(change):
        if change.hostname == "boom.example":
            raise ValueError("listener bug")

    p.registry.add_listener(listener)
    batch = [
        encode_envelope("hi", Discovery(host, ("service:web",)))
        for host in ("a.example", "boom.example", "c.example")
    ]
    batch.insert(1, b"not json")
    batch.append(encode_envelope("goodbye", Discovery("a.example", ())))
    p.receiver.on_messages(link, "discovery", batch)
    assert "c.example" in p.registry and "a.example" not in p.registry
    assert link.received == 5 and p.rejected["not_json"] == 1
    assert any("listener bug" in r.getMessage() for r in caplog.records)


def test_loop_lag_keeps_the_worst_counts_the_late_and_tells_the_metrics():
    from lobby.node.presence import LoopLag

    seen: list[float] = []
    lag = LoopLag()
    lag.observe = seen.append
    for late in (0.001, 0.2, 0.04, 8.0, 0.0):
        lag.record(late)
    assert (lag.beats, lag.max, lag.over_50ms) == (5, 8.0, 2)
    assert seen == [0.001, 0.2, 0.04, 8.0, 0.0]


def test_the_loop_lag_histogram_is_exposed():
    from lobby.ops.metrics import Metrics

    metrics = Metrics("test")
    metrics.loop_lag(0.003)
    metrics.loop_lag(0.3)
    text = metrics.render()[0].decode()
    assert 'lobby_event_loop_lag_seconds_bucket{le="0.005"} 1.0' in text
    assert 'lobby_event_loop_lag_seconds_bucket{le="0.5"} 2.0' in text
    assert "lobby_event_loop_lag_seconds_count 2.0" in text
