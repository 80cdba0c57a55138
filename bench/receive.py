"""In-process ingest: keep-alives per CPU second through `Presence`'s receive path.

    .venv/bin/python bench/receive.py [ROUNDS] [--signed] [--nodes N]

No broker and no HTTP: a Presence on the in-memory driver, 10,000 known nodes (the
simulator's labels), then their Go-style keep-alives handed to
`Receiver.on_messages` in batches of 64, as the NATS read path hands them over; best
of ROUNDS (default 7). What it isolates is decode -> gate -> relay -> registry, so a
change there shows without the broker's and the event loop's noise (issue 25 used it
to price the typed `Packet`). Run it against another tree with
PYTHONPATH=<tree>/src.

`--signed`: the daemon has SIGNING_KEYS and every keep-alive is signed (SPEC §13.1,
by the simulator's own signer); a signed packet cannot be heard twice, so each round's
frames are signed beforehand with their own `ts` (not timed).
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import gc
import os
import tempfile
import time

from simulate import Signer, hostname, node_labels

from lobby import config
from lobby.core.clock import Clock
from lobby.core.model import Discovery, encode_envelope
from lobby.drivers.memory import MemoryBroker
from lobby.node.presence import Presence
from lobby.view.registry import Registry

N = 10_000
BATCH = 64
LOOPS = 10  # times through the N nodes per round


async def measure(rounds: int, n: int = N, signed: bool = False) -> float:
    labels_path = tempfile.mkdtemp(prefix="lobby-bench-")
    env = {"HOSTNAME": "me", "DISABLE_API": "1", "LABELS_PATH": labels_path, "TTL": "86400"}
    key = base64.b64encode(os.urandom(32)).decode()
    if signed:
        env["SIGNING_KEYS"] = key
    settings = config.load(env)
    clock = Clock(monotonic=time.monotonic, wall=time.time)
    registry = Registry(settings.ttl, clock=clock.monotonic, wall_clock=clock.wall)
    presence = Presence(settings, registry, clock=clock)
    await presence.start([("memory", MemoryBroker().driver())])
    for _ in range(5):
        await asyncio.sleep(0)
    link = presence.links[0]
    receive = presence.receiver.on_messages
    labels = [sorted(set(node_labels(i))) for i in range(n)]
    signer = Signer(key) if signed else None

    def frames(loops: int) -> list[list[bytes]]:
        """`loops` times every node's keep-alive, in batches; signed: each loop's ts."""
        if signer is None:
            one = [
                encode_envelope("hi", Discovery(hostname(i), tuple(labels[i]))) for i in range(n)
            ]
            every = one * loops
        else:
            base = signer.timestamps(loops)
            every = [
                signer.envelope(hostname(i), labels[i], "hi", base + loop)
                for loop in range(loops)
                for i in range(n)
            ]
        return [every[i : i + BATCH] for i in range(0, len(every), BATCH)]

    for batch in frames(1):  # every node joins: what follows are keep-alives
        receive(link, "discovery", batch)
    assert len(registry) >= n
    best = 0.0
    for _ in range(rounds):
        batches = frames(LOOPS)
        gc.collect()
        started = time.process_time()
        for batch in batches:
            receive(link, "discovery", batch)
        best = max(best, LOOPS * n / (time.process_time() - started))
        assert not presence.receiver.rejected, presence.receiver.rejected
    await presence.close()
    return best


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("rounds", nargs="?", type=int, default=7)
    parser.add_argument("--signed", action="store_true")
    parser.add_argument("--nodes", type=int, default=N)
    args = parser.parse_args()
    rate = asyncio.run(measure(args.rounds, args.nodes, args.signed))
    kind = "signed keep-alives" if args.signed else "keep-alives"
    print(f"{rate:,.0f} {kind}/s (N={args.nodes:,}, batches of {BATCH}, best of {args.rounds})")


if __name__ == "__main__":
    main()
