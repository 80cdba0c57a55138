"""An in-process broker and driver, for fast deterministic daemon tests.

Behaves like the real drivers as the contract suite (tests/integration/
test_driver_contract.py) pins them down: `start` returns at once and the link comes
up on a later turn of the event loop; every attached driver (the sender included)
hears every message on its topic, in order, on a later turn of the loop, never from
inside `publish`; a broker that is down refuses publishes (DriverError) and reports
the link down; a broker that comes back reports it up again; a handler that raises
is logged and loses only its own message; after `close` nothing is called back.

Unlike the real drivers, `MemoryBroker.set_up` reports the link change to every
driver synchronously, before it returns, so tests can assert right after it.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence
from typing import TYPE_CHECKING

from lobby.drivers.base import (
    BatchHandler,
    DriverError,
    LinkHandler,
    MessageHandler,
    QueryHandler,
    QueueInbox,
    ToldHandler,
    Topic,
)

if TYPE_CHECKING:
    from lobby.drivers.base import Driver

log = logging.getLogger("lobby.memory")


class MemoryBroker:
    def __init__(self) -> None:
        self.drivers: list[MemoryDriver] = []
        self.up = True
        self.published: list[tuple[Topic, bytes]] = []
        self.serving: list[MemoryDriver] = []  # listeners taking queries, in turn
        self._turn = 0

    def driver(self) -> MemoryDriver:
        return MemoryDriver(self)

    def inject(self, topic: Topic, data: bytes) -> None:
        """Deliver raw bytes as if some peer had published them."""
        if not self.up:
            raise DriverError("broker is down")
        self.published.append((topic, data))
        loop = asyncio.get_running_loop()
        for driver in list(self.drivers):
            if driver.connected:
                loop.call_soon(driver.deliver, topic, data)

    def set_up(self, up: bool) -> None:
        self.up = up
        for driver in list(self.drivers):
            driver.link(up)


class MemoryDriver:
    def __init__(self, broker: MemoryBroker, *, listen: bool = True) -> None:
        self.broker = broker
        self.listen = listen
        self.fanout = False  # one listener each, in turn (as a NATS queue group)
        self._on_query: QueryHandler | None = None
        self.name = ""  # the listener's, once it serves queries
        self._on_told: ToldHandler | None = None
        self.address = "memory://"
        self.dropped = 0
        self._on_message: MessageHandler | None = None
        self._on_link: LinkHandler | None = None
        self._linked = False

    @property
    def connected(self) -> bool:
        return self._linked and self.broker.up

    async def start(
        self,
        on_message: MessageHandler,
        on_link: LinkHandler,
        on_batch: BatchHandler | None = None,  # one message at a time here
    ) -> None:
        self._on_message = on_message
        self._on_link = on_link
        self.broker.drivers.append(self)
        # on a later turn, like a real connection; the broker may have gone down by then
        asyncio.get_running_loop().call_soon(lambda: self.link(self.broker.up))

    def link(self, up: bool) -> None:
        if up == self._linked or self._on_link is None:
            return
        self._linked = up
        try:
            self._on_link(up)
        except Exception:  # the daemon's bug must not stop the link reports
            log.exception("memory link handler failed")

    def deliver(self, topic: Topic, data: bytes) -> None:
        if self._on_message is None or not self.connected or not self.listen:
            return
        try:
            self._on_message(topic, data)
        except Exception as exc:  # the daemon's bug: log it, keep delivering
            log.error("memory message handler failed: %r", exc)

    async def publish(self, topic: Topic, data: bytes) -> None:
        if not self.connected:
            raise DriverError("not connected")
        self.broker.inject(topic, data)

    async def publish_many(self, topic: Topic, items: Sequence[bytes]) -> None:
        for data in items:
            await self.publish(topic, data)

    async def flush(self, timeout: float) -> None:
        await asyncio.sleep(0)

    async def serve_queries(self, on_query: QueryHandler, name: str = "") -> None:
        self._on_query = on_query
        self.name = name
        if self not in self.broker.serving:
            self.broker.serving.append(self)

    async def stop_serving(self) -> None:
        if self in self.broker.serving:
            self.broker.serving.remove(self)

    async def ask(self, data: bytes, to: str = "") -> QueueInbox:
        if not self.connected:
            raise DriverError("not connected")
        inbox = QueueInbox("no listener takes queries")
        serving = [d for d in self.broker.serving if d.connected and d._on_query is not None]
        if to:
            serving = [d for d in serving if d.name == to]
        if not serving:
            inbox.queue.put_nowait(None)
            return inbox
        self.broker._turn += 1
        listener = serving[self.broker._turn % len(serving)]
        assert listener._on_query is not None

        async def reply(messages: Sequence[bytes]) -> None:
            for message in messages:
                inbox.queue.put_nowait(message)

        asyncio.get_running_loop().call_soon(listener._on_query, data, reply)
        return inbox

    async def tell(self, data: bytes) -> None:
        """Every driver's `hear` handler gets `data` on a later turn of the loop."""
        if not self.connected:
            raise DriverError("not connected")
        loop = asyncio.get_running_loop()
        for driver in list(self.broker.drivers):
            if driver.connected and driver._on_told is not None:
                loop.call_soon(driver._on_told, data)

    def hear(self, on_told: ToldHandler) -> None:
        self._on_told = on_told

    async def close(self) -> None:
        await self.stop_serving()
        self._on_told = None
        self._on_link = None
        self._linked = False
        if self in self.broker.drivers:
            self.broker.drivers.remove(self)


if TYPE_CHECKING:  # mypy checks that MemoryDriver keeps the Driver protocol
    _conforms: Driver = MemoryDriver(MemoryBroker())
