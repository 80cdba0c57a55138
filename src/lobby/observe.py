"""Wires what operators watch to the parts they watch (SPEC §14): the node event log and
the metrics, each hooked onto the registry, presence and the change feed.

Kept out of the daemon (wiring and lifecycle only) and out of lobby.metrics (which
imports nothing of lobby). The metrics exist only when the API, which serves /metrics,
is on; prometheus_client itself is imported on the first scrape.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from lobby import __version__
from lobby.feed import ChangeFeed
from lobby.logs import NodeEventLog
from lobby.presence import Presence
from lobby.registry import Registry

if TYPE_CHECKING:
    from lobby.metrics import Metrics


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
