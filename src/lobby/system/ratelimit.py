"""Rate-limited logging: a flood of garbage or failures must not flood the log."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable


class RateLimitedLog:
    """Logs the first `burst` events, then at most one summary line per `every` seconds."""

    def __init__(
        self,
        logger: logging.Logger,
        *,
        burst: int = 5,
        every: float = 30.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._log = logger
        self._burst = burst
        self._every = every
        self._clock = clock
        self._count = 0  # events in the current window
        self._suppressed = 0
        self._level = logging.WARNING
        self._window_start = clock()

    def __call__(self, level: int, msg: str, *args: object) -> None:
        self._level = level
        self.flush()
        self._count += 1
        if self._count <= self._burst:
            self._log.log(level, msg, *args)
        else:
            self._suppressed += 1

    def flush(self) -> None:
        """End the window if it is over, logging how many messages it suppressed.

        Called with every message and periodically by the daemon, so the count of a
        flood that stopped still reaches the log.
        """
        now = self._clock()
        if now - self._window_start < self._every:
            return
        if self._suppressed:
            self._log.log(
                self._level,
                "%d similar messages suppressed in the last %.0f s",
                self._suppressed,
                now - self._window_start,
            )
        self._window_start = now
        self._count = 0
        self._suppressed = 0

    def reset(self) -> None:
        """Start afresh (e.g. after a reconnect), so the next failure is logged at once."""
        self._count = 0
        self._suppressed = 0
        self._window_start = self._clock()
