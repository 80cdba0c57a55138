"""The bytes of an agent's query and a listener's reply (SPEC §20), with no I/O.

An agent (LISTEN=false) asks a listener for the cluster reads of its own HTTP API on a
side subject (`<NATS_DISCOVERY_CHANNEL>.query`, `<REDIS_CHANNEL>:query`) that Go peers
never see. Both ends are Python lobbyd, so the format is ours:

- **A query** is one JSON object: `{"v": 1, "id": "...", "try": 0, "m": "GET",
  "p": "/v1/resolve", "q": "label=service:web", "gz": true}`. `id` names the query
  (Redis listeners hash it to pick who answers; replies carry it back), `try` counts
  the attempts (the Redis hash moves on with it), `q` is the raw query string (the
  listener's own API parses it, so a blocking query's `index` and `wait` ride in it)
  and `gz` says that the agent's client accepts gzip.
- **A reply** is one or more messages, each at most `CHUNK` bytes (512 KiB, under NATS's
  default 1 MiB max_payload): a first line `LQ1 <id> <seq> <count>\\n`, then for
  `seq` 0 a JSON line `{"s": status, "h": [[name, value], ...], "l": listener}`, then
  that message's share of the body. The agent joins the shares in `seq` order: the
  status, headers and body bytes are exactly what the listener's own API answered.

`Reassembly` collects the messages of one reply in any order and says when it is
whole; anything malformed raises `QueryError` (the agent drops that message and
counts it).

- **A hello** is what a warm listener tells the others where every listener hears every
  query (Redis, on `<REDIS_CHANNEL>:listeners`, every KEEP_ALIVE): `{"v": 1,
  "listener": "<hostname>"}`, and `"bye": true` added when it stops taking queries.
  Listeners pick who answers a query among those they heard from (lobby.node.queries).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Final

import orjson

VERSION: Final = 1
CHUNK: Final = 512 * 1024  # the largest reply message, header line included
_MAGIC: Final = b"LQ1"
_HEADROOM: Final = 256  # the first line, generously

Headers = list[tuple[bytes, bytes]]


class QueryError(ValueError):
    """A query or a reply message that is not ours or is malformed."""


class NoAnswer(Exception):
    """No listener answered; str() is the message an agent's API gives with its 503."""

    def __init__(self, tries: int) -> None:
        super().__init__(f"no listener answered (tried {tries})")
        self.tries = tries


@dataclass(frozen=True, slots=True)
class Query:
    """One cluster read asked of a listener."""

    id: str
    method: str
    path: str
    query: bytes = b""
    gzip: bool = False
    attempt: int = 0

    def encode(self) -> bytes:
        return orjson.dumps(
            {
                "v": VERSION,
                "id": self.id,
                "try": self.attempt,
                "m": self.method,
                "p": self.path,
                "q": self.query.decode("latin-1"),
                "gz": self.gzip,
            }
        )

    @classmethod
    def decode(cls, data: bytes) -> Query:
        try:
            obj = orjson.loads(data)
        except orjson.JSONDecodeError:
            raise QueryError("not JSON") from None
        if not isinstance(obj, dict) or obj.get("v") != VERSION:
            raise QueryError("not a version-1 query")
        try:
            qid, method, path, query = obj["id"], obj["m"], obj["p"], obj.get("q", "")
            attempt = obj.get("try", 0)
        except KeyError as exc:
            raise QueryError(f"no {exc.args[0]!r}") from None
        if not (
            isinstance(qid, str)
            and isinstance(method, str)
            and isinstance(path, str)
            and isinstance(query, str)
            and isinstance(attempt, int)
            and path.startswith("/")
        ):
            raise QueryError("a field of the wrong type")
        return cls(qid, method, path, query.encode("latin-1"), bool(obj.get("gz")), attempt)


@dataclass(frozen=True, slots=True)
class Hello:
    """A warm listener's word to the others: it takes queries (or, `bye`, no longer)."""

    listener: str
    bye: bool = False

    def encode(self) -> bytes:
        hello: dict[str, object] = {"v": VERSION, "listener": self.listener}
        if self.bye:
            hello["bye"] = True
        return orjson.dumps(hello)

    @classmethod
    def decode(cls, data: bytes) -> Hello:
        try:
            obj = orjson.loads(data)
        except orjson.JSONDecodeError:
            raise QueryError("not JSON") from None
        if not isinstance(obj, dict) or obj.get("v") != VERSION:
            raise QueryError("not a version-1 hello")
        listener = obj.get("listener")
        if not isinstance(listener, str) or not listener:
            raise QueryError("a hello without a listener")
        return cls(listener, obj.get("bye") is True)


@dataclass(slots=True)
class Reply:
    """A listener's answer, as its own API gave it."""

    status: int
    headers: Headers
    body: bytes
    listener: str = ""

    def header(self, name: bytes) -> bytes | None:
        for key, value in self.headers:
            if key == name:
                return value
        return None


def encode_reply(qid: str, reply: Reply, chunk: int = CHUNK) -> list[bytes]:
    """The messages of one reply, each at most `chunk` bytes."""
    meta = orjson.dumps(
        {
            "s": reply.status,
            "h": [[k.decode("latin-1"), v.decode("latin-1")] for k, v in reply.headers],
            "l": reply.listener,
        }
    )
    room = chunk - _HEADROOM - len(qid)
    first_room = room - len(meta) - 1
    if first_room < 1:
        raise ValueError("the reply's headers do not fit in one message")
    body = reply.body
    shares = [body[:first_room]]
    shares += [body[i : i + room] for i in range(first_room, len(body), room)]
    count = len(shares)
    ident = qid.encode()
    out = [b"%s %s 0 %d\n%s\n%s" % (_MAGIC, ident, count, meta, shares[0])]
    out += [b"%s %s %d %d\n%s" % (_MAGIC, ident, i, count, s) for i, s in enumerate(shares) if i]
    return out


@dataclass(slots=True)
class Reassembly:
    """The messages of one reply (id `qid`), collected in any order."""

    qid: str
    count: int = 0
    shares: dict[int, bytes] = field(default_factory=dict)
    meta: dict[str, object] | None = None

    def add(self, message: bytes) -> Reply | None:
        """Take one message; the whole reply once the last share is in, else None."""
        line, nl, rest = message.partition(b"\n")
        parts = line.split(b" ")
        if not nl or len(parts) != 4 or parts[0] != _MAGIC:
            raise QueryError("not a reply message")
        try:
            seq, count = int(parts[2]), int(parts[3])
        except ValueError:
            raise QueryError("bad sequence numbers") from None
        if parts[1].decode("latin-1") != self.qid:
            raise QueryError("a reply to another query")
        if not 0 <= seq < count or (self.count and count != self.count):
            raise QueryError("sequence numbers out of range")
        self.count = count
        if seq == 0:
            head, nl, rest = rest.partition(b"\n")
            try:
                meta = orjson.loads(head) if nl else None
            except orjson.JSONDecodeError:
                meta = None
            if not isinstance(meta, dict) or not isinstance(meta.get("s"), int):
                raise QueryError("a first message without status and headers")
            self.meta = meta
        self.shares[seq] = rest
        if len(self.shares) < count or self.meta is None:
            return None
        meta = self.meta
        try:
            headers = [(str(k).encode("latin-1"), str(v).encode("latin-1")) for k, v in meta["h"]]  # type: ignore[attr-defined]
        except (TypeError, ValueError):
            raise QueryError("malformed headers") from None
        body = b"".join(self.shares[i] for i in range(count))
        status = meta["s"]
        assert isinstance(status, int)
        return Reply(status, headers, body, str(meta.get("l", "")))


__all__ = [
    "CHUNK",
    "Hello",
    "NoAnswer",
    "Query",
    "QueryError",
    "Reassembly",
    "Reply",
    "encode_reply",
]
