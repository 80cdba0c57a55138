"""Health checks (SPEC §19): what 200 checks at CHECK_INTERVAL 1 s cost one lobbyd.

One lobbyd per variant, pinned to the daemon core like every other, with N checks of
one kind, each governing a label of its own (`bench:KIND:i`):

- `tcp`: `tcp://127.0.0.1:PORT`, a listener in this process that accepts and closes;
- `http`: `http://127.0.0.1:PORT/health`, a stdlib HTTP server in this process (200);
- `exec`: `exec:/bin/true`, a process started per run (fork + exec on lobbyd's core);
- `none`: no checks at all, the baseline.

Once every check is up (all N labels announced), lobbyd's CPU time is read with psutil
over `seconds` of quiet: its own (user + system) and, separately, that of the
commands it ran (children). Then, to see that it stays responsive, GET /v1/discovery
is timed `gets` times over a keep-alive connection, 10 ms apart.
"""

from __future__ import annotations

import contextlib
import socket
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from cluster import summary
from procs import Broker, Lobbyd, scope, wait_for

KINDS = ("none", "tcp", "http", "exec")


@contextlib.contextmanager
def tcp_target() -> Iterator[int]:
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(512)

    def accept() -> None:
        while True:
            try:
                conn, _ = sock.accept()
            except OSError:
                return
            conn.close()

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    try:
        yield int(sock.getsockname()[1])
    finally:
        with contextlib.suppress(OSError):
            sock.shutdown(socket.SHUT_RDWR)
        sock.close()
        thread.join(5)


class _Ok(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def do_GET(self) -> None:
        body = b"ok\n"
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:
        pass


@contextlib.contextmanager
def http_target() -> Iterator[int]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Ok)
    server.daemon_threads = True
    server.request_queue_size = 512
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.1})
    thread.start()
    try:
        yield int(server.server_address[1])
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)


def _entries(kind: str, n: int, port: int) -> str:
    target = {
        "tcp": f"tcp://127.0.0.1:{port}",
        "http": f"http://127.0.0.1:{port}/health",
        "exec": "exec:/bin/true",
    }[kind]
    return ";".join(f"bench:{kind}:{i}={target}" for i in range(n))


def _variant(
    broker: Broker, workdir: Path, kind: str, n: int, port: int, seconds: float, gets: int
) -> dict[str, Any]:
    env: dict[str, str | int] = {"CHECK_INTERVAL": 1, "CHECK_TIMEOUT": 2}
    if kind != "none":
        env["CHECKS"] = _entries(kind, n, port)
    with scope() as sc:
        daemon = sc.add(Lobbyd(workdir, broker, f"bench-checks-{kind}", **env))
        daemon.start()
        want = n if kind != "none" else 0

        def all_up() -> bool:
            labels = daemon.http.json("/v1/discovery")["labels"]
            return len(labels) == want

        t0 = time.monotonic()
        wait_for(all_up, 60, f"{want} checked labels announced")
        up_s = time.monotonic() - t0
        time.sleep(2)  # past start-up work
        cpu0, children0, wall0 = daemon.cpu(), daemon.children_cpu(), time.monotonic()
        time.sleep(seconds)
        wall = time.monotonic() - wall0
        own = (daemon.cpu() - cpu0) / wall
        children = (daemon.children_cpu() - children0) / wall
        latencies = []
        for _ in range(gets):
            t = time.perf_counter()
            daemon.http.get("/v1/discovery")
            latencies.append(time.perf_counter() - t)
            time.sleep(0.01)
        report = daemon.http.json("/v1/checks")
        runs = sum(check["runs"] for check in report)
        failed = sum(1 for check in report if check["last_result"] == "fail")
        return {
            "kind": kind,
            "checks": len(report),
            "all_up_s": round(up_s, 2),
            "cpu_util": round(own, 4),
            "children_cpu_util": round(children, 4),
            "runs_per_s": round(runs / max(1e-9, time.monotonic() - t0), 1),
            "failed_last_run": failed,
            "get_discovery_s": summary(latencies),
            "rss": daemon.rss(),
        }


def measure(
    broker: Broker, workdir: Path, n: int, seconds: float, gets: int, say: Any
) -> dict[str, Any]:
    out: dict[str, Any] = {"n": n, "interval_s": 1, "seconds": seconds, "by_kind": []}
    with tcp_target() as tcp_port, http_target() as http_port:
        for kind in KINDS:
            port = {"tcp": tcp_port, "http": http_port}.get(kind, 0)
            v = _variant(broker, workdir, kind, n, port, seconds, gets)
            out["by_kind"].append(v)
            say(
                f"    {kind:>4}: {v['checks']} checks, lobbyd {v['cpu_util']:.1%} of a core"
                f" (+{v['children_cpu_util']:.1%} in its commands),"
                f" GET /v1/discovery p50 {v['get_discovery_s']['p50'] * 1e3:.2f} ms"
                f" p99 {v['get_discovery_s']['p99'] * 1e3:.2f} ms"
            )
    return out
