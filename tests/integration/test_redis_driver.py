"""The Redis driver against real redis-server processes: the driver alone, then lobbyd.

Driver tests run RedisDriver in the test's event loop and poll with `until` (the
sync `wait_for` would block the loop the driver runs on).
"""

from __future__ import annotations

import asyncio
import signal
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest
import redis
from support import Lobbyd, RedisServer, free_port, unique, until, wait_for

from lobby.drivers.base import DriverError, NoListener, Topic
from lobby.drivers.redis import RedisDriver


class Peer:
    """A started RedisDriver and everything it reported."""

    def __init__(self, driver: RedisDriver) -> None:
        self.driver = driver
        self.messages: list[tuple[Topic, bytes]] = []
        self.links: list[bool] = []

    def on_message(self, topic: Topic, data: bytes) -> None:
        self.messages.append((topic, data))

    def on_link(self, up: bool) -> None:
        self.links.append(up)

    async def wait_up(self, times: int = 1) -> None:
        await until(lambda: self.links.count(True) >= times, what=f"link up x{times}")
        assert self.driver.connected


@pytest.fixture
async def peer() -> AsyncIterator[Callable[..., Any]]:
    """peer(port=..., channel=..., password=...) -> started Peer; closed at teardown."""
    started: list[Peer] = []

    async def make(port: int, channel: str, password: str = "", listen: bool = True) -> Peer:
        p = Peer(RedisDriver(port=port, channel=channel, password=password, listen=listen))
        started.append(p)
        await p.driver.start(p.on_message, p.on_link)
        return p

    yield make
    for p in started:
        await p.driver.close()


def raw_client(server: RedisServer) -> redis.Redis:
    return redis.Redis(port=server.port, password=server.password, protocol=2)


# -- messages ---------------------------------------------------------------------


async def test_both_drivers_hear_every_message_including_their_own(
    redis_server: RedisServer, channel: str, peer: Any
) -> None:
    a, b = await peer(redis_server.port, channel), await peer(redis_server.port, channel)
    await a.wait_up()
    await b.wait_up()
    await a.driver.publish("discovery", b"from a")
    await b.driver.publish("discovery", b"from b")
    both = {("discovery", b"from a"), ("discovery", b"from b")}
    await until(lambda: set(a.messages) == set(b.messages) == both, what="both messages")
    assert len(a.messages) == len(b.messages) == 2


async def test_messages_arrive_in_order(redis_server: RedisServer, channel: str, peer: Any) -> None:
    a = await peer(redis_server.port, channel)
    await a.wait_up()
    sent = [f"m{i}".encode() for i in range(500)]
    with raw_client(redis_server) as r, r.pipeline(transaction=False) as pipe:
        for data in sent:
            pipe.publish(channel, data)
        pipe.execute()
    await until(lambda: len(a.messages) == len(sent), what="500 messages")
    assert [data for _, data in a.messages] == sent


async def test_sync_topic_is_a_separate_channel(
    redis_server: RedisServer, channel: str, peer: Any
) -> None:
    a, b = await peer(redis_server.port, channel), await peer(redis_server.port, channel)
    await a.wait_up()
    await b.wait_up()
    await a.driver.publish("sync", b"sync from a")
    with raw_client(redis_server) as r:
        # other Python peers find the side channel by name
        assert r.publish(f"{channel}:sync", b"sync from elsewhere") == 2
        assert r.publish(channel, b"main from elsewhere") == 2
    expected = [("sync", b"sync from a"), ("sync", b"sync from elsewhere")]
    await until(lambda: len(b.messages) == 3, what="three messages")
    assert sorted(m for m in b.messages if m[0] == "sync") == expected
    assert [m for m in b.messages if m[0] == "discovery"] == [("discovery", b"main from elsewhere")]


async def test_garbage_arrives_as_the_same_bytes(
    redis_server: RedisServer, channel: str, peer: Any
) -> None:
    a = await peer(redis_server.port, channel)
    await a.wait_up()
    garbage = [bytes(range(256)), b"", b"\xff\xfe{not json", b"x" * 70_000]
    with raw_client(redis_server) as r:
        for data in garbage:
            r.publish(channel, data)
    await until(lambda: len(a.messages) == len(garbage), what="garbage")
    assert a.messages == [("discovery", data) for data in garbage]


async def test_a_failing_handler_is_logged_and_reading_goes_on(
    redis_server: RedisServer, channel: str, caplog: pytest.LogCaptureFixture
) -> None:
    got: list[bytes] = []

    def on_message(topic: Topic, data: bytes) -> None:
        if data == b"boom":
            raise ValueError("handler bug")
        got.append(data)

    links: list[bool] = []
    driver = RedisDriver(port=redis_server.port, channel=channel)
    await driver.start(on_message, links.append)
    try:
        await until(lambda: links == [True], what="link up")
        await driver.publish("discovery", b"boom")
        await driver.publish("discovery", b"after")
        await until(lambda: got == [b"after"], what="message after the failure")
        assert "Redis message handler failed: ValueError('handler bug')" in caplog.text
        assert links == [True]
    finally:
        await driver.close()


# -- Redis down, restarting, dead, locked -----------------------------------------


async def test_publish_when_down_raises_driver_error_at_once(
    peer: Any, caplog: pytest.LogCaptureFixture
) -> None:
    port = free_port()  # nothing listens here
    a = await peer(port, unique())
    await until(lambda: "cannot connect to Redis" in caplog.text, what="connect failure logged")
    assert not a.driver.connected
    async with asyncio.timeout(1):
        with pytest.raises(DriverError, match="not connected"):
            await a.driver.publish("discovery", b"hi")
    assert f"redis://127.0.0.1:{port}/0" in caplog.text
    assert a.links == []


async def test_redis_restart_drops_and_restores_the_link(
    make_redis: Callable[..., RedisServer], peer: Any, caplog: pytest.LogCaptureFixture
) -> None:
    server = make_redis()
    channel = unique()
    a, b = await peer(server.port, channel), await peer(server.port, channel)
    await a.wait_up()
    await b.wait_up()

    server.kill()
    await until(lambda: a.links == [True, False], what="link down")
    await until(lambda: b.links == [True, False], what="link down")
    assert "lost Redis connection" in caplog.text
    with pytest.raises(DriverError):
        await a.driver.publish("discovery", b"while down")

    server.restart()  # same port
    await a.wait_up(2)
    await b.wait_up(2)
    await a.driver.publish("discovery", b"after restart")
    after = ("discovery", b"after restart")
    await until(lambda: after in a.messages and after in b.messages, what="message")
    assert a.links == b.links == [True, False, True]
    assert "fell behind" not in caplog.text  # a new Redis process, not a dropped client


@pytest.mark.parametrize("listen", [True, False], ids=["listener", "agent"])
async def test_a_silent_link_is_noticed_and_healed(
    make_redis: Callable[..., RedisServer],
    peer: Any,
    caplog: pytest.LogCaptureFixture,
    listen: bool,
) -> None:
    # A stopped redis-server keeps its sockets open but never answers: what a cut
    # network looks like from this side. An agent's subscription holds one channel
    # (its replies) and is watched the same.
    server = make_redis()
    a = await peer(server.port, unique(), listen=listen)
    await a.wait_up()
    server.signal(signal.SIGSTOP)
    try:
        await until(lambda: a.links == [True, False], timeout=15, what="dead link noticed")
        assert "no reply to PING" in caplog.text
    finally:
        server.signal(signal.SIGCONT)
    await a.wait_up(2)
    if not listen:
        assert a.messages == []
        with pytest.raises(NoListener):  # asked, and answered by Redis: nobody takes it
            await (await a.driver.ask(b"anybody?")).get()
        return
    await a.driver.publish("discovery", b"healed")
    await until(lambda: ("discovery", b"healed") in a.messages, what="message after healing")


async def test_falling_behind_is_reported_and_survived(
    make_redis: Callable[..., RedisServer], peer: Any, caplog: pytest.LogCaptureFixture
) -> None:
    server = make_redis()
    channel = unique()
    a = await peer(server.port, channel)
    await a.wait_up()
    big = b"x" * 65536
    with raw_client(server) as r:
        r.config_set("client-output-buffer-limit", "pubsub 256kb 128kb 1")
        # The loop is blocked while we publish, so the driver cannot read: Redis
        # buffers for it until the limit, then disconnects it.
        with r.pipeline(transaction=False) as pipe:
            for _ in range(1000):
                pipe.publish(channel, big)
            pipe.execute()
    await until(lambda: a.links == [True, False, True], what="dropped and resubscribed")
    assert "possibly fell behind" in caplog.text
    assert a.driver.dropped == 0  # Redis does not say how many; we do not guess
    await a.driver.publish("discovery", b"still here")
    await until(lambda: ("discovery", b"still here") in a.messages, what="message after")


async def test_wrong_password_logs_and_keeps_trying(
    make_redis: Callable[..., RedisServer], peer: Any, caplog: pytest.LogCaptureFixture
) -> None:
    server = make_redis(password="s3cret")
    wrong = await peer(server.port, unique(), password="guess")
    missing = await peer(server.port, unique())
    await until(lambda: caplog.text.count("refused our credentials") >= 4, what="auth failures")
    assert "invalid username-password pair" in caplog.text
    assert "Authentication required" in caplog.text
    assert "Traceback" not in caplog.text
    assert "guess" not in caplog.text and "s3cret" not in caplog.text
    for p in (wrong, missing):
        assert p.links == []
        assert not p.driver.connected
        assert p.driver._task is not None and not p.driver._task.done()
        with pytest.raises(DriverError):
            await p.driver.publish("discovery", b"hi")


async def test_right_password_works(make_redis: Callable[..., RedisServer], peer: Any) -> None:
    server = make_redis(password="s3cret")
    a = await peer(server.port, unique(), password="s3cret")
    await a.wait_up()
    await a.driver.publish("discovery", b"authenticated")
    await until(lambda: a.messages == [("discovery", b"authenticated")], what="own message")
    assert "s3cret" not in a.driver.address


@pytest.mark.parametrize("outage", ["killed", "stopped"])
async def test_close_is_idempotent_and_quick_while_redis_is_down(
    make_redis: Callable[..., RedisServer], outage: str
) -> None:
    server = make_redis()
    links: list[bool] = []
    driver = RedisDriver(port=server.port, channel=unique())
    await driver.start(lambda topic, data: None, links.append)
    await until(lambda: links == [True], what="link up")
    await driver.publish("discovery", b"hi")  # the publish pool now holds a connection
    if outage == "killed":
        server.kill()
        await until(lambda: links == [True, False], what="link down")
    else:  # alive to TCP, deaf to commands
        server.signal(signal.SIGSTOP)
    try:
        async with asyncio.timeout(1.5):
            await driver.close()
            await driver.close()
    finally:
        server.signal(signal.SIGCONT)
    assert driver._task is not None and driver._task.done()
    assert not driver.connected
    if not server.running:
        server.start()
    await asyncio.sleep(0.5)  # it must not come back after close
    assert not driver.connected
    assert links == ([True, False] if outage == "killed" else [True])


# -- lobbyd with DRIVER=Redis ------------------------------------------------------


def redis_env(server: RedisServer, channel: str, driver: str = "Redis") -> dict[str, str]:
    return {
        "DRIVER": driver,
        "REDIS_PORT": str(server.port),
        "REDIS_CHANNEL": channel,
        "REDIS_PASSWORD": server.password or "",
        "KEEP_ALIVE": "1",
    }


def labels_of(node: Lobbyd, hostname: str) -> list[str]:
    for d in node.get("/v1/discoveries").json():
        if d["hostname"] == hostname:
            return list(d["labels"])
    return []


def connected(node: Lobbyd) -> bool:
    return bool(node.get("/v1/stats").json()["broker"]["connected"])


def test_two_lobbyd_nodes_list_each_other_and_survive_a_redis_restart(
    make_redis: Callable[..., RedisServer], spawn: Callable[..., Lobbyd]
) -> None:
    server = make_redis(password="s3cret")
    channel = unique("lobby:test")
    a = spawn("a.example", redis_env(server, channel))
    b = spawn("b.example", redis_env(server, channel, driver="redis"))
    both = ["a.example", "b.example"]
    wait_for(lambda: a.hostnames() == both and b.hostnames() == both, what="both list both")
    stats = a.get("/v1/stats").json()["broker"]
    assert stats["driver"] == "Redis"
    assert stats["address"] == f"redis://127.0.0.1:{server.port}/0"

    server.kill()
    wait_for(lambda: not connected(a) and not connected(b), what="both see the link down")
    server.restart()
    wait_for(lambda: connected(a) and connected(b), 30, what="both reconnected")
    # the link really carries announcements again: a label change travels
    r = a.request("POST", "/v1/labels", content="service:after-restart\n")
    assert r.status_code < 300, r.text
    wait_for(lambda: "service:after-restart" in labels_of(b, "a.example"), what="new label")
    assert b.hostnames() == ["a.example", "b.example"]
    assert a.running and b.running


def test_lobbyd_with_a_wrong_password_serves_its_api_and_says_why(
    make_redis: Callable[..., RedisServer], spawn: Callable[..., Lobbyd]
) -> None:
    server = make_redis(password="s3cret")
    env = {**redis_env(server, unique("lobby:test")), "REDIS_PASSWORD": "wrong"}
    node = spawn("locked.example", env)
    wait_for(lambda: "refused our credentials" in node.output(), what="auth failure log")
    assert node.get("/v1/discovery").status_code == 200
    assert not connected(node)
    assert node.running
    assert "Traceback" not in node.output()
