"""One broker link, and how healthy it is (SPEC §3, §15).

A `Link` is one driver with everything that addresses it: its name, the registry's
liveness clock for it (`Registry.first_link` or `add_link`), its relay endpoint (with
RELAY=true), whether the driver says it is up, when our own "hi" last came back through
it, and its counters. Nothing else numbers links: whoever has the Link has the handles.

`LinkHealth` keeps each link's clock in the registry running or stopped:

- A TCP link can look open while nothing flows (a frozen broker), so each echo of our
  own "hi" tells the registry when the next is due (ECHO_WITHIN x KEEP_ALIVE); an
  overdue echo holds that link's expiry from the last echo on, at the registry's next
  read, with no task that has to tick first. `watch_echo` only tells (and marks the
  link down in health and stats).
- The pause policy: an unhealthy link pauses expiry for the nodes heard last through
  it (the registry keeps one clock per link), from the last moment we heard ourselves
  through it: an outage on our side expires nobody. With one driver this is exactly
  SPEC §3; with several (§15), nodes refreshed through a live link expire normally.
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import Callable
from dataclasses import dataclass
from typing import Final, Protocol

from lobby.core.clock import Clock
from lobby.drivers.base import Driver
from lobby.node.relay import Endpoint
from lobby.view.registry import LinkClock, Registry

log = logging.getLogger("lobby")

# Our own "hi" is due back within this many KEEP_ALIVEs, or the link counts as hung.
# It must be caught before TTL - KEEP_ALIVE (then a peer heard just before the hang
# could expire): 1.5 leaves half a keep-alive for the round trip and a late announcer.
ECHO_WITHIN: Final = 1.5


class HealthSettings(Protocol):
    """The settings link health reads (lobby.config.Settings has them)."""

    @property
    def announce(self) -> bool: ...
    @property
    def keep_alive(self) -> int: ...
    @property
    def listen(self) -> bool: ...


@dataclass(eq=False)
class Link:
    """One driver, its handles, what we know of its link, and its counters (/v1/stats,
    /metrics)."""

    name: str
    driver: Driver
    clock: LinkClock  # the registry's liveness clock for this link
    relay: Endpoint | None = None  # where the relay forwards from and to (RELAY=true)
    up: bool = False
    echo_ok: bool = True  # our own "hi" came back in time (the registry says; see watch_echo)
    heard_self: float = 0.0  # clock.monotonic() when our own "hi" last came back
    # counters, per driver (GET /v1/stats "brokers", metrics' `driver` label)
    received: int = 0  # packets on the main topic, valid or not
    announcements: int = 0  # our hi/goodbye handed to this broker
    send_failures: int = 0
    reconnects: int = 0  # times the link came back after it had been up
    was_up: bool = False

    @property
    def healthy(self) -> bool:
        return self.up and self.echo_ok

    @property
    def dropped(self) -> int:
        """Messages the broker client dropped because we fell behind (slow consumer)."""
        return self.driver.dropped


class LinkHealth:
    """Echo expectations and the pause policy of every link, in the registry."""

    def __init__(
        self,
        settings: HealthSettings,
        registry: Registry,
        clock: Clock,
        links: list[Link],
        *,
        on_up: Callable[[Link], None],
    ) -> None:
        self.settings = settings
        self.registry = registry
        self.clock = clock
        self.links = links  # presence's list, shared
        self._on_up = on_up  # announce at once, ask peers to sync

    def on_link(self, link: Link, up: bool) -> None:
        """The driver says its link is up or down."""
        if up and not link.up and link.was_up:
            link.reconnects += 1
        link.up = up
        reconnected = up and link.was_up
        if up:
            link.was_up = True
            link.heard_self = self.clock.monotonic()
            link.echo_ok = True
            self.expect_echo(link, link.heard_self)
            self._on_up(link)
        self._update_pause(link)
        if reconnected:
            # every node heard through this link gets a whole TTL from now: after a
            # broker restart they reconnect over seconds (agents with jitter), and none
            # may expire meanwhile (SPEC §20)
            self.registry.grant_ttl(link.clock)

    def heard_self(self, link: Link) -> None:
        """Our own "hi" came back through `link`."""
        now = link.heard_self = self.clock.monotonic()
        self.expect_echo(link, now)
        if not link.echo_ok:
            log.info("our own announcements come back through %s again; resuming expiry", link.name)
            link.echo_ok = True

    def expect_echo(self, link: Link, since: float) -> None:
        """From `since` on, our next "hi" is due back through `link` within
        ECHO_WITHIN x KEEP_ALIVE; the registry stops the link's clock when it is not."""
        if self.settings.announce and self.settings.listen:  # an agent hears no echo
            within = ECHO_WITHIN * self.settings.keep_alive
            self.registry.expect_echo(link.clock, since=since, within=within)

    def _update_pause(self, link: Link) -> None:
        """Run or stop `link`'s clock in the registry as its driver says it is up or
        down: each link pauses only the expiry of the nodes heard last through it (SPEC
        §15; with one link, SPEC §3). A silent echo holds it too (`expect_echo`)."""
        if link.up:
            self.registry.resume(link.clock)
        elif self.settings.announce and self.settings.listen:
            # from the last sign the link worked: our own "hi" coming back to us
            self.registry.pause(link.clock, since=link.heard_self)
        else:
            self.registry.pause(link.clock)

    def watch_echo(self) -> None:
        """Mark a link whose echo is overdue (ECHO_WITHIN x KEEP_ALIVE) as down, and say
        so once; the registry already holds that link's expiry."""
        if not (self.settings.announce and self.settings.listen):
            return
        now = self.clock.monotonic()
        for link in self.links:
            overdue = self.registry.echo_overdue(link.clock)
            if overdue and link.echo_ok and link.up:
                log.warning(
                    "our own announcements have not come back through %s for %.1f s: "
                    "treating the broker link as down and pausing expiry",
                    link.name,
                    now - link.heard_self,
                )
            link.echo_ok = not overdue

    async def echo_watchdog(self) -> None:
        """Run `watch_echo` every quarter KEEP_ALIVE, until cancelled."""
        # Only tells: the registry itself stops a link's clock the moment our echo is
        # overdue (Registry.expect_echo), so this task's timing decides nothing. Its
        # period is jittered so that it never ticks in step with the announcer.
        period = self.settings.keep_alive / 4
        while True:
            await asyncio.sleep(period * random.uniform(0.8, 1.2))
            self.watch_echo()
