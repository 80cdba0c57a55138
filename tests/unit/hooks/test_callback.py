"""The callback runner (SPEC §8) with real commands and tiny real delays.

Order and counts are asserted, never how long something took; the only time checks
are lower bounds ("not sooner than"), which a slow machine cannot break.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import random
import shlex
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from support import until

from lobby.core.model import Discovery
from lobby.hooks.callback import CallbackRunner
from lobby.view.cache import Answers
from lobby.view.registry import Registry

# Appends one JSON line per run: what came on stdin, when it started and ended
# (CLOCK_MONOTONIC is shared by all processes), its pid. Optional: seconds to sleep
# after reading stdin (a marker file says it is sleeping), and an exit status.
RECORDER = """\
import json, os, sys, time
start = time.monotonic()
out = sys.argv[1]
pause = float(sys.argv[2]) if len(sys.argv) > 2 else 0.0
status = int(sys.argv[3]) if len(sys.argv) > 3 else 0
data = sys.stdin.buffer.read()
if pause:
    open(out + ".sleeping", "w").close()
    time.sleep(pause)
record = {"stdin": data.decode(), "start": start, "end": time.monotonic(), "pid": os.getpid()}
with open(out, "a") as f:
    f.write(json.dumps(record) + "\\n")
print("hello from the callback")
print("and from its stderr", file=sys.stderr)
sys.exit(status)
"""


@pytest.fixture
def recorder(tmp_path: Path) -> Path:
    script = tmp_path / "recorder.py"
    script.write_text(RECORDER)
    return script


def command(script: Path, *args: object) -> str:
    return shlex.join([sys.executable, str(script), *(str(a) for a in args)])


def records(out: Path) -> list[dict[str, Any]]:
    if not out.exists():
        return []
    return [json.loads(line) for line in out.read_text().splitlines()]


async def settle(seconds: float) -> None:
    """Give the runner time to do something it must not do."""
    await asyncio.sleep(seconds)


def alive(pid: int) -> bool:
    """True for a running process; a zombie (nobody reaped it yet) counts as dead."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] not in ("Z", "X")


@pytest.fixture
async def start():
    """start(runner) runs it in a task; every task is cancelled and awaited at the end."""
    tasks: list[asyncio.Task[None]] = []

    def go(runner: CallbackRunner) -> asyncio.Task[None]:
        task = asyncio.create_task(runner.run())
        tasks.append(task)
        return task

    yield go
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)


def runner_for(
    cmd: str, snapshot: Callable[[], bytes] = lambda: b"[]\n", **kw: Any
) -> CallbackRunner:
    opts: dict[str, Any] = {"cooldown": 0.05, "first_run_delay": 0, "timeout": 10}
    opts.update(kw)
    return CallbackRunner(cmd, snapshot=snapshot, **opts)


async def test_runs_once_after_the_first_run_delay(tmp_path, recorder, start, caplog):
    caplog.set_level(logging.INFO, logger="lobby.callback")
    out = tmp_path / "runs dir" / "out file.jsonl"  # spaces: split like a shell
    out.parent.mkdir()
    registry = Registry(ttl=300)
    registry.update(Discovery("a.example", ("service:web",)))
    runner = runner_for(
        command(recorder, out),
        snapshot=Answers(registry).all_json,
        first_run_delay=0.3,
    )
    began = time.monotonic()
    start(runner)
    await until(lambda: len(records(out)) == 1, what="the first run")
    run = records(out)[0]
    assert run["start"] - began >= 0.3
    # stdin is exactly GET /v1/discoveries
    assert run["stdin"].encode() == Answers(registry).all_json()
    assert json.loads(run["stdin"])[0]["hostname"] == "a.example"
    await settle(0.3)  # nothing changed: no second run
    assert len(records(out)) == 1
    assert runner.runs == 1 and runner.last_status == 0
    logged = "\n".join(r.getMessage() for r in caplog.records if r.name == "lobby.callback")
    assert "finished" in logged
    assert "hello from the callback" in logged and "and from its stderr" in logged


async def test_burst_of_changes_gives_one_run_with_the_final_state(tmp_path, recorder, start):
    out = tmp_path / "out.jsonl"
    registry = Registry(ttl=300)
    runner = runner_for(command(recorder, out), snapshot=Answers(registry).all_json, cooldown=0.5)
    registry.add_listener(lambda change: runner.mark_dirty())  # as the daemon wires it
    start(runner)
    await until(lambda: runner.runs == 1, what="the startup run")
    assert json.loads(records(out)[0]["stdin"]) == []
    for i in range(20):  # all inside one cooldown (no await in between)
        registry.update(Discovery(f"n{i:02}.example", ()))
    await until(lambda: runner.runs == 2, what="the run after the burst")
    second = records(out)[1]
    assert [d["hostname"] for d in json.loads(second["stdin"])] == [
        f"n{i:02}.example" for i in range(20)
    ]
    # never sooner than the cooldown after the previous run ended
    assert second["start"] - records(out)[0]["end"] >= 0.5
    await settle(0.8)
    assert runner.runs == 2


async def test_change_during_a_run_triggers_another_run(tmp_path, recorder, start):
    out = tmp_path / "out.jsonl"
    state = {"version": 1}
    runner = runner_for(
        command(recorder, out, 0.5),
        snapshot=lambda: json.dumps(state).encode(),
        cooldown=0.1,
    )
    start(runner)
    sleeping = Path(f"{out}.sleeping")
    await until(sleeping.exists, what="the first run to be under way")
    state["version"] = 2
    runner.mark_dirty()
    await until(lambda: len(records(out)) == 2, what="the second run")
    first, second = records(out)
    assert json.loads(first["stdin"]) == {"version": 1}
    assert json.loads(second["stdin"]) == {"version": 2}
    assert second["start"] >= first["end"]  # runs never overlap
    await settle(0.4)
    assert len(records(out)) == 2


async def test_missing_command_is_logged_and_the_runner_goes_on(tmp_path, start, caplog):
    caplog.set_level(logging.INFO, logger="lobby.callback")
    runner = runner_for(str(tmp_path / "no-such-command") + " --flag")
    start(runner)
    await until(lambda: runner.runs == 1, what="the first attempt")
    runner.mark_dirty()
    await until(lambda: runner.runs == 2, what="the second attempt")
    errors = [
        r for r in caplog.records if r.name == "lobby.callback" and r.levelno >= logging.ERROR
    ]
    assert len(errors) == 2
    assert "cannot start" in errors[0].getMessage()
    assert "no-such-command" in errors[0].getMessage()
    assert runner.last_status is None


async def test_failing_command_is_logged_and_the_runner_goes_on(tmp_path, recorder, start, caplog):
    caplog.set_level(logging.INFO, logger="lobby.callback")
    out = tmp_path / "out.jsonl"
    runner = runner_for(command(recorder, out, 0, 3))
    start(runner)
    await until(lambda: runner.runs == 1, what="the first run")
    assert runner.last_status == 3
    runner.mark_dirty()
    await until(lambda: runner.runs == 2, what="the second run")
    assert len(records(out)) == 2
    failures = [
        r for r in caplog.records if r.name == "lobby.callback" and "status 3" in r.getMessage()
    ]
    assert len(failures) == 2
    assert failures[0].levelno == logging.WARNING
    assert "and from its stderr" in failures[0].getMessage()


async def test_unsplittable_command_is_logged(start, caplog):
    runner = runner_for('echo "unbalanced')
    start(runner)
    await until(lambda: runner.runs == 1)
    assert any("split" in r.getMessage() for r in caplog.records if r.name == "lobby.callback")


async def test_hanging_command_is_killed_with_its_children(tmp_path, start, caplog):
    pids = tmp_path / "pids"
    # the shell and a child of its own, both hanging
    script = f"sleep 60 & echo $$ $! > {shlex.quote(str(pids))}; wait"
    runner = runner_for(shlex.join(["sh", "-c", script]), timeout=0.5)
    start(runner)
    await until(lambda: pids.exists() and pids.read_text().strip(), what="the pids")
    shell, child = (int(p) for p in pids.read_text().split())
    await until(lambda: runner.runs == 1, what="the timeout")
    assert runner.last_status is None
    assert any(
        "still running after 0.5 s: killed" in r.getMessage()
        for r in caplog.records
        if r.name == "lobby.callback" and r.levelno == logging.ERROR
    )
    assert not alive(shell)
    await until(lambda: not alive(child), timeout=5, what="the child to be gone")
    # and the runner goes on
    pids.unlink()
    runner.mark_dirty()
    await until(pids.exists, what="the next run")


async def test_background_process_holding_the_output_is_part_of_the_run(tmp_path, start):
    marker = tmp_path / "late"
    script = f"(sleep 0.3; touch {shlex.quote(str(marker))}) & echo started"
    runner = runner_for(shlex.join(["sh", "-c", script]))
    start(runner)
    await until(lambda: runner.runs == 1)
    assert marker.exists()  # the run ended only when its output was closed
    assert runner.last_status == 0


async def test_background_process_with_its_own_output_outlives_the_run(tmp_path, start):
    pid_file = tmp_path / "pid"
    script = f"sleep 30 >/dev/null 2>&1 & echo $! > {shlex.quote(str(pid_file))}"
    runner = runner_for(shlex.join(["sh", "-c", script]))
    start(runner)
    await until(lambda: runner.runs == 1)
    pid = int(pid_file.read_text())
    try:
        assert alive(pid)  # daemons a callback starts on purpose are left alone
    finally:
        os.kill(pid, 9)


async def test_cancelling_run_kills_the_running_command(tmp_path, start):
    pids = tmp_path / "pids"
    script = f"sleep 60 & echo $$ $! > {shlex.quote(str(pids))}; wait"
    runner = runner_for(shlex.join(["sh", "-c", script]))
    task = start(runner)
    await until(lambda: pids.exists() and pids.read_text().strip(), what="the pids")
    shell, child = (int(p) for p in pids.read_text().split())
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert not alive(shell)  # reaped before run() returned
    await until(lambda: not alive(child), timeout=5, what="the child to be gone")


async def test_large_output_is_truncated_and_does_not_block(start, caplog):
    caplog.set_level(logging.INFO, logger="lobby.callback")
    big = "import sys; sys.stdout.write('x' * 1_000_000); sys.stderr.write('y' * 1000)"
    runner = runner_for(shlex.join([sys.executable, "-c", big]), output_limit=100)
    start(runner)
    await until(lambda: runner.runs == 1)
    assert runner.last_status == 0
    (line,) = [r.getMessage() for r in caplog.records if r.name == "lobby.callback"]
    assert "x" * 100 in line and "x" * 101 not in line
    assert "1000900 more bytes not shown" in line


async def test_command_that_ignores_stdin_is_fine(start):
    # 1 MB on stdin, nobody reads it: the run still ends normally
    runner = runner_for("true", snapshot=lambda: b"[" + b" " * 1_000_000 + b"]")
    start(runner)
    await until(lambda: runner.runs == 1)
    assert runner.last_status == 0


async def test_mark_dirty_before_the_first_run_still_means_one_run(tmp_path, recorder, start):
    out = tmp_path / "out.jsonl"
    runner = runner_for(command(recorder, out), first_run_delay=0.2)
    for _ in range(5):
        runner.mark_dirty()
    start(runner)
    await until(lambda: runner.runs == 1)
    await settle(0.3)
    assert len(records(out)) == 1


def processes_with(token: str) -> list[int]:
    """Pids whose command line contains `token` (read from /proc, nothing is signalled)."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                cmdline = (entry / "cmdline").read_bytes()
            except OSError:
                continue
            if token.encode() in cmdline and alive(int(entry.name)):
                found.append(int(entry.name))
    return found


@pytest.mark.parametrize("steps", [0, 1, 2, 3, 5, 8])
async def test_cancelling_while_the_command_starts_leaves_nothing(steps):
    token = f"{random.randint(100_000, 999_999)}.5"  # a unique sleep length
    runner = runner_for(shlex.join(["sh", "-c", f"sleep {token} & sleep {token}; :"]))
    task = asyncio.create_task(runner.run_once())
    for _ in range(steps):  # land the cancellation at different points of the start
        await asyncio.sleep(0)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    await until(lambda: not processes_with(token), timeout=5, what="no process left")
