#!/usr/bin/env python3
"""Before/after in CPU time per request: two lobbyd source trees, measured in turns.

    .venv/bin/python bench/ab_cpu.py OLD_SRC [--ns 10] [--endpoints all,labels,resolve,prometheus]
                                     [--rounds 3] [--seconds 3]

As bench/ab.py (both daemons on the daemon core, one broker, the same simulated
nodes; wrk hits them in turns), but besides req/s it reports lobbyd's own CPU time
(user + system, psutil) per request answered: on a shared machine whose other load
moves req/s, the CPU a request costs the daemon is the steadier figure. Also the RSS
of each daemon once it is up, before any request (the idle RSS), and after.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import httpbench
import procs
from ab import sizes


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("old_src", type=Path)
    parser.add_argument("--ns", default="10")
    parser.add_argument("--endpoints", default="all,labels,resolve,prometheus")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--seconds", type=int, default=3)
    args = parser.parse_args()
    procs.pin_self()
    workdir = Path(tempfile.mkdtemp(prefix="lobby-abcpu-"))
    sides = {"old": str(args.old_src.resolve()), "new": str(procs.ROOT / "src")}
    with procs.scope() as sc:
        broker = sc.add(procs.make_broker("nats", workdir))
        daemons = {
            side: sc.add(
                procs.Lobbyd(
                    workdir,
                    broker,
                    f"abcpu-{side}",
                    KEEP_ALIVE=httpbench.KEEP_ALIVE,
                    PYTHONPATH=src,
                )
            )
            for side, src in sides.items()
        }
        for daemon in daemons.values():
            daemon.start()
        time.sleep(2)
        for side, daemon in daemons.items():
            print(f"idle RSS {side}: {daemon.rss() / 2**20:.1f} MiB", flush=True)
        sim = sc.add(procs.Sim(broker, workdir))
        ns = [int(n) for n in args.ns.split(",")]
        sim.call("prepare", n=max(ns))
        for n in sizes(sim, daemons, ns):
            for name in args.endpoints.split(","):
                path, headers = httpbench.ENDPOINTS[name], httpbench.HEADERS.get(name)
                rps: dict[str, list[float]] = {"old": [], "new": []}
                us: dict[str, list[float]] = {"old": [], "new": []}
                for _ in range(args.rounds):
                    for side, daemon in daemons.items():
                        url = f"http://127.0.0.1:{daemon.port}{path}"
                        cpu0 = daemon.cpu()
                        result = httpbench.wrk(url, args.seconds, headers=headers)
                        cpu = daemon.cpu() - cpu0
                        rps[side].append(result["rps"])
                        us[side].append(cpu / max(result.get("requests", 1), 1) * 1e6)
                        time.sleep(0.2)
                r = {side: statistics.median(v) for side, v in rps.items()}
                c = {side: statistics.median(v) for side, v in us.items()}
                print(
                    f"N={n:>6,} {name:<10} old {r['old']:>8,.0f} req/s {c['old']:6.1f} µs CPU/req"
                    f" | new {r['new']:>8,.0f} req/s {c['new']:6.1f} µs CPU/req"
                    f" | req/s x{r['new'] / r['old']:.2f}, CPU/req x{c['new'] / c['old']:.2f}",
                    flush=True,
                )
        sim.call("stop")
        for side, daemon in daemons.items():
            print(f"RSS after {side}: {daemon.rss() / 2**20:.1f} MiB", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
