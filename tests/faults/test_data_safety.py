"""Data safety: the runtime label file under concurrency, SIGKILL and bad paths, and
expiry under wall-clock jumps.

What is acknowledged with 200 is on disk and announced; what is on disk is never torn.
"""

from __future__ import annotations

import asyncio
import random
import stat
import threading
import time
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest
from support import Lobbyd, until, wait_for

from lobby.core.clock import Clock
from lobby.core.model import label_problem
from lobby.daemon import Daemon

pytestmark = pytest.mark.fault


def nats_env(server, channel: str, **extra: str) -> dict[str, str]:
    return {"NATS_URL": server.url, "NATS_DISCOVERY_CHANNEL": channel, **extra}


def runtime_lines(path: Path) -> list[str]:
    """The runtime file, checked to be whole: valid labels, one per line, final newline."""
    text = path.read_text(encoding="utf-8")
    assert text == "" or text.endswith("\n"), f"torn runtime file: {text[-200:]!r}"
    lines = text.splitlines()
    for line in lines:
        assert label_problem(line) is None, f"torn or invalid line {line[:100]!r}"
    assert lines == sorted(set(lines)), "runtime file not sorted and unique"
    return lines


def own_announced(node: Lobbyd) -> list[str] | None:
    """This node's labels as it heard its own announcement (None while not heard)."""
    for d in node.get("/v1/discoveries").json():
        if d["hostname"] == node.name:
            return d["labels"]  # type: ignore[no-any-return]
    return None


async def test_200_concurrent_writes_end_in_exactly_the_expected_set(nats_server, channel, spawn):
    node = spawn("a.example", nats_env(nats_server, channel, LABELS="env:1"))
    doomed = [f"q:{j:03d}" for j in range(50)]
    seed = "\n".join(["keep:1", *doomed]) + "\n"
    assert node.request("POST", "/v1/labels", content=seed).status_code == 200
    added = [f"p:{i:03d}" for i in range(150)]

    async with httpx.AsyncClient(
        base_url=node.url, timeout=30, limits=httpx.Limits(max_connections=200)
    ) as http:
        requests = [http.post("/v1/labels", content=f"{label}\nshared:1\n") for label in added]
        requests += [http.request("DELETE", "/v1/labels", content=f"{q}\n") for q in doomed]
        random.Random(7).shuffle(requests)
        started = time.monotonic()
        answers = await asyncio.gather(*requests)
        took = time.monotonic() - started
    assert [(r.status_code, r.text) for r in answers] == [(200, "OK")] * 200
    print(f"\nFIGURE 200 concurrent label writes answered in {took:.2f} s")

    runtime = sorted(["keep:1", "shared:1", *added])
    assert runtime_lines(node.labels_path / "_runtime") == runtime
    assert node.get("/v1/discovery").json()["labels"] == sorted([*runtime, "env:1"])
    wait_for(lambda: own_announced(node) == sorted([*runtime, "env:1"]), 15, what="announced")
    leftovers = [p.name for p in node.labels_path.iterdir() if p.name != "_runtime"]
    assert leftovers == []


class Writer(threading.Thread):
    """Writes labels one request at a time and records what was acknowledged.

    `acked` maps each label to whether it is present per the last 200 answer about it;
    `in_flight` is the request that had no answer when lobbyd died (either outcome is
    then allowed for its labels).
    """

    def __init__(self, node: Lobbyd, wid: int, rnd: int, acked: dict[str, bool]) -> None:
        super().__init__(daemon=True)
        self.node = node
        self.prefix = f"w{wid}r{rnd}"
        self.acked = acked
        self.in_flight: tuple[str, list[str]] | None = None
        self.rng = random.Random(wid * 1000 + rnd)
        self.count = 0
        self.failure: str = ""

    def run(self) -> None:
        with httpx.Client(base_url=self.node.url, timeout=5) as http:
            while True:
                present = [label for label, here in self.acked.items() if here]
                if present and self.rng.random() < 0.4:
                    op, labels = "DELETE", [self.rng.choice(present)]
                else:
                    n = self.rng.randint(1, 3)
                    labels = [f"{self.prefix}:{self.count + k}" for k in range(n)]
                    self.count += n
                    op = "POST"
                self.in_flight = (op, labels)
                try:
                    r = http.request(op, "/v1/labels", content="\n".join(labels) + "\n")
                except httpx.TransportError:
                    return  # lobbyd died with this request in flight
                if (r.status_code, r.text) != (200, "OK"):
                    self.failure = f"{op} {labels}: {r.status_code} {r.text}"
                    return
                for label in labels:
                    self.acked[label] = op == "POST"
                self.in_flight = None


def test_sigkill_during_label_writes_loses_nothing_acknowledged(
    nats_server, channel, tmp_path, spawn
):
    labels_path = tmp_path / "labels-k"
    runtime = labels_path / "_runtime"
    env = nats_env(nats_server, channel, LABELS_PATH=str(labels_path), KEEP_ALIVE="30")
    state: set[str] = set()  # what the file must hold when the next lobbyd starts
    rng = random.Random(1313)
    writes = 0
    stale_seen = 0
    for rnd in range(10):
        stale = [p for p in labels_path.glob(".*")] if labels_path.exists() else []
        stale_seen += len(stale)
        node = spawn("k.example", env)
        assert not any(p.exists() for p in stale), "a restart leaves stale temporary files"
        # the restarted node announces exactly what was persisted
        want = sorted(state)
        wait_for(lambda n=node, w=want: own_announced(n) == w, 15, what="persisted labels")
        assert node.get("/v1/discovery").json()["labels"] == want

        acked_per_writer = [
            {label: True for label in state if label.startswith(f"w{w}")} for w in range(3)
        ]
        writers = [Writer(node, w, rnd, acked_per_writer[w]) for w in range(3)]
        for writer in writers:
            writer.start()
        time.sleep(rng.uniform(0.2, 0.8))
        node.kill()  # SIGKILL, mid-stream
        for writer in writers:
            writer.join(10)
            assert not writer.is_alive()
            assert writer.failure == ""
            writes += writer.count

        on_disk = set(runtime_lines(runtime)) if runtime.exists() else set()
        either: set[str] = set()
        expected: set[str] = set()
        for writer in writers:
            expected |= {label for label, here in writer.acked.items() if here}
            if writer.in_flight is not None:
                either |= set(writer.in_flight[1])
        missing = (expected - either) - on_disk
        assert missing == set(), f"round {rnd}: acknowledged labels lost: {sorted(missing)[:10]}"
        extra = on_disk - expected - either
        assert extra == set(), (
            f"round {rnd}: labels that were deleted or never sent: {sorted(extra)[:10]}"
        )
        state = on_disk
    stale_seen += sum(1 for _ in labels_path.glob(".*"))
    print(
        f"\nFIGURE SIGKILL x10: {writes} labels written, {len(state)} on disk, "
        f"{stale_seen} temporary file(s) left by kills (removed at the next start)"
    )
    node = spawn("k.example", env)
    wait_for(lambda: own_announced(node) == sorted(state), 15, what="persisted labels, last round")
    # a restart removes what interrupted writes left behind
    assert sorted(p.name for p in labels_path.iterdir()) == ["_runtime"]


def test_missing_labels_path_is_created_on_post(nats_server, channel, tmp_path, spawn):
    path = tmp_path / "not" / "there" / "yet"
    node = spawn("a.example", nats_env(nats_server, channel, LABELS_PATH=str(path)))
    assert not path.exists()
    r = node.request("POST", "/v1/labels", content="made:it\n")
    assert (r.status_code, r.text) == (200, "OK")
    runtime = path / "_runtime"
    assert runtime.read_text() == "made:it\n"
    assert stat.S_IMODE(runtime.stat().st_mode) == 0o644
    assert node.get("/v1/discovery").json()["labels"] == ["made:it"]
    wait_for(lambda: own_announced(node) == ["made:it"], 15, what="announced")


@pytest.mark.parametrize("where", ["under-a-regular-file", "under-proc"])
def test_unwritable_labels_path_answers_500_and_the_daemon_goes_on(
    nats_server, channel, tmp_path, spawn, where
):
    if where == "under-a-regular-file":
        blocker = tmp_path / "x" / "file"
        blocker.parent.mkdir()
        blocker.write_text("a regular file where a directory should be\n")
        path = blocker / "labels"
    else:
        path = Path(f"/proc/lobby-test-{tmp_path.name}/labels")  # root cannot mkdir here
    node = spawn(
        "a.example",
        nats_env(nats_server, channel, LABELS_PATH=str(path), KEEP_ALIVE="1", LABELS="env:1"),
    )
    sent = node.get("/v1/stats").json()["announcements"]["sent"]
    r = node.request("POST", "/v1/labels", content="new:1\n")
    assert r.status_code == 500, (r.status_code, r.text)
    assert r.headers["content-type"].startswith("text/plain")
    assert "cannot write runtime labels" in r.text and str(path.parent.name) in r.text, r.text
    assert len(r.text) < 400
    # deleting what is not there changes nothing, so there is nothing to write
    r = node.request("DELETE", "/v1/labels", content="new:1\n")
    assert (r.status_code, r.text) == (200, "OK")
    # ...and goes on: answers, announces, keeps its other labels
    assert node.get("/v1/discovery").json()["labels"] == ["env:1"]
    wait_for(lambda: node.get("/v1/stats").json()["announcements"]["sent"] >= sent + 2, 15)
    wait_for(lambda: own_announced(node) == ["env:1"], 15)
    assert node.running


# -- wall-clock jumps (in process: the system clock cannot be changed here) ------------


class WallClock:
    """time.time() plus an offset that the test moves by hours."""

    def __init__(self) -> None:
        self.real = time.time
        self.offset = 0.0

    def __call__(self) -> float:
        return self.real() + self.offset


async def hold(probe: Callable[[], bool], seconds: float) -> None:
    """`probe` stays true for `seconds` (checked every 10 ms)."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        assert probe(), "condition broke"
        await asyncio.sleep(0.01)


@pytest.fixture
def cluster(memory_daemons) -> tuple[WallClock, Callable[[str], Daemon]]:
    wall = WallClock()
    clock = Clock(wall=wall)

    def start(name: str) -> Daemon:
        return memory_daemons(name, clock=clock, KEEP_ALIVE="1", TTL="3", CLEAN_EVERY="1")

    return wall, start


def hosts(node: Daemon) -> list[str]:
    return [d.hostname for d in node.registry.discoveries()]


async def test_wall_clock_jumps_neither_expire_nor_resurrect(cluster):
    wall, start = cluster
    a, b, c = start("a"), start("b"), start("c")
    everyone = ["a", "b", "c"]
    await until(lambda: all(hosts(n) == everyone for n in (a, b, c)))
    TTL = 3

    # forward by ten hours, then back by a day: nobody expires, last_check follows
    for jump in (10 * 3600, -24 * 3600):
        wall.offset += jump
        await hold(lambda: all(hosts(n) == everyone for n in (a, b, c)), TTL + 1)
        for d in a.registry.discoveries():
            assert abs(d.last_check - wall()) < 3, (jump, d)

    # c goes silent (alive, but its announcements are lost) and the wall clock jumps
    # forward a day at once: c must not expire early, but after TTL of real time
    async def lost(topic: str, data: bytes) -> None:
        return None

    c.driver.publish = lost  # type: ignore[union-attr, method-assign]
    silent_since = time.monotonic()
    wall.offset += 24 * 3600
    await hold(lambda: hosts(a) == everyone and hosts(b) == everyone, 1.0)
    await until(lambda: hosts(a) == ["a", "b"] and hosts(b) == ["a", "b"], TTL + 2)
    took = time.monotonic() - silent_since
    assert took > 1.0  # TTL counted on the monotonic clock, not the jumped wall clock

    # and back by two days: an expired node stays expired
    wall.offset -= 48 * 3600
    await hold(lambda: hosts(a) == ["a", "b"] and hosts(b) == ["a", "b"], 1.5)
    print(f"\nFIGURE silent node expired {took:.2f} s after its last announcement (TTL {TTL})")
