"""Health-checked labels (SPEC §19): parsing, rise/fall, scheduling, probes, start-up errors.

The probes run against real sockets and real processes the test owns; the hysteresis is
driven run by run; the scheduler runs with a probe that the test controls. Nothing here
asserts how long something took.
"""

from __future__ import annotations

import asyncio
import logging
import random
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from support import until, wait_for
from targets import Httpd, Listener

from lobby import config
from lobby.core.clock import Clock
from lobby.node.checks import (
    Check,
    CheckError,
    CheckResult,
    Checks,
    parse_check_lines,
    parse_checks,
    parse_entry,
    probe_exec,
    probe_http,
    probe_tcp,
)

# -- parsing --------------------------------------------------------------------------


def test_entries_of_each_kind():
    tcp = parse_entry(" service:smtp = tcp://127.0.0.1:25 ")
    assert (tcp.labels, tcp.kind, tcp.host, tcp.port) == (("service:smtp",), "tcp", "127.0.0.1", 25)
    assert tcp.name == "service:smtp=tcp://127.0.0.1:25"
    six = parse_entry("a=tcp://[2a03::1]:8080")
    assert (six.host, six.port) == ("2a03::1", 8080)
    http = parse_entry(
        "prometheus:node,prometheus:node:port:9100=http://localhost:9100/metrics?x=1"
    )
    assert http.labels == ("prometheus:node", "prometheus:node:port:9100")
    assert (http.kind, http.target) == ("http", "http://localhost:9100/metrics?x=1")
    assert parse_entry("a=https://example.com").kind == "http"
    run = parse_entry("""a=exec:/usr/lib/check --name "two words" x=y""")
    assert (run.kind, run.argv) == ("exec", ("/usr/lib/check", "--name", "two words", "x=y"))


def test_checks_split_on_semicolons_and_skip_blanks():
    specs = parse_checks(" a=exec:true ;; b=tcp://h:1 ; ")
    assert [s.name for s in specs] == ["a=exec:true", "b=tcp://h:1"]
    assert parse_checks("") == []


def test_a_password_in_a_url_is_never_shown():
    spec = parse_entry("a=https://monitor:s3cret@example.com/health")
    assert spec.target == "https://monitor:s3cret@example.com/health"  # what is used
    assert spec.shown_target == "https://monitor:***@example.com/health"
    assert "s3cret" not in spec.name
    # nor in an exec check's command, nor in the line naming a malformed entry
    spec = parse_entry("a=exec:curl -fsS https://monitor:s3cret@example.com/health")
    assert spec.argv[-1] == "https://monitor:s3cret@example.com/health"
    assert spec.name == "a=exec:curl -fsS https://monitor:***@example.com/health"
    with pytest.raises(CheckError) as info:
        parse_entry("a=http://monitor:s3cret@example.com/a b")
    assert "s3cret" not in str(info.value) and "monitor:***@" in str(info.value)


@pytest.mark.parametrize(
    ("entry", "problem"),
    [
        ("service:smtp", "expected LABELS=CHECK"),
        ("=tcp://h:25", "no label"),
        (" , =tcp://h:25", "no label"),
        ("a\x01b=tcp://h:25", "control character"),
        ("a=tpc://h:25", "expected LABELS=CHECK"),
        ("a=h:25", "expected LABELS=CHECK"),
        ("a=tcp://h", "tcp://HOST:PORT"),
        ("a=tcp://:25", "tcp://HOST:PORT"),
        ("a=tcp://h:0", "tcp://HOST:PORT"),
        ("a=tcp://h:99999", "port"),
        ("a=tcp://h:25/path", "tcp://HOST:PORT"),
        ("a=tcp://user@h:25", "tcp://HOST:PORT"),
        ("a=http://", "no host"),
        ("a=http:/h/x", "expected LABELS=CHECK"),
        ("a=http://h:x/", "port"),
        ("a=http://h/a b", "space"),
        ("a=exec:", "without a command"),
        ("a=exec:   ", "without a command"),
        ("a=exec:echo 'open", "split like a shell"),
    ],
)
def test_malformed_entries_are_refused_naming_them(entry, problem):
    with pytest.raises(CheckError) as caught:
        parse_entry(entry)
    assert problem in str(caught.value)
    assert repr(entry.strip()) in str(caught.value)
    assert str(caught.value).startswith("invalid entry ")


def test_file_lines_skip_comments_and_log_bad_ones(caplog):
    text = "# health checks\n\nok:1=exec:true\nbroken line\n  # indented comment\nok:2=tcp://h:1\n"
    with caplog.at_level(logging.WARNING, "lobby.checks"):
        specs = parse_check_lines(text, "/etc/lobby/checks", strict=False)
    assert [s.labels for s in specs] == [("ok:1",), ("ok:2",)]
    assert len(caplog.records) == 1
    assert "/etc/lobby/checks line 4" in caplog.text and "'broken line'" in caplog.text
    with pytest.raises(CheckError, match="line 4"):
        parse_check_lines(text, "/etc/lobby/checks", strict=True)


# -- rise and fall ----------------------------------------------------------------------

PASS, FAIL = CheckResult(True, "ok"), CheckResult(False, "no")


def make_check(rise: int = 2, fall: int = 3) -> Check:
    return Check(parse_entry("a=exec:true"), "CHECKS", rise, fall, changed=0.0)


def test_rise_and_fall():
    check = make_check(rise=2, fall=3)
    assert not check.up and check.last is None  # a checked label starts withdrawn
    states = []
    for n, outcome in enumerate([PASS, PASS, FAIL, FAIL, PASS, FAIL, FAIL, FAIL, PASS, PASS], 1):
        flipped = check.record(outcome, float(n))
        states.append(("up" if check.up else "down") + ("!" if flipped else ""))
    assert states == ["down", "up!", "up", "up", "up", "up", "up", "down!", "down", "up!"]
    assert (check.transitions, check.changed, check.runs) == (3, 10.0, 10)
    assert (check.passes, check.failures) == (2, 0)
    report = check.report()
    assert report["state"] == "up" and report["last_result"] == "pass"
    assert report["changed"] == 10.0 and report["transitions"] == 3


def test_rise_1_fall_1_follows_every_result():
    check = make_check(rise=1, fall=1)
    assert check.record(PASS, 1.0) and check.up
    assert check.record(FAIL, 2.0) and not check.up


def driven(*entries: str, rise: int = 2, fall: int = 3) -> tuple[Checks, list[frozenset[str]]]:
    """Checks whose results the test hands in, and every label set it announced."""
    announced: list[frozenset[str]] = []
    checks = Checks(
        [parse_entry(e) for e in entries],
        interval=1,
        timeout=1,
        rise=rise,
        fall=fall,
        clock=Clock(monotonic=lambda: 0.0, wall=lambda: 0.0),
    )
    checks._on_change = lambda: announced.append(checks.passing_labels())
    return checks, announced


def test_flapping_never_announces():
    checks, announced = driven("flap:1=exec:true", rise=2, fall=3)
    (check,) = checks.checks
    for n in range(200):
        checks.record(check, PASS if n % 2 else FAIL)
    assert announced == [] and checks.passing_labels() == frozenset()
    assert check.transitions == 0 and check.runs == 200


def test_a_label_passes_while_every_check_naming_it_is_up():
    checks, announced = driven("web=exec:a", "web,extra=exec:b", rise=1, fall=1)
    a, b = checks.checks
    checks.record(a, PASS)
    assert checks.passing_labels() == frozenset() and announced == []
    checks.record(b, PASS)
    assert announced == [frozenset({"web", "extra"})]
    checks.record(a, FAIL)
    assert announced[-1] == frozenset({"extra"})
    checks.record(a, FAIL)  # no change, no announcement
    assert len(announced) == 2


async def test_the_scheduler_never_overlaps_a_check_and_flapping_stays_withdrawn():
    in_flight = 0
    most = 0
    runs = 0

    async def probe(check: Check) -> CheckResult:
        nonlocal in_flight, most, runs
        in_flight += 1
        most = max(most, in_flight)
        await asyncio.sleep(0.005)
        in_flight -= 1
        runs += 1
        return PASS if runs % 2 else FAIL

    changes = 0

    def on_change() -> None:
        nonlocal changes
        changes += 1

    checks = Checks(
        [parse_entry("flap:1=exec:true")], interval=0.001, timeout=1, rise=2, fall=3, probe=probe
    )
    task = asyncio.create_task(checks.run(on_change, asyncio.Event()))
    try:
        await until(lambda: runs >= 40, what="40 runs")
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
    assert most == 1
    assert changes == 0 and checks.passing_labels() == frozenset()


# -- probes, on real sockets and processes ----------------------------------------------


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


async def test_tcp_probe(listener):
    ok = await probe_tcp("127.0.0.1", listener.port, 2)
    assert ok == CheckResult(True, f"connected to 127.0.0.1:{listener.port}")
    listener.close()
    refused = await probe_tcp("127.0.0.1", listener.port, 2)
    assert refused == CheckResult(False, "Connection refused")


async def test_http_probe_follows_the_status_and_times_out(httpd):
    import httpx

    async with httpx.AsyncClient(follow_redirects=False, timeout=0.5) as client:
        url = httpd.url + "/health"
        ok = await probe_http(client, url, 0.5)
        assert ok == CheckResult(True, "HTTP 200 OK", "answer 200 for /health")
        httpd.answer = 500
        failed = await probe_http(client, url, 0.5)
        assert failed == CheckResult(
            False, "HTTP 500 Internal Server Error", "answer 500 for /health"
        )
        httpd.answer = 302
        moved = await probe_http(client, url, 0.5)
        assert not moved.ok and "not followed" in moved.detail and "/elsewhere" in moved.detail
        httpd.answer = 204
        assert (await probe_http(client, url, 0.5)).ok
        httpd.answer = "hang"
        hung = await probe_http(client, url, 0.5)
        assert hung == CheckResult(False, "timed out after 0.5 s")


async def test_exec_probe_exit_status_and_output():
    assert await probe_exec(["true"], 5) == CheckResult(True, "exit status 0")
    assert await probe_exec(["false"], 5) == CheckResult(False, "exit status 1")
    said = await probe_exec([sys.executable, "-c", "print('x' * 500); raise SystemExit(3)"], 5)
    assert said == CheckResult(False, "exit status 3", "x" * 200)
    missing = await probe_exec(["/nonexistent/check"], 5)
    assert not missing.ok and "No such file" in missing.detail


def alive(pid: int) -> bool:
    """True for a running process; a zombie counts as dead."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] not in ("Z", "X")


SLOW = """\
#!/bin/sh
sleep 60 &
echo $! > "$1"
echo started
wait
"""


async def test_exec_probe_past_the_timeout_is_killed_with_its_children(tmp_path):
    script = tmp_path / "slow.sh"
    script.write_text(SLOW)
    script.chmod(0o755)
    pidfile = tmp_path / "child.pid"
    outcome = await probe_exec([str(script), str(pidfile)], 0.5)
    assert outcome == CheckResult(False, "timed out after 0.5 s: killed", "started")
    child = int(pidfile.read_text())
    wait_for(lambda: not alive(child), 5, what=f"child {child} to be gone")


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


async def test_stopping_many_busy_checks_is_prompt_and_leaves_no_process():
    # Commands starting, running, timing out and exiting while the cancellation lands:
    # none may swallow it (Python 3.11's wait_for did) and keep its check running.
    token = f"{random.randint(100_000, 999_999)}.5"  # a unique sleep length
    kinds = ["exec:true", "exec:false", f"exec:sleep {token}", f"exec:sh -c 'sleep {token}'"]
    entries = [parse_entry(f"l:{i}={kinds[i % 4]}") for i in range(120)]
    checks = Checks(entries, interval=0.01, timeout=0.2, rise=1, fall=1)
    task = asyncio.create_task(checks.run(lambda: None, asyncio.Event()))
    await until(lambda: sum(c.runs for c in checks.checks) >= 300, what="300 runs")
    task.cancel()
    await asyncio.wait({task}, timeout=10)
    assert task.cancelled()
    assert all(c.task is not None and c.task.done() for c in checks.checks)
    await until(lambda: not processes_with(token), timeout=5, what="no process left")


# -- CHECKS_FILE at run time -------------------------------------------------------------


async def test_checks_file_is_reloaded_and_bad_lines_skipped(tmp_path, caplog):
    path = tmp_path / "etc" / "checks"
    path.parent.mkdir()
    path.write_text("keep:1=exec:keep\n")
    seen: dict[str, int] = {}

    async def probe(check: Check) -> CheckResult:
        seen[check.name] = seen.get(check.name, 0) + 1
        return PASS

    checks = Checks(
        parse_checks("env:1=exec:env"),
        interval=0.01,
        timeout=1,
        rise=1,
        fall=1,
        file=path,
        probe=probe,
    )
    changes: list[frozenset[str]] = []
    stopping = asyncio.Event()
    task = asyncio.create_task(
        checks.run(lambda: changes.append(checks.passing_labels()), stopping)
    )
    try:
        await until(lambda: checks.passing_labels() == {"env:1", "keep:1"}, what="both checks up")
        keep = next(c for c in checks.checks if c.name == "keep:1=exec:keep")
        with caplog.at_level(logging.WARNING, "lobby.checks"):
            path.write_text("keep:1=exec:keep\nnot an entry\nnew:1=exec:new\n")
            await until(lambda: "new:1" in checks.passing_labels(), what="new check up")
        assert "line 2" in caplog.text and "'not an entry'" in caplog.text
        names = [c.name for c in checks.checks]
        assert names == ["env:1=exec:env", "keep:1=exec:keep", "new:1=exec:new"]
        assert checks.checks[1] is keep and keep.transitions == 1  # kept its state
        path.write_text("# nothing\n")
        await until(lambda: checks.passing_labels() == {"env:1"}, what="file checks removed")
        assert [c.name for c in checks.checks] == ["env:1=exec:env"]
    finally:
        stopping.set()
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
    assert changes[-1] == {"env:1"}


# -- in a daemon -----------------------------------------------------------------------


async def test_a_checked_label_starts_withdrawn_and_is_announced_at_once(memory_daemons):
    # KEEP_ALIVE 60: only the at-once announcement can bring the label to b in time
    a = memory_daemons(
        "a",
        LABELS="plain:1",
        CHECKS="checked:1=exec:true;never:1=exec:false",
        CHECK_INTERVAL="0.1",
        KEEP_ALIVE="60",
        TTL="120",
    )
    b = memory_daemons("b", KEEP_ALIVE="60", TTL="120")
    assert a.presence.labels == ("plain:1",)

    def labels_on_b() -> tuple[str, ...]:
        seen = b.registry.get("a")
        return seen.labels if seen is not None else ()

    await until(lambda: "checked:1" in labels_on_b(), what="b to see checked:1")
    assert labels_on_b() == ("checked:1", "plain:1")
    assert a.checks is not None
    assert [c["state"] for c in a.checks.report()] == ["up", "down"]


# -- lobbyd refuses bad configuration -----------------------------------------------------


def lobbyd(env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "lobby"],
        env={"PATH": "/usr/bin:/bin", "DISABLE_API": "true", **env},
        capture_output=True,
        text=True,
        timeout=30,
    )


@pytest.mark.parametrize(
    ("env", "line"),
    [
        (
            {"CHECKS": "ok=exec:true;service:smtp=tpc://h:25"},
            "lobbyd: invalid entry 'service:smtp=tpc://h:25' in CHECKS: expected LABELS=CHECK",
        ),
        ({"CHECK_INTERVAL": "0"}, "lobbyd: invalid CHECK_INTERVAL='0'"),
        ({"CHECK_RISE": "0"}, "lobbyd: invalid CHECK_RISE='0'"),
        (
            {"CHECKS_FILE": "/nonexistent/checks"},
            "lobbyd: invalid CHECKS_FILE='/nonexistent/checks'",
        ),
    ],
)
def test_lobbyd_exits_2_naming_the_bad_entry(env, line):
    result = lobbyd(env)
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(line), result.stderr


def test_lobbyd_exits_2_on_a_bad_line_in_checks_file_at_start(tmp_path):
    path = tmp_path / "checks"
    path.write_text("# ours\nok:1=exec:true\nok:2=tcp://h\n")
    result = lobbyd({"CHECKS_FILE": str(path), "LABELS_PATH": str(tmp_path / "labels")})
    assert result.returncode == 2
    assert result.stderr.strip() == (
        f"lobbyd: invalid entry 'ok:2=tcp://h' in CHECKS_FILE {path} line 3: "
        "expected tcp://HOST:PORT (a port from 1 to 65535)"
    )


def test_lobbyd_refuses_a_checks_file_among_the_label_files(tmp_path):
    path = tmp_path / "checks"
    path.write_text("ok:1=exec:true\n")
    result = lobbyd({"CHECKS_FILE": str(path), "LABELS_PATH": str(tmp_path)})
    assert result.returncode == 2
    assert "LABELS_PATH" in result.stderr and len(result.stderr.strip().splitlines()) == 1


def test_settings_defaults():
    s = config.load({})
    assert (s.checks, s.checks_file) == ((), "")
    assert (s.check_interval, s.check_timeout, s.check_rise, s.check_fall) == (10.0, 2.0, 2, 3)
    assert config.load({"CHECK_INTERVAL": "250ms"}).check_interval == 0.25


@pytest.mark.parametrize(
    ("entries", "loaded"), [("a=exec:true;b=tcp://h:1", False), ("a=http://h/", True)]
)
def test_the_daemon_loads_httpx_only_for_an_http_check(entries, loaded, tmp_path):
    env = {"CHECKS": entries, "DISABLE_API": "true", "LABELS_PATH": str(tmp_path)}
    code = (
        "import sys\n"
        "from lobby import config\n"
        "from lobby.daemon import Daemon\n"
        f"Daemon(config.load({env!r}))\n"
        "print('httpx' in sys.modules)\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    )
    assert result.stdout.strip() == str(loaded)
