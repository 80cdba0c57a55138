"""SIGKILL during template writes (SPEC §18): the destination is never torn.

A lobbyd rewrites a large template (about 4 MB) over and over, as fast as a stream
of changes on the broker makes it (TEMPLATE_WAIT=0s:0s), and is killed with SIGKILL
at a random moment, several times. After every kill the destination must be exactly
one complete render; the temporary files a kill leaves are removed at the next start.
"""

from __future__ import annotations

import random
import threading
import time
from pathlib import Path
from typing import Any

import pytest
from support import envelope, nats_publish, wait_for

pytestmark = pytest.mark.fault

LINES = 100_000
LINE = " a line of a large rendered file"
BIG = """\
{% set stamp = (label_values("f.example", "n") or ["none"]) | first %}
BEGIN {{ stamp }}
{{ (stamp ~ "LINE\n") * COUNT }}END {{ stamp }}
""".replace("LINE", LINE).replace("COUNT", str(LINES))
ROUNDS = 6


class Changes(threading.Thread):
    """Publishes a new label for f.example every few milliseconds until stopped."""

    def __init__(self, url: str, channel: str) -> None:
        super().__init__(name="changes", daemon=True)
        self.url, self.channel = url, channel
        self.stop = threading.Event()
        self.sent = 0
        self.failure = ""

    def run(self) -> None:
        while not self.stop.is_set():
            try:
                nats_publish(self.url, self.channel, [envelope("f.example", [f"n:{self.sent}"])])
            except OSError as exc:
                self.failure = repr(exc)
                return
            self.sent += 1
            self.stop.wait(0.005)  # the stream's pace


def whole(path: Path) -> str:
    """The stamp of the one complete render `path` holds; fails on anything else."""
    text = path.read_text()
    assert text.endswith("\n"), f"torn: ends with {text[-80:]!r}"
    lines = text.split("\n")[:-1]
    assert lines[0].startswith("BEGIN "), f"torn: starts with {lines[0][:80]!r}"
    stamp = lines[0].removeprefix("BEGIN ")
    assert len(lines) == LINES + 2, f"torn: {len(lines)} lines"
    assert lines[-1] == f"END {stamp}", f"torn: ends with {lines[-1][:80]!r}"
    assert set(lines[1:-1]) == {stamp + LINE}, "torn: mixed renders"
    return stamp


def temp_files(out: Path) -> set[str]:
    return {p.name for p in out.parent.glob(f".{out.name}.*.tmp")}


def template_writes(node: Any) -> int:
    return int(node.get("/v1/stats").json()["templates"]["templates"][0]["writes"])


def test_sigkill_during_template_writes_never_tears_the_destination(
    nats_server, channel, spawn, tmp_path
):
    big = tmp_path / "big.j2"
    big.write_text(BIG)
    out = tmp_path / "render" / "big.conf"
    env = {
        "NATS_URL": nats_server.url,
        "NATS_DISCOVERY_CHANNEL": channel,
        "TEMPLATES": f"{big}:{out}",
        "TEMPLATE_WAIT": "0s:0s",
    }
    changes = Changes(nats_server.url, channel)
    changes.start()
    stamps: list[str] = []
    left: set[str] = set()
    left_total = 0
    try:
        for _ in range(ROUNDS):
            node = spawn("k.example", env)
            # rewriting, over and over: a fresh stamp from this run (the first is "none")
            wait_for(lambda: template_writes(node) >= 2, 30, what="repeated rewrites")  # noqa: B023
            assert not (left & temp_files(out)), "a killed write's temporary file survived"
            time.sleep(random.uniform(0.0, 0.3))  # a random moment of the rewrites
            node.kill()
            stamps.append(whole(out))
            left = temp_files(out)
            left_total += len(left)
            assert changes.failure == ""
    finally:
        changes.stop.set()
        changes.join(5)
    assert all(stamp.isdigit() for stamp in stamps)
    print(
        f"\nFIGURE template SIGKILL x{ROUNDS}: {changes.sent} changes published, "
        f"{left_total} temporary file(s) left by kills (removed at the next start)"
    )
