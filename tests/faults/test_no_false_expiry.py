"""A live node is never expired for what happened on our side (issue 24, SPEC §3).

Real nats-server and real lobbyd; a thread stands in for a crowd of live peers, each
announcing every KEEP_ALIVE, their keep-alives spread evenly over it (as in a real
cluster, where some peer has always just been heard and some is a keep-alive old). Each
fault is injected at several moments relative to the node's own announcer, as the probe
that found these did:

- the broker frozen (SIGSTOP) for longer than TTL: TCP stays open, nothing flows;
- lobbyd itself frozen (SIGSTOP; a VM pause looks the same) for longer than TTL, while
  its API is being asked, so requests wait in its socket beside the peers' packets.

Either way no peer, and not the node itself, may expire: `lobby_node_events_total`
counts no expiry, and every answer the API gives lists every node.
"""

from __future__ import annotations

import re
import signal
import socket
import threading
import time
from typing import Any

import pytest
from support import ApiPoller, Lobbyd, NatsServer, envelope, nats_capture, wait_for

pytestmark = pytest.mark.fault

PEERS = 40


class Crowd(threading.Thread):
    """PEERS live peers on one raw NATS connection, each saying "hi" every keep_alive."""

    def __init__(self, server: NatsServer, subject: str, keep_alive: float) -> None:
        super().__init__(name="crowd", daemon=True)
        self.server = server
        self.subject = subject.encode()
        self.keep_alive = keep_alive
        self.names = [f"peer{i:02d}.example" for i in range(PEERS)]
        self.stop = threading.Event()

    def run(self) -> None:
        packets = [envelope(name, ["role:peer"]) for name in self.names]
        step = self.keep_alive / len(packets)
        sock: socket.socket | None = None
        i = 0
        next_at = time.monotonic()
        while not self.stop.is_set():
            try:
                if sock is None:
                    sock = socket.create_connection(("127.0.0.1", self.server.port), timeout=2)
                    sock.recv(4096)  # INFO
                    sock.sendall(b'CONNECT {"verbose":false,"pedantic":false}\r\n')
                data = packets[i % len(packets)]
                sock.sendall(b"PUB %s %d\r\n%s\r\n" % (self.subject, len(data), data))
            except OSError:  # the broker is frozen or gone: this peer lives on regardless
                if sock is not None:
                    sock.close()
                sock = None
            i += 1
            next_at += step
            self.stop.wait(max(0.0, next_at - time.monotonic()))
        if sock is not None:
            sock.close()


def expiries(node: Lobbyd) -> float:
    text = node.get("/metrics").text
    found = re.search(r'^lobby_node_events_total\{event="expire"\} (\S+)$', text, re.M)
    assert found, "lobby_node_events_total{event=expire} missing from /metrics"
    return float(found.group(1))


def own_echo(server: NatsServer, subject: str, name: str) -> None:
    """Return right after `name`'s own "hi" went through the broker."""
    nats_capture(server.url, subject, lambda data: f'"{name}"'.encode() in data, 15)


def listing_everyone(node: Lobbyd, crowd: Crowd) -> bool:
    stats = node.get("/v1/stats").json()["broker"]
    return sorted(node.hostnames()) == sorted([*crowd.names, node.name]) and (
        stats["connected"] and not stats["expiry_paused"]
    )


def crowd_and_node(
    make_nats: Any, spawn: Any, channel: str, keep_alive: int, ttl: int
) -> tuple[NatsServer, Crowd, Lobbyd]:
    """A nats-server of the test's own, the crowd announcing on it, and the node under
    test listing them all."""
    server = make_nats()
    crowd = Crowd(server, channel, keep_alive)
    crowd.start()
    env = {"NATS_URL": server.url, "NATS_DISCOVERY_CHANNEL": channel}
    node = spawn("me.example", {**env, "KEEP_ALIVE": str(keep_alive), "TTL": str(ttl)})
    wait_for(lambda: listing_everyone(node, crowd), 20, what="the node lists the crowd")
    return server, crowd, node


@pytest.mark.parametrize("offset", [0.05, 0.4, 0.8], ids=["at-echo", "mid", "late"])
def test_a_frozen_broker_expires_nobody(make_nats, spawn, channel, offset):
    """The hang must be caught before TTL - KEEP_ALIVE: KEEP_ALIVE 2 and TTL 6 leave 4 s.
    (Caught at 2 x KEEP_ALIVE plus a watchdog tick, a quarter of the peers expired when
    the broker froze right after the node's own echo.)"""
    keep_alive, ttl = 2, 6
    server, crowd, node = crowd_and_node(make_nats, spawn, channel, keep_alive, ttl)
    try:
        with ApiPoller([node], interval=0.1) as poller:
            own_echo(server, channel, node.name)
            time.sleep(offset * keep_alive)
            server.signal(signal.SIGSTOP)
            try:
                time.sleep(ttl + 2)
            finally:
                server.signal(signal.SIGCONT)
            wait_for(lambda: listing_everyone(node, crowd), 20, what="the node heals")
        assert expiries(node) == 0, node.output()[-3000:]
        assert poller.missing([*crowd.names, node.name]) == [], "a live node vanished"
        assert poller.saw(node.name, paused=True), "the hang was never noticed"
    finally:
        crowd.stop.set()
        crowd.join(5)


@pytest.mark.parametrize("offset", [0.1, 0.5, 0.9], ids=["at-echo", "mid", "late"])
def test_a_frozen_lobbyd_expires_nobody_and_answers_whole_when_it_wakes(
    make_nats, spawn, channel, offset
):
    """KEEP_ALIVE 1, TTL 4, frozen 8 s while the API is asked all along: the requests
    that waited are answered after the wake-up, and none may miss a node."""
    keep_alive, ttl = 1, 4
    server, crowd, node = crowd_and_node(make_nats, spawn, channel, keep_alive, ttl)
    try:
        with ApiPoller([node], interval=0.05) as poller:
            own_echo(server, channel, node.name)
            time.sleep(offset * keep_alive)
            node.signal(signal.SIGSTOP)
            try:
                time.sleep(2 * ttl)
            finally:
                node.signal(signal.SIGCONT)
            woke = time.monotonic()
            wait_for(lambda: listing_everyone(node, crowd), 20, what="the node is whole")
            time.sleep(1)
        after = [s for s in poller.samples if s[0] >= woke and s[2] is not None]
        assert after, "no answer after the wake-up"
        assert expiries(node) == 0, node.output()[-3000:]
        assert poller.missing([*crowd.names, node.name]) == [], "a live node vanished"
        stalls = node.stats()["stalls"]
        assert stalls["count"] >= 1 and stalls["seconds"] >= ttl, stalls
        # the freeze is the heartbeat's worst lateness, in /v1/stats and in /metrics
        assert stalls["lag_max_seconds"] >= 2 * ttl - 1 and stalls["beats_late_over_50ms"] >= 1
        lag = re.search(
            r'^lobby_event_loop_lag_seconds_bucket\{le="10.0"\} (\S+)$',
            node.get("/metrics").text,
            re.M,
        )
        late = re.search(
            r'^lobby_event_loop_lag_seconds_bucket\{le="2.5"\} (\S+)$',
            node.get("/metrics").text,
            re.M,
        )
        assert lag and late and float(lag.group(1)) > float(late.group(1)), "the freeze's beat"
    finally:
        crowd.stop.set()
        crowd.join(5)
