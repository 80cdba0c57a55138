"""The API's two sides of agents and listeners (SPEC §20).

- On an **agent**, `Relayed` answers the cluster reads (routes marked `cluster`) by
  asking a listener (`ask`: lobby.node.queries.Asker.ask, wired by the daemon): the
  listener's status, headers and body bytes as they are, plus `X-Lobby-Listener`, or
  503 `no listener answered (tried N)`.
- On a **listener**, `answer_query` answers one query through the same
  `Api.respond` its HTTP clients go through, so the bytes are the same cached ones. The
  token was the agent's to check: a query is a trusted request.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Final, Protocol

from lobby.api.http import Request, Response, plain
from lobby.core.query import NoAnswer, Query, Reply
from lobby.view.feed import ChangeFeed

Ask = Callable[[str, str, bytes, bool], Awaitable[Reply]]  # method, path, query, gzip

LISTENER: Final = b"x-lobby-listener"
_RETRY: Final = (b"retry-after", b"1")


@dataclass(frozen=True, slots=True)
class AgentSide:
    """What an agent's API has that a listener's has not."""

    ask: Ask  # a cluster read, asked of a listener
    probe: Callable[[], Awaitable[bool]]  # does a listener answer? (its /v1/health)
    feed: ChangeFeed  # the event streams' feed: over the agent's copy (lobby.node.mirror)
    ready: Callable[[], Awaitable[None]]  # until that copy is in


class Responds(Protocol):
    async def respond(self, req: Request) -> Response: ...


async def relay(ask: Ask, req: Request, gzip: bool) -> Response:
    """A cluster read asked of a listener, answered as that listener answered it."""
    try:
        reply = await ask("GET", req.path, req.query, gzip)
    except NoAnswer as exc:
        return plain(503, str(exc), [_RETRY])
    headers = [*reply.headers, (LISTENER, reply.listener.encode())]
    return Response(reply.status, headers, reply.body)


async def answer_query(api: Responds, query: Query) -> Reply:
    """A listener's answer to an agent's query: its own API's, whole."""
    headers = [(b"accept-encoding", b"gzip")] if query.gzip else []
    request = Request(query.method, query.path, query.query, headers, trusted=True)
    response = await api.respond(request)
    body = await response.read()
    out = [(k, v) for k, v in response.headers if k != b"content-length"]
    out.insert(0, (b"content-length", b"%d" % len(body)))
    return Reply(response.status, out, body)


__all__ = ["LISTENER", "AgentSide", "Ask", "answer_query", "relay"]
