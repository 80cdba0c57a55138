"""Wires what operators watch to the parts they watch (SPEC §14): the node event log and
the metrics, each hooked onto the registry, presence and the change feed.

Kept out of the daemon (wiring and lifecycle only) and out of lobby.metrics (which
imports nothing of lobby). The metrics exist only when the API, which serves /metrics,
is on; prometheus_client itself is imported on the first scrape.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any, Protocol

from lobby import __version__
from lobby.feed import ChangeFeed
from lobby.logs import NodeEventLog
from lobby.presence import Presence
from lobby.registry import Registry

if TYPE_CHECKING:
    from lobby.metrics import Metrics


class Node(Protocol):
    """What `stats` reads of the daemon itself."""

    started: float
    registry: Registry
    drivers: list[tuple[str, Any]]

    @property
    def hostname(self) -> str: ...
    @property
    def clock(self) -> Any: ...


class Part(Protocol):
    def stats(self) -> dict[str, Any]: ...


def stats(
    node: Node, presence: Presence, feed: ChangeFeed, parts: dict[str, Part | None]
) -> dict[str, Any]:
    """GET /v1/stats: the node, its links, its counters, and each optional part's own
    (None for a part that is off)."""
    registry = node.registry
    return {
        "hostname": node.hostname,
        "version": __version__,
        "uptime": round(node.clock.wall() - node.started, 3),
        "nodes": len(registry),
        "index": registry.index,
        "broker": {  # every link at once; one driver: exactly that driver's link
            "driver": ",".join(name for name, _ in node.drivers),
            "address": ", ".join(driver.address for _, driver in node.drivers),
            "connected": presence.connected,
            "expiry_paused": registry.paused,
        },
        "brokers": presence.link_stats(),  # each link, by driver name
        **presence.stats(),
        "watchers": {"streams": len(feed.watchers), "blocking": feed.waiting},
        **{name: part.stats() if part is not None else None for name, part in parts.items()},
    }


def log_node_events(registry: Registry) -> None:
    """join, update, leave and expire at INFO on the `lobby.nodes` logger."""
    registry.add_listener(NodeEventLog(logging.getLogger("lobby.nodes"), registry.ttl))


def metrics(registry: Registry, presence: Presence, feed: ChangeFeed) -> Metrics:
    """This daemon's metrics: its hooks on the registry, its reads of the rest."""
    from lobby.metrics import Metrics

    out = Metrics(__version__)
    out.track(
        nodes=lambda: len(registry),
        index=lambda: registry.index,
        paused=lambda: registry.paused,
        links=lambda: presence.links,
        rejected=lambda: presence.rejected,
        streams=lambda: len(feed.watchers),
        blocking=lambda: feed.waiting,
    )
    registry.add_listener(lambda change: out.node_event(change.kind, change.reason))
    return out
