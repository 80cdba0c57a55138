"""An in-process broker and driver, for fast deterministic daemon tests.

Behaves like the real drivers as the contract suite pins them down: every attached
driver (the sender included) hears every message on its topic, in order,
asynchronously; a broker that is down refuses publishes and reports the link down.
"""

from __future__ import annotations

import asyncio

from lobby.drivers.base import DriverError, LinkHandler, MessageHandler, Topic


class MemoryBroker:
    def __init__(self) -> None:
        self.drivers: list[MemoryDriver] = []
        self.up = True
        self.published: list[tuple[Topic, bytes]] = []

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
    def __init__(self, broker: MemoryBroker) -> None:
        self.broker = broker
        self.address = "memory://"
        self.dropped = 0
        self._on_message: MessageHandler | None = None
        self._on_link: LinkHandler | None = None
        self._linked = False

    @property
    def connected(self) -> bool:
        return self._linked and self.broker.up

    async def start(self, on_message: MessageHandler, on_link: LinkHandler) -> None:
        self._on_message = on_message
        self._on_link = on_link
        self.broker.drivers.append(self)
        if self.broker.up:
            asyncio.get_running_loop().call_soon(self.link, True)

    def link(self, up: bool) -> None:
        if up == self._linked or self._on_link is None:
            return
        self._linked = up
        self._on_link(up)

    def deliver(self, topic: Topic, data: bytes) -> None:
        if self._on_message is not None and self.connected:
            self._on_message(topic, data)

    async def publish(self, topic: Topic, data: bytes) -> None:
        if not self.connected:
            raise DriverError("not connected")
        self.broker.inject(topic, data)

    async def flush(self, timeout: float) -> None:
        await asyncio.sleep(0)

    async def close(self) -> None:
        self._on_link = None
        self._linked = False
        if self in self.broker.drivers:
            self.broker.drivers.remove(self)
