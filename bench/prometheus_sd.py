#!/usr/bin/env python3
"""What one rebuild of a Prometheus HTTP SD answer costs lobbyd's event loop.

    .venv/bin/python bench/prometheus_sd.py [--sizes 1000,10000,50000] [--repeat 7]

In-process, no broker: a Registry of the simulator's nodes (every one has
`prometheus:node`), a quarter of them also in service `web`. For each service, the
median of --repeat rebuilds after one node changed its labels (what a request costs
after a change), done two ways in turns:

- scratch: `target_groups` over the whole registry, then `pretty` (the build before
  per-member parts);
- parts: `PrometheusSD`'s build, which re-makes only the changed member's group.

Both give the same bytes (checked here, and by a hypothesis test in tests/unit).
Prints a markdown table (kept in bench/README.md, "Prometheus SD").
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time

from simulate import hostname, node_labels

from lobby.core.model import Discovery, pretty
from lobby.view.cache import Answers
from lobby.view.prometheus import PrometheusSD, target_groups
from lobby.view.registry import Registry


def main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--sizes", default="1000,10000,50000")
    parser.add_argument("--repeat", type=int, default=7)
    args = parser.parse_args(argv)
    print("| nodes | service | members | answer | scratch | parts |")
    print("| ---: | --- | ---: | ---: | ---: | ---: |")
    for n in (int(size) for size in args.sizes.split(",")):
        registry = Registry(86400)
        labels = [node_labels(i) + (["prometheus:web"] if i % 4 == 0 else []) for i in range(n)]
        for i in range(n):
            registry.update(Discovery(hostname(i), tuple(sorted(labels[i]))))
        sd = PrometheusSD(Answers(registry), 9100)
        for name, members in (("node", n), ("web", (n + 3) // 4)):
            sd._assemble(name, [])  # the parts of an earlier request
            times: dict[str, list[float]] = {"scratch": [], "parts": []}
            for turn in range(args.repeat):
                i = turn * 4  # a member of both services changes its labels
                labels[i] = [*labels[i], f"turn:{turn}"]
                registry.update(Discovery(hostname(i), tuple(sorted(labels[i]))))
                start = time.perf_counter()
                scratch = pretty(target_groups(registry.discoveries(), name, 9100))
                times["scratch"].append(time.perf_counter() - start)
                start = time.perf_counter()
                parts = sd._assemble(name, [])
                times["parts"].append(time.perf_counter() - start)
                assert parts == scratch
            cells = " | ".join(
                f"{statistics.median(times[way]) * 1000:.1f} ms" for way in ("scratch", "parts")
            )
            print(f"| {n:,} | {name} | {members:,} | {len(parts) / 1024:,.0f} KiB | {cells} |")


if __name__ == "__main__":
    main(sys.argv[1:])
