"""This node on the bus (SPEC §2-4): the facade the daemon and the API use.

`Presence` is built from settings, a registry, a clock and, at `start`, a list of
drivers, and wires the parts that do the work:

- `lobby.node.identity.Identity`: the hostname and labels, and our own record (read your
  own writes; we never expire ourselves);
- `lobby.node.receive.Receiver`: every packet the drivers hand over, through decode ->
  gate (signing) -> relay -> registry;
- `lobby.node.announcer.Announcer`: "hi" every KEEP_ALIVE and at once on a change, the
  goodbye, fast-join sync;
- `lobby.node.link`: one `Link` per driver (its registry clock, its relay endpoint, its
  counters) and `LinkHealth` (echo expectations, pausing expiry while a link is down).

It never touches HTTP or the feed; the daemon wires it, the API calls its methods.
`extra_labels`, when given, adds labels that come from elsewhere: the passing
health-checked labels (`lobby.node.checks`), whose owner calls `refresh_labels()` when they
change. The node layer reads its settings through Protocols (`PresenceSettings`), which
`lobby.config.Settings` satisfies: it does not import the configuration.
"""

from __future__ import annotations

import asyncio
import logging
import socket
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from functools import partial
from pathlib import Path
from typing import Any, Protocol

from lobby.core.clock import SYSTEM_CLOCK, Clock, StallClock
from lobby.core.model import Discovery
from lobby.core.signing import Gate, Keyring, parse_keys_file
from lobby.drivers.base import Driver
from lobby.node.announcer import Announcer, AnnouncerSettings
from lobby.node.identity import Identity, IdentitySettings
from lobby.node.link import ECHO_WITHIN, HealthSettings, Link, LinkHealth
from lobby.node.receive import Receiver, ReceiveSettings
from lobby.node.relay import Relay
from lobby.view.registry import Registry

log = logging.getLogger("lobby")

__all__ = ["ECHO_WITHIN", "Link", "Presence", "PresenceSettings", "load_keyring"]


class KeyringSettings(Protocol):
    @property
    def signing_keys(self) -> Sequence[bytes]: ...
    @property
    def signing_keys_file(self) -> str: ...


class PresenceSettings(
    IdentitySettings,
    AnnouncerSettings,
    HealthSettings,
    ReceiveSettings,
    KeyringSettings,
    Protocol,
):
    """Every setting the node layer reads (lobby.config.Settings has them)."""

    @property
    def relay(self) -> bool: ...
    @property
    def ttl(self) -> int: ...
    @property
    def accept_unsigned(self) -> bool: ...


class Presence:
    def __init__(
        self,
        settings: PresenceSettings,
        registry: Registry,
        *,
        clock: Clock = SYSTEM_CLOCK,
        system_hostname: Callable[[], str] = socket.gethostname,
        extra_labels: Callable[[], Iterable[str]] | None = None,
    ) -> None:
        self.settings = settings
        self.registry = registry
        self.clock = clock
        self.links: list[Link] = []
        self.relay = Relay(lambda: self.identity.hostname) if settings.relay else None
        self.loop_lag = LoopLag()
        self.gate = Gate(
            load_keyring(settings),
            ttl=settings.ttl,
            accept_unsigned=settings.accept_unsigned,
            wall=clock.wall,
        )
        wake = asyncio.Event()
        self.identity = Identity(
            settings,
            registry,
            system_hostname=system_hostname,
            extra_labels=extra_labels,
            on_change=wake.set,
        )
        self.announcer = Announcer(settings, self.identity, self.gate, self.links, wake=wake)
        self.link_health = LinkHealth(settings, registry, clock, self.links, on_up=self._link_up)
        self.receiver = Receiver(
            settings, registry, self.identity, self.gate, self.link_health, self.announcer
        )
        self.announcer.chores = self.receiver.flush_log
        # told of every link going up or down, after link health (lobby.node.queries)
        self.link_watchers: list[Callable[[Link, bool], None]] = []
        self._background: set[asyncio.Task[Any]] = set()
        self.registry.pause()  # nothing is live until we are linked

    @property
    def hostname(self) -> str:
        return self.identity.hostname

    @property
    def labels(self) -> tuple[str, ...]:
        return self.identity.labels

    @property
    def rejected(self) -> Counter[str]:
        """Packets refused, by reason (the receiver's counts)."""
        return self.receiver.rejected

    # -- what the API reads -------------------------------------------------------

    def own_discovery(self) -> Discovery:
        return self.identity.own_discovery()

    @property
    def connected(self) -> bool:
        return bool(self.links) and all(link.driver.connected for link in self.links)

    @property
    def received(self) -> int:
        return sum(link.received for link in self.links)

    @property
    def sent(self) -> int:
        return sum(link.announcements for link in self.links)

    @property
    def send_failures(self) -> int:
        return sum(link.send_failures for link in self.links)

    def health(self) -> tuple[bool, dict[str, str]]:
        """Whether every broker link is up (and echoes us), and each link's state."""
        self.link_health.watch_echo()
        states = {link.name: "up" if link.healthy else "down" for link in self.links}
        return bool(states) and all(state == "up" for state in states.values()), states

    def stats(self) -> dict[str, Any]:
        return {
            "packets": {
                "received": self.received,
                "rejected": sum(self.rejected.values()),
                "rejected_by_reason": dict(sorted(self.rejected.items())),
                "dropped_slow_consumer": sum(link.dropped for link in self.links),
            },
            "announcements": {"sent": self.sent, "failed": self.send_failures},
            "signing": self._signing_stats(),
            "relay": self.relay.stats() if self.relay is not None else None,
            "stalls": self._stall_stats(),
            "labels": {
                "read_errors": self.identity.local.read_errors,
                "failing": sorted(self.identity.local.failing),
            },
        }

    def link_stats(self) -> dict[str, dict[str, Any]]:
        """Each driver's link, by driver name (GET /v1/stats "brokers", health)."""
        self.link_health.watch_echo()
        return {
            link.name: {
                "address": link.driver.address,
                "connected": link.driver.connected,
                "echo_ok": link.echo_ok,
                "expiry_paused": self.registry.link_paused(link.clock),
                "received": link.received,
                "announcements": link.announcements,
                "announcements_failed": link.send_failures,
                "dropped_slow_consumer": link.dropped,
            }
            for link in self.links
        }

    def _stall_stats(self) -> dict[str, Any] | None:
        clock = self.clock.monotonic
        if not isinstance(clock, StallClock):
            return None
        lag = self.loop_lag
        return {
            "count": clock.stalls,
            "seconds": round(clock.stalled, 3),
            "lag_max_seconds": round(lag.max, 3),  # the heartbeat's, every 0.25 s
            "beats_late_over_50ms": lag.over_50ms,
        }

    def _signing_stats(self) -> dict[str, Any]:
        gate = self.gate
        signed, unsigned = gate.count_signed(self.registry, len(self.registry))
        keyring = gate.keyring
        return {
            "enabled": keyring is not None,
            "accept_unsigned": gate.accept_unsigned,
            # key ids are on the wire in every signature: no secret
            "signing_key": keyring.signer.id if keyring is not None else None,
            "verifying_keys": keyring.ids if keyring is not None else [],
            "signed_nodes": signed,
            "unsigned_nodes": unsigned,
        }

    # -- lifecycle ----------------------------------------------------------------

    async def start(self, drivers: Sequence[tuple[str, Driver]]) -> None:
        """Connect every driver in the background and listen on each."""
        now = self.clock.monotonic()
        registry = self.registry
        for name, driver in drivers:
            log.info("broker: %s %s", name, driver.address)
            # the first link takes the registry's first clock, paused since __init__;
            # each further link gets a clock of its own, paused until its driver
            # reports the link up
            clock = registry.add_link() if self.links else registry.first_link
            registry.pause(clock)
            endpoint = self.relay.add_link(name, driver) if self.relay is not None else None
            self.links.append(Link(name, driver, clock, endpoint, heard_self=now))
        receiver = self.receiver
        for link in self.links:  # every link known before the first packet arrives
            await link.driver.start(
                partial(receiver.on_message, link),
                partial(self._on_link, link),
                partial(receiver.on_messages, link),
            )
        if self.relay is not None and len(self.links) < 2:
            log.warning("RELAY=true with a single driver: there is nothing to relay to")

    def loops(self) -> dict[str, Any]:
        """The coroutines that must run as long as the node does, by name."""
        loops = {
            "announcer": self.announcer.run(),
            "echo-watchdog": self.link_health.echo_watchdog(),
        }
        if isinstance(self.clock.monotonic, StallClock):
            loops["stall-watch"] = stall_watch(self.clock.monotonic, self.loop_lag)
        if self.relay is not None:
            loops["relay"] = self.relay.run()
        return loops

    async def watch_labels(self, stopping: asyncio.Event) -> None:
        """Re-read the labels (off the event loop) whenever the label directory changes,
        and at every keep-alive check."""
        await self.identity.local.watch(self.refresh_labels, stopping)

    async def leave(self) -> None:
        """Say goodbye on every live link and give it up to 0.5 s to leave this node."""
        self.identity.leaving = True
        self.registry.set_own(None)  # our goodbye's echo may remove us now
        await self.announcer.leave()

    async def close(self) -> None:
        for task in self._background:
            task.cancel()
        for link in self.links:
            try:
                async with asyncio.timeout(0.5):
                    await link.driver.close()
            except (TimeoutError, Exception) as exc:
                log.debug("driver close: %r", exc)

    def watch_echo(self) -> None:
        """Mark links whose echo is overdue as down (lobby.link.LinkHealth.watch_echo)."""
        self.link_health.watch_echo()

    def _on_link(self, link: Link, up: bool) -> None:
        self.link_health.on_link(link, up)
        for watcher in self.link_watchers:
            watcher(link, up)

    def _link_up(self, link: Link) -> None:
        self.announcer.wake()  # announce at once after (re)connecting
        if not self.settings.listen:
            # an agent hears no echo: it lists itself once it announces; asking peers
            # to announce is for listeners, which hear them
            if self.settings.announce and not self.identity.leaving:
                self.registry.set_own(self.hostname, self.labels)
            return
        # and ask every peer to announce itself too, instead of waiting for their
        # next keep-alive (fast join; Go peers never see the sync topic)
        self._in_background(self.announcer.request_sync(link))

    def _in_background(self, coro: Any) -> None:
        task = asyncio.ensure_future(coro)
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    # -- local labels -------------------------------------------------------------

    def refresh_labels(self, *, check_only: bool = False) -> bool:
        """Re-read the labels; announce at once when they changed (Identity)."""
        return self.identity.refresh_labels(check_only=check_only)

    async def add_labels(self, labels: list[str]) -> None:
        await self.identity.add_labels(labels)
        await self._written()

    async def delete_labels(self, labels: list[str]) -> None:
        await self.identity.delete_labels(labels)
        await self._written()

    async def _written(self) -> None:
        """An agent reads the cluster through listeners: its "hi" goes out before the
        write is answered, so that its next read finds it there (SPEC §5, §20). Without
        this the announcer task, woken by the change, usually publishes first anyway;
        here it is the order of one connection, not of the loop's scheduling."""
        if not self.settings.listen:
            await self.announcer.announce_now()


class LoopLag:
    """How much later than asked the event loop ran the heartbeat: the loop's own stalls
    (a long render, a big list, a freeze), as `/v1/stats` and `/metrics` show them."""

    __slots__ = ("beats", "max", "observe", "over_50ms")

    def __init__(self) -> None:
        self.beats = 0
        self.max = 0.0
        self.over_50ms = 0
        self.observe: Callable[[float], None] | None = None  # lobby_event_loop_lag_seconds

    def record(self, late: float) -> None:
        self.beats += 1
        self.max = max(self.max, late)
        if late > 0.05:
            self.over_50ms += 1
        if self.observe is not None:
            self.observe(late)


async def stall_watch(clock: StallClock, lag: LoopLag | None = None) -> None:
    """Read the clock every beat, so a gap in its reads means a stall; say so. How late
    each beat ran is `lag`'s."""
    seen = clock.stalls
    loop = asyncio.get_running_loop()
    while True:
        asked = loop.time() + clock.beat
        await asyncio.sleep(clock.beat)
        clock.beat_once()
        if lag is not None:
            lag.record(max(0.0, loop.time() - asked))
        if clock.stalls != seen:
            seen = clock.stalls
            log.warning(
                "the event loop stood still (a freeze, a VM pause or a long stall): "
                "%.1f s not counted towards any TTL so far",
                clock.stalled,
            )


def load_keyring(settings: KeyringSettings) -> Keyring | None:
    """The keys of SIGNING_KEYS and SIGNING_KEYS_FILE (union, in that order), or None.

    Both were checked when the settings were loaded (lobby.config), so this cannot fail
    on a good start; the file is read again here because that is when it is used.
    """
    keys = list(settings.signing_keys)
    if settings.signing_keys_file:
        keys += parse_keys_file(Path(settings.signing_keys_file).read_text())
    return Keyring(keys) if keys else None
