"""What this node hears: the receive pipeline (SPEC §2-4, §13.1, §15).

Every message the drivers hand over goes, synchronously (no queue, no task per
packet), through

    decode (model.decode_packet -> Packet) -> gate (signing) -> relay -> registry

- decode: a malformed packet is counted under its reason in `rejected` and dropped.
- gate: with SIGNING_KEYS every packet passes `lobby.core.signing.Gate` before it may touch
  the registry (and before a relay may forward it); what the gate refuses is counted
  under its reason. A duplicate of our own "hi" (heard through another broker) still
  counts as our echo.
- relay (RELAY=true): only valid packets are forwarded, never one a relay forwarded
  already, never our own (it went out on every link); our own forwarded copies, heard
  back, are skipped before anything else.
- registry: peers' "hi"s are applied in one `refresh_many` per batch; our own "hi" is
  our echo (link health) and lists us from the first one on, with the labels we have
  now (read your own writes: an echo of older labels cannot take a change back); a
  goodbye removes its node (never ourselves while we are it).

Sync requests (topic "sync") pass the same gate, are relayed, and ask the announcer to
answer.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Sequence
from typing import Protocol

from lobby.core.model import HI, Packet, PacketError, decode_packet, decode_sync, is_relayed
from lobby.core.signing import DUPLICATE, Gate
from lobby.drivers.base import Topic
from lobby.node.announcer import Announcer
from lobby.node.identity import Identity
from lobby.node.link import Link, LinkHealth
from lobby.system.ratelimit import RateLimitedLog
from lobby.view.registry import Registry

log = logging.getLogger("lobby")


class ReceiveSettings(Protocol):
    """The settings the receive pipeline reads (lobby.config.Settings has them)."""

    @property
    def announce(self) -> bool: ...


class Receiver:
    def __init__(
        self,
        settings: ReceiveSettings,
        registry: Registry,
        identity: Identity,
        gate: Gate,
        health: LinkHealth,
        announcer: Announcer,
    ) -> None:
        self.settings = settings
        self.registry = registry
        self.identity = identity
        self.gate = gate
        self.health = health
        self.announcer = announcer
        self._signing = gate.enabled
        self.rejected: Counter[str] = Counter()  # GET /v1/stats, by reason
        self._garbage_log = RateLimitedLog(log, burst=5, every=30)

    def flush_log(self) -> None:
        """Write the summary of what the rate limit held back (periodically)."""
        self._garbage_log.flush()

    def on_message(self, link: Link, topic: Topic, data: bytes) -> None:
        self.on_messages(link, topic, (data,))

    def on_messages(self, link: Link, topic: Topic, batch: Sequence[bytes]) -> None:
        """Every message one read of `link` brought on `topic`, in order: the hot path
        (a batch costs one call; what each packet needs is looked up once per batch)."""
        if topic == "sync":
            for data in batch:
                self.on_sync(link, data)
            return
        link.received += len(batch)
        registry = self.registry
        known = registry.records
        via = link.clock
        endpoint = link.relay  # None without RELAY=true
        admit = self.gate.admit if self._signing else None
        now_ms = int(self.gate.wall() * 1000) if admit is not None else 0  # once a batch
        identity = self.identity
        me = identity.hostname
        heard: list[Packet] = []  # peers' "hi"s, applied together
        for data in batch:
            if endpoint is not None and endpoint.own_copy(data):
                continue  # a packet we relayed, back to us: we applied the original on its link
            # -- decode
            try:
                packet = decode_packet(data, known)
            except PacketError as exc:
                self._invalid(exc)
                continue
            # one unpacking, not an attribute lookup per field (a Packet is a tuple)
            hostname, _, message, wire, ts, sig, relayed_by = packet
            # -- gate
            if admit is not None:
                reason = admit(message, hostname, ts, sig, wire, now_ms)
                if reason is not None:
                    self.rejected[reason] += 1
                    if reason != DUPLICATE:
                        self._refused(reason, message, hostname)
                    elif message == HI and hostname == me:
                        self._apply(link, heard)
                        self.health.heard_self(link)  # our own, back through another way
                    continue
            # -- relay: keep this after every check a packet must pass (signatures)
            if endpoint is not None and relayed_by is None and hostname != me:
                endpoint.forward("discovery", data)
            # -- registry
            if message == HI and hostname != me:
                heard.append(packet)
                continue
            self._apply(link, heard)  # what came before, first
            try:
                if message == HI:  # our own
                    self.health.heard_self(link)
                    if registry.own == hostname:
                        # what we are is ours to say: an echo of labels changed since
                        # cannot take the change back (SPEC §5)
                        registry.refresh(hostname, identity.labels, via)
                    elif self.settings.announce and not identity.leaving:
                        # our first echo: listed from now on, never expired (SPEC §3)
                        registry.set_own(hostname, identity.labels, via)
                    else:
                        registry.refresh(hostname, packet.labels, via)
                elif hostname != registry.own:  # never our own name while we are it
                    registry.remove(hostname, "goodbye")
            except Exception as exc:  # a bug (a listener's?): lose this packet, not the batch
                self._garbage_log(
                    logging.ERROR, "applying a packet from %r failed: %r", hostname, exc
                )
        self._apply(link, heard)

    def _apply(self, link: Link, heard: list[Packet]) -> None:
        """Refresh the nodes in `heard` (and empty it); a failure loses only its node."""
        if not heard:
            return
        try:
            self.registry.refresh_many(heard, link.clock)
        except Exception as exc:  # a bug (a listener's?): apply the rest one by one
            self._garbage_log(logging.ERROR, "applying packets failed: %r", exc)
            for packet in heard:
                hostname = packet.hostname
                try:
                    self.registry.refresh(hostname, packet.labels, link.clock)
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

    def on_sync(self, link: Link, data: bytes) -> None:
        """A peer's sync request: relay it, then have the announcer answer."""
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
        me = self.identity.hostname
        # a relay passes a peer's request on, so peers behind other brokers answer too;
        # never one already relayed, never our own (we asked on the link that needed it)
        if link.relay is not None and requester != me and not is_relayed(data):
            link.relay.forward("sync", data)
        if requester != me:
            self.announcer.sync_requested()
