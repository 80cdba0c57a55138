"""GET /metrics: every metric of SPEC §14.1, made by prometheus_client.

One `Metrics` per daemon, with its own CollectorRegistry (never the process-global
one, so several daemons in one test process keep apart), the standard `process_*`
and `python_*` collectors, and the lobby metrics. It imports nothing of lobby: the
daemon wires it to the parts it watches through a few hooks.

Everything is counted where it happens, never recomputed at a scrape:

- rare events are prometheus_client counters and histograms that their hooks
  increment: node events (a registry listener, `node_event`), callback runs
  (`callback_run`), HTTP requests (`http_request`, from lobby.api.ops);
- the per-packet counts are plain integers that presence and the drivers keep
  anyway for GET /v1/stats, one `+= 1` each on the hot path (a prometheus_client
  counter costs seven times as much, under its lock); `LinkCollector` reads them as
  they stand at the scrape, so /metrics and /v1/stats never disagree;
- gauges (`lobby_nodes`, `lobby_registry_index`, `lobby_watchers`, ...) read the
  current state through callables.

Metrics that concern one broker link carry a `driver` label (NATS, Redis): with
several drivers at once (SPEC §15), each link has its own series.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import Final, Protocol

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.exposition import choose_encoder
from prometheus_client.gc_collector import GCCollector
from prometheus_client.platform_collector import PlatformCollector
from prometheus_client.process_collector import ProcessCollector

NODE_EVENTS: Final = ("join", "update", "leave", "expire")
CALLBACK_RESULTS: Final = ("ok", "failed", "timeout")
CALLBACK_BUCKETS: Final = (0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0)
HTTP_BUCKETS: Final = (
    0.0005,
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    5.0,
    30.0,
    300.0,  # blocking queries and event streams count their whole length
)
WATCHER_KINDS: Final = ("stream", "blocking")

__all__ = ["LinkCounts", "Metrics"]


class LinkCounts(Protocol):
    """One broker link as the metrics read it (lobby.presence.Link has these)."""

    @property
    def name(self) -> str: ...
    @property
    def received(self) -> int: ...
    @property
    def announcements(self) -> int: ...
    @property
    def send_failures(self) -> int: ...
    @property
    def dropped(self) -> int: ...
    @property
    def reconnects(self) -> int: ...
    @property
    def healthy(self) -> bool: ...


class LinkCollector:
    """The per-packet counters, read as presence and the drivers keep them."""

    def __init__(self) -> None:
        self.links: Callable[[], Iterable[LinkCounts]] = tuple
        self.rejected: Callable[[], Mapping[str, int]] = dict

    def collect(self) -> Iterator[Metric]:
        links = list(self.links())

        def per_link(
            family: CounterMetricFamily | GaugeMetricFamily, value: Callable[[LinkCounts], float]
        ) -> Metric:
            for link in links:
                family.add_metric([link.name], value(link))
            return family

        def counter(name: str, doc: str) -> CounterMetricFamily:
            return CounterMetricFamily(name, doc, labels=["driver"])

        yield per_link(
            counter("lobby_packets_received", "packets heard on the discovery topic"),
            lambda link: link.received,
        )
        rejected = CounterMetricFamily(
            "lobby_packets_rejected", "packets dropped as invalid, by reason", labels=["reason"]
        )
        for reason, count in sorted(self.rejected().items()):
            rejected.add_metric([reason], count)
        yield rejected
        yield per_link(
            counter(
                "lobby_packets_dropped",
                "packets the broker client dropped because this node fell behind (slow consumer)",
            ),
            lambda link: link.dropped,
        )
        yield per_link(
            counter("lobby_announcements", "announcements (hi, goodbye) handed to the broker"),
            lambda link: link.announcements,
        )
        yield per_link(
            counter("lobby_announcement_failures", "announcements the broker could not take"),
            lambda link: link.send_failures,
        )
        yield per_link(
            GaugeMetricFamily(
                "lobby_broker_up",
                "1 while the broker link is up and our own announcements come back",
                labels=["driver"],
            ),
            lambda link: 1.0 if link.healthy else 0.0,
        )
        yield per_link(
            counter("lobby_broker_reconnects", "times the broker link came back after a loss"),
            lambda link: link.reconnects,
        )

    def describe(self) -> Iterator[Metric]:
        return iter(())  # collected at every scrape: nothing to check at registration


class Metrics:
    """The metrics of one daemon, in a registry of its own."""

    def __init__(self, version: str = "") -> None:
        self.registry = registry = CollectorRegistry()
        ProcessCollector(registry=registry)
        PlatformCollector(registry=registry)
        GCCollector(registry=registry)
        Gauge(
            "lobby_build_info", "lobbyd's version, as a label", ["version"], registry=registry
        ).labels(version).set(1)
        self.nodes = Gauge("lobby_nodes", "live nodes in this daemon's view", registry=registry)
        self.index = Gauge(
            "lobby_registry_index",
            "the registry's change index (X-Lobby-Index)",
            registry=registry,
        )
        self.expiry_paused = Gauge(
            "lobby_expiry_paused",
            "1 while expiry stands still because our own broker link is down",
            registry=registry,
        )
        events = Counter(
            "lobby_node_events",
            "peers joining, changing labels, leaving (goodbye) and expiring",
            ["event"],
            registry=registry,
        )
        self._events = {event: events.labels(event) for event in NODE_EVENTS}
        runs = Counter(
            "lobby_callback_runs", "CALLBACK runs by result", ["result"], registry=registry
        )
        self._callback_runs = {result: runs.labels(result) for result in CALLBACK_RESULTS}
        self._callback_duration = Histogram(
            "lobby_callback_duration_seconds",
            "how long CALLBACK runs took",
            buckets=CALLBACK_BUCKETS,
            registry=registry,
        )
        self._http_requests = Counter(
            "lobby_http_requests",
            "HTTP requests answered, by route template and status code",
            ["route", "code"],
            registry=registry,
        )
        self._http_duration = Histogram(
            "lobby_http_request_duration_seconds",
            "HTTP request durations by route template",
            ["route"],
            buckets=HTTP_BUCKETS,
            registry=registry,
        )
        self._http_children: dict[tuple[str, int], tuple[Counter, Histogram]] = {}
        self.watchers = Gauge(
            "lobby_watchers",
            "open event streams and held blocking queries",
            ["kind"],
            registry=registry,
        )
        self._links = LinkCollector()
        registry.register(self._links)

    # -- wiring (the daemon) ----------------------------------------------------------

    def track(
        self,
        *,
        nodes: Callable[[], float],
        index: Callable[[], float],
        paused: Callable[[], float],
        links: Callable[[], Iterable[LinkCounts]],
        rejected: Callable[[], Mapping[str, int]],
        streams: Callable[[], float],
        blocking: Callable[[], float],
    ) -> None:
        """Read the state and the per-packet counters from these callables at a scrape."""
        self.nodes.set_function(nodes)
        self.index.set_function(index)
        self.expiry_paused.set_function(paused)
        self.watchers.labels("stream").set_function(streams)
        self.watchers.labels("blocking").set_function(blocking)
        self._links.links = links
        self._links.rejected = rejected

    # -- hooks, called where things happen ----------------------------------------------

    def node_event(self, kind: str, reason: str = "") -> None:
        """A registry change: join, update, leave (reason goodbye) or leave (expired)."""
        event = "expire" if kind == "leave" and reason == "expired" else kind
        counter = self._events.get(event)
        if counter is not None:
            counter.inc()

    def callback_run(self, result: str, seconds: float) -> None:
        """A CALLBACK run ended: ok, failed or timeout, after `seconds`."""
        self._callback_runs[result].inc()
        self._callback_duration.observe(seconds)

    def http_request(self, route: str, code: int, seconds: float) -> None:
        children = self._http_children.get((route, code))
        if children is None:  # labels() costs more than the counting: once per pair
            children = self._http_children[(route, code)] = (
                self._http_requests.labels(route, str(code)),
                self._http_duration.labels(route),
            )
        children[0].inc()
        children[1].observe(seconds)

    # -- exposition ----------------------------------------------------------------------

    def render(self, accept: str = "") -> tuple[bytes, str]:
        """The exposition (the text format, or OpenMetrics when asked) and its type."""
        encode, content_type = choose_encoder(accept)
        return encode(self.registry), content_type
