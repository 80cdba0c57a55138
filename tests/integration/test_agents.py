"""Agents and listeners (SPEC §20) with real processes on a real nats-server.

Listeners are today's lobbyd; agents (LISTEN=false) announce but subscribe to nothing,
and ask a listener for every cluster read over `<subject>.query`. Each test uses its
own subject on the session's nats-server.
"""

from __future__ import annotations

import gzip
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from typing import Any

import orjson
import pytest
from support import (
    Lobbyd,
    NatsServer,
    Tap,
    envelope,
    hostnames,
    nats_publish,
    same_answer,
    wait_for,
    warm,
)

KEEP_ALIVE = 1
TTL = 4
FAST = {"KEEP_ALIVE": str(KEEP_ALIVE), "TTL": str(TTL), "CLEAN_EVERY": "1"}
AGENT = {"LISTEN": "false"}


@pytest.fixture
def env(nats_server: NatsServer, channel: str) -> dict[str, str]:
    return {"NATS_URL": nats_server.url, "NATS_DISCOVERY_CHANNEL": channel, **FAST}


def test_an_agent_answers_as_its_listener_does(spawn: Callable[..., Lobbyd], env: dict[str, str]):
    listener = spawn("listener-1", {**env, "LABELS": "service:web,role:listener"})
    agent = spawn("agent-1", {**env, **AGENT, "LABELS": "service:web,role:agent"})
    spawn("agent-2", {**env, **AGENT, "LABELS": "service:db"})
    wait_for(lambda: len(hostnames(listener)) == 3, what="the listener hears both agents")
    wait_for(lambda: warm(listener), what="the listener warms up")
    # every cluster read: same status, body bytes and index as the listener's own API
    paths = [
        "/",
        "/v1/discoveries",
        "/v1/discoveries?labels=service:web",
        "/v1/discoveries?prefixes=role:",
        "/v1/resolve?label=service:web",
        "/v1/resolve?label=nothing:here",
        "/v1/prometheus/web",
        "/v1/resolve",  # 400 from the listener, relayed as it is
    ]
    for path in paths:
        for _ in range(5):  # a keep-alive may move the index between the two reads
            mine, theirs = agent.get(path), listener.get(path)
            if same_answer(mine, theirs):
                break
        assert same_answer(mine, theirs), path
        assert mine.headers["x-lobby-listener"] == "listener-1", path
        assert "x-lobby-listener" not in theirs.headers
    assert [d["hostname"] for d in agent.get("/").json()] == ["agent-1", "agent-2", "listener-1"]
    # gzip when the agent's client takes it: the listener's gzip copy, byte for byte
    fillers = "".join(f"filler:{i}{'x' * 100}\n" for i in range(12))
    assert agent.request("POST", "/v1/labels", content=fillers).status_code == 200
    wait_for(lambda: b"filler:11" in listener.get("/v1/discoveries").content, what="labels")
    with agent.client() as c:
        packed = c.get("/v1/discoveries", headers={"Accept-Encoding": "gzip"})
    assert packed.headers["content-encoding"] == "gzip"
    assert b"filler:11" in packed.content  # httpx decoded it
    # local on the agent: its own record, stats, health, checks
    own = agent.get("/v1/discovery").json()
    assert own["hostname"] == "agent-1" and "service:web" in own["labels"]
    stats = agent.stats()
    assert stats["queries"]["role"] == "agent" and stats["nodes"] == 1
    assert stats["queries"]["listeners"]["listener-1"]["answered"] >= len(paths)
    assert agent.get("/v1/health").json()["brokers"]["listeners"] == "answering"
    assert listener.stats()["queries"]["answered"] >= len(paths)
    metrics = agent.get("/metrics").text
    assert 'lobby_queries_total{result="ok",role="agent"}' in metrics
    assert 'lobby_query_seconds_count{role="agent"}' in metrics


def test_the_agents_are_in_every_listeners_view_and_hear_nothing(
    spawn: Callable[..., Lobbyd], env: dict[str, str]
):
    a = spawn("listener-a", env)
    b = spawn("listener-b", env)
    agents = [spawn(f"agent-{i}", {**env, **AGENT}) for i in range(3)]
    everyone = sorted(["listener-a", "listener-b", *(x.name for x in agents)])
    wait_for(lambda: hostnames(a) == everyone and hostnames(b) == everyone, what="views")
    for agent in agents:
        stats = agent.stats()
        assert stats["packets"]["received"] == 0  # subscribed to nothing
        assert stats["nodes"] == 1  # its own record only
    # a listener that stops: the agents' reads go to the other one
    wait_for(lambda: warm(a) and warm(b), what="both listeners warm")
    a.stop()
    for _ in range(5):
        r = agents[0].get("/v1/discoveries")
        assert r.status_code == 200 and r.headers["x-lobby-listener"] == "listener-b"


def test_a_blocking_query_through_an_agent(spawn: Callable[..., Lobbyd], env: dict[str, str]):
    listener = spawn("listener-1", env)
    agent = spawn("agent-1", {**env, **AGENT})
    wait_for(lambda: len(hostnames(listener)) == 2 and warm(listener), what="warm listener")
    first = agent.get("/v1/discoveries")
    index = first.headers["x-lobby-index"]
    assert index == listener.get("/v1/discoveries").headers["x-lobby-index"]
    result: dict[str, Any] = {}

    def held() -> None:
        started = time.monotonic()
        with agent.client(timeout=30) as c:
            r = c.get(f"/v1/discoveries?index={index}&wait=20s")
        result.update(response=r, took=time.monotonic() - started)

    thread = threading.Thread(target=held)
    thread.start()
    time.sleep(1.0)
    assert thread.is_alive()  # held: nothing changed yet
    joined = spawn("late-node", {**env, **AGENT})
    thread.join(25)
    r = result["response"]
    assert r.status_code == 200 and "late-node" in r.text
    assert int(r.headers["x-lobby-index"]) > int(index)
    assert result["took"] < 15  # answered by the change, not the 20 s wait
    assert joined.running


def test_a_reply_over_512_kib_comes_in_chunks(
    spawn: Callable[..., Lobbyd], env: dict[str, str], nats_server: NatsServer, channel: str
):
    listener = spawn("listener-1", {**env, "TTL": "60"})
    agent = spawn("agent-1", {**env, **AGENT, "TTL": "60"})
    # 3,000 Go peers with long labels, announced once: a list of about 2 MiB
    peers = [
        envelope(f"peer-{i:05d}.example", [f"service:s{i}", "note:" + "x" * 600])
        for i in range(3000)
    ]
    nats_publish(nats_server.url, channel, peers)
    wait_for(lambda: listener.stats()["nodes"] >= 3002, timeout=30, what="3,000 peers")
    wait_for(lambda: warm(listener), what="warm listener")
    for _ in range(5):
        mine, theirs = agent.get("/v1/discoveries"), listener.get("/v1/discoveries")
        if same_answer(mine, theirs):
            break
    assert len(mine.content) > 3 * 512 * 1024  # four messages or more
    assert same_answer(mine, theirs)
    with agent.client() as c:
        packed = c.get("/v1/discoveries", headers={"Accept-Encoding": "gzip"})
        raw = c.send(
            c.build_request("GET", "/v1/discoveries", headers={"Accept-Encoding": "gzip"}),
            stream=True,
        )
        compressed = b"".join(raw.iter_raw())
        raw.close()
    assert packed.headers["content-encoding"] == "gzip"
    assert packed.content == theirs.content
    assert gzip.decompress(compressed) == theirs.content
    assert orjson.loads(packed.content)[0]["hostname"] == "agent-1"


def test_no_listener_503_and_the_retry(spawn: Callable[..., Lobbyd], env: dict[str, str]):
    agent = spawn("agent-1", {**env, **AGENT})
    started = time.monotonic()
    r = agent.get("/v1/discoveries")
    took = time.monotonic() - started
    assert r.status_code == 503
    assert r.text == "no listener answered (tried 2)\n"
    assert took < 2.5
    health = agent.get("/v1/health")
    assert health.status_code == 503
    assert health.json()["brokers"]["listeners"] == "none answered"
    # one comes back: after its warm-up, the agent answers again
    listener = spawn("listener-1", env)
    wait_for(lambda: warm(listener), what="warm listener")
    wait_for(lambda: agent.get("/v1/discoveries").status_code == 200, timeout=2, what="answers")
    assert agent.get("/v1/health").status_code == 200
    assert agent.stats()["queries"]["failed"] >= 1


def test_a_warming_listener_leaves_queries_to_the_others(
    spawn: Callable[..., Lobbyd], env: dict[str, str]
):
    slow = {**env, "KEEP_ALIVE": "4", "TTL": "12"}  # warm after 5 s
    old = spawn("listener-old", slow)
    agent = spawn("agent-1", {**env, **AGENT, "KEEP_ALIVE": "4", "TTL": "12"})
    wait_for(lambda: warm(old), timeout=10, what="the first listener warm")
    new = spawn("listener-new", slow)
    assert not warm(new)
    answered_by = {agent.get("/v1/discoveries").headers["x-lobby-listener"] for _ in range(20)}
    assert answered_by == {"listener-old"}
    assert new.stats()["queries"]["answered"] == 0


def test_an_agent_with_dns_port_is_refused_at_start(env: dict[str, str]):
    done = subprocess.run(
        [sys.executable, "-m", "lobby"],
        env={**env, **AGENT, "DNS_PORT": "5353", "PATH": "/usr/bin:/bin"},
        capture_output=True,
        text=True,
        timeout=20,
    )
    assert done.returncode == 2
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and "DNS_PORT=5353 with LISTEN=false" in lines[0]


def test_a_go_peer_in_a_cluster_of_agents(
    spawn: Callable[..., Lobbyd], env: dict[str, str], nats_server: NatsServer, channel: str
):
    tap = Tap(nats_server, channel).start()
    stop = threading.Event()

    def go_peer() -> None:  # Go lobby's bytes, every second
        while not stop.is_set():
            nats_publish(
                nats_server.url, channel, [envelope("go-peer.example", ["service:legacy"])]
            )
            stop.wait(1.0)

    thread = threading.Thread(target=go_peer, daemon=True)
    thread.start()
    try:
        listener = spawn("listener-1", env)
        agent = spawn("agent-1", {**env, **AGENT, "LABELS": "service:api"})
        wait_for(lambda: "go-peer.example" in hostnames(listener), what="the Go peer")
        wait_for(lambda: "agent-1" in hostnames(listener), what="the agent")
        wait_for(lambda: warm(listener), what="warm listener")
        # the agent's "hi" is a plain Go packet on the main subject
        hi = [d for d in tap.docs() if d["discovery"]["hostname"] == "agent-1"]
        assert hi and hi[0]["message"] == "hi" and "service:api" in hi[0]["discovery"]["labels"]
        assert set(hi[0]) == {"discovery", "message"}
        r = agent.get("/v1/resolve?label=service:legacy")
        assert r.status_code == 200 and r.json() == ["go-peer.example"]
    finally:
        stop.set()
        thread.join(5)
        tap.stop()
