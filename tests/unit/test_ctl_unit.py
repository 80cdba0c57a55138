"""lobbyctl without a daemon: argument parsing, human output, colour, start-up imports."""

import io
import os
import re
import subprocess
import sys
import textwrap

import pytest
from support import free_port

import lobby
from lobby import LobbyException, ctl
from lobby.ctl import Options, UsageError, parse_args


def parse(*argv: str, **env: str) -> Options:
    return parse_args(list(argv), env)


def plain(lines: list[ctl.Line]) -> str:
    out = io.StringIO()
    ctl.write_lines(lines, out, colour=False)
    return out.getvalue()


# -- flags ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "argv",
    [
        ["-host", "h.example", "discovery"],
        ["--host", "h.example", "discovery"],
        ["-host=h.example", "discovery"],
        ["--host=h.example", "discovery"],
    ],
)
def test_every_flag_form_sets_the_host(argv):
    assert parse(*argv).host == "h.example"


def test_all_flags_together():
    opts = parse(
        "-host", "h", "--port=8080", "-proto", "HTTPS", "--token", "s3", "-json", "discovery"
    )
    assert (opts.host, opts.port, opts.proto, opts.token, opts.json) == (
        "h",
        8080,
        "https",
        "s3",
        True,
    )
    assert (opts.action, opts.args) == ("discovery", [])


def test_defaults_without_flags_or_environment():
    opts = parse("discovery")
    assert (opts.host, opts.port, opts.proto, opts.token, opts.json) == (
        "127.0.0.1",
        1313,
        "http",
        "",
        False,
    )


def test_environment_fills_unset_flags():
    opts = parse("discovery", HOST="e.example", PORT="2000", PROTOCOL="https", TOKEN="t")
    assert (opts.host, opts.port, opts.proto, opts.token) == ("e.example", 2000, "https", "t")


def test_flags_beat_the_environment():
    opts = parse(
        "-host",
        "f",
        "-port",
        "3000",
        "-proto",
        "http",
        "-token",
        "x",
        "discovery",
        HOST="e",
        PORT="2000",
        PROTOCOL="https",
        TOKEN="t",
    )
    assert (opts.host, opts.port, opts.proto, opts.token) == ("f", 3000, "http", "x")


def test_an_empty_flag_is_unset_like_in_go():
    assert parse("-host=", "discovery", HOST="e").host == "e"
    assert parse("-token", "", "discovery").token == ""


def test_last_repeated_flag_wins():
    assert parse("-port", "1", "-port", "2", "discovery").port == 2


@pytest.mark.parametrize(
    ("value", "expected"), [("true", True), ("1", True), ("false", False), ("F", False)]
)
def test_json_takes_a_go_boolean(value, expected):
    assert parse(f"-json={value}", "discovery").json is expected


@pytest.mark.parametrize(
    ("argv", "env", "message"),
    [
        (["-port", "abc", "discovery"], {}, "-port 'abc': expected a port number"),
        (["-port", "0", "discovery"], {}, "-port '0'"),
        (["-port", "65536", "discovery"], {}, "-port '65536'"),
        (["discovery"], {"PORT": "x1"}, "PORT 'x1'"),
        (["-proto", "ftp", "discovery"], {}, "-proto 'ftp': expected http or https"),
        (["discovery"], {"PROTOCOL": "gopher"}, "PROTOCOL 'gopher'"),
        (["-json=maybe", "discovery"], {}, "invalid boolean value 'maybe'"),
        (["-verbose", "discovery"], {}, "unknown flag: -verbose"),
        (["discovery", "-host"], {}, "flags go before the command: -host"),
        (["-host"], {}, "flag needs an argument: -host"),
        ([], {}, "missing command"),
        (["-json"], {}, "missing command"),
        (["explode"], {}, "unknown command 'explode'"),
        (["labels"], {}, "labels: expects add or del"),
        (["labels", "remove", "x"], {}, "unknown labels subcommand 'remove'"),
        (["labels", "add"], {}, "labels add: give at least one LABEL"),
        (["labels", "del"], {}, "labels del: give at least one LABEL"),
        (["discoveries", "labels"], {}, "discoveries labels: give at least one LABEL"),
        (["discoveries", "search"], {}, "discoveries search: give at least one PREFIX"),
        (["discoveries", "all"], {}, "unknown discoveries subcommand 'all'"),
        (["discovery", "extra"], {}, "discovery: unexpected argument 'extra'"),
        (["resolve"], {}, "resolve: expects exactly one LABEL"),
        (["resolve", "a", "b"], {}, "resolve: expects exactly one LABEL"),
        (["resolve", "service:web", "-json"], {}, "flags go before the command: -json"),
        (["labels", "add", "x", "--token=t"], {}, "flags go before the command: --token=t"),
        (["prometheus"], {}, "prometheus: expects exactly one NAME"),
    ],
)
def test_usage_errors(argv, env, message):
    with pytest.raises(UsageError) as caught:
        parse_args(argv, env)
    assert message in str(caught.value)


@pytest.mark.parametrize(
    ("argv", "action", "args"),
    [
        (["resolve", "service:web"], "resolve", ["service:web"]),
        (["discovery"], "discovery", []),
        (["discoveries"], "discoveries", []),
        (["discoveries", "labels", "a:1", "b"], "find_labels", ["a:1", "b"]),
        (["discoveries", "search", "prometheus:"], "find_prefixes", ["prometheus:"]),
        (["labels", "add", "a", "b c"], "add", ["a", "b c"]),
        (["labels", "del", "a"], "del", ["a"]),
        (["prometheus", "node"], "prometheus", ["node"]),
        # a label may start with a dash, like in the Go tool, when it is not one of our flags
        (["labels", "add", "-weird"], "add", ["-weird"]),
        # `--` ends the flags, so a command word may follow anything
        (["-json", "--", "discovery"], "discovery", []),
    ],
)
def test_commands(argv, action, args):
    opts = parse(*argv)
    assert (opts.action, opts.args) == (action, args)


@pytest.mark.parametrize("flag", ["-h", "--help", "-help", "--h"])
def test_help_flags(flag):
    assert parse(flag).help
    assert parse("-port", "nonsense", flag).help  # help wins over later checks


def test_main_prints_help_on_stdout(capsys):
    assert ctl.main(["-h"]) == 0
    out, err = capsys.readouterr()
    assert out == ctl.USAGE and err == ""
    for word in (
        "resolve LABEL",
        "discoveries search PREFIX",
        "labels del",
        "prometheus NAME",
        "-token",
    ):
        assert word in out


@pytest.mark.parametrize(
    ("argv", "line"),
    [
        (["frobnicate"], "unknown command 'frobnicate'"),
        (["-port", "x", "discoveries"], "-port 'x': expected a port number from 1 to 65535"),
        (["discoveries", "-json"], "flags go before the command: -json"),
        (["-nope"], "unknown flag: -nope"),
        (["labels"], "labels: expects add or del"),
    ],
)
def test_main_usage_error_is_one_line_with_a_hint(argv, line, capsys):
    assert ctl.main(argv) == 2
    out, err = capsys.readouterr()
    assert out == ""
    assert err == f"lobbyctl: {line} (see lobbyctl -help)\n"


def test_lobbyctl_alone_prints_the_usage_and_exits_2(capsys):
    assert ctl.main([]) == 2
    assert capsys.readouterr() == ("", ctl.USAGE)


@pytest.mark.parametrize("flag", ["-version", "--version", "-V"])
def test_version(flag, capsys):
    assert ctl.main([flag]) == 0
    assert capsys.readouterr() == (f"lobbyctl {lobby.__version__}\n", "")
    assert ctl.main(["-port", "x", flag, "discoveries"]) == 0  # like -help: wins


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["discoveries", "labels", "a,b"], "'a,b' contains a comma"),
        (["discoveries", "search", "x,"], "'x,' contains a comma"),
        (["labels", "add", "two\nlines"], "contains a line break"),
        (["labels", "del", "  "], "a label is empty"),
        (["prometheus", ""], "name is empty"),
    ],
)
def test_arguments_the_client_refuses_exit_2_before_any_request(argv, message, capsys):
    # nothing listens on the port: had lobbyctl sent a request, it would exit 1
    assert ctl.main(["-port", str(free_port()), *argv]) == 2
    out, err = capsys.readouterr()
    assert out == ""
    assert err.count("\n") == 1 and message in err


def test_main_takes_sys_argv_when_no_argv_is_given(monkeypatch, capsys):
    monkeypatch.setattr(sys, "argv", ["lobbyctl", "--help"])
    assert ctl.main() == 0
    assert capsys.readouterr().out == ctl.USAGE


# -- human output -----------------------------------------------------------------------

NODES = [
    {"hostname": "a.example", "labels": ["location:prague", "service:web"], "last_check": 1},
    {"hostname": "long-name.example", "labels": ["service:db"], "last_check": 2},
    {"hostname": "bare.example", "labels": [], "last_check": 3},
    {"hostname": "go.example", "labels": None, "last_check": 4},  # Go sends null
]


def test_discoveries_layout():
    assert plain(ctl.discoveries_lines(NODES)) == (
        "a.example            location:prague\n"
        "                     service:web\n"
        "\n"
        "long-name.example    service:db\n"
        "\n"
        "bare.example\n"
        "\n"
        "go.example\n"
    )


def test_discoveries_layout_pads_to_the_longest_hostname():
    nodes = [{"hostname": "x", "labels": ["a", "b"]}, {"hostname": "xyz", "labels": ["c"]}]
    assert plain(ctl.discoveries_lines(nodes)) == "x      a\n       b\n\nxyz    c\n"


def test_nothing_is_printed_for_an_empty_answer():
    assert plain(ctl.discoveries_lines([])) == ""
    assert plain(ctl.hostnames_lines([])) == ""
    assert plain(ctl.prometheus_lines([])) == ""


def test_discovery_layout_is_the_go_tools():
    assert plain(ctl.discovery_lines(NODES[0])) == (
        "Hostname:\n  a.example\nLabels:\n  location:prague\n  service:web\n"
    )
    assert plain(ctl.discovery_lines(NODES[2])) == "Hostname:\n  bare.example\n"


def test_resolve_layout():
    assert plain(ctl.hostnames_lines(["a.example", "b.example"])) == "a.example\nb.example\n"


def test_prometheus_layout():
    groups = [
        {
            "Targets": ["10.0.0.1:9100", "10.0.0.2:9100"],
            "Labels": {"location": "prague", "env": "prod"},
        },
        {"Targets": ["[2a03::1]:9200"], "Labels": {}},
        {"targets": ["lower.example:80"], "labels": {"k": "v"}},  # Prometheus' lower-case keys
    ]
    assert plain(ctl.prometheus_lines(groups)) == (
        "10.0.0.1:9100       location=prague env=prod\n"
        "10.0.0.2:9100       location=prague env=prod\n"
        "[2a03::1]:9200\n"
        "lower.example:80    k=v\n"
    )


def test_no_line_has_trailing_spaces():
    text = plain(ctl.discoveries_lines(NODES)) + plain(
        ctl.prometheus_lines([{"Targets": ["t"], "Labels": {}}])
    )
    assert all(line == line.rstrip() for line in text.splitlines())


def test_label_splits_on_the_first_colon():
    assert ctl.label_segments("public_ip6:2a03::1") == [
        ("public_ip6", "green"),
        (":", None),
        ("2a03::1", "magenta"),
    ]
    assert ctl.label_segments("standalone") == [("standalone", "green")]


def test_control_characters_from_the_daemon_are_escaped():
    # a Go peer does not validate labels: an escape sequence must not reach the terminal
    nodes = [{"hostname": "evil\x1b[2J", "labels": ["x:\x07bell", "y\x9b"]}]
    text = plain(ctl.discoveries_lines(nodes))
    assert "\x1b" not in text and "\x07" not in text and "\x9b" not in text
    assert text == "evil\\x1b[2J    x:\\x07bell\n               y\\x9b\n"


def test_colour_output_uses_the_spec_colours_and_the_same_text():
    out = io.StringIO()
    ctl.write_lines(ctl.discoveries_lines(NODES[:2]), out, colour=True)
    coloured = out.getvalue()
    assert "\x1b[33ma.example\x1b[0m" in coloured  # yellow hostname
    assert "\x1b[32mlocation\x1b[0m" in coloured  # green name
    assert "\x1b[35mprague\x1b[0m" in coloured  # magenta value
    stripped = re.sub(r"\x1b\[[0-9;]*m", "", coloured)
    assert stripped == plain(ctl.discoveries_lines(NODES[:2]))


def test_colour_output_does_not_interpret_markup_or_emoji():
    out = io.StringIO()
    ctl.write_lines(ctl.hostnames_lines(["[bold]x[/bold]:smile:"]), out, colour=True)
    assert "[bold]x[/bold]:smile:" in out.getvalue()


def test_colour_only_on_a_terminal_without_no_color():
    assert not ctl.use_colour(io.StringIO(), {})
    primary, secondary = os.openpty()
    try:
        with open(secondary, "w", closefd=False) as tty:
            assert ctl.use_colour(tty, {})
            assert not ctl.use_colour(tty, {"NO_COLOR": "1"})
            assert ctl.use_colour(tty, {"NO_COLOR": ""})  # no-color.org: empty means unset
    finally:
        os.close(primary)
        os.close(secondary)


def test_the_layout_in_the_module_docstring_is_the_real_one():
    nodes = [
        {"hostname": "a.example", "labels": ["location:prague", "service:web"]},
        {"hostname": "long-name.example", "labels": ["service:db"]},
        {"hostname": "bare.example", "labels": []},
    ]
    groups = [
        {
            "Targets": ["10.0.0.1:9100", "[2a03::1]:9100"],
            "Labels": {"location": "prague", "env": "prod"},
        }
    ]
    doc = ctl.__doc__ or ""
    for lines in (
        ctl.discoveries_lines(nodes),
        ctl.discovery_lines(nodes[0]),
        ctl.prometheus_lines(groups),
    ):
        assert textwrap.indent(plain(lines), " " * 6) in doc


def test_error_line_is_one_line():
    exc = LobbyException("first\nsecond  line\n", 500, "http://h:1/v1/labels")
    assert ctl.error_line(exc) == "lobbyd answered 500 for http://h:1/v1/labels: first second line"
    assert ctl.error_line(LobbyException("access denied", 403, "u")).endswith(
        "u: access denied (give the token with -token or TOKEN)"
    )
    assert (
        ctl.error_line(LobbyException("cannot reach lobbyd at x: refused"))
        == "cannot reach lobbyd at x: refused"
    )


def test_json_output_matches_the_daemons_format():
    out = io.StringIO()
    ctl.write_json([{"hostname": "ü.example", "labels": [], "last_check": 0}], out)
    assert out.getvalue() == (
        '[\n  {\n    "hostname": "ü.example",\n    "labels": [],\n    "last_check": 0\n  }\n]\n'
    )


# -- start-up ---------------------------------------------------------------------------

HEAVY = (
    "httpx",
    "httpcore",
    "asyncio",
    "fastapi",
    "uvicorn",
    "pydantic",
    "starlette",
    "nats",
    "redis",
    "orjson",
    "rich",
    "click",
    "pygments",
    "lobby.core.model",
    "lobby.api",
    "lobby.daemon",
    "lobby.view.registry",
)


def imported_after(code: str) -> set[str]:
    # without proxy variables: with one, lobbyctl loads urllib.request to read them
    proxies = ("http_proxy", "https_proxy", "all_proxy", "no_proxy")
    env = {k: v for k, v in os.environ.items() if k.lower() not in proxies}
    run = subprocess.run(
        [sys.executable, "-c", f"{code}\nimport sys; print(' '.join(sorted(sys.modules)))"],
        capture_output=True,
        text=True,
        check=True,
        env=env,
    )
    return set(run.stdout.split())


def heavy_in(modules: set[str]) -> set[str]:
    return {m for m in modules if m in HEAVY or m.split(".")[0] in HEAVY}


def test_importing_lobbyctl_loads_nothing_heavy():
    modules = imported_after("import lobby.ctl")
    assert "lobby.calls.transport" in modules and "socket" in modules  # the probe sees real imports
    assert heavy_in(modules) == set()


def test_lobbyctl_asks_lobbyd_without_httpx_asyncio_or_ssl():
    """The start-up cost of `lobbyctl resolve` (bench/README.md, "lobbyctl"): a request
    that fails still went through the whole client path, and loaded none of them."""
    code = f"from lobby import ctl\nctl.main(['-port', '{free_port()}', 'resolve', 'x:y'])"
    modules = imported_after(code)
    assert "lobby.calls.transport" in modules
    assert {"httpx", "httpcore", "asyncio", "lobby.client", "anyio"} & modules == set()
    # nor http.client and ssl (with the email parser, more than the rest of a resolve)
    assert {"http.client", "ssl", "email.parser", "typing", "dataclasses"} & modules == set()
    # watch streams through httpx: it is loaded when watch runs
    watch = f"from lobby import ctl\nctl.main(['-port', '{free_port()}', 'watch'])"
    assert {"httpx", "lobby.client"} <= imported_after(watch)


def test_plain_output_does_not_load_rich():
    code = (
        "import io\nfrom lobby import ctl\n"
        "ctl.write_lines(ctl.discoveries_lines([{'hostname': 'a', 'labels': ['b:c']}]), io.StringIO(), colour=False)"
    )
    assert "rich" not in imported_after(code)


def test_colour_output_loads_rich():
    code = "import io\nfrom lobby import ctl\nctl.write_lines(ctl.hostnames_lines(['a']), io.StringIO(), colour=True)"
    assert "rich" in imported_after(code)


# -- HTTPS flags and keygen (SPEC §13) -----------------------------------------------------


def test_cacert_and_insecure_flags_and_ca_file():
    opts = parse("-proto", "https", "-cacert", "/etc/ca.pem", "-insecure", "discoveries")
    assert (opts.cacert, opts.insecure) == ("/etc/ca.pem", True)
    assert parse("discoveries", CA_FILE="/env/ca.pem").cacert == "/env/ca.pem"
    assert parse("--cacert=/f.pem", "discoveries", CA_FILE="/env/ca.pem").cacert == "/f.pem"
    assert parse("-insecure=false", "discoveries").insecure is False
    with pytest.raises(UsageError, match="-insecure"):
        parse("-insecure=maybe", "discoveries")
    with pytest.raises(UsageError, match="flags go before the command"):
        parse("discoveries", "-insecure")


def test_keygen_prints_a_new_key_without_any_daemon(capsys):
    import base64

    assert ctl.main(["keygen"]) == 0
    first = capsys.readouterr().out
    assert ctl.main(["-port", str(free_port()), "keygen"]) == 0
    second = capsys.readouterr().out
    assert first != second and len(base64.b64decode(first.strip(), validate=True)) == 32


def test_keygen_loads_nothing_heavy():
    modules = imported_after("from lobby import ctl\nimport io\nctl.main(['keygen'])")
    assert "lobby.core.signing" in modules and heavy_in(modules) == set()


def test_a_missing_ca_file_is_a_usage_error(capsys):
    code = ctl.main(["-proto", "https", "-cacert", "/nonexistent/ca.pem", "discoveries"])
    assert code == 2 and "/nonexistent/ca.pem" in capsys.readouterr().err
