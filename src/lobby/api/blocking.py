"""Blocking queries, as in Consul, with no framework in them.

Every read answer carries `X-Lobby-Index`; a GET with `?index=N` is held until the
index is no longer N or `wait` (default 5 min, at most 10 min, plus up to 1/16 of
jitter so that clients spread out) runs out, then answered as usual. `Blocking` is
the middleware that gives every GET route of the framework this; the fast path
(`lobby.api.fast`) calls `hold` itself.
"""

from __future__ import annotations

import asyncio
import random
from typing import TYPE_CHECKING, Any, Final
from urllib.parse import parse_qs

from lobby.api._responses import send_plain
from lobby.feed import DEFAULT_WAIT, ChangeFeed, parse_index, parse_wait

if TYPE_CHECKING:
    from starlette.types import ASGIApp, Message, Receive, Scope, Send
else:
    ASGIApp = Message = Receive = Scope = Send = Any


# GETs that never wait: the stream, and what monitoring and browsers ask
UNBLOCKED: Final = frozenset({"/v1/events", "/metrics", "/v1/health", "/docs"})


def split_list(value: str | None) -> list[str]:
    """`a,b,,c` -> ["a", "b", "c"] (query parameters labels= and prefixes=)."""
    if not value:
        return []
    return [item for item in value.split(",") if item]


def is_watcher(scope: Scope) -> bool:
    """A request that may stay open: the event stream, or a GET with `index` (blocking).

    Counted against API_MAX_WATCHERS (lobby.api.limits.WatcherGate) for as long as it
    is open, whether or not the index has already moved.
    """
    if scope["method"] != "GET":
        return False
    if scope["path"] == "/v1/events":
        return True
    query = scope["query_string"]
    return b"index" in query and "index" in parse_qs(query.decode("latin-1"))


async def hold(feed: ChangeFeed, scope: Scope, receive: Receive, send: Send) -> Receive | None:
    """Apply `?index=N&wait=D`: the `receive` to answer with, once the index moved (or
    the wait ran out), or None when the request is done (a 400 was sent, or the client
    went away while it was held)."""
    query = parse_qs(scope["query_string"].decode("latin-1"))
    if "index" not in query:
        return receive
    try:
        index = parse_index(query["index"][0])
        wait = parse_wait(query["wait"][0]) if "wait" in query else DEFAULT_WAIT
    except ValueError as exc:
        await send_plain(send, 400, str(exc))
        return None
    if index != feed.registry.index:
        return receive
    return await _hold(feed, index, wait + random.uniform(0, wait / 16), receive)


async def _hold(feed: ChangeFeed, index: int, wait: float, receive: Receive) -> Receive | None:
    """Wait for a change while watching for the client's disconnect."""
    first = await receive()  # the (empty) GET body
    if first["type"] == "http.disconnect":
        return None
    waiter = asyncio.ensure_future(feed.wait_past(index, wait))
    gone = asyncio.ensure_future(receive())
    try:
        await asyncio.wait({waiter, gone}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for task in (waiter, gone):
            task.cancel()
    if gone.done() and not gone.cancelled():
        return None
    replayed = False

    async def replay() -> Message:
        nonlocal replayed
        if not replayed:
            replayed = True
            return first
        return await receive()

    return replay


class Blocking:
    """`?index=N&wait=D` on any GET, and `X-Lobby-Index` on every answer."""

    def __init__(self, app: ASGIApp, feed: ChangeFeed) -> None:
        self.app = app
        self.feed = feed

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] != "GET" or scope["path"] in UNBLOCKED:
            await self.app(scope, receive, send)
            return
        registry = self.feed.registry
        held = await hold(self.feed, scope, receive, send)
        if held is None:
            return

        async def send_with_index(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = list(message.get("headers", []))
                headers.append((b"x-lobby-index", str(registry.index).encode()))
                message = {**message, "headers": headers}
            await send(message)

        await self.app(scope, held, send_with_index)
