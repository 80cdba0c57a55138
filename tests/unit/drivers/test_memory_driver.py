"""MemoryDriver details the shared contract suite cannot reach with a real broker.

The contract itself (tests/integration/test_driver_contract.py) runs on the memory
driver too; these pin the in-process broker's own promises and a race that only an
in-process broker can stage on purpose.
"""

from __future__ import annotations

import asyncio

from support import until

from lobby.drivers.base import Topic
from lobby.drivers.memory import MemoryBroker


class Recorder:
    def __init__(self) -> None:
        self.messages: list[tuple[Topic, bytes]] = []
        self.links: list[bool] = []

    def on_message(self, topic: Topic, data: bytes) -> None:
        self.messages.append((topic, data))

    def on_link(self, up: bool) -> None:
        self.links.append(up)


async def test_broker_down_before_the_link_comes_up_reports_nothing_until_it_is_back() -> None:
    broker = MemoryBroker()
    driver = broker.driver()
    r = Recorder()
    await driver.start(r.on_message, r.on_link)
    broker.set_up(False)  # before the loop turned: the link never came up
    await asyncio.sleep(0.01)
    assert r.links == [] and not driver.connected
    broker.set_up(True)
    assert r.links == [True] and driver.connected


async def test_set_up_reports_before_it_returns() -> None:
    broker = MemoryBroker()
    driver = broker.driver()
    r = Recorder()
    await driver.start(r.on_message, r.on_link)
    await until(lambda: r.links == [True], what="link up")
    broker.set_up(False)
    assert r.links == [True, False]
    broker.set_up(False)  # no news, no call
    broker.set_up(True)
    assert r.links == [True, False, True]


async def test_inject_reaches_every_connected_driver_and_is_recorded() -> None:
    broker = MemoryBroker()
    a, b = Recorder(), Recorder()
    da, db = broker.driver(), broker.driver()
    await da.start(a.on_message, a.on_link)
    await db.start(b.on_message, b.on_link)
    await until(lambda: a.links == b.links == [True], what="both up")
    broker.inject("sync", b"from elsewhere")
    await da.publish("discovery", b"from a")
    assert a.messages == [] and b.messages == []  # never from inside publish
    await until(lambda: len(a.messages) == len(b.messages) == 2, what="both messages")
    assert a.messages == b.messages == [("sync", b"from elsewhere"), ("discovery", b"from a")]
    assert broker.published == a.messages
    await da.close()
    assert broker.drivers == [db]
