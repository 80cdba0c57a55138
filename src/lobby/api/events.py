"""The change feed's HTTP faces: blocking queries and the event stream.

Blocking queries (`lobby.api.blocking`, here re-exported) work as in Consul: every
read answer carries `X-Lobby-Index`; a request with `?index=N` is held until the index
is no longer N or `wait` runs out, then answered as usual.

`GET /v1/events` is a Server-Sent Events stream: a snapshot of the (filtered) view as
`join` events, then `join`/`update`/`leave` as they happen, a comment every 15 s so
proxies keep the connection open, and resumption from `Last-Event-ID` (or `?index=`)
while the change is still in the history; otherwise a `reset` event and a fresh
snapshot. With a filter the stream describes the filtered view: a node whose labels
stop matching leaves it (reason `unmatched`), one that starts matching joins it.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Annotated, Any

import orjson
from fastapi import FastAPI, Header, Query
from fastapi.responses import StreamingResponse

from lobby.api.blocking import UNBLOCKED, Blocking, is_watcher, split_list
from lobby.feed import CLOSED, OVERFLOW, ChangeFeed, Watcher
from lobby.registry import Change, Registry, View, make_view

__all__ = [
    "UNBLOCKED",
    "Blocking",
    "add_routes",
    "document_blocking",
    "is_watcher",
    "render",
    "split_list",
    "stream",
]


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
