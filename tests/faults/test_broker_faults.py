"""Broker faults with real processes: SIGKILL, cluster failover, SIGSTOP, SIGTERM while down.

Every scenario runs real nats-server / redis-server and real lobbyd processes on
loopback. An `ApiPoller` thread reads every node's API all along the fault, so "no
peer ever disappeared" is checked on every answer, not only before and after.
Timings are measured and printed (run with -s to see them), never asserted tightly.
"""

from __future__ import annotations

import re
import signal
import time
from datetime import datetime

import pytest
from support import ApiPoller, Lobbyd, NatsCluster, wait_for

pytestmark = pytest.mark.fault

KEEP_ALIVE = 1
TTL = 4
FAST = {"KEEP_ALIVE": str(KEEP_ALIVE), "TTL": str(TTL), "CLEAN_EVERY": "1"}
PAIR = ["a.example", "b.example"]


def figure(name: str, value: object) -> None:
    print(f"\nFIGURE {name}: {value}")


def fresh(node: Lobbyd, since_wall: float) -> bool:
    """`node` lists both nodes, connected, with records heard after `since_wall`."""
    stats = node.get("/v1/stats").json()["broker"]
    if not stats["connected"] or stats["expiry_paused"]:
        return False
    got = node.get("/v1/discoveries").json()
    return sorted(d["hostname"] for d in got) == PAIR and all(
        d["last_check"] >= int(since_wall) for d in got
    )


def link_down(node: Lobbyd) -> bool:
    return node.get("/v1/stats").json()["broker"]["connected"] is False


def log_time(line: str) -> float:
    """The timestamp of a lobbyd log line (asctime: '2025-01-01 12:00:00,123')."""
    stamp = datetime.strptime(line[:23], "%Y-%m-%d %H:%M:%S,%f")
    return stamp.timestamp()


def assert_nobody_vanished(poller: ApiPoller, expected: list[str]) -> None:
    assert poller.errors() == [], "the API stopped answering during the fault"
    missing = poller.missing(expected)
    assert missing == [], f"a peer disappeared from a node's API: first {missing[:3]}"
    assert len(poller.samples) > 20, "the poller took too few samples to mean anything"


def test_broker_killed_keeps_last_view_and_recovers(own_broker, spawn):
    """SIGKILL the broker for longer than TTL: both nodes answer with their last view,
    expire nobody, then reconnect and resubscribe without a restart."""
    a = spawn("a.example", own_broker.env(**FAST))
    b = spawn("b.example", own_broker.env(**FAST))
    pids = (a.pid, b.pid)
    for node in (a, b):
        wait_for(lambda n=node: fresh(n, 0), what=f"{node.name} lists both")

    with ApiPoller([a, b]) as poller:
        own_broker.server.kill()
        killed = time.monotonic()
        for node in (a, b):
            wait_for(lambda n=node: link_down(n), 10, what=f"{node.name} notices the broker died")
        outage = 1.5 * TTL  # well past TTL: a node that expired peers would show it
        time.sleep(max(0.0, killed + outage - time.monotonic()))
        assert poller.saw("a.example", connected=False, paused=True)
        assert poller.saw("b.example", connected=False, paused=True)
        restarted_wall = time.time()
        restarted = time.monotonic()
        own_broker.server.start()  # same port
        # generous poll limit; the figure is printed, not asserted
        for node in (a, b):
            wait_for(lambda n=node: fresh(n, restarted_wall), 10 * KEEP_ALIVE + 10)
        recovered = time.monotonic() - restarted
        time.sleep(1)  # a little more of the resumed countdown

    assert_nobody_vanished(poller, PAIR)
    figure(f"{own_broker.kind} outage without expiry (s)", round(restarted - killed, 1))
    figure(f"{own_broker.kind} recovery after restart (s)", round(recovered, 2))
    assert (a.pid, b.pid) == pids and a.running and b.running  # no lobbyd restart
    # traffic flows again both ways
    a.request("POST", "/v1/labels", content="after:restart\n")
    wait_for(lambda: b.get("/v1/resolve", params={"label": "after:restart"}).json(), 15)


def test_nats_cluster_failover_loses_no_peer(tmp_path, procs, spawn):
    """Kill the cluster member a node is connected to: it fails over to another one and
    no node ever stops listing any peer."""
    cluster = NatsCluster(tmp_path, procs)
    cluster.start()
    env = {"NATS_URL": cluster.urls, "NATS_DISCOVERY_CHANNEL": "lobby.failover", **FAST}
    a = spawn("a.example", env)
    b = spawn("b.example", env)
    for node in (a, b):
        wait_for(lambda n=node: fresh(n, 0), 15, what=f"{node.name} lists both")
    victim = cluster.server_of("lobbyd a.example")
    line = next(x for x in a.output().splitlines() if "connected to NATS" in x)
    assert cluster.servers[victim].url in line  # the log names the same server

    with ApiPoller([a, b], interval=0.02) as poller:
        killed_wall = time.time()
        cluster.servers[victim].kill()
        wait_for(lambda: cluster.server_of("lobbyd a.example") != victim, 15, what="failover")
        for node in (a, b):
            wait_for(lambda n=node: fresh(n, killed_wall), 15, what=f"{node.name} fresh again")
        time.sleep(2 * KEEP_ALIVE)

    assert_nobody_vanished(poller, PAIR)
    log = a.output()
    down = [log_time(x) for x in log.splitlines() if "disconnected from NATS" in x]
    up = [log_time(x) for x in log.splitlines() if "reconnected to NATS" in x]
    assert down and up, log[-2000:]
    figure("nats failover gap from a's log (s)", round(up[0] - down[0], 3))
    figure(
        "nats failover gap seen through a's API (s)",
        round(poller.longest_disconnect("a.example"), 3),
    )
    new = re.search(r"reconnected to NATS (\S+)", log)
    assert new is not None and new.group(1) != cluster.servers[victim].url
    a.request("POST", "/v1/labels", content="after:failover\n")
    wait_for(lambda: b.get("/v1/resolve", params={"label": "after:failover"}).json(), 15)


def test_frozen_broker_pauses_expiry_and_heals(own_broker, spawn):
    """SIGSTOP the broker: TCP stays open but nothing flows. Each node must notice (its own
    "hi" stops coming back: expiry_paused), expire nobody, and recover after SIGCONT."""
    a = spawn("a.example", own_broker.env(**FAST))
    b = spawn("b.example", own_broker.env(**FAST))
    for node in (a, b):
        wait_for(lambda n=node: fresh(n, 0), what=f"{node.name} lists both")
    server = own_broker.server
    hold = 2 * KEEP_ALIVE + TTL + 1  # past the echo deadline, and longer than TTL
    with ApiPoller([a, b]) as poller:
        server.signal(signal.SIGSTOP)
        try:
            stopped = time.monotonic()
            for node in (a, b):
                wait_for(
                    lambda n=node: n.get("/v1/stats").json()["broker"]["expiry_paused"],
                    4 * KEEP_ALIVE + 5,
                    what=f"{node.name} pauses expiry",
                )
            noticed = time.monotonic() - stopped
            time.sleep(max(0.0, stopped + hold - time.monotonic()))
        finally:
            server.signal(signal.SIGCONT)
        resumed_wall = time.time()
        resumed = time.monotonic()
        for node in (a, b):
            wait_for(lambda n=node: fresh(n, resumed_wall), 10 * KEEP_ALIVE + 10)
        healed = time.monotonic() - resumed
        time.sleep(1)

    assert_nobody_vanished(poller, PAIR)
    figure(f"{own_broker.kind} frozen broker noticed after (s)", round(noticed, 2))
    figure(f"{own_broker.kind} healed after SIGCONT (s)", round(healed, 2))
    assert a.running and b.running


def test_sigterm_while_broker_down_exits_0(own_broker, spawn):
    """SPEC §3: exit 0 within 2 s on SIGTERM, even with the broker gone."""
    a = spawn("a.example", own_broker.env(**FAST))
    wait_for(lambda: a.hostnames() == ["a.example"], what="a listed")
    own_broker.server.kill()
    wait_for(lambda: link_down(a), 10, what="a notices the broker died")
    time.sleep(1.5)  # let it get into its reconnect back-off
    started = time.monotonic()
    a.signal(signal.SIGTERM)
    status = a.wait(10)
    took = time.monotonic() - started
    figure(f"{own_broker.kind} SIGTERM-to-exit with broker down (s)", round(took, 3))
    assert status == 0, a.output()[-2000:]
    assert "stopped in" in a.output()
