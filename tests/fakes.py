"""Stand-ins for time, shared by the unit tests: nothing here sleeps."""

from __future__ import annotations


class FakeClock:
    """Time that moves only when a test moves it.

    Called, it is a monotonic clock (`now`); `wall` is the wall clock beside it, a
    number of seconds since the epoch. `tick` moves both together, as real time would;
    setting `now` alone moves the monotonic clock only (a wall-clock jump is `wall`'s).
    """

    def __init__(self, now: float = 1000.0, wall: float = 1_764_000_000.0) -> None:
        self.now = now
        self.wall = wall

    def __call__(self) -> float:
        return self.now

    @property
    def mono(self) -> float:
        return self.now

    @mono.setter
    def mono(self, value: float) -> None:
        self.now = value

    def tick(self, seconds: float) -> None:
        self.now += seconds
        self.wall += seconds
