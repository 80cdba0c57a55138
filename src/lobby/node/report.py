"""What this node tells operators about itself (SPEC §14): the `/v1/stats` document, and
the metrics' reads of the registry, presence and the change feed.

The metrics object and the node event log are made by the daemon (lobby.metrics and
lobby.logs import nothing of lobby); here they are only hooked up, through `Tracker`.
The metrics exist only when the API, which serves /metrics, is on; prometheus_client
itself is imported on the first scrape.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from typing import Any, Protocol, TypeVar

from lobby import __version__
from lobby.node.presence import Presence
from lobby.view.feed import ChangeFeed
from lobby.view.registry import Registry


class Tracker(Protocol):
    """What `track` hooks up (lobby.metrics.Metrics)."""

    def track(
        self,
        *,
        nodes: Callable[[], float],
        index: Callable[[], float],
        paused: Callable[[], float],
        links: Callable[[], Iterable[Any]],
        rejected: Callable[[], Mapping[str, int]],
        streams: Callable[[], float],
        blocking: Callable[[], float],
    ) -> None: ...

    def node_event(self, kind: str, reason: str = "") -> None: ...

    def loop_lag(self, seconds: float) -> None: ...


T = TypeVar("T", bound=Tracker)


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


def track(metrics: T, registry: Registry, presence: Presence, feed: ChangeFeed) -> T:
    """Hook `metrics` onto the registry's changes; it reads the rest at each scrape."""
    metrics.track(
        nodes=lambda: len(registry),
        index=lambda: registry.index,
        paused=lambda: registry.paused,
        links=lambda: presence.links,
        rejected=lambda: presence.rejected,
        streams=lambda: len(feed.watchers),
        blocking=lambda: feed.waiting,
    )
    registry.add_listener(lambda change: metrics.node_event(change.kind, change.reason))
    presence.loop_lag.observe = metrics.loop_lag
    return metrics
