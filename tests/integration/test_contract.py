"""The contract every driver keeps, proven with real brokers and real lobbyd processes.

Each test runs once on NATS and once on Redis (the `broker` fixture). Timings are
never asserted: we poll for the expected state with generous limits.
"""

import re
import signal
import time
from pathlib import Path

import orjson
import pytest
from support import free_port, wait_for

FAST = {"KEEP_ALIVE": "1", "TTL": "4", "CLEAN_EVERY": "1"}


def test_two_nodes_list_each_other(broker, spawn):
    a = spawn("a.example", broker.env(LABELS="service:web", **FAST))
    b = spawn("b.example", broker.env(**FAST))
    for node in (a, b):
        wait_for(lambda n=node: n.hostnames() == ["a.example", "b.example"], what="both listed")
    got = b.get("/v1/discoveries").json()
    assert got[0]["labels"] == ["service:web"]
    assert abs(got[0]["last_check"] - time.time()) < 10


def test_label_posted_on_one_node_appears_on_the_other(broker, spawn):
    # b first: a's first "hi" reaches it; after that only announcements made at once can
    # get there within the test, since the next keep-alive is 30 s away
    b = spawn("b.example", broker.env(KEEP_ALIVE="30"))
    a = spawn("a.example", broker.env(KEEP_ALIVE="30"))
    wait_for(lambda: b.hostnames() == ["a.example", "b.example"], what="both listed")
    r = a.request("POST", "/v1/labels", content="service:smtp\nbackup:/srv/app dir\n")
    assert (r.status_code, r.text) == (200, "OK")

    def labels_on_b():
        return b.get("/v1/discoveries", params={"labels": "service:smtp"}).json()

    got = wait_for(labels_on_b, timeout=15, what="label on b")  # before a keep-alive
    assert got == [
        {"hostname": "a.example", "labels": ["service:smtp"], "last_check": got[0]["last_check"]}
    ]
    r = a.request("DELETE", "/v1/labels", content="service:smtp\n")
    assert r.status_code == 200
    wait_for(lambda: labels_on_b() == [], timeout=15, what="label gone on b")
    assert (a.labels_path / "_runtime").read_text() == "backup:/srv/app dir\n"


def test_sigterm_says_goodbye(broker, spawn):
    a = spawn("a.example", broker.env(KEEP_ALIVE="1", TTL="60"))
    b = spawn("b.example", broker.env(KEEP_ALIVE="1", TTL="60"))
    wait_for(lambda: a.hostnames() == ["a.example", "b.example"], what="both listed")
    b.signal(signal.SIGTERM)
    assert b.wait(10) == 0
    wait_for(lambda: a.hostnames() == ["a.example"], timeout=15, what="b gone (TTL is 60 s)")
    assert "stopped in" in b.output()


def test_silent_node_expires_after_ttl(broker, spawn):
    a = spawn("a.example", broker.env(**FAST))
    b = spawn("b.example", broker.env(**FAST))
    wait_for(lambda: a.hostnames() == ["a.example", "b.example"], what="both listed")
    b.kill()  # SIGKILL: no goodbye
    assert a.hostnames() == ["a.example", "b.example"]
    wait_for(lambda: a.hostnames() == ["a.example"], timeout=15, what="b expired")


def test_register_false_node_is_not_listed(broker, spawn):
    a = spawn("a.example", broker.env(**FAST))
    c = spawn("client.example", broker.env(REGISTER="false", **FAST))
    wait_for(lambda: c.hostnames() == ["a.example"], what="client sees a")
    time.sleep(1.5)  # a few keep-alives
    assert a.hostnames() == ["a.example"]
    assert c.get("/v1/discovery").json()["hostname"] == "client.example"


def test_garbage_on_the_channel_changes_nothing(broker, spawn):
    a = spawn("a.example", broker.env(**FAST))
    wait_for(lambda: a.hostnames() == ["a.example"], what="a listed")
    before = a.get("/v1/discoveries").json()
    junk = [
        b"",
        b"not json",
        b"\xff\xfe\xfd",
        b"[]",
        b"{}",
        b'{"message":"hi"}',
        b'{"message":"hello","discovery":{"hostname":"x","labels":[]}}',
        b'{"message":"hi","discovery":{"hostname":"","labels":[]}}',
        b'{"message":"hi","discovery":{"hostname":"x","labels":["a\\nb"]}}',
        b'{"message":"hi","discovery":{"hostname":"x","labels":"a"}}',
        b"[" * 5000,
        orjson.dumps(
            {"message": "hi", "discovery": {"hostname": "big", "labels": ["x" * 1000] * 70}}
        ),
    ]
    valid = orjson.dumps(
        {"message": "hi", "discovery": {"hostname": "good.example", "labels": ["ok"]}}
    )
    broker.publish([*junk, valid])
    wait_for(lambda: a.hostnames() == ["a.example", "good.example"], what="valid one listed")
    stats = a.get("/v1/stats").json()
    assert stats["packets"]["rejected"] == len(junk)
    after = a.get("/v1/discoveries").json()[0]
    assert (after["hostname"], after["labels"]) == (before[0]["hostname"], before[0]["labels"])
    assert a.running


def test_broker_restart_recovers_without_restarting_lobbyd(own_broker, spawn):
    a = spawn("a.example", own_broker.env(**{**FAST, "TTL": "30"}))
    b = spawn("b.example", own_broker.env(**{**FAST, "TTL": "30"}))
    wait_for(lambda: a.hostnames() == ["a.example", "b.example"], what="both listed")
    own_broker.server.kill()
    time.sleep(2)
    # while down: both keep serving their last view
    assert a.hostnames() == ["a.example", "b.example"]
    wait_for(lambda: b.get("/v1/stats").json()["broker"]["connected"] is False, 15, what="down")
    own_broker.server.start()
    wait_for(lambda: b.get("/v1/stats").json()["broker"]["connected"], timeout=15, what="reconnect")
    a.request("POST", "/v1/labels", content="after:restart\n")
    wait_for(
        lambda: b.get("/v1/discoveries", params={"labels": "after:restart"}).json(),
        timeout=10,
        what="traffic flows again",
    )
    assert a.running and b.running


def test_token_auth(nats_server, channel, spawn):
    a = spawn(
        "a.example",
        {"NATS_URL": nats_server.url, "NATS_DISCOVERY_CHANNEL": channel, "TOKEN": "s3cret"},
    )
    for method, path in [
        ("GET", "/"),
        ("GET", "/v1/discoveries"),
        ("GET", "/v1/discovery"),
        ("GET", "/v1/resolve?label=x"),
        ("POST", "/v1/labels"),
        ("DELETE", "/v1/labels"),
        ("GET", "/nope"),
        ("GET", "/openapi.json"),
    ]:
        for headers in ({}, {"Authorization": "Token wrong"}, {"Authorization": "s3cret"}):
            import httpx

            r = httpx.request(method, a.url + path, headers=headers, content=b"x")
            assert r.status_code == 403, (method, path, headers)
            assert r.json() == {"message": "access denied"}
    assert a.get("/v1/discovery").status_code == 200  # a.get sends the token


def test_embedded_default_starts_and_a_second_node_joins(spawn, tmp_path):
    port = free_port()
    a = spawn("a.example", {"EMBEDDED_NATS_PORT": str(port), "KEEP_ALIVE": "1"})
    assert f"NATS_URL=nats://127.0.0.1:{port}" in a.output()
    b = spawn("b.example", {"EMBEDDED_NATS_PORT": str(port), "KEEP_ALIVE": "1"})
    spawn("c.example", {"NATS_URL": f"nats://127.0.0.1:{port}", "KEEP_ALIVE": "1"})
    wait_for(lambda: a.hostnames() == ["a.example", "b.example", "c.example"], what="all on a")
    assert "joining the NATS server already listening" in b.output()
    a.stop()
    assert "stopped embedded nats-server" in a.output()


def test_the_embedded_server_dies_with_its_lobbyd_even_by_sigkill(spawn):
    a = spawn("a.example", {"EMBEDDED_NATS_PORT": str(free_port())})
    found = re.search(r"started embedded nats-server \(pid (\d+)\)", a.output())
    assert found is not None, a.output()
    server = Path(f"/proc/{found[1]}")
    assert "nats-server" in (server / "cmdline").read_text()  # setpriv exec'd it

    def gone() -> bool:  # exited, or a zombie nobody reaps in this container
        try:
            return "\nState:\tZ" in (server / "status").read_text()
        except FileNotFoundError:
            return True

    a.signal(signal.SIGKILL)
    a.wait(10)
    wait_for(gone, 10, what="nats-server to get SIGTERM from PR_SET_PDEATHSIG")


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_signals_exit_cleanly(nats_server, channel, spawn, sig):
    a = spawn("a.example", {"NATS_URL": nats_server.url, "NATS_DISCOVERY_CHANNEL": channel})
    a.signal(sig)
    assert a.wait(10) == 0


def test_disable_api_still_announces(broker, spawn):
    a = spawn("a.example", broker.env(**FAST))
    quiet = spawn("quiet.example", broker.env(DISABLE_API="true", **FAST), ready=False)
    wait_for(lambda: a.hostnames() == ["a.example", "quiet.example"], what="quiet announced")
    assert quiet.running


def test_embedded_server_is_taken_over_when_its_owner_leaves(spawn):
    port = free_port()
    env = {"EMBEDDED_NATS_PORT": str(port), "KEEP_ALIVE": "1", "TTL": "30"}
    a = spawn("a.example", env)
    b = spawn("b.example", env)
    c = spawn("c.example", env)
    wait_for(lambda: c.hostnames() == ["a.example", "b.example", "c.example"], what="all on c")
    a.stop()
    assert "stopped embedded nats-server" in a.output()
    wait_for(lambda: "starting it here" in b.output() + c.output(), timeout=15, what="takeover")
    wait_for(lambda: b.hostnames() == ["b.example", "c.example"], timeout=15, what="b and c")
    b.request("POST", "/v1/labels", content="after:takeover\n")
    wait_for(lambda: c.get("/v1/discoveries?labels=after:takeover").json(), what="traffic flows")
