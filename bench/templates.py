#!/usr/bin/env python3
"""What one template render costs lobbyd, at cluster sizes (SPEC §18).

    .venv/bin/python bench/templates.py [--sizes 1000,10000,50000] [--repeat 5]

In-process, no broker: a Registry filled with the simulator's nodes (simulate.py's
labels: 5-10 a node, about a quarter with service:web), then for each example
template in examples/ the steps of one render pass, each the median of --repeat runs:

- snapshot: `registry.discoveries_sliced()`, the only step on lobbyd's event loop, in
  slices of 2,048 nodes with a turn of the loop between them (the total here),
- view: the snapshot as the template's data (nodes as dicts), in the worker thread,
- render: Jinja2 in the sandbox, in the worker thread,
- write: compare with the file on disk, then the atomic replace with fsync,
- unchanged: compare with the file on disk, which holds the same text (no write).

Prints a markdown table (kept in bench/README.md, "Templates").
"""

from __future__ import annotations

import argparse
import asyncio
import inspect
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from simulate import hostname, node_labels

from lobby.core.model import Discovery
from lobby.hooks.templates import TemplateData, compile_template, registry_view, render
from lobby.system.files import write_atomic
from lobby.view.registry import Registry

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"


def median_ms(step: Callable[[], object], repeat: int) -> float:
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        step()
        times.append(time.perf_counter() - start)
    return statistics.median(times) * 1000


def write_if_changed(path: Path, data: bytes) -> None:
    """What the runner does with a rendered text."""
    try:
        same = path.read_bytes() == data
    except FileNotFoundError:
        same = False
    if not same:
        write_atomic(path, data, keep_owner=True)


def main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--sizes", default="1000,10000,50000")
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args(argv)
    sizes = [int(n) for n in args.sizes.split(",")]
    print("| nodes | template | output | snapshot (loop) | view | render | write | unchanged |")
    print("| ---: | --- | ---: | ---: | ---: | ---: | ---: | ---: |")
    for n in sizes:
        registry = Registry(86400)
        for i in range(n):
            registry.update(Discovery(hostname(i), tuple(node_labels(i))))
        taker = registry_view(registry, lambda: Discovery("me.example", ()), 9100)

        def snapshot() -> Callable[[], TemplateData]:
            made = taker()  # noqa: B023 (lobbyd's: a coroutine, 2,048 nodes a turn)
            return asyncio.run(made) if inspect.isawaitable(made) else made  # type: ignore[arg-type]

        build = snapshot()
        view = build()
        for name in ("nginx-upstream.conf.j2", "hosts.j2"):
            template = compile_template(EXAMPLES / name)
            data = render(template, view).encode()
            with tempfile.TemporaryDirectory() as tmp:
                out = Path(tmp) / "out"

                def changed() -> None:
                    out.unlink(missing_ok=True)  # noqa: B023
                    write_if_changed(out, data)  # noqa: B023

                figures = [
                    median_ms(snapshot, args.repeat),
                    median_ms(build, args.repeat),
                    median_ms(lambda: render(template, view), args.repeat),  # noqa: B023
                    median_ms(changed, args.repeat),
                    median_ms(lambda: write_if_changed(out, data), args.repeat),  # noqa: B023
                ]
            cells = " | ".join(f"{ms:.1f} ms" for ms in figures)
            print(f"| {n:,} | {name} | {len(data) / 1024:,.0f} KiB | {cells} |", flush=True)


if __name__ == "__main__":
    main(sys.argv[1:])
