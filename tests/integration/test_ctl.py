"""lobbyctl against real lobbyd processes: as a subprocess and through `main(argv)`."""

import os
import pty
import subprocess
import sys

import pytest
from support import free_port, wait_for

from lobby import ctl

B_LABELS = (
    "service:db,prometheus:node:host:10.0.0.2,prometheus:node:port:9200,"
    "prometheus:node:location:brno"
)
SPECIAL = [
    "path:/srv/app dir",
    "url:http://x/a?b=c&d=e#f",
    "name:kůň 🚀",
    "plus:a+b",
    "ipv6:2a03::1",
]
CTL_VARS = ("HOST", "PORT", "PROTOCOL", "TOKEN", "NO_COLOR")


def lobbyctl(
    *argv: str, stdout: int | None = subprocess.PIPE, **env: str
) -> subprocess.CompletedProcess[str]:
    """`python -m lobby.ctl ARGV` with only the given lobbyctl variables set."""
    full = {k: v for k, v in os.environ.items() if k not in CTL_VARS}
    return subprocess.run(
        [sys.executable, "-m", "lobby.ctl", *argv],
        stdout=stdout,
        stderr=subprocess.PIPE,
        text=True,
        env={**full, **env},
        timeout=30,
    )


@pytest.fixture
def run(monkeypatch, capsys):
    """`main(argv)` in this process -> (exit status, stdout, stderr)."""
    for var in CTL_VARS:
        monkeypatch.delenv(var, raising=False)

    def call(*argv: str) -> tuple[int, str, str]:
        status = ctl.main(list(argv))
        out, err = capsys.readouterr()
        return status, out, err

    return call


@pytest.fixture
def env(nats_server, channel) -> dict[str, str]:
    return {"NATS_URL": nats_server.url, "NATS_DISCOVERY_CHANNEL": channel, "KEEP_ALIVE": "1"}


@pytest.fixture
def pair(env, spawn):
    a = spawn("a.example", {**env, "LABELS": "service:web,location:prague"})
    b = spawn("bb.example", {**env, "LABELS": B_LABELS})
    wait_for(lambda: a.hostnames() == ["a.example", "bb.example"], what="a lists both")
    return a, b


def test_human_output_of_every_read_command(pair, run):
    a, _ = pair
    port = ["-port", str(a.port)]
    assert run(*port, "discoveries") == (
        0,
        (
            "a.example     location:prague\n"
            "              service:web\n"
            "\n"
            "bb.example    prometheus:node:host:10.0.0.2\n"
            "              prometheus:node:location:brno\n"
            "              prometheus:node:port:9200\n"
            "              service:db\n"
        ),
        "",
    )
    assert run(*port, "discovery") == (
        0,
        "Hostname:\n  a.example\nLabels:\n  location:prague\n  service:web\n",
        "",
    )
    assert run(*port, "resolve", "service:db") == (0, "bb.example\n", "")
    assert run(*port, "resolve", "service:none") == (0, "", "")
    assert run(*port, "discoveries", "labels", "service:web", "service:db") == (
        0,
        "a.example     service:web\n\nbb.example    service:db\n",
        "",
    )
    assert run(*port, "discoveries", "search", "location:", "prometheus:node:p") == (
        0,
        ("a.example     location:prague\n\nbb.example    prometheus:node:port:9200\n"),
        "",
    )
    assert run(*port, "prometheus", "node") == (0, "10.0.0.2:9200    location=brno\n", "")
    assert run(*port, "prometheus", "none") == (
        0,
        "",  # nothing on stdout for scripts; a word on stderr for people
        "lobbyctl: no targets: no node has a prometheus:none label\n",
    )


def test_json_output_is_the_apis(pair, run):
    a, _ = pair
    port = f"--port={a.port}"
    for argv, path in [
        (["discovery"], "/v1/discovery"),
        (["resolve", "service:web"], "/v1/resolve?label=service:web"),
        (["prometheus", "node"], "/v1/prometheus/node"),
    ]:
        status, out, err = run(port, "-json", *argv)
        assert (status, err) == (0, "")
        assert out == a.get(path).text  # byte for byte
    for argv, path in [
        (["discoveries"], "/v1/discoveries"),
        (["discoveries", "labels", "service:db"], "/v1/discoveries?labels=service:db"),
        (["discoveries", "search", "prometheus:"], "/v1/discoveries?prefixes=prometheus:"),
    ]:
        status, out, _ = run(port, "-json", *argv)
        api = a.get(path).text
        assert status == 0
        # last_check moves every keep-alive; everything else, layout included, is equal
        assert strip_times(out) == strip_times(api)


def strip_times(text: str) -> str:
    return "\n".join(line for line in text.splitlines() if '"last_check"' not in line)


def test_subprocess_with_environment_fallbacks(pair):
    a, _ = pair
    done = lobbyctl("resolve", "service:web", PORT=str(a.port), HOST="127.0.0.1", PROTOCOL="http")
    assert (done.returncode, done.stdout, done.stderr) == (0, "a.example\n", "")
    done = lobbyctl("-json", "discovery", PORT=str(a.port))
    assert done.returncode == 0 and done.stdout == a.get("/v1/discovery").text
    # the flag beats the environment
    done = lobbyctl("-port", str(a.port), "resolve", "service:db", PORT=str(free_port()))
    assert (done.returncode, done.stdout) == (0, "bb.example\n")


def test_labels_add_and_del(env, spawn, run):
    a = spawn("a.example", env)
    port = ["-port", str(a.port)]
    assert run(*port, "labels", "add", "service:smtp", *SPECIAL) == (0, "", "")
    wait_for(lambda: run(*port, "resolve", "service:smtp")[1] == "a.example\n", what="added")
    for label in SPECIAL:
        assert run(*port, "resolve", label) == (0, "a.example\n", ""), label
    assert run(*port, "discoveries", "labels", *SPECIAL[:2])[1] == (
        "a.example    path:/srv/app dir\n             url:http://x/a?b=c&d=e#f\n"
    )
    assert run(*port, "labels", "del", "service:smtp", *SPECIAL) == (0, "", "")
    wait_for(lambda: run(*port, "resolve", "service:smtp")[1] == "", what="deleted")
    done = lobbyctl("-port", str(a.port), "labels", "add", "via:subprocess")
    assert (done.returncode, done.stdout, done.stderr) == (0, "", "")
    assert (a.labels_path / "_runtime").read_text() == "via:subprocess\n"


def test_token(env, spawn, run):
    a = spawn("a.example", {**env, "TOKEN": "s3cret"})
    port = ["-port", str(a.port)]
    status, out, err = run(*port, "discovery")
    assert (status, out) == (1, "")
    assert err == (
        f"lobbyctl: lobbyd answered 403 for http://127.0.0.1:{a.port}/v1/discovery: "
        "access denied (give the token with -token or TOKEN)\n"
    )
    assert run(*port, "-token", "wrong", "labels", "add", "x:y")[0] == 1
    assert run(*port, "-token", "s3cret", "resolve", "x:y") == (0, "", "")
    assert run(*port, "--token=s3cret", "discovery")[1].startswith("Hostname:\n  a.example\n")
    done = lobbyctl(*port, "discovery", TOKEN="s3cret")
    assert (done.returncode, done.stderr) == (0, "")
    done = lobbyctl(*port, "-json", "discoveries", TOKEN="wrong")
    assert done.returncode == 1 and done.stdout == ""
    assert done.stderr.count("\n") == 1 and "403" in done.stderr and "access denied" in done.stderr


def test_daemon_errors_are_one_line_and_exit_1(env, spawn, run):
    a = spawn("a.example", env)
    status, out, err = run("-port", str(a.port), "resolve", "")
    assert (status, out) == (1, "")
    assert err == (
        f"lobbyctl: lobbyd answered 400 for http://127.0.0.1:{a.port}/v1/resolve?label=: "
        "query parameter label is required\n"
    )
    done = lobbyctl("-port", str(a.port), "labels", "add", "ok:label", "bad\x01label")
    assert (done.returncode, done.stdout) == (1, "")
    assert done.stderr.count("\n") == 1
    assert "400" in done.stderr and "bad\\x01label" in done.stderr
    assert a.get("/v1/discovery").json()["labels"] == []  # nothing was added


def test_daemon_down(run):
    port = free_port()
    status, out, err = run("-port", str(port), "discoveries")
    assert (status, out) == (1, "")
    assert err.startswith(f"lobbyctl: cannot reach lobbyd at http://127.0.0.1:{port}: ")
    assert err.count("\n") == 1 and "refused" in err.lower()
    done = lobbyctl("-json", "discovery", PORT=str(port))
    assert (done.returncode, done.stdout) == (1, "")
    assert done.stderr.count("\n") == 1 and "cannot reach lobbyd" in done.stderr


def test_usage_error_exits_2_as_a_subprocess():
    done = lobbyctl("discoveries", "-json")
    assert (done.returncode, done.stdout) == (2, "")
    assert done.stderr == "lobbyctl: flags go before the command: -json (see lobbyctl -help)\n"


def on_a_terminal(*argv: str, **env: str) -> str:
    """Run lobbyctl with stdout on a pseudo-terminal; what it wrote there."""
    primary, secondary = pty.openpty()
    try:
        proc = subprocess.Popen(
            [sys.executable, "-m", "lobby.ctl", *argv],
            stdout=secondary,
            stderr=subprocess.PIPE,
            env={
                **{k: v for k, v in os.environ.items() if k not in CTL_VARS},
                "TERM": "xterm",
                **env,
            },
        )
        os.close(secondary)
        chunks = []
        while True:
            try:
                chunk = os.read(primary, 4096)
            except OSError:  # EIO: the child closed the terminal
                break
            if not chunk:
                break
            chunks.append(chunk)
        assert proc.wait(30) == 0, proc.stderr.read() if proc.stderr else ""
        if proc.stderr:
            proc.stderr.close()
    finally:
        os.close(primary)
    return b"".join(chunks).decode().replace("\r\n", "\n")


def test_colours_on_a_terminal_only_without_no_color(pair):
    a, _ = pair
    coloured = on_a_terminal("-port", str(a.port), "discoveries", "labels", "service:web")
    assert "\x1b[33ma.example\x1b[0m" in coloured  # yellow hostname
    assert "\x1b[32mservice\x1b[0m" in coloured  # green name
    assert "\x1b[35mweb\x1b[0m" in coloured  # magenta value
    plain = on_a_terminal(
        "-port", str(a.port), "discoveries", "labels", "service:web", NO_COLOR="1"
    )
    assert plain == "a.example    service:web\n"
    piped = lobbyctl("-port", str(a.port), "discoveries", "labels", "service:web")
    assert piped.stdout == "a.example    service:web\n"


def test_a_closed_pipe_ends_quietly(pair):
    a, _ = pair
    read_end, write_end = os.pipe()
    os.close(read_end)  # the reader is gone before lobbyctl writes: EPIPE
    try:
        done = lobbyctl("-port", str(a.port), "discoveries", stdout=write_end)
    finally:
        os.close(write_end)
    assert done.returncode == 1
    assert done.stderr == ""  # no traceback
