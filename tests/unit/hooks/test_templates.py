"""Templates (SPEC §18): parsing, rendering, quiescence on a fake clock, the runner.

The runner's tests write real files and run real commands; none asserts how long
anything took. The timing rule itself (MIN of quiet, MAX at the latest) is checked on
`Quiescence` with a clock the test moves.
"""

from __future__ import annotations

import asyncio
import logging
import os
import re
import shlex
import stat
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from fakes import FakeClock
from support import until

from lobby import config, lobbyd
from lobby.core.model import Discovery
from lobby.hooks.templates import (
    Quiescence,
    RenderError,
    Template,
    TemplateConfigError,
    TemplateData,
    TemplateRunner,
    TemplateSpec,
    compile_template,
    load_templates,
    parse_templates,
    registry_view,
    render,
)
from lobby.view.prometheus import target_groups
from lobby.view.registry import Registry

EXAMPLES = Path(__file__).parents[3] / "examples"


def node(hostname: str, *labels: str) -> dict[str, Any]:
    return {"hostname": hostname, "labels": sorted(labels), "last_check": 0}


def view(*nodes: dict[str, Any], me: dict[str, Any] | None = None, **environ: str) -> TemplateData:
    discoveries = [Discovery(n["hostname"], tuple(n["labels"])) for n in nodes]
    return TemplateData(
        nodes=list(nodes),
        me=me or node("me.example"),
        prometheus=lambda name: target_groups(discoveries, name, 9100),
        environ=environ,
    )


def source(tmp_path: Path, text: str, name: str = "t.j2") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def rendered(tmp_path: Path, text: str, v: TemplateData) -> str:
    return render(compile_template(source(tmp_path, text)), v)


# -- TEMPLATES --------------------------------------------------------------------------


def test_entries_are_split_on_semicolons_and_the_command_keeps_its_colons(tmp_path):
    specs = parse_templates(
        f" {tmp_path}/a.j2:{tmp_path}/a.conf ; "
        f"{tmp_path}/b.j2:{tmp_path}/b.conf:curl -s http://127.0.0.1:8080/reload ;;"
    )
    assert specs == [
        TemplateSpec(tmp_path / "a.j2", tmp_path / "a.conf", ""),
        TemplateSpec(
            tmp_path / "b.j2", tmp_path / "b.conf", "curl -s http://127.0.0.1:8080/reload"
        ),
    ]


def test_relative_paths_are_taken_from_the_current_directory(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (spec,) = parse_templates("t/a.j2:out/a.conf:")
    assert spec == TemplateSpec(tmp_path / "t" / "a.j2", tmp_path / "out" / "a.conf", "")


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        ("/a.j2", "expected SOURCE:DESTINATION[:COMMAND]"),
        ("/a.j2:", "expected SOURCE:DESTINATION[:COMMAND]"),
        (":/a.conf", "expected SOURCE:DESTINATION[:COMMAND]"),
        ("/a.j2:/a.conf:echo 'unclosed", "cannot be split like a shell would"),
        ("/a.j2:/same;/b.j2:/same", "both write /same"),
    ],
)
def test_malformed_entries_are_refused_with_a_reason(text, problem):
    with pytest.raises(TemplateConfigError, match=re.escape(problem)):
        parse_templates(text)


def test_wait_takes_min_and_max_with_units():
    assert config.parse_min_max("2s:10s") == (2.0, 10.0)
    assert config.parse_min_max("250ms:1m") == (0.25, 60.0)
    assert config.parse_min_max("0:0") == (0.0, 0.0)
    assert config.parse_min_max("5s") == (5.0, 20.0)  # as consul-template: MAX = 4 x MIN
    for bad in ("10s:2s", "2s:", "x:1s", "", "1s:2s:3s"):
        with pytest.raises(ValueError):
            config.parse_min_max(bad)


def test_settings_defaults_and_one_line_errors():
    settings = config.load({})
    assert (settings.templates, settings.template_wait) == ((), (2.0, 10.0))
    assert settings.template_command_timeout == 60.0
    with pytest.raises(config.ConfigError, match="TEMPLATE_WAIT"):
        config.load({"TEMPLATE_WAIT": "10s:2s"})
    with pytest.raises(config.ConfigError, match="TEMPLATE_COMMAND_TIMEOUT"):
        config.load({"TEMPLATE_COMMAND_TIMEOUT": "0"})


def exit_line(capsys, environ: dict[str, str]) -> str:
    with pytest.raises(SystemExit) as stopped:
        lobbyd.load_settings(environ)
    assert stopped.value.code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1
    return err


def test_lobbyd_exits_2_naming_a_missing_source(tmp_path, capsys):
    missing = tmp_path / "missing.j2"
    err = exit_line(capsys, {"TEMPLATES": f"{missing}:{tmp_path}/out"})
    assert err == f"lobbyd: TEMPLATES: {missing}: no such file\n"


def test_lobbyd_exits_2_naming_a_template_that_does_not_compile(tmp_path, capsys):
    bad = source(tmp_path, "fine\n{% for x in nodes %}\n{{ x }\n{% endfor %}\n", "bad.j2")
    good = source(tmp_path, "ok\n", "good.j2")
    err = exit_line(capsys, {"TEMPLATES": f"{good}:{tmp_path}/a;{bad}:{tmp_path}/b"})
    assert err.startswith(f"lobbyd: TEMPLATES: {bad} line 3 does not compile: ")


def test_lobbyd_starts_with_good_templates(tmp_path):
    good = source(tmp_path, "{{ nodes | length }}\n")
    settings = lobbyd.load_settings({"TEMPLATES": f"{good}:{tmp_path}/out:true"})
    assert [t.spec.command for t in load_templates(settings.templates)] == ["true"]


# -- rendering --------------------------------------------------------------------------

CLUSTER = [
    node("a.example", "service:web", "public_ip4:10.0.0.1", "prometheus:node"),
    node("b.example", "service:web", "web_port:8080", "public_ip4:10.0.0.2", "public_ip4:10.0.0.3"),
    node("c.example", "service:db", "prometheus:node:host:10.0.0.9", "prometheus:node:port:9200"),
    node("d.example"),
]


def test_context_nodes_me_and_the_helpers(tmp_path):
    text = (
        "{{ nodes | map(attribute='hostname') | join(' ') }}\n"
        "me={{ me.hostname }}\n"
        "{% for n in with_labels('service:web', 'service:db') %}{{ n.hostname }}"
        " has {{ n.labels | length }} labels\n{% endfor %}"
        "{{ with_labels(['service:db']) | map(attribute='hostname') | list }}\n"
        "{{ with_prefixes('public_ip4:') | map(attribute='hostname') | list }}\n"
        "{{ label_values(nodes[1], 'public_ip4') }} {{ label_values('c.example', 'prometheus:node') }}"
        " {{ label_values('nobody', 'x') }}\n"
        "{{ env('REGION') }} {{ env('UNSET', 'fallback') }}\n"
    )
    out = rendered(tmp_path, text, view(*CLUSTER, me=CLUSTER[0], REGION="eu"))
    assert out == (
        "a.example b.example c.example d.example\n"
        "me=a.example\n"
        "a.example has 3 labels\n"  # ALL their labels, not only the matching ones
        "b.example has 4 labels\n"
        "c.example has 3 labels\n"
        "['c.example']\n"
        "['a.example', 'b.example']\n"
        "['10.0.0.2', '10.0.0.3'] ['host:10.0.0.9', 'port:9200'] []\n"
        "eu fallback\n"
    )


def test_prometheus_is_the_sd_answer(tmp_path):
    out = rendered(
        tmp_path,
        "{% for g in prometheus('node') %}{{ g.Targets | join(',') }};{% endfor %}\n",
        view(*CLUSTER),
    )
    assert out == "a.example:9100;10.0.0.9:9200;"  # trim_blocks: endfor takes its newline


async def test_registry_view_is_what_the_api_shows(tmp_path):
    registry = Registry(30)
    for n in CLUSTER:
        registry.update(Discovery(n["hostname"], tuple(n["labels"])))
    build = await registry_view(registry, lambda: Discovery("me.example", ("x:y",)), 9300)()
    registry.update(Discovery("later.example", ()))  # after the snapshot: not in this view
    v = build()
    assert [n["hostname"] for n in v.nodes] == [n["hostname"] for n in CLUSTER]
    assert v.nodes[1]["labels"] == CLUSTER[1]["labels"]
    assert v.me == {"hostname": "me.example", "labels": ["x:y"], "last_check": 0}
    assert v.prometheus("node") == target_groups(registry.discoveries(), "node", 9300)


def test_blocks_take_their_line_and_the_final_newline_stays(tmp_path):
    text = "start\n{% for n in nodes %}\n  {% if n.labels %}\n{{ n.hostname }}\n  {% endif %}\n{% endfor %}\nend\n"
    assert rendered(tmp_path, text, view(*CLUSTER)) == (
        "start\na.example\nb.example\nc.example\nend\n"
    )


def test_an_undefined_name_is_an_error_with_its_line(tmp_path):
    text = "one\n{% for n in nodes %}\n{{ n.nope }}\n{% endfor %}\n"
    with pytest.raises(RenderError) as failed:
        rendered(tmp_path, text, view(*CLUSTER))
    assert failed.value.where == f"{tmp_path / 't.j2'} line 3"
    assert "UndefinedError" in failed.value.message and "nope" in failed.value.message


def test_an_unset_environment_variable_is_an_error(tmp_path):
    with pytest.raises(RenderError, match=r"line 2: environment variable NOPE is not set"):
        rendered(tmp_path, "x\n{{ env('NOPE') }}\n", view())


def test_an_error_in_an_included_file_names_both_lines(tmp_path):
    source(tmp_path, "fine\n{{ missing_name }}\n", "part.j2")
    with pytest.raises(RenderError) as failed:
        rendered(tmp_path, "a\nb\n{% include 'part.j2' %}\n", view())
    assert failed.value.where == f"{tmp_path / 't.j2'} line 3 ({tmp_path / 'part.j2'} line 2)"


@pytest.mark.parametrize(
    "text",
    [
        "{{ ''.__class__.__mro__ }}",
        "{{ nodes.__class__ }}",
        "{{ nodes.append(1) }}",  # the view is read-only
        "{{ me.update({'hostname': 'x'}) }}",
        "{{ env.__globals__ }}",
        "{{ range(10 ** 9) | list | length }}",
    ],
)
def test_the_sandbox_refuses_unsafe_code(tmp_path, text):
    with pytest.raises(RenderError):
        rendered(tmp_path, text, view(*CLUSTER))


def test_nginx_example(tmp_path):
    template = compile_template(EXAMPLES / "nginx-upstream.conf.j2")
    assert render(template, view(*CLUSTER, me=CLUSTER[0])) == (
        "# Rendered by lobbyd on a.example: do not edit, changes are overwritten.\n"
        "upstream web {\n"
        "    server a.example:80;\n"
        "    server b.example:8080;\n"
        "}\n"
    )
    assert render(template, view(CLUSTER[3], me=CLUSTER[3])) == (
        "# Rendered by lobbyd on d.example: do not edit, changes are overwritten.\n"
        "upstream web {\n"
        "    server 127.0.0.1:80 down;  # no node has service:web\n"
        "}\n"
    )


def test_hosts_example(tmp_path):
    template = compile_template(EXAMPLES / "hosts.j2")
    assert render(template, view(*CLUSTER, me=CLUSTER[2])) == (
        "# Rendered by lobbyd on c.example: do not edit, changes are overwritten.\n"
        "10.0.0.1\ta.example\n"
        "10.0.0.2\tb.example\n"
        "10.0.0.3\tb.example\n"
    )


# -- quiescence -------------------------------------------------------------------------


def test_quiet_for_min_renders():
    clock = FakeClock()
    q = Quiescence(2, 10, clock)
    assert q.due() is None
    q.changed()
    assert q.due() == 2
    clock.now += 1.5
    assert q.due() == pytest.approx(0.5)
    clock.now += 0.5
    assert q.due() == 0


def test_each_change_restarts_min():
    clock = FakeClock()
    q = Quiescence(2, 10, clock)
    q.changed()
    clock.now += 1.9
    q.changed()
    assert q.due() == 2
    clock.now += 1.9
    assert q.due() == pytest.approx(0.1)


def test_a_burst_inside_min_is_one_render():
    clock = FakeClock()
    q = Quiescence(0.2, 1, clock)
    renders = 0
    for _ in range(20):
        q.changed()
        clock.now += 0.005
    while q.pending:
        clock.now += 0.01
        if q.due() == 0:
            q.rendering()
            renders += 1
    assert renders == 1


def test_a_steady_stream_renders_by_max():
    clock = FakeClock()
    q = Quiescence(2, 10, clock)
    start = clock.now
    renders: list[float] = []
    while clock.now - start < 35:  # a change every second: never 2 s of quiet
        q.changed()
        if q.due() == 0:
            q.rendering()
            renders.append(clock.now - start)
            q.changed()  # this second's change is the next render's
        clock.now += 1
    assert renders == [10, 20, 30]


def test_changes_after_a_render_started_are_the_next_render():
    clock = FakeClock()
    q = Quiescence(2, 10, clock)
    q.changed()
    clock.now += 2
    assert q.due() == 0
    q.rendering()
    assert q.due() is None and not q.pending
    q.changed()
    assert q.due() == 2


def test_zero_wait_renders_at_once():
    q = Quiescence(0, 0, FakeClock())
    q.changed()
    assert q.due() == 0


def test_min_above_max_is_refused():
    with pytest.raises(ValueError):
        Quiescence(3, 2)


# -- the runner -------------------------------------------------------------------------

COUNTER = "import sys; open(sys.argv[1], 'a').write('run\\n')"


class Cluster:
    """A mutable view for the runner."""

    def __init__(self, *nodes: dict[str, Any]) -> None:
        self.nodes = list(nodes)

    def snapshot(self):
        nodes = list(self.nodes)  # taken now, built later (in the worker thread)
        return lambda: view(*nodes)


def counter_command(path: Path) -> str:
    return shlex.join([sys.executable, "-c", COUNTER, str(path)])


def runs(path: Path) -> int:
    return len(path.read_text().splitlines()) if path.exists() else 0


def make_runner(
    tmp_path: Path, cluster: Cluster, entries: list[tuple[str, str, str]], **kw: Any
) -> TemplateRunner:
    """entries: (template text, destination name, command)."""
    templates = []
    for i, (text, dest, command) in enumerate(entries):
        src = source(tmp_path, text, f"t{i}.j2")
        templates.append(
            Template(TemplateSpec(src, tmp_path / dest, command), compile_template(src))
        )
    opts: dict[str, Any] = {"wait": (0.05, 0.5), "timeout": 10.0}
    opts.update(kw)
    return TemplateRunner(templates, snapshot=cluster.snapshot, **opts)


HOSTS = "{% for n in nodes %}{{ n.hostname }}\n{% endfor %}"


async def test_writes_only_when_the_text_changed_and_runs_the_command_then(tmp_path):
    cluster = Cluster(node("a"))
    count = tmp_path / "count"
    runner = make_runner(tmp_path, cluster, [(HOSTS, "out", counter_command(count))])
    out = tmp_path / "out"
    await runner.render_all()
    assert out.read_text() == "a\n" and runs(count) == 1
    os.utime(out, ns=(1_000_000_000, 1_000_000_000))
    await runner.render_all()  # same text: no write, no command
    assert out.stat().st_mtime_ns == 1_000_000_000 and runs(count) == 1
    cluster.nodes.append(node("b"))
    await runner.render_all()
    assert out.read_text() == "a\nb\n" and runs(count) == 2
    assert runner.stats()["templates"][0] | {"source": None} == {  # type: ignore[index]
        "source": None,
        "destination": str(out),
        "renders": 3,
        "writes": 2,
        "failures": 0,
        "last_error": "",
    }


async def test_an_existing_file_with_the_same_text_is_left_alone(tmp_path):
    out = tmp_path / "out"
    out.write_text("a\n")
    count = tmp_path / "count"
    runner = make_runner(tmp_path, Cluster(node("a")), [(HOSTS, "out", counter_command(count))])
    before = out.stat().st_mtime_ns
    await runner.render_all()  # a restart of lobbyd must not reload nginx
    assert out.stat().st_mtime_ns == before and runs(count) == 0


async def test_the_destination_keeps_its_mode_and_owner(tmp_path):
    out = tmp_path / "out"
    out.write_text("old\n")
    os.chmod(out, 0o640)
    owner = (out.stat().st_uid, out.stat().st_gid)
    if os.getuid() == 0:  # root can give the file to someone else: it must stay theirs
        owner = (65534, 65534)
        os.chown(out, *owner)
    runner = make_runner(tmp_path, Cluster(node("a")), [(HOSTS, "out", "")])
    await runner.render_all()
    st = out.stat()
    assert out.read_text() == "a\n"
    assert stat.S_IMODE(st.st_mode) == 0o640
    assert (st.st_uid, st.st_gid) == owner


async def test_a_new_destination_gets_0644_and_its_directory(tmp_path):
    runner = make_runner(tmp_path, Cluster(node("a")), [(HOSTS, "sub/dir/out", "")])
    await runner.render_all()
    out = tmp_path / "sub" / "dir" / "out"
    assert out.read_text() == "a\n" and stat.S_IMODE(out.stat().st_mode) == 0o644


async def test_a_render_error_keeps_the_old_file_and_the_others_go_on(tmp_path, caplog):
    caplog.set_level(logging.INFO, logger="lobby.templates")
    bad = "{{ nodes | length }}\n{% for n in with_labels('boom:1') %}\n{{ n.nope }}\n{% endfor %}\n"
    cluster = Cluster(node("a"))
    count = tmp_path / "count"
    runner = make_runner(
        tmp_path, cluster, [(bad, "bad", counter_command(count)), (HOSTS, "good", "")]
    )
    await runner.render_all()
    assert (tmp_path / "bad").read_text() == "1\n" and runs(count) == 1
    cluster.nodes.append(node("b", "boom:1"))
    await runner.render_all()
    await runner.render_all()  # the same error again is not logged again
    assert (tmp_path / "bad").read_text() == "1\n" and runs(count) == 1
    assert (tmp_path / "good").read_text() == "a\nb\n"
    errors = [r.getMessage() for r in caplog.records if r.levelno == logging.ERROR]
    assert len(errors) == 1
    assert f"{tmp_path / 't0.j2'} line 3: UndefinedError" in errors[0]
    assert f"{tmp_path / 'bad'} left as it was" in errors[0]
    assert "Traceback" not in caplog.text
    cluster.nodes[1] = node("b")
    await runner.render_all()
    assert (tmp_path / "bad").read_text() == "2\n" and runs(count) == 2
    assert "renders again" in caplog.text
    assert runner.stats()["templates"][0]["failures"] == 2  # type: ignore[index]


async def test_a_write_error_is_logged_and_the_others_go_on(tmp_path, caplog):
    (tmp_path / "taken").mkdir()  # a directory where the file should go
    runner = make_runner(tmp_path, Cluster(node("a")), [(HOSTS, "taken", ""), (HOSTS, "ok", "")])
    await runner.render_all()
    assert (tmp_path / "ok").read_text() == "a\n"
    assert any("cannot write" in r.getMessage() for r in caplog.records)


async def test_each_command_runs_once_per_pass_in_order(tmp_path):
    log_file = tmp_path / "log"
    say = "import sys; open(sys.argv[1], 'a').write(sys.argv[2] + '\\n')"

    def cmd(word: str) -> str:
        return shlex.join([sys.executable, "-c", say, str(log_file), word])

    cluster = Cluster(node("a"))
    runner = make_runner(
        tmp_path,
        cluster,
        [(HOSTS, "1", cmd("reload")), (HOSTS, "2", cmd("other")), (HOSTS, "3", cmd("reload"))],
    )
    await runner.render_all()
    assert log_file.read_text() == "reload\nother\n"
    assert runner.stats()["commands"] == {"runs": 2, "failed": 0}


async def test_a_hanging_command_is_killed_at_the_timeout(tmp_path, caplog):
    runner = make_runner(tmp_path, Cluster(node("a")), [(HOSTS, "out", "sleep 600")], timeout=0.2)
    await runner.render_all()
    assert runner.stats()["commands"] == {"runs": 1, "failed": 1}
    assert any("still running after 0.2 s: killed" in r.getMessage() for r in caplog.records)


async def test_a_failing_command_is_logged_with_its_output(tmp_path, caplog):
    command = shlex.join(["sh", "-c", "echo nginx: bad config; exit 3"])
    runner = make_runner(tmp_path, Cluster(node("a")), [(HOSTS, "out", command)])
    await runner.render_all()
    (line,) = [r.getMessage() for r in caplog.records if "failed with status 3" in r.getMessage()]
    assert "nginx: bad config" in line
    assert runner.stats()["commands"] == {"runs": 1, "failed": 1}


async def test_run_renders_after_start_and_a_burst_is_one_pass(tmp_path):
    cluster = Cluster(node("a"))
    (tmp_path / ".out.x1y2.tmp").write_text("left by a killed write")
    runner = make_runner(tmp_path, cluster, [(HOSTS, "out", "")], wait=(0.05, 5.0))
    task = asyncio.create_task(runner.run())
    try:
        await until(lambda: runner.passes == 1, what="the render after start")
        assert (tmp_path / "out").read_text() == "a\n"
        assert not (tmp_path / ".out.x1y2.tmp").exists()
        for i in range(20):  # one burst, with no await in between: well inside MIN
            cluster.nodes.append(node(f"n{i:02}"))
            runner.changed()
        await until(lambda: runner.passes == 2, what="the render after the burst")
        assert (tmp_path / "out").read_text().split() == ["a"] + [f"n{i:02}" for i in range(20)]
        await asyncio.sleep(0.2)  # four MINs: nothing more may happen
        assert runner.passes == 2
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)


def test_the_render_path_of_lobbyctl_imports_no_server_stack():
    code = "import sys; from lobby import ctl\nfrom lobby.hooks import templates\nprint(' '.join(sorted(sys.modules)))"
    modules = set(
        subprocess.run(
            [sys.executable, "-c", code], capture_output=True, text=True, check=True
        ).stdout.split()
    )
    assert "jinja2" in modules and "lobby.hooks.templates" in modules
    heavy = {
        "fastapi",
        "uvicorn",
        "starlette",
        "pydantic",
        "nats",
        "redis",
        "lobby.daemon",
        "lobby.api",
    }
    assert {m for m in modules if m.split(".")[0] in heavy or m in heavy} == set()


async def test_a_render_pass_runs_with_the_garbage_collector_paused(tmp_path):
    import gc

    seen: list[bool] = []

    class Watched(Cluster):
        def snapshot(self):
            build = super().snapshot()
            return lambda: (seen.append(gc.isenabled()), build())[1]

    cluster = Watched(node("a.example"))
    runner = make_runner(tmp_path, cluster, [("{{ nodes | length }}", "out", "")])
    assert gc.isenabled()
    await runner.render_all()
    assert seen == [False]  # built (and rendered) with the collector paused
    assert gc.isenabled()  # and on again after
    assert (tmp_path / "out").read_text() == "1"
    gc.disable()  # paused by someone else: left paused
    try:
        await runner.render_all()
        assert not gc.isenabled()
    finally:
        gc.enable()
