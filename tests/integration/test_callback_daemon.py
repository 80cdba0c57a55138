"""CALLBACK in a real lobbyd (SPEC §8): a script renders a file from the discoveries.

The script gets GET /v1/discoveries on stdin and writes one hostname per line,
atomically, the way a config renderer would. We poll the file, never the clock.
"""

from __future__ import annotations

import shlex
import signal
import sys
from pathlib import Path

import pytest
from support import wait_for

RENDER = """\
import json, os, sys
out = sys.argv[1]
nodes = json.load(sys.stdin)
with open(out + ".tmp", "w") as f:
    for node in nodes:
        f.write(node["hostname"] + "\\n")
os.replace(out + ".tmp", out)
print("rendered", len(nodes), "nodes")
"""


@pytest.fixture
def rendered(tmp_path: Path) -> tuple[str, Path]:
    """(CALLBACK command, the file it renders); the path has a space, as paths do."""
    script = tmp_path / "render hosts.py"
    script.write_text(RENDER)
    out = tmp_path / "hosts list"
    return shlex.join([sys.executable, str(script), str(out)]), out


def listed(out: Path) -> list[str]:
    return out.read_text().split() if out.exists() else []


def test_callback_follows_nodes_joining_and_leaving(nats_server, channel, spawn, rendered):
    command, out = rendered
    env = {"NATS_URL": nats_server.url, "NATS_DISCOVERY_CHANNEL": channel, "KEEP_ALIVE": "1"}
    a = spawn(
        "a.example",
        {
            **env,
            "CALLBACK": command,
            "CALLBACK_FIRST_RUN_DELAY": "1",
            "CALLBACK_COOLDOWN": "1",
        },
    )
    # startup counts as a change: the first run lists the node itself
    wait_for(lambda: listed(out) == ["a.example"], 15, what="first render")

    b = spawn("b.example", env)
    wait_for(lambda: listed(out) == ["a.example", "b.example"], 15, what="b rendered")

    b.signal(signal.SIGTERM)  # says goodbye
    b.wait(10)
    wait_for(lambda: listed(out) == ["a.example"], 15, what="b gone from the render")
    log = a.output()
    assert "callback" in log and "finished" in log and "rendered 2 nodes" in log


def test_callback_runs_when_a_node_expires(nats_server, channel, spawn, rendered):
    # the Go daemon did not run the callback on expiry (SPEC §12)
    command, out = rendered
    env = {"NATS_URL": nats_server.url, "NATS_DISCOVERY_CHANNEL": channel, "KEEP_ALIVE": "1"}
    spawn(
        "a.example",
        {
            **env,
            "TTL": "3",
            "CLEAN_EVERY": "1",
            "CALLBACK": command,
            "CALLBACK_FIRST_RUN_DELAY": "0",
            "CALLBACK_COOLDOWN": "1",
        },
    )
    b = spawn("b.example", env)
    wait_for(lambda: listed(out) == ["a.example", "b.example"], 15, what="b rendered")
    b.kill()  # SIGKILL: no goodbye, a must expire it
    wait_for(lambda: listed(out) == ["a.example"], 20, what="b expired from the render")


def test_commands_get_the_open_file_limit_lobbyd_was_started_with(
    nats_server, channel, spawn, tmp_path
):
    """lobbyd raises its soft RLIMIT_NOFILE to the hard limit; the callback and exec
    checks it starts get the soft limit it was started with back, as Go's os/exec
    gives it (a program that select()s or sizes tables by the limit needs it)."""
    script = tmp_path / "limit.sh"
    script.write_text('#!/bin/sh\nulimit -n > "$1.tmp" && mv "$1.tmp" "$1"\n')
    script.chmod(0o755)
    by_callback, by_check = tmp_path / "callback", tmp_path / "check"
    a = spawn(
        "a",
        {
            "NATS_URL": nats_server.url,
            "NATS_DISCOVERY_CHANNEL": channel,
            "CALLBACK": shlex.join([str(script), str(by_callback)]),
            "CALLBACK_FIRST_RUN_DELAY": "0",
            "CHECKS": f"limit:1=exec:{script} {by_check}",
            "CHECK_INTERVAL": "1",
        },
        wrapper=["prlimit", "--nofile=1000:4000", "--"],
    )
    wait_for(lambda: by_callback.exists() and by_check.exists(), 15, what="both commands ran")
    assert "open file limit raised from 1000 to 4000" in a.output()
    assert by_callback.read_text().strip() == "1000"
    assert by_check.read_text().strip() == "1000"
