import asyncio

import orjson
import pytest

from lobby.api.events import render
from lobby.core.model import Discovery
from lobby.view.feed import ChangeFeed, parse_index, parse_wait
from lobby.view.registry import Change, Registry
from lobby.view.registry import make_view as make_filter


@pytest.mark.parametrize(
    ("text", "seconds"),
    [("30s", 30), ("5m", 300), ("250ms", 0.25), ("1h", 600), ("45", 45), ("1.5s", 1.5), ("0", 0)],
)
def test_parse_wait(text, seconds):
    assert parse_wait(text) == seconds


@pytest.mark.parametrize("text", ["", "soon", "-1s", "5 m", "1d", "s"])
def test_parse_wait_rejects(text):
    with pytest.raises(ValueError, match="wait"):
        parse_wait(text)


def test_parse_index():
    assert parse_index("42") == 42
    for bad in ["-1", "x", "", "1.0"]:
        with pytest.raises(ValueError):
            parse_index(bad)


def event(data: bytes | None) -> tuple[str, dict] | None:
    if data is None:
        return None
    lines = data.decode().splitlines()
    return lines[1].removeprefix("event: "), orjson.loads(lines[2].removeprefix("data: "))


def test_render_unfiltered():
    view = make_filter([], [])
    assert event(render(Change(5, "join", "a", ()), view)) == (
        "join",
        {"hostname": "a", "labels": [], "index": 5},
    )
    assert event(render(Change(6, "update", "a", ("x",), "", ()), view))[0] == "update"
    assert event(render(Change(7, "leave", "a", ("x",), "expired"), view)) == (
        "leave",
        {"hostname": "a", "labels": ["x"], "index": 7, "reason": "expired"},
    )


def test_render_filtered_view_enter_change_exit():
    view = make_filter(["role:db", "role:web"], [])
    assert render(Change(2, "join", "a", ("other",)), view) is None
    assert event(render(Change(3, "update", "a", ("other", "role:db"), "", ("other",)), view)) == (
        "join",
        {"hostname": "a", "labels": ["role:db"], "index": 3},
    )
    assert (
        render(Change(4, "update", "a", ("more", "role:db"), "", ("other", "role:db")), view)
        is None
    )
    kind, data = event(
        render(Change(5, "update", "a", ("role:db", "role:web"), "", ("role:db",)), view)
    )
    assert (kind, data["labels"]) == ("update", ["role:db", "role:web"])
    kind, data = event(render(Change(6, "update", "a", ("x",), "", ("role:db",)), view))
    assert (kind, data["reason"], data["labels"]) == ("leave", "unmatched", ["role:db"])
    assert render(Change(7, "leave", "a", ("x",), "goodbye"), view) is None


def test_prefix_filter():
    view = make_filter([], ["service:"])
    assert view(("location:x", "service:web")) == ("service:web",)
    assert view(("location:x",)) is None


async def test_feed_history_and_waiting():
    clock = [0.0]
    registry = Registry(30, clock=lambda: clock[0])
    feed = ChangeFeed(registry)
    start = registry.index
    registry.update(Discovery("a", ()))
    registry.update(Discovery("b", ()))
    assert [c.hostname for c in feed.since(start)] == ["a", "b"]
    assert feed.since(registry.index) == []
    assert feed.since(registry.index + 5) is None
    # a waiter wakes on a change and not before
    index = registry.index
    waiter = asyncio.create_task(feed.wait_past(index, 10))
    await asyncio.sleep(0.01)
    assert not waiter.done() and feed.waiting == 1
    registry.remove("a")
    await asyncio.wait_for(waiter, 1)
    assert feed.waiting == 0
    # and gives up after its timeout
    await asyncio.wait_for(feed.wait_past(registry.index, 0.01), 1)


async def steps(n: int) -> None:
    """Let the loop run `n` steps (no clock involved)."""
    for _ in range(n):
        await asyncio.sleep(0)


@pytest.mark.parametrize("after", range(6))
async def test_a_blocking_wait_cancelled_as_the_index_moves_stays_cancelled(after):
    """A blocking query's request cancelled (the client went away, the daemon stops)
    just as a change wakes it: the wait ends cancelled, whatever step the cancellation
    meets the wake-up at (Python 3.11's wait_for returned normally at one of them)."""
    registry = Registry(30, clock=lambda: 0.0)
    feed = ChangeFeed(registry)
    waiter = asyncio.create_task(feed.wait_past(registry.index, 10))
    await steps(5)  # waiting for the change
    assert not waiter.done() and feed.waiting == 1
    registry.update(Discovery("a", ()))
    await steps(after)
    if waiter.cancel():  # still running: the cancellation must win
        with pytest.raises(asyncio.CancelledError):
            await waiter
        assert waiter.cancelled()
    else:  # it had already returned: nothing raced
        assert waiter.done() and not waiter.cancelled()
    assert feed.waiting == 0
