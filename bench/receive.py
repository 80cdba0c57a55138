"""In-process ingest: keep-alives per CPU second through `Presence`'s receive path.

    .venv/bin/python bench/receive.py [ROUNDS]

No broker and no HTTP: a Presence on the in-memory driver, 10,000 known nodes (the
simulator's labels), then their Go-style keep-alives handed to
`Receiver.on_messages` in batches of 64, as the NATS read path hands them over; best
of ROUNDS (default 7). What it isolates is decode -> gate -> relay -> registry, so a
change there shows without the broker's and the event loop's noise (issue 25 used it
to price the typed `Packet`). Run it against another tree with
PYTHONPATH=<tree>/src.
"""

from __future__ import annotations

import asyncio
import gc
import sys
import tempfile
import time

from simulate import hostname, node_labels

from lobby import config
from lobby.core.clock import Clock
from lobby.core.model import Discovery, encode_envelope
from lobby.drivers.memory import MemoryBroker
from lobby.node.presence import Presence
from lobby.view.registry import Registry

N = 10_000
BATCH = 64


async def measure(rounds: int) -> float:
    labels_path = tempfile.mkdtemp(prefix="lobby-bench-")
    settings = config.load(
        {"HOSTNAME": "me", "DISABLE_API": "1", "LABELS_PATH": labels_path, "TTL": "86400"}
    )
    clock = Clock(monotonic=time.monotonic, wall=time.time)
    registry = Registry(settings.ttl, clock=clock.monotonic, wall_clock=clock.wall)
    presence = Presence(settings, registry, clock=clock)
    await presence.start([("memory", MemoryBroker().driver())])
    for _ in range(5):
        await asyncio.sleep(0)
    link = presence.links[0]
    receive = presence.receiver.on_messages
    frames = [
        encode_envelope("hi", Discovery(hostname(i), tuple(sorted(set(node_labels(i))))))
        for i in range(N)
    ]
    batches = [frames[i : i + BATCH] for i in range(0, N, BATCH)]
    for batch in batches:  # every node joins: what follows are keep-alives
        receive(link, "discovery", batch)
    assert len(registry) >= N
    best = 0.0
    for _ in range(rounds):
        gc.collect()
        started = time.process_time()
        for _ in range(10):
            for batch in batches:
                receive(link, "discovery", batch)
        best = max(best, 10 * N / (time.process_time() - started))
    await presence.close()
    return best


def main() -> None:
    rounds = int(sys.argv[1]) if len(sys.argv) > 1 else 7
    rate = asyncio.run(measure(rounds))
    print(f"{rate:,.0f} keep-alives/s (N={N:,}, batches of {BATCH}, best of {rounds})")


if __name__ == "__main__":
    main()
