#!/usr/bin/env python3
"""Before/after on a busy machine: two lobbyd source trees, measured in turns.

    .venv/bin/python bench/ab.py OLD_SRC [--ns 10,1000,10000] [--endpoints all,gzip]
                                 [--rounds 3] [--seconds 3]

OLD_SRC is the `src` directory of another checkout (e.g. `git archive main | tar -x
-C /tmp/old`); NEW is this tree's `src`. Both daemons run at once on the daemon core,
on one broker, among the same simulated nodes (keep-alive every 5 s, one node
changing its labels every second, as in the api section); wrk hits them in turns,
A B A B ..., so a machine whose speed drifts moves both alike. Prints the median of
each side and the ratio NEW/OLD per endpoint.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from collections.abc import Iterator
from functools import partial
from pathlib import Path

import httpbench
import procs


def sizes(sim: procs.Sim, daemons: dict[str, procs.Lobbyd], ns: list[int]) -> Iterator[int]:
    """Each cluster size of `ns`, smallest first, once both daemons list its nodes (and
    each other) and the simulator keeps them alive, one label change a second."""
    have = 0
    for n in sorted(ns):
        sim.call("stop")
        if n > have:
            sim.call("fill", start=have, stop=n, rate=0)
            have = n
        for daemon in daemons.values():
            procs.wait_for(partial(daemon.has_nodes, n + 2), 60, f"{n} nodes", every=0.05)
        sim.call("keepalive", n=n, every=httpbench.KEEP_ALIVE, flip=True)
        yield n


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("old_src", type=Path)
    parser.add_argument("--ns", default="10,1000,10000")
    parser.add_argument("--endpoints", default="all,gzip,resolve")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--seconds", type=int, default=3)
    parser.add_argument("--broker", choices=("nats", "redis"), default="nats")
    args = parser.parse_args()
    ns = [int(n) for n in args.ns.split(",")]
    endpoints = args.endpoints.split(",")
    procs.pin_self()
    workdir = Path(tempfile.mkdtemp(prefix="lobby-ab-"))
    sides = {"old": str(args.old_src.resolve()), "new": str(procs.ROOT / "src")}
    with procs.scope() as sc:
        broker = sc.add(procs.make_broker(args.broker, workdir))
        daemons = {
            side: sc.add(
                procs.Lobbyd(
                    workdir, broker, f"ab-{side}", KEEP_ALIVE=httpbench.KEEP_ALIVE, PYTHONPATH=src
                )
            )
            for side, src in sides.items()
        }
        for daemon in daemons.values():
            daemon.start()
        sim = sc.add(procs.Sim(broker, workdir))
        sim.call("prepare", n=max(ns))
        for n in sizes(sim, daemons, ns):
            for name in endpoints:
                path, headers = httpbench.ENDPOINTS[name], httpbench.HEADERS.get(name)
                runs: dict[str, list[dict[str, float]]] = {"old": [], "new": []}
                for _ in range(args.rounds):
                    for side, daemon in daemons.items():
                        url = f"http://127.0.0.1:{daemon.port}{path}"
                        runs[side].append(httpbench.wrk(url, args.seconds, headers=headers))
                        time.sleep(0.2)
                med = {
                    side: {
                        k: statistics.median(r[k] for r in rs) for k in ("rps", "p50_ms", "p99_ms")
                    }
                    for side, rs in runs.items()
                }
                print(
                    f"N={n:>6,} {name:<10} old {med['old']['rps']:>8,.0f} req/s p99 {med['old']['p99_ms']:6.2f} ms"
                    f" | new {med['new']['rps']:>8,.0f} req/s p99 {med['new']['p99_ms']:6.2f} ms"
                    f" | x{med['new']['rps'] / med['old']['rps']:.2f}",
                    flush=True,
                )
        sim.call("stop")
    return 0


if __name__ == "__main__":
    sys.exit(main())
