#!/usr/bin/env python3
"""How long lobbyd's event loop stands still while it serves heavy answers (issue 27).

    .venv/bin/python bench/loop_lag.py [--nodes 50000] [--repeat 5] [--src SRC ...]

A real nats-server and a real lobbyd (with a template, so renders happen) on the
simulator's nodes, kept alive at KEEP_ALIVE 5 with one node's labels changing every
second (so answers are rebuilt, not served from the cache). For each heavy operation,
--repeat times: read lobbyd's own loop-lag probe (`lobby_event_loop_lag_seconds`, the
heartbeat every 0.25 s) before and after, and report the worst lateness seen, from the
histogram's bucket counts that moved (a bucket bound: the lateness is at most that), and
the worst of the whole run from `/v1/stats` (`stalls.lag_max_seconds`).

The target (issue 27): no stall over 50 ms at 50,000 nodes.

lobbyd's probe samples: the heartbeat is due every 0.25 s, so a stall shows only when
it covers a due beat, and then only the part after it; a stall of D ms is caught about
D/250 of the time. So a second probe watches from outside, in a process of its own on
the other core: `GET /v1/health` on a keep-alive connection every 2 ms, each answer's
latency recorded; an operation's figure is the slowest probe answer that began while it
ran (from its start to 0.3 s after its end). It sees every stall over a few ms, and
also anything that delays the probe process itself (the other core is shared with the
simulator): the "idle" row, the same window with no operation, says how much.

`--src` runs the whole measurement once per source tree (e.g. a checkout of main's
`src` for before, this tree's for after), one after the other.
"""

from __future__ import annotations

import argparse
import http.client
import os
import re
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from ingest import core_busy
from procs import OTHER_CPUS, ROOT, VENV_BIN, Lobbyd, NatsServer, Sim, pin_self, scope, wait_for

BUCKET = re.compile(r'^lobby_event_loop_lag_seconds_bucket\{le="([^"]+)"\} (\S+)$', re.M)


def buckets(node: Lobbyd) -> list[tuple[float, float]]:
    text = node.http.get("/metrics").decode()
    return [(float(le), float(n)) for le, n in BUCKET.findall(text)]


def worst_bound(before: list[tuple[float, float]], after: list[tuple[float, float]]) -> float:
    """The smallest bucket bound that holds every beat counted between the two reads."""
    moved = [(le, a - b) for (le, b), (_, a) in zip(before, after, strict=True)]
    total = moved[-1][1]
    for le, count in moved:
        if count >= total:
            return le
    return float("inf")


def probe(port: int, out: Path) -> None:
    """The outside probe (its own process): `start latency` lines, until killed."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    with out.open("w") as sink:
        while True:
            start = time.monotonic()
            conn.request("GET", "/v1/health")
            conn.getresponse().read()
            sink.write(f"{start:.6f} {time.monotonic() - start:.6f}\n")
            sink.flush()
            time.sleep(0.002)


def slowest(samples: list[tuple[float, float]], start: float, end: float) -> float:
    inside = [lat for at, lat in samples if start <= at <= end]
    return max(inside, default=float("nan"))


def operate(
    node: Lobbyd, operations: dict[str, Callable[[], object]], repeat: int
) -> tuple[dict[str, list[tuple[float, float]]], dict[str, list[float]]]:
    """Each operation `repeat` times: its time window, and lobbyd's own worst beat; the
    first is the first /v1/prometheus/node of the daemon (every member's part made)."""
    time.sleep(0.5)  # the probe is under way
    windows: dict[str, list[tuple[float, float]]] = {}
    internal: dict[str, list[float]] = {}
    before = buckets(node)
    start = time.monotonic()
    node.http.get("/v1/prometheus/node")
    end = time.monotonic()
    time.sleep(0.3)
    name = "first /v1/prometheus/node build (once)"
    internal[name] = [worst_bound(before, buckets(node))]
    windows[name] = [(start, end + 0.3)]
    for name, operation in operations.items():
        for _ in range(repeat):
            time.sleep(1.1)  # a label change in between: the answers are rebuilt
            before = buckets(node)
            start = time.monotonic()
            operation()
            end = time.monotonic()
            time.sleep(0.3)  # the beat after the operation has been counted
            internal.setdefault(name, []).append(worst_bound(before, buckets(node)))
            windows.setdefault(name, []).append((start, end + 0.3))
    time.sleep(0.3)
    return windows, internal


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--nodes", type=int, default=50_000)
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--src", type=Path, action="append", help="a source tree (repeatable)")
    parser.add_argument("--spy", type=Path, help="also a py-spy speedscope profile (with idle)")
    parser.add_argument("--probe", nargs=2, help=argparse.SUPPRESS)  # PORT OUT: be the probe
    args = parser.parse_args()
    if args.probe:
        probe(int(args.probe[0]), Path(args.probe[1]))
        return 0
    pin_self()
    for src in args.src or [ROOT / "src"]:
        print(f"\n## {src}", flush=True)
        measure(src.resolve(), args.nodes, args.repeat, args.spy)
    return 0


def measure(src: Path, nodes: int, repeat: int, spy: Path | None = None) -> None:
    work = Path(tempfile.mkdtemp(prefix="lobby-lag-"))
    template_out = work / "hosts"
    with scope() as sc:
        broker = sc.add(NatsServer(work))
        broker.start()
        broker.wait_up()
        node = sc.add(
            Lobbyd(
                work,
                broker,
                "bench-lag",
                KEEP_ALIVE=5,
                TTL=60,
                TEMPLATES=f"{ROOT / 'examples' / 'hosts.j2'}:{template_out}",
                TEMPLATE_WAIT="100ms:1s",
                PYTHONPATH=str(src),
            )
        )
        node.start()
        sim = sc.add(Sim(broker, work))
        sim.call("fill", start=0, stop=nodes, rate=0)
        wait_for(lambda: node.has_nodes(nodes), 120, f"{nodes} nodes listed")
        sim.send("keepalive", n=nodes, every=5, flip=True, answer_sync=False)
        time.sleep(6)  # one keep-alive round, renders settled
        operations: dict[str, Callable[[], object]] = {
            "idle (no operation: the probe's own noise)": lambda: time.sleep(0.5),
            "full list (GET /v1/discoveries)": lambda: node.http.get("/v1/discoveries"),
            "full list, gzip (Accept-Encoding: gzip)": lambda: node.http.get(
                "/v1/discoveries", {"Accept-Encoding": "gzip"}
            ),
            "/v1/prometheus/node rebuild": lambda: node.http.get("/v1/prometheus/node"),
            "/metrics scrape": lambda: node.http.get("/metrics"),
            "template render (a change, then quiet)": lambda: time.sleep(1.2),
        }
        samples_path = work / "probe.txt"
        prober = subprocess.Popen(
            [sys.executable, __file__, "--probe", str(node.port), str(samples_path)],
            preexec_fn=lambda: os.sched_setaffinity(0, OTHER_CPUS),
        )
        spying = None
        if spy is not None:
            argv = [str(VENV_BIN / "py-spy"), "record", "-r", "500", "--idle", "-f", "speedscope"]
            argv += ["-o", str(spy), "-p", str(node.pid)]
            spying = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        busy0, own0, wall0 = core_busy(), node.cpu(), time.monotonic()
        try:
            windows, internal = operate(node, operations, repeat)
            others = (core_busy() - busy0 - (node.cpu() - own0)) / (time.monotonic() - wall0)
        finally:
            prober.kill()
            prober.wait()
            if spying is not None:
                spying.send_signal(signal.SIGINT)  # py-spy writes its file and exits
                spying.wait()
        samples = [
            (float(a), float(b))
            for a, b in (line.split() for line in samples_path.read_text().splitlines() if line)
        ]
        lat = [b for _, b in samples]
        print(f"\nlobbyd ({src}) at {nodes:,} nodes, KEEP_ALIVE 5, one label change a second")
        print(
            f"probe: {len(samples):,} answers, median {statistics.median(lat) * 1000:.2f} ms; "
            f"other processes used {others:.0%} of lobbyd's core meanwhile\n"
        )
        print(
            "| while serving | slowest probe answer, each run (ms) | p99 (ms) | worst (ms) "
            "| lobbyd's own probe, worst beat (s, bucket bound) |"
        )
        print("| --- | --- | ---: | ---: | ---: |")
        for name, spans in windows.items():
            seen = [slowest(samples, a, b) * 1000 for a, b in spans]
            inside = sorted(lat for at, lat in samples if any(a <= at <= b for a, b in spans))
            p99 = inside[int(len(inside) * 0.99)] * 1000 if inside else float("nan")
            own = max(internal[name]) if name in internal else float("nan")
            shown = ", ".join(f"{s:.1f}" for s in seen)
            print(f"| {name} | {shown} | {p99:.1f} | {max(seen):.1f} | {own:g} |")
        slow = [(at, lat) for at, lat in samples if lat > 0.03]
        print("\nprobe answers over 30 ms (monotonic start, ms):", end=" ")
        print(", ".join(f"{at:.3f} {lat * 1000:.0f}" for at, lat in slow) or "none")
        stalls = node.stats()["stalls"]
        print(
            f"\nworst beat of the whole run: {stalls['lag_max_seconds']} s; "
            f"beats over 50 ms: {stalls['beats_late_over_50ms']}",
            flush=True,
        )
        sim.send("stop")


if __name__ == "__main__":
    sys.exit(main())
