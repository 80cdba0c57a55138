"""The change feed's event stream: `GET /v1/events` (route in `lobby.api.routes`).

A Server-Sent Events stream: a snapshot of the (filtered) view as `join` events, then
`join`/`update`/`leave` as they happen, a comment every 15 s so proxies keep the
connection open, and resumption from `Last-Event-ID` (or `?index=`) while the change
is still in the history; otherwise a `reset` event and a fresh snapshot. With a filter
the stream describes the filtered view: a node whose labels stop matching leaves it
(reason `unmatched`), one that starts matching joins it. Blocking queries are
`lobby.api.blocking`'s.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import orjson

from lobby.view.feed import CLOSED, OVERFLOW, ChangeFeed, Watcher
from lobby.view.registry import Change, Registry, View

__all__ = ["render", "stream"]


# -- event stream -------------------------------------------------------------------


def _event(
    kind: str, index: int, hostname: str, labels: tuple[str, ...], reason: str = ""
) -> bytes:
    data: dict[str, Any] = {"hostname": hostname, "labels": list(labels), "index": index}
    if kind == "leave":
        data["reason"] = reason
    return b"id: %d\nevent: %s\ndata: %s\n\n" % (index, kind.encode(), orjson.dumps(data))


def render(change: Change, view: View) -> bytes | None:
    """The event a change means for a filtered view, if any."""
    if change.kind == "leave":
        gone = view(change.labels)
        if gone is None:
            return None
        return _event("leave", change.index, change.hostname, gone, change.reason)
    new = view(change.labels)
    old = view(change.old_labels) if change.kind == "update" else None
    if new is None and old is None:
        return None
    if old is None:
        assert new is not None
        return _event("join", change.index, change.hostname, new)
    if new is None:
        return _event("leave", change.index, change.hostname, old, "unmatched")
    if new == old:
        return None
    return _event("update", change.index, change.hostname, new)


def _snapshot(registry: Registry, view: View) -> tuple[int, list[bytes]]:
    index = registry.index
    return index, [_event("join", index, d.hostname, d.labels) for d in registry.view(view)]


async def stream(
    feed: ChangeFeed,
    view: View,
    resume_from: int | None,
    ready: Callable[[], Awaitable[None]] | None = None,
) -> AsyncIterator[bytes]:
    """`ready`: on an agent, until its copy of the cluster is in (lobby.node.mirror)."""
    if ready is not None:
        await ready()
    watcher = Watcher()
    feed.watchers.add(watcher)  # before the snapshot: nothing falls between the two
    try:
        seen = 0
        backlog = feed.since(resume_from) if resume_from is not None else None
        if backlog is None:
            if resume_from is not None:
                yield b"event: reset\ndata: {}\n\n"
            seen, events = _snapshot(feed.registry, view)
            for chunk in events:
                yield chunk
        else:
            for change in backlog:
                seen = change.index
                if (event := render(change, view)) is not None:
                    yield event
            seen = max(seen, resume_from or 0)
        yield b": live\n\n"
        while not feed.closed:
            try:
                async with asyncio.timeout(feed.heartbeat):  # not wait_for: see lobby.feed
                    item = await watcher.queue.get()
            except TimeoutError:
                yield b": keep-alive\n\n"
                continue
            if item is CLOSED:
                return  # the daemon is stopping: end the stream cleanly
            if item is OVERFLOW:
                yield b"event: reset\ndata: {}\n\n"
                seen, events = _snapshot(feed.registry, view)
                for chunk in events:
                    yield chunk
                continue
            assert isinstance(item, Change)
            if item.index <= seen:
                continue
            seen = item.index
            if (event := render(item, view)) is not None:
                yield event
    finally:
        feed.watchers.discard(watcher)
