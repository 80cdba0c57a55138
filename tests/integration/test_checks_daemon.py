"""Health-checked labels (SPEC §19) in real lobbyd processes on a real nats-server.

The checks point at a TCP listener, an HTTP server and scripts that the test owns.
CHECK_INTERVAL is 0.2 s, RISE 2 and FALL 3, so every step takes about a second; every
wait polls, and nothing asserts a duration.
"""

from __future__ import annotations

import json
import signal
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from support import Lobbyd, wait_for
from targets import Httpd, Listener

from lobby import ctl


@pytest.fixture
def env(nats_server, channel) -> dict[str, str]:
    return {
        "NATS_URL": nats_server.url,
        "NATS_DISCOVERY_CHANNEL": channel,
        "CHECK_INTERVAL": "0.2",
        "CHECK_TIMEOUT": "1",
        "CHECK_RISE": "2",
        "CHECK_FALL": "3",
    }


@pytest.fixture
def listener() -> Iterator[Listener]:
    server = Listener()
    server.open()
    yield server
    server.close()


@pytest.fixture
def httpd() -> Iterator[Httpd]:
    server = Httpd()
    yield server
    server.close()


def checks(node: Lobbyd) -> dict[str, dict[str, Any]]:
    r = node.get("/v1/checks")
    r.raise_for_status()
    return {check["name"]: check for check in r.json()}


def own_labels(node: Lobbyd) -> list[str]:
    return list(node.get("/v1/discovery").json()["labels"])


def alive(pid: int) -> bool:
    """True for a running process; a zombie counts as dead."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] not in ("Z", "X")


def test_tcp_check_rises_falls_and_rises_on_a_peer(env, spawn, listener):
    smtp = f"service:smtp=tcp://127.0.0.1:{listener.port}"
    a = spawn(
        "a",
        {**env, "LABELS": "service:pinned", "CHECKS": f"{smtp};service:pinned=exec:false"},
    )
    b = spawn("b", env)
    seen_on_b: list[list[str]] = []

    def labels_on_b() -> list[str]:
        for node in b.get("/v1/discoveries").json():
            if node["hostname"] == "a":
                seen_on_b.append(node["labels"])
                return list(node["labels"])
        return []

    wait_for(lambda: "service:smtp" in labels_on_b(), what="service:smtp on b")
    up = checks(a)[smtp]
    assert up["state"] == "up" and up["transitions"] == 1 and up["runs"] >= 2
    assert up["last_detail"] == f"connected to 127.0.0.1:{listener.port}"

    listener.close()
    wait_for(lambda: "service:smtp" not in labels_on_b(), what="service:smtp gone from b")
    down = checks(a)[smtp]
    assert down["state"] == "down" and down["transitions"] == 2 and down["failures"] >= 3
    assert down["last_result"] == "fail" and down["last_detail"] == "Connection refused"

    listener.open()
    wait_for(lambda: "service:smtp" in labels_on_b(), what="service:smtp back on b")
    assert checks(a)[smtp]["transitions"] == 3

    # checked, failing all along, and in LABELS: announced regardless
    pinned = checks(a)["service:pinned=exec:false"]
    assert pinned["state"] == "down" and pinned["runs"] >= 3 and pinned["transitions"] == 0
    assert seen_on_b and all("service:pinned" in labels for labels in seen_on_b)


def test_http_check_follows_the_server(env, spawn, httpd):
    name = f"web:x=http://127.0.0.1:{httpd.port}/health"
    a = spawn("a", {**env, "CHECK_TIMEOUT": "0.5", "CHECKS": name})

    def state(wanted: str) -> dict[str, Any]:
        return wait_for(
            lambda: (check := checks(a)[name])["state"] == wanted and check,
            what=f"the check {wanted}",
        )

    up = state("up")
    assert (up["last_detail"], up["last_output"]) == ("HTTP 200 OK", "answer 200 for /health")
    assert "web:x" in own_labels(a)

    httpd.answer = 500
    down = state("down")
    assert down["last_detail"] == "HTTP 500 Internal Server Error"
    assert "web:x" not in own_labels(a)

    httpd.answer = 200
    state("up")
    httpd.answer = "hang"
    hung = state("down")
    assert hung["last_detail"] == "timed out after 0.5 s" and hung["failures"] >= 3
    assert "web:x" not in own_labels(a)


SLOW = """\
#!/bin/sh
sleep 60 &
echo $! >> "$1"
echo "started $$"
wait
"""


def test_exec_checks_and_a_hung_command_killed_with_its_children(
    env, spawn, tmp_path, capsys, monkeypatch
):
    script = tmp_path / "slow.sh"
    script.write_text(SLOW)
    script.chmod(0o755)
    pids = tmp_path / "children"
    slow = f"slow:1=exec:{script} {pids}"
    a = spawn(
        "a",
        {
            **env,
            "CHECK_TIMEOUT": "0.5",
            "CHECKS": f"ok:1=exec:true;bad:1=exec:false;{slow}",
        },
    )
    wait_for(
        lambda: (
            (c := checks(a))["ok:1=exec:true"]["state"] == "up"
            and c["bad:1=exec:false"]["failures"] >= 3
            and c[slow]["failures"] >= 2
        ),
        what="ok up, bad and slow failing",
    )
    assert own_labels(a) == ["ok:1"]
    report = checks(a)
    assert report["bad:1=exec:false"]["last_detail"] == "exit status 1"
    hung = report[slow]
    assert hung["state"] == "down" and hung["last_detail"] == "timed out after 0.5 s: killed"
    assert hung["last_output"].startswith("started ")
    # runs never overlap: the first `runs` lines are the children of finished runs
    finished = [int(line) for line in pids.read_text().split()][: hung["runs"]]
    assert len(finished) == hung["runs"] >= 2
    wait_for(lambda: not any(alive(pid) for pid in finished), 5, what="children gone")

    for var in ("HOST", "PORT", "PROTOCOL", "TOKEN", "NO_COLOR"):
        monkeypatch.delenv(var, raising=False)
    assert ctl.main(["-port", str(a.port), "checks"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith("up    ok:1  ") and lines[0].endswith("exit status 0")
    assert lines[1].startswith("down  bad:1 ") and lines[1].endswith("exit status 1")
    assert lines[2].startswith("down  slow:1") and "timed out after 0.5 s: killed" in lines[2]
    assert lines[3].strip().startswith("started ")
    assert ctl.main(["-port", str(a.port), "-json", "checks"]) == 0
    names = [check["name"] for check in json.loads(capsys.readouterr().out)]
    assert names == ["ok:1=exec:true", "bad:1=exec:false", slow]

    # shutting down in the middle of a run leaves no child behind either
    wait_for(lambda: len(pids.read_text().split()) > hung["runs"] + 1, what="another run")
    a.signal(signal.SIGTERM)
    assert a.wait(10) == 0
    children = [int(line) for line in pids.read_text().split()]
    wait_for(lambda: not any(alive(pid) for pid in children), 5, what="every child gone")
    assert "Traceback" not in a.output()


def test_checks_file_is_reloaded_and_a_bad_line_logged_and_skipped(env, spawn, tmp_path):
    path = tmp_path / "etc" / "lobby-checks"
    path.parent.mkdir()
    path.write_text("# our checks\nfile:1=exec:true\n")
    a = spawn("a", {**env, "CHECKS_FILE": str(path)})
    wait_for(lambda: own_labels(a) == ["file:1"], what="file:1 announced")

    tmp = path.with_name(".lobby-checks.tmp")
    tmp.write_text("file:1=exec:true\nthis is not an entry\nfile:2=exec:true\n")
    tmp.replace(path)
    wait_for(lambda: own_labels(a) == ["file:1", "file:2"], what="file:2 announced")
    log = a.output()
    assert f"{path} line 2: expected LABELS=CHECK" in log and "'this is not an entry'" in log
    report = checks(a)
    assert list(report) == ["file:1=exec:true", "file:2=exec:true"]
    assert report["file:1=exec:true"]["transitions"] == 1  # kept its state
    assert report["file:2=exec:true"]["source"] == str(path)

    path.write_text("file:2=exec:true\n")
    wait_for(lambda: own_labels(a) == ["file:2"], what="file:1 withdrawn")
    assert a.running and "Traceback" not in a.output()
