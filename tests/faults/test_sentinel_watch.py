"""The `+switch-master` watch when the Sentinel it listens to falls silent (issue #24).

Real redis-server and redis-sentinel processes and a real lobbyd. The Sentinel the
watch is subscribed to is stopped (SIGSTOP: its socket stays open, nothing answers,
as behind a firewall dropping packets); a manual failover through another Sentinel
must still move the node to the new master, on the Sentinels' word.
"""

from __future__ import annotations

import signal
import time

import pytest
import redis
from support import RedisSentinel, SentinelSet, wait_for

pytestmark = pytest.mark.fault


def watchers(sentinel: RedisSentinel) -> int:
    """Clients subscribed to a channel on `sentinel` (lobbyd's watch; Sentinels talk
    to each other through the master's hello channel, not subscribed here)."""
    client = redis.Redis(port=sentinel.port, socket_timeout=2)
    try:
        return sum(1 for c in client.client_list() if int(c.get("sub", 0)) > 0)
    finally:
        client.close()


def test_a_silent_sentinel_is_left_and_the_failover_followed(tmp_path, procs, spawn, channel):
    sentinels = SentinelSet(tmp_path, procs, replicas=1)
    sentinels.start()
    old = sentinels.master.port
    node = spawn(
        "a.example",
        {
            "DRIVER": "Redis",
            "REDIS_SENTINELS": sentinels.addresses,
            "REDIS_CHANNEL": channel,
            "KEEP_ALIVE": "1",
        },
    )

    def address() -> str:
        return str(node.get("/v1/stats").json()["brokers"]["Redis"]["address"])

    wait_for(lambda: address() == f"redis://127.0.0.1:{old}/0", 15, what="on the master")
    first, other = sentinels.sentinels[0], sentinels.sentinels[1]
    wait_for(lambda: watchers(first) == 1, 15, what="the watch on the first Sentinel")
    first.signal(signal.SIGSTOP)
    try:
        other.failover()
        wait_for(lambda: int(other.master()["port"]) != old, 30, what="the failover")
        new = int(other.master()["port"])
        failed_over = time.monotonic()
        # the watchdog gives the silent Sentinel up after 3 s of unanswered PINGs; the
        # next one is asked where the master is (its +switch-master may be past)
        wait_for(
            lambda: address() == f"redis://127.0.0.1:{new}/0",
            20,
            what=f"the node on the new master {new}",
        )
        print(f"\nFIGURE followed the failover after (s): {time.monotonic() - failed_over:.1f}")
        wait_for(lambda: node.hostnames() == ["a.example"], 15, what="hears itself again")
    finally:
        first.signal(signal.SIGCONT)
    log = node.output()
    assert "Traceback" not in log, log
    assert f"Redis Sentinel 127.0.0.1:{first.port}: no reply to PING" in log, log
    # moved on the Sentinels' word: not only once the Sentinels turned the old master
    # into a replica and closed its clients (CLIENT KILL TYPE pubsub, 8 s or more
    # after the failover), which is how a deaf watch ended up following it
    assert f"lost Redis connection redis://127.0.0.1:{old}/0: Sentinel switched" in log, log
    assert "Connection closed by server" not in log, log
