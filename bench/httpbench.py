"""API: req/s and latency of the read endpoints, from wrk, on a registry that moves.

One lobbyd holds N simulated nodes that announce every KEEP_ALIVE (5 s, the real
default, so at 10,000 nodes it also ingests 2,000 packets/s meanwhile) and one of
them changes its labels once a second, so every cached answer is rebuilt once a
second, as it would be in a live cluster. wrk (`-t2 -c16 -d5s --latency`, on the
other core) hammers one endpoint at a time.
"""

from __future__ import annotations

import re
import subprocess
import time
from functools import partial
from pathlib import Path
from typing import Any

from procs import WRK, Broker, Lobbyd, Sim, scope, wait_for

KEEP_ALIVE = 5
ENDPOINTS: dict[str, str] = {
    "all": "/v1/discoveries",
    "gzip": "/v1/discoveries",  # with Accept-Encoding: gzip, as Prometheus's HTTP SD asks
    "labels": "/v1/discoveries?labels=service:web",
    "prefixes": "/v1/discoveries?prefixes=location:",
    "resolve": "/v1/resolve?label=service:db",
    "prometheus": "/v1/prometheus/node",
}

HEADERS: dict[str, dict[str, str]] = {"gzip": {"Accept-Encoding": "gzip"}}

_UNITS = {"us": 1e-3, "ms": 1.0, "s": 1e3, "m": 60e3}


def _ms(text: str) -> float:
    m = re.fullmatch(r"([\d.]+)(us|ms|s|m)", text)
    if not m:
        raise ValueError(f"wrk latency {text!r}")
    return float(m.group(1)) * _UNITS[m.group(2)]


def parse_wrk(output: str) -> dict[str, Any]:
    rps = re.search(r"Requests/sec:\s+([\d.]+)", output)
    if rps is None:
        raise ValueError(f"no Requests/sec in wrk output:\n{output}")
    result: dict[str, Any] = {"rps": round(float(rps.group(1)), 1)}
    for pct in ("50", "75", "90", "99"):
        m = re.search(rf"^\s+{pct}(?:\.000)?%\s+(\S+)", output, re.M)
        if m:
            result[f"p{pct}_ms"] = round(_ms(m.group(1)), 3)
    total = re.search(r"(\d+) requests in ([\d.]+)(\w+),\s+([\d.]+)(\w+) read", output)
    if total:
        result["requests"] = int(total.group(1))
    non2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", output)
    result["non_2xx"] = int(non2xx.group(1)) if non2xx else 0
    errors = re.search(r"Socket errors: (.*)", output)
    result["socket_errors"] = errors.group(1).strip() if errors else ""
    return result


def wrk(
    url: str,
    seconds: int,
    threads: int = 2,
    connections: int = 16,
    headers: dict[str, str] | None = None,
) -> dict[str, Any]:
    argv = [WRK, f"-t{threads}", f"-c{connections}", f"-d{seconds}s", "--latency", url]
    for name, value in (headers or {}).items():
        argv[1:1] = ["-H", f"{name}: {value}"]
    out = subprocess.run(argv, capture_output=True, text=True, timeout=seconds + 30)
    if out.returncode != 0:
        raise RuntimeError(f"wrk failed: {out.stderr or out.stdout}")
    return parse_wrk(out.stdout)


def measure(
    broker: Broker,
    workdir: Path,
    ns: list[int],
    endpoints: list[str],
    seconds: int,
    say: Any,
) -> dict[str, Any]:
    out: dict[str, Any] = {"keep_alive": KEEP_ALIVE, "wrk": f"-t2 -c16 -d{seconds}s", "by_n": []}
    with scope() as sc:
        daemon = sc.add(Lobbyd(workdir, broker, "bench-api", KEEP_ALIVE=KEEP_ALIVE))
        daemon.start()
        sim = sc.add(Sim(broker, workdir))
        sim.call("prepare", n=max(ns))
        have = 0
        for n in sorted(ns):
            sim.call("stop")
            if n > have:
                sim.call("fill", start=have, stop=n, rate=0)
                have = n
            wait_for(partial(daemon.has_nodes, n + 1), 60, f"{n} nodes", every=0.05)
            sim.call("keepalive", n=n, every=KEEP_ALIVE, flip=True)
            index0, t0 = daemon.stats()["index"], time.monotonic()
            entry: dict[str, Any] = {"n": n, "endpoints": {}}
            for name in endpoints:
                path, headers = ENDPOINTS[name], HEADERS.get(name)
                body = daemon.http.get(path, headers)  # also checks it answers 200
                result = wrk(f"http://127.0.0.1:{daemon.port}{path}", seconds, headers=headers)
                result["bytes"] = len(body)
                result["path"] = path
                if headers:
                    result["headers"] = headers
                entry["endpoints"][name] = result
                say(
                    f"    N={n:>6,} {path:<38} {result['rps']:>8,.0f} req/s"
                    f"  p50 {result.get('p50_ms', 0):7.2f} ms  p99 {result.get('p99_ms', 0):7.2f} ms"
                    f"  {len(body) / 1024:8.1f} KiB"
                    + (f"  non-2xx {result['non_2xx']}" if result["non_2xx"] else "")
                )
            stats = daemon.stats()
            entry["nodes_after"] = stats["nodes"]
            entry["changes_per_s"] = round((stats["index"] - index0) / (time.monotonic() - t0), 2)
            out["by_n"].append(entry)
        sim.call("stop")
    return out
