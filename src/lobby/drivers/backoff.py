"""Back-off for a broker that stays down: when to try again, and when to say so (SPEC §14.2).

`Backoff` gives the waits between reconnect attempts: 0.1 s doubling to 10 s (or
TTL/3, if shorter: see `reconnect_backoff`), each with ±20 % jitter so that a thousand
nodes that lost the same broker do not all knock at once when it comes back.
`BackoffLog` logs the failures: each of the first five, then one line per doubling
interval (10 s, 20 s, ... up to 5 minutes) with the count since the last line, so a
broker down for a day costs about 300 lines, not 86,400. Both start over after a
success. Both take their clock and randomness as arguments, so tests drive them
without sleeping.
"""

from __future__ import annotations

import logging
import random
import time
from collections.abc import Callable
from typing import Final

RECONNECT_FIRST: Final = 0.1
RECONNECT_CAP: Final = 10.0
JITTER: Final = 0.2
AGENT_JITTER: Final = 0.5  # agents (SPEC §20): many more of them come back at once
LOG_BURST: Final = 5
LOG_FIRST_INTERVAL: Final = 10.0
LOG_CAP: Final = 300.0


def reconnect_backoff(ttl: float, *, jitter: float = JITTER) -> Backoff:
    """A driver's reconnect waits: capped at TTL/3 when that is under 10 s.

    When a broker comes back, peers that reconnect at once resume expiry; a node still
    waiting out its back-off must be back and announcing before they expire it. With
    the default TTL (30 s) the cap is exactly 10 s.
    """
    return Backoff(cap=min(RECONNECT_CAP, ttl / 3), jitter=jitter)


class Backoff:
    """Waits between attempts: `first` doubling up to `cap`, each times 1 ± `jitter`."""

    def __init__(
        self,
        first: float = RECONNECT_FIRST,
        cap: float = RECONNECT_CAP,
        *,
        jitter: float = JITTER,
        rand: Callable[[], float] = random.random,
    ) -> None:
        self.first = first
        self.cap = cap
        self.jitter = jitter
        self._rand = rand
        self.failures = 0

    def next(self) -> float:
        """The wait before the next attempt, after one more failure."""
        base = min(self.first * 2.0**self.failures, self.cap)
        self.failures += 1
        return base * (1.0 - self.jitter + 2.0 * self.jitter * self._rand())

    def reset(self) -> None:
        """After a success: the next failure waits `first` again."""
        self.failures = 0


def _span(seconds: float) -> str:
    if seconds < 90:
        return f"{seconds:.0f} s"
    return f"{seconds / 60:.0f} min"


class BackoffLog:
    """Logs each of the first `burst` failures, then one line per doubling interval.

    A summary line is the failure's own message with `(N failures in the last T)`
    appended. `success()` starts over and tells how long the trouble lasted.
    """

    def __init__(
        self,
        logger: logging.Logger,
        *,
        burst: int = LOG_BURST,
        first_interval: float = LOG_FIRST_INTERVAL,
        cap: float = LOG_CAP,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._log = logger
        self._burst = burst
        self._first_interval = first_interval
        self._cap = cap
        self._clock = clock
        self.failures = 0  # since the last success
        self._unlogged = 0  # failures since the last line
        self._started = 0.0  # the first failure since the last success
        self._last_line = 0.0
        self._interval = first_interval

    def __call__(self, level: int, msg: str, *args: object) -> bool:
        """Count a failure; log it when it is due. True when a line was written."""
        now = self._clock()
        if self.failures == 0:
            self._started = now
        self.failures += 1
        self._unlogged += 1
        if self.failures <= self._burst:
            self._log.log(level, msg, *args)
        elif now - self._last_line >= self._interval:
            self._log.log(
                level,
                msg + " (%d %s in the last %s)",
                *args,
                self._unlogged,
                "failure" if self._unlogged == 1 else "failures",
                _span(now - self._last_line),
            )
            self._interval = min(self._interval * 2, self._cap)
        else:
            return False
        self._unlogged = 0
        self._last_line = now
        return True

    def success(self) -> tuple[int, float]:
        """Start over; returns (failures, seconds since the first of them)."""
        failures, took = self.failures, (self._clock() - self._started if self.failures else 0.0)
        self.failures = 0
        self._unlogged = 0
        self._interval = self._first_interval
        return failures, took
