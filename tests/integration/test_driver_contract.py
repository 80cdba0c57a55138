"""The Driver contract (lobby/drivers/base.py), checked on every driver directly.

Each test runs on the in-memory driver, on NATS and on Redis, with no lobbyd in
between: the test's event loop runs the drivers and polls for what they reported
(`until`). NATS and Redis get a server of their own per test, on a free loopback port,
so that a test can kill it and start it again on the same port.

What every driver must do, and the daemon relies on:

- `start` returns at once, even with the broker down, and calls nothing back from
  inside itself; the link comes up in the background: `on_link(True)`, and from then
  on `connected` is True (it is already True inside the callback).
- Every driver on the broker, the sender included, hears every message published on
  a topic, exactly once, under that topic, in publishing order (order is kept per
  topic and per sender; NATS reads each topic in its own task, so not across topics).
- A message handler that raises loses that message only: the driver logs it (as a
  handler failure, not a connection problem), the link stays up and the next messages
  arrive. A link handler that raises is logged too, and reconnecting goes on.
- Broker gone: `on_link(False)`, `connected` is False (already inside the callback),
  `publish` raises DriverError at once and `flush` does not raise; broker back (same
  address): `on_link(True)` again without anyone's help, and messages flow again.
- `close()`: idempotent, quick even with the broker down; afterwards `connected` is
  False, `publish` raises DriverError, and the driver calls neither handler again,
  not even when the broker restarts.
- `dropped` is 0 when nobody fell behind; `address` names the broker.

Agents' queries (SPEC §20), at the end: a driver built with `listen=False` hears neither
topic but still publishes and goes up and down with its broker; `ask` gets NoListener at
once when nobody serves; a served query's reply messages arrive whole and in order in
that ask's inbox, and only there; `stop_serving` stops it; over a broker restart the
agent's replies flow again and a listener serves again only once asked to. Fanout
drivers (Redis) also carry `tell` to every `hear`ing listener.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable

import pytest
from support import NatsServer, RedisServer, port_open, until, wait_for

from lobby.drivers.base import Driver, DriverError, Inbox, NoListener, Replier, Topic
from lobby.drivers.memory import MemoryBroker, MemoryDriver
from lobby.drivers.nats import NatsDriver
from lobby.drivers.redis import RedisDriver

KINDS = ["memory", "nats", "redis"]
# start() and publish() while down must not wait for the broker; close() may wait a
# little for the client library to wind down (nats-py: up to 1 s while reconnecting)
AT_ONCE = 0.5
QUICK_CLOSE = 2.5
# Broker restarts: nats-py retries every 1 s, Redis backs off up to 2 s.
RECONNECT = 15.0
# How long a closed driver gets to misbehave once a live witness saw the same events.
GRACE = 0.3


class Peer:
    """A driver under test and everything it reported, in order."""

    def __init__(self, driver: Driver) -> None:
        self.driver = driver
        self.messages: list[tuple[Topic, bytes]] = []
        self.links: list[bool] = []
        self.connected_in_callback: list[bool] = []
        self.fail_on: bytes | None = None
        self.fail_links = False

    def on_message(self, topic: Topic, data: bytes) -> None:
        self.messages.append((topic, data))
        if data == self.fail_on:
            raise ValueError("handler bug")

    def on_link(self, up: bool) -> None:
        self.links.append(up)
        self.connected_in_callback.append(self.driver.connected)
        if self.fail_links:
            raise ValueError("link handler bug")

    async def start(self) -> None:
        began = time.monotonic()
        await self.driver.start(self.on_message, self.on_link)
        assert time.monotonic() - began < AT_ONCE, "start() waited for the broker"
        assert self.links == [] and self.messages == [], "start() called back from inside"

    async def wait_links(self, *expected: bool, timeout: float = RECONNECT) -> None:
        await until(lambda: self.links == list(expected), timeout, what=f"links {expected}")
        # the callback saw the state it announced, and that is still the state
        assert self.connected_in_callback == list(expected)
        assert self.driver.connected is expected[-1]

    async def wait_messages(self, count: int, what: str = "messages") -> None:
        await until(lambda: len(self.messages) >= count, what=what)

    def heard(self, topic: Topic, prefix: bytes = b"") -> list[bytes]:
        return [d for t, d in self.messages if t == topic and d.startswith(prefix)]


class Bench:
    """One broker of a kind, which tests can take down and bring back on its address."""

    def __init__(self, kind: str, request: pytest.FixtureRequest, channel: str) -> None:
        self.kind = kind
        self.channel = channel
        self.memory = MemoryBroker()
        self.server: NatsServer | RedisServer | None = None
        if kind != "memory":
            self.server = request.getfixturevalue(f"make_{kind}")()
        self.peers: list[Peer] = []

    def driver(self, name: str = "contract", *, listen: bool = True) -> Driver:
        if isinstance(self.server, NatsServer):
            # as the daemon's _make_driver builds it, with KEEP_ALIVE=1
            return NatsDriver(
                [self.server.url],
                self.channel,
                ping_interval=1,
                name=f"lobbyd {name}",
                listen=listen,
            )
        if isinstance(self.server, RedisServer):
            return RedisDriver(
                host="127.0.0.1",
                port=self.server.port,
                db=0,
                password="",
                channel=self.channel,
                listen=listen,
            )
        return MemoryDriver(self.memory, listen=listen)

    async def peer(self, name: str = "contract", *, up: bool = True, listen: bool = True) -> Peer:
        """A started driver; with up=True, once its link is up."""
        p = Peer(self.driver(name, listen=listen))
        self.peers.append(p)
        await p.start()
        if up:
            await p.wait_links(True)
        return p

    def down(self) -> None:
        if self.server is None:
            self.memory.set_up(False)
        else:
            self.server.kill()
            port = self.server.port
            wait_for(lambda: not port_open(port), 5, what=f"{self.kind} port to close")

    def up(self) -> None:
        if self.server is None:
            self.memory.set_up(True)
        else:
            self.server.start()  # same port

    async def close_all(self) -> None:
        for p in self.peers:
            await p.driver.close()


@pytest.fixture(params=KINDS)
async def bench(request: pytest.FixtureRequest, channel: str) -> AsyncIterator[Bench]:
    b = Bench(request.param, request, channel)
    yield b
    await b.close_all()


async def assert_refused(driver: Driver, topic: Topic = "discovery") -> None:
    began = time.monotonic()
    with pytest.raises(DriverError):
        await driver.publish(topic, b"refused")
    with pytest.raises(DriverError):
        await driver.publish_many(topic, [b"refused", b"too"])
    assert time.monotonic() - began < AT_ONCE, "publish waited for the broker"


async def assert_flush_returns(driver: Driver, timeout: float = 0.2) -> None:
    began = time.monotonic()
    await driver.flush(timeout)  # never raises
    assert time.monotonic() - began < timeout + AT_ONCE


# -- starting -----------------------------------------------------------------------


async def test_start_returns_at_once_and_the_link_comes_up(bench: Bench) -> None:
    a = await bench.peer(up=False)
    await a.wait_links(True)
    assert a.driver.connected
    assert a.driver.dropped == 0
    assert isinstance(a.driver.address, str) and a.driver.address
    if bench.server is not None:
        assert str(bench.server.port) in a.driver.address
    await assert_flush_returns(a.driver)


async def test_broker_down_at_start_joins_when_it_comes_up(bench: Bench) -> None:
    bench.down()
    a = await bench.peer(up=False)  # returns at once all the same
    assert not a.driver.connected
    await assert_refused(a.driver)
    await assert_flush_returns(a.driver)
    assert a.links == []  # nothing to report until the link is up once
    bench.up()
    await a.wait_links(True)
    await a.driver.publish("discovery", b"joined")
    await until(lambda: a.messages == [("discovery", b"joined")], what="own message")


# -- messages -----------------------------------------------------------------------


async def test_every_driver_hears_every_message_its_own_too_in_order(bench: Bench) -> None:
    a = await bench.peer("a")
    b = await bench.peer("b")
    n = 50
    for i in range(n):
        await a.driver.publish("discovery", b"a-d%d" % i)
        await a.driver.publish("sync", b"a-s%d" % i)
        await b.driver.publish("discovery", b"b-d%d" % i)
    await a.driver.flush(1)
    await b.driver.flush(1)
    for p in (a, b):
        await p.wait_messages(3 * n, what="every message")
        assert p.heard("discovery", b"a-") == [b"a-d%d" % i for i in range(n)]
        assert p.heard("discovery", b"b-") == [b"b-d%d" % i for i in range(n)]
        assert p.heard("sync") == [b"a-s%d" % i for i in range(n)]
        assert len(p.messages) == 3 * n  # nothing twice, nothing on the wrong topic
    assert a.links == b.links == [True]
    assert a.driver.dropped == b.driver.dropped == 0


async def test_a_burst_arrives_whole_and_in_order(bench: Bench) -> None:
    a = await bench.peer("a")
    b = await bench.peer("b")
    burst = [b"burst-%d" % i for i in range(300)]
    await a.driver.publish_many("discovery", burst)
    await a.driver.publish_many("sync", [b"sync-1", b"sync-2"])
    await a.driver.publish_many("discovery", [])
    await a.driver.flush(1)
    for p in (a, b):
        await p.wait_messages(302, what="the whole burst")
        assert p.heard("discovery") == burst and p.heard("sync") == [b"sync-1", b"sync-2"]


async def test_bytes_arrive_unchanged(bench: Bench) -> None:
    a = await bench.peer()
    payloads = [b"", bytes(range(256)), b"\xff\xfe{not json", b"x" * 70_000]
    for data in payloads:
        await a.driver.publish("discovery", data)
    await until(lambda: len(a.messages) == len(payloads), what="every payload")
    assert a.messages == [("discovery", data) for data in payloads]


async def test_a_failing_handler_loses_only_that_message(
    bench: Bench, caplog: pytest.LogCaptureFixture
) -> None:
    a = await bench.peer()
    a.fail_on = b"boom"
    for data in (b"before", b"boom", b"after"):
        await a.driver.publish("discovery", data)
    await until(lambda: len(a.messages) == 3, what="the messages around the failure")
    assert [d for _, d in a.messages] == [b"before", b"boom", b"after"]
    assert a.links == [True] and a.driver.connected
    # the driver says whose bug it was; not a connection failure, not asyncio's last resort
    failed = [r for r in caplog.records if "message handler failed" in r.getMessage()]
    assert len(failed) == 1 and "handler bug" in failed[0].getMessage()
    assert not [r for r in caplog.records if r.name == "asyncio"]


# -- the link going down and coming back --------------------------------------------


async def test_broker_down_and_back(bench: Bench) -> None:
    a = await bench.peer("a")
    b = await bench.peer("b")
    await a.driver.publish("discovery", b"before")
    await until(lambda: len(b.messages) == 1, what="first message")

    bench.down()
    await a.wait_links(True, False)
    await b.wait_links(True, False)
    await assert_refused(a.driver, "discovery")
    await assert_refused(b.driver, "sync")
    await assert_flush_returns(a.driver)

    bench.up()
    await a.wait_links(True, False, True)
    await b.wait_links(True, False, True)
    await b.driver.publish("discovery", b"after")
    await a.driver.publish("sync", b"after sync")
    for p in (a, b):
        await p.wait_messages(3, what="messages after the restart")
        assert len(p.messages) == 3
        assert p.messages[0] == ("discovery", b"before")
        assert sorted(p.messages[1:]) == [("discovery", b"after"), ("sync", b"after sync")]


async def test_down_and_back_twice(bench: Bench) -> None:
    a = await bench.peer()
    for _ in range(2):
        bench.down()
        await until(lambda: a.links[-1] is False, RECONNECT, what="link down")
        bench.up()
        await until(lambda: a.links[-1] is True, RECONNECT, what="link up")
    await a.wait_links(True, False, True, False, True)
    await a.driver.publish("discovery", b"still here")
    await until(lambda: a.messages == [("discovery", b"still here")], what="own message")


async def test_a_failing_link_handler_does_not_stop_reconnecting(
    bench: Bench, caplog: pytest.LogCaptureFixture
) -> None:
    a = await bench.peer("a", up=False)
    b = await bench.peer("b", up=False)
    a.fail_links = True
    await a.wait_links(True)
    await b.wait_links(True)
    bench.down()
    await a.wait_links(True, False)
    await b.wait_links(True, False)  # a's failure did not keep the news from b
    bench.up()
    await a.wait_links(True, False, True)
    await b.wait_links(True, False, True)
    await a.driver.publish("discovery", b"back")
    await until(lambda: a.messages == b.messages == [("discovery", b"back")], what="messages")
    assert len([r for r in caplog.records if "link handler failed" in r.getMessage()]) == 3


# -- closing ------------------------------------------------------------------------


async def test_close_is_idempotent_and_final(bench: Bench) -> None:
    a = await bench.peer("a")
    witness = await bench.peer("witness")
    await a.driver.close()
    await a.driver.close()
    assert not a.driver.connected
    await assert_refused(a.driver)
    await assert_flush_returns(a.driver)

    # the witness hears what a would have heard, then a gets time to misbehave
    await witness.driver.publish("discovery", b"after close")
    await witness.driver.publish("sync", b"after close")
    await until(lambda: len(witness.messages) == 2, what="witness hears")
    bench.down()
    await witness.wait_links(True, False)
    bench.up()
    await witness.wait_links(True, False, True)
    await witness.driver.publish("discovery", b"after restart")
    await until(lambda: len(witness.messages) == 3, what="witness hears again")
    await asyncio.sleep(GRACE)
    assert a.messages == []
    assert a.links == [True]
    assert not a.driver.connected


async def test_close_while_down_is_quick_and_final(bench: Bench) -> None:
    a = await bench.peer("a")
    witness = await bench.peer("witness")
    bench.down()
    await a.wait_links(True, False)
    await witness.wait_links(True, False)
    began = time.monotonic()
    await a.driver.close()
    await a.driver.close()
    assert time.monotonic() - began < QUICK_CLOSE
    bench.up()
    await witness.wait_links(True, False, True)
    await witness.driver.publish("discovery", b"after restart")
    await until(lambda: len(witness.messages) == 1, what="witness hears")
    await asyncio.sleep(GRACE)
    assert a.links == [True, False]
    assert a.messages == []
    assert not a.driver.connected


async def test_close_before_the_link_is_up(bench: Bench) -> None:
    bench.down()
    a = await bench.peer("a", up=False)
    await a.driver.close()
    await a.driver.close()
    bench.up()
    witness = await bench.peer("witness")
    await witness.driver.publish("discovery", b"hi")
    await until(lambda: len(witness.messages) == 1, what="witness hears")
    await asyncio.sleep(GRACE)
    assert a.links == [] and a.messages == []
    assert not a.driver.connected


@pytest.mark.parametrize("kind", KINDS)
async def test_close_without_start(kind: str, request: pytest.FixtureRequest, channel: str) -> None:
    bench = Bench(kind, request, channel)
    driver = bench.driver()
    assert not driver.connected
    await assert_refused(driver)
    await driver.close()
    await driver.close()
    assert not driver.connected


# -- agents' queries (SPEC §20) -----------------------------------------------------


class Served:
    """A listener's query handler: answers each query with `reply(query)`'s messages."""

    def __init__(self, reply: Callable[[bytes], list[bytes]]) -> None:
        self.reply = reply
        self.queries: list[bytes] = []
        self._tasks: set[asyncio.Task[None]] = set()

    def __call__(self, data: bytes, replier: Replier) -> None:
        self.queries.append(data)
        task = asyncio.ensure_future(replier(self.reply(data)))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)


async def messages(inbox: Inbox, count: int, timeout: float = 5.0) -> list[bytes]:
    try:
        async with asyncio.timeout(timeout):
            return [await inbox.get() for _ in range(count)]
    finally:
        inbox.close()


async def answered(agent: Peer, data: bytes, count: int) -> list[bytes]:
    """The reply to a query asked until some listener takes it: NATS hands a new
    subscription to the server in the background."""
    for _ in range(50):
        try:
            return await messages(await agent.driver.ask(data), count, timeout=1.0)
        except NoListener:
            await asyncio.sleep(0.1)
    raise AssertionError(f"nobody took {data!r}")


async def test_an_agent_hears_nothing_and_still_announces(bench: Bench) -> None:
    listener = await bench.peer("listener")
    agent = await bench.peer("agent", listen=False)
    await agent.driver.publish("discovery", b"agent hi")
    await listener.driver.publish("discovery", b"listener hi")
    await listener.driver.publish("sync", b"listener sync")
    await until(lambda: len(listener.messages) == 3, what="the listener hears both")
    await asyncio.sleep(GRACE)
    assert agent.messages == [] and agent.driver.connected


async def test_no_listener_is_said_at_once(bench: Bench) -> None:
    await bench.peer("listener")  # subscribed to the topics, but takes no queries
    agent = await bench.peer("agent", listen=False)
    began = time.monotonic()
    inbox = await agent.driver.ask(b"anybody?")
    with pytest.raises(NoListener):
        await messages(inbox, 1)
    assert time.monotonic() - began < AT_ONCE


async def test_a_reply_arrives_whole_in_order_and_only_in_its_inbox(bench: Bench) -> None:
    listener = await bench.peer("listener")
    agent = await bench.peer("agent", listen=False)
    big = bytes(range(256)) * 2048  # 512 KiB
    served = Served(lambda q: [q + b":1", big, q + b":3"])
    await listener.driver.serve_queries(served)
    await listener.driver.serve_queries(served)  # idempotent
    assert await answered(agent, b"q0", 3) == [b"q0:1", big, b"q0:3"]
    first = await agent.driver.ask(b"q1")
    second = await agent.driver.ask(b"q2")
    assert await messages(second, 3) == [b"q2:1", big, b"q2:3"]
    assert await messages(first, 3) == [b"q1:1", big, b"q1:3"]
    assert served.queries[-2:] == [b"q1", b"q2"]  # each query once, unchanged
    # a closed inbox takes nothing more: the next ask sees its own reply only
    await agent.driver.ask(b"q3")  # asked, never read
    assert await messages(await agent.driver.ask(b"q4"), 3) == [b"q4:1", big, b"q4:3"]
    await listener.driver.stop_serving()
    await listener.driver.stop_serving()  # idempotent
    await until(lambda: served.queries[-2:] == [b"q3", b"q4"], what="q3 and q4 served")

    async def refused() -> bool:
        try:
            await messages(await agent.driver.ask(b"late"), 1, timeout=1.0)
        except NoListener:
            return True
        except TimeoutError:  # NATS: asked while the unsubscribe was on its way
            return False
        return False

    for _ in range(50):  # NATS takes the unsubscribe in the background
        if await refused():
            break
        await asyncio.sleep(0.1)
    else:
        raise AssertionError("stop_serving did not stop the queries")


async def test_queries_over_a_broker_restart(bench: Bench) -> None:
    listener = await bench.peer("listener")
    agent = await bench.peer("agent", listen=False)
    served = Served(lambda q: [b"re:" + q])
    await listener.driver.serve_queries(served)
    assert await answered(agent, b"before", 1) == [b"re:before"]
    bench.down()
    await agent.wait_links(True, False)
    await listener.wait_links(True, False)
    with pytest.raises(DriverError):
        await agent.driver.ask(b"down")
    await listener.driver.stop_serving()  # as lobby.node.queries does on a link down
    bench.up()
    await agent.wait_links(True, False, True)
    await listener.wait_links(True, False, True)
    await listener.driver.serve_queries(served)
    assert await answered(agent, b"after", 1) == [b"re:after"]
    assert agent.messages == []


@pytest.mark.parametrize("kind", ["memory", "redis"])
async def test_listeners_hear_what_listeners_tell(
    kind: str, request: pytest.FixtureRequest, channel: str
) -> None:
    bench = Bench(kind, request, channel)
    try:
        a = await bench.peer("a")
        b = await bench.peer("b")
        agent = await bench.peer("agent", listen=False)
        told: dict[str, list[bytes]] = {"a": [], "b": [], "agent": []}
        a.driver.hear(told["a"].append)
        b.driver.hear(told["b"].append)
        agent.driver.hear(told["agent"].append)
        await a.driver.tell(b"hello from a")
        await b.driver.tell(b"hello from b")
        want = [b"hello from a", b"hello from b"]
        await until(lambda: told["a"] == want and told["b"] == want, what="both hear both")
        assert a.messages == b.messages == []  # not on the topics
        if kind == "redis":
            assert told["agent"] == []  # an agent is subscribed to its replies only
    finally:
        await bench.close_all()
