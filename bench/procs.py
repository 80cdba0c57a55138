"""Real processes for the benchmarks: brokers, lobbyd, the simulator; HTTP and CPU pinning.

Everything binds to 127.0.0.1 on a free port and is stopped by its PID. Every
lobbyd runs pinned to the last core; the orchestrator, the brokers, the simulator
and wrk share the other cores (on a 2-core machine: one core each), so the
figures are "lobbyd on one core" and the load generators do not steal its time.
"""

from __future__ import annotations

import contextlib
import http.client
import json
import os
import queue
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any, Literal, TypeVar

import psutil

ROOT = Path(__file__).resolve().parent.parent
BENCH = ROOT / "bench"
VENV_BIN = Path(sys.executable).parent
NATS_SERVER = str(VENV_BIN / "nats-server")
REDIS_SERVER = shutil.which("redis-server") or "/usr/bin/redis-server"
WRK = shutil.which("wrk") or "/usr/bin/wrk"

BrokerKind = Literal["nats", "redis"]
T = TypeVar("T")

# -- cores --------------------------------------------------------------------------

_ALL_CPUS = sorted(os.sched_getaffinity(0))
DAEMON_CPUS = {_ALL_CPUS[-1]}
OTHER_CPUS = set(_ALL_CPUS[:-1]) or DAEMON_CPUS


def pin_self() -> None:
    """Keep the orchestrator (and what it spawns) off the daemon's core."""
    os.sched_setaffinity(0, OTHER_CPUS)


# -- helpers ------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def port_open(port: int) -> bool:
    with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 0.2):
        return True
    return False


def wait_for(probe: Callable[[], T | None], timeout: float, what: str, every: float = 0.02) -> T:
    """Poll `probe` until it returns something truthy."""
    deadline = time.monotonic() + timeout
    last: Any = None
    while True:
        try:
            last = probe()
        except (OSError, http.client.HTTPException, ValueError) as exc:
            last = exc
        if last and not isinstance(last, Exception):
            return last  # type: ignore[no-any-return]
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout:.0f} s waiting for {what}: {last!r}")
        time.sleep(every)


class Http:
    """A keep-alive HTTP/1.1 client to one lobbyd: cheap enough for tight polling."""

    def __init__(self, port: int, timeout: float = 10.0) -> None:
        self.port = port
        self.timeout = timeout
        self._conn: http.client.HTTPConnection | None = None

    def request(
        self,
        method: str,
        path: str,
        body: bytes | None = None,
        headers: dict[str, str] | None = None,
    ) -> tuple[int, bytes]:
        for attempt in (0, 1):
            if self._conn is None:
                self._conn = http.client.HTTPConnection(
                    "127.0.0.1", self.port, timeout=self.timeout
                )
            try:
                self._conn.request(method, path, body=body, headers=headers or {})
                resp = self._conn.getresponse()
                return resp.status, resp.read()
            except (OSError, http.client.HTTPException):
                self.close()
                if attempt:
                    raise
        raise AssertionError("unreachable")

    def get(self, path: str, headers: dict[str, str] | None = None) -> bytes:
        status, body = self.request("GET", path, headers=headers)
        if status != 200:
            raise http.client.HTTPException(f"GET {path}: {status} {body[:200]!r}")
        return body

    def json(self, path: str) -> Any:
        return json.loads(self.get(path))

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None


# -- processes ----------------------------------------------------------------------


class Proc:
    """A child process with a log file, stopped by PID."""

    def __init__(self, argv: list[str], log_path: Path, env: Mapping[str, str] | None = None):
        self.argv = argv
        self.log_path = log_path
        self.env = dict(env) if env is not None else None
        self.popen: subprocess.Popen[bytes] | None = None
        self.started_at = 0.0

    def start(self) -> None:
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.log_path, "ab") as log:
            self.started_at = time.monotonic()
            self.popen = subprocess.Popen(
                self.argv,
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                env=self.env,
                start_new_session=True,
            )

    @property
    def pid(self) -> int:
        assert self.popen is not None
        return self.popen.pid

    @property
    def running(self) -> bool:
        return self.popen is not None and self.popen.poll() is None

    def signal(self, sig: int) -> None:
        if self.running:
            os.kill(self.pid, sig)

    def stop(self, timeout: float = 5.0) -> int | None:
        """SIGTERM, then SIGKILL after `timeout`; returns the exit status."""
        if self.popen is None:
            return None
        if self.popen.poll() is None:
            self.popen.send_signal(signal.SIGTERM)
            try:
                self.popen.wait(timeout)
            except subprocess.TimeoutExpired:
                self.popen.kill()
                self.popen.wait()
        return self.popen.returncode

    def output(self, tail: int = 3000) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-tail:]
        except FileNotFoundError:
            return ""


class Broker(Proc):
    kind: BrokerKind
    port: int
    channel: str

    def lobbyd_env(self) -> dict[str, str]:
        raise NotImplementedError

    def sim_address(self) -> str:
        raise NotImplementedError

    def wait_up(self) -> None:
        wait_for(lambda: port_open(self.port) or not self.running, 10, f"{self.kind} server")
        if not self.running:
            raise RuntimeError(f"{self.kind} server exited:\n{self.output()}")


class NatsServer(Broker):
    kind: BrokerKind = "nats"

    def __init__(self, workdir: Path) -> None:
        self.port = free_port()
        self.channel = f"lobby.bench.{uuid.uuid4().hex[:8]}"
        super().__init__(
            [NATS_SERVER, "-a", "127.0.0.1", "-p", str(self.port)],
            workdir / f"nats-{self.port}.log",
        )

    def lobbyd_env(self) -> dict[str, str]:
        return {
            "DRIVER": "NATS",
            "NATS_URL": f"nats://127.0.0.1:{self.port}",
            "NATS_DISCOVERY_CHANNEL": self.channel,
        }

    def sim_address(self) -> str:
        return f"nats://127.0.0.1:{self.port}"


class RedisServer(Broker):
    kind: BrokerKind = "redis"

    def __init__(self, workdir: Path) -> None:
        self.port = free_port()
        self.channel = f"lobby:bench:{uuid.uuid4().hex[:8]}"
        super().__init__(
            [
                REDIS_SERVER,
                *("--port", str(self.port), "--bind", "127.0.0.1"),
                *("--save", "", "--appendonly", "no", "--dir", str(workdir)),
            ],
            workdir / f"redis-{self.port}.log",
        )

    def lobbyd_env(self) -> dict[str, str]:
        return {"DRIVER": "Redis", "REDIS_PORT": str(self.port), "REDIS_CHANNEL": self.channel}

    def sim_address(self) -> str:
        return f"127.0.0.1:{self.port}"


def make_broker(kind: BrokerKind, workdir: Path) -> Broker:
    broker: Broker = NatsServer(workdir) if kind == "nats" else RedisServer(workdir)
    broker.start()
    broker.wait_up()
    return broker


class Lobbyd(Proc):
    """A real lobbyd (`python -m lobby`), pinned to the daemon core."""

    def __init__(self, workdir: Path, broker: Broker, name: str, **env: str | int) -> None:
        self.name = name
        self.port = free_port()
        self.labels_path = workdir / f"labels-{name}-{self.port}"
        full = {
            "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
            "HOSTNAME": name,
            "HOST": "127.0.0.1",
            "PORT": str(self.port),
            "LABELS_PATH": str(self.labels_path),
            "PYTHONUNBUFFERED": "1",
            "PYTHONPATH": str(ROOT / "src"),  # this tree's code, whatever is installed
            **broker.lobbyd_env(),
            **{k: str(v) for k, v in env.items()},
        }
        super().__init__([sys.executable, "-m", "lobby"], workdir / f"lobbyd-{name}.log", full)
        self.http = Http(self.port)
        self._ps: psutil.Process | None = None

    def start(self, wait: bool = True) -> None:
        super().start()
        with contextlib.suppress(OSError):
            os.sched_setaffinity(self.pid, DAEMON_CPUS)
        self._ps = psutil.Process(self.pid)
        if wait:
            self.wait_ready()

    def wait_ready(self, timeout: float = 20.0) -> None:
        def up() -> bool:
            if not self.running:
                raise RuntimeError(f"lobbyd {self.name} exited:\n{self.output()}")
            return bool(self.stats()["broker"]["connected"])

        wait_for(up, timeout, f"lobbyd {self.name} connected to its broker")

    def stats(self) -> dict[str, Any]:
        return self.http.json("/v1/stats")  # type: ignore[no-any-return]

    def nodes(self) -> int:
        return int(self.stats()["nodes"])

    def has_nodes(self, n: int) -> bool:
        return self.nodes() >= n

    def hostnames(self, query: str = "") -> list[str]:
        return [d["hostname"] for d in self.http.json("/v1/discoveries" + query)]

    def cpu(self) -> float:
        """CPU seconds (user + system) used so far."""
        assert self._ps is not None
        t = self._ps.cpu_times()
        return float(t.user + t.system)

    def children_cpu(self) -> float:
        """CPU seconds (user + system) of the commands it ran and waited for."""
        assert self._ps is not None
        t = self._ps.cpu_times()
        return float(t.children_user + t.children_system)

    def rss(self) -> int:
        assert self._ps is not None
        return int(self._ps.memory_info().rss)

    def stop(self, timeout: float = 5.0) -> int | None:
        self.http.close()
        return super().stop(timeout)


# -- the simulator, remote-controlled -----------------------------------------------


class Sim:
    """bench/simulate.py as a child process, driven by JSON lines."""

    def __init__(
        self,
        broker: Broker,
        workdir: Path,
        channel: str = "",
        signing_key: str = "",
        args: tuple[str, ...] = (),
    ) -> None:
        self.broker = broker
        self.signed = bool(signing_key)
        self.log_path = workdir / f"sim-{broker.kind}.log"
        with open(self.log_path, "ab") as log:
            self.popen = subprocess.Popen(
                [
                    sys.executable,
                    str(BENCH / "simulate.py"),
                    *("--broker", broker.kind),
                    *("--address", broker.sim_address()),
                    *("--channel", channel or broker.channel),
                    *(("--signing-key", signing_key) if signing_key else ()),
                    *args,
                ],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=log,
                start_new_session=True,
            )
        self._events: queue.Queue[dict[str, Any]] = queue.Queue()
        threading.Thread(target=self._read, daemon=True).start()
        self._expect("ready", 30)

    def _read(self) -> None:
        assert self.popen.stdout is not None
        for line in self.popen.stdout:
            self._events.put(json.loads(line))
        self._events.put({"event": "error", "error": "simulator exited"})

    def _expect(self, kind: str, timeout: float) -> dict[str, Any]:
        try:
            event = self._events.get(timeout=timeout)
        except queue.Empty:
            raise TimeoutError(f"simulator: no {kind!r} within {timeout} s") from None
        if event["event"] == "error":
            raise RuntimeError(f"simulator: {event['error']}")
        if event["event"] != kind:
            raise RuntimeError(f"simulator: expected {kind!r}, got {event}")
        return event

    def send(self, cmd: str, **args: Any) -> None:
        assert self.popen.stdin is not None
        self.popen.stdin.write((json.dumps({"cmd": cmd, **args}) + "\n").encode())
        self.popen.stdin.flush()

    def started(self, timeout: float = 60) -> float:
        return float(self._expect("started", timeout)["t0"])

    def done(self, timeout: float = 120) -> dict[str, Any]:
        return self._expect("done", timeout)

    def poll_done(self, timeout: float) -> dict[str, Any] | None:
        """The "done" event if it comes within `timeout`, else None."""
        try:
            event = self._events.get(timeout=timeout)
        except queue.Empty:
            return None
        if event["event"] != "done":
            raise RuntimeError(f"simulator: expected 'done', got {event}")
        return event

    def call(self, cmd: str, timeout: float = 120, **args: Any) -> dict[str, Any]:
        """Run a command to its end (skipping its "started" event)."""
        self.send(cmd, **args)
        if cmd not in ("stop", "prepare", "prepare_run", "quit", "count"):
            self.started(timeout)
        return self.done(timeout)

    def close(self) -> None:
        if self.popen.poll() is None:
            with contextlib.suppress(Exception):
                self.send("quit")
            try:
                self.popen.wait(5)
            except subprocess.TimeoutExpired:
                self.popen.kill()
                self.popen.wait()


# -- a scope that stops everything it started ----------------------------------------


class Scope:
    """Owns processes; `close()` stops each of them by PID, newest first."""

    def __init__(self) -> None:
        self._items: list[Proc | Sim] = []

    def add(self, item: T) -> T:
        assert isinstance(item, Proc | Sim)
        self._items.append(item)
        return item

    def close(self) -> None:
        while self._items:
            item = self._items.pop()
            with contextlib.suppress(Exception):
                if isinstance(item, Sim):
                    item.close()
                else:
                    item.stop()


@contextlib.contextmanager
def scope() -> Iterator[Scope]:
    s = Scope()
    try:
        yield s
    finally:
        s.close()


def lobbyd_version() -> str:
    """The git commit of the code under test, `+dirty` when src/ has local changes."""
    try:
        head = subprocess.run(
            ["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "-C", str(ROOT), "status", "--porcelain", "--", "src"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return head + ("+dirty" if dirty else "")


def tool_version(argv: list[str]) -> str:
    try:
        out = subprocess.run(argv, capture_output=True, text=True, timeout=5)
    except (OSError, subprocess.TimeoutExpired):
        return "unknown"
    return (out.stdout or out.stderr).strip().splitlines()[0] if (out.stdout or out.stderr) else ""


def machine() -> dict[str, Any]:
    model = "unknown"
    with contextlib.suppress(OSError), open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    mem = psutil.virtual_memory().total
    return {
        "cpu": model,
        "cores": os.cpu_count(),
        "memory_gib": round(mem / 2**30, 1),
        "python": sys.version.split()[0],
        "lobbyd": lobbyd_version(),
        "nats_server": tool_version([NATS_SERVER, "--version"]),
        "redis_server": tool_version([REDIS_SERVER, "--version"]).split(" sha=")[0],
        "daemon_cpus": sorted(DAEMON_CPUS),
        "other_cpus": sorted(OTHER_CPUS),
    }


class Noise:
    """How much CPU processes outside this benchmark took while it ran.

    Samples once a second: machine-wide busy time minus the time of this process
    and its descendants. Other people's test runs on a shared machine show up here,
    so a figure taken while they ran can be read for what it is.
    """

    def __init__(self, every: float = 1.0) -> None:
        self.every = every
        self.foreign = 0.0  # CPU seconds used by others since start
        self.wall = 0.0
        self._ours: dict[int, float] = {}
        self._me = psutil.Process()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._lock = threading.Lock()

    def start(self) -> Noise:
        self._busy0 = self._busy()
        self._ours_total()
        self._t0 = time.monotonic()
        self._thread.start()
        return self

    @staticmethod
    def _busy() -> float:
        t = psutil.cpu_times()
        return float(t.user + t.nice + t.system + t.irq + t.softirq)

    def _ours_total(self) -> float:
        """CPU seconds our tree used since the last call."""
        used = 0.0
        procs = [self._me]
        with contextlib.suppress(psutil.Error):
            procs += self._me.children(recursive=True)
        seen = {}
        for p in procs:
            try:
                t = p.cpu_times()
            except psutil.Error:
                continue
            total = float(t.user + t.system + t.children_user + t.children_system)
            seen[p.pid] = total
            used += max(0.0, total - self._ours.get(p.pid, 0.0))
        self._ours = seen
        return used

    def _run(self) -> None:
        busy = self._busy0
        while not self._stop.wait(self.every):
            now_busy = self._busy()
            ours = self._ours_total()
            with self._lock:
                self.foreign += max(0.0, (now_busy - busy) - ours)
                self.wall = time.monotonic() - self._t0
            busy = now_busy

    def read(self) -> tuple[float, float]:
        """(foreign CPU seconds, wall seconds) so far."""
        with self._lock:
            return self.foreign, self.wall

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()
