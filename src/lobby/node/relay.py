"""RELAY=true: forward what one broker carries to every other (SPEC §15).

A node on several brokers with RELAY=true joins their islands into one cluster: every
valid packet (hi, goodbye, sync) heard on one link is published on every other link,
byte for byte plus a top-level `"relay": "<our hostname>"` field. The field is added
without re-encoding the rest (`model.add_relay`), so a signed packet still verifies
and a Go peer, which ignores unknown fields, reads it as the original.

- A packet that already carries `relay` is never forwarded again, so any number of
  relays between any brokers make no loop: each packet crosses at most one relay hop,
  and a broker carries a node's packet at most once directly plus once per relay.
- Our own packets are not forwarded: we already publish them on every link. Our own
  forwarded copies come back to us (a subscriber hears its own publishes); they end
  with our relay field, byte for byte, so `own_copy` spots them before any decoding.
- `forward` is called synchronously from the receive path, so it only appends to a
  bounded queue per destination; one task per destination publishes in arrival order
  (a goodbye never overtakes the hi before it), what has piled up in one
  `publish_many` (one Redis pipeline instead of a round trip per packet: 10x the
  rate). A destination that is down, a failed publish or a full queue loses those
  packets, counted per direction: keep-alives repeat.
"""

from __future__ import annotations

import asyncio
import logging
from collections import Counter, deque
from collections.abc import Callable
from typing import Any, Final

from lobby.core.model import MAX_PACKET_BYTES, PacketError, add_relay
from lobby.drivers.base import Driver, DriverError, Topic
from lobby.system.ratelimit import RateLimitedLog

log = logging.getLogger("lobby.relay")

# Packets waiting per destination: a few seconds of a large cluster's traffic.
QUEUE_MAX: Final = 50_000
# At most this many packets are handed to a destination at once (publish_many).
BATCH_MAX: Final = 500


class Endpoint:
    """One link as the relay sees it: a source to forward from, a destination to
    publish to (its queue). Handed out by `Relay.add_link`; the presence's `Link` keeps
    its own and hands it back to `forward`."""

    __slots__ = ("directions", "driver", "name", "own_copy", "queue", "relay", "wake")

    def __init__(self, relay: Relay, name: str, driver: Driver) -> None:
        self.relay = relay
        self.own_copy = relay.own_copy  # whether a packet heard is one we forwarded
        self.name = name
        self.driver = driver
        self.queue: deque[tuple[str, Topic, bytes]] = deque()  # (direction, topic, data)
        self.wake = asyncio.Event()
        self.directions: dict[str, str] = {}  # source name -> "SOURCE->NAME"

    def forward(self, topic: Topic, data: bytes) -> None:
        """`Relay.forward` from this link."""
        self.relay.forward(self, topic, data)

    def direction_from(self, origin: str) -> str:
        name = self.directions[origin] = f"{origin}->{self.name}"
        return name


class Relay:
    def __init__(self, hostname: Callable[[], str], *, queue_max: int = QUEUE_MAX) -> None:
        self._hostname = hostname
        self._queue_max = queue_max
        self._links: list[Endpoint] = []
        self.relayed: Counter[str] = Counter()  # "NATS->Redis": packets published there
        self.lost: Counter[str] = Counter()  # "NATS->Redis": packets that could not be
        self._log = RateLimitedLog(log, burst=3, every=30)
        self._suffix = ("", b"")  # (hostname, the bytes add_relay ends a packet with)

    def add_link(self, name: str, driver: Driver) -> Endpoint:
        """A link to forward from and to: its endpoint."""
        endpoint = Endpoint(self, name, driver)
        self._links.append(endpoint)
        return endpoint

    def own_copy(self, data: bytes) -> bool:
        """Whether `data` is a packet we forwarded, heard back on the destination."""
        hostname = self._hostname()
        if self._suffix[0] != hostname:  # computed once per hostname
            self._suffix = (hostname, add_relay(b"{}", hostname)[1:])  # ,"relay":"me"}
        return data.endswith(self._suffix[1])

    def forward(self, source: Endpoint, topic: Topic, data: bytes) -> None:
        """Queue a valid, not yet relayed packet heard on link `source` for every other link."""
        try:
            relayed = add_relay(bytes(data), self._hostname())
        except PacketError:  # not an object: decoding said valid, so this cannot happen
            return
        origin = source.name
        too_large = len(relayed) > MAX_PACKET_BYTES  # peers would drop it: do not send
        for dest in self._links:
            if dest is source:
                continue
            direction = dest.directions.get(origin) or dest.direction_from(origin)
            if too_large or not dest.driver.connected or len(dest.queue) >= self._queue_max:
                self.lost[direction] += 1
                continue
            dest.queue.append((direction, topic, relayed))
            dest.wake.set()

    async def run(self) -> None:
        """Publish what `forward` queued, one task per destination, until cancelled."""
        await asyncio.gather(*(self._pump(dest) for dest in self._links))

    async def _pump(self, dest: Endpoint) -> None:
        queue = dest.queue
        while True:
            await dest.wake.wait()
            dest.wake.clear()
            while queue:
                # what waits, in order, in runs of one topic: one publish_many each
                topic = queue[0][1]
                batch: list[bytes] = []
                counts: Counter[str] = Counter()
                while queue and queue[0][1] == topic and len(batch) < BATCH_MAX:
                    direction, _, data = queue.popleft()
                    batch.append(data)
                    counts[direction] += 1
                try:
                    await dest.driver.publish_many(topic, batch)
                except DriverError as exc:
                    self.lost.update(counts)
                    self._log(logging.WARNING, "cannot relay to %s: %s", dest.name, exc)
                else:
                    self.relayed.update(counts)

    def stats(self) -> dict[str, Any]:
        return {
            "relayed": dict(sorted(self.relayed.items())),
            "lost": dict(sorted(self.lost.items())),
            "queued": sum(len(dest.queue) for dest in self._links),
        }
