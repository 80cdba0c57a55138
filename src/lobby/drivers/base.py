"""The Driver protocol: the only place a broker is known.

A driver moves opaque envelope bytes between this node and every other node on
two topics: the main one, which Go peers share (`lobby.discovery`), and a sync topic
beside it that only Python peers use (SPEC §2: new kinds of message never go on the
main topic). It knows nothing of the registry or of what the bytes mean.

Its shape follows from how the daemon must behave when the broker misbehaves:

- `start` returns at once and connects in the background, retrying forever: a node
  whose broker is down at boot still serves its API and joins when the broker
  comes back (SPEC §3).
- Incoming messages are handed to a plain callback, synchronously, one at a time,
  in arrival order on each topic (not across the two: nats-py reads each
  subscription in its own task): decoding and applying a packet is cheap and must
  not pay for a task or a queue per message. Every driver hears its own messages.
  A callback that raises is logged by the driver and loses only that message.
- The driver reports its link going up and down (`on_link`), because only the
  daemon knows what that means for liveness (pause expiry, announce at once).
  `connected` already says the same inside the callback, and a callback that raises
  must not stop the driver reconnecting.
- After `close` the driver calls neither callback again.
- `publish` never blocks for long and raises DriverError when the message cannot
  be handed to the broker; the daemon logs it and tries again at the next keep-alive.
  `publish_many` does the same for a burst, in order, in as few round trips as the
  broker allows (a relay forwards bursts; Redis would otherwise pay one per packet).
- Messages the client had to drop because we fell behind are counted in `dropped`.

tests/integration/test_driver_contract.py checks all of this on every driver.

Agents and listeners (SPEC §20) add a third, side topic: queries. A driver built with
`listen=False` (an agent) subscribes to neither topic above; it still publishes. Its
`ask` sends one query and returns an `Inbox` that the reply messages arrive in; a
listener's `serve_queries` takes queries until `stop_serving`. What the bytes mean is
`lobby.core.query`'s; who answers is the broker's (NATS: a queue group, one listener
each) or, where every listener hears every query (`fanout`, Redis), the listeners'
own choice (`lobby.node.queries`). For that choice listeners `tell` each other who is
warm, on a side topic of their own that they `hear` from their start (fanout drivers
only: the others need no hellos and drop them).
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Sequence
from typing import Literal, Protocol

Topic = Literal["discovery", "sync"]
MessageHandler = Callable[[Topic, bytes], None]
# several messages of one topic read at once, in arrival order (see Driver.start)
BatchHandler = Callable[[Topic, Sequence[bytes]], None]
LinkHandler = Callable[[bool], None]


def deliverer(
    topic: Topic,
    on_message: MessageHandler,
    on_batch: BatchHandler | None,
    failed: Callable[[Exception], None],
) -> Callable[[Sequence[bytes]], None]:
    """What a driver calls with the messages of `topic` that one read brought: the
    batch handler when the daemon gave one (if it raises, the rest of that batch is
    lost), else the message handler once per message (if it raises, only that message
    is). `failed` is told of the exception: the daemon's bug, not a connection problem."""
    if on_batch is not None:
        batch_handler = on_batch  # bound here: mypy does not narrow into the closure

        def deliver_batch(batch: Sequence[bytes]) -> None:
            try:
                batch_handler(topic, batch)
            except Exception as exc:
                failed(exc)

        return deliver_batch

    def deliver_each(batch: Sequence[bytes]) -> None:
        for data in batch:
            try:
                on_message(topic, data)
            except Exception as exc:
                failed(exc)

    return deliver_each


class DriverError(Exception):
    """A publish could not be handed to the broker."""


class NoListener(DriverError):
    """Nobody takes queries (NATS answered "no responders" at once)."""


# the reply's messages, sent in order to whoever asked
Replier = Callable[[Sequence[bytes]], Awaitable[None]]
# a query's bytes and where its reply goes; called synchronously, must not block
QueryHandler = Callable[[bytes, Replier], None]
# what a listener told the others (Querying.tell); called synchronously, must not block
ToldHandler = Callable[[bytes], None]


class Inbox(Protocol):
    """Where the messages of one query's reply arrive."""

    async def get(self) -> bytes:
        """The next reply message; raises NoListener when the broker says nobody will
        answer. The caller bounds the wait (asyncio.timeout)."""
        ...

    def close(self) -> None:
        """No more messages wanted: later ones are dropped."""
        ...


class QueueInbox:
    """An `Inbox` every driver uses: the driver puts each reply message on `queue`, and
    None when the broker says nobody takes queries; `close` runs `on_close` (the driver
    forgets the inbox) and is idempotent as far as `on_close` is."""

    __slots__ = ("_nobody", "_on_close", "queue")

    def __init__(self, nobody: str, on_close: Callable[[], object] = lambda: None) -> None:
        self.queue: asyncio.Queue[bytes | None] = asyncio.Queue()
        self._nobody = nobody  # NoListener's message: how this broker said so
        self._on_close = on_close

    async def get(self) -> bytes:
        data = await self.queue.get()
        if data is None:
            raise NoListener(self._nobody)
        return data

    def close(self) -> None:
        self._on_close()


class Querying(Protocol):
    """A driver that carries agents' queries (SPEC §20)."""

    #: every listener hears every query (Redis): the listeners pick who answers
    fanout: bool

    async def serve_queries(self, on_query: QueryHandler, name: str = "") -> None:
        """Take queries (a listener, once warm); idempotent. On NATS, in the queue
        group `lobby`: each query reaches one listener; and those asked of this
        listener by `name` (an agent's retry goes to one that answered it lately)."""
        ...

    async def stop_serving(self) -> None:
        """Take no more queries (a listener whose link dropped); idempotent."""
        ...

    async def ask(self, data: bytes, to: str = "") -> Inbox:
        """Send one query (to the listener named `to`, where the broker can address
        one); raises DriverError when it cannot be handed to the broker."""
        ...

    async def tell(self, data: bytes) -> None:
        """Say `data` to every listener that `hear`s (fanout drivers: a warm listener's
        hello, lobby.node.queries); raises DriverError when it cannot be handed to the
        broker. Drivers without fanout may drop it."""
        ...

    def hear(self, on_told: ToldHandler) -> None:
        """Hand what listeners `tell` to `on_told` from now on (a listener's, from its
        start: it hears the others while it warms up). Drivers without fanout may never
        call it."""
        ...


class Driver(Querying, Protocol):
    #: human-readable broker address for logs, e.g. "nats://127.0.0.1:4222"
    address: str
    #: messages the broker client dropped because this node fell behind
    dropped: int

    @property
    def connected(self) -> bool:
        """True while the link is up and both topics are subscribed (an agent: the
        channel its replies come on)."""
        ...

    async def start(
        self,
        on_message: MessageHandler,
        on_link: LinkHandler,
        on_batch: BatchHandler | None = None,
    ) -> None:
        """Begin connecting and subscribing in the background; returns at once.

        `on_batch`, when given, may be called instead of `on_message` with every
        message of one topic that a single socket read brought, in order: one call
        instead of one per message, which is most of the per-message cost of a
        Python handler at 100,000 messages a second. A driver that reads messages
        one at a time ignores it. Neither handler should raise; if `on_message`
        does, the driver logs it and goes on with the next message; if `on_batch`
        does, the rest of that batch is lost too (lobby's own catches per message).
        """
        ...

    async def publish(self, topic: Topic, data: bytes) -> None:
        """Hand `data` to the broker on `topic`; raises DriverError when it cannot."""
        ...

    async def publish_many(self, topic: Topic, items: Sequence[bytes]) -> None:
        """Hand every item to the broker on `topic`, in order; raises DriverError when
        it cannot (some items may have gone out)."""
        ...

    async def flush(self, timeout: float) -> None:
        """Wait up to `timeout` seconds until published messages left this node."""
        ...

    async def close(self) -> None:
        """Stop reconnecting and close the link. Idempotent."""
        ...
