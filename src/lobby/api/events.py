"""The change feed's HTTP faces: blocking queries and the event stream.

Blocking queries work as in Consul: every read answer carries `X-Lobby-Index`; a
request with `?index=N` is held until the index is no longer N or `wait` (default
5 min, at most 10 min, plus up to 1/16 of jitter so that clients spread out) runs out,
then answered as usual. It is a middleware, so every GET route gets it.

`GET /v1/events` is a Server-Sent Events stream: a snapshot of the (filtered) view as
`join` events, then `join`/`update`/`leave` as they happen, a comment every 15 s so
proxies keep the connection open, and resumption from `Last-Event-ID` (or `?index=`)
while the change is still in the history; otherwise a `reset` event and a fresh
snapshot. With a filter the stream describes the filtered view: a node whose labels
stop matching leaves it (reason `unmatched`), one that starts matching joins it.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import AsyncIterator
from typing import Annotated, Any, Final
from urllib.parse import parse_qs

import orjson
from fastapi import FastAPI, Header, Query
from fastapi.responses import StreamingResponse
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from lobby.api._responses import send_plain
from lobby.feed import (
    CLOSED,
    DEFAULT_WAIT,
    OVERFLOW,
    ChangeFeed,
    Watcher,
    parse_index,
    parse_wait,
)
from lobby.registry import Change, Registry, View, make_view

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
        query = parse_qs(scope["query_string"].decode("latin-1"))
        if "index" in query:
            try:
                index = parse_index(query["index"][0])
                wait = parse_wait(query["wait"][0]) if "wait" in query else DEFAULT_WAIT
            except ValueError as exc:
                await send_plain(send, 400, str(exc))
                return
            if index == registry.index:
                held = await self._hold(index, wait + random.uniform(0, wait / 16), receive)
                if held is None:
                    return  # the client went away while we held it
                receive = held

        async def send_with_index(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = list(message.get("headers", []))
                headers.append((b"x-lobby-index", str(registry.index).encode()))
                message = {**message, "headers": headers}
            await send(message)

        await self.app(scope, receive, send_with_index)

    async def _hold(self, index: int, wait: float, receive: Receive) -> Receive | None:
        """Wait for a change while watching for the client's disconnect."""
        first = await receive()  # the (empty) GET body
        if first["type"] == "http.disconnect":
            return None
        waiter = asyncio.ensure_future(self.feed.wait_past(index, wait))
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


def document_blocking(app: FastAPI) -> None:
    """Describe `index`, `wait` and `X-Lobby-Index` on every GET in the OpenAPI document."""
    original = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is not None:
            return app.openapi_schema
        schema = original()
        for path, ops in schema.get("paths", {}).items():
            get = ops.get("get")
            if get is None or path in UNBLOCKED or path == "/v1/stats":
                continue
            params = get.setdefault("parameters", [])
            params += [
                {
                    "name": "index",
                    "in": "query",
                    "required": False,
                    "schema": {"type": "integer", "minimum": 0},
                    "description": "blocking query: hold the answer until the change index "
                    "is no longer this value (see X-Lobby-Index)",
                },
                {
                    "name": "wait",
                    "in": "query",
                    "required": False,
                    "schema": {"type": "string", "pattern": r"^\d+(\.\d+)?(ms|s|m|h)?$"},
                    "description": "how long to hold a blocking query (default 5m, max 10m)",
                },
            ]
            for response in get.get("responses", {}).values():
                response.setdefault("headers", {})["X-Lobby-Index"] = {
                    "description": "the registry's change index this answer reflects",
                    "schema": {"type": "integer"},
                }
            get.setdefault("responses", {}).setdefault(
                "400", {"description": "invalid index or wait", "content": {"text/plain": {}}}
            )
        app.openapi_schema = schema
        return schema

    app.openapi = openapi  # type: ignore[method-assign]


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


async def stream(feed: ChangeFeed, view: View, resume_from: int | None) -> AsyncIterator[bytes]:
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
                item = await asyncio.wait_for(watcher.queue.get(), feed.heartbeat)
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


def add_routes(app: FastAPI, feed: ChangeFeed) -> None:
    @app.get(
        "/v1/events",
        summary="Server-Sent Events: join, update, leave",
        response_class=StreamingResponse,
        responses={
            200: {
                "description": "an event stream: `join`/`update`/`leave` events whose data is "
                "`{hostname, labels, index[, reason]}`; `reset` before a fresh snapshot",
                "content": {"text/event-stream": {"schema": {"type": "string"}}},
            }
        },
    )
    async def events(
        labels: Annotated[str | None, Query(description="comma-separated labels")] = None,
        prefixes: Annotated[str | None, Query(description="comma-separated prefixes")] = None,
        index: Annotated[int | None, Query(ge=0, description="resume after this index")] = None,
        last_event_id: Annotated[str | None, Header()] = None,
    ) -> StreamingResponse:
        view = make_view(split_list(labels), split_list(prefixes))
        resume = index
        if last_event_id and last_event_id.isdigit():
            resume = int(last_event_id)
        return StreamingResponse(
            stream(feed, view, resume),
            media_type="text/event-stream",
            headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
        )
