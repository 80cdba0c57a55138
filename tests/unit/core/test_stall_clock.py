"""StallClock: a freeze of the loop counts towards no TTL (issue 24). Fake time only."""

from __future__ import annotations

from fakes import FakeClock
from pytest import approx

from lobby.core.clock import StallClock
from lobby.view.registry import Registry


def test_reads_on_time_count_every_second():
    src = FakeClock(100.0)
    clock = StallClock(src, beat=0.25, limit=1.0)
    start = clock()
    for _ in range(40):
        src.now += 0.25
        clock.beat_once()
    assert clock() - start == approx(10.0) and clock.stalls == 0


def test_a_gap_in_the_beats_is_not_counted_but_a_beat_of_it_is():
    src = FakeClock(100.0)
    clock = StallClock(src, beat=0.25, limit=1.0)
    start = clock()
    src.now += 1.2  # late, but within the limit: a busy loop, counted
    assert clock() - start == approx(1.2) and clock.stalls == 0
    src.now += 20.0  # SIGSTOP, a VM pause
    assert clock() - start == approx(1.45)
    assert clock.stalls == 1 and clock.stalled == approx(19.75)


def test_a_frozen_process_expires_nobody_on_waking():
    src = FakeClock(100.0)
    clock = StallClock(src)
    registry = Registry(4, clock=clock, wall_clock=lambda: 1_700_000_000.0)
    registry.refresh_many([("a", ()), ("b", ())])
    for _ in range(14):  # 3.5 s of a running loop
        src.now += 0.25
        clock.beat_once()
    src.now += 20.0  # frozen: the first read after it, whoever makes it, sees the gap
    assert sorted(d.hostname for d in registry.discoveries()) == ["a", "b"]
    registry.refresh_many([("a", ())])  # the queued packets drain; b sent none
    src.now += 0.6
    assert [d.hostname for d in registry.discoveries()] == ["a"]
