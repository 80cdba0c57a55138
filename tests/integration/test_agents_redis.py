"""Agents and listeners (SPEC §20) with real processes on a real redis-server.

As tests/integration/test_agents.py on NATS, and what only Redis has: no queue group,
so every warm listener hears every query on `<REDIS_CHANNEL>:query` and the listeners
pick who answers among the warm ones they heard say hello on
`<REDIS_CHANNEL>:listeners` (lobby.node.queries). An agent subscribes to its reply
channel `<REDIS_CHANNEL>:reply:<id>` only. Each test uses its own channel on the
session's redis-server.
"""

from __future__ import annotations

import gzip
import signal
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import httpx
import orjson
import pytest
import redis
from support import (
    Lobbyd,
    RedisServer,
    envelope,
    hostnames,
    redis_publish,
    same_answer,
    unique,
    wait_for,
    warm,
)

KEEP_ALIVE = 1
TTL = 4
FAST = {"KEEP_ALIVE": str(KEEP_ALIVE), "TTL": str(TTL), "CLEAN_EVERY": "1"}
AGENT = {"LISTEN": "false"}


@pytest.fixture
def channel() -> str:
    return unique("lobby:test")


@pytest.fixture
def env(redis_server: RedisServer, channel: str) -> dict[str, str]:
    return {
        "DRIVER": "Redis",
        "REDIS_HOST": "127.0.0.1",
        "REDIS_PORT": str(redis_server.port),
        "REDIS_CHANNEL": channel,
        **FAST,
    }


@pytest.fixture
def client(redis_server: RedisServer) -> Iterator[redis.Redis]:
    c = redis.Redis(host="127.0.0.1", port=redis_server.port, protocol=2)
    yield c
    c.close()


def queries(node: Lobbyd) -> dict[str, Any]:
    return node.stats()["queries"]  # type: ignore[no-any-return]


def knows(listener: Lobbyd, *names: str) -> bool:
    """Warm, and picking among exactly these listeners."""
    q = queries(listener)
    return bool(q["warm"]) and q["fanout_listeners"] == sorted(names)


def subscribers(client: redis.Redis, *channels: str) -> dict[str, int]:
    return {k.decode(): v for k, v in client.pubsub_numsub(*channels)}  # type: ignore[union-attr]


def ask_at_once(agent: Lobbyd, n: int, path: str = "/v1/discoveries") -> list[tuple[Any, float]]:
    """n reads through the agent at the same time: (response, seconds) each."""

    def one(_: int) -> tuple[httpx.Response, float]:
        started = time.monotonic()
        r = agent.get(path)
        return r, time.monotonic() - started

    with ThreadPoolExecutor(n) as pool:
        return list(pool.map(one, range(n)))


def test_an_agent_answers_as_its_listener_does(
    spawn: Callable[..., Lobbyd], env: dict[str, str], client: redis.Redis, channel: str
):
    listener = spawn("listener-1", {**env, "LABELS": "service:web,role:listener"})
    agent = spawn("agent-1", {**env, **AGENT, "LABELS": "service:web,role:agent"})
    spawn("agent-2", {**env, **AGENT, "LABELS": "service:db"})
    wait_for(lambda: len(hostnames(listener)) == 3, what="the listener hears both agents")
    wait_for(lambda: warm(listener), what="the listener warms up")
    # on Redis: the listener alone hears the topics, the hellos and (warm) the queries;
    # each node has its own reply channel, and nothing else is subscribed
    topics = [channel, f"{channel}:sync", f"{channel}:listeners", f"{channel}:query"]
    assert subscribers(client, *topics) == dict.fromkeys(topics, 1)
    assert len(client.pubsub_channels(f"{channel}:reply:*")) == 3
    assert len(client.pubsub_channels(f"{channel}*")) == 4 + 3
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
    fillers = "".join(f"filler:{i}{'x' * 100}\n" for i in range(12))
    assert agent.request("POST", "/v1/labels", content=fillers).status_code == 200
    wait_for(lambda: b"filler:11" in listener.get("/v1/discoveries").content, what="labels")
    with agent.client() as c:
        packed = c.get("/v1/discoveries", headers={"Accept-Encoding": "gzip"})
    assert packed.headers["content-encoding"] == "gzip"
    assert b"filler:11" in packed.content
    stats = agent.stats()
    assert stats["queries"]["role"] == "agent" and stats["nodes"] == 1
    assert stats["packets"]["received"] == 0  # subscribed to its replies only
    assert stats["queries"]["listeners"]["listener-1"]["answered"] >= len(paths)
    assert agent.get("/v1/health").json()["brokers"]["listeners"] == "answering"
    assert queries(listener)["fanout_listeners"] == ["listener-1"]


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
    time.sleep(1.5)
    assert thread.is_alive()  # held past a try's 1 s: nothing changed yet
    spawn("late-node", {**env, **AGENT})
    thread.join(25)
    r = result["response"]
    assert r.status_code == 200 and "late-node" in r.text
    assert int(r.headers["x-lobby-index"]) > int(index)
    assert result["took"] < 15  # answered by the change, not the 20 s wait
    assert queries(agent)["retries"] == 0


def test_a_reply_over_512_kib_comes_in_chunks(
    spawn: Callable[..., Lobbyd], env: dict[str, str], redis_server: RedisServer, channel: str
):
    listener = spawn("listener-1", {**env, "TTL": "60"})
    agent = spawn("agent-1", {**env, **AGENT, "TTL": "60"})
    peers = [
        envelope(f"peer-{i:05d}.example", [f"service:s{i}", "note:" + "x" * 600])
        for i in range(3000)
    ]
    wait_for(lambda: listener.stats()["broker"]["connected"], what="the listener subscribed")
    redis_publish(redis_server.port, channel, peers)  # once: only after it subscribed
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
    assert queries(agent)["bad_replies"] == 0


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
    listener = spawn("listener-1", env)
    wait_for(lambda: warm(listener), what="warm listener")
    wait_for(lambda: agent.get("/v1/discoveries").status_code == 200, timeout=2, what="answers")
    assert agent.get("/v1/health").status_code == 200
    assert queries(agent)["failed"] >= 1


def test_two_warm_listeners_share_the_queries_one_answer_each(
    spawn: Callable[..., Lobbyd], env: dict[str, str]
):
    a = spawn("listener-a", env)
    b = spawn("listener-b", env)
    agent = spawn("agent-1", {**env, **AGENT})
    wait_for(
        lambda: knows(a, "listener-a", "listener-b") and knows(b, "listener-a", "listener-b"),
        what="both warm, each knowing both",
    )
    before = {x.name: queries(x)["answered"] for x in (a, b)}
    asked = queries(agent)["answered"]
    n = 40
    by = [r.headers["x-lobby-listener"] for r, _ in ask_at_once(agent, n)]
    assert sorted(set(by)) == ["listener-a", "listener-b"]  # the hash spreads them
    q = queries(agent)
    assert q["answered"] - asked == n and q["retries"] == 0 and q["failed"] == 0
    # exactly one answer each: the listeners answered n between them, not more
    answered = {x.name: queries(x)["answered"] - before[x.name] for x in (a, b)}
    assert answered == {name: by.count(name) for name in ("listener-a", "listener-b")}
    skipped = sum(queries(x)["skipped_other_listener"] for x in (a, b))
    assert skipped >= n  # each heard all n, and left the other's share alone


def test_a_warming_listener_leaves_queries_to_the_others(
    spawn: Callable[..., Lobbyd], env: dict[str, str], client: redis.Redis, channel: str
):
    slow = {**env, "KEEP_ALIVE": "3", "TTL": "9"}  # warm after 4 s
    old = spawn("listener-old", slow)
    agent = spawn("agent-1", {**env, **AGENT, "KEEP_ALIVE": "3", "TTL": "9"})
    wait_for(lambda: warm(old), timeout=10, what="the first listener warm")
    new = spawn("listener-new", slow)
    assert not warm(new)
    # it hears the hellos already, but takes no queries
    assert subscribers(client, f"{channel}:query", f"{channel}:listeners") == {
        f"{channel}:query": 1,
        f"{channel}:listeners": 2,
    }
    answered_by = {agent.get("/v1/discoveries").headers["x-lobby-listener"] for _ in range(20)}
    assert answered_by == {"listener-old"}
    assert queries(new)["answered"] == 0 and queries(new)["skipped_other_listener"] == 0
    wait_for(lambda: knows(new, "listener-new", "listener-old"), timeout=10, what="new warm")
    assert knows(old, "listener-new", "listener-old")


def test_a_stopped_listener_the_agent_answers_through_the_retry(
    spawn: Callable[..., Lobbyd], env: dict[str, str]
):
    a = spawn("listener-a", env)
    b = spawn("listener-b", env)
    agent = spawn("agent-1", {**env, **AGENT})
    both = ("listener-a", "listener-b")
    wait_for(lambda: knows(a, *both) and knows(b, *both), what="both warm, each knowing both")
    b.signal(signal.SIGSTOP)  # alive to Redis (its socket stays open), deaf and dumb
    try:
        answers = ask_at_once(agent, 12)
        for r, took in answers:
            assert r.status_code == 200 and r.headers["x-lobby-listener"] == "listener-a"
            assert took < 2.5  # at worst a silent try of 1 s, then the retry
        assert queries(agent)["retries"] >= 1  # about half hashed to the stopped one
        # 3 x KEEP_ALIVE without its hello: the other one no longer counts it
        wait_for(lambda: knows(a, "listener-a"), timeout=5, what="listener-b dropped")
        retries = queries(agent)["retries"]
        for r, _ in ask_at_once(agent, 12):
            assert r.status_code == 200 and r.headers["x-lobby-listener"] == "listener-a"
        assert queries(agent)["retries"] == retries  # no silent try any more
    finally:
        b.signal(signal.SIGCONT)
    # back: it says hello again and takes its share
    wait_for(lambda: knows(a, *both), timeout=10, what="listener-b back in the view")
    b.kill()  # gone without a bye: the retry covers it again, then the view
    for r, took in ask_at_once(agent, 12):
        assert r.status_code == 200 and r.headers["x-lobby-listener"] == "listener-a"
        assert took < 2.5


def test_a_listener_that_stops_says_bye(spawn: Callable[..., Lobbyd], env: dict[str, str]):
    a = spawn("listener-a", env)
    b = spawn("listener-b", env)
    agent = spawn("agent-1", {**env, **AGENT})
    both = ("listener-a", "listener-b")
    wait_for(lambda: knows(a, *both) and knows(b, *both), what="both warm, each knowing both")
    started = time.monotonic()
    assert b.stop() == 0
    assert knows(a, "listener-a")  # at once, not after 3 x KEEP_ALIVE
    assert time.monotonic() - started < 2.5
    for r, _ in ask_at_once(agent, 12):
        assert r.status_code == 200 and r.headers["x-lobby-listener"] == "listener-a"
    assert queries(agent)["retries"] == 0  # no silent try: nothing went to listener-b
