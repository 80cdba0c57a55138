"""Operating a real lobbyd (SPEC §14): /metrics, /v1/health, the log, quiet shutdown,
fail-fast settings, and what lobbyctl says about it all."""

from __future__ import annotations

import json
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from typing import Any

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families
from support import Lobbyd, free_port, wait_for

PROMTOOL = shutil.which("promtool") or "/usr/bin/promtool"
TOKEN = "s3cret"
AUTH = {"Authorization": f"Token {TOKEN}"}


def samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every sample of an exposition: (name, sorted labels) -> value."""
    out = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            out[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return out


def value(all_samples: dict, name: str, **labels: str) -> float:
    return all_samples.get((name, tuple(sorted(labels.items()))), -1.0)


def json_lines(node: Lobbyd) -> list[dict[str, Any]]:
    return [json.loads(line) for line in node.output().splitlines()]


def complete(data: bytes) -> bool:
    """Whether `data` holds whole HTTP answers: each chunked one up to its last chunk,
    each other one with as many body bytes as its Content-Length says."""
    while data:
        head, sep, rest = data.partition(b"\r\n\r\n")
        if not sep:
            return False
        fields = dict(
            line.split(b":", 1) for line in head.lower().split(b"\r\n")[1:] if b":" in line
        )
        if fields.get(b"transfer-encoding", b"").strip() == b"chunked":
            end = rest.find(b"\r\n0\r\n\r\n")
            if end < 0 and not rest.startswith(b"0\r\n\r\n"):
                return False
            data = rest[end + 7 :] if end >= 0 else rest[5:]
        elif b"content-length" in fields:
            size = int(fields[b"content-length"])
            if len(rest) < size:
                return False
            data = rest[size:]
        else:
            return False
    return True


def test_metrics_health_and_the_json_log_of_a_node(nats_server, channel, spawn, tmp_path):
    env = {"NATS_URL": nats_server.url, "NATS_DISCOVERY_CHANNEL": channel, "KEEP_ALIVE": "1"}
    a = spawn(
        "a.example",
        {**env, "TTL": "3", "TOKEN": TOKEN, "LOG_FORMAT": "json", "ACCESS_LOG": "true"},
    )
    b = spawn("b.example", {**env, "LABELS": "service:db"})
    c = spawn("c.example", env)
    wait_for(lambda: len(a.hostnames()) == 3, what="a lists every node")
    b.kill()  # SIGKILL: no goodbye, a expires it after TTL
    c.signal(signal.SIGTERM)  # a goodbye
    wait_for(lambda: a.hostnames() == ["a.example"], 20, what="b expired and c gone")
    assert a.request("POST", "/v1/labels", content="role:x\n").status_code == 200
    # the update event comes with its own announcement back; a is alone after it
    wait_for(lambda: a.get("/v1/discoveries?labels=role:x").json(), what="role:x echoed")

    # health: no token, nothing about other nodes
    health = httpx.get(f"{a.url}/v1/health", timeout=5)
    assert health.status_code == 200
    assert health.json() == {"status": "ok", "brokers": {"NATS": "up"}}

    # metrics: read-protected like every GET
    assert httpx.get(f"{a.url}/metrics", timeout=5).status_code == 403
    with a.client() as http:
        http.get("/v1/prometheus/node")
        http.get("/nope")
        with http.stream("GET", "/v1/events") as stream:
            lines = stream.iter_lines()  # kept: a dropped iterator closes the stream
            next(lines)
            answer = http.get("/metrics")
    assert answer.status_code == 200
    assert answer.headers["content-type"].startswith("text/plain; version=")
    check = subprocess.run(
        [PROMTOOL, "check", "metrics"], input=answer.text, capture_output=True, text=True
    )
    assert check.returncode == 0, check.stdout + check.stderr
    got = samples(answer.text)
    assert value(got, "lobby_nodes") == 1
    assert value(got, "lobby_registry_index") == int(a.get("/").headers["x-lobby-index"])
    assert value(got, "lobby_node_events_total", event="join") == 3
    assert value(got, "lobby_node_events_total", event="expire") == 1
    assert value(got, "lobby_node_events_total", event="leave") == 1
    assert value(got, "lobby_node_events_total", event="update") == 1
    assert value(got, "lobby_packets_received_total", driver="NATS") > 3
    assert value(got, "lobby_packets_rejected_total", reason="not_json") == -1  # none yet
    assert value(got, "lobby_packets_dropped_total", driver="NATS") == 0
    assert value(got, "lobby_announcements_total", driver="NATS") > 1
    assert value(got, "lobby_broker_up", driver="NATS") == 1
    assert value(got, "lobby_broker_reconnects_total", driver="NATS") == 0
    for result in ("ok", "failed", "timeout"):
        assert value(got, "lobby_callback_runs_total", result=result) == 0
    assert value(got, "lobby_callback_duration_seconds_count") == 0
    route = "/v1/prometheus/{name}"  # the template, never the raw path
    assert value(got, "lobby_http_requests_total", route=route, code="200") == 1
    assert value(got, "lobby_http_requests_total", route="unmatched", code="404") == 1
    assert value(got, "lobby_http_requests_total", route="/metrics", code="403") == 1
    assert value(got, "lobby_http_request_duration_seconds_count", route=route) == 1
    assert value(got, "lobby_watchers", kind="stream") == 1
    assert value(got, "lobby_watchers", kind="blocking") == 0
    assert value(got, "process_resident_memory_bytes") > 0
    assert any(name == "python_info" for name, _ in got)

    # rejected packets are counted by reason
    from support import nats_publish

    nats_publish(nats_server.url, channel, [b"not json", b"{}"])
    wait_for(
        lambda: (
            value(
                samples(a.get("/metrics").text), "lobby_packets_rejected_total", reason="not_json"
            )
            == 1
        ),
        what="rejected packets counted",
    )

    # an invalid request's line (lobby.api.protocol answers it), same formatter
    with socket.create_connection(("127.0.0.1", a.port)) as raw:
        raw.sendall(b"\x16\x03\x01 this is not HTTP\r\n\r\n")
        raw.recv(1024)
    wait_for(lambda: "invalid HTTP request" in a.output(), what="the invalid request logged")

    lines = json_lines(a)  # every line is one JSON object
    assert all({"ts", "level", "logger", "msg"} <= set(line) for line in lines)
    events = {(line.get("event"), line.get("hostname")) for line in lines}
    assert {
        ("join", "b.example"),
        ("join", "c.example"),
        ("expire", "b.example"),
        ("leave", "c.example"),
        ("update", "a.example"),
    } <= events
    expire = next(line for line in lines if line.get("event") == "expire")
    assert (expire["level"], expire["logger"], expire["msg"]) == (
        "INFO",
        "lobby.nodes",
        "expire b.example (silent 3 s)",
    )
    invalid = next(line for line in lines if "invalid HTTP request" in line["msg"])
    assert (invalid["level"], invalid["logger"]) == ("INFO", "lobby")
    access = [line for line in lines if line["logger"] == "uvicorn.access"]
    assert any(line["path"] == "/v1/health" and line["status"] == 200 for line in access)
    assert not [line for line in lines if line["level"] == "ERROR" or "Traceback" in line["msg"]]


def test_health_and_metrics_follow_the_broker_link(own_broker, spawn):
    a = spawn("a.example", own_broker.env(KEEP_ALIVE="1", TOKEN=TOKEN))
    driver = "NATS" if own_broker.kind == "nats" else "Redis"

    def health() -> tuple[int, dict[str, Any]]:
        r = httpx.get(f"{a.url}/v1/health", timeout=5)
        return r.status_code, r.json()

    up = (200, {"status": "ok", "brokers": {driver: "up"}})
    wait_for(lambda: health() == up, 15, what="linked")  # the link comes up after the API
    own_broker.server.kill()
    wait_for(lambda: health() == (503, {"status": "degraded", "brokers": {driver: "down"}}), 15)
    got = samples(a.get("/metrics").text)
    assert value(got, "lobby_broker_up", driver=driver) == 0
    assert value(got, "lobby_expiry_paused") == 1
    own_broker.server.start()
    wait_for(lambda: health()[0] == 200, 30, what="healthy again")
    got = samples(a.get("/metrics").text)
    assert value(got, "lobby_broker_up", driver=driver) == 1
    assert value(got, "lobby_broker_reconnects_total", driver=driver) == 1


def test_shutdown_is_quiet_with_streams_blocking_queries_and_a_running_callback(
    nats_server, channel, spawn
):
    a = spawn(
        "a.example",
        {
            "NATS_URL": nats_server.url,
            "NATS_DISCOVERY_CHANNEL": channel,
            "CALLBACK": "sleep 60",
            "CALLBACK_FIRST_RUN_DELAY": "0",
        },
    )
    # its own announcement bumps the index: read it after, or some queries return at once
    wait_for(lambda: a.hostnames() == ["a.example"], what="a listed")
    index = a.get("/v1/discoveries").headers["x-lobby-index"]
    conns = []
    for _ in range(50):
        stream = socket.create_connection(("127.0.0.1", a.port))
        stream.sendall(b"GET /v1/events HTTP/1.1\r\nHost: a\r\n\r\n")
        held = socket.create_connection(("127.0.0.1", a.port))
        held.sendall(
            f"GET /v1/discoveries?index={index}&wait=5m HTTP/1.1\r\nHost: a\r\n\r\n".encode()
        )
        conns += [stream, held]
    curl = subprocess.Popen(["curl", "-sSN", f"{a.url}/v1/events"], stdout=subprocess.DEVNULL)
    try:
        wait_for(
            lambda: a.get("/v1/stats").json()["watchers"] == {"streams": 51, "blocking": 50},
            what="51 streams and 50 blocking queries",
        )
    except AssertionError as timed_out:
        raise AssertionError(f"{timed_out}; last seen: {a.get('/v1/stats').json()}") from None
    wait_for(lambda: callback_running(a), what="the callback running")
    started = time.monotonic()
    a.signal(signal.SIGTERM)
    assert a.wait(10) == 0
    took = time.monotonic() - started
    print(f"\nFIGURE shutdown with 51 streams, 50 blocking queries and a callback: {took:.2f} s")
    assert curl.wait(5) == 0  # the stream ended cleanly, not cut mid-transfer (18)
    for conn in conns:  # every answer complete: a last chunk, or a whole body
        conn.settimeout(5)
        data = b""
        while chunk := conn.recv(65536):
            data += chunk
        conn.close()
        assert complete(data), data[-200:]
    log = a.output()
    assert log.count("Traceback") == 0, log
    assert [line for line in log.splitlines() if " ERROR " in line] == []
    assert "stopped in" in log


def callback_running(node: Lobbyd) -> bool:
    """`sleep 60` runs as a child of lobbyd."""
    found = subprocess.run(["pgrep", "-P", str(node.pid), "-x", "sleep"], capture_output=True)
    return found.returncode == 0


@pytest.mark.parametrize(
    ("variable", "value", "line"),
    [
        ("NATS_URL", "garbage", "invalid NATS_URL: 'garbage' has no scheme"),
        (
            "NATS_URL",
            "http://127.0.0.1:4222",
            "invalid NATS_URL: 'http://127.0.0.1:4222' has scheme 'http://'",
        ),
        (
            "NATS_URL",
            "nats://u:pw@h:99999",
            "invalid NATS_URL: 'nats://u:***@h:99999' has a bad port",
        ),
        ("NATS_URL", "nats://a:1,nats://:4222", "invalid NATS_URL: 'nats://:4222' has no host"),
        ("CALLBACK", "render 'it", 'invalid CALLBACK: "render \'it" cannot be split'),
    ],
)
def test_malformed_settings_exit_2_at_once_naming_the_variable(variable, value, line, tmp_path):
    done = subprocess.run(
        [sys.executable, "-m", "lobby"],
        env={"PATH": "/usr/bin:/bin", "LABELS_PATH": str(tmp_path), variable: value},
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert done.returncode == 2
    assert done.stderr.startswith(f"lobbyd: {line}"), done.stderr
    assert done.stderr.count("\n") == 1 and "pw" not in done.stderr


# -- lobbyctl -------------------------------------------------------------------------------


def lobbyctl(*argv: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "lobby.ctl", *argv],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def test_lobbyctl_prometheus_says_when_there_are_no_targets(nats_server, channel, spawn):
    a = spawn("a.example", {"NATS_URL": nats_server.url, "NATS_DISCOVERY_CHANNEL": channel})
    out, err = lobbyctl("-port", str(a.port), "prometheus", "node").communicate(timeout=30)
    assert out == ""
    assert err == "lobbyctl: no targets: no node has a prometheus:node label\n"
    out, err = lobbyctl("-port", str(a.port), "-json", "prometheus", "node").communicate(timeout=30)
    assert (out, err) == ("[]\n", "")


def test_lobbyctl_watch_says_once_when_lobbyd_is_down_and_when_it_is_back(
    nats_server, channel, spawn, tmp_path
):
    env = {"NATS_URL": nats_server.url, "NATS_DISCOVERY_CHANNEL": channel, "PORT": str(free_port())}
    a = spawn("a.example", env)
    watch = lobbyctl("-port", env["PORT"], "watch")
    err_lines: list[str] = []
    out_lines: list[str] = []
    readers = [
        threading.Thread(target=lambda: err_lines.extend(watch.stderr), daemon=True),  # type: ignore[arg-type]
        threading.Thread(target=lambda: out_lines.extend(watch.stdout), daemon=True),  # type: ignore[arg-type]
    ]
    for reader in readers:
        reader.start()
    try:
        wait_for(lambda: any(line.startswith("join   a.example") for line in out_lines), 15)
        a.stop()
        wait_for(lambda: err_lines, 15, what="lobbyctl says lobbyd is gone")
        spawn("a.example", env)  # the same port
        wait_for(lambda: len(err_lines) == 2, 30, what="lobbyctl says lobbyd is back")
    finally:
        watch.terminate()
        watch.wait(10)
    url = f"http://127.0.0.1:{env['PORT']}"
    assert err_lines[0].startswith(f"lobbyctl: lost lobbyd at {url} (")
    assert err_lines[0].endswith("); retrying every second\n")
    assert err_lines[1] == f"lobbyctl: lobbyd at {url} is back\n"
