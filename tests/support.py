"""Real processes for tests: nats-server, redis-server and lobbyd on free loopback ports.

Every process is started on 127.0.0.1, owned by whoever started it, and stopped by
PID. Fixtures in conftest.py wrap these so that teardown always runs.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any, TypeVar

import httpx

T = TypeVar("T")

VENV_BIN = Path(sys.executable).parent
NATS_SERVER = str(VENV_BIN / "nats-server")
REDIS_SERVER = shutil.which("redis-server") or "/usr/bin/redis-server"
REDIS_SENTINEL = shutil.which("redis-sentinel") or "/usr/bin/redis-sentinel"


_handed: set[int] = set()
_PORTS = range(20000, 32768)  # below Linux's ephemeral range (32768-60999)


def free_port() -> int:
    """A loopback port nobody listens on, never handed out twice in this process.

    Taken below the kernel's ephemeral range: a port the kernel chose (port 0) and we
    released could be given to the next outgoing connection before our server binds
    it; one it never chooses can only be taken by someone binding it on purpose.
    """
    import random

    for _ in range(1000):
        port = random.choice(_PORTS)
        if port in _handed:
            continue
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
        _handed.add(port)
        return port
    raise RuntimeError("no free port below the ephemeral range")


def unique(prefix: str = "lobby.test") -> str:
    return f"{prefix}.{uuid.uuid4().hex[:10]}"


def wait_for(
    probe: Callable[[], T], timeout: float = 10.0, interval: float = 0.05, what: str = ""
) -> T:
    """Poll `probe` until it returns something truthy; fail with the last value."""
    deadline = time.monotonic() + timeout
    last: Any = None
    while True:
        try:
            last = probe()
        except Exception as exc:  # the thing may not be up yet
            last = exc
        if last and not isinstance(last, Exception):
            return last  # type: ignore[no-any-return]
        if time.monotonic() > deadline:
            raise AssertionError(
                f"timed out after {timeout} s waiting for {what or probe}: {last!r}"
            )
        time.sleep(interval)


async def until(
    probe: Callable[[], T], timeout: float = 10.0, interval: float = 0.02, what: str = ""
) -> T:
    """`wait_for` for async tests: polls without blocking the event loop."""
    deadline = time.monotonic() + timeout
    while True:
        value = probe()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}: {value!r}")
        await asyncio.sleep(interval)


def port_open(port: int, host: str = "127.0.0.1") -> bool:
    with contextlib.suppress(OSError), socket.create_connection((host, port), timeout=0.2):
        return True
    return False


class Proc:
    """A child process with a log file, stopped by PID."""

    def __init__(self, argv: list[str], log_path: Path, env: Mapping[str, str] | None = None):
        self.argv = argv
        self.log_path = log_path
        self.env = dict(env) if env is not None else None
        self.popen: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        log = open(self.log_path, "ab")  # noqa: SIM115 - lives as long as the process
        self.popen = subprocess.Popen(
            self.argv,
            stdout=log,
            stderr=subprocess.STDOUT,
            env=self.env,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
        log.close()

    @property
    def pid(self) -> int:
        assert self.popen is not None
        return self.popen.pid

    @property
    def running(self) -> bool:
        return self.popen is not None and self.popen.poll() is None

    def signal(self, sig: int) -> None:
        if self.running:
            assert self.popen is not None
            os.kill(self.popen.pid, sig)

    def wait(self, timeout: float) -> int:
        assert self.popen is not None
        return self.popen.wait(timeout)

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

    def kill(self) -> None:
        if self.popen is not None and self.popen.poll() is None:
            self.popen.kill()
            self.popen.wait()

    def output(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""


class NatsServer(Proc):
    def __init__(self, workdir: Path, port: int | None = None, extra: list[str] | None = None):
        self.port = port or free_port()
        self.url = f"nats://127.0.0.1:{self.port}"
        super().__init__(
            [NATS_SERVER, "-a", "127.0.0.1", "-p", str(self.port), *(extra or [])],
            workdir / f"nats-{self.port}.log",
        )

    def start(self) -> None:
        super().start()
        wait_for(lambda: port_open(self.port) or not self.running, 10, what="nats-server")
        assert self.running, self.output()

    def restart(self) -> None:
        self.kill()
        wait_for(lambda: not port_open(self.port), 5, what="nats port to close")
        self.start()


class RedisServer(Proc):
    """redis-server on 127.0.0.1; with `tls` (redis-server's TLS options) it serves TLS
    on `port` and plain TCP on none."""

    def __init__(
        self,
        workdir: Path,
        port: int | None = None,
        password: str | None = None,
        extra: list[str] | None = None,
        tls: list[str] | None = None,
    ):
        self.port = port or free_port()
        self.password = password
        listen = (
            ["--port", "0", "--tls-port", str(self.port), *tls]
            if tls
            else ["--port", str(self.port)]
        )
        argv = [
            REDIS_SERVER,
            *listen,
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "no",
            "--dir",
            str(workdir),
        ]
        if password:
            argv += ["--requirepass", password]
        argv += extra or []
        super().__init__(argv, workdir / f"redis-{self.port}.log")

    def start(self) -> None:
        super().start()
        wait_for(lambda: port_open(self.port) or not self.running, 10, what="redis-server")
        assert self.running, self.output()

    def restart(self) -> None:
        self.kill()
        wait_for(lambda: not port_open(self.port), 5, what="redis port to close")
        self.start()


class Lobbyd(Proc):
    """A real lobbyd process (python -m lobby) with its own label directory."""

    def __init__(
        self, workdir: Path, env: Mapping[str, str], name: str, wrapper: Sequence[str] = ()
    ):
        """`wrapper`: a command that execs lobbyd, e.g. ["prlimit", "--nofile=1024:2048"]."""
        self.name = name
        self.port = int(env.get("PORT") or free_port())
        self.labels_path = Path(env.get("LABELS_PATH") or workdir / f"labels-{name}")
        full = {
            "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
            "HOSTNAME": name,
            "PORT": str(self.port),
            "LABELS_PATH": str(self.labels_path),
            "LOG_LEVEL": "DEBUG",
            **env,
        }
        full.setdefault("PYTHONUNBUFFERED", "1")
        scheme = "https" if full.get("TLS_CERT") else "http"
        self.url = f"{scheme}://127.0.0.1:{self.port}"
        self.token = full.get("TOKEN", "") or full.get("READ_TOKEN", "")
        argv = [*wrapper, sys.executable, "-m", "lobby"]
        super().__init__(argv, workdir / f"lobbyd-{name}.log", full)

    def client(self, timeout: float = 5.0) -> httpx.Client:
        """A client of this node's API; over HTTPS it does not check the certificate
        (tests that check it make their own clients)."""
        headers = {"Authorization": f"Token {self.token}"} if self.token else {}
        return httpx.Client(base_url=self.url, headers=headers, timeout=timeout, verify=False)

    def stats(self) -> dict[str, Any]:
        r = self.get("/v1/stats")
        r.raise_for_status()
        return r.json()  # type: ignore[no-any-return]

    def rejected(self) -> dict[str, int]:
        return self.stats()["packets"]["rejected_by_reason"]  # type: ignore[no-any-return]

    def get(self, path: str, **kw: Any) -> httpx.Response:
        with self.client() as c:
            return c.get(path, **kw)

    def request(self, method: str, path: str, **kw: Any) -> httpx.Response:
        with self.client() as c:
            return c.request(method, path, **kw)

    def hostnames(self) -> list[str]:
        r = self.get("/v1/discoveries")
        r.raise_for_status()
        return [d["hostname"] for d in r.json()]

    def start(self, ready: bool = True) -> None:
        super().start()
        if ready:
            self.wait_ready()

    def wait_ready(self, timeout: float = 15.0) -> None:
        def up() -> bool:
            if not self.running:
                raise AssertionError(f"lobbyd {self.name} exited:\n{self.output()}")
            return self.get("/v1/discovery").status_code in (200, 403)

        wait_for(up, timeout, what=f"lobbyd {self.name} API")


# -- agents and listeners (SPEC §20): tests/integration/test_agents*.py --------------


def hostnames(node: Lobbyd) -> list[str]:
    """The hostnames `node` lists; [] while it answers no list (an agent: 503)."""
    r = node.get("/v1/discoveries")
    return [d["hostname"] for d in r.json()] if r.status_code == 200 else []


def warm(listener: Lobbyd) -> bool:
    """Whether a listener takes agents' queries."""
    return bool(listener.stats()["queries"]["warm"])


def same_answer(a: httpx.Response, b: httpx.Response) -> bool:
    """Same status, body bytes and X-Lobby-Index."""
    return (
        a.status_code == b.status_code
        and a.content == b.content
        and a.headers.get("x-lobby-index") == b.headers.get("x-lobby-index")
    )


def nats_publish(url: str, subject: str, payloads: list[bytes]) -> None:
    """Publish raw bytes with the NATS text protocol: no client library in between."""
    host, port = url.removeprefix("nats://").rsplit(":", 1)
    with socket.create_connection((host, int(port)), timeout=5) as sock:
        sock.recv(4096)  # INFO
        parts = [b'CONNECT {"verbose":false,"pedantic":false}\r\n']
        for data in payloads:
            parts.append(b"PUB %s %d\r\n%s\r\n" % (subject.encode(), len(data), data))
        parts.append(b"PING\r\n")
        sock.sendall(b"".join(parts))
        buf = b""
        while b"PONG" not in buf:  # the server has processed every PUB before the PONG
            chunk = sock.recv(4096)
            if not chunk:
                raise ConnectionError(f"nats closed: {buf!r}")
            buf += chunk


def redis_publish(
    port: int, channel: str, payloads: list[bytes], password: str | None = None
) -> None:
    import redis

    client = redis.Redis(host="127.0.0.1", port=port, password=password)
    try:
        pipe = client.pipeline(transaction=False)
        for data in payloads:
            pipe.publish(channel, data)
        pipe.execute()
    finally:
        client.close()


def nats_capture(url: str, subject: str, wanted: Callable[[bytes], bool], timeout: float) -> bytes:
    """The first message on `subject` for which `wanted` is true (raw NATS protocol)."""
    host, port = url.removeprefix("nats://").rsplit(":", 1)
    deadline = time.monotonic() + timeout
    with socket.create_connection((host, int(port)), timeout=timeout) as sock:
        sock.recv(4096)  # INFO
        sock.sendall(b'CONNECT {"verbose":false}\r\nSUB %s 1\r\n' % subject.encode())
        buf = b""
        while time.monotonic() < deadline:
            sock.settimeout(max(0.05, deadline - time.monotonic()))
            chunk = sock.recv(65536)
            if not chunk:
                break
            buf += chunk
            while b"\r\n" in buf:
                line, rest = buf.split(b"\r\n", 1)
                if line.startswith(b"MSG "):
                    size = int(line.rsplit(b" ", 1)[1])
                    if len(rest) < size + 2:
                        break
                    data, buf = rest[:size], rest[size + 2 :]
                    if wanted(data):
                        return data
                    continue
                if line == b"PING":
                    sock.sendall(b"PONG\r\n")
                buf = rest
    raise AssertionError(f"no wanted message on {subject} within {timeout} s")


def redis_capture(
    port: int,
    channel: str,
    wanted: Callable[[bytes], bool],
    timeout: float,
    password: str | None = None,
) -> bytes:
    import redis

    client = redis.Redis(host="127.0.0.1", port=port, password=password)
    pubsub = client.pubsub(ignore_subscribe_messages=True)
    try:
        pubsub.subscribe(channel)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            message = pubsub.get_message(timeout=0.2)
            if message is not None and wanted(message["data"]):
                return bytes(message["data"])
    finally:
        pubsub.close()
        client.close()
    raise AssertionError(f"no wanted message on {channel} within {timeout} s")


class Broker:
    """One broker of either kind, as the contract suite sees it."""

    def __init__(self, kind: str, server: NatsServer | RedisServer, channel: str) -> None:
        self.kind = kind
        self.server = server
        self.channel = channel

    def env(self, **extra: str) -> dict[str, str]:
        if isinstance(self.server, NatsServer):
            base = {"NATS_URL": self.server.url, "NATS_DISCOVERY_CHANNEL": self.channel}
        else:
            base = {
                "DRIVER": "Redis",
                "REDIS_PORT": str(self.server.port),
                "REDIS_CHANNEL": self.channel,
            }
            if self.server.password:
                base["REDIS_PASSWORD"] = self.server.password
        return {**base, **extra}

    def publish(self, payloads: list[bytes]) -> None:
        if isinstance(self.server, NatsServer):
            nats_publish(self.server.url, self.channel, payloads)
        else:
            redis_publish(self.server.port, self.channel, payloads, self.server.password)

    def capture(self, wanted: Callable[[bytes], bool], timeout: float = 10.0) -> bytes:
        """The first message on the channel that `wanted` accepts."""
        if isinstance(self.server, NatsServer):
            return nats_capture(self.server.url, self.channel, wanted, timeout)
        return redis_capture(self.server.port, self.channel, wanted, timeout, self.server.password)


# -- fault-injection helpers (tests/faults) ------------------------------------------


@contextlib.contextmanager
def no_free_descriptors() -> Iterator[None]:
    """Within the block, this process cannot open a file or socket: EMFILE, for real.

    The soft RLIMIT_NOFILE is lowered to a little above what is open and the rest
    filled with /dev/null; both are undone on exit. Keep the block short and free of
    anything (pytest included) that needs a new descriptor.
    """
    import errno
    import resource

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    held: list[int] = []
    try:
        resource.setrlimit(resource.RLIMIT_NOFILE, (len(os.listdir("/proc/self/fd")) + 16, hard))
        try:
            while True:
                held.append(os.open(os.devnull, os.O_RDONLY))
        except OSError as exc:
            assert exc.errno == errno.EMFILE, exc
        yield
    finally:
        for fd in held:
            os.close(fd)
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


def rss_kb(pid: int) -> int:
    """Resident set size of a process, in KiB (VmRSS from /proc/PID/status)."""
    with open(f"/proc/{pid}/status") as fh:
        for line in fh:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise AssertionError(f"no VmRSS for pid {pid}")


def log_line_count(proc: Proc) -> int:
    return len(proc.output().splitlines())


class ApiPoller:
    """Polls the API of some lobbyd nodes in a background thread, recording every answer.

    Each sample is (monotonic time, node name, sorted hostnames or None on error,
    broker connected, expiry_paused, error text). Use as a context manager:

        with ApiPoller([a, b]) as poller:
            ... inject the fault ...
        assert poller.errors() == []
    """

    def __init__(self, nodes: list[Lobbyd], interval: float = 0.05) -> None:
        import threading

        self.nodes = nodes
        self.interval = interval
        self.samples: list[tuple[float, str, list[str] | None, bool | None, bool | None, str]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="api-poller", daemon=True)

    def _run(self) -> None:
        clients = {node.name: node.client(timeout=2.0) for node in self.nodes}
        try:
            while not self._stop.is_set():
                for node in self.nodes:
                    client = clients[node.name]
                    sample: tuple[float, str, list[str] | None, bool | None, bool | None, str]
                    try:
                        hosts = sorted(d["hostname"] for d in client.get("/v1/discoveries").json())
                        broker = client.get("/v1/stats").json()["broker"]
                        sample = (
                            time.monotonic(),
                            node.name,
                            hosts,
                            bool(broker["connected"]),
                            bool(broker["expiry_paused"]),
                            "",
                        )
                    except Exception as exc:
                        sample = (time.monotonic(), node.name, None, None, None, repr(exc))
                    self.samples.append(sample)
                self._stop.wait(self.interval)
        finally:
            for client in clients.values():
                client.close()

    def __enter__(self) -> ApiPoller:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(10)

    def errors(self) -> list[tuple[float, str, str]]:
        """Samples where the API did not answer."""
        return [(t, name, err) for t, name, hosts, _, _, err in self.samples if hosts is None]

    def views(self, name: str) -> list[list[str]]:
        return [hosts for _, n, hosts, _, _, _ in self.samples if n == name and hosts is not None]

    def missing(self, expected: list[str]) -> list[tuple[float, str, list[str]]]:
        """Samples whose view lacked one of `expected` (a peer disappeared)."""
        want = set(expected)
        return [
            (t, name, hosts)
            for t, name, hosts, _, _, _ in self.samples
            if hosts is not None and not want <= set(hosts)
        ]

    def longest_disconnect(self, name: str) -> float:
        """Longest span (seconds) during which `name` reported its broker link down."""
        longest = 0.0
        down_since: float | None = None
        for t, n, _, connected, _, _ in self.samples:
            if n != name or connected is None:
                continue
            if not connected and down_since is None:
                down_since = t
            elif connected and down_since is not None:
                longest = max(longest, t - down_since)
                down_since = None
        return longest

    def saw(self, name: str, *, connected: bool | None = None, paused: bool | None = None) -> bool:
        return any(
            n == name and (connected is None or c == connected) and (paused is None or p == paused)
            for _, n, hosts, c, p, _ in self.samples
            if hosts is not None
        )


def envelope(hostname: str, labels: list[str] | None = None, message: str = "hi") -> bytes:
    """A wire envelope as the Go implementation sends it."""
    import orjson

    return orjson.dumps(
        {
            "discovery": {"hostname": hostname, "labels": labels or [], "last_check": 0},
            "message": message,
        }
    )


class NatsCluster:
    """Three nats-servers on loopback routed into one cluster, each with monitoring."""

    def __init__(self, workdir: Path, procs: list[Proc], size: int = 3) -> None:
        self.cluster_ports = [free_port() for _ in range(size)]
        self.monitor_ports = [free_port() for _ in range(size)]
        self.servers: list[NatsServer] = []
        for i in range(size):
            routes = ",".join(
                f"nats://127.0.0.1:{p}" for j, p in enumerate(self.cluster_ports) if j != i
            )
            extra = [
                "--cluster",
                f"nats://127.0.0.1:{self.cluster_ports[i]}",
                "--routes",
                routes,
                "--cluster_name",
                "lobby",
                "-m",
                str(self.monitor_ports[i]),
            ]
            server = NatsServer(workdir, extra=extra)
            procs.append(server)
            self.servers.append(server)

    @property
    def urls(self) -> str:
        return ",".join(s.url for s in self.servers)

    def monitor(self, i: int, endpoint: str) -> Any:
        return httpx.get(f"http://127.0.0.1:{self.monitor_ports[i]}/{endpoint}", timeout=2).json()

    def start(self) -> None:
        for server in self.servers:
            server.start()
        size = len(self.servers)
        for i in range(size):
            wait_for(
                lambda i=i: self.monitor(i, "routez")["num_routes"] >= size - 1,  # type: ignore[misc]
                15,
                what=f"nats-server {i} routed to the others",
            )

    def server_of(self, client_name: str) -> int:
        """Index of the server a client (by its CONNECT name) is connected to."""
        for i, server in enumerate(self.servers):
            if not server.running:
                continue
            conns = self.monitor(i, "connz").get("connections") or []
            if any(c.get("name") == client_name for c in conns):
                return i
        raise AssertionError(f"{client_name} is connected to no server")


# -- several brokers, relays, Sentinel (SPEC §15) ---------------------------------------


class RedisSentinel(Proc):
    """One redis-sentinel watching `master` with short timeouts, config in `workdir`.

    With `password` it requires it (requirepass; Sentinels use it among themselves too);
    with a `username` too, that ACL user is the only one (also among the Sentinels).
    With `tls` (redis TLS options as config lines, without tls-port) it also serves TLS
    on `tls_port`; `port` stays plain, for the test's own questions."""

    def __init__(
        self,
        workdir: Path,
        master_port: int,
        name: str = "mymaster",
        password: str | None = None,
        tls: list[str] | None = None,
        username: str | None = None,
    ) -> None:
        self.port = free_port()
        self.username = username
        self.password = password
        self.tls_port = free_port() if tls else None
        conf = workdir / f"sentinel-{self.port}.conf"  # Sentinel rewrites it: a file of its own
        if username:
            extra = [
                "user default off",
                f"user {username} on >{password} allcommands allchannels",
                f"sentinel sentinel-user {username}",
                f"sentinel sentinel-pass {password}",
            ]
        else:
            extra = [f"requirepass {password}"] if password else []
        if tls:
            extra += [f"tls-port {self.tls_port}", *tls]
        conf.write_text(
            f"port {self.port}\n"
            "bind 127.0.0.1\n"
            f"dir {workdir}\n"
            f"sentinel monitor {name} 127.0.0.1 {master_port} 2\n"
            f"sentinel down-after-milliseconds {name} 1000\n"
            f"sentinel failover-timeout {name} 5000\n"
            f"sentinel parallel-syncs {name} 1\n" + "".join(f"{line}\n" for line in extra)
        )
        super().__init__([REDIS_SENTINEL, str(conf)], workdir / f"sentinel-{self.port}.log")

    def start(self) -> None:
        super().start()
        wait_for(lambda: port_open(self.port) or not self.running, 10, what="redis-sentinel")
        assert self.running, self.output()

    def failover(self, name: str = "mymaster", timeout: float = 30.0) -> None:
        """SENTINEL FAILOVER: promote a replica although the master is fine. While an
        earlier failover is still finishing (reconfiguring replicas, up to the
        failover-timeout) Sentinel answers INPROG, and NOGOODSLAVE until its own view of
        a replica that just started following is fresh (it reads INFO every 10 s):
        asked again until it takes it."""
        import redis

        client = redis.Redis(
            port=self.port, socket_timeout=5, username=self.username, password=self.password
        )
        deadline = time.monotonic() + timeout
        try:
            while True:
                try:
                    client.execute_command("SENTINEL", "FAILOVER", name)
                    return
                except redis.ResponseError as exc:
                    waiting = str(exc).startswith(("INPROG", "NOGOODSLAVE"))
                    if not waiting or time.monotonic() > deadline:
                        raise
                time.sleep(0.2)
        finally:
            client.close()

    def master(self, name: str = "mymaster") -> dict[str, Any]:
        import redis

        client = redis.Redis(
            port=self.port,
            decode_responses=True,
            socket_timeout=2,
            username=self.username,
            password=self.password,
        )
        try:
            master = client.sentinel_master(name)
        finally:
            client.close()
        assert isinstance(master, dict), master
        return master


class SentinelSet:
    """A Redis master, replicas and three Sentinels on loopback (all in `procs`)."""

    def __init__(
        self,
        workdir: Path,
        procs: list[Proc],
        replicas: int = 1,
        password: str | None = None,
        tls: list[str] | None = None,
        username: str | None = None,
    ) -> None:
        self.master = RedisServer(workdir)
        self.replicas = [
            RedisServer(workdir, extra=["--replicaof", "127.0.0.1", str(self.master.port)])
            for _ in range(replicas)
        ]
        self.sentinels = [
            RedisSentinel(workdir, self.master.port, password=password, tls=tls, username=username)
            for _ in range(3)
        ]
        procs += [self.master, *self.replicas, *self.sentinels]

    @property
    def addresses(self) -> str:
        return ",".join(f"127.0.0.1:{s.port}" for s in self.sentinels)

    @property
    def tls_addresses(self) -> str:
        return ",".join(f"127.0.0.1:{s.tls_port}" for s in self.sentinels)

    def start(self) -> None:
        self.master.start()
        for replica in self.replicas:
            replica.start()
        for sentinel in self.sentinels:
            sentinel.start()
        count = len(self.replicas)

        def ready() -> bool:  # every Sentinel knows the others and the replicas
            return all(
                int(m["num-other-sentinels"]) == 2 and int(m["num-slaves"]) == count
                for m in (s.master() for s in self.sentinels)
            )

        wait_for(ready, 30, interval=0.2, what="Sentinels know each other and the replicas")
        for replica in self.replicas:
            wait_for(functools.partial(self.synced, replica), 15, what="replica in sync")

    def synced(self, server: RedisServer) -> bool:
        """`server` replicates the current master."""
        import redis

        client = redis.Redis(port=server.port, socket_timeout=2)
        try:
            info = client.info("replication")
        finally:
            client.close()
        return info.get("master_link_status") == "up" and info.get("master_port") == (
            self.master_port()
        )

    def follow(self, replica: RedisServer, timeout: float) -> None:
        """Wait until `replica` replicates the current master.

        The Sentinels reconfigure the other replicas after a failover; under load that
        once took over 30 s in CI (Redis's replication, not lobbyd's). Past `timeout`
        the replica is told REPLICAOF directly, as an operator would, and what Redis
        said is printed; if it still does not follow, the test fails with that."""
        try:
            wait_for(lambda: self.synced(replica), timeout, what="the replica follows")
            return
        except AssertionError:
            print(f"\nSentinels did not move the replica in {timeout} s:\n{self.explain(replica)}")
        import redis

        client = redis.Redis(port=replica.port, socket_timeout=5)
        try:
            client.execute_command("REPLICAOF", "127.0.0.1", str(self.master_port()))
        finally:
            client.close()
        try:
            wait_for(lambda: self.synced(replica), timeout, what="the replica follows")
        except AssertionError as exc:
            raise AssertionError(f"{exc}\n{self.explain(replica)}") from None

    def explain(self, server: RedisServer) -> str:
        """What `server` and the Sentinels say of replication, for a failure message."""
        import redis

        client = redis.Redis(port=server.port, socket_timeout=2)
        try:
            info = client.info("replication")
        except redis.RedisError as exc:
            info = {"error": repr(exc)}
        finally:
            client.close()
        logs = "\n".join(s.output()[-1500:] for s in self.sentinels)
        return f"replica {server.port}: {info}\nSentinel logs (tails):\n{logs}"

    def master_port(self) -> int:
        """The master's port, as the first Sentinel tells it."""
        return int(self.sentinels[0].master()["port"])


class GoPeer:
    """A Go lobbyd on a Redis channel, as bytes: its "hi" every `every` s from a thread."""

    def __init__(
        self, port: int, channel: str, hostname: str, labels: list[str], every: float = 1.0
    ) -> None:
        import threading

        import redis

        self.client = redis.Redis(port=port, socket_timeout=2)
        self.channel = channel
        self.hostname = hostname
        self.labels = labels
        self.every = every
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"go-{hostname}", daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            with contextlib.suppress(Exception):
                self.client.publish(self.channel, envelope(self.hostname, self.labels))
            self._stop.wait(self.every)

    def start(self) -> GoPeer:
        self._thread.start()
        return self

    def stop(self, goodbye: bool = True) -> None:
        """Stop announcing, saying goodbye first if asked; a second stop does nothing."""
        if self._stop.is_set():
            return
        self._stop.set()
        self._thread.join(5)
        if goodbye:
            self.client.publish(self.channel, envelope(self.hostname, None, "goodbye"))
        self.client.close()


class Tap:
    """Records every message on one NATS subject or Redis channel, raw, from a thread.

    `packets()` is [(monotonic time, bytes)]. Nothing in between: a raw NATS socket, or
    redis-py's pubsub, so what is counted is what the broker carried.
    """

    def __init__(self, broker: NatsServer | RedisServer, channel: str) -> None:
        import threading

        self.broker = broker
        self.channel = channel
        self._packets: list[tuple[float, bytes]] = []
        self._ready = threading.Event()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="tap", daemon=True)

    def start(self) -> Tap:
        self._thread.start()
        assert self._ready.wait(10), "tap did not subscribe"
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(5)

    def packets(self, since: float = 0.0) -> list[tuple[float, bytes]]:
        return [(t, data) for t, data in list(self._packets) if t >= since]

    def docs(self, since: float = 0.0) -> list[dict[str, Any]]:
        import orjson

        return [orjson.loads(data) for _, data in self.packets(since)]

    def _run(self) -> None:
        if isinstance(self.broker, NatsServer):
            self._run_nats(self.broker)
        else:
            self._run_redis(self.broker)

    def _run_redis(self, server: RedisServer) -> None:
        import redis

        client = redis.Redis(port=server.port, password=server.password)
        pubsub = client.pubsub()
        pubsub.subscribe(self.channel)
        try:
            while not self._stop.is_set():
                message = pubsub.get_message(timeout=0.1)
                if message is None:
                    continue
                if message["type"] == "subscribe":
                    self._ready.set()
                elif message["type"] == "message":
                    self._packets.append((time.monotonic(), message["data"]))
        finally:
            pubsub.close()
            client.close()

    def _run_nats(self, server: NatsServer) -> None:
        host, port = server.url.removeprefix("nats://").rsplit(":", 1)
        with socket.create_connection((host, int(port)), timeout=5) as sock:
            sock.settimeout(0.1)
            connect = b'CONNECT {"verbose":false,"pedantic":false}\r\n'
            sock.sendall(connect + b"SUB %s 1\r\nPING\r\n" % self.channel.encode())
            buf = b""
            while not self._stop.is_set():
                try:
                    chunk = sock.recv(65536)
                except TimeoutError:
                    continue
                if not chunk:
                    return
                buf += chunk
                while True:
                    end = buf.find(b"\r\n")
                    if end < 0:
                        break
                    line = buf[:end]
                    if line.startswith(b"MSG "):
                        size = int(line.split()[-1])
                        if len(buf) < end + 2 + size + 2:
                            break  # the payload is not all here yet
                        data = buf[end + 2 : end + 2 + size]
                        self._packets.append((time.monotonic(), data))
                        buf = buf[end + 2 + size + 2 :]
                        continue
                    if line == b"PING":
                        sock.sendall(b"PONG\r\n")
                    elif line == b"PONG":  # the SUB is in place
                        self._ready.set()
                    buf = buf[end + 2 :]
