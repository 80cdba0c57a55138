"""Which listener answers over a fanout broker (Redis, SPEC §20): lobby.node.queries.

Every listener hears every query; the warm ones say hello to each other every
KEEP_ALIVE and each answers the queries whose hash picks it among the listeners heard
within HEARD_FOR x KEEP_ALIVE. Here several Responders share a fake fanout broker that
hands each `tell` to every `hear`er at once, and a FakeClock ages the hellos: no sleep,
no broker.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import pytest
from fakes import FakeClock

from lobby.core.query import Hello, Query, QueryError, Reply
from lobby.drivers.base import DriverError, QueryHandler, ToldHandler
from lobby.node.queries import HEARD_FOR, Responder

KEEP_ALIVE = 5.0


class FanoutBroker:
    def __init__(self) -> None:
        self.drivers: list[FakeDriver] = []
        self.told: list[bytes] = []

    def driver(self, fanout: bool = True) -> FakeDriver:
        d = FakeDriver(self, fanout)
        self.drivers.append(d)
        return d


@dataclass(eq=False)
class FakeDriver:
    broker: FanoutBroker
    fanout: bool = True
    up: bool = True
    on_query: QueryHandler | None = None
    on_told: ToldHandler | None = None
    serving_calls: list[str] = field(default_factory=list)

    async def serve_queries(self, on_query: QueryHandler, name: str = "") -> None:
        self.on_query = on_query
        self.serving_calls.append("serve")

    async def stop_serving(self) -> None:
        self.on_query = None
        self.serving_calls.append("stop")

    async def tell(self, data: bytes) -> None:
        if not self.up:
            raise DriverError("not connected")
        self.broker.told.append(data)
        for d in self.broker.drivers:
            if d.on_told is not None and d.up:
                d.on_told(data)

    def hear(self, on_told: ToldHandler) -> None:
        self.on_told = on_told


@dataclass(eq=False)
class FakeLink:
    driver: FakeDriver
    name: str = "Redis"
    up: bool = True


class Node:
    """One listener: its Responder on one link of the fake broker, and what it answered."""

    def __init__(self, name: str, broker: FanoutBroker, clock: FakeClock, fanout: bool = True):
        self.name = name
        self.link = FakeLink(broker.driver(fanout))
        self.answers: list[str] = []
        self.responder = Responder(
            [self.link],  # type: ignore[list-item]
            self.answer,
            warm_after=0.0,
            keep_alive=KEEP_ALIVE,
            hostname=lambda: name,
            clock=clock,
        )

    async def answer(self, query: Query) -> Reply:
        self.answers.append(query.id)
        return Reply(200, [], b"[]")

    def up(self) -> None:
        self.link.up = self.link.driver.up = True
        self.responder.link_changed(self.link, True)  # type: ignore[arg-type]

    def down(self) -> None:
        self.link.up = self.link.driver.up = False
        self.responder.link_changed(self.link, False)  # type: ignore[arg-type]

    def takes(self, query: Query) -> bool:
        """Whether this listener answers `query` (asked as its broker would hand it)."""
        before = self.responder.skipped + self.responder.bad_queries
        handler = self.link.driver.on_query
        if handler is None:  # not serving: the broker does not hand it queries
            return False

        async def reply(messages: Sequence[bytes]) -> None:
            pass

        handler(query.encode(), reply)
        return self.responder.skipped + self.responder.bad_queries == before

    def heard(self) -> list[str]:
        return self.responder.listeners(self.link)  # type: ignore[arg-type]


async def settle() -> None:
    for _ in range(5):
        await asyncio.sleep(0)


def queries(n: int, attempt: int = 0) -> list[Query]:
    return [Query(f"q{i:04d}", "GET", "/v1/discoveries", attempt=attempt) for i in range(n)]


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
async def cluster(clock: FakeClock) -> Any:
    broker = FanoutBroker()
    made: list[Node] = []

    async def make(*names: str, fanout: bool = True) -> list[Node]:
        nodes = [Node(name, broker, clock, fanout) for name in names]
        made.extend(nodes)
        for node in nodes:
            node.up()
        await settle()  # warm (warm_after=0): each says hello
        return nodes

    yield make
    for node in made:
        node.responder.close()
    await settle()


async def test_each_query_is_answered_by_exactly_one_warm_listener(cluster: Any) -> None:
    nodes = await cluster("listener-a", "listener-b", "listener-c")
    for node in nodes:
        assert node.heard() == ["listener-a", "listener-b", "listener-c"]
    taken = {node.name: 0 for node in nodes}
    for query in queries(300):
        takers = [node.name for node in nodes if node.takes(query)]
        assert len(takers) == 1, (query.id, takers)
        taken[takers[0]] += 1
    assert all(n > 50 for n in taken.values()), taken  # the hash spreads them
    await settle()
    assert sum(len(node.answers) for node in nodes) == 300


async def test_the_retry_goes_to_the_next_listener(cluster: Any) -> None:
    nodes = await cluster("listener-a", "listener-b", "listener-c")
    names = sorted(node.name for node in nodes)
    for first, retry in zip(queries(50), queries(50, attempt=1), strict=True):
        one = next(node.name for node in nodes if node.takes(first))
        two = next(node.name for node in nodes if node.takes(retry))
        assert names.index(two) == (names.index(one) + 1) % len(names)


async def test_a_silent_listener_is_dropped_after_heard_for_keep_alives(
    cluster: Any, clock: FakeClock
) -> None:
    a, b, c = await cluster("listener-a", "listener-b", "listener-c")
    c.link.driver.up = False  # c dies: its hellos stop, it hears nothing more
    for _ in range(HEARD_FOR):  # a and b keep saying hello every KEEP_ALIVE
        clock.tick(KEEP_ALIVE)
        for node in (a, b):
            await node.link.driver.tell(Hello(node.name).encode())
        assert "listener-c" in a.heard()  # within HEARD_FOR x KEEP_ALIVE: still counted
    clock.tick(0.1)
    assert a.heard() == b.heard() == ["listener-a", "listener-b"]
    for query in queries(100):
        assert [n.name for n in (a, b) if n.takes(query)] in (["listener-a"], ["listener-b"])


async def test_a_bye_hands_the_share_on_at_once(cluster: Any) -> None:
    a, b, c = await cluster("listener-a", "listener-b", "listener-c")
    await c.responder.leave()
    assert c.link.driver.serving_calls[-1] == "stop"
    assert Hello("listener-c", bye=True).encode() in c.link.driver.broker.told
    assert a.heard() == b.heard() == ["listener-a", "listener-b"]
    for query in queries(100):
        assert len([n for n in (a, b) if n.takes(query)]) == 1


async def test_a_warming_listener_hears_the_others_but_answers_nothing(
    cluster: Any, clock: FakeClock
) -> None:
    a, b = await cluster("listener-a", "listener-b")
    late = Node("listener-late", a.link.driver.broker, clock)
    late.responder.warm_after = 3600.0  # stays warming
    late.up()
    await settle()
    for node in (a, b):
        await node.link.driver.tell(Hello(node.name).encode())  # the next round of hellos
    assert late.heard() == ["listener-a", "listener-b"]  # not itself: it is not warm
    assert a.heard() == ["listener-a", "listener-b"]  # it said no hello
    assert late.link.driver.on_query is None  # not subscribed to queries
    assert not late.responder.warm
    # its own old hello does not make it count itself while it is not warm
    late.responder.heard(late.link, Hello("listener-late").encode())  # type: ignore[arg-type]
    assert "listener-late" not in late.heard()
    late.responder.close()


async def test_views_differ_for_a_moment_two_answer_never_none_when_one_joins(
    cluster: Any, clock: FakeClock
) -> None:
    """A listener that warms up says hello at once, and has heard the others while it
    warmed up: the views agree as soon as its hello is heard."""
    a, b = await cluster("listener-a", "listener-b")
    c = Node("listener-c", a.link.driver.broker, clock)
    c.responder.warm_after = 3600.0
    c.up()
    await settle()
    for node in (a, b):
        await node.link.driver.tell(Hello(node.name).encode())
    # warm now: serve, then hello
    c.responder.warm_after = 0.0
    c.responder.link_changed(c.link, True)  # type: ignore[arg-type]
    for node in (a, b):  # heard again after the link_changed cleared c's view
        await node.link.driver.tell(Hello(node.name).encode())
    await settle()
    for node in (a, b, c):
        assert node.heard() == ["listener-a", "listener-b", "listener-c"]
    for query in queries(100):
        assert len([n for n in (a, b, c) if n.takes(query)]) == 1


async def test_hellos_and_queries_never_pass_for_each_other(cluster: Any) -> None:
    (a,) = await cluster("listener-a")
    query = queries(1)[0]
    a.responder.heard(a.link, query.encode())  # type: ignore[arg-type]
    assert a.responder.bad_hellos == 1 and a.heard() == ["listener-a"]
    assert a.link.driver.on_query is not None

    async def reply(messages: Sequence[bytes]) -> None:
        raise AssertionError("a hello was answered")

    a.link.driver.on_query(Hello("listener-x").encode(), reply)
    await settle()
    assert a.responder.bad_queries == 1 and a.answers == []
    assert "listener-x" not in a.heard()


async def test_a_link_down_stops_serving_and_saying_hello(cluster: Any, clock: FakeClock) -> None:
    a, b = await cluster("listener-a", "listener-b")
    told = len(a.link.driver.broker.told)
    a.down()
    await settle()
    assert a.link.driver.serving_calls[-1] == "stop"
    assert a.heard() == [] and not a.responder.warm
    assert b.heard() == ["listener-a", "listener-b"]  # until a's hello is too old
    clock.tick(HEARD_FOR * KEEP_ALIVE + 1)
    await settle()
    assert len(a.link.driver.broker.told) == told  # no hello from a task left behind
    assert a.responder.stats()["fanout_listeners"] == []
    assert b.responder.stats()["fanout_listeners"] == ["listener-b"]


async def test_without_fanout_no_hello_and_every_query_is_answered(cluster: Any) -> None:
    a, b = await cluster("listener-a", "listener-b", fanout=False)
    assert a.link.driver.broker.told == []
    assert a.link.driver.on_told is None
    assert all(a.takes(q) and b.takes(q) for q in queries(10))  # the broker picks one


def test_a_hello_on_the_wire() -> None:
    assert Hello("a.example").encode() == b'{"v":1,"listener":"a.example"}'
    assert Hello.decode(Hello("a.example", bye=True).encode()) == Hello("a.example", True)
    for bad in (b"", b"[]", b'{"v":2,"listener":"a"}', b'{"v":1}', b'{"v":1,"listener":""}'):
        with pytest.raises(QueryError):
            Hello.decode(bad)
