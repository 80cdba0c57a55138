import subprocess
import sys

import pytest

from lobby import config
from lobby.config import ConfigError, load, parse_go_bool, parse_go_int


def test_defaults_match_the_go_implementation():
    s = load({})
    assert (s.token, s.host, s.port, s.disable_api, s.driver) == (
        "",
        "127.0.0.1",
        1313,
        False,
        "NATS",
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
        "",
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
        ("DISABLE_API", "yes"),
        ("REGISTER", "nope"),
        ("LOG_LEVEL", "loud"),
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


def test_driver_is_case_insensitive():
    assert load({"DRIVER": "redis"}).driver == "Redis"
    assert load({"DRIVER": "nats"}).driver == "NATS"
    assert load({"DRIVER": "REDIS"}).driver == "Redis"


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
    assert "(default 1313)" in text and "(default lobby.discovery)" in text


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
