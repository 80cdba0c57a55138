#!/usr/bin/env python3
"""Lobby benchmarks: a real lobbyd on a real broker, measured (see bench/README.md).

    ./dev bench                          the whole set, NATS and Redis (< 10 min)
    ./dev bench --quick                  a ~1-minute subset (NATS)
    ./dev bench --broker redis --only ingest,api
    ./dev bench --only dns --broker nats   cached DNS queries per second (dnsperf)
    ./dev bench --profile                also record a py-spy flame graph of lobbyd under ingest load
    ./dev bench --report                 redraw plots and README table from results/latest.json

Progress goes to stderr, the markdown table to stdout. A full run writes
bench/results/latest.json (merged with earlier results for what it did not run),
the plots bench/*.png and the table in bench/README.md; --quick writes only
bench/results/quick.json.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import shutil
import subprocess
import sys
import tempfile
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

import browser
import checks
import cluster
import dnsbench
import fanout
import httpbench
import ingest
import memory
import procs
import report
import ui

RESULTS = procs.BENCH / "results"
MEASUREMENTS = (
    "ingest",
    "signing",
    "memory",
    "api",
    "propagation",
    "join",
    "failure",
    "dns",
    "ui",
    "fanout",
    "checks",
)
ONCE = {"checks"}  # measurements the broker does not change: run with the first broker only


def config(quick: bool) -> dict[str, Any]:
    if quick:
        return {
            "ingest_ns": [10_000],
            "ingest_seconds": 2.0,
            "ingest_steps": 3,
            "signing_ns": [10_000],
            "load_n": 50_000,
            "memory_ns": [50_000],
            "gets": 3,
            "api_ns": [10, 1_000, 10_000],
            "api_endpoints": ["all", "gzip", "resolve"],
            "wrk_seconds": 3,
            "prop_trials": 50,
            "prop_background": 100,
            "join_n": 1_000,
            "join_keep_alive": 2,
            "join_trials": 1,
            "fail_ttl": 3,
            "fail_keep_alive": 1,
            "fanout_ns": [250, 500, 1000],
            "fail_trials": 1,
            "dns_n": 1_000,
            "dns_seconds": 3,
            "ui_n": 10_000,
            "checks_n": 200,
            "checks_seconds": 5.0,
            "checks_gets": 100,
        }
    return {
        "ingest_ns": [1_000, 10_000, 50_000, 100_000],
        "ingest_seconds": 3.0,
        "ingest_steps": 5,
        "signing_ns": [10_000],
        "load_n": 50_000,
        "memory_ns": [50_000, 100_000],
        "gets": 5,
        "api_ns": [10, 1_000, 10_000],
        "api_endpoints": list(httpbench.ENDPOINTS),
        "wrk_seconds": 5,
        "prop_trials": 200,
        "prop_background": 1_000,
        "join_n": 1_000,
        "join_keep_alive": 5,
        "join_trials": 2,
        "fail_ttl": 5,
        "fail_keep_alive": 1,
        "fail_trials": 2,
        "fanout_ns": [250, 500, 750, 1000, 1250, 1500, 2000],
        "dns_n": 1_000,
        "dns_seconds": 5,
        "ui_n": 10_000,
        "checks_n": 200,
        "checks_seconds": 10.0,
        "checks_gets": 300,
    }


def say(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


def redis_driver_works(workdir: Path) -> str:
    """Empty when a lobbyd with DRIVER=Redis comes up and hears itself, else why not."""
    if not (procs.ROOT / "src/lobby/drivers/redis.py").exists():
        return "src/lobby/drivers/redis.py does not exist yet"
    with procs.scope() as sc:
        broker = sc.add(procs.make_broker("redis", workdir))
        daemon = sc.add(procs.Lobbyd(workdir, broker, "bench-redis-check"))
        try:
            daemon.start()
            procs.wait_for(lambda: daemon.nodes() == 1, 10, "lobbyd to hear itself over Redis")
        except (RuntimeError, TimeoutError) as exc:
            return f"lobbyd with DRIVER=Redis does not work: {str(exc).splitlines()[0]}"
    return ""


def profile(broker: procs.Broker, workdir: Path, seconds: float) -> dict[str, Any]:
    """py-spy flame graph of lobbyd ingesting 10,000 nodes at a rate it keeps up with."""
    py_spy = shutil.which("py-spy") or str(procs.VENV_BIN / "py-spy")
    RESULTS.mkdir(exist_ok=True)
    out = RESULTS / f"profile-ingest-{broker.kind}.svg"
    with procs.scope() as sc:
        daemon = sc.add(procs.Lobbyd(workdir, broker, "bench-profile", TTL=86_400))
        daemon.start()
        sim = sc.add(procs.Sim(broker, workdir))
        ingest.fill(daemon, sim, 0, 10_000)
        rec = subprocess.Popen(
            [
                py_spy,
                "record",
                "-r",
                "250",
                "-d",
                str(int(seconds)),
                "-o",
                str(out),
                "-p",
                str(daemon.pid),
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        time.sleep(0.5)
        step = ingest.run_step(daemon, sim, 10_000, 50_000, seconds)
        _, err = rec.communicate(timeout=seconds + 30)
        if rec.returncode != 0:
            return {"error": err.decode(errors="replace")[-500:]}
    say(f"    py-spy flame graph at 50,000 packets/s, N=10,000: {out}")
    return {"svg": str(out), "rate": 50_000, "cpu_util": round(step.cpu_util, 3)}


def run_broker(
    kind: procs.BrokerKind,
    only: set[str],
    cfg: dict[str, Any],
    workdir: Path,
    want_profile: bool,
    first: bool = True,
) -> dict[str, Any]:
    out: dict[str, Any] = {}

    def section(name: str, fn: Callable[[procs.Broker], dict[str, Any]]) -> None:
        if name not in only or (name in ONCE and not first):
            return
        say(f"  {name}")
        t = time.monotonic()
        with procs.scope() as sc:
            broker = sc.add(procs.make_broker(kind, workdir))
            try:
                out[name] = fn(broker)
            except Exception as exc:
                say(traceback.format_exc())
                out[name] = {"error": f"{type(exc).__name__}: {exc}".splitlines()[0][:300]}
        out[name]["measured"] = dt.datetime.now().isoformat(timespec="seconds")
        out[name]["wall_s"] = round(time.monotonic() - t, 1)

    section(
        "ingest",
        lambda b: ingest.measure(
            b, workdir, cfg["ingest_ns"], cfg["ingest_seconds"], cfg["ingest_steps"], say
        ),
    )
    section(
        "signing",
        lambda b: ingest.measure_signing(
            b, workdir, cfg["signing_ns"], cfg["ingest_seconds"], cfg["ingest_steps"], say
        ),
    )
    section(
        "memory",
        lambda b: memory.measure(b, workdir, cfg["load_n"], cfg["memory_ns"], cfg["gets"], say),
    )
    section(
        "api",
        lambda b: httpbench.measure(
            b, workdir, cfg["api_ns"], cfg["api_endpoints"], cfg["wrk_seconds"], say
        ),
    )
    section(
        "propagation",
        lambda b: cluster.propagation(b, workdir, cfg["prop_trials"], cfg["prop_background"], say),
    )
    section(
        "join",
        lambda b: cluster.join(
            b, workdir, cfg["join_n"], cfg["join_keep_alive"], cfg["join_trials"], say
        ),
    )
    section(
        "failure",
        lambda b: cluster.failure(
            b, workdir, cfg["fail_ttl"], cfg["fail_keep_alive"], cfg["fail_trials"], say
        ),
    )
    if kind == "nats" and "fanout" in only:  # the broker's own cost: NATS only
        say("  fanout")
        t = time.monotonic()
        try:
            out["fanout"] = fanout.measure(workdir, cfg["fanout_ns"], 5.0, 5.0, say)
        except Exception as exc:
            say(traceback.format_exc())
            out["fanout"] = {"error": f"{type(exc).__name__}: {exc}".splitlines()[0][:300]}
        out["fanout"]["measured"] = dt.datetime.now().isoformat(timespec="seconds")
        out["fanout"]["wall_s"] = round(time.monotonic() - t, 1)
    section("dns", lambda b: dnsbench.measure(b, workdir, cfg["dns_n"], cfg["dns_seconds"], say))
    if kind == "nats":  # the page does not care which broker fed the registry
        section("ui", lambda b: ui.measure(b, workdir, cfg["ui_n"], say))
    section(
        "checks",
        lambda b: checks.measure(
            b, workdir, cfg["checks_n"], cfg["checks_seconds"], cfg["checks_gets"], say
        ),
    )
    if want_profile:
        with procs.scope() as sc:
            broker = sc.add(procs.make_broker(kind, workdir))
            out["profile"] = profile(broker, workdir, 5)
    return out


def merge(old: dict[str, Any], new: dict[str, Any]) -> dict[str, Any]:
    """Results of this run over the previous ones, section by section."""
    merged = {**old, **{k: v for k, v in new.items() if k != "brokers"}}
    brokers = {b: dict(v) for b, v in (old.get("brokers") or {}).items()}
    for b, sections in new["brokers"].items():
        brokers.setdefault(b, {}).update(sections)
    merged["brokers"] = brokers
    return merged


def main() -> int:
    parser = argparse.ArgumentParser(description="Lobby benchmarks (bench/README.md)")
    parser.add_argument("--quick", action="store_true", help="a ~1-minute subset")
    parser.add_argument(
        "--broker", choices=("nats", "redis", "both"), help="default: both (quick: nats)"
    )
    parser.add_argument(
        "--only", default="", help=f"comma-separated subset of {','.join(MEASUREMENTS)}"
    )
    parser.add_argument("--keep-alive", type=int, help="KEEP_ALIVE of the join measurement")
    parser.add_argument("--ttl", type=int, help="TTL of the failure-detection measurement")
    parser.add_argument("--api-ns", help="comma-separated N of the api section, e.g. 10,1000")
    parser.add_argument("--signing-ns", help="comma-separated N of the signing section (10000)")
    parser.add_argument(
        "--endpoints", help=f"comma-separated subset of {','.join(httpbench.ENDPOINTS)}"
    )
    parser.add_argument("--profile", action="store_true", help="also record a py-spy flame graph")
    parser.add_argument("--no-write", action="store_true", help="print only; write no files")
    parser.add_argument(
        "--report",
        action="store_true",
        help="measure nothing: redraw the plots and the README table from results/latest.json",
    )
    args = parser.parse_args()
    if args.report:
        shown = json.loads((RESULTS / "latest.json").read_text())
        report.update_readme(shown, report.plots(shown))
        print(report.markdown(shown))
        return 0

    only = set(filter(None, args.only.split(","))) or set(MEASUREMENTS)
    if unknown := only - set(MEASUREMENTS):
        parser.error(f"unknown measurement(s): {', '.join(sorted(unknown))}")
    kinds: list[procs.BrokerKind] = (
        ["nats", "redis"]
        if (args.broker or ("nats" if args.quick else "both")) == "both"
        else [args.broker or "nats"]
    )
    cfg = config(args.quick)
    if args.keep_alive:
        cfg["join_keep_alive"] = args.keep_alive
    if args.ttl:
        cfg["fail_ttl"] = args.ttl
    if args.api_ns:
        cfg["api_ns"] = [int(n) for n in args.api_ns.split(",")]
    if args.signing_ns:
        cfg["signing_ns"] = [int(n) for n in args.signing_ns.split(",")]
    if args.endpoints:
        cfg["api_endpoints"] = args.endpoints.split(",")
        if unknown := set(cfg["api_endpoints"]) - set(httpbench.ENDPOINTS):
            parser.error(f"unknown endpoint(s): {', '.join(sorted(unknown))}")
    tools = [procs.WRK, procs.NATS_SERVER, procs.REDIS_SERVER]
    if "ui" in only:
        tools += [browser.CHROMIUM, browser.CHROMEDRIVER]
    for tool in tools:
        if not Path(tool).exists():
            parser.error(f"{tool} is missing")

    procs.pin_self()
    workdir = Path(tempfile.mkdtemp(prefix="lobby-bench-"))
    started = dt.datetime.now().astimezone()
    t0 = time.monotonic()
    noise = procs.Noise().start()
    results: dict[str, Any] = {
        "started": started.isoformat(timespec="seconds"),
        "quick": args.quick,
        "machine": procs.machine(),
        "config": cfg,
        "brokers": {},
    }
    m = results["machine"]
    say(
        f"lobby benchmarks: {m['cpu']}, {m['cores']} cores, Python {m['python']}, lobbyd {m['lobbyd']}"
    )
    say(
        f"  lobbyd on core {m['daemon_cpus']}; broker, simulator, wrk on {m['other_cpus']}; work dir {workdir}"
    )
    failed = False
    try:
        for kind in kinds:
            say(f"{report.NAMES[kind]}:")
            if kind == "redis":
                why = redis_driver_works(workdir)
                if why:
                    say(f"  skipped: {why}")
                    results["brokers"][kind] = {name: {"error": why} for name in sorted(only)}
                    continue
            first = kind == kinds[0]
            results["brokers"][kind] = run_broker(kind, only, cfg, workdir, args.profile, first)
    except KeyboardInterrupt:
        say("interrupted")
        failed = True
    finally:
        noise.stop()
    foreign, wall = noise.read()
    results["noise"] = {"foreign_cpu_s": round(foreign, 1), "wall": round(wall, 1)}
    results["duration_s"] = round(time.monotonic() - t0, 1)
    if wall and foreign / wall > 0.1:
        say(
            f"note: other processes used {foreign / wall:.0%} of a core on average during this run;"
            " the figures are noisier than on an idle machine"
        )

    failed = failed or any(
        isinstance(sec, dict) and "error" in sec
        for b in results["brokers"].values()
        for sec in b.values()
    )
    if not failed:
        shutil.rmtree(workdir, ignore_errors=True)
    else:
        say(f"logs kept in {workdir}")

    shown = results
    if not args.no_write:
        RESULTS.mkdir(exist_ok=True)
        if args.quick:
            (RESULTS / "quick.json").write_text(json.dumps(results, indent=1) + "\n")
        else:
            latest = RESULTS / "latest.json"
            old = json.loads(latest.read_text()) if latest.exists() else {}
            shown = merge(old, results) if old else results
            latest.write_text(json.dumps(shown, indent=1) + "\n")
            written = report.plots(shown)
            report.update_readme(shown, written)
            say(f"wrote {latest}, {', '.join(Path(w).name for w in written)} and bench/README.md")
    print(report.markdown(shown))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
