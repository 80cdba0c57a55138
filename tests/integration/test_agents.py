"""Agents and listeners (SPEC §20) with real processes on a real nats-server.

Listeners are today's lobbyd; agents (LISTEN=false) announce but subscribe to nothing,
and ask a listener for every cluster read over `<subject>.query`. Each test uses its
own subject on the session's nats-server.
"""

from __future__ import annotations

import gzip
import shlex
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest
from support import (
    Broker,
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
    wait_for(lambda: listener.stats()["broker"]["connected"], what="the listener subscribed")
    nats_publish(nats_server.url, channel, peers)  # once: only after it subscribed
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
    r = agent.get("/v1/discoveries")  # how long this takes is bench/'s (fanout.py scale)
    assert r.status_code == 503
    assert r.text == "no listener answered (tried 2)\n"
    health = agent.get("/v1/health")
    assert health.status_code == 503
    assert health.json()["brokers"]["listeners"] == "none answered"
    # one comes back: after its warm-up, the agent answers again
    listener = spawn("listener-1", env)
    wait_for(lambda: warm(listener), what="warm listener")
    wait_for(lambda: agent.get("/v1/discoveries").status_code == 200, what="answers again")
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


def test_events_a_template_and_the_callback_on_an_agent(
    spawn: Callable[..., Lobbyd], env: dict[str, str], tmp_path: Path
):
    """What reads a registry reads the agent's copy of the listener's view."""
    template = tmp_path / "names.j2"
    template.write_text("{% for node in nodes %}{{ node.hostname }}\n{% endfor %}")
    rendered = tmp_path / "names"
    called = tmp_path / "called"
    callback = shlex.join(
        [
            sys.executable,
            "-c",
            f"import sys; open({str(called)!r}, 'wb').write(sys.stdin.buffer.read())",
        ]
    )
    listener = spawn("listener-1", env)
    wait_for(lambda: warm(listener), what="warm listener")
    agent = spawn(
        "agent-1",
        {
            **env,
            **AGENT,
            "TEMPLATES": f"{template}:{rendered}",
            "TEMPLATE_WAIT": "100ms:1s",
            "CALLBACK": callback,
            "CALLBACK_FIRST_RUN_DELAY": "0",
            "CALLBACK_COOLDOWN": "0",
        },
    )
    names = lambda: rendered.read_text().split() if rendered.exists() else []  # noqa: E731
    wait_for(lambda: names() == ["agent-1", "listener-1"], timeout=15, what="rendered")
    with (
        httpx.Client(base_url=agent.url, timeout=20) as client,
        client.stream("GET", "/v1/events") as stream,
    ):
        lines = stream.iter_lines()
        joined = []
        for line in lines:
            if line.startswith("data: "):
                joined.append(orjson.loads(line[6:])["hostname"])
            if line == ": live":
                break
        assert sorted(joined) == ["agent-1", "listener-1"]
        spawn("late-agent", {**env, **AGENT})
        for line in lines:
            if line.startswith("data: ") and b"late-agent" in line.encode():
                break
    wait_for(lambda: "late-agent" in names(), timeout=15, what="the template follows")
    wait_for(
        lambda: called.exists() and b"late-agent" in called.read_bytes(),
        timeout=15,
        what="callback",
    )
    assert sorted(d["hostname"] for d in orjson.loads(called.read_bytes())) == [
        "agent-1",
        "late-agent",
        "listener-1",
    ]
    assert agent.stats()["mirror"]["ready"] is True


def test_a_broker_restart_expires_nobody(
    spawn: Callable[..., Lobbyd], make_nats: Callable[..., NatsServer], channel: str
):
    """After a reconnect a listener gives every node a whole TTL: agents come back over
    seconds (jittered), and none may expire meanwhile (SPEC §20)."""
    nats = make_nats()
    env = {"NATS_URL": nats.url, "NATS_DISCOVERY_CHANNEL": channel, "KEEP_ALIVE": "1"}
    listener = spawn("listener-1", {**env, "TTL": "6", "CLEAN_EVERY": "1"})
    peers = [envelope(f"agent-{i:03d}.example", ["service:web"]) for i in range(30)]
    # published once: only after the listener has subscribed
    wait_for(lambda: listener.stats()["broker"]["connected"], what="the listener subscribed")
    nats_publish(nats.url, channel, peers)
    wait_for(lambda: listener.stats()["nodes"] == 31, what="30 agents heard")
    time.sleep(3.5)  # the agents' last keep-alive is 3.5 s old when the broker goes
    nats.stop()
    time.sleep(1.0)
    nats.restart()
    wait_for(lambda: listener.stats()["broker"]["connected"], what="the listener reconnects")
    # without a whole TTL from the reconnect they had 2.5-3.5 s left; they come back
    # 4.5 s later, as agents reconnecting with jitter do
    time.sleep(4.5)
    assert listener.stats()["nodes"] == 31
    nats_publish(nats.url, channel, peers)
    metrics = listener.get("/metrics").text
    assert 'lobby_node_events_total{event="expire"} 0.0' in metrics
    assert 'lobby_node_events_total{event="join"} 31.0' in metrics


def test_lobbyctl_and_the_client_work_on_an_agent(
    spawn: Callable[..., Lobbyd], env: dict[str, str]
):
    from lobby.client import Lobby

    listener = spawn("listener-1", {**env, "LABELS": "service:web"})
    agent = spawn("agent-1", {**env, **AGENT, "LABELS": "service:web"})
    wait_for(lambda: len(hostnames(listener)) == 2 and warm(listener), what="warm listener")
    done = subprocess.run(
        [sys.executable, "-m", "lobby.ctl", "-port", str(agent.port), "resolve", "service:web"],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["agent-1", "listener-1"]
    with Lobby("127.0.0.1", agent.port) as client:
        assert client.resolve("service:web") == ["agent-1", "listener-1"]
        found = client.find_by_labels(["service:web"])
        assert [d["hostname"] for d in found] == ["agent-1", "listener-1"]
        assert client.get_discovery()["hostname"] == "agent-1"  # its own, local


def test_a_stopped_listener_costs_a_retry_not_an_error(
    spawn: Callable[..., Lobbyd], env: dict[str, str]
):
    """A SIGSTOPped listener keeps its subscriptions (the server notices minutes later):
    the retry goes to the queue group and, by name, to the listener that answered last."""
    a = spawn("listener-a", env)
    b = spawn("listener-b", env)
    agent = spawn("agent-1", {**env, **AGENT})
    wait_for(lambda: warm(a) and warm(b), what="both listeners warm")
    wait_for(
        lambda: agent.get("/v1/discoveries").headers.get("x-lobby-listener") == "listener-b",
        what="listener-b answering last",
    )
    a.signal(signal.SIGSTOP)
    try:
        with agent.client() as client:
            for _ in range(12):
                r = client.get("/v1/resolve?label=nothing")
                assert r.status_code == 200 and r.headers["x-lobby-listener"] == "listener-b"
        assert agent.stats()["queries"]["retries"] >= 1  # the group did pick the silent one
    finally:
        a.signal(signal.SIGCONT)


def test_an_agent_reads_its_own_writes_through_a_listener(
    spawn: Callable[..., Lobbyd], broker: Broker
):
    """SPEC §5 on an agent, on either broker: its "hi" leaves before the write is
    answered, and its next query after it on the same connection, so any listener has
    applied the "hi" first."""
    env = broker.env(**FAST)
    a = spawn("listener-a", env)
    b = spawn("listener-b", env)
    agent = spawn("agent-1", {**env, **AGENT})
    wait_for(lambda: warm(a) and warm(b) and "agent-1" in hostnames(a), what="warm listeners")
    stale = 0
    with agent.client() as client:
        for i in range(40):
            label = f"round:{i}"
            assert client.post("/v1/labels", content=label + "\n").status_code == 200
            if client.get("/v1/resolve", params={"label": label}).json() != ["agent-1"]:
                stale += 1
            assert client.request("DELETE", "/v1/labels", content=label + "\n").status_code == 200
            if client.get("/v1/resolve", params={"label": label}).json() != []:
                stale += 1
    assert stale == 0
