"""Blocking queries, as in Consul.

Every read answer of a blocking-capable route (`lobby.api.routes`, `blocking=True`)
carries `X-Lobby-Index`; a GET with `?index=N` is held until the index is no longer N
or `wait` (default 5 min, at most 10 min, plus up to 1/16 of jitter so that clients
spread out) runs out, then answered as usual. `lobby.api.dispatch` applies it, once,
to every such route.
"""

from __future__ import annotations

import random
from collections.abc import Mapping

from lobby.api.http import HttpError
from lobby.view.feed import DEFAULT_WAIT, ChangeFeed, parse_index, parse_wait


def split_list(value: str | None) -> list[str]:
    """`a,b,,c` -> ["a", "b", "c"] (query parameters labels= and prefixes=)."""
    if not value:
        return []
    return [item for item in value.split(",") if item]


def held_for(feed: ChangeFeed, params: Mapping[str, str]) -> tuple[int, float] | None:
    """(index, seconds) to hold a request with `?index=N[&wait=D]` for, or None when its
    index already moved; HttpError 400 for an invalid index or wait."""
    try:
        index = parse_index(params["index"])
        wait = parse_wait(params["wait"]) if "wait" in params else DEFAULT_WAIT
    except ValueError as exc:
        raise HttpError(400, str(exc)) from None
    if index != feed.registry.index:
        return None
    return index, wait + random.uniform(0, wait / 16)


async def hold(feed: ChangeFeed, index: int, wait: float) -> None:
    """Wait until the registry's index is no longer `index`, or `wait` seconds (or the
    feed closed: the daemon is stopping). Cancelled when the client goes away."""
    await feed.wait_past(index, wait)
