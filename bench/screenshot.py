#!/usr/bin/env python3
"""Draw docs/dashboard.png: the dashboard of a small, real cluster in headless Chromium.

    .venv/bin/python bench/screenshot.py                 # docs/dashboard.png (light)
    .venv/bin/python bench/screenshot.py --dark -o x.png # the dark theme

A nats-server and two real lobbyd (monitor1, the one the page talks to, and web1) on
free loopback ports; ten more nodes are announced as Go peers would announce them
(raw NATS publishes, spread over a few seconds so that "heard" differs; every other
one keeps announcing each second, for a packet rate). One node joins just before the
picture, so its row is still highlighted; db1 is selected.
Everything is stopped by PID at the end.
"""

from __future__ import annotations

import argparse
import socket
import sys
import tempfile
import threading
import time
from pathlib import Path

import orjson
from browser import chromium, color_scheme
from procs import ROOT, Lobbyd, make_broker, scope, wait_for

PEERS: dict[str, list[str]] = {
    "cache1.prague.example": [
        "service:redis",
        "location:prague",
        "role:replica",
        "prometheus:redis:port:9121",
    ],
    "db1.prague.example": [
        "service:postgres",
        "location:prague",
        "role:primary",
        "backup:/var/lib/postgresql",
        "prometheus:node",
        "prometheus:postgres:port:9187",
        "public_ip4:192.0.2.21",
    ],
    "db2.brno.example": [
        "service:postgres",
        "location:brno",
        "role:replica",
        "backup:/var/lib/postgresql",
        "prometheus:node",
        "prometheus:postgres:port:9187",
    ],
    "lb1.prague.example": [
        "service:haproxy",
        "location:prague",
        "public_ip4:192.0.2.10",
        "public_ip6:2001:db8::10",
        "prometheus:node",
    ],
    "mail1.brno.example": [
        "service:smtp",
        "service:imap",
        "location:brno",
        "backup:/srv/mail",
        "prometheus:node",
    ],
    "queue1.vienna.example": [
        "service:rabbitmq",
        "location:vienna",
        "role:worker",
        "prometheus:node",
    ],
    "web2.brno.example": [
        "service:web",
        "location:brno",
        "role:frontend",
        "prometheus:node",
        "prometheus:nginx:port:9113",
        "public_ip4:192.0.2.12",
    ],
    "web3.vienna.example": [
        "service:web",
        "location:vienna",
        "role:frontend",
        "prometheus:node",
        "prometheus:nginx:port:9113",
    ],
    "worker1.prague.example": ["service:jobs", "location:prague", "role:worker", "prometheus:node"],
    "worker2.brno.example": ["service:jobs", "location:brno", "role:worker", "prometheus:node"],
}
LATE = ("dns1.prague.example", ["service:dns", "location:prague", "ns:primary", "prometheus:node"])


def publish(port: int, subject: str, peers: list[tuple[str, list[str]]]) -> None:
    """Announce `peers` on NATS as Go lobby does (raw text protocol, no client library)."""
    with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
        sock.recv(4096)
        frames = [b'CONNECT {"verbose":false}\r\n']
        for host, labels in peers:
            data = orjson.dumps(
                {
                    "discovery": {"hostname": host, "labels": sorted(labels), "last_check": 0},
                    "message": "hi",
                }
            )
            frames.append(b"PUB %s %d\r\n%s\r\n" % (subject.encode(), len(data), data))
        frames.append(b"PING\r\n")
        sock.sendall(b"".join(frames))
        buf = b""
        while b"PONG" not in buf:
            buf += sock.recv(4096)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-o", "--output", default=str(ROOT / "docs" / "dashboard.png"))
    parser.add_argument("--dark", action="store_true", help="prefers-color-scheme: dark")
    parser.add_argument("--width", type=int, default=1440)
    parser.add_argument("--height", type=int, default=820)
    parser.add_argument("--fragment", default="#node=db1.prague.example", help="of the page's URL")
    args = parser.parse_args()
    workdir = Path(tempfile.mkdtemp(prefix="lobby-screenshot-"))
    with scope() as sc:
        broker = sc.add(make_broker("nats", workdir))
        env = {"TTL": 3600, "KEEP_ALIVE": 5}
        monitor = sc.add(
            Lobbyd(
                workdir,
                broker,
                "monitor1.prague.example",
                LABELS="service:prometheus,service:grafana,location:prague,prometheus:node",
                **env,
            )
        )
        web = sc.add(
            Lobbyd(
                workdir,
                broker,
                "web1.prague.example",
                LABELS="service:web,location:prague,role:frontend,prometheus:node,prometheus:nginx:port:9113,public_ip4:192.0.2.11",
                **env,
            )
        )
        monitor.start()
        web.start()
        peers = list(PEERS.items())
        for i in range(0, len(peers), 3):  # a few seconds apart: "heard" differs
            publish(broker.port, broker.channel, peers[i : i + 3])
            time.sleep(1.1)
        wait_for(lambda: monitor.nodes() == len(PEERS) + 2, 10, "the cluster")
        stop = threading.Event()

        def keep_alive() -> None:  # some traffic for the packet rate: every other peer, each second
            while not stop.wait(1.0):
                publish(broker.port, broker.channel, peers[::2])

        talker = threading.Thread(target=keep_alive, daemon=True)
        talker.start()
        try:
            shoot(args, monitor.port, broker.port, broker.channel)
        finally:
            stop.set()
            talker.join(5)
    print(args.output)
    return 0


def shoot(args: argparse.Namespace, port: int, broker_port: int, channel: str) -> None:
    """Open the page, wait for a packet rate, let one more node join, take the picture."""
    with chromium(args.width, args.height, scale=1.0) as driver:
        if args.dark:
            color_scheme(driver, "dark")
        driver.get(f"http://127.0.0.1:{port}/ui/{args.fragment}")
        wait_for(
            lambda: driver.execute_script(
                "return window.lobbyUI && window.lobbyUI.state().live === 'live'"
            ),
            15,
            "the dashboard to go live",
        )
        wait_for(
            lambda: driver.execute_script(
                "return /\\d/.test(document.getElementById('rate').textContent)"
            ),
            15,
            "a packet rate (two /v1/stats polls)",
        )
        publish(broker_port, channel, [LATE])
        wait_for(
            lambda: driver.execute_script(
                f"return !!document.querySelector('.row[data-host=\"{LATE[0]}\"]')"
            ),
            5,
            "the late node's row",
        )
        time.sleep(0.25)  # the highlight, still visible
        out = Path(args.output)
        out.parent.mkdir(parents=True, exist_ok=True)
        driver.save_screenshot(str(out))


if __name__ == "__main__":
    sys.exit(main())
