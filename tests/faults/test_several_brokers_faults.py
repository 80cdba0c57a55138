"""Faults with several brokers (SPEC §15): one broker dies under a node on two, and a
Redis master dies under Sentinel. Real processes throughout; timings are printed as
FIGURE lines (run with -s), never asserted.
"""

from __future__ import annotations

import functools
import time
from typing import Any

import pytest
from support import ApiPoller, Lobbyd, SentinelSet, hostnames, wait_for, warm

pytestmark = pytest.mark.fault

KEEP_ALIVE = 1
TTL = 4
FAST = {"KEEP_ALIVE": str(KEEP_ALIVE), "TTL": str(TTL), "CLEAN_EVERY": "1"}


def figure(name: str, value: object) -> None:
    print(f"\nFIGURE {name}: {value}")


def links(node: Lobbyd) -> dict[str, Any]:
    return node.get("/v1/stats").json()["brokers"]  # type: ignore[no-any-return]


def heard_since(node: Lobbyd, hostname: str, wall: float) -> bool:
    got = node.get("/v1/discoveries").json()
    record: dict[str, Any] = next((d for d in got if d["hostname"] == hostname), {})
    return record.get("last_check", 0) >= int(wall) + 1


def test_redis_dies_under_a_node_on_both_brokers(make_redis, nats_server, channel, spawn):
    """Nodes heard via NATS stay and expire normally; nodes heard only via Redis are
    kept until Redis returns."""
    redis = make_redis()
    nats_env = {"NATS_URL": nats_server.url, "NATS_DISCOVERY_CHANNEL": channel, **FAST}
    redis_env = {"REDIS_PORT": str(redis.port), "REDIS_CHANNEL": channel, **FAST}
    both = spawn("both", {**nats_env, **redis_env, "DRIVER": "NATS,Redis"})
    n = spawn("n", {**nats_env, "DRIVER": "NATS"})
    r = spawn("r", {**redis_env, "DRIVER": "Redis"})
    wait_for(lambda: both.hostnames() == ["both", "n", "r"], what="both lists everyone")

    with ApiPoller([both]) as poller:
        redis.kill()
        killed = time.monotonic()
        wait_for(lambda: not links(both)["Redis"]["connected"], 10, what="Redis link down")
        state = links(both)
        assert state["Redis"]["expiry_paused"] and not state["NATS"]["expiry_paused"]
        # n goes on refreshing through NATS; r, heard only through Redis, is kept
        time.sleep(max(0.0, killed + 1.5 * TTL - time.monotonic()))
        assert both.hostnames() == ["both", "n", "r"]
        assert heard_since(both, "n", time.time() - 2 * KEEP_ALIVE - 1)
        # n dies (no goodbye) while Redis is still down: it expires after TTL as usual
        n.kill()
        n_killed = time.monotonic()
        wait_for(lambda: both.hostnames() == ["both", "r"], TTL + 10, what="n expires")
        figure(
            "NATS-heard node expired during the Redis outage after (s)",
            round(time.monotonic() - n_killed, 2),
        )
        assert links(both)["Redis"]["expiry_paused"]
        outage = time.monotonic() - killed
        back_wall = time.time()
        redis.start()  # same port
        wait_for(lambda: heard_since(both, "r", back_wall), 10 + 10 * KEEP_ALIVE, what="r again")
        assert not links(both)["Redis"]["expiry_paused"]

    assert poller.errors() == []
    assert poller.missing(["both", "r"]) == [], "r vanished during the Redis outage"
    figure("Redis outage (s), r kept throughout", round(outage, 1))
    assert r.running and both.running


def test_sentinel_failover_without_restart(tmp_path, procs, spawn, channel):
    """SIGKILL the Redis master: the Sentinels promote a replica, both nodes move their
    subscription and announcements there and keep seeing each other. Then a manual
    failover, both servers alive: the nodes follow Sentinel's word alone."""
    sentinels = SentinelSet(tmp_path, procs, replicas=2)
    sentinels.start()
    env = {
        "DRIVER": "Redis",
        "REDIS_SENTINELS": sentinels.addresses,
        "REDIS_SENTINEL_MASTER": "mymaster",
        "REDIS_CHANNEL": channel,
        **FAST,
    }
    a = spawn("a.example", env)
    b = spawn("b.example", env)
    pair = ["a.example", "b.example"]
    for node in (a, b):
        wait_for(lambda n=node: n.hostnames() == pair, 15, what=f"{node.name} lists both")
        assert links(node)["Redis"]["address"] == f"redis://127.0.0.1:{sentinels.master.port}/0"
    pids = (a.pid, b.pid)

    def on_master(port: int, since_wall: float) -> None:
        """Both nodes are linked to the master at `port` and hear each other since then."""
        address = f"redis://127.0.0.1:{port}/0"

        def there(node: Lobbyd) -> bool:
            link = links(node)["Redis"]
            return bool(link["address"] == address and link["connected"])

        for node, peer in ((a, "b.example"), (b, "a.example")):
            wait_for(functools.partial(there, node), 20, what=f"{node.name} on {address}")
            wait_for(functools.partial(heard_since, node, peer, since_wall), 20, what="fresh")

    with ApiPoller([a, b], interval=0.05) as poller:
        killed_wall = time.time()
        killed = time.monotonic()
        sentinels.master.kill()
        wait_for(lambda: sentinels.master_port() != sentinels.master.port, 30, what="failover")
        promoted = time.monotonic()
        new_master = sentinels.master_port()
        on_master(new_master, killed_wall)
        healed = time.monotonic()

    assert poller.errors() == []
    assert poller.missing(pair) == [], "a peer vanished during the failover"
    assert (a.pid, b.pid) == pids and a.running and b.running  # no lobbyd restart
    for node in (a, b):
        assert "moved from" in node.output() and "reports a failover" in node.output()
    figure("sentinel: SIGKILL to a replica promoted (s)", round(promoted - killed, 2))
    figure("sentinel: SIGKILL to both nodes hearing each other (s)", round(healed - killed, 2))
    figure(
        "sentinel: longest link-down seen through the API (s)",
        round(max(poller.longest_disconnect(n) for n in pair), 2),
    )
    # announcements go to the new master: a label change crosses it
    a.request("POST", "/v1/labels", content="after:failover\n")
    wait_for(lambda: b.get("/v1/resolve", params={"label": "after:failover"}).json(), 15)

    # a manual failover while both servers live: the old master, now a replica, would
    # still feed our subscription, so only Sentinel's +switch-master moves us
    other = next(r for r in sentinels.replicas if r.port != new_master)
    sentinels.follow(other, 30)
    switched_wall = time.time()
    sentinels.sentinels[0].failover()
    wait_for(lambda: sentinels.master_port() == other.port, 30, what="manual failover")
    on_master(other.port, switched_wall)
    a.request("DELETE", "/v1/labels", content="after:failover\n")
    wait_for(lambda: not b.get("/v1/resolve", params={"label": "after:failover"}).json(), 15)


def test_an_agent_asks_through_a_sentinel_failover(tmp_path, procs, spawn, channel):
    """SIGKILL the Redis master under a listener and an agent (SPEC §20): both move to
    the promoted replica, the listener warms up again there, and the agent's reads are
    answered again, by the same listener, without a restart."""
    sentinels = SentinelSet(tmp_path, procs, replicas=1)
    sentinels.start()
    env = {
        "DRIVER": "Redis",
        "REDIS_SENTINELS": sentinels.addresses,
        "REDIS_SENTINEL_MASTER": "mymaster",
        "REDIS_CHANNEL": channel,
        **FAST,
    }
    listener = spawn("listener-1", env)
    agent = spawn("agent-1", {**env, "LISTEN": "false"})
    pair = ["agent-1", "listener-1"]
    wait_for(lambda: warm(listener) and hostnames(agent) == pair, 20, what="the agent answers")
    killed = time.monotonic()
    sentinels.master.kill()
    wait_for(lambda: sentinels.master_port() != sentinels.master.port, 30, what="failover")
    address = f"redis://127.0.0.1:{sentinels.master_port()}/0"
    for node in (listener, agent):
        wait_for(
            lambda n=node: links(n)["Redis"]["address"] == address, 20, what=f"{node.name} moved"
        )
    wait_for(lambda: hostnames(agent) == pair, 20, what="the agent answers again")
    figure("sentinel: SIGKILL to an agent answering again (s)", round(time.monotonic() - killed, 2))
    r = agent.get("/v1/discoveries")
    assert r.headers["x-lobby-listener"] == "listener-1"
    assert (listener.running, agent.running) == (True, True)
