#!/usr/bin/env python3
"""A py-spy flame graph of lobbyd answering one endpoint under wrk.

    .venv/bin/python bench/profile_api.py [--src SRC] [--n 10] [--endpoint all]
                                          [--seconds 5] [--out bench/profile-api.svg]

The same setting as the api section (N simulated nodes, keep-alive 5 s, one node
changing its labels every second); `--src` profiles another checkout's `src`.
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from functools import partial
from pathlib import Path

import httpbench
import procs


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--src", type=Path, default=procs.ROOT / "src")
    parser.add_argument("--n", type=int, default=10)
    parser.add_argument("--endpoint", default="all", choices=list(httpbench.ENDPOINTS))
    parser.add_argument("--seconds", type=int, default=5)
    parser.add_argument("--format", default="flamegraph", choices=("flamegraph", "raw"))
    parser.add_argument("--out", type=Path, default=procs.BENCH / "profile-api.svg")
    args = parser.parse_args()
    py_spy = shutil.which("py-spy") or str(procs.VENV_BIN / "py-spy")
    procs.pin_self()
    workdir = Path(tempfile.mkdtemp(prefix="lobby-profile-"))
    with procs.scope() as sc:
        broker = sc.add(procs.make_broker("nats", workdir))
        daemon = sc.add(
            procs.Lobbyd(
                workdir,
                broker,
                "profile",
                KEEP_ALIVE=httpbench.KEEP_ALIVE,
                PYTHONPATH=str(args.src.resolve()),
            )
        )
        daemon.start()
        sim = sc.add(procs.Sim(broker, workdir))
        sim.call("prepare", n=args.n)
        sim.call("fill", start=0, stop=args.n, rate=0)
        procs.wait_for(partial(daemon.has_nodes, args.n + 1), 60, f"{args.n} nodes")
        sim.call("keepalive", n=args.n, every=httpbench.KEEP_ALIVE, flip=True)
        path, headers = httpbench.ENDPOINTS[args.endpoint], httpbench.HEADERS.get(args.endpoint)
        daemon.http.get(path, headers)
        result: dict[str, object] = {}
        load = threading.Thread(
            target=lambda: result.update(
                httpbench.wrk(
                    f"http://127.0.0.1:{daemon.port}{path}", args.seconds + 2, headers=headers
                )
            )
        )
        load.start()
        time.sleep(1)
        subprocess.run(
            [
                py_spy,
                "record",
                "-r",
                "250",
                "-d",
                str(args.seconds),
                "-f",
                args.format,
                "-o",
                str(args.out),
                "-p",
                str(daemon.pid),
            ],
            check=True,
            capture_output=True,
        )
        load.join()
        sim.call("stop")
    print(f"{args.out}: N={args.n} {path} {result.get('rps')} req/s under the profiler")
    return 0


if __name__ == "__main__":
    sys.exit(main())
