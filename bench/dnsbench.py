"""DNS: cached A queries per second on lobbyd's one core, from dnsperf (SPEC §17).

One lobbyd (pinned to the daemon core, DNS_PORT set) holds N simulated nodes, which
announce once and then stay quiet (TTL one day), so the registry does not move and
every answer comes from the DNS answer cache after its first query. dnsperf (Debian's,
on the other core) sends `<node>.node.lobby A` for 200 different nodes in a loop, each
answer one A record, for a warm-up second and then for the measured run, over UDP and
then over TCP. lobbyd's CPU seconds over the run give queries per CPU second: the rate
one fully busy core would answer, which other processes on the machine do not disturb.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

from procs import Broker, Lobbyd, Sim, free_port, scope, wait_for

DNSPERF = shutil.which("dnsperf") or "/usr/bin/dnsperf"
NAMES = 200
CLIENTS = {"udp": 4, "tcp": 16}
OUTSTANDING = 200


def parse_dnsperf(output: str) -> dict[str, Any]:
    qps = re.search(r"Queries per second:\s+([\d.]+)", output)
    if qps is None:
        raise ValueError(f"no 'Queries per second' in dnsperf output:\n{output}")
    out: dict[str, Any] = {"qps": round(float(qps.group(1)), 1)}
    for key, pattern in (
        ("sent", r"Queries sent:\s+(\d+)"),
        ("completed", r"Queries completed:\s+(\d+)"),
        ("lost", r"Queries lost:\s+(\d+)"),
    ):
        m = re.search(pattern, output)
        out[key] = int(m.group(1)) if m else None
    latency = re.search(r"Average Latency \(s\):\s+([\d.]+) \(min ([\d.]+), max ([\d.]+)\)", output)
    if latency:
        out["latency_avg_ms"] = round(float(latency.group(1)) * 1e3, 3)
        out["latency_max_ms"] = round(float(latency.group(3)) * 1e3, 3)
    codes = re.search(r"Response codes:\s+(.*)", output)
    out["rcodes"] = codes.group(1).strip() if codes else ""
    return out


def dnsperf(port: int, datafile: Path, seconds: float, mode: str) -> dict[str, Any]:
    argv = [
        DNSPERF,
        *("-s", "127.0.0.1", "-p", str(port), "-m", mode, "-d", str(datafile)),
        *("-l", f"{seconds:g}", "-c", str(CLIENTS[mode]), "-q", str(OUTSTANDING), "-T", "1"),
    ]
    run = subprocess.run(argv, capture_output=True, text=True, timeout=seconds + 60)
    if run.returncode != 0:
        raise RuntimeError(f"dnsperf failed: {run.stderr or run.stdout}")
    return parse_dnsperf(run.stdout)


def measure(broker: Broker, workdir: Path, n: int, seconds: float, say: Any) -> dict[str, Any]:
    if not Path(DNSPERF).exists():
        raise RuntimeError(
            f"{DNSPERF} is missing (Debian package dnsperf; ./dev bench installs it)"
        )
    datafile = workdir / "dns-queries.txt"
    datafile.write_text(
        "".join(f"node-{i:05d}.example.node.lobby A\n" for i in range(0, n, max(1, n // NAMES)))
    )
    out: dict[str, Any] = {"n": n, "seconds": seconds, "names": NAMES, "by_transport": {}}
    with scope() as sc:
        port = free_port()
        daemon = sc.add(Lobbyd(workdir, broker, "bench-dns", TTL=86_400, DNS_PORT=port))
        daemon.start()
        sim = sc.add(Sim(broker, workdir))
        sim.call("prepare", n=n)
        sim.call("fill", start=0, stop=n, rate=0)
        wait_for(lambda: daemon.nodes() == n + 1, 60, f"{n} nodes", every=0.05)
        for mode in ("udp", "tcp"):
            dnsperf(port, datafile, 1, mode)  # warm-up: every answer cached
            before = daemon.stats()["dns"]["cache"]
            cpu0 = daemon.cpu()
            result = dnsperf(port, datafile, seconds, mode)
            cpu = daemon.cpu() - cpu0
            after = daemon.stats()["dns"]["cache"]
            result["lobbyd_cpu_util"] = round(cpu / seconds, 3)
            result["per_cpu_second"] = round(result["completed"] / cpu) if cpu else None
            result["cache_misses"] = after["misses"] - before["misses"]
            out["by_transport"][mode] = result
            say(
                f"    {mode.upper()}: {result['qps']:>9,.0f} queries/s, lobbyd CPU"
                f" {result['lobbyd_cpu_util']:.0%}, {result['per_cpu_second'] or 0:,} per CPU second,"
                f" avg latency {result.get('latency_avg_ms', 0):.2f} ms, lost {result['lost']},"
                f" cache misses {result['cache_misses']}"
            )
        stats = daemon.stats()["dns"]
        out["errors"] = stats["errors"]
        out["rejected"] = stats["rejected"]
    return out
