#!/usr/bin/env python3
"""Fan-out: how large a cluster one nats-server core carries (bench/README.md §7).

Every node hears every keep-alive, so N listening nodes that announce every
KEEP_ALIVE seconds cost the broker N²/KEEP_ALIVE deliveries a second. This finds,
for one nats-server pinned to one core (GOMAXPROCS=1), the largest N whose fan-out
it sustains with all N nodes listening:

- N light listeners, each a plain TCP connection with `SUB <subject>`, live in a
  separate process (`fanout.py listen`) that only counts `MSG` lines (bytes.count
  over whatever recv returns, so it costs far less per message than any lobbyd);
- the simulator (simulate.py) plays the N announcing nodes at N/KEEP_ALIVE packets/s;
- a step sustains when every published packet reached every listener, the server
  reported no slow consumer, and the server's core was not saturated.

Reported: per N, deliveries/s, broker CPU and broker CPU per delivered packet; from
the cost per delivery, the cluster size one broker core carries at KEEP_ALIVE 5:
N = sqrt(KEEP_ALIVE / cost).

`fanout.py scale` is the other side of it (SPEC §20, issue 26, bench/README.md "Agents
and listeners"): N agents announce but do not listen, so the broker does
N x (L + G) / KEEP_ALIVE deliveries a second for L listeners and G Go peers. One broker,
the simulator playing N announcing agents, L real listener lobbyds and one real agent
lobbyd (LISTEN=false) whose HTTP API a fixed-rate load generator (`fanout.py load`, a
separate process) reads; then faults under that load. See `scale --help`.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import resource
import selectors
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

import procs
import psutil

LISTEN_CONNECT = b'CONNECT {"verbose":false,"pedantic":false,"name":"fanout"}\r\n'


# -- the listener process ---------------------------------------------------------


def listen(port: int, subject: str, n: int) -> None:
    """N subscriptions; counts MSG lines; answers `count` on stdin with the total."""
    _soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    sel = selectors.DefaultSelector()
    socks = []
    for _ in range(n):
        s = socket.create_connection(("127.0.0.1", port))
        s.sendall(LISTEN_CONNECT + f"SUB {subject} 1\r\nPING\r\n".encode())
        socks.append(s)
    pending = set(range(n))
    buf = [b""] * n
    for i, s in enumerate(socks):  # wait for each PONG: every SUB is in place
        while i in pending:
            buf[i] += s.recv(4096)
            if b"PONG\r\n" in buf[i]:
                pending.discard(i)
    for i, s in enumerate(socks):
        s.setblocking(False)
        sel.register(s, selectors.EVENT_READ, i)
    sel.register(sys.stdin, selectors.EVENT_READ, -1)
    print(json.dumps({"event": "ready"}), flush=True)
    count = 0
    tails = [b""] * n
    while True:
        for key, _ in sel.select(1.0):
            i = key.data
            if i == -1:
                line = sys.stdin.readline()
                if not line or line.strip() == "quit":
                    return
                print(json.dumps({"event": "count", "count": count}), flush=True)
                continue
            sock: socket.socket = key.fileobj  # type: ignore[assignment]
            try:
                data = sock.recv(1 << 20)
            except BlockingIOError:
                continue
            if not data:
                sel.unregister(sock)
                continue
            chunk = tails[i] + data
            count += chunk.count(b"\r\nMSG ") + (chunk.startswith(b"MSG ") and not tails[i])
            tails[i] = chunk[-6:]
            if b"PING\r\n" in data:
                sock.sendall(b"PONG\r\n")


class Listeners:
    def __init__(self, port: int, subject: str, n: int, workdir: Path) -> None:
        self.log = open(workdir / f"fanout-listen-{n}.log", "ab")  # noqa: SIM115
        self.popen = subprocess.Popen(
            [sys.executable, __file__, "listen", str(port), subject, str(n)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=self.log,
            start_new_session=True,
        )
        self._expect("ready", 120)

    def _expect(self, kind: str, timeout: float) -> dict[str, Any]:
        assert self.popen.stdout is not None
        sel = selectors.DefaultSelector()
        sel.register(self.popen.stdout, selectors.EVENT_READ)
        if not sel.select(timeout):
            raise TimeoutError(f"listeners: no {kind!r} within {timeout} s")
        line = self.popen.stdout.readline()
        if not line:
            raise RuntimeError("listener process exited")
        event: dict[str, Any] = json.loads(line)
        if event["event"] != kind:
            raise RuntimeError(f"listeners: expected {kind}, got {event}")
        return event

    def count(self) -> int:
        assert self.popen.stdin is not None
        self.popen.stdin.write(b"count\n")
        self.popen.stdin.flush()
        return int(self._expect("count", 30)["count"])

    @property
    def pid(self) -> int:
        return self.popen.pid

    def close(self) -> None:
        with contextlib.suppress(Exception):
            assert self.popen.stdin is not None
            self.popen.stdin.write(b"quit\n")
            self.popen.stdin.flush()
        try:
            self.popen.wait(5)
        except subprocess.TimeoutExpired:
            self.popen.kill()
            self.popen.wait()
        self.log.close()


# -- the broker on one core ---------------------------------------------------------


class PinnedNats(procs.NatsServer):
    """nats-server on the daemon core with GOMAXPROCS=1 and a monitoring port."""

    def __init__(self, workdir: Path) -> None:
        super().__init__(workdir)
        self.monitor = procs.free_port()
        self.argv += ["-m", str(self.monitor)]
        self.env = {**os.environ, "GOMAXPROCS": "1"}

    def start(self) -> None:
        super().start()
        os.sched_setaffinity(self.pid, procs.DAEMON_CPUS)

    def varz(self) -> dict[str, Any]:
        with urllib.request.urlopen(f"http://127.0.0.1:{self.monitor}/varz", timeout=5) as r:
            return dict(json.load(r))


# -- one step -----------------------------------------------------------------------


def step(
    broker: PinnedNats, workdir: Path, n: int, keep_alive: float, seconds: float
) -> dict[str, Any]:
    rate = n / keep_alive
    with procs.scope() as sc, contextlib.ExitStack() as stack:
        listeners = Listeners(broker.port, broker.channel, n, workdir)
        stack.callback(listeners.close)
        sim = sc.add(procs.Sim(broker, workdir))
        sim.call("fill", start=0, stop=n, rate=0)
        time.sleep(0.5)
        before = listeners.count()
        slow0 = int(broker.varz().get("slow_consumers", 0))
        proc = psutil.Process(broker.pid)
        listener_proc = psutil.Process(listeners.pid)
        cpu0 = sum(proc.cpu_times()[:2])
        lcpu0 = sum(listener_proc.cpu_times()[:2])
        t0 = time.monotonic()
        done = sim.call("run", n=n, rate=rate, seconds=seconds, timeout=seconds + 60)
        published = int(done["sent"])
        expected = before + published * n
        sent_wall = time.monotonic() - t0
        # drain: wait until every delivery arrived or the count stops moving
        got, last, still = listeners.count(), -1, 0
        while got < expected and still < 3:
            time.sleep(0.3)
            last, got = got, listeners.count()
            still = still + 1 if got == last else 0
        wall = time.monotonic() - t0
        lag = wall - sent_wall
        cpu = sum(proc.cpu_times()[:2]) - cpu0
        lcpu = sum(listener_proc.cpu_times()[:2]) - lcpu0
        slow = int(broker.varz().get("slow_consumers", 0)) - slow0
    delivered = got - before
    util = cpu / wall
    return {
        "n": n,
        "publish_rate": round(rate, 1),
        "published": published,
        "delivered": delivered,
        "expected": published * n,
        "deliveries_per_s": round(delivered / wall),
        "broker_cpu_util": round(util, 3),
        "listener_cpu_util": round(lcpu / wall, 3),
        "broker_us_per_delivery": round(1e6 * cpu / max(delivered, 1), 3),
        "slow_consumers": slow,
        "drain_s": round(lag, 2),
        # every packet reached every listener, no slow consumer, and within a second
        # of the last publish: a broker that falls behind piles up a growing backlog
        "sustained": delivered >= published * n and slow == 0 and lag < 1.0,
        "broker_saturated": util >= 0.95,
    }


def measure(
    workdir: Path,
    ns: list[int],
    keep_alive: float,
    seconds: float,
    say: Callable[[str], None],
) -> dict[str, Any]:
    steps = []
    with procs.scope() as sc:
        broker = sc.add(PinnedNats(workdir))
        broker.start()
        broker.wait_up()
        for n in ns:
            s = step(broker, workdir, n, keep_alive, seconds)
            steps.append(s)
            say(
                f"    N={n:,}: {s['deliveries_per_s']:,} deliveries/s, broker "
                f"{100 * s['broker_cpu_util']:.0f} % of a core, "
                f"{s['broker_us_per_delivery']} µs/delivery, listeners "
                f"{100 * s['listener_cpu_util']:.0f} %"
                + ("" if s["sustained"] else " — NOT sustained")
            )
            if not s["sustained"] or s["broker_saturated"]:
                break
    good = [s for s in steps if s["sustained"]]
    # cost per delivery at the busiest sustained step (fixed costs amortized)
    best = max(good, key=lambda s: s["n"]) if good else None
    cost = best["broker_us_per_delivery"] / 1e6 if best else None
    return {
        "keep_alive": keep_alive,
        "steps": steps,
        "largest_sustained_n": best["n"] if best else 0,
        "us_per_delivery": best["broker_us_per_delivery"] if best else None,
        "one_core_n_at_ka5": int(math.sqrt(5 / cost)) if cost else None,
    }


if __name__ == "__main__":
    if len(sys.argv) == 5 and sys.argv[1] == "listen":
        listen(int(sys.argv[2]), sys.argv[3], int(sys.argv[4]))
    elif len(sys.argv) >= 2 and sys.argv[1] == "load":
        import scale

        scale.load_main(sys.argv[2:])
    elif len(sys.argv) >= 2 and sys.argv[1] == "scale":
        import scale

        scale.main(sys.argv[2:])
    else:
        import tempfile

        procs.pin_self()
        with tempfile.TemporaryDirectory() as tmp:
            out = measure(Path(tmp), [250, 500, 750, 1000, 1250, 1500, 2000], 5.0, 5.0, print)
        print(json.dumps(out, indent=2))
