"""What this node says on the bus (SPEC §2-4, §13.1).

The `Announcer` sends "hi" every KEEP_ALIVE on every connected link, and at once when
woken (`wake`: the labels changed, a link came up, a sync request came in); a
goodbye first for the old name when the system hostname changed; a goodbye on
`leave`, after which it never says "hi" again. It asks peers to announce themselves
(`request_sync`) when a link comes up, and answers their requests within SYNC_SPREAD
seconds (`sync_requested`), requests arriving meanwhile sharing one announcement.

Every packet is encoded once for every link and signed when we sign: a node hearing us
through two brokers then takes the second copy for a duplicate, not a replay.
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import Callable, Sequence
from typing import Final, Literal, Protocol

from lobby.core.model import GOODBYE, HI, MAX_PACKET_BYTES, Discovery, encode_envelope, encode_sync
from lobby.core.signing import Gate
from lobby.drivers.base import DriverError
from lobby.node.identity import Identity
from lobby.node.link import Link
from lobby.system.ratelimit import RateLimitedLog

log = logging.getLogger("lobby")

SYNC_SPREAD: Final = 0.2  # seconds over which peers answer a sync request


class AnnouncerSettings(Protocol):
    """The settings the announcer reads (lobby.config.Settings has them)."""

    @property
    def announce(self) -> bool: ...
    @property
    def keep_alive(self) -> int: ...


class Announcer:
    def __init__(
        self,
        settings: AnnouncerSettings,
        identity: Identity,
        gate: Gate,
        links: Sequence[Link],
        *,
        wake: asyncio.Event,
    ) -> None:
        self.settings = settings
        self.identity = identity
        self.gate = gate
        self.links = links  # presence's list, shared
        self._wake = wake
        # more periodic work (the receiver's log summaries), set by whoever wires it
        self.chores: Callable[[], None] = lambda: None
        self._sync_pending = False
        self._send_log = RateLimitedLog(log, burst=3, every=30)

    def wake(self) -> None:
        """Announce at once (a change, a new link, a sync request)."""
        self._wake.set()

    # -- packets ------------------------------------------------------------------

    def envelope(self, message: Literal["hi", "goodbye"], discovery: Discovery) -> bytes:
        """The bytes to send, signed when we sign. Encoded once for every link: a
        node hearing us through two brokers then takes the second copy for a
        duplicate, not a replay."""
        signature = self.gate.stamp(message, discovery.hostname, discovery.labels)
        data = encode_envelope(message, discovery, signature)
        if len(data) > MAX_PACKET_BYTES:
            self._send_log(
                logging.ERROR,
                "our announcement is %d bytes, over the %d byte limit: peers drop it; "
                "remove labels",
                len(data),
                MAX_PACKET_BYTES,
            )
        return data

    async def publish(self, link: Link, message: Literal["hi", "goodbye"], data: bytes) -> bool:
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
        link.announcements += 1
        return True

    # -- sync (fast join) -----------------------------------------------------------

    async def request_sync(self, link: Link) -> None:
        """Ask every peer on `link` to announce itself now, instead of waiting for their
        next keep-alive (fast join; Go peers never see the sync topic)."""
        hostname = self.identity.hostname
        signature = self.gate.stamp("sync", hostname, ())
        try:
            await link.driver.publish("sync", encode_sync(hostname, signature))
        except DriverError as exc:
            log.debug("cannot ask peers to sync: %s", exc)

    def sync_requested(self) -> None:
        """A peer asked: announce within SYNC_SPREAD seconds."""
        if not self.settings.announce or self._sync_pending:
            return
        # a random delay spreads the answers of a large cluster over SYNC_SPREAD seconds;
        # requests arriving meanwhile share the one announcement
        self._sync_pending = True
        asyncio.get_running_loop().call_later(random.uniform(0, SYNC_SPREAD), self._sync_now)

    def _sync_now(self) -> None:
        self._sync_pending = False
        self._wake.set()

    # -- the loop -----------------------------------------------------------------

    async def run(self) -> None:
        """Announce every KEEP_ALIVE and when woken, until cancelled or leaving."""
        identity = self.identity
        keep_alive = self.settings.keep_alive
        while True:
            old_name = None
            try:
                async with asyncio.timeout(keep_alive):
                    await self._wake.wait()
            except TimeoutError:
                # the periodic path: fallback label check, hostname, log summaries
                identity.refresh_labels(check_only=True)
                self.chores()
                self._send_log.flush()
                self.gate.prune()
                old_name = identity.hostname_changed()
            self._wake.clear()
            if not self.settings.announce:
                continue
            links = [link for link in self.links if link.driver.connected]
            if identity.leaving:  # after our goodbye, never another "hi"
                return
            if not links:
                continue
            goodbye = self.envelope(GOODBYE, Discovery(old_name, ())) if old_name else None
            hi = self.envelope(HI, identity.own_discovery())
            for link in links:
                if goodbye is not None:
                    await self.publish(link, GOODBYE, goodbye)
                await self.publish(link, HI, hi)

    async def announce_now(self) -> None:
        """Hand our "hi" to every live link now, before the caller goes on. An agent
        (SPEC §20) calls it after a label write: the query it asks next leaves on the
        same connection after it, so every listener applies the "hi" first (read your
        own writes through a listener)."""
        if not self.settings.announce or self.identity.leaving:
            return
        hi = self.envelope(HI, self.identity.own_discovery())
        for link in self.links:
            if link.driver.connected:
                await self.publish(link, HI, hi)

    async def leave(self) -> None:
        """Say goodbye on every live link and give it up to 0.5 s to leave this node."""
        if not self.settings.announce:
            return
        goodbye = self.envelope(GOODBYE, Discovery(self.identity.hostname, ()))
        for link in self.links:
            if link.driver.connected and await self.publish(link, GOODBYE, goodbye):
                await link.driver.flush(0.5)
