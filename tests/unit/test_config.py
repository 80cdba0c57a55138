import dataclasses
import importlib.util
import re
import subprocess
import sys
from pathlib import Path

import pytest

from lobby import config
from lobby.config import ConfigError, load, parse_go_bool, parse_go_int


def test_defaults_match_the_go_implementation():
    s = load({})
    assert (s.token, s.host, s.port, s.disable_api, s.drivers) == (
        "",
        "127.0.0.1",
        1313,
        False,
        ("NATS",),
    )
    assert (s.nats_url, s.nats_discovery_channel) == ("", "lobby.discovery")
    assert (s.redis_host, s.redis_port, s.redis_db, s.redis_channel, s.redis_password) == (
        "127.0.0.1",
        6379,
        0,
        "lobby:discovery",
        "",
    )
    assert (s.labels, s.labels_path, s.runtime_labels_filename, s.hostname) == (
        (),
        "/etc/lobby/labels",
        "_runtime",
        "",
    )
    assert (s.clean_every, s.keep_alive, s.ttl, s.node_exporter_port, s.announce) == (
        15,
        5,
        30,
        9100,
        True,
    )
    assert (s.callback, s.callback_cooldown, s.callback_first_run_delay) == ("", 15, 30)
    assert (s.callback_timeout, s.embedded_nats_port, s.log_level) == (60, 4222, "INFO")


@pytest.mark.parametrize(
    ("text", "value"),
    [
        ("0", 0),
        ("42", 42),
        ("+7", 7),
        ("-7", -7),
        ("010", 8),
        ("0x1F", 31),
        ("0X1f", 31),
        ("0o17", 15),
        ("0b101", 5),
        ("1_000", 1000),
        ("0x_1F", 31),
    ],
)
def test_integers_parse_like_go_parseint_base_0(text, value):
    assert parse_go_int(text) == value


@pytest.mark.parametrize(
    "text", ["", "abc", " 5", "5 ", "5.0", "0x", "_1", "1__0", "1_", "08", "1e3", "--1"]
)
def test_integers_go_rejects(text):
    with pytest.raises(ValueError):
        parse_go_int(text)


@pytest.mark.parametrize("text", ["1", "t", "T", "TRUE", "true", "True"])
def test_true_values(text):
    assert parse_go_bool(text) is True


@pytest.mark.parametrize("text", ["0", "f", "F", "FALSE", "false", "False"])
def test_false_values(text):
    assert parse_go_bool(text) is False


@pytest.mark.parametrize("text", ["yes", "no", "on", "tRUE", "2", "y"])
def test_bool_rejects_what_go_rejects(text):
    with pytest.raises(ValueError):
        parse_go_bool(text)


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("PORT", "abc"),
        ("PORT", "0"),
        ("PORT", "65536"),
        ("PORT", "-1"),
        ("REDIS_PORT", "70000"),
        ("REDIS_DB", "-1"),
        ("TTL", "-1"),
        ("TTL", "0"),
        ("KEEP_ALIVE", "0"),
        ("CLEAN_EVERY", "x"),
        ("NODE_EXPORTER_PORT", "99999"),
        ("CALLBACK_COOLDOWN", "-5"),
        ("CALLBACK_FIRST_RUN_DELAY", "soon"),
        ("CALLBACK_TIMEOUT", "0"),
        ("EMBEDDED_NATS_PORT", "1.5"),
        ("DRIVER", "Kafka"),
        ("DRIVER", "NATS,NATS"),
        ("DRIVER", "redis,Redis"),
        ("DRIVER", ","),
        ("DRIVER", "NATS,Kafka"),
        ("RELAY", "yes"),
        ("REDIS_SENTINELS", "a:1,b"),
        ("REDIS_SENTINELS", "a:70000"),
        ("REDIS_SENTINELS", "::1:26379"),
        ("DISABLE_API", "yes"),
        ("REGISTER", "nope"),
        ("LOG_LEVEL", "loud"),
        ("LOG_FORMAT", "xml"),
        ("ACCESS_LOG", "please"),
        ("RUNTIME_LABELS_FILENAME", "a/b"),
        ("RUNTIME_LABELS_FILENAME", ".."),
    ],
)
def test_malformed_values_name_the_variable(name, value):
    with pytest.raises(ConfigError) as info:
        load({name: value})
    message = str(info.value)
    assert info.value.name == name
    assert message.startswith(f"invalid {name}={value!r}: expected ")
    assert "\n" not in message


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"PORT": "0"}, "invalid PORT='0': expected an integer from 1 to 65535"),
        ({"TTL": "x"}, "invalid TTL='x': expected an integer >= 1"),
        (
            {"DRIVER": "Kafka"},
            "invalid DRIVER='Kafka': expected NATS or Redis, or several comma-separated,"
            " each once (case-insensitive)",
        ),
        (
            {"DRIVER": "NATS,Redis,nats"},
            "invalid DRIVER='NATS,Redis,nats': expected NATS or Redis, or several"
            " comma-separated, each once (case-insensitive)",
        ),
        (
            {"REDIS_SENTINELS": "10.0.0.1"},
            "invalid REDIS_SENTINELS='10.0.0.1': expected host:port pairs, comma-separated"
            " ([::1]:26379 for IPv6)",
        ),
        (
            {"REGISTER": "yes"},
            "invalid REGISTER='yes': expected a boolean (1, t, true, 0, f, false, ...)",
        ),
        (
            {"RUNTIME_LABELS_FILENAME": "."},
            "invalid RUNTIME_LABELS_FILENAME='.': expected a plain file name",
        ),
    ],
)
def test_error_messages(env, message):
    with pytest.raises(ConfigError, match=re.escape(message) + "$"):
        load(env)


@pytest.mark.parametrize(
    ("value", "problem"),
    [
        ("garbage", "'garbage' has no scheme (expected nats://HOST[:PORT])"),
        ("nats.example.com", "'nats.example.com' has no scheme (expected nats://HOST[:PORT])"),
        (
            "http://127.0.0.1:4222",
            "'http://127.0.0.1:4222' has scheme 'http://' (expected nats://, tls://, ws:// or "
            "wss://)",
        ),
        ("nats://", "'nats://' has no host"),
        ("nats://:4222", "'nats://:4222' has no host"),
        ("nats://h:0", "'nats://h:0' has a bad port (expected 1-65535)"),
        ("nats://h:65536", "'nats://h:65536' has a bad port (expected 1-65535)"),
        ("tls://h:port", "'tls://h:port' has a bad port (expected 1-65535)"),
        ("nats://a:1, nats://b:x", "'nats://b:x' has a bad port (expected 1-65535)"),
        # the password never reaches the message
        ("nats://alice:s3cret@h:x", "'nats://alice:***@h:x' has a bad port (expected 1-65535)"),
    ],
)
def test_malformed_nats_url_exits_naming_the_url(value, problem):
    with pytest.raises(ConfigError) as info:
        load({"NATS_URL": value})
    assert str(info.value) == f"invalid NATS_URL: {problem}"
    assert info.value.name == "NATS_URL"


@pytest.mark.parametrize(
    "value",
    [
        "nats://127.0.0.1:4222",
        "nats://h",
        "tls://u:p@nats.example.com:4443",
        "ws://h:8080",
        "wss://h",
        "127.0.0.1:4222",  # nats-py's shorthand for nats://127.0.0.1:4222
        "nats://[::1]:4222",
        "nats://a:1,nats://b:2,,",
        "NATS://h:1",
    ],
)
def test_good_nats_urls(value):
    assert load({"NATS_URL": value}).nats_url == value


@pytest.mark.parametrize(
    ("value", "message"),
    [
        (
            "render 'it",
            'invalid CALLBACK: "render \'it" cannot be split like a shell would: no closing quotation',
        ),
        (
            'echo "x',
            "invalid CALLBACK: 'echo \"x' cannot be split like a shell would: no closing quotation",
        ),
        ("  ", "invalid CALLBACK: a blank command"),
    ],
)
def test_callback_with_unbalanced_quotes_is_refused_at_start(value, message):
    with pytest.raises(ConfigError) as info:
        load({"CALLBACK": value})
    assert str(info.value) == message


def test_log_format_and_access_log():
    assert (load({}).log_format, load({}).access_log) == ("text", False)
    settings = load({"LOG_FORMAT": "JSON", "ACCESS_LOG": "true"})
    assert (settings.log_format, settings.access_log) == ("json", True)


def test_driver_is_case_insensitive():
    assert load({"DRIVER": "redis"}).drivers == ("Redis",)
    assert load({"DRIVER": "nats"}).drivers == ("NATS",)
    assert load({"DRIVER": "REDIS"}).drivers == ("Redis",)


def test_several_drivers_in_any_case_and_order():
    assert load({"DRIVER": "NATS,Redis"}).drivers == ("NATS", "Redis")
    assert load({"DRIVER": " redis , nats "}).drivers == ("Redis", "NATS")
    assert load({"DRIVER": "REDIS,,NATS,"}).drivers == ("Redis", "NATS")  # blanks ignored


def test_sentinels_parse_into_host_port_pairs():
    assert load({}).redis_sentinels == ()
    s = load({"REDIS_SENTINELS": "10.0.0.1:26379, sentinel-b:26380,[2a03::1]:26381"})
    assert s.redis_sentinels == (("10.0.0.1", 26379), ("sentinel-b", 26380), ("2a03::1", 26381))
    assert s.redis_sentinel_master == "mymaster"


def test_empty_value_means_default():
    assert load({"PORT": "", "REGISTER": ""}).port == 1313


def test_register_false_and_several_nats_urls():
    s = load({"REGISTER": "false", "NATS_URL": "nats://a:1, nats://b:2 ,,tls://u:p@c:3"})
    assert s.announce is False
    assert s.nats_servers == ["nats://a:1", "nats://b:2", "tls://u:p@c:3"]


def test_help_lists_every_variable_with_default():
    text = config.help_text()
    for var in config.VARIABLES:
        assert f"  {var.name} " in text
    assert "(1-65535; default 1313)" in text and "(default lobby.discovery)" in text
    assert "(NATS, Redis; default NATS)" in text and "(secret; default empty)" in text
    assert max(len(line) for line in text.splitlines()) <= 100


def test_help_shows_each_variable_once_with_its_help_and_default():
    lines = config.help_text().splitlines()
    text = " ".join(config.help_text().split())  # undo the wrapping
    for var in config.VARIABLES:
        assert sum(line.startswith(f"  {var.name} ") for line in lines) == 1, var.name
        assert f" {var.name} {var.help} (" in text, var.name
        assert f"default {var.shown_default('empty')})" in text, var.name


# -- one source: Settings' fields ------------------------------------------------------


def test_every_settings_field_is_exactly_one_variable():
    fields = [f.name for f in dataclasses.fields(config.Settings)]
    assert [var.field for var in config.VARIABLES] == fields
    names = [var.name for var in config.VARIABLES]
    assert len(set(names)) == len(names)
    renamed = {var.name: var.field for var in config.VARIABLES if var.name != var.field.upper()}
    assert renamed == {"REGISTER": "announce", "DRIVER": "drivers"}


def test_variables_carry_the_settings_defaults():
    defaults = load({})
    for var in config.VARIABLES:
        assert getattr(defaults, var.field) == var.default, var.name
        assert type(getattr(defaults, var.field)) is type(var.default), var.name


def test_each_default_is_a_valid_value_of_its_variable():
    for var in config.VARIABLES:
        if var.default != "":
            assert var.parse(var.shown_default("")) == var.default, var.name
        if var.kind == "choice":
            assert var.default in var.choices


def test_variable_kinds_follow_the_annotations():
    kinds = {var.name: (var.kind, var.choices) for var in config.VARIABLES}
    assert kinds["PORT"] == ("int", ())
    assert kinds["REGISTER"] == ("bool", ())
    assert kinds["TOKEN"] == ("str", ())
    assert kinds["DRIVER"] == ("choices", ("NATS", "Redis"))
    assert kinds["LOG_LEVEL"] == ("choice", ("DEBUG", "INFO", "WARNING", "ERROR"))
    assert {var.name for var in config.VARIABLES if var.secret} == {
        "TOKEN",
        "REDIS_PASSWORD",
        "SIGNING_KEYS",
        "READ_TOKEN",
        "NATS_TOKEN",
        "REDIS_SENTINEL_PASSWORD",
    }


def test_settings_are_immutable_and_keep_secrets_out_of_repr():
    s = load({"TOKEN": "hunter2", "REDIS_PASSWORD": "swordfish", "PORT": "8080"})
    with pytest.raises(dataclasses.FrozenInstanceError):
        s.port = 1  # type: ignore[misc]
    assert "hunter2" not in repr(s) and "swordfish" not in repr(s)
    assert "port=8080" in repr(s)
    assert s == load({"TOKEN": "hunter2", "REDIS_PASSWORD": "swordfish", "PORT": "0x1f90"})


def test_repr_hides_the_passwords_and_tokens_of_urls():
    s = load(
        {
            "NATS_URL": "nats://user:secret@host:4222, tls://secret-token@h2:4222,u:secret@h3:4222",
            "CALLBACK": "curl -fsS https://admin:secret@hooks.example/reload",
            "CHECKS": "web:1=http://probe:secret@127.0.0.1:8080/health",
            "REDIS_PASSWORD": "secret",
            "REDIS_SENTINELS": "127.0.0.1:26379",
            "REDIS_SENTINEL_PASSWORD": "secret",
        }
    )
    shown = repr(s)
    assert "secret" not in shown, shown
    assert "nats://user:***@host:4222,tls://***@h2:4222,nats://u:***@h3:4222" in shown
    assert "https://admin:***@hooks.example/reload" in shown
    assert "http://probe:***@127.0.0.1:8080/health" in shown
    assert s.nats_url.startswith("nats://user:secret@")  # the value itself is intact
    # a URL without credentials, and a text without a URL, are shown as they are
    plain = repr(load({"NATS_URL": "nats://127.0.0.1:4222", "CALLBACK": "mail ops@example"}))
    assert "nats_url='nats://127.0.0.1:4222'" in plain and "callback='mail ops@example'" in plain


def test_importing_config_does_not_import_pydantic():
    code = "import sys, lobby.config; print('pydantic' in sys.modules)"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.stdout.strip() == "False", result.stderr


# -- what a new variable can be ---------------------------------------------------------


@pytest.mark.parametrize(
    ("var", "raw", "expected"),
    [
        (config.Var("X", "int", 5, "h", low=1), "0", "an integer >= 1"),
        (config.Var("X", "int", 5, "h", low=1, high=9), "10", "an integer from 1 to 9"),
        (config.Var("X", "int", 5, "h"), "five", "an integer"),
        (
            config.Var("X", "choice", "A", "h", choices=("A", "Bb")),
            "c",
            "A or Bb (case-insensitive)",
        ),
        (config.Var("X", "duration", 2.0, "h", low=0.5), "0.1", "a duration in seconds (1.5) or"),
        (config.Var("X", "duration", 2.0, "h", low=0, high=60), "2h", "from 0s to 60s"),
        (config.Var("X", "duration", 2.0, "h"), "5 s", "a duration"),
        (config.Var("X", "str", "", "h", check=str.isdigit, must_be="digits"), "a1", "digits"),
    ],
)
def test_var_kinds_reject_with_what_they_expect(var, raw, expected):
    with pytest.raises(ConfigError) as info:
        var.parse(raw)
    assert str(info.value).startswith(f"invalid X={raw!r}: expected ")
    assert expected in str(info.value)


def test_choices_normalize_to_the_canonical_spelling():
    var = config.Var("X", "choice", "A", "h", choices=("A", "Bb"))
    assert var.parse("bB") == "Bb"
    assert load({"LOG_LEVEL": "debug"}).log_level == "DEBUG"


@pytest.mark.parametrize(
    ("text", "seconds"),
    [("1.5", 1.5), ("0", 0.0), ("300ms", 0.3), ("1m30s", 90.0), ("2h", 7200.0), ("-1s", -1.0)],
)
def test_durations_are_seconds_or_go_syntax(text, seconds):
    assert config.parse_duration(text) == pytest.approx(seconds)


@pytest.mark.parametrize("text", ["", "s", "1 s", "1d", "1.5.2", "1sm", "ms5"])
def test_durations_reject(text):
    with pytest.raises(ValueError):
        config.parse_duration(text)


# -- the settings page of the docs ------------------------------------------------------


def _docs_hooks():
    """docs/_gen/hooks.py, the MkDocs hook that writes the reference pages."""
    path = Path(__file__).parents[2] / "docs" / "_gen" / "hooks.py"
    spec = importlib.util.spec_from_file_location("docs_hooks", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_settings_page_table_is_generated_from_settings():
    """The table moved from README.md to docs/reference/settings.md, where it is written
    at build time: the page keeps the markers, and what the build puts between them is
    lobby.config's table (tests/integration/test_docs_site.py checks the built HTML)."""
    page = Path(__file__).parents[2] / "docs" / "reference" / "settings.md"
    source = page.read_text(encoding="utf-8")
    assert config.README_START in source and config.README_END in source
    rendered = _docs_hooks().settings_table(source)
    start = rendered.index(config.README_START) + len(config.README_START)
    table = rendered[start : rendered.index(config.README_END)].strip()
    assert table == config.markdown_table()
    for var in config.VARIABLES:
        assert f"| {var.name} |" in table


def test_markdown_table_has_a_row_per_variable():
    rows = config.markdown_table().splitlines()[2:]
    assert [row.split(" | ")[0].removeprefix("| ") for row in rows] == [
        var.name for var in config.VARIABLES
    ]
    assert "| PORT | int 1-65535 | 1313 | HTTP listen port |" in rows
    assert "| TOKEN | string, secret | (empty) |" in config.markdown_table()


def test_markdown_command():
    result = subprocess.run(
        [sys.executable, "-m", "lobby.config", "--markdown"], capture_output=True, text=True
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == config.markdown_table()


def _lobbyd(env, *args):
    return subprocess.run(
        [sys.executable, "-m", "lobby", *args],
        env={"PATH": "/usr/bin:/bin", **env},
        capture_output=True,
        text=True,
        timeout=30,
    )


def test_lobbyd_exits_2_with_one_line_on_a_bad_variable():
    result = _lobbyd({"TTL": "-1"})
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        "lobbyd: invalid TTL='-1': expected an integer >= 1"
    ]
    assert "Traceback" not in result.stderr


def test_lobbyd_exits_2_on_an_invalid_label_in_labels():
    result = _lobbyd({"LABELS": "ok,bad\x01label"})
    assert result.returncode == 2
    assert len(result.stderr.strip().splitlines()) == 1
    assert "LABELS" in result.stderr


def test_lobbyd_help():
    result = _lobbyd({}, "--help")
    assert result.returncode == 0
    assert "KEEP_ALIVE" in result.stdout and "EMBEDDED_NATS_PORT" in result.stdout


def test_lobbyd_rejects_arguments():
    result = _lobbyd({}, "--port", "5")
    assert result.returncode == 2
    assert "environment" in result.stderr


# -- security settings (SPEC §13): files checked at start, secrets never shown --------


def checked(env: dict[str, str]) -> config.Settings:
    """What lobbyd does at start: load, then check the files named."""
    settings = load(env)
    config.check_files(settings)
    return settings


@pytest.fixture(scope="module")
def pki(tmp_path_factory):
    from certs import Pki

    return Pki(tmp_path_factory.mktemp("pki"))


KEY = "AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8="


def test_signing_keys_are_checked_and_never_echoed():
    key = bytes(range(32))
    assert load({"SIGNING_KEYS": f"{KEY}, {KEY}"}).signing_keys == (key, key)
    with pytest.raises(ConfigError) as info:
        load({"SIGNING_KEYS": f"{KEY},c2VjcmV0"})
    text = str(info.value)
    assert text.startswith("invalid SIGNING_KEYS (value not shown): expected ")
    assert "c2VjcmV0" not in text and KEY not in text and "6 bytes" in text
    assert KEY not in repr(load({"SIGNING_KEYS": KEY}))


def test_signing_keys_file_must_be_readable_and_hold_keys(tmp_path):
    good = tmp_path / "keys"
    good.write_text(f"# lobby\n{KEY}\n")
    assert checked({"SIGNING_KEYS_FILE": str(good)}).signing_keys_file == str(good)
    empty = tmp_path / "empty"
    empty.write_text("# nothing yet\n")
    bad = tmp_path / "bad"
    bad.write_text("secret stuff!\n")
    cases = {
        str(tmp_path / "missing"): "No such file or directory",
        str(tmp_path): "Is a directory",
        str(empty): "it holds no key",
        str(bad): "not valid base64",
    }
    for path, why in cases.items():
        with pytest.raises(ConfigError) as info:
            checked({"SIGNING_KEYS_FILE": path})
        assert str(info.value).startswith(f"invalid SIGNING_KEYS_FILE={path!r}: expected ")
        assert why in str(info.value) and "secret stuff" not in str(info.value)


@pytest.mark.parametrize(
    "var", ["TLS_CERT", "TLS_KEY", "NATS_CA", "NATS_CERT", "NATS_KEY", "NATS_CREDS",
            "NATS_NKEY_SEED", "REDIS_CA", "REDIS_CERT", "REDIS_KEY"],
)  # fmt: skip
def test_every_named_file_is_checked(var, tmp_path):
    load({var: str(tmp_path / "nope.pem")})  # no file is opened at load
    with pytest.raises(ConfigError) as info:
        checked({var: str(tmp_path / "nope.pem")})
    assert info.value.name == var and "No such file or directory" in str(info.value)


def test_certificates_need_their_matching_key(pki):
    ok = checked({"TLS_CERT": str(pki.server_cert), "TLS_KEY": str(pki.server_key)})
    assert ok.tls_cert == str(pki.server_cert)
    pairs = [
        ({"TLS_CERT": pki.server_cert}, "TLS_CERT", "TLS_KEY beside it"),
        ({"TLS_KEY": pki.server_key}, "TLS_KEY", "TLS_CERT beside it"),
        ({"TLS_CERT": pki.server_cert, "TLS_KEY": pki.client_key}, "TLS_KEY", "private key of"),
        ({"TLS_CERT": pki.server_cert, "TLS_KEY": pki.ca}, "TLS_KEY", "PEM private key"),
        ({"NATS_CERT": pki.client_cert, "NATS_KEY": pki.server_key}, "NATS_KEY", "private key"),
        ({"NATS_CA": pki.client_key}, "NATS_CA", "CA certificates"),
        (
            {"REDIS_TLS": "1", "REDIS_CERT": pki.client_cert, "REDIS_KEY": pki.other_key},
            "REDIS_KEY",
            "private key of",
        ),
        ({"REDIS_CA": pki.ca}, "REDIS_CA", "REDIS_TLS=true"),
    ]
    for env, name, why in pairs:
        with pytest.raises(ConfigError) as info:
            checked({k: str(v) for k, v in env.items()})
        assert info.value.name == name and why in str(info.value), str(info.value)


def test_sentinel_password_and_tls_are_for_sentinels(pki):
    sentinels = {"REDIS_SENTINELS": "127.0.0.1:26379"}
    both = load({**sentinels, "REDIS_SENTINEL_PASSWORD": "pw", "REDIS_SENTINEL_TLS": "true"})
    assert (both.redis_sentinel_password, both.redis_sentinel_tls) == ("pw", True)
    assert "pw" not in repr(both)
    # REDIS_CA serves TLS to the Sentinels alone too
    assert checked({**sentinels, "REDIS_SENTINEL_TLS": "1", "REDIS_CA": str(pki.ca)}).redis_ca
    for env, name in (
        ({"REDIS_SENTINEL_TLS": "true"}, "REDIS_SENTINEL_TLS"),
        ({"REDIS_SENTINEL_PASSWORD": "pw"}, "REDIS_SENTINEL_PASSWORD"),
        ({"REDIS_SENTINEL_USERNAME": "lobby"}, "REDIS_SENTINEL_USERNAME"),
    ):
        with pytest.raises(ConfigError) as info:
            load(env)
        line = str(info.value)
        assert info.value.name == name and "REDIS_SENTINELS beside it" in line, line
        assert "pw" not in line


def test_nats_credential_files_are_recognised(tmp_path):
    from certs import nats_operator

    creds = nats_operator(tmp_path / "op").creds
    assert checked({"NATS_CREDS": str(creds)}).nats_creds == str(creds)
    seed = tmp_path / "seed"
    seed.write_text(creds.read_text().split("-----BEGIN USER NKEY SEED-----\n")[1].split("\n")[0])
    assert checked({"NATS_NKEY_SEED": str(seed)}).nats_nkey_seed == str(seed)
    for var, path in (("NATS_CREDS", seed), ("NATS_NKEY_SEED", creds)):
        with pytest.raises(ConfigError) as info:
            checked({var: str(path)})
        assert info.value.name == var
