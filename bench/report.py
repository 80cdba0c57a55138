"""Results -> markdown tables (stdout, bench/README.md) and PNG plots (bench/*.png)."""

from __future__ import annotations

import math
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

BENCH = Path(__file__).resolve().parent
BROKERS = ("nats", "redis")
NAMES = {"nats": "NATS", "redis": "Redis"}
GO_INGEST = {1_000: 20_000, 10_000: 5_000, 50_000: 1_500}
GO_API_10K = 64

# SPEC §11
INGEST_TARGET = 50_000
LOAD_TARGET_S = 1.0
API_TARGETS = {10_000: 600, 10: 25_000}  # SPEC §11 at 10k; issue 19 at 10 (Go, 2 cores)
PROPAGATION_P99_S = 0.050
RSS_PER_NODE = 600  # issue 19 (SPEC §11: 1 KiB); Go: 639 B
# issue 19: the rest of its table (Go lobby 1.5's figures on 2 cores in the notes)
RESOLVE_10 = 30_000  # Go: 46,200 req/s
GZIP_1K = 10_000  # Go (no gzip): 722 req/s
P99_10K_MS = 10.0  # Go: 464 ms
IDLE_RSS = 30 * 2**20  # Go: 9.4 MiB
GET_GROWTH = 4 * 2**20  # Go: +61 MiB
INGEST_100K = 200_000  # on one core
INGEST_SIGNED = 150_000  # with signing on
DNS_QPS = 20_000  # SPEC §17: cached answers, one core
FAILURE_SLACK_S = 1.0
# SPEC §16
UI_FIRST_PAINT_MS = 1000
UI_LONG_TASK_MS = 100
# SPEC §13.1 and issue 13
SIGNING_COST = 0.25
SIGNING_US = 2.0

README_START = "<!-- bench:results:start -->"
README_END = "<!-- bench:results:end -->"


def mark(ok: bool | None) -> str:
    return "" if ok is None else (" ✅" if ok else " ❌")


def num(x: float | None, digits: int = 0) -> str:
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "-"
    return f"{x:,.{digits}f}"


def _get(d: Any, *path: Any) -> Any:
    for p in path:
        if d is None:
            return None
        if isinstance(p, int) and isinstance(d, list):
            d = d[p] if -len(d) <= p < len(d) else None
        elif isinstance(d, dict):
            d = d.get(p)
        else:
            return None
    return d


def _by_n(section: Any, n: int) -> dict[str, Any] | None:
    for entry in _get(section, "by_n") or []:
        if entry.get("n") == n:
            return entry  # type: ignore[no-any-return]
    return None


def _cells(
    results: dict[str, Any], fn: Callable[[dict[str, Any]], tuple[str, bool | None] | None]
) -> list[str] | None:
    """One cell per broker; None when no broker has this figure."""
    cells, any_value = [], False
    for broker in BROKERS:
        data = _get(results, "brokers", broker)
        value = fn(data) if data else None
        if value is None:
            cells.append("-")
        else:
            any_value = True
            text, ok = value
            cells.append(text + mark(ok))
    return cells if any_value else None


def _err(data: dict[str, Any], key: str) -> tuple[str, None] | None:
    if _get(data, key, "error"):
        return ("error", None)
    return None


def targets_table(results: dict[str, Any]) -> list[str]:
    rows: list[tuple[str, str, list[str] | None]] = []
    ingest_ns = sorted(
        {e["n"] for b in BROKERS for e in _get(results, "brokers", b, "ingest", "by_n") or []}
    )
    for n in ingest_ns:

        def ingest_rate(d: dict[str, Any], n: int = n) -> tuple[str, bool | None] | None:
            e = _by_n(d.get("ingest"), n)
            if e is None:
                return _err(d, "ingest")
            rate = e.get("max_rate")
            if rate is None:
                return ("none kept up", False)
            return (f"{rate:,}/s", rate >= (INGEST_100K if n == 100_000 else INGEST_TARGET))

        go = f" (Go: {GO_INGEST[n]:,}/s)" if n in GO_INGEST else ""
        target = INGEST_100K if n == 100_000 else INGEST_TARGET
        rows.append(
            (
                f"ingest, N={n:,}: highest rate kept up with",
                f"≥ {target:,}/s{go}",
                _cells(results, ingest_rate),
            )
        )

    def cost_growth(d: dict[str, Any]) -> tuple[str, bool | None] | None:
        entries = [e for e in _get(d, "ingest", "by_n") or [] if e.get("cpu_s_per_100k")]
        if len(entries) < 2:
            return None
        first, last = entries[0], entries[-1]
        ratio = last["cpu_s_per_100k"] / first["cpu_s_per_100k"]
        text = (
            f"{first['cpu_s_per_100k']:.2f} s → {last['cpu_s_per_100k']:.2f} s"
            f" (N {first['n']:,} → {last['n']:,}, x{ratio:.2f})"
        )
        return (text, ratio < 1.25)

    rows.append(
        ("lobbyd CPU per 100k packets", "must not grow with N", _cells(results, cost_growth))
    )

    signing_ns = sorted(
        {e["n"] for b in BROKERS for e in _get(results, "brokers", b, "signing", "by_n") or []}
    )
    for n in signing_ns:

        def signing(d: dict[str, Any], n: int = n) -> tuple[str, bool | None] | None:
            e = _by_n(d.get("signing"), n)
            if e is None:
                return _err(d, "signing")
            cost = e.get("capacity_cost")
            if cost is None:
                return ("none kept up", False)
            off, on = e["off"], e["on"]
            text = (
                f"{cost:.0%} ({num(off['implied_capacity'])} → {num(on['implied_capacity'])}"
                f" packets per CPU s, +{e['us_added']:.1f} µs/packet; highest rate kept up"
                f" with {num(off['max_rate'])}/s → {num(on['max_rate'])}/s)"
            )
            verify = _get(d, "signing", "hot_path", "verify_us")
            if verify is not None:
                text += f"; the check alone {verify:.1f} µs"
            return (text, cost <= SIGNING_COST)

        rows.append(
            (
                f"ingest with signing on, N={n:,}: throughput lost",
                f"≤ {SIGNING_COST:.0%} (≈ {SIGNING_US:.0f} µs/packet)",
                _cells(results, signing),
            )
        )

        def signed_rate(d: dict[str, Any], n: int = n) -> tuple[str, bool | None] | None:
            rate = _get(_by_n(d.get("signing"), n), "on", "max_rate")
            if rate is None:
                return _err(d, "signing")
            return (f"{rate:,}/s", rate >= INGEST_SIGNED)

        rows.append(
            (
                f"ingest with signing on, N={n:,}: highest rate kept up with",
                f"≥ {INGEST_SIGNED:,}/s",
                _cells(results, signed_rate),
            )
        )

    def load(d: dict[str, Any]) -> tuple[str, bool | None] | None:
        s = _get(d, "memory", "load_seconds")
        if s is None:
            return _err(d, "memory")
        return (f"{s:.2f} s", s < LOAD_TARGET_S)

    rows.append(
        ("load 50,000 nodes from nothing", f"< {LOAD_TARGET_S:.0f} s", _cells(results, load))
    )

    for n, target in sorted(API_TARGETS.items(), reverse=True):

        def api(
            d: dict[str, Any], n: int = n, target: int = target
        ) -> tuple[str, bool | None] | None:
            r = _get(_by_n(d.get("api"), n), "endpoints", "all")
            if r is None:
                return _err(d, "api")
            return (f"{r['rps']:,.0f} req/s (p99 {r.get('p99_ms', 0):.1f} ms)", r["rps"] >= target)

        go = f" (Go: {GO_API_10K}/s)" if n == 10_000 else " (Go, 2 cores: 25,400/s)"
        rows.append(
            (
                f"GET /v1/discoveries, {n:,} nodes, 16 clients",
                f"≥ {target:,} req/s{go}",
                _cells(results, api),
            )
        )

    def endpoint(
        n: int, name: str, test: Callable[[dict[str, Any]], bool]
    ) -> Callable[[dict[str, Any]], tuple[str, bool | None] | None]:
        def cell(d: dict[str, Any]) -> tuple[str, bool | None] | None:
            r = _get(_by_n(d.get("api"), n), "endpoints", name)
            if r is None:
                return _err(d, "api")
            return (f"{r['rps']:,.0f} req/s (p99 {r.get('p99_ms', 0):.1f} ms)", test(r))

        return cell

    rows += [
        (
            "GET /v1/resolve, 10 nodes, 16 clients",
            f"≥ {RESOLVE_10:,} req/s (Go, 2 cores: 46,200/s)",
            _cells(results, endpoint(10, "resolve", lambda r: r["rps"] >= RESOLVE_10)),
        ),
        (
            "GET /v1/discoveries, 1,000 nodes, gzip clients",
            f"≥ {GZIP_1K:,} req/s (Go: 722/s)",
            _cells(results, endpoint(1_000, "gzip", lambda r: r["rps"] >= GZIP_1K)),
        ),
        (
            "GET /v1/discoveries, 10,000 nodes, gzip clients, one node changing every second",
            f"p99 ≤ {P99_10K_MS:.0f} ms (Go: 464 ms)",
            _cells(
                results,
                endpoint(10_000, "gzip", lambda r: r.get("p99_ms", 1e9) <= P99_10K_MS),
            ),
        ),
    ]

    def prop(d: dict[str, Any]) -> tuple[str, bool | None] | None:
        v = _get(d, "propagation", "visible_s")
        if v is None:
            return _err(d, "propagation")
        return (
            f"p50 {v['p50'] * 1e3:.1f} ms, p99 {v['p99'] * 1e3:.1f} ms",
            v["p99"] < PROPAGATION_P99_S,
        )

    rows.append(("label POSTed on A → visible on B", "p99 < 50 ms", _cells(results, prop)))

    def kill(d: dict[str, Any]) -> tuple[str, bool | None] | None:
        f = d.get("failure")
        if not f or "sigkill_s" not in f:
            return _err(d, "failure")
        worst = f["sigkill_s"]["max"]
        return (
            f"{f['sigkill_s']['p50']:.2f} s (max {worst:.2f} s, TTL {f['ttl']} s)",
            worst <= f["ttl"] + FAILURE_SLACK_S,
        )

    rows.append(("SIGKILLed node gone from a peer", "≤ TTL + 1 s", _cells(results, kill)))

    def term(d: dict[str, Any]) -> tuple[str, bool | None] | None:
        f = d.get("failure")
        if not f or "sigterm_s" not in f:
            return _err(d, "failure")
        worst = f["sigterm_s"]["max"]
        return (f"{f['sigterm_s']['p50'] * 1e3:.0f} ms (max {worst * 1e3:.0f} ms)", worst <= 1.0)

    rows.append(
        ("SIGTERMed node gone from a peer (goodbye)", "at once (≤ 1 s)", _cells(results, term))
    )

    def per_node(d: dict[str, Any]) -> tuple[str, bool | None] | None:
        e = _by_n(d.get("memory"), 50_000)
        if e is None:
            return _err(d, "memory")
        b = e["bytes_per_node"]
        return (f"{b:,.0f} B", b <= RSS_PER_NODE)

    rows.append(
        (
            "RSS per node record, 50,000 nodes",
            f"≤ {RSS_PER_NODE} B (Go: 639 B)",
            _cells(results, per_node),
        )
    )

    def idle(d: dict[str, Any]) -> tuple[str, bool | None] | None:
        base = _get(d, "memory", "rss_base")
        if base is None:
            return _err(d, "memory")
        return (f"{base / 2**20:.1f} MiB", base <= IDLE_RSS)

    rows.append(
        (
            "RSS of an idle daemon (answered a few GETs)",
            f"≤ {IDLE_RSS / 2**20:.0f} MiB (Go: 9.4 MiB)",
            _cells(results, idle),
        )
    )

    def jump(d: dict[str, Any]) -> tuple[str, bool | None] | None:
        f = _get(d, "memory", "full_list")
        if f is None:
            return _err(d, "memory")
        mib = 2**20
        first = f["rss_after_each"][0] - f["rss_before"]
        return (
            f"+{first / mib:.1f} MiB after one, +{f['jump'] / mib:.1f} MiB after"
            f" {len(f['rss_after_each'])} GETs (answer {f['bytes'] / mib:.1f} MiB)",
            max(first, f["jump"]) <= GET_GROWTH,
        )

    rows.append(
        (
            "RSS growth from GET /v1/discoveries at 50,000 nodes",
            f"≤ +{GET_GROWTH / 2**20:.0f} MiB (Go: +61 MiB)",
            _cells(results, jump),
        )
    )

    def dns(d: dict[str, Any], mode: str = "udp") -> tuple[str, bool | None] | None:
        r = _get(d, "dns", "by_transport", mode)
        if r is None:
            return _err(d, "dns") if mode == "udp" else None
        # The capacity of lobbyd's core is what it answers per CPU second; the rate dnsperf
        # reaches from the other core is a floor (on 2 cores the load generator is the limit).
        capacity = r["per_cpu_second"] or 0
        text = (
            f"{capacity:,} per CPU second (dnsperf got {r['qps']:,.0f}/s,"
            f" lobbyd's core {r['lobbyd_cpu_util']:.0%} busy; avg {r.get('latency_avg_ms', 0):.1f} ms)"
        )
        return (text, capacity >= DNS_QPS if mode == "udp" else None)

    rows.append(
        ("DNS: cached A queries over UDP, one core", f"≥ {DNS_QPS:,}/s", _cells(results, dns))
    )
    rows.append(("DNS: the same over TCP", "-", _cells(results, lambda d: dns(d, "tcp"))))

    def first_paint(d: dict[str, Any]) -> tuple[str, bool | None] | None:
        u = d.get("ui")
        if u is None:
            return None
        painted = _get(u, "element_ms") or _get(u, "first_rows_ms")
        if painted is None:
            return _err(d, "ui")
        fcp = _get(u, "fcp_ms", "p50")
        return (
            f"{painted['p50']:,} ms (best {painted.get('min', painted['p50']):,}, worst"
            f" {painted['max']:,}; the empty page's own first paint: {fcp or 0:,} ms)",
            painted["p50"] < UI_FIRST_PAINT_MS,
        )

    rows.append(
        (
            "dashboard, 10,000 nodes: first rows painted, from navigation",
            f"< {UI_FIRST_PAINT_MS:,} ms",
            _cells(results, first_paint),
        )
    )

    def typing(d: dict[str, Any]) -> tuple[str, bool | None] | None:
        u = d.get("ui")
        if u is None:
            return None
        if u.get("longest_task_ms") is None:
            return _err(d, "ui")
        return (
            f"longest task {u['longest_task_ms']:.0f} ms; recomputing the list"
            f" {u['filter_ms_max']:.0f} ms at most",
            u["longest_task_ms"] <= UI_LONG_TASK_MS,
        )

    rows.append(
        (
            "dashboard, 10,000 nodes: typing in the filter",
            f"no task > {UI_LONG_TASK_MS} ms",
            _cells(results, typing),
        )
    )

    lines = [
        f"| {what} | {goal} | " + " | ".join(cells) + " |"
        for what, goal, cells in rows
        if cells is not None
    ]
    if not lines:
        return []
    return ["| measurement | target | NATS | Redis |", "| --- | --- | --- | --- |", *lines]


def ingest_table(results: dict[str, Any]) -> list[str]:
    lines = [
        "| broker | N | highest rate kept up with | lobbyd CPU there | CPU s per 100k packets | µs per packet | packets per CPU second | others' CPU on its core |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    found = False
    for broker in BROKERS:
        for e in _get(results, "brokers", broker, "ingest", "by_n") or []:
            found = True
            best = next(
                (s for s in e["steps"] if s["ok"] and round(s["rate"]) == e["max_rate"]), None
            )
            foreign = best["foreign_cpu"] if best else None
            lines.append(
                f"| {NAMES[broker]} | {e['n']:,} | {num(e['max_rate'])}/s"
                f" | {num(100 * e['cpu_util_at_max'] if e['cpu_util_at_max'] is not None else None)} %"
                f" | {num(e['cpu_s_per_100k'], 3)} | {num(10 * e['cpu_s_per_100k'] if e['cpu_s_per_100k'] else None, 1)}"
                f" | {num(e['implied_capacity'])} | {num(100 * foreign if foreign is not None else None)} % |"
            )
    return lines if found else []


def fanout_table(results: dict[str, Any]) -> list[str]:
    f = _get(results, "brokers", "nats", "fanout")
    if not f or f.get("error") or not f.get("steps"):
        return []
    lines = [
        "| N listening | packets/s published | deliveries/s | broker CPU | broker µs per delivery | listeners' CPU | all delivered, no slow consumer |",
        "| ---: | ---: | ---: | ---: | ---: | ---: | --- |",
    ]
    for st in f["steps"]:
        lines.append(
            f"| {st['n']:,} | {num(st['publish_rate'])} | {num(st['deliveries_per_s'])}"
            f" | {num(100 * st['broker_cpu_util'])} % | {st['broker_us_per_delivery']:.2f}"
            f" | {num(100 * st['listener_cpu_util'])} % | {mark(st['sustained'])} |"
        )
    if f.get("one_core_n_at_ka5"):
        lines += [
            "",
            f"Largest N sustained here: {f['largest_sustained_n']:,}. At "
            f"{f['us_per_delivery']:.2f} µs of broker CPU per delivery, one broker core carries "
            f"N²/5 deliveries a second up to **N ≈ {f['one_core_n_at_ka5']:,} nodes at KEEP_ALIVE 5 s** "
            "(the README's scaling section says what a bigger cluster needs).",
        ]
    return lines


def api_table(results: dict[str, Any]) -> list[str]:
    lines = [
        "| N | request | answer | NATS req/s | p50 | p99 | Redis req/s | p50 | p99 |",
        "| ---: | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    ns = sorted({e["n"] for b in BROKERS for e in _get(results, "brokers", b, "api", "by_n") or []})
    for n in ns:
        names: list[str] = []
        for b in BROKERS:
            for name in _get(_by_n(_get(results, "brokers", b, "api"), n), "endpoints") or {}:
                if name not in names:
                    names.append(name)
        for name in names:
            cols, path, size, how = [], "", None, ""
            for b in BROKERS:
                r = _get(_by_n(_get(results, "brokers", b, "api"), n), "endpoints", name)
                if r is None:
                    cols += ["-", "-", "-"]
                    continue
                path, size = r["path"], r["bytes"]
                how = " (gzip)" if "Accept-Encoding" in (r.get("headers") or {}) else ""
                bad = f" ({r['non_2xx']} non-2xx)" if r.get("non_2xx") else ""
                cols += [
                    f"{r['rps']:,.0f}{bad}",
                    f"{r.get('p50_ms', 0):.2f} ms",
                    f"{r.get('p99_ms', 0):.2f} ms",
                ]
            lines.append(f"| {n:,} | `{path}`{how} | {_size(size)} | " + " | ".join(cols) + " |")
    return lines if ns else []


def _size(b: int | None) -> str:
    if b is None:
        return "-"
    if b >= 2**20:
        return f"{b / 2**20:.1f} MiB"
    if b >= 1024:
        return f"{b / 1024:.0f} KiB"
    return f"{b} B"


def other_table(results: dict[str, Any]) -> list[str]:
    lines = ["| measurement | NATS | Redis |", "| --- | --- | --- |"]
    rows = 0

    def row(what: str, fn: Callable[[dict[str, Any]], str | None]) -> None:
        nonlocal rows
        cells = []
        for b in BROKERS:
            d = _get(results, "brokers", b)
            cells.append((fn(d) if d else None) or "-")
        if any(c != "-" for c in cells):
            lines.append(f"| {what} | " + " | ".join(cells) + " |")
            rows += 1

    def join(peers: str) -> Callable[[dict[str, Any]], str | None]:
        def cell(d: dict[str, Any]) -> str | None:
            v = _get(d, "join", peers)
            if not v:
                return None
            c, a = v["complete_s"], v["complete_after_connect_s"]
            return f"{c['p50']:.2f} s (max {c['max']:.2f}); {a['p50']:.2f} s after connecting"

        return cell

    def join_what(peers: str) -> str:
        for b in BROKERS:
            j = _get(results, "brokers", b, "join")
            if j and peers in j:
                return (
                    f"fresh node among {j['n']:,} {'Go' if peers == 'go' else 'Python'} peers"
                    f" (KEEP_ALIVE {j['keep_alive']} s): spawn → lists all,"
                    f" {j[peers]['complete_s']['trials']} trials"
                )
        return f"join, {peers} peers"

    row(join_what("go"), join("go"))
    row(join_what("python"), join("python"))
    row(
        "POST /v1/labels on A (part of propagation)",
        lambda d: (
            f"p50 {d['propagation']['post_s']['p50'] * 1e3:.1f} ms, p99 {d['propagation']['post_s']['p99'] * 1e3:.1f} ms"
            if _get(d, "propagation", "post_s")
            else None
        ),
    )
    row(
        "SIGTERM → process exited",
        lambda d: (
            f"{d['failure']['sigterm_exit_s']['max'] * 1e3:.0f} ms (max)"
            if _get(d, "failure", "sigterm_exit_s")
            else None
        ),
    )
    row(
        "RSS with ~0 nodes",
        lambda d: (
            f"{d['memory']['rss_base'] / 2**20:.1f} MiB" if _get(d, "memory", "rss_base") else None
        ),
    )

    def rss_at(n: int) -> Callable[[dict[str, Any]], str | None]:
        def cell(d: dict[str, Any]) -> str | None:
            e = _by_n(d.get("memory"), n)
            return f"{e['rss'] / 2**20:.1f} MiB ({e['bytes_per_node']:,.0f} B)" if e else None

        return cell

    for n in (50_000, 100_000):
        row(f"RSS at {n:,} nodes (per node record)", rss_at(n))
    row(
        "simulator alone into the broker",
        lambda d: (
            f"{d['ingest']['simulator_max_rate']:,} packets/s"
            if _get(d, "ingest", "simulator_max_rate")
            else None
        ),
    )
    return lines if rows else []


CHECK_KINDS = {
    "none": "no checks (baseline)",
    "tcp": "`tcp://` (a local listener)",
    "http": "`http://` (a local HTTP server, 200)",
    "exec": "`exec:/bin/true`",
}


def checks_table(results: dict[str, Any]) -> tuple[str, list[str]]:
    """The health-check cost (run with one broker only): title and table."""
    for broker in BROKERS:
        data = _get(results, "brokers", broker, "checks")
        if not data or not data.get("by_kind"):
            continue
        title = (
            f"Health checks ({data['n']} checks at CHECK_INTERVAL {data['interval_s']} s,"
            f" one lobbyd on {NAMES[broker]}, CPU over {data['seconds']:g} s)"
        )
        lines = [
            "| checks | lobbyd CPU | CPU of the commands it ran | GET /v1/discovery p50 | p99 |"
            " all labels up after |",
            "| --- | ---: | ---: | ---: | ---: | ---: |",
        ]
        for v in data["by_kind"]:
            get = v["get_discovery_s"]
            children = f"{v['children_cpu_util']:.1%}" if v["kind"] == "exec" else "-"
            up = f"{v['all_up_s']:.1f} s" if v["kind"] != "none" else "-"
            lines.append(
                f"| {CHECK_KINDS.get(v['kind'], v['kind'])} | {v['cpu_util']:.1%} of a core"
                f" | {children} | {get['p50'] * 1e3:.2f} ms | {get['p99'] * 1e3:.2f} ms | {up} |"
            )
        return title, lines
    return "", []


def machine_line(results: dict[str, Any]) -> str:
    m = results["machine"]
    noise = results.get("noise", {})
    text = (
        f"{m['cpu']}, {m['cores']} cores, {m['memory_gib']} GiB, Python {m['python']};"
        f" lobbyd {m['lobbyd']}; nats-server {m['nats_server'].removeprefix('nats-server: ')};"
        f" {m['redis_server']}. Every lobbyd pinned to core {m['daemon_cpus']}, broker,"
        f" simulator and wrk on {m['other_cpus']}. Run {results['started']},"
        f" {results['duration_s']:.0f} s{' (--quick)' if results.get('quick') else ''}."
    )
    if noise.get("wall"):
        share = noise["foreign_cpu_s"] / noise["wall"]
        text += f" Other processes used {share:.0%} of one core on average meanwhile."
    return text


def markdown(results: dict[str, Any]) -> str:
    parts = [machine_line(results)]
    if targets := targets_table(results):
        parts += ["", *targets]
    for title, table in (
        ("Ingest", ingest_table(results)),
        ("API (wrk -t2 -c16, registry changing once a second)", api_table(results)),
        ("Join, failure, memory", other_table(results)),
        ("Fan-out: one nats-server on one core, N nodes all listening", fanout_table(results)),
        checks_table(results),
    ):
        if table:
            parts += ["", f"**{title}**", "", *table]
    errors = [
        f"- {NAMES[b]} {name}: {sec['error']}"
        for b in BROKERS
        for name, sec in (_get(results, "brokers", b) or {}).items()
        if isinstance(sec, dict) and sec.get("error")
    ]
    if errors:
        parts += ["", "**Errors**", "", *errors]
    return "\n".join(parts) + "\n"


def update_readme(results: dict[str, Any], plots: list[str]) -> bool:
    path = BENCH / "README.md"
    if not path.exists():
        return False
    text = path.read_text()
    if README_START not in text or README_END not in text:
        return False
    body = markdown(results)
    if plots:
        body += "\n" + "\n".join(f"![{Path(p).stem}]({Path(p).name})" for p in plots) + "\n"
    new = re.sub(
        re.escape(README_START) + ".*?" + re.escape(README_END),
        lambda _: f"{README_START}\n{body}{README_END}",
        text,
        flags=re.S,
    )
    path.write_text(new)
    return True


# -- plots ------------------------------------------------------------------------------

COLORS = {"nats": "#1f77b4", "redis": "#d62728", "go": "#7f7f7f"}


def plots(results: dict[str, Any]) -> list[str]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    written: list[str] = []
    brokers = {b: d for b in BROKERS if (d := _get(results, "brokers", b))}

    # ingest
    if any(_get(d, "ingest", "by_n") for d in brokers.values()):
        fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4))
        for b, d in brokers.items():
            entries = [e for e in _get(d, "ingest", "by_n") or [] if e.get("max_rate")]
            if entries:
                ns = [e["n"] for e in entries]
                ax1.plot(
                    ns,
                    [e["max_rate"] for e in entries],
                    "o-",
                    color=COLORS[b],
                    label=f"lobbyd, {NAMES[b]}",
                )
                ax2.plot(
                    ns,
                    [10 * e["cpu_s_per_100k"] for e in entries],
                    "o-",
                    color=COLORS[b],
                    label=NAMES[b],
                )
        ax1.plot(
            list(GO_INGEST),
            list(GO_INGEST.values()),
            "s--",
            color=COLORS["go"],
            label="Go lobby 1.5",
        )
        ax1.axhline(INGEST_TARGET, color="green", ls=":", label="target 50,000/s")
        ax1.set(
            xscale="log",
            yscale="log",
            xlabel="nodes (N)",
            ylabel="packets/s kept up with",
            title="Ingest, one core",
        )
        ax2.set(
            xscale="log",
            xlabel="nodes (N)",
            ylabel="lobbyd CPU µs per packet",
            title="Cost per packet",
        )
        ax2.set_ylim(bottom=0)
        for ax in (ax1, ax2):
            ax.grid(True, which="both", alpha=0.3)
            ax.legend(fontsize=8)
        fig.tight_layout()
        written.append(_save(fig, "ingest.png"))
        plt.close(fig)

    # API
    api_ns = sorted({e["n"] for d in brokers.values() for e in _get(d, "api", "by_n") or []})
    if api_ns:
        fig, axes = plt.subplots(1, len(api_ns), figsize=(4.2 * len(api_ns), 4.4), squeeze=False)
        for ax, n in zip(axes[0], api_ns, strict=True):
            names: list[str] = []
            for d in brokers.values():
                for name in _get(_by_n(d.get("api"), n), "endpoints") or {}:
                    if name not in names:
                        names.append(name)
            width = 0.8 / max(len(brokers), 1)
            for k, (b, d) in enumerate(brokers.items()):
                eps = _get(_by_n(d.get("api"), n), "endpoints") or {}
                xs = [i + (k - (len(brokers) - 1) / 2) * width for i in range(len(names))]
                ys = [_get(eps, name, "rps") or 0 for name in names]
                ax.bar(xs, ys, width, color=COLORS[b], label=f"lobbyd, {NAMES[b]}")
            if n in API_TARGETS:
                ax.axhline(API_TARGETS[n], color="green", ls=":", label="target (full list)")
            if n == 10_000:
                ax.axhline(
                    GO_API_10K, color=COLORS["go"], ls="--", label="Go lobby 1.5 (full list)"
                )
            ax.set_xticks(range(len(names)), names, rotation=30)
            ax.set(title=f"N = {n:,}", ylabel="req/s")
            ax.set_ylim(bottom=0)
            ax.grid(True, axis="y", alpha=0.3)
        handles: dict[str, Any] = {}
        for ax in axes[0]:
            for h, label in zip(*ax.get_legend_handles_labels(), strict=True):
                handles.setdefault(label, h)
        fig.legend(
            handles.values(), handles.keys(), loc="lower center", ncol=len(handles), fontsize=8
        )
        fig.suptitle("API throughput, wrk -t2 -c16, registry changing once a second")
        fig.tight_layout(rect=(0, 0.06, 1, 1))
        written.append(_save(fig, "api.png"))
        plt.close(fig)

    # propagation
    if any(_get(d, "propagation", "samples") for d in brokers.values()):
        fig, ax = plt.subplots(figsize=(6, 4))
        for b, d in brokers.items():
            samples = sorted(_get(d, "propagation", "samples") or [])
            if samples:
                ys = [(i + 1) / len(samples) for i in range(len(samples))]
                ax.step(
                    [s * 1e3 for s in samples], ys, where="post", color=COLORS[b], label=NAMES[b]
                )
        ax.axvline(PROPAGATION_P99_S * 1e3, color="green", ls=":", label="target p99 50 ms")
        ax.set(
            xlabel="ms from POST on A to visible on B",
            ylabel="fraction of trials",
            title="Label propagation",
        )
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=8)
        fig.tight_layout()
        written.append(_save(fig, "propagation.png"))
        plt.close(fig)

    # memory
    if any(_get(d, "memory", "by_n") for d in brokers.values()):
        fig, ax = plt.subplots(figsize=(6, 4))
        for b, d in brokers.items():
            base = _get(d, "memory", "rss_base") or 0
            entries = _get(d, "memory", "by_n") or []
            ns = [0] + [e["n"] for e in entries]
            ax.plot(
                ns,
                [base / 2**20] + [e["rss"] / 2**20 for e in entries],
                "o-",
                color=COLORS[b],
                label=NAMES[b],
            )
        top = max(
            (e["n"] for d in brokers.values() for e in _get(d, "memory", "by_n") or []), default=0
        )
        base = min((_get(d, "memory", "rss_base") or 0 for d in brokers.values()), default=0)
        ax.plot(
            [0, top],
            [base / 2**20, (base + RSS_PER_NODE * top) / 2**20],
            "g:",
            label="1 KiB per node",
        )
        ax.set(xlabel="nodes", ylabel="lobbyd RSS, MiB", title="Memory")
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=8)
        fig.tight_layout()
        written.append(_save(fig, "memory.png"))
        plt.close(fig)
    return written


def _save(fig: Any, name: str) -> str:
    path = BENCH / name
    fig.savefig(path, dpi=90)
    return str(path)
