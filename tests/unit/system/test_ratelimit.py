import logging

from lobby.system.ratelimit import RateLimitedLog


def test_burst_then_summary_on_flush(caplog):
    now = [0.0]
    limited = RateLimitedLog(logging.getLogger("t"), burst=2, every=10, clock=lambda: now[0])
    with caplog.at_level(logging.WARNING):
        for i in range(50):
            limited(logging.WARNING, "bad %d", i)
        assert [r.getMessage() for r in caplog.records] == ["bad 0", "bad 1"]
        limited.flush()  # window not over yet
        assert len(caplog.records) == 2
        now[0] = 10.0
        limited.flush()  # the flood stopped: its count still reaches the log
        assert caplog.records[-1].getMessage() == "48 similar messages suppressed in the last 10 s"
        limited.flush()
        assert len(caplog.records) == 3
        limited(logging.WARNING, "again")
        assert caplog.records[-1].getMessage() == "again"


def test_reset_logs_the_next_event_at_once(caplog):
    limited = RateLimitedLog(logging.getLogger("t"), burst=1, every=60, clock=lambda: 0.0)
    with caplog.at_level(logging.INFO):
        limited(logging.INFO, "one")
        limited(logging.INFO, "two")
        limited.reset()
        limited(logging.INFO, "three")
    assert [r.getMessage() for r in caplog.records] == ["one", "three"]
