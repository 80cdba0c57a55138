"""This node's own labels (SPEC §4): LABELS, label files, and the runtime file.

The runtime file is the only one lobbyd writes. Writes are serialized by one lock
and atomic (hidden temporary file in the same directory, fsync, rename, fsync of the
directory) so concurrent requests lose nothing and a crash leaves either the old or
the new file, never a torn one. The directory reader skips hidden files, so it never
sees a temporary file mid-write.
"""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import Callable, Iterable
from pathlib import Path

from lobby.files import remove_stale_temp_files, write_atomic
from lobby.model import LabelError, clean_label, label_problem

log = logging.getLogger("lobby.labels")


def parse_env_labels(text: str) -> list[str]:
    """LABELS: comma-separated, each item trimmed, empty items dropped.

    An invalid item (a control character, over 1024 bytes) is a config mistake:
    raises LabelError naming it.
    """
    return [clean_label(item) for item in text.split(",") if item.strip()]


def parse_label_lines(text: str) -> list[str]:
    """A label file: one label per line, trimmed; blank lines and `#` comments skipped.

    Invalid lines are skipped with a warning: a bad line in one file must not take
    every other label of the node down with it.
    """
    out = []
    for line in text.splitlines():
        label = line.strip()
        if not label or label.startswith("#"):
            continue
        problem = label_problem(label)
        if problem is not None:
            log.warning("skipping label %r: %s", label[:80], problem)
            continue
        out.append(clean_label(label))
    return out


def parse_label_body(text: str) -> list[str]:
    """An API request body: one label per line, blank lines ignored.

    Strict, unlike files: any invalid line fails the whole request (LabelError).
    Runtime labels are stored in a label file, where a line starting with `#` is a
    comment, so such a label would vanish: refuse it rather than lose it.
    """
    labels = [clean_label(line) for line in text.split("\n") if line.strip()]
    for label in labels:
        if label.startswith("#"):
            raise LabelError(
                f"invalid label {label[:80]!r}: a runtime label cannot start with '#' "
                "(label files read such a line as a comment)"
            )
    return labels


def read_label_dir(path: Path) -> list[str]:
    """Labels of every regular, non-hidden file in `path`; [] when it is missing."""
    try:
        entries = sorted(os.scandir(path), key=lambda e: e.name)
    except (FileNotFoundError, NotADirectoryError):
        return []
    except OSError as exc:
        log.warning("cannot list label directory %s: %s", path, exc)
        return []
    out: list[str] = []
    for entry in entries:
        if entry.name.startswith(".") or entry.name.endswith((".tmp", "~")):
            continue
        try:
            if not entry.is_file():
                continue
            with open(entry.path, encoding="utf-8", errors="replace") as fh:
                out.extend(parse_label_lines(fh.read()))
        except OSError as exc:
            log.warning("cannot read label file %s: %s", entry.path, exc)
    return out


class LocalLabels:
    """The union of LABELS and the label directory, re-read on demand."""

    def __init__(self, env_labels: Iterable[str], path: str | Path, runtime_name: str) -> None:
        self.env_labels = tuple(env_labels)
        self.path = Path(path)
        self.runtime = RuntimeLabels(self.path / runtime_name)

    def read(self) -> tuple[str, ...]:
        return tuple(sorted(set(self.env_labels).union(read_label_dir(self.path))))


class RuntimeLabels:
    """The runtime label file, managed through the API."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._lock = asyncio.Lock()

    def remove_stale_temp_files(self) -> None:
        """Remove temporary files that a write killed mid-way left (at startup only)."""
        remove_stale_temp_files(self.path)

    def read(self) -> list[str]:
        try:
            text = self.path.read_text(encoding="utf-8", errors="replace")
        except (FileNotFoundError, NotADirectoryError):  # no file, no runtime labels
            return []
        return parse_label_lines(text)

    async def add(
        self, labels: Iterable[str], check: Callable[[list[str]], None] | None = None
    ) -> None:
        """Add labels; `check(new_runtime_labels)` may refuse them with LabelError."""
        new = list(labels)
        async with self._lock:
            await asyncio.to_thread(self._update, new, [], check)

    async def delete(self, labels: Iterable[str]) -> None:
        gone = list(labels)
        async with self._lock:
            await asyncio.to_thread(self._update, [], gone, None)

    def _update(
        self, add: list[str], delete: list[str], check: Callable[[list[str]], None] | None
    ) -> None:
        current = self.read()
        merged = sorted((set(current) | set(add)) - set(delete))
        if check is not None:
            check(merged)
        if merged == sorted(set(current)):  # nothing to change: no write, no mkdir
            return
        write_atomic(self.path, "".join(label + "\n" for label in merged))


__all__ = [
    "LabelError",
    "LocalLabels",
    "RuntimeLabels",
    "parse_env_labels",
    "parse_label_body",
    "parse_label_lines",
    "read_label_dir",
    "write_atomic",
]


async def watch_label_dir(
    path: Path, changed: Callable[[], object], stopping: asyncio.Event
) -> None:
    """Call `changed()` whenever the label directory may have changed, until `stopping`.

    watchfiles debounces a burst of edits into one call (50 ms); a directory that does
    not exist yet is polled every 0.5 s until it appears. The announcer also re-reads
    every KEEP_ALIVE, so a missed event costs at most one keep-alive.
    """
    from watchfiles import awatch

    is_dir = path.is_dir  # a stat of a local directory: cheap enough for the loop
    while True:
        if not is_dir():
            await asyncio.sleep(0.5)
            if is_dir():
                changed()
            continue
        try:
            async for _ in awatch(path, debounce=50, step=25, recursive=False, stop_event=stopping):
                changed()
        except (OSError, RuntimeError) as exc:
            log.debug("label directory watch ended: %s", exc)
        if stopping.is_set():
            return
        changed()
        await asyncio.sleep(0.5)
