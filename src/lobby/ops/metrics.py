"""GET /metrics: every metric of SPEC §14.1, in prometheus_client's exposition.

One `Metrics` per daemon, with its own CollectorRegistry (never the process-global
one, so several daemons in one test process keep apart), the standard `process_*`
and `python_*` collectors, and the lobby metrics. It imports nothing of lobby: the
daemon wires it to the parts it watches through a few hooks.

prometheus_client is imported on the first scrape, not before (1.9 MiB of an idle
daemon's RSS, bench/README.md): until then every lobby metric is plain Python state
here, and the first scrape builds the registry, which reads that state at each
scrape. Its answer is the one prometheus_client's own Counter, Gauge and Histogram
would give: the same families in the same order, the same samples (`_created` is
when the series started counting, as theirs).

Everything is counted where it happens, never recomputed at a scrape:

- rare events are counters and histograms that their hooks increment: node events
  (a registry listener, `node_event`), callback runs (`callback_run`), HTTP requests
  (`http_request`, from lobby.api.dispatch, once per answer);
- the per-packet counts are plain integers that presence and the drivers keep
  anyway for GET /v1/stats, one `+= 1` each on the hot path; the scrape reads them
  as they stand, so /metrics and /v1/stats never disagree;
- gauges (`lobby_nodes`, `lobby_registry_index`, `lobby_watchers`, ...) read the
  current state through callables.

Metrics that concern one broker link carry a `driver` label (NATS, Redis): with
several drivers at once (SPEC §15), each link has its own series.
"""

from __future__ import annotations

import time
from bisect import bisect_left
from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import TYPE_CHECKING, Final, Protocol

if TYPE_CHECKING:
    from prometheus_client import CollectorRegistry
    from prometheus_client.core import Metric

NODE_EVENTS: Final = ("join", "update", "leave", "expire")
CALLBACK_RESULTS: Final = ("ok", "failed", "timeout")
LAG_BUCKETS: Final = (0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 10.0, 60.0)
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
    """One broker link as the metrics read it (lobby.link.Link has these)."""

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


class _Count:
    """One counter series: its count and when it started counting (`_created`)."""

    __slots__ = ("created", "value")

    def __init__(self) -> None:
        self.value = 0
        self.created = time.time()


class _Histogram:
    """One histogram series: a count per bucket (not cumulative), the sum, `_created`."""

    __slots__ = ("bounds", "buckets", "created", "sum")

    def __init__(self, bounds: tuple[float, ...]) -> None:
        self.bounds = bounds  # the last one is +Inf
        self.buckets = [0] * len(bounds)
        self.sum = 0.0
        self.created = time.time()

    def observe(self, amount: float) -> None:
        self.sum += amount
        i = bisect_left(self.bounds, amount)  # the first bound >= amount
        if i < len(self.bounds) and amount <= self.bounds[i]:  # never NaN
            self.buckets[i] += 1


def _zero() -> float:
    return 0.0


class LinkCollector:
    """The per-packet counters, read as presence and the drivers keep them."""

    def __init__(self) -> None:
        self.links: Callable[[], Iterable[LinkCounts]] = tuple
        self.rejected: Callable[[], Mapping[str, int]] = dict

    def collect(self) -> Iterator[Metric]:
        from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

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
    """The metrics of one daemon; their registry (prometheus_client's) is built on the
    first scrape."""

    def __init__(self, version: str = "") -> None:
        self.version = version
        self._nodes: Callable[[], float] = _zero
        self._index: Callable[[], float] = _zero
        self._paused: Callable[[], float] = _zero
        self._watchers: dict[str, Callable[[], float]] = {}  # by kind, once tracked
        self._events = {event: _Count() for event in NODE_EVENTS}
        self._callback_runs = {result: _Count() for result in CALLBACK_RESULTS}
        self._callback_bounds = (*CALLBACK_BUCKETS, float("inf"))
        self._callback_duration = _Histogram(self._callback_bounds)
        self._loop_lag = _Histogram((*LAG_BUCKETS, float("inf")))
        self._http_bounds = (*HTTP_BUCKETS, float("inf"))
        self._http_requests: dict[tuple[str, str], _Count] = {}  # (route, code)
        self._http_durations: dict[str, _Histogram] = {}  # by route
        self._http_children: dict[tuple[str, int], tuple[_Count, _Histogram]] = {}
        self._queries: dict[tuple[str, str], _Count] = {}  # (role, result): SPEC §20
        self._query_durations: dict[str, _Histogram] = {}  # by role
        self._links = LinkCollector()
        self._registry: CollectorRegistry | None = None

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
        self._nodes = nodes
        self._index = index
        self._paused = paused
        self._watchers = {"stream": streams, "blocking": blocking}
        self._links.links = links
        self._links.rejected = rejected

    # -- hooks, called where things happen ----------------------------------------------

    def node_event(self, kind: str, reason: str = "") -> None:
        """A registry change: join, update, leave (reason goodbye) or leave (expired)."""
        event = "expire" if kind == "leave" and reason == "expired" else kind
        counter = self._events.get(event)
        if counter is not None:
            counter.value += 1

    def callback_run(self, result: str, seconds: float) -> None:
        """A CALLBACK run ended: ok, failed or timeout, after `seconds`."""
        self._callback_runs[result].value += 1
        self._callback_duration.observe(seconds)

    def loop_lag(self, seconds: float) -> None:
        """How much later than asked the event loop ran lobbyd's heartbeat."""
        self._loop_lag.observe(seconds)

    def query(self, role: str, result: str, seconds: float) -> None:
        """An agent's query ended (role `agent`: ok, no_listener) or a listener answered
        one (role `listener`: ok, failed), after `seconds` (SPEC §20)."""
        count = self._queries.get((role, result))
        if count is None:
            count = self._queries[(role, result)] = _Count()
        count.value += 1
        duration = self._query_durations.get(role)
        if duration is None:
            duration = self._query_durations[role] = _Histogram(self._http_bounds)
        duration.observe(seconds)

    def http_request(self, route: str, code: int, seconds: float) -> None:
        children = self._http_children.get((route, code))
        if children is None:
            count = self._http_requests.get((route, str(code)))
            if count is None:
                count = self._http_requests[(route, str(code))] = _Count()
            duration = self._http_durations.get(route)
            if duration is None:
                duration = self._http_durations[route] = _Histogram(self._http_bounds)
            children = self._http_children[(route, code)] = (count, duration)
        children[0].value += 1
        children[1].observe(seconds)

    # -- exposition ----------------------------------------------------------------------

    @property
    def registry(self) -> CollectorRegistry:
        """prometheus_client's registry of this daemon: the standard collectors and ours."""
        if self._registry is None:
            from prometheus_client import CollectorRegistry
            from prometheus_client.gc_collector import GCCollector
            from prometheus_client.platform_collector import PlatformCollector
            from prometheus_client.process_collector import ProcessCollector

            registry = CollectorRegistry()
            ProcessCollector(registry=registry)
            PlatformCollector(registry=registry)
            GCCollector(registry=registry)
            registry.register(self)
            registry.register(self._links)
            self._registry = registry
        return self._registry

    def render(self, accept: str = "") -> tuple[bytes, str]:
        """The exposition (the text format, or OpenMetrics when asked) and its type."""
        from prometheus_client.exposition import choose_encoder

        encode, content_type = choose_encoder(accept)
        return encode(self.registry), content_type

    def describe(self) -> Iterator[Metric]:
        return iter(())  # collected at every scrape: nothing to check at registration

    def collect(self) -> Iterator[Metric]:
        """The lobby metrics as prometheus_client's Gauge, Counter and Histogram give them."""
        from prometheus_client import metrics as wrappers
        from prometheus_client.core import Metric
        from prometheus_client.utils import floatToGoString

        go_float: Callable[[float], str] = floatToGoString  # untyped in prometheus_client

        created = bool(getattr(wrappers, "_use_created", True))  # PROMETHEUS_DISABLE_CREATED_SERIES

        def gauge(name: str, doc: str, series: Iterable[tuple[dict[str, str], float]]) -> Metric:
            metric = Metric(name, doc, "gauge")
            for labels, value in series:
                metric.add_sample(name, labels, float(value))
            return metric

        def counter(name: str, doc: str, series: Iterable[tuple[dict[str, str], _Count]]) -> Metric:
            metric = Metric(name, doc, "counter")
            for labels, count in series:
                metric.add_sample(name + "_total", labels, float(count.value))
                if created:
                    metric.add_sample(name + "_created", dict(labels), count.created)
            return metric

        def histogram(
            name: str, doc: str, series: Iterable[tuple[dict[str, str], _Histogram]]
        ) -> Metric:
            metric = Metric(name, doc, "histogram")
            for labels, one in series:
                acc = 0.0
                for bound, count in zip(one.bounds, one.buckets, strict=True):
                    acc += count
                    le = {**labels, "le": go_float(bound)}
                    metric.add_sample(name + "_bucket", le, acc)
                metric.add_sample(name + "_count", dict(labels), acc)
                if one.bounds[0] >= 0:
                    metric.add_sample(name + "_sum", dict(labels), one.sum)
                if created:
                    metric.add_sample(name + "_created", dict(labels), one.created)
            return metric

        yield gauge(
            "lobby_build_info", "lobbyd's version, as a label", [({"version": self.version}, 1)]
        )
        yield gauge("lobby_nodes", "live nodes in this daemon's view", [({}, self._nodes())])
        yield gauge(
            "lobby_registry_index",
            "the registry's change index (X-Lobby-Index)",
            [({}, self._index())],
        )
        yield gauge(
            "lobby_expiry_paused",
            "1 while expiry stands still because our own broker link is down",
            [({}, self._paused())],
        )
        yield counter(
            "lobby_node_events",
            "peers joining, changing labels, leaving (goodbye) and expiring",
            [({"event": event}, count) for event, count in self._events.items()],
        )
        yield counter(
            "lobby_callback_runs",
            "CALLBACK runs by result",
            [({"result": result}, count) for result, count in self._callback_runs.items()],
        )
        yield histogram(
            "lobby_callback_duration_seconds",
            "how long CALLBACK runs took",
            [({}, self._callback_duration)],
        )
        yield histogram(
            "lobby_event_loop_lag_seconds",
            "how much later than asked the event loop ran lobbyd's heartbeat (every 0.25 s):"
            " its stalls",
            [({}, self._loop_lag)],
        )
        yield counter(
            "lobby_http_requests",
            "HTTP requests answered, by route template and status code",
            [
                ({"route": route, "code": code}, count)
                for (route, code), count in self._http_requests.items()
            ],
        )
        yield histogram(
            "lobby_http_request_duration_seconds",
            "HTTP request durations by route template",
            [({"route": route}, one) for route, one in self._http_durations.items()],
        )
        yield counter(
            "lobby_queries",
            "agents' cluster reads over the broker (SPEC §20): an agent's by result (ok,"
            " no_listener), a listener's answers (ok, failed)",
            [
                ({"role": role, "result": result}, count)
                for (role, result), count in self._queries.items()
            ],
        )
        yield histogram(
            "lobby_query_seconds",
            "how long agents' queries took: asked and answered (agent), answered (listener)",
            [({"role": role}, one) for role, one in self._query_durations.items()],
        )
        yield gauge(
            "lobby_watchers",
            "open event streams and held blocking queries",
            [({"kind": kind}, read()) for kind, read in self._watchers.items()],
        )
