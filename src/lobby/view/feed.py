"""The change feed: what waits for the registry to change, with no HTTP in it.

`ChangeFeed` listens to the registry, keeps the last few thousand changes (so a
watcher can resume from an index), and holds one asyncio.Event that is set and
replaced on every change: any number of waiters sleep on it and cost nothing until
the index moves. `Watcher` is one reader's bounded queue of changes; when a reader
falls too far behind, its queue is replaced by one OVERFLOW marker and the reader
starts over from a snapshot.

Blocking queries (`lobby.api.blocking`) and the event stream (`lobby.api.events`) are its HTTP
faces; the DNS interface and templates wait on the same feed.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
from collections import deque
from typing import Final

from lobby.view.registry import Change, Registry

DEFAULT_WAIT: Final = 300.0
MAX_WAIT: Final = 600.0
HISTORY: Final = 10_000
QUEUE_MAX: Final = 10_000

_DURATION = re.compile(r"(\d+(?:\.\d+)?)(ms|s|m|h)?")
_UNIT = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, None: 1.0}


def parse_wait(text: str) -> float:
    """A blocking query's `wait`: `30s`, `5m`, `1h`, `250ms` or plain seconds, capped at
    MAX_WAIT. (Settings take Go's syntax too: `lobby.config.parse_duration`.)"""
    match = _DURATION.fullmatch(text.strip())
    if match is None:
        raise ValueError(f"invalid wait {text!r}: expected a duration like 30s, 5m or 250ms")
    return min(float(match.group(1)) * _UNIT[match.group(2)], MAX_WAIT)


def parse_index(text: str) -> int:
    if not text.isdigit():
        raise ValueError(f"invalid index {text!r}: expected a non-negative integer")
    return int(text)


class _Marker:
    """Queued instead of a change: OVERFLOW or CLOSED."""

    def __init__(self, name: str) -> None:
        self.name = name

    def __repr__(self) -> str:
        return self.name


# in place of the changes a watcher lost by falling behind
OVERFLOW: Final = _Marker("OVERFLOW")
# the feed closed (the daemon is stopping): the reader ends, cleanly
CLOSED: Final = _Marker("CLOSED")


class Watcher:
    """One reader's queue of changes; on overflow it starts over from a snapshot."""

    def __init__(self) -> None:
        self.queue: asyncio.Queue[Change | _Marker] = asyncio.Queue(QUEUE_MAX)

    def push(self, item: Change | _Marker) -> None:
        try:
            self.queue.put_nowait(item)
        except asyncio.QueueFull:
            while not self.queue.empty():
                self.queue.get_nowait()
            self.queue.put_nowait(CLOSED if item is CLOSED else OVERFLOW)


class ChangeFeed:
    def __init__(self, registry: Registry, heartbeat: float = 15.0) -> None:
        self.registry = registry
        self.heartbeat = heartbeat
        self.watchers: set[Watcher] = set()
        self.waiting = 0  # blocking waits being held
        self.closed = False
        self._history: deque[Change] = deque(maxlen=HISTORY)
        self._moved = asyncio.Event()
        registry.add_listener(self._on_change)

    def _on_change(self, change: Change) -> None:
        self._history.append(change)
        moved, self._moved = self._moved, asyncio.Event()
        moved.set()
        for watcher in self.watchers:
            watcher.push(change)

    async def wait_past(self, index: int, timeout: float) -> None:
        """Return when the index is no longer `index`, or after `timeout` seconds."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        self.waiting += 1
        try:
            while self.registry.index == index and not self.closed:
                remaining = deadline - loop.time()
                if remaining <= 0:
                    return
                # not wait_for: in Python 3.11 it swallows a cancellation that meets
                # the change (a blocking query's request cancelled as a node joins)
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(remaining):
                        await self._moved.wait()
        finally:
            self.waiting -= 1

    def close(self) -> None:
        """The daemon is stopping: every blocking wait returns now, every reader ends.

        So that the HTTP server can finish each request normally (a complete answer,
        a stream that ends cleanly) instead of cancelling it mid-transfer.
        """
        self.closed = True
        moved, self._moved = self._moved, asyncio.Event()
        moved.set()
        for watcher in self.watchers:
            watcher.push(CLOSED)

    def since(self, index: int) -> list[Change] | None:
        """Changes after `index`, or None when the history no longer reaches back."""
        current = self.registry.index
        if index > current:
            return None
        if index == current:
            return []
        history = self._history
        if not history or history[0].index > index + 1:
            return None
        return [c for c in history if c.index > index]
