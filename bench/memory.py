"""Load and memory: 50,000 nodes from nothing, RSS per node, RSS around the full list.

A fresh lobbyd (long TTL) that has answered a few requests is the baseline ("RSS
with ~0 nodes"). The simulator then announces 50,000 distinct nodes as fast as it
can; the load time runs from its first packet to the first /v1/stats (polled every
25 ms) that shows all of them. RSS per node record is (RSS at N - baseline) / N,
taken a second after the registry is complete, at 50,000 and at 100,000.

Then GET /v1/discoveries (the full list, ~13 MB of JSON at 50k) a few times: the
answer is cached until the registry changes, so one copy of it staying resident
is by design; anything beyond that is the transient build (a list of dicts plus
the serialized bytes) not going back to the allocator.
"""

from __future__ import annotations

import time
from functools import partial
from pathlib import Path
from typing import Any

from procs import Broker, Lobbyd, Sim, scope, wait_for

MEMORY_TTL = 86_400


def _settle(daemon: Lobbyd, seconds: float = 1.0) -> int:
    time.sleep(seconds)
    return daemon.rss()


def measure(
    broker: Broker, workdir: Path, load_n: int, ns: list[int], gets: int, say: Any
) -> dict[str, Any]:
    out: dict[str, Any] = {"load_n": load_n}
    with scope() as sc:
        daemon = sc.add(Lobbyd(workdir, broker, "bench-memory", TTL=MEMORY_TTL, CLEAN_EVERY=3600))
        daemon.start()
        sim = sc.add(Sim(broker, workdir))
        sim.call("prepare", n=max([*ns, load_n]))
        wait_for(lambda: daemon.nodes() == 1, 10, "lobbyd to list itself")
        for _ in range(3):
            daemon.http.get("/v1/discoveries")
            daemon.stats()
        base = _settle(daemon)
        out["rss_base"] = base

        # load from nothing
        sim.send("fill", start=0, stop=load_n, rate=0)
        t0 = sim.started()
        t_done = wait_for(
            lambda: daemon.nodes() >= load_n + 1 and time.monotonic(),
            60,
            f"{load_n} nodes",
            every=0.025,
        )
        fill = sim.done()
        out["load_seconds"] = round(t_done - t0, 3)
        out["load_sim_seconds"] = round(float(fill["t_acked"]) - t0, 3)
        say(
            f"    loaded {load_n:,} nodes from nothing in {t_done - t0:.3f} s"
            f" (the simulator needed {fill['t_acked'] - t0:.3f} s to send them)"
        )

        # RSS per node record
        have = load_n
        out["by_n"] = []
        for n in sorted(set(ns)):
            if n > have:
                sim.call("fill", start=have, stop=n, rate=0)
                wait_for(partial(daemon.has_nodes, n + 1), 60, f"{n} nodes", every=0.05)
                have = n
            if n < have:
                continue
            rss = _settle(daemon)
            per = (rss - base) / n
            out["by_n"].append({"n": n, "rss": rss, "bytes_per_node": round(per, 1)})
            say(f"    N={n:>7,}: RSS {rss / 2**20:6.1f} MiB, {per:6.0f} bytes per node record")
            if n == load_n:
                # the full list, a few times
                before = rss
                sizes, after = [], []
                for _ in range(gets):
                    t = time.monotonic()
                    sizes.append(len(daemon.http.get("/v1/discoveries")))
                    after.append((daemon.rss(), round(time.monotonic() - t, 3)))
                settled = _settle(daemon)
                out["full_list"] = {
                    "n": n,
                    "bytes": sizes[-1],
                    "rss_before": before,
                    "rss_after_each": [r for r, _ in after],
                    "seconds_each": [s for _, s in after],
                    "rss_after_settle": settled,
                    "jump": settled - before,
                    "peak_jump": max(r for r, _ in after) - before,
                }
                say(
                    f"    GET /v1/discoveries x{gets} at N={n:,} ({sizes[-1] / 2**20:.1f} MiB):"
                    f" RSS {before / 2**20:.1f} -> {settled / 2**20:.1f} MiB"
                    f" (peak +{(max(r for r, _ in after) - before) / 2**20:.1f} MiB)"
                )
        stats = daemon.stats()
        out["dropped"] = stats["packets"]["dropped_slow_consumer"]
    return out
