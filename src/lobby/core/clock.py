"""The daemon's two clocks, in one object so tests can move time without patching.

`monotonic` measures liveness (TTL, keep-alive, echo silence); `wall` is only shown
(`last_check`, uptime). A test passes its own `Clock` to `Daemon`/`Presence`/`Registry`
instead of monkeypatching `time.time` for the whole process.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Clock:
    monotonic: Callable[[], float] = time.monotonic
    wall: Callable[[], float] = time.time


SYSTEM_CLOCK = Clock()


class StallClock:
    """A monotonic clock that stands still while the event loop does.

    A frozen process (SIGSTOP, a VM pause, a long stall) wakes up to find every peer's
    last packet older than TTL, although the packets that prove them alive sit unread
    in its socket. So a gap in which nothing read this clock, longer than `limit`
    although `beat()` runs every `beat` seconds, is not counted: time resumes where it
    stopped, the queued packets are drained, and only then can anyone expire.

    It notices the gap on the first read after it, whoever reads: no task has to run
    first. A synchronous stretch longer than `limit` counts as a stall too, which can
    only keep a record a little longer, never expire one sooner.
    """

    __slots__ = ("_last", "_source", "beat", "limit", "stalled", "stalls")

    def __init__(
        self,
        source: Callable[[], float] = time.monotonic,
        *,
        beat: float = 0.25,
        limit: float = 1.0,
    ) -> None:
        self._source = source
        self.beat = beat  # how often the owner promises to read it (`beat()`)
        self.limit = limit  # a gap longer than beat + limit is a stall
        self._last = source()
        self.stalled = 0.0  # seconds not counted, in all
        self.stalls = 0

    def __call__(self) -> float:
        now = self._source()
        gap = now - self._last
        if gap > self.beat + self.limit:
            self.stalled += gap - self.beat  # a beat's worth of it was expected
            self.stalls += 1
        self._last = now
        return now - self.stalled

    def beat_once(self) -> None:
        """Read the clock: the owner calls this every `beat` seconds."""
        self()
