"""lobby.backoff: reconnect waits and back-off of failure lines, on a fake clock (SPEC §14.2)."""

from __future__ import annotations

import itertools
import logging

import pytest
from fakes import FakeClock

from lobby.drivers.backoff import Backoff, BackoffLog, reconnect_backoff


def test_waits_double_from_a_tenth_of_a_second_to_ten_seconds() -> None:
    backoff = Backoff(rand=lambda: 0.5)  # the middle of the jitter: no change
    assert [round(backoff.next(), 3) for _ in range(10)] == [
        0.1,
        0.2,
        0.4,
        0.8,
        1.6,
        3.2,
        6.4,
        10.0,
        10.0,
        10.0,
    ]
    backoff.reset()
    assert backoff.next() == pytest.approx(0.1)


def test_jitter_stays_within_a_fifth_either_way() -> None:
    low, high = Backoff(rand=lambda: 0.0), Backoff(rand=lambda: 0.999999)
    for _ in range(12):
        assert low.next() >= 0.08 - 1e-9
    assert high.next() == pytest.approx(0.12, abs=1e-6)
    for _ in range(11):
        last = high.next()
    assert last == pytest.approx(12.0, abs=1e-4)


def test_spread_of_the_real_jitter() -> None:
    waits = [Backoff().next() for _ in range(1000)]
    assert 0.08 <= min(waits) < 0.085 and 0.115 < max(waits) <= 0.12
    assert len({round(w, 6) for w in waits}) > 900  # nodes do not retry in step


def lines(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records]


def test_first_five_failures_then_one_line_per_doubling_interval(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO)
    clock = FakeClock()
    failures = BackoffLog(logging.getLogger("t"), clock=clock)
    logged = []
    # a broker down for a day, retried every 10 s (the reconnect cap)
    for _ in range(8640):
        if failures(logging.WARNING, "cannot connect to %s", "X"):
            logged.append(clock.now - 1000.0)
        clock.now += 10.0
    assert logged[:5] == [0, 10, 20, 30, 40]
    # then after 10 s, 20 s, 40 s, ..., at most 5 minutes apart
    gaps = [b - a for a, b in itertools.pairwise(logged[4:])]
    assert gaps[:6] == [10, 20, 40, 80, 160, 300]
    assert set(gaps[6:]) == {300}
    assert 280 < len(logged) < 300  # not 8,640
    text = lines(caplog)
    assert text[4] == "cannot connect to X"
    assert text[5] == "cannot connect to X (1 failure in the last 10 s)"
    assert text[8] == "cannot connect to X (8 failures in the last 80 s)"
    assert text[-1] == "cannot connect to X (30 failures in the last 5 min)"


def test_success_starts_over_and_tells_how_long_it_lasted(
    caplog: pytest.LogCaptureFixture,
) -> None:
    clock = FakeClock()
    failures = BackoffLog(logging.getLogger("t"), clock=clock)
    for _ in range(7):
        failures(logging.WARNING, "down")
        clock.now += 1.0
    assert failures.success() == (7, 7.0)
    assert failures.success() == (0, 0.0)
    caplog.clear()
    for _ in range(5):
        assert failures(logging.WARNING, "down again")
    assert not failures(logging.WARNING, "down again")
    assert lines(caplog) == ["down again"] * 5


def test_the_reconnect_cap_leaves_peers_time_before_they_expire_us() -> None:
    """After an outage, peers that reconnected first resume expiry: our next attempt must
    come well within TTL. The default TTL (30 s) gives exactly the 10 s cap."""
    assert reconnect_backoff(30).cap == 10.0
    assert reconnect_backoff(300).cap == 10.0
    assert reconnect_backoff(4).cap == pytest.approx(4 / 3)
    backoff = reconnect_backoff(4)
    assert max(backoff.next() for _ in range(20)) <= 4 / 3 * 1.2 + 1e-9
