#!/usr/bin/env python3
"""Relay: how many packets a second one lobbyd with RELAY=true forwards between brokers.

    .venv/bin/python bench/relay.py [--rates 5000,10000,20000,40000] [--seconds 3]

One lobbyd with DRIVER=NATS,Redis and RELAY=true, pinned to the daemon core like every
benchmarked lobbyd, on a real nats-server and redis-server. For each direction the
simulator announces N = 10,000 Go nodes on the source broker, then cycles through them
at a fixed rate for a few seconds. A rate is *kept up with* when every packet sent was
forwarded (`relay.relayed` in /v1/stats grew by exactly the packets sent) and none was
lost, within a second of the simulator's last packet. The relay also applies every
packet to its own registry, so its CPU per packet is ingest plus forwarding.
Prints a markdown table; nothing is asserted.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from tempfile import mkdtemp
from typing import Any

from procs import Broker, Lobbyd, Sim, make_broker, scope

N = 10_000


def relay_counts(daemon: Lobbyd, direction: str) -> tuple[int, int]:
    relay = daemon.stats()["relay"]
    return int(relay["relayed"].get(direction, 0)), int(relay["lost"].get(direction, 0))


def settle(daemon: Lobbyd, direction: str, want: int, deadline: float) -> tuple[int, int]:
    """(relayed, lost) once they add up to `want`, or at `deadline`."""
    while True:
        relayed, lost = relay_counts(daemon, direction)
        if relayed + lost >= want or time.monotonic() > deadline:
            return relayed, lost
        time.sleep(0.05)


def step(daemon: Lobbyd, sim: Sim, direction: str, rate: int, seconds: float) -> dict[str, Any]:
    r0, l0 = relay_counts(daemon, direction)
    c0 = daemon.cpu()
    done = sim.call("run", n=N, rate=rate, seconds=seconds)
    sent = int(done["sent"])
    # kept up: everything forwarded within a second of the last packet
    r1, l1 = settle(daemon, direction, r0 + l0 + sent, float(done["t_acked"]) + 1.0)
    cpu = daemon.cpu() - c0
    relayed, lost = r1 - r0, l1 - l0
    # then let the backlog drain (or be lost) before the next step
    settle(daemon, direction, r0 + l0 + sent, time.monotonic() + 30)
    return {
        "direction": direction,
        "rate": rate,
        "sent": sent,
        "relayed": relayed,
        "lost": lost,
        "kept_up": relayed == sent and lost == 0 and float(done["achieved"]) >= 0.97 * rate,
        "cpu_us_per_packet": 1e6 * cpu / max(relayed, 1),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rates", default="5000,10000,20000,40000")
    parser.add_argument("--seconds", type=float, default=3.0)
    args = parser.parse_args()
    rates = [int(r) for r in args.rates.split(",")]
    workdir = Path(mkdtemp(prefix="lobby-bench-relay-"))
    rows = []
    with scope() as sc:
        nats = sc.add(make_broker("nats", workdir))
        redis = sc.add(make_broker("redis", workdir))
        env = {**nats.lobbyd_env(), **redis.lobbyd_env(), "DRIVER": "NATS,Redis"}
        daemon = sc.add(Lobbyd(workdir, nats, "bench-relay", TTL=86_400, RELAY="true", **env))
        daemon.start()
        source: Broker
        for source, name in ((nats, "NATS->Redis"), (redis, "Redis->NATS")):
            sim = sc.add(Sim(source, workdir))
            r0, l0 = relay_counts(daemon, name)
            sim.call("fill", start=0, stop=N, rate=0)
            settle(daemon, name, r0 + l0 + N, time.monotonic() + 30)
            for rate in rates:
                row = step(daemon, sim, name, rate, args.seconds)
                print(f"  {name} {rate:>7,}/s: {row}", file=sys.stderr, flush=True)
                rows.append(row)
            sim.close()
    print("| direction | rate | relayed within 1 s | lost | kept up | CPU µs per relayed packet |")
    print("| --- | ---: | ---: | ---: | --- | ---: |")
    for r in rows:
        print(
            f"| {r['direction']} | {r['rate']:,}/s | {r['relayed']:,} of {r['sent']:,} "
            f"| {r['lost']:,} | {'yes' if r['kept_up'] else 'no'} "
            f"| {r['cpu_us_per_packet']:.1f} |"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
