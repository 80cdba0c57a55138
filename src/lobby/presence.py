"""This node on the bus: who we are, what we say, what we hear (SPEC §2-4).

`Presence` owns the node's identity and labels, applies every packet the drivers hand
it to the registry (synchronously: no queue, no task per packet), announces "hi"
every KEEP_ALIVE and at once when the labels change, answers fast-join sync requests,
and decides when the registry's TTL countdown must stand still.

It is built from settings, a registry, a clock and, at `start`, a list of drivers:

- Each driver gets a `Link` that remembers its own state: whether the driver says the
  link is up, and when our own "hi" last came back through it. A TCP link can look
  open while nothing flows (a frozen broker), so each echo tells the registry when the
  next is due (ECHO_WITHIN x KEEP_ALIVE); an overdue echo holds that link's expiry from
  the last echo on, at the registry's next read, with no task that has to tick first.
- An unhealthy link pauses expiry for the nodes heard last through it (the
  registry keeps one clock per link), from the last moment we heard ourselves
  through it: an outage on our side expires nobody. With one driver this is exactly
  SPEC §3; with several (§15), nodes refreshed through a live link expire normally.
- We list ourselves from our first echo on, and from then on our own record is ours:
  a label change shows in it at once (read your own writes, SPEC §5), an echo of older
  labels cannot take it back, and we never expire ourselves.
- With RELAY=true, every valid packet heard on one link is also forwarded to the
  others (`lobby.relay`); each Link counts what it received and announced, so stats
  and metrics can show them per driver.
- With SIGNING_KEYS (SPEC §13.1) every packet we send, sync requests included, is
  signed, and every packet we hear passes `lobby.signing.Gate` before it may touch
  the registry (and before a relay may forward it); what the gate refuses is counted
  under its reason in `rejected`.
- It never touches HTTP or the feed; the daemon wires it, the API calls its methods.
- `extra_labels`, when given, adds labels that come from elsewhere: the passing
  health-checked labels (`lobby.checks`), whose owner calls `refresh_labels()` when they
  change.
"""

from __future__ import annotations

import asyncio
import logging
import random
import socket
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any, Final, Literal

from lobby._ratelimit import RateLimitedLog
from lobby.clock import SYSTEM_CLOCK, Clock, StallClock
from lobby.config import Settings
from lobby.drivers.base import Driver, DriverError, Topic
from lobby.labels import LocalLabels, parse_env_labels
from lobby.model import (
    GOODBYE,
    HI,
    MAX_PACKET_BYTES,
    Discovery,
    LabelError,
    PacketError,
    decode_packet,
    decode_sync,
    encode_envelope,
    encode_sync,
    is_relayed,
)
from lobby.registry import Registry
from lobby.relay import Relay
from lobby.signing import DUPLICATE, Gate, Keyring, parse_keys, parse_keys_file

log = logging.getLogger("lobby")

SYNC_SPREAD: Final = 0.2  # seconds over which peers answer a sync request
# Our own "hi" is due back within this many KEEP_ALIVEs, or the link counts as hung.
# It must be caught before TTL - KEEP_ALIVE (then a peer heard just before the hang
# could expire): 1.5 leaves half a keep-alive for the round trip and a late announcer.
ECHO_WITHIN: Final = 1.5


@dataclass
class Link:
    """One driver, what we know of its link, and its counters (/v1/stats, /metrics)."""

    name: str
    driver: Driver
    index: int = 0  # the registry's number for this link (its own liveness clock)
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


class Presence:
    def __init__(
        self,
        settings: Settings,
        registry: Registry,
        *,
        clock: Clock = SYSTEM_CLOCK,
        system_hostname: Callable[[], str] = socket.gethostname,
        extra_labels: Callable[[], Iterable[str]] | None = None,
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
        self._extra_labels = extra_labels
        self.local.read()  # at start-up; then off the loop, by watch_labels
        self.labels = self._read_labels()
        self.links: list[Link] = []
        # counters (GET /v1/stats); received, sent and send_failures are per Link
        self.rejected: Counter[str] = Counter()
        self.relay = Relay(lambda: self.hostname) if settings.relay else None
        self._wake = asyncio.Event()
        self._leaving = False  # after our goodbye, never another "hi"
        self._sync_pending = False
        self._background: set[asyncio.Task[Any]] = set()
        self._garbage_log = RateLimitedLog(log, burst=5, every=30)
        self._send_log = RateLimitedLog(log, burst=3, every=30)
        self.gate = Gate(
            load_keyring(settings),
            ttl=settings.ttl,
            accept_unsigned=settings.accept_unsigned,
            wall=clock.wall,
        )
        self._signing = self.gate.enabled
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
        return sum(link.announcements for link in self.links)

    @property
    def send_failures(self) -> int:
        return sum(link.send_failures for link in self.links)

    def health(self) -> tuple[bool, dict[str, str]]:
        """Whether every broker link is up (and echoes us), and each link's state."""
        self.watch_echo()
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
                "read_errors": self.local.read_errors,
                "failing": sorted(self.local.failing),
            },
        }

    def link_stats(self) -> dict[str, dict[str, Any]]:
        """Each driver's link, by driver name (GET /v1/stats "brokers", health)."""
        self.watch_echo()
        return {
            link.name: {
                "address": link.driver.address,
                "connected": link.driver.connected,
                "echo_ok": link.echo_ok,
                "expiry_paused": self.registry.link_paused(link.index),
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
        return {"count": clock.stalls, "seconds": round(clock.stalled, 3)}

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
        for name, driver in drivers:
            log.info("broker: %s %s", name, driver.address)
            # link 0 is the registry's own, paused since __init__; each further link gets
            # a clock of its own, paused until its driver reports the link up
            index = self.registry.add_link() if self.links else 0
            self.registry.pause(index)
            link = Link(name, driver, index, heard_self=now)
            self.links.append(link)
            if self.relay is not None:
                self.relay.add_link(name, driver)
            # one number for a link: its place here, in the registry and in the relay
            assert index == len(self.links) - 1, "the registry had links of its own"
        for link in self.links:  # every link known before the first packet arrives
            driver = link.driver
            await driver.start(
                partial(self.on_message, link),
                partial(self.on_link, link),
                partial(self.on_messages, link),
            )
        if self.relay is not None and len(self.links) < 2:
            log.warning("RELAY=true with a single driver: there is nothing to relay to")

    def loops(self) -> dict[str, Any]:
        """The coroutines that must run as long as the node does, by name."""
        loops = {"announcer": self._announcer(), "echo-watchdog": self._echo_watchdog()}
        if isinstance(self.clock.monotonic, StallClock):
            loops["stall-watch"] = self._stall_watch(self.clock.monotonic)
        if self.relay is not None:
            loops["relay"] = self.relay.run()
        return loops

    async def watch_labels(self, stopping: asyncio.Event) -> None:
        """Re-read the labels (off the event loop) whenever the label directory changes,
        and at every keep-alive check."""
        await self.local.watch(self.refresh_labels, stopping)

    async def leave(self) -> None:
        """Say goodbye on every live link and give it up to 0.5 s to leave this node."""
        self._leaving = True
        self.registry.set_own(None)  # our goodbye's echo may remove us now
        if not self.settings.announce:
            return
        goodbye = self._envelope(GOODBYE, Discovery(self.hostname, ()))
        for link in self.links:
            if link.driver.connected and await self._publish(link, GOODBYE, goodbye):
                await link.driver.flush(0.5)

    async def close(self) -> None:
        for task in self._background:
            task.cancel()
        for link in self.links:
            try:
                async with asyncio.timeout(0.5):
                    await link.driver.close()
            except (TimeoutError, Exception) as exc:
                log.debug("driver close: %r", exc)

    # -- incoming -----------------------------------------------------------------

    def on_message(self, link: Link, topic: Topic, data: bytes) -> None:
        self.on_messages(link, topic, (data,))

    def on_messages(self, link: Link, topic: Topic, batch: Sequence[bytes]) -> None:
        """Every message one read of `link` brought on `topic`, in order: the hot path
        (a batch costs one call; what each packet needs is looked up once per batch)."""
        if topic == "sync":
            for data in batch:
                self._on_sync(link, data)
            return
        link.received += len(batch)
        registry = self.registry
        known = registry.records
        via = link.index
        relay = self.relay
        admit = self.gate.admit if self._signing else None
        me = self.hostname
        heard: list[tuple[str, tuple[str, ...]]] = []  # "hi"s, applied together
        for data in batch:
            if relay is not None and relay.own_copy(data):
                continue  # a packet we relayed, back to us: we applied the original on its link
            try:
                message, hostname, labels, wire, ts, sig, relayed_by = decode_packet(data, known)
            except PacketError as exc:
                self._invalid(exc)
                continue
            if admit is not None:
                reason = admit(message, hostname, ts, sig, wire)
                if reason is not None:
                    self.rejected[reason] += 1
                    if reason != DUPLICATE:
                        self._refused(reason, message, hostname)
                    elif message == HI and hostname == me:
                        self._apply(link, heard)
                        self._heard_self(link)  # our own packet, back through another way
                    continue
            # SPEC §15 relays; keep this after every check a packet must pass (signatures):
            # only valid packets are forwarded, never one a relay forwarded already, never
            # our own (it went out on every link)
            if relay is not None and relayed_by is None and hostname != me:
                relay.forward(via, "discovery", data)
            if message == HI and hostname != me:
                heard.append((hostname, labels))
                continue
            self._apply(link, heard)  # what came before, first
            try:
                if message == HI:  # our own
                    self._heard_self(link)
                    if registry.own == hostname:
                        # what we are is ours to say: an echo of labels changed since
                        # cannot take the change back (SPEC §5)
                        registry.refresh(hostname, self.labels, via)
                    elif self.settings.announce and not self._leaving:
                        # our first echo: listed from now on, never expired (SPEC §3)
                        registry.set_own(hostname, self.labels, via)
                    else:
                        registry.refresh(hostname, labels, via)
                elif hostname != registry.own:  # never our own name while we are it
                    registry.remove(hostname, "goodbye")
            except Exception as exc:  # a bug (a listener's?): lose this packet, not the batch
                self._garbage_log(
                    logging.ERROR, "applying a packet from %r failed: %r", hostname, exc
                )
        self._apply(link, heard)

    def _apply(self, link: Link, heard: list[tuple[str, tuple[str, ...]]]) -> None:
        """Refresh the nodes in `heard` (and empty it); a failure loses only its node."""
        if not heard:
            return
        try:
            self.registry.refresh_many(heard, link.index)
        except Exception as exc:  # a bug (a listener's?): apply the rest one by one
            self._garbage_log(logging.ERROR, "applying packets failed: %r", exc)
            for hostname, labels in heard:
                try:
                    self.registry.refresh(hostname, labels, link.index)
                except Exception as exc:
                    self._garbage_log(
                        logging.ERROR, "applying a packet from %r failed: %r", hostname, exc
                    )
        heard.clear()

    def _invalid(self, exc: PacketError) -> None:
        self.rejected[exc.reason] += 1
        self._garbage_log(
            logging.WARNING,
            "dropped invalid packet (%s); %d dropped so far",
            exc,
            sum(self.rejected.values()),
        )

    def _heard_self(self, link: Link) -> None:
        now = link.heard_self = self.clock.monotonic()
        self._expect_echo(link, now)
        if not link.echo_ok:
            log.info("our own announcements come back through %s again; resuming expiry", link.name)
            link.echo_ok = True

    def _expect_echo(self, link: Link, since: float) -> None:
        """From `since` on, our next "hi" is due back through `link` within
        ECHO_WITHIN x KEEP_ALIVE; the registry stops the link's clock when it is not."""
        if self.settings.announce:
            within = ECHO_WITHIN * self.settings.keep_alive
            self.registry.expect_echo(link.index, since=since, within=within)

    def _refused(self, reason: str, message: str, hostname: str) -> None:
        self._garbage_log(
            logging.WARNING,
            "dropped %s %r for %r: %s; %d dropped so far",
            "sync request" if message == "sync" else "packet",
            message,
            hostname[:80],
            reason.replace("_", " "),
            sum(self.rejected.values()),
        )

    def on_link(self, link: Link, up: bool) -> None:
        if up and not link.up and link.was_up:
            link.reconnects += 1
        link.up = up
        if up:
            link.was_up = True
            link.heard_self = self.clock.monotonic()
            link.echo_ok = True
            self._expect_echo(link, link.heard_self)
            self._wake.set()  # announce at once after (re)connecting
            # and ask every peer to announce itself too, instead of waiting for their
            # next keep-alive (fast join; Go peers never see the sync topic)
            self._in_background(self._request_sync(link))
        self._update_pause(link)

    def _in_background(self, coro: Any) -> None:
        task = asyncio.ensure_future(coro)
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    async def _request_sync(self, link: Link) -> None:
        signature = self.gate.stamp("sync", self.hostname, ())
        try:
            await link.driver.publish("sync", encode_sync(self.hostname, signature))
        except DriverError as exc:
            log.debug("cannot ask peers to sync: %s", exc)

    def _on_sync(self, link: Link, data: bytes) -> None:
        try:
            request = decode_sync(data)
        except PacketError as exc:
            self.rejected["sync_" + exc.reason] += 1
            return
        requester = request.hostname
        if self._signing:
            reason = self.gate.admit("sync", requester, request.ts, request.sig, ())
            if reason is not None:
                self.rejected["sync_" + reason] += 1
                if reason != DUPLICATE:
                    self._refused(reason, "sync", requester)
                return
        # a relay passes a peer's request on, so peers behind other brokers answer too;
        # never one already relayed, never our own (we asked on the link that needed it)
        if self.relay is not None and requester != self.hostname and not is_relayed(data):
            self.relay.forward(link.index, "sync", data)
        if requester == self.hostname or not self.settings.announce or self._sync_pending:
            return
        # a random delay spreads the answers of a large cluster over SYNC_SPREAD seconds;
        # requests arriving meanwhile share the one announcement
        self._sync_pending = True
        asyncio.get_running_loop().call_later(random.uniform(0, SYNC_SPREAD), self._sync_now)

    def _sync_now(self) -> None:
        self._sync_pending = False
        self._wake.set()

    def _update_pause(self, link: Link) -> None:
        """Run or stop `link`'s clock in the registry as its driver says it is up or
        down: each link pauses only the expiry of the nodes heard last through it (SPEC
        §15; with one link, SPEC §3). A silent echo holds it too (`_expect_echo`)."""
        if link.up:
            self.registry.resume(link.index)
        elif self.settings.announce:
            # from the last sign the link worked: our own "hi" coming back to us
            self.registry.pause(link.index, since=link.heard_self)
        else:
            self.registry.pause(link.index)

    # -- local labels -------------------------------------------------------------

    def _read_labels(self, check_only: bool = False) -> tuple[str, ...]:
        if check_only:
            self.local.request_check()  # watch_labels reads off the loop, then calls back
        local = self.local.current()  # no I/O on the loop; runtime writes are in already
        if self._extra_labels is None:
            return local
        return tuple(sorted(set(local).union(self._extra_labels())))

    def refresh_labels(self, *, check_only: bool = False) -> bool:
        """Take the labels as last read; announce at once when they changed.

        The label files are read off the event loop by `watch_labels`, which calls
        this after each read; a runtime label write updates them at once.
        `check_only` is the periodic path: it also asks the watch to stat the label
        sources and re-read only what changed (no file is opened per keep-alive). A
        source that cannot be read keeps its last good labels (lobby.labels.LocalLabels).
        """
        labels = self._read_labels(check_only)
        if labels == self.labels:
            return False
        self.labels = labels
        log.info("labels changed: %s", ", ".join(labels) or "(none)")
        self._own_record()  # read your own writes: before any answer, not at the echo
        self._wake.set()
        return True

    def _own_record(self) -> None:
        """Our record in our own registry, as we are now, once we list ourselves (from
        our first echo on; never with REGISTER=false, SPEC §3)."""
        if self.registry.own is not None and not self._leaving:
            self.registry.set_own(self.hostname, self.labels)

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

    def _envelope(self, message: Literal["hi", "goodbye"], discovery: Discovery) -> bytes:
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

    async def _publish(self, link: Link, message: Literal["hi", "goodbye"], data: bytes) -> bool:
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
        self._own_record()
        return old

    async def _announcer(self) -> None:
        keep_alive = self.settings.keep_alive
        while True:
            old_name = None
            try:
                async with asyncio.timeout(keep_alive):
                    await self._wake.wait()
            except TimeoutError:
                # the periodic path: fallback label check, hostname, log summaries
                self.refresh_labels(check_only=True)
                self._garbage_log.flush()
                self._send_log.flush()
                self.gate.prune()
                old_name = self._hostname_changed()
            self._wake.clear()
            if not self.settings.announce:
                continue
            links = [link for link in self.links if link.driver.connected]
            if self._leaving:  # after our goodbye, never another "hi"
                return
            if not links:
                continue
            goodbye = self._envelope(GOODBYE, Discovery(old_name, ())) if old_name else None
            hi = self._envelope(HI, self.own_discovery())
            for link in links:
                if goodbye is not None:
                    await self._publish(link, GOODBYE, goodbye)
                await self._publish(link, HI, hi)

    async def _stall_watch(self, clock: StallClock) -> None:
        """Read the clock every beat, so a gap in its reads means a stall; say so."""
        seen = clock.stalls
        while True:
            await asyncio.sleep(clock.beat)
            clock.beat_once()
            if clock.stalls != seen:
                seen = clock.stalls
                log.warning(
                    "the event loop stood still (a freeze, a VM pause or a long stall): "
                    "%.1f s not counted towards any TTL so far",
                    clock.stalled,
                )

    async def _echo_watchdog(self) -> None:
        # Only tells: the registry itself stops a link's clock the moment our echo is
        # overdue (Registry.expect_echo), so this task's timing decides nothing. Its
        # period is jittered so that it never ticks in step with the announcer.
        period = self.settings.keep_alive / 4
        while True:
            await asyncio.sleep(period * random.uniform(0.8, 1.2))
            self.watch_echo()

    def watch_echo(self) -> None:
        """Mark a link whose echo is overdue (ECHO_WITHIN x KEEP_ALIVE) as down, and say
        so once; the registry already holds that link's expiry."""
        if not self.settings.announce:
            return
        now = self.clock.monotonic()
        for link in self.links:
            overdue = self.registry.echo_overdue(link.index)
            if overdue and link.echo_ok and link.up:
                log.warning(
                    "our own announcements have not come back through %s for %.1f s: "
                    "treating the broker link as down and pausing expiry",
                    link.name,
                    now - link.heard_self,
                )
            link.echo_ok = not overdue


def load_keyring(settings: Settings) -> Keyring | None:
    """The keys of SIGNING_KEYS and SIGNING_KEYS_FILE (union, in that order), or None.

    Both were checked when the settings were loaded (lobby.config), so this cannot fail
    on a good start; the file is read again here because that is when it is used.
    """
    keys = parse_keys(settings.signing_keys)
    if settings.signing_keys_file:
        keys += parse_keys_file(Path(settings.signing_keys_file).read_text())
    return Keyring(keys) if keys else None
