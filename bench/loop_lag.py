#!/usr/bin/env python3
"""How long lobbyd's event loop stands still while it serves heavy answers (issue 27).

    .venv/bin/python bench/loop_lag.py [--nodes 50000] [--repeat 5]

A real nats-server and a real lobbyd (with a template, so renders happen) on the
simulator's nodes, kept alive at KEEP_ALIVE 5 with one node's labels changing every
second (so answers are rebuilt, not served from the cache). For each heavy operation,
--repeat times: read lobbyd's own loop-lag probe (`lobby_event_loop_lag_seconds`, the
heartbeat every 0.25 s) before and after, and report the worst lateness seen, from the
histogram's bucket counts that moved (a bucket bound: the lateness is at most that), and
the worst of the whole run from `/v1/stats` (`stalls.lag_max_seconds`).

The target (issue 27): no stall over 50 ms at 50,000 nodes.

A sampling probe: the heartbeat is due every 0.25 s, so a stall shows only when it
covers a due beat, and then only the part after it; a stall of D ms is caught about
D/250 of the time. Repeat runs (--repeat) to see the worst; a finer probe (a beat every
few ms, for the bench only) would see every one.
"""

from __future__ import annotations

import argparse
import re
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from procs import ROOT, Lobbyd, NatsServer, Sim, scope, wait_for

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


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--nodes", type=int, default=50_000)
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()
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
            )
        )
        node.start()
        sim = sc.add(Sim(broker, work))
        sim.call("fill", start=0, stop=args.nodes, rate=0)
        wait_for(lambda: node.has_nodes(args.nodes), 120, f"{args.nodes} nodes listed")
        sim.send("keepalive", n=args.nodes, every=5, flip=True, answer_sync=False)
        time.sleep(6)  # one keep-alive round, renders settled
        operations: dict[str, Callable[[], object]] = {
            "full list (GET /v1/discoveries)": lambda: node.http.get("/v1/discoveries"),
            "/v1/prometheus/node rebuild": lambda: node.http.get("/v1/prometheus/node"),
            "/metrics scrape": lambda: node.http.get("/metrics"),
            "template render (a change, then quiet)": lambda: time.sleep(1.2),
        }
        print(f"\nlobbyd at {args.nodes:,} nodes, KEEP_ALIVE 5, one label change a second\n")
        print("| while serving | worst beat, each run (bucket bound, s) | worst |")
        print("| --- | --- | ---: |")
        for name, operation in operations.items():
            seen = []
            for _ in range(args.repeat):
                time.sleep(1.1)  # a label change in between: the answers are rebuilt
                before = buckets(node)
                operation()
                time.sleep(0.3)  # the beat after the operation has been counted
                seen.append(worst_bound(before, buckets(node)))
            shown = ", ".join(f"{s:g}" for s in seen)
            print(f"| {name} | {shown} | {max(seen):g} |")
        stalls = node.stats()["stalls"]
        print(
            f"\nworst beat of the whole run: {stalls['lag_max_seconds']} s; "
            f"beats over 50 ms: {stalls['beats_late_over_50ms']}"
        )
        sim.send("stop")
    return 0


if __name__ == "__main__":
    sys.exit(main())
