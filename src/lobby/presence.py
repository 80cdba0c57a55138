"""This node on the bus: who we are, what we say, what we hear (SPEC §2-4).

`Presence` owns the node's identity and labels, applies every packet the drivers hand
it to the registry (synchronously: no queue, no task per packet), announces "hi"
every KEEP_ALIVE and at once when the labels change, answers fast-join sync requests,
and decides when the registry's TTL countdown must stand still.

It is built from settings, a registry, a clock and, at `start`, a list of drivers:

- Each driver gets a `Link` that remembers its own state: whether the driver says the
  link is up, and when our own "hi" last came back through it. A TCP link can look
  open while nothing flows (a frozen broker), so an echo silent for 2 x KEEP_ALIVE
  counts as down too.
- Expiry is paused while any link is unhealthy, from the last moment we heard
  ourselves through it: an outage on our side expires nobody. (With one driver this
  is exactly SPEC §3; with several, §15 refines it per record.)
- It never touches HTTP or the feed; the daemon wires it, the API calls its methods.
"""

from __future__ import annotations

import asyncio
import logging
import random
import socket
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import partial
from typing import Any, Final, Literal

from lobby._ratelimit import RateLimitedLog
from lobby.clock import SYSTEM_CLOCK, Clock
from lobby.config import Settings
from lobby.drivers.base import Driver, DriverError, Topic
from lobby.labels import LocalLabels, parse_env_labels, watch_label_dir
from lobby.model import (
    GOODBYE,
    HI,
    MAX_PACKET_BYTES,
    Discovery,
    LabelError,
    PacketError,
    decode_envelope,
    decode_sync,
    encode_envelope,
    encode_sync,
)
from lobby.registry import Registry

log = logging.getLogger("lobby")

SYNC_SPREAD: Final = 0.2  # seconds over which peers answer a sync request


@dataclass
class Link:
    """One driver, what we know of its link, and its counters (/v1/stats, /metrics)."""

    name: str
    driver: Driver
    up: bool = False
    echo_ok: bool = True
    heard_self: float = 0.0  # clock.monotonic() when our own "hi" last came back
    received: int = 0  # packets on the discovery topic
    sent: int = 0  # announcements handed to the broker
    send_failures: int = 0
    reconnects: int = 0  # times the link came back after it had been up
    was_up: bool = False

    @property
    def healthy(self) -> bool:
        return self.up and self.echo_ok

    @property
    def dropped(self) -> int:
        return self.driver.dropped


class Presence:
    def __init__(
        self,
        settings: Settings,
        registry: Registry,
        *,
        clock: Clock = SYSTEM_CLOCK,
        system_hostname: Callable[[], str] = socket.gethostname,
    ) -> None:
        self.settings = settings
        self.registry = registry
        self.clock = clock
        self.local = LocalLabels(
            parse_env_labels(settings.labels),
            settings.labels_path,
            settings.runtime_labels_filename,
        )
        # before anything can write: a temporary file found now is a crash's leftover,
        # one found later may be a write in progress
        self.local.runtime.remove_stale_temp_files()
        self._system_hostname = system_hostname
        self.hostname = settings.hostname or system_hostname()
        self.labels = self.local.read()
        self.links: list[Link] = []
        # counters (GET /v1/stats, /metrics); the others are per link
        self.rejected: Counter[str] = Counter()
        self._wake = asyncio.Event()
        self._sync_pending = False
        self._background: set[asyncio.Task[Any]] = set()
        self._garbage_log = RateLimitedLog(log, burst=5, every=30)
        self._send_log = RateLimitedLog(log, burst=3, every=30)
        self.registry.pause()  # nothing is live until we are linked

    # -- what the API reads -------------------------------------------------------

    def own_discovery(self) -> Discovery:
        return Discovery(self.hostname, self.labels, 0)

    @property
    def connected(self) -> bool:
        return bool(self.links) and all(link.driver.connected for link in self.links)

    @property
    def received(self) -> int:
        return sum(link.received for link in self.links)

    @property
    def sent(self) -> int:
        return sum(link.sent for link in self.links)

    @property
    def send_failures(self) -> int:
        return sum(link.send_failures for link in self.links)

    def health(self) -> tuple[bool, dict[str, str]]:
        """Whether every broker link is up (and echoes us), and each link's state."""
        states = {link.name: "up" if link.healthy else "down" for link in self.links}
        return bool(states) and all(state == "up" for state in states.values()), states

    def stats(self) -> dict[str, Any]:
        return {
            "packets": {
                "received": self.received,
                "rejected": sum(self.rejected.values()),
                "rejected_by_reason": dict(sorted(self.rejected.items())),
                "dropped_slow_consumer": sum(link.driver.dropped for link in self.links),
            },
            "announcements": {"sent": self.sent, "failed": self.send_failures},
        }

    # -- lifecycle ----------------------------------------------------------------

    async def start(self, drivers: Sequence[tuple[str, Driver]]) -> None:
        """Connect every driver in the background and listen on each."""
        now = self.clock.monotonic()
        for name, driver in drivers:
            link = Link(name, driver, heard_self=now)
            self.links.append(link)
            await driver.start(partial(self.on_message, link), partial(self.on_link, link))

    def loops(self) -> dict[str, Any]:
        """The coroutines that must run as long as the node does, by name."""
        return {"announcer": self._announcer(), "echo-watchdog": self._echo_watchdog()}

    async def watch_labels(self, stopping: asyncio.Event) -> None:
        """Re-read the labels whenever the label directory changes."""
        await watch_label_dir(self.local.path, self.refresh_labels, stopping)

    async def leave(self) -> None:
        """Say goodbye on every live link and give it up to 0.5 s to leave this node."""
        if not self.settings.announce:
            return
        goodbye = Discovery(self.hostname, ())
        for link in self.links:
            if link.driver.connected and await self._publish(link, GOODBYE, goodbye):
                await link.driver.flush(0.5)

    async def close(self) -> None:
        for task in self._background:
            task.cancel()
        for link in self.links:
            try:
                await asyncio.wait_for(link.driver.close(), timeout=0.5)
            except (TimeoutError, Exception) as exc:
                log.debug("driver close: %r", exc)

    # -- incoming -----------------------------------------------------------------

    def on_message(self, link: Link, topic: Topic, data: bytes) -> None:
        if topic == "sync":
            self._on_sync(data)
            return
        link.received += 1
        try:
            envelope = decode_envelope(data)
        except PacketError as exc:
            self.rejected[exc.reason] += 1
            self._garbage_log(
                logging.WARNING,
                "dropped invalid packet (%s); %d dropped so far",
                exc,
                sum(self.rejected.values()),
            )
            return
        discovery = envelope.discovery
        if envelope.message == HI:
            self.registry.update(discovery)
            if discovery.hostname == self.hostname:
                link.heard_self = self.clock.monotonic()
                if not link.echo_ok:
                    log.info("our own announcements come back again; resuming expiry")
                    link.echo_ok = True
                    self._update_pause()
        else:
            self.registry.remove(discovery.hostname, "goodbye")

    def on_link(self, link: Link, up: bool) -> None:
        if up and not link.up and link.was_up:
            link.reconnects += 1
        link.up = up
        if up:
            link.was_up = True
            link.heard_self = self.clock.monotonic()
            link.echo_ok = True
            self._wake.set()  # announce at once after (re)connecting
            # and ask every peer to announce itself too, instead of waiting for their
            # next keep-alive (fast join; Go peers never see the sync topic)
            self._in_background(self._request_sync(link))
        self._update_pause()

    def _in_background(self, coro: Any) -> None:
        task = asyncio.ensure_future(coro)
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    async def _request_sync(self, link: Link) -> None:
        try:
            await link.driver.publish("sync", encode_sync(self.hostname))
        except DriverError as exc:
            log.debug("cannot ask peers to sync: %s", exc)

    def _on_sync(self, data: bytes) -> None:
        try:
            requester = decode_sync(data)
        except PacketError as exc:
            self.rejected["sync_" + exc.reason] += 1
            return
        if requester == self.hostname or not self.settings.announce or self._sync_pending:
            return
        # a random delay spreads the answers of a large cluster over SYNC_SPREAD seconds;
        # requests arriving meanwhile share the one announcement
        self._sync_pending = True
        asyncio.get_running_loop().call_later(random.uniform(0, SYNC_SPREAD), self._sync_now)

    def _sync_now(self) -> None:
        self._sync_pending = False
        self._wake.set()

    def _update_pause(self) -> None:
        unhealthy = [link for link in self.links if not link.healthy]
        if self.links and not unhealthy:
            self.registry.resume()
        elif self.settings.announce and unhealthy:
            # from the last sign the link worked: our own "hi" coming back to us
            self.registry.pause(since=min(link.heard_self for link in unhealthy))
        else:
            self.registry.pause()

    # -- local labels -------------------------------------------------------------

    def refresh_labels(self) -> bool:
        """Re-read the local labels; announce at once when they changed."""
        labels = self.local.read()
        if labels == self.labels:
            return False
        self.labels = labels
        log.info("local labels changed: %s", ", ".join(labels) or "(none)")
        self._wake.set()
        return True

    def _check_size(self, runtime: list[str]) -> None:
        # our labels already hold LABELS and every file's; add the new runtime set
        labels = tuple(sorted(set(self.labels).union(runtime)))
        size = len(encode_envelope(HI, Discovery(self.hostname, labels)))
        if size > MAX_PACKET_BYTES:
            raise LabelError(
                f"too many labels: this node's announcement would be {size} bytes, "
                f"over the {MAX_PACKET_BYTES} byte limit peers accept"
            )

    async def add_labels(self, labels: list[str]) -> None:
        await self.local.runtime.add(labels, check=self._check_size)
        self.refresh_labels()

    async def delete_labels(self, labels: list[str]) -> None:
        await self.local.runtime.delete(labels)
        self.refresh_labels()

    # -- outgoing -----------------------------------------------------------------

    async def _publish(
        self, link: Link, message: Literal["hi", "goodbye"], discovery: Discovery
    ) -> bool:
        data = encode_envelope(message, discovery)
        if len(data) > MAX_PACKET_BYTES:
            self._send_log(
                logging.ERROR,
                "our announcement is %d bytes, over the %d byte limit: peers drop it; "
                "remove labels",
                len(data),
                MAX_PACKET_BYTES,
            )
        try:
            await link.driver.publish("discovery", data)
        except DriverError as exc:
            link.send_failures += 1
            self._send_log(
                logging.WARNING,
                "cannot announce %r on %s (%s); retrying in %d s",
                message,
                link.name,
                exc,
                self.settings.keep_alive,
            )
            return False
        link.sent += 1
        return True

    def _hostname_changed(self) -> str | None:
        """The old hostname when the system hostname changed (HOSTNAME unset)."""
        if self.settings.hostname:
            return None
        try:
            current = self._system_hostname()
        except OSError:
            return None
        if not current or current == self.hostname:
            return None
        old, self.hostname = self.hostname, current
        log.info("hostname changed from %s to %s", old, current)
        return old

    async def _announcer(self) -> None:
        keep_alive = self.settings.keep_alive
        while True:
            old_name = None
            try:
                await asyncio.wait_for(self._wake.wait(), timeout=keep_alive)
            except TimeoutError:
                # the periodic path: fallback label re-read, hostname, log summaries
                self.refresh_labels()
                self._garbage_log.flush()
                self._send_log.flush()
                old_name = self._hostname_changed()
            self._wake.clear()
            if not self.settings.announce:
                continue
            for link in self.links:
                if not link.driver.connected:
                    continue
                if old_name is not None:
                    await self._publish(link, GOODBYE, Discovery(old_name, ()))
                await self._publish(link, HI, self.own_discovery())

    async def _echo_watchdog(self) -> None:
        # Its own task, ticking faster than KEEP_ALIVE: the announcer can sit in a
        # publish for seconds on a frozen broker (Redis: PUBLISH_TIMEOUT), and noticing
        # the silence that late let records expire before expiry was paused.
        tick = self.settings.keep_alive / 4
        while True:
            await asyncio.sleep(tick)
            self.watch_echo()

    def watch_echo(self) -> None:
        """Mark a link whose echo fell silent for 2 x KEEP_ALIVE as down."""
        if not self.settings.announce:
            return
        now = self.clock.monotonic()
        for link in self.links:
            if not (link.up and link.echo_ok):
                continue
            silent = now - link.heard_self
            if silent > 2 * self.settings.keep_alive:
                log.warning(
                    "our own announcements have not come back through %s for %.0f s: "
                    "treating the broker link as down and pausing expiry",
                    link.name,
                    silent,
                )
                link.echo_ok = False
                self._update_pause()
