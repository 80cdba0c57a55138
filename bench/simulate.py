#!/usr/bin/env python3
"""Simulated Go peers: many nodes announcing themselves on a real broker, fast.

This is a separate process so that it never competes with the orchestrator's
interpreter, and it does not use lobby's code: it writes the envelopes a Go
`lobbyd` 1.5 would write, byte for byte, straight onto a socket.

- NATS: the text protocol, `PUB <subject> <n>\\r\\n<payload>\\r\\n`, pipelined; a
  `PING` after a batch comes back as `PONG` once the server has processed every
  `PUB` before it, which is how a phase knows the broker has taken everything.
- Redis: RESP `PUBLISH` commands, pipelined; a reader thread counts the integer
  replies, so a phase ends when Redis has answered every command.

Every frame is encoded once up front; sending is joining a slice of ready frames
and one `sendall`, so one Python process can push several hundred thousand
packets a second, far more than one lobbyd consumes (`run.py` measures that).

Control: one JSON command per line on stdin, JSON events on stdout.

    {"cmd": "fill", "start": 0, "stop": 50000, "rate": 0}
        announce nodes [start, stop) once each (rate 0: as fast as possible)
    {"cmd": "run", "n": 10000, "rate": 40000, "seconds": 4}
        cycle through nodes [0, n) at `rate` packets/s for `seconds`
    {"cmd": "keepalive", "n": 1000, "every": 5, "flip": true, "answer_sync": false}
        in the background: every node every `every` seconds, spread evenly, and
        (flip) one node's labels changed once a second; until {"cmd": "stop"}.
        With answer_sync the nodes act as Python peers: a message on the sync
        topic (a fresh node's fast-join request) makes each of them announce
        itself within 0.2 s. Without it they act as Go peers and ignore it.
    {"cmd": "goodbye", "start": 0, "stop": 10}
    {"cmd": "count"}
        how many packets the broker has taken so far (a PING after reading the count)
    {"cmd": "prepare_run", "n": 10000, "rate": 40000, "seconds": 4}
        (with --signing-key) sign the frames of the next `run` now, so that signing
        them costs the run nothing
    {"cmd": "quit"}

With `--signing-key KEY` (base64 of 32 bytes) every packet is signed as SPEC §13.1
says, by code written here from the SPEC's words (not lobby's): a `ts` in
milliseconds and `sig` = KEYID.MAC. A signed packet cannot be sent twice (the second
copy is a replay), so `run` sends frames signed for it: in round r of the cycle
through the N nodes every node's `ts` is base + r. `keepalive` is not offered signed.

Each command answers {"event": "started", "t0": ...} when its first packet goes
out and {"event": "done", ...} when the broker has taken the last one. Times are
time.monotonic(), which on Linux is one clock for every process.
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import hmac
import json
import random
import socket
import sys
import threading
import time
from collections.abc import Callable
from typing import Any, Protocol

import orjson

DOMAIN = "example"
SERVICES = ("web", "db", "smtp", "cache", "queue", "api", "dns", "lb")
LOCATIONS = ("prague", "brno", "frankfurt", "amsterdam", "london", "vienna")
ROLES = ("primary", "replica", "worker", "edge")
FLIP_LABEL = "state:maintenance"
TICK = 0.002  # pacing granularity, seconds
MAX_BATCH = 4000  # frames per sendall
SYNC_SPREAD = 0.2  # Python peers answer a sync request within this many seconds


def hostname(i: int) -> str:
    return f"node-{i:05d}.{DOMAIN}"


def node_labels(i: int) -> list[str]:
    """5-10 labels of the kinds real nodes carry; deterministic per node."""
    rnd = random.Random(i)
    ip4 = f"10.{(i >> 16) & 255}.{(i >> 8) & 255}.{i & 255}"
    services = rnd.sample(SERVICES, rnd.choice((1, 1, 2)))
    labels = {
        f"location:{rnd.choice(LOCATIONS)}",
        f"public_ip4:{ip4}",
        f"role:{rnd.choice(ROLES)}",
        "prometheus:node",
        "prometheus:node:port:9100",
        *(f"service:{s}" for s in services),
    }
    if rnd.random() < 0.5:
        labels.add(f"backup:/srv/{services[0]}")
    if rnd.random() < 0.4:
        labels.add(f"public_ip6:2a03:3b40:{i >> 16:x}::{i & 0xFFFF:x}")
    if rnd.random() < 0.3:
        labels.add(f"prometheus:node:location:{rnd.choice(LOCATIONS)}")
    return sorted(labels)


def app_label(i: int, size: int) -> str:
    """`--app-size`: node i belongs to app i // size, a service of `size` nodes."""
    return f"app:app-{i // size:05d}"


def envelope(host: str, labels: list[str] | None, message: str = "hi") -> bytes:
    """What Go lobby 1.5 publishes: compact JSON in struct field order."""
    return orjson.dumps(
        {
            "discovery": {"hostname": host, "labels": labels, "last_check": 0},
            "message": message,
        }
    )


class Signer:
    """SPEC §13.1, from its words: sig = KEYID "." base64url(HMAC-SHA256(key, canonical))."""

    def __init__(self, key_text: str) -> None:
        key = base64.b64decode(key_text, validate=True)
        self.keyid = hashlib.sha256(key).hexdigest()[:8]
        self.state = hmac.new(key, digestmod=hashlib.sha256)
        self.next_ts = 0

    def timestamps(self, rounds: int) -> int:
        """A base ts for `rounds` rounds: base + r is round r's ts, never reused."""
        base = max(int(time.time() * 1000), self.next_ts)
        self.next_ts = base + rounds
        return base

    def envelope(self, host: str, labels: list[str] | None, message: str, ts: int) -> bytes:
        text = f"{message}\n{host}\n{ts}\n" + "\n".join(sorted(labels or []))
        h = self.state.copy()
        h.update(text.encode())
        mac = base64.urlsafe_b64encode(h.digest()).rstrip(b"=").decode()
        return orjson.dumps(
            {
                "discovery": {"hostname": host, "labels": labels, "last_check": 0},
                "message": message,
                "ts": ts,
                "sig": f"{self.keyid}.{mac}",
            }
        )


class Wire(Protocol):
    def frame(self, payload: bytes) -> bytes: ...

    def on_sync(self, callback: Callable[[], None]) -> None:
        """Call `callback` for every message on the sync topic (a fast-join request)."""
        ...

    def send(self, data: bytes, frames: int) -> None: ...

    def sync(self, timeout: float = 30.0) -> None: ...

    def close(self) -> None: ...


class NatsWire:
    """NATS text protocol over one TCP connection."""

    def __init__(self, url: str, subject: str) -> None:
        host, port = url.removeprefix("nats://").rsplit(":", 1)
        self.sock = socket.create_connection((host, int(port)), timeout=10)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4 << 20)
        self.subject = subject.encode()
        info = b""
        while not info.endswith(b"\r\n"):
            chunk = self.sock.recv(4096)
            if not chunk:
                raise ConnectionError("nats-server closed the connection")
            info += chunk
        if not info.startswith(b"INFO "):
            raise ConnectionError(f"unexpected greeting: {info[:80]!r}")
        self.sock.settimeout(None)
        self.lock = threading.Lock()
        self.pongs = 0
        self.pong = threading.Condition()
        self.error = ""
        self.sync_subject = subject.encode() + b".sync"
        self._on_sync: Callable[[], None] | None = None
        self.send(b'CONNECT {"verbose":false,"pedantic":false,"name":"lobby-bench-sim"}\r\n', 0)
        threading.Thread(target=self._read, daemon=True).start()
        self.sync()

    def frame(self, payload: bytes) -> bytes:
        return b"PUB %s %d\r\n%s\r\n" % (self.subject, len(payload), payload)

    def send(self, data: bytes, frames: int) -> None:
        with self.lock:
            self.sock.sendall(data)

    def _read(self) -> None:
        buf = b""
        while True:
            try:
                chunk = self.sock.recv(65536)
            except OSError:
                chunk = b""
            if not chunk:
                with self.pong:
                    self.error = self.error or "connection closed"
                    self.pong.notify_all()
                return
            buf += chunk
            while b"\r\n" in buf:
                line, rest = buf.split(b"\r\n", 1)
                if line.startswith(b"MSG "):  # MSG <subject> <sid> [reply] <size>
                    size = int(line.rsplit(b" ", 1)[1])
                    if len(rest) < size + 2:
                        break  # the payload is not all here yet
                    buf = rest[size + 2 :]
                    if self._on_sync is not None:
                        self._on_sync()
                    continue
                buf = rest
                if line == b"PING":
                    self.send(b"PONG\r\n", 0)
                elif line == b"PONG":
                    with self.pong:
                        self.pongs += 1
                        self.pong.notify_all()
                elif line.startswith(b"-ERR"):
                    with self.pong:
                        self.error = line.decode(errors="replace")
                        self.pong.notify_all()

    def on_sync(self, callback: Callable[[], None]) -> None:
        if self._on_sync is None:
            self.send(b"SUB %s 1\r\n" % self.sync_subject, 0)
        self._on_sync = callback
        self.sync()

    def sync(self, timeout: float = 30.0) -> None:
        with self.pong:
            want = self.pongs + 1
        self.send(b"PING\r\n", 0)
        with self.pong:
            if not self.pong.wait_for(lambda: self.pongs >= want or bool(self.error), timeout):
                raise TimeoutError("nats-server did not answer PING")
            if self.error:
                raise ConnectionError(f"nats-server: {self.error}")

    def close(self) -> None:
        self.sock.close()


class RedisWire:
    """RESP PUBLISH commands over one TCP connection; replies counted, not parsed."""

    def __init__(self, host: str, port: int, channel: str) -> None:
        self.sock = socket.create_connection((host, port), timeout=10)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4 << 20)
        self.sock.settimeout(None)
        ch = channel.encode()
        self.address = (host, port)
        self.sync_channel = ch + b":sync"
        self._on_sync: Callable[[], None] | None = None
        self.prefix = b"*3\r\n$7\r\nPUBLISH\r\n$%d\r\n%s\r\n" % (len(ch), ch)
        self.lock = threading.Lock()
        self.sent = 0
        self.replies = 0
        self.cond = threading.Condition()
        self.error = ""
        threading.Thread(target=self._read, daemon=True).start()
        self.send(b"*1\r\n$4\r\nPING\r\n", 1)  # +PONG: one line, like an integer reply
        self.sync()

    def frame(self, payload: bytes) -> bytes:
        return b"%s$%d\r\n%s\r\n" % (self.prefix, len(payload), payload)

    def send(self, data: bytes, frames: int) -> None:
        with self.lock:
            self.sent += frames
            self.sock.sendall(data)

    def _read(self) -> None:
        while True:
            try:
                chunk = self.sock.recv(1 << 16)
            except OSError:
                chunk = b""
            with self.cond:
                if not chunk:
                    self.error = self.error or "connection closed"
                elif b"-" in chunk and b"\n-" in b"\n" + chunk:
                    self.error = chunk.decode(errors="replace")[:200]
                self.replies += chunk.count(b"\n")  # every reply is one line
                self.cond.notify_all()
            if not chunk:
                return

    def on_sync(self, callback: Callable[[], None]) -> None:
        first = self._on_sync is None
        self._on_sync = callback
        if not first:
            return
        sub = socket.create_connection(self.address, timeout=10)
        sub.sendall(
            b"*2\r\n$9\r\nSUBSCRIBE\r\n$%d\r\n%s\r\n" % (len(self.sync_channel), self.sync_channel)
        )
        reply = b""
        while reply.count(b"\r\n") < 6:  # *3 $9 subscribe $n channel :1
            reply += sub.recv(4096)
        sub.settimeout(None)
        threading.Thread(target=self._read_sync, args=(sub,), daemon=True).start()

    def _read_sync(self, sub: socket.socket) -> None:
        # every push is *3 $7 message $n <channel> $n <payload>: count the markers
        marker = b"$7\r\nmessage\r\n"
        tail = b""
        while True:
            try:
                chunk = sub.recv(65536)
            except OSError:
                return
            if not chunk:
                return
            data = tail + chunk
            for _ in range(data.count(marker)):
                if self._on_sync is not None:
                    self._on_sync()
            tail = data[-(len(marker) - 1) :]

    def sync(self, timeout: float = 30.0) -> None:
        with self.lock:
            want = self.sent
        with self.cond:
            if not self.cond.wait_for(lambda: self.replies >= want or bool(self.error), timeout):
                raise TimeoutError(f"redis answered {self.replies} of {want} commands")
            if self.error:
                raise ConnectionError(f"redis: {self.error}")

    def close(self) -> None:
        self.sock.close()


def emit(event: dict[str, Any]) -> None:
    sys.stdout.write(json.dumps(event) + "\n")
    sys.stdout.flush()


class Simulator:
    def __init__(self, wire: Wire, signer: Signer | None = None, app_size: int = 0) -> None:
        self.wire = wire
        self.signer = signer
        self.app_size = app_size
        self.sent_total = 0  # every packet handed to the broker so far (`count`)
        self.run_frames: list[bytes] | None = None
        self.frames: list[bytes] = []
        self.flipped: set[int] = set()
        self._keepalive: threading.Thread | None = None
        self._stop = threading.Event()
        self._answer_sync: tuple[list[bytes], bool] = ([], False)
        self._answering = threading.Event()

    def labels(self, i: int) -> list[str]:
        labels = node_labels(i)
        if self.app_size:
            labels = sorted([*labels, app_label(i, self.app_size)])
        return labels

    def ensure(self, n: int) -> None:
        frame = self.wire.frame
        signer = self.signer
        ts = signer.timestamps(1) if signer is not None and len(self.frames) < n else 0
        for i in range(len(self.frames), n):
            if signer is None:
                self.frames.append(frame(envelope(hostname(i), self.labels(i))))
            else:  # sent once, by `fill`
                self.frames.append(frame(signer.envelope(hostname(i), self.labels(i), "hi", ts)))

    def prepare_run(self, n: int, rate: float, seconds: float) -> dict[str, Any]:
        """The frames of the next signed `run`: round r of the cycle carries ts base + r."""
        signer = self.signer
        if signer is None:
            return {"frames": 0}
        t = time.monotonic()
        total = int(rate * seconds)
        rounds = -(-total // n)
        base = signer.timestamps(rounds)
        labels = [self.labels(i) for i in range(min(n, total))]
        frame, sign = self.wire.frame, signer.envelope
        self.run_frames = [
            frame(sign(hostname(k % n), labels[k % n], "hi", base + k // n)) for k in range(total)
        ]
        return {"frames": total, "seconds": time.monotonic() - t}

    def _frame_of(self, i: int) -> bytes:
        labels = self.labels(i)
        if i in self.flipped:
            labels = sorted([*labels, FLIP_LABEL])
        return self.wire.frame(envelope(hostname(i), labels))

    def paced(
        self,
        frames: list[bytes],
        total: int,
        rate: float,
        started: Callable[[float], None],
        stop: threading.Event | None = None,
        between: Callable[[float], None] | None = None,
        pos: int = 0,
    ) -> tuple[float, int]:
        """Send `total` frames (-1: until `stop`) cycling through `frames` from `pos`,
        at `rate` per second (0: flat out). `frames` may change while this runs."""
        n = len(frames)
        sent = 0
        t0 = time.monotonic()
        started(t0)
        while sent < total or total < 0:
            if stop is not None and stop.is_set():
                break
            now = time.monotonic()
            if between is not None:
                between(now)
            due = sent + MAX_BATCH if rate <= 0 else int(rate * (now - t0)) + 1
            if total >= 0:
                due = min(due, total)
            k = min(due - sent, MAX_BATCH)
            if k <= 0:
                time.sleep(TICK)
                continue
            chunk: list[bytes] = []
            left = k
            while left:  # a batch may wrap around the ring, even several times
                take = min(left, n - pos)
                chunk += frames[pos : pos + take]
                pos = (pos + take) % n
                left -= take
            self.wire.send(b"".join(chunk), k)
            sent += k
            self.sent_total += k
        return t0, sent

    # -- commands -------------------------------------------------------------------

    def fill(self, start: int, stop: int, rate: float = 0.0) -> dict[str, Any]:
        self.ensure(stop)
        frames = [
            self._frame_of(i) if i in self.flipped else self.frames[i] for i in range(start, stop)
        ]
        t0, sent = self.paced(
            frames, len(frames), rate, lambda t: emit({"event": "started", "t0": t})
        )
        t_sent = time.monotonic()
        self.wire.sync()
        return {"t0": t0, "t_sent": t_sent, "t_acked": time.monotonic(), "sent": sent}

    def run(self, n: int, rate: float, seconds: float) -> dict[str, Any]:
        self.ensure(n)
        total = int(rate * seconds) if rate > 0 else -1
        frames = self.frames[:n]
        if self.signer is not None:
            if total < 0:
                raise ValueError("a signed run needs a rate")
            if self.run_frames is None or len(self.run_frames) != total:
                self.prepare_run(n, rate, seconds)
            assert self.run_frames is not None
            frames, self.run_frames = self.run_frames, None
        deadline = threading.Event()
        if total < 0:
            threading.Timer(seconds, deadline.set).start()
        t0, sent = self.paced(
            frames, total, rate, lambda t: emit({"event": "started", "t0": t}), deadline
        )
        t_sent = time.monotonic()
        self.wire.sync()
        t_acked = time.monotonic()
        return {
            "t0": t0,
            "t_sent": t_sent,
            "t_acked": t_acked,
            "sent": sent,
            "achieved": sent / max(t_sent - t0, 1e-9),
        }

    def goodbye(self, start: int, stop: int) -> dict[str, Any]:
        signer = self.signer
        ts = signer.timestamps(1) if signer is not None else 0
        data = b"".join(
            self.wire.frame(
                envelope(hostname(i), None, "goodbye")
                if signer is None
                else signer.envelope(hostname(i), None, "goodbye", ts)
            )
            for i in range(start, stop)
        )
        emit({"event": "started", "t0": time.monotonic()})
        self.wire.send(data, stop - start)
        self.wire.sync()
        return {"sent": stop - start}

    def keepalive(
        self, n: int, every: float, flip: bool, answer_sync: bool = False
    ) -> dict[str, Any]:
        """Every node every `every` seconds; with `answer_sync` the nodes behave like
        Python peers and announce themselves within SYNC_SPREAD of a sync request."""
        if self.signer is not None:
            raise ValueError("keepalive is not offered with --signing-key")
        self.stop_keepalive()
        self.ensure(n)
        frames = [self._frame_of(i) if i in self.flipped else self.frames[i] for i in range(n)]
        self._stop = threading.Event()
        stop = self._stop
        self._answer_sync = (frames, answer_sync)
        if answer_sync:
            self.wire.on_sync(self._sync_requested)
        state = {"next_flip": time.monotonic() + 1.0, "flips": 0}

        def between(now: float) -> None:
            if not flip or now < state["next_flip"]:
                return
            state["next_flip"] += 1.0
            i = int(state["flips"]) % n
            state["flips"] += 1
            self.flipped ^= {i}
            frames[i] = self._frame_of(i)
            self.wire.send(frames[i], 1)  # a label change is announced at once
            self.sent_total += 1

        def loop() -> None:
            try:  # start at a random node so that restarts do not favour node 0
                self.paced(
                    frames, -1, n / every, lambda t: None, stop, between, random.randrange(n)
                )
            except OSError as exc:
                emit({"event": "error", "error": f"keepalive: {exc}"})

        self._keepalive = threading.Thread(target=loop, daemon=True)
        self._keepalive.start()
        emit({"event": "started", "t0": time.monotonic()})
        return {"rate": n / every}

    def _sync_requested(self) -> None:
        frames, answer = self._answer_sync
        if not answer or self._answering.is_set():
            return  # requests arriving meanwhile share the one answer, as in lobbyd
        self._answering.set()
        threading.Thread(target=self._answer, args=(frames,), daemon=True).start()

    def _answer(self, frames: list[bytes]) -> None:
        """Every node announces itself once, at a random moment within SYNC_SPREAD."""
        order = list(range(len(frames)))
        random.shuffle(order)
        ticks = 20
        t0 = time.monotonic()
        try:
            for k in range(ticks):
                part = order[k * len(order) // ticks : (k + 1) * len(order) // ticks]
                self.wire.send(b"".join(frames[i] for i in part), len(part))
                time.sleep(max(0.0, t0 + (k + 1) * SYNC_SPREAD / ticks - time.monotonic()))
        finally:
            self._answering.clear()

    def count(self) -> dict[str, Any]:
        """How many packets the broker has taken from us so far (`sent` was read before
        the PING, so the broker had all of them when the PONG came)."""
        sent = self.sent_total
        self.wire.sync()
        return {"sent": sent, "t": time.monotonic()}

    def stop_keepalive(self) -> dict[str, Any]:
        self._answer_sync = ([], False)
        if self._keepalive is not None:
            self._stop.set()
            self._keepalive.join()
            self._keepalive = None
            self.wire.sync()
        return {}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--broker", choices=("nats", "redis"), required=True)
    parser.add_argument("--address", required=True, help="nats://host:port or host:port")
    parser.add_argument("--channel", required=True, help="NATS subject or Redis channel")
    parser.add_argument("--signing-key", default="", help="sign every packet (SPEC §13.1)")
    parser.add_argument(
        "--app-size", type=int, default=0, help="node i also has the label app:app-<i // SIZE>"
    )
    args = parser.parse_args()
    if args.broker == "nats":
        wire: Wire = NatsWire(args.address, args.channel)
    else:
        host, port = args.address.rsplit(":", 1)
        wire = RedisWire(host, int(port), args.channel)
    sim = Simulator(wire, Signer(args.signing_key) if args.signing_key else None, args.app_size)
    emit({"event": "ready"})
    for line in sys.stdin:
        if not line.strip():
            continue
        cmd = json.loads(line)
        name = cmd.pop("cmd")
        try:
            if name == "quit":
                sim.stop_keepalive()
                emit({"event": "done"})
                break
            if name == "stop":
                result = sim.stop_keepalive()
            elif name == "count":
                result = sim.count()
            elif name == "prepare":
                t = time.monotonic()
                sim.ensure(int(cmd["n"]))
                result = {"seconds": time.monotonic() - t}
            else:
                result = getattr(sim, name)(**cmd)
        except Exception as exc:
            emit({"event": "error", "error": f"{type(exc).__name__}: {exc}"})
            continue
        emit({"event": "done", **result})
    wire.close()


if __name__ == "__main__":
    main()
