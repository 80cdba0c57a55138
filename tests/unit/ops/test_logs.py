"""lobby.logs: the peers' comings and goings at INFO, summed up above 20 a second, and the
one formatter every line goes through (SPEC §14.2). Fake clock, no sleeping."""

from __future__ import annotations

import io
import json
import logging
import sys
from collections.abc import Callable, Iterator

import pytest
from fakes import FakeClock

from lobby.ops import logs
from lobby.ops.logs import NodeEventLog
from lobby.view.registry import Change, Registry


@pytest.fixture
def caught(caplog: pytest.LogCaptureFixture) -> Callable[[], list[logging.LogRecord]]:
    caplog.set_level(logging.INFO, "lobby.nodes")
    return lambda: [r for r in caplog.records if r.name == "lobby.nodes"]


def make(clock: FakeClock, scheduled: list[tuple[float, Callable[[], None]]]) -> NodeEventLog:
    return NodeEventLog(
        logging.getLogger("lobby.nodes"),
        30,
        clock=clock,
        schedule=lambda delay, call: scheduled.append((delay, call)),
    )


def test_each_kind_of_change_is_one_line_with_its_fields(caught) -> None:
    clock = FakeClock(50.0)
    registry = Registry(30, clock=clock)
    registry.add_listener(make(clock, []))
    from lobby.core.model import Discovery

    registry.update(Discovery("web1", ("location:prague", "service:web")))
    registry.update(Discovery("web1", ("location:prague", "service:smtp")))
    registry.remove("web1", "goodbye")
    registry.update(Discovery("db2", ("service:db",)))
    clock.now += 31
    registry.expire()
    records = caught()
    assert [r.getMessage() for r in records] == [
        "join web1 [location:prague, service:web]",
        "update web1 [+service:smtp, -service:web]",
        "leave web1 (goodbye)",
        "join db2 [service:db]",
        "expire db2 (silent 30 s)",
    ]
    assert all(r.levelno == logging.INFO for r in records)
    assert [r.event for r in records] == ["join", "update", "leave", "join", "expire"]
    assert records[0].labels == ["location:prague", "service:web"]
    assert records[1].added == ["service:smtp"]
    assert records[1].removed == ["service:web"]


def test_a_long_label_list_is_shortened(caught) -> None:
    log = make(FakeClock(50.0), [])
    log(Change(2, "join", "big", tuple(f"l:{i:02}" for i in range(25))))
    assert caught()[0].getMessage() == (
        "join big [l:00, l:01, l:02, l:03, l:04, l:05, l:06, l:07, l:08, l:09, ... 15 more]"
    )


def changes(n: int, kind: str = "join", start: int = 0) -> Iterator[Change]:
    for i in range(start, start + n):
        reason = "expired" if kind == "expire" else "goodbye" if kind == "leave" else ""
        yield Change(i, "leave" if kind == "expire" else kind, f"n{i}", (), reason)  # type: ignore[arg-type]


def test_above_twenty_a_second_the_rest_is_summed_up(caught) -> None:
    clock = FakeClock(50.0)
    scheduled: list[tuple[float, Callable[[], None]]] = []
    log = make(clock, scheduled)
    for change in changes(10_000):
        log(change)
    clock.now += 0.3
    for change in changes(3, "expire", start=20_000):
        log(change)
    assert len(caught()) == 20  # the rest is counted
    assert len(scheduled) == 1  # one summary, when the second is over
    delay, flush = scheduled[0]
    assert delay == 1.0
    clock.now += 0.7
    flush()
    records = caught()
    assert len(records) == 21
    assert records[-1].getMessage() == (
        "… and 9,980 more joins and 3 more expiries in the last second"
    )
    assert records[-1].more == {"join": 9980, "expire": 3}
    # the next second starts afresh
    for change in changes(5, "leave", start=30_000):
        log(change)
    assert [r.getMessage() for r in caught()[21:]] == [
        f"leave n{i} (goodbye)" for i in range(30_000, 30_005)
    ]
    assert len(scheduled) == 1


def test_a_summary_still_comes_when_no_flush_was_scheduled(caught) -> None:
    """The next event after the second is over sums the previous one up too."""
    clock = FakeClock(50.0)
    log = NodeEventLog(logging.getLogger("lobby.nodes"), 30, clock=clock)  # no running loop
    for change in changes(25):
        log(change)
    clock.now += 1.5
    log(next(changes(1, start=99)))
    messages = [r.getMessage() for r in caught()]
    assert messages[20:] == ["… and 5 more joins in the last second", "join n99 []"]


# -- the formatter -------------------------------------------------------------------------


@pytest.fixture
def root() -> Iterator[None]:
    """Restore the root logger after logs.setup() replaced its handlers."""
    logger = logging.getLogger()
    handlers, level, hook = list(logger.handlers), logger.level, sys.excepthook
    yield
    sys.excepthook = hook
    for handler in list(logger.handlers):
        logger.removeHandler(handler)
    for handler in handlers:
        logger.addHandler(handler)
    logger.setLevel(level)


def test_json_lines_carry_ts_level_logger_msg_and_the_events_fields(root) -> None:
    out = io.StringIO()
    logs.setup("INFO", "json", stream=out)
    NodeEventLog(logging.getLogger("lobby.nodes"), 30)(Change(5, "join", "web1", ("a:1",)))
    logging.getLogger("uvicorn.error").warning("Invalid HTTP request received.")
    try:
        raise ValueError("boom")
    except ValueError:
        logging.getLogger("lobby").exception("it broke")
    logging.getLogger("uvicorn.access").info(
        '%s - "%s %s HTTP/%s" %d', "127.0.0.1:5000", "GET", "/v1/discoveries", "1.1", 200
    )
    lines = [json.loads(line) for line in out.getvalue().splitlines()]
    assert len(lines) == 3  # no access log unless ACCESS_LOG=true
    join, uvicorn, broke = lines
    assert set(join) == {"ts", "level", "logger", "msg", "event", "hostname", "labels"}
    assert join["ts"].endswith("Z") and join["ts"][10] == "T"
    assert (join["level"], join["logger"], join["msg"]) == (
        "INFO",
        "lobby.nodes",
        "join web1 [a:1]",
    )
    assert (join["event"], join["hostname"], join["labels"]) == ("join", "web1", ["a:1"])
    assert uvicorn == {
        "ts": uvicorn["ts"],
        "level": "WARNING",
        "logger": "uvicorn.error",
        "msg": "Invalid HTTP request received.",
    }
    assert broke["msg"] == "it broke" and "ValueError: boom" in broke["exc"]


def test_access_lines_when_asked_for_with_their_fields(root) -> None:
    out = io.StringIO()
    logs.setup("WARNING", "json", access_log=True, stream=out)
    logging.getLogger("uvicorn.access").info(
        '%s - "%s %s HTTP/%s" %d', "127.0.0.1:5000", "GET", "/v1/discoveries", "1.1", 200
    )
    (line,) = [json.loads(line) for line in out.getvalue().splitlines()]
    assert line["msg"] == '127.0.0.1:5000 - "GET /v1/discoveries HTTP/1.1" 200'
    assert (line["client"], line["method"], line["path"], line["status"]) == (
        "127.0.0.1:5000",
        "GET",
        "/v1/discoveries",
        200,
    )


def test_text_lines(root) -> None:
    out = io.StringIO()
    logs.setup("INFO", "text", stream=out)
    logging.getLogger("uvicorn.error").warning("Invalid HTTP request received.")
    logging.getLogger("uvicorn.error").info("Started server process [1]")  # chatter: hidden
    (line,) = out.getvalue().splitlines()
    assert line.endswith(" WARNING uvicorn.error: Invalid HTTP request received.")


def test_an_uncaught_exception_is_one_json_line_too(root) -> None:
    out = io.StringIO()
    logs.setup("INFO", "json", stream=out)
    try:
        raise RuntimeError("boom")
    except RuntimeError as exc:
        sys.excepthook(type(exc), exc, exc.__traceback__)
    (line,) = [json.loads(line) for line in out.getvalue().splitlines()]
    assert (line["level"], line["msg"]) == ("CRITICAL", "lobbyd crashed: RuntimeError('boom')")
    assert "RuntimeError: boom" in line["exc"]
