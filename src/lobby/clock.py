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
