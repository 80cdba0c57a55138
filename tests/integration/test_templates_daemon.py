"""TEMPLATES in real lobbyd processes (SPEC §18), and `lobbyctl render` against them.

Changes come from real nodes' API or as raw packets published on the real broker (a
burst of 20 in one write, so it lands inside MIN however loaded the machine is). We
poll the file, the daemon's /v1/stats and a command counter, never the clock.
"""

from __future__ import annotations

import os
import shlex
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from support import envelope, nats_publish, wait_for

from lobby import ctl

EXAMPLES = Path(__file__).parents[2] / "examples"
NGINX = EXAMPLES / "nginx-upstream.conf.j2"
HOSTS = EXAMPLES / "hosts.j2"

COUNTER = "import sys\nwith open(sys.argv[1], 'a') as f:\n    f.write('run\\n')\n"


@pytest.fixture
def env(nats_server, channel) -> dict[str, str]:
    return {
        "NATS_URL": nats_server.url,
        "NATS_DISCOVERY_CHANNEL": channel,
        "KEEP_ALIVE": "1",
        "TTL": "120",  # the raw packets' node must not expire during the test
    }


@pytest.fixture
def counter(tmp_path: Path) -> tuple[str, Path]:
    """(a COMMAND that appends a line to a file, that file)."""
    script = tmp_path / "count.py"
    script.write_text(COUNTER)
    count = tmp_path / "count"
    return shlex.join([sys.executable, str(script), str(count)]), count


def runs(count: Path) -> int:
    return len(count.read_text().splitlines()) if count.exists() else 0


def text(path: Path) -> str:
    return path.read_text() if path.exists() else ""


def tstats(node: Any) -> dict[str, Any]:
    stats: dict[str, Any] = node.get("/v1/stats").json()["templates"]
    return stats


def writes(node: Any, i: int = 0) -> int:
    return int(tstats(node)["templates"][i]["writes"])


def test_a_template_follows_a_two_node_cluster(env, spawn, tmp_path, counter, nats_server, channel):
    command, count = counter
    out = tmp_path / "upstream-web.conf"
    a = spawn(
        "a.example",
        {**env, "TEMPLATES": f"{NGINX}:{out}:{command}", "TEMPLATE_WAIT": "400ms:2s"},
    )
    # the file appears after start
    wait_for(lambda: "upstream web {" in text(out), 15, what="the first render")
    b = spawn("b.example", {**env, "LABELS": "service:web"})
    wait_for(lambda: "    server b.example:80;\n" in text(out), 15, what="b in the upstream")
    wait_for(lambda: runs(count) == writes(a), 10, what="one command per write")

    # a label change rewrites the file (after MIN) and runs COMMAND once
    before, ran = writes(a), runs(count)
    assert b.request("POST", "/v1/labels", content="web_port:8080").text == "OK"
    wait_for(lambda: "server b.example:8080;" in text(out), 15, what="b's port in the upstream")
    wait_for(lambda: runs(count) == ran + 1, 10, what="the command after the rewrite")
    assert writes(a) == before + 1

    def publish(*labels_list: list[str]) -> None:
        nats_publish(nats_server.url, channel, [envelope("c.example", ls) for ls in labels_list])

    # a burst of 20 changes inside MIN gives one write (and one command)
    before, ran = writes(a), runs(count)
    publish(*[["service:web", f"web_port:{9000 + i}"] for i in range(20)])
    wait_for(lambda: "server c.example:9019;" in text(out), 15, what="the burst's final state")
    wait_for(lambda: runs(count) == ran + 1, 10, what="the command after the burst")
    assert writes(a) == before + 1
    assert "c.example:9000;" not in text(out)

    # a steady stream of changes, never MIN apart, still writes by MAX
    before = writes(a)
    port = 10000
    while writes(a) == before:
        port += 1
        assert port < 10300, "no write during a 30 s stream of changes"
        publish(["service:web", f"web_port:{port}"])
        time.sleep(0.1)  # the stream's pace (a change every 100 ms), not a wait for a result
    wait_for(lambda: f"server c.example:{port};" in text(out), 15, what="the stream's last state")
    wait_for(lambda: runs(count) == writes(a), 10, what="one command per write")

    # an unchanged render neither writes nor runs COMMAND
    passes, before, ran = tstats(a)["passes"], writes(a), runs(count)
    mtime = out.stat().st_mtime_ns
    publish(["service:web", f"web_port:{port}", "not:in-the-template"])
    wait_for(lambda: tstats(a)["passes"] > passes, 15, what="a render of the unchanged text")
    assert writes(a) == before and runs(count) == ran
    assert out.stat().st_mtime_ns == mtime

    assert text(out) == (
        "# Rendered by lobbyd on a.example: do not edit, changes are overwritten.\n"
        "upstream web {\n"
        "    server b.example:8080;\n"
        f"    server c.example:{port};\n"
        "}\n"
    )
    assert tstats(a)["commands"]["failed"] == 0
    assert "Traceback" not in a.output()


BREAKS = """\
{{ nodes | length }} nodes
{% for node in with_labels("boom:1") %}
{{ node.no_such_field }}
{% endfor %}
"""


def test_a_render_error_at_run_time_keeps_the_old_file(env, spawn, tmp_path, nats_server, channel):
    breaks = tmp_path / "breaks.j2"
    breaks.write_text(BREAKS)
    bad_out, hosts_out = tmp_path / "breaks.out", tmp_path / "hosts"
    a = spawn(
        "a.example",
        {
            **env,
            "LABELS": "public_ip4:10.9.0.1",
            "TEMPLATES": f"{breaks}:{bad_out};{HOSTS}:{hosts_out}",
            "TEMPLATE_WAIT": "100ms:1s",
        },
    )
    wait_for(lambda: text(bad_out) == "1 nodes\n", 15, what="the first render")
    mtime = bad_out.stat().st_mtime_ns
    nats_publish(
        nats_server.url, channel, [envelope("x.example", ["boom:1", "public_ip4:10.9.0.2"])]
    )
    # the other template goes on
    wait_for(lambda: "10.9.0.2\tx.example\n" in text(hosts_out), 15, what="x in the hosts file")
    wait_for(lambda: tstats(a)["templates"][0]["failures"] >= 1, 10, what="the failure counted")
    assert text(bad_out) == "1 nodes\n" and bad_out.stat().st_mtime_ns == mtime
    log = a.output()
    assert f"template {breaks} line 3: UndefinedError" in log
    assert f"{bad_out} left as it was" in log
    assert "Traceback" not in log

    nats_publish(nats_server.url, channel, [envelope("x.example", ["public_ip4:10.9.0.2"])])
    # the file is written (in a worker thread) a moment before the error is cleared
    wait_for(
        lambda: text(bad_out) == "2 nodes\n" and tstats(a)["templates"][0]["last_error"] == "",
        15,
        what="the template rendering again, its error cleared",
    )


def test_lobbyd_refuses_to_start_with_a_broken_template(env, spawn, tmp_path):
    broken = tmp_path / "broken.j2"
    broken.write_text("{% for n in nodes %}\n{{ n.hostname }\n")
    a = spawn("a.example", {**env, "TEMPLATES": f"{broken}:{tmp_path}/out"}, ready=False)
    assert a.wait(15) == 2
    assert a.output() == f"lobbyd: TEMPLATES: {broken} line 2 does not compile: unexpected '}}'\n"


# -- lobbyctl render --------------------------------------------------------------------

PROMETHEUS = """\
{% for group in prometheus("node") %}
{{ group.Targets | join(" ") }} {{ group.Labels | dictsort }}
{% endfor %}
"""


@pytest.fixture
def ctl_run(monkeypatch, capsys):
    """`lobbyctl ARGV` in this process -> (exit status, stdout, stderr)."""
    for var in ("HOST", "PORT", "PROTOCOL", "TOKEN", "NO_COLOR"):
        monkeypatch.delenv(var, raising=False)

    def call(*argv: str) -> tuple[int, str, str]:
        status = ctl.main(list(argv))
        out, err = capsys.readouterr()
        return status, out, err

    return call


def test_lobbyctl_render_gives_what_lobbyd_writes(env, spawn, tmp_path, ctl_run):
    prom = tmp_path / "prom.j2"
    prom.write_text(PROMETHEUS)
    hosts_out, prom_out = tmp_path / "hosts", tmp_path / "prom"
    a = spawn(
        "a.example",
        {
            **env,
            "LABELS": "public_ip4:10.8.0.1,prometheus:node",
            "NODE_EXPORTER_PORT": "9300",
            "TEMPLATES": f"{HOSTS}:{hosts_out};{prom}:{prom_out}",
            "TEMPLATE_WAIT": "100ms:1s",
        },
    )
    spawn(
        "b.example",
        {
            **env,
            "LABELS": "public_ip4:10.8.0.2,public_ip4:10.8.0.3,"
            "prometheus:node:host:10.8.0.2,prometheus:node:location:brno",
        },
    )
    wait_for(lambda: "10.8.0.3\tb.example\n" in text(hosts_out), 15, what="b in the hosts file")
    wait_for(lambda: "10.8.0.2:9300" in text(prom_out), 15, what="b in the prometheus render")
    assert text(hosts_out) == (
        "# Rendered by lobbyd on a.example: do not edit, changes are overwritten.\n"
        "10.8.0.1\ta.example\n"
        "10.8.0.2\tb.example\n"
        "10.8.0.3\tb.example\n"
    )
    port = str(a.port)
    assert ctl_run("-port", port, "render", str(HOSTS)) == (0, text(hosts_out), "")
    assert ctl_run("-port", port, "render", str(prom)) == (0, text(prom_out), "")
    assert text(prom_out) == ("a.example:9300 []\n10.8.0.2:9300 [('location', 'brno')]\n")

    written = tmp_path / "sub" / "copy"
    assert ctl_run("-port", port, "render", "-o", str(written), str(HOSTS)) == (0, "", "")
    assert written.read_text() == text(hosts_out)
    os.chmod(written, 0o600)
    assert ctl_run("-port", port, "render", str(prom), f"--output={written}")[0] == 0
    assert written.read_text() == text(prom_out)
    assert written.stat().st_mode & 0o777 == 0o600


def test_lobbyctl_render_errors(env, spawn, tmp_path, ctl_run):
    a = spawn("a.example", env)
    port = str(a.port)
    fails = tmp_path / "fails.j2"
    fails.write_text("ok\n{{ nodes[0].nope }}\n")
    status, out, err = ctl_run("-port", port, "render", str(fails))
    assert (status, out) == (1, "")
    assert err.startswith(f"lobbyctl: {fails} line 2: UndefinedError: ") and err.count("\n") == 1

    missing = tmp_path / "missing.j2"
    assert ctl_run("-port", port, "render", str(missing)) == (
        2,
        "",
        f"lobbyctl: {missing}: no such file\n",
    )
    status, _, err = ctl_run("-port", port, "render")
    assert status == 2 and "render: give at least one SOURCE" in err
    status, _, err = ctl_run("-port", port, "render", "a.j2", "b.j2")
    assert status == 2 and "unexpected argument 'b.j2'" in err
    status, _, err = ctl_run("-port", port, "render", "a.j2", "-o")
    assert status == 2 and "flag needs an argument: -o" in err
