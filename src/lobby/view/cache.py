"""Answers kept until the registry changes: one invalidation for every reader.

The API is read far more often than the registry changes (SPEC §5), so every answer is
built once per change and served as bytes until the next one. The registry itself
knows records, not bytes: what is kept, and when it is stale, is decided here, in one
place, for the HTTP bodies (`Answers`: lists, resolve, Prometheus SD) and for the DNS
wire answers (a `Store` of their own):

- a `Store` is emptied when the registry's index moves (a join, a label change, a
  leave, an expiry; never a keep-alive), and a `timed` one also when the wall-clock
  second changes: answers that show `last_check` are never staler than a second;
- each store has a bound on its entries and their bytes; past it, it starts afresh
  (clients repeat a few queries: a full store means someone is trying every query).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Hashable
from typing import Final, Generic, TypeVar

from lobby.core.answer import KEEP_MAX, Answer, Slices, encode_list, stream_list
from lobby.view.registry import Registry, View

V = TypeVar("V")
Prepared = Callable[[], Answer | Slices | bytes]  # what builds (or finds) one query's answer

ANSWERS_MAX: Final = 1024  # answers per store
ANSWER_BYTES_MAX: Final = 32 * 1024 * 1024  # their bodies together
# What a node costs in the indented full list until a build has measured it (the
# simulator's nodes: ~300 bytes).
BYTES_PER_NODE: Final = 320


class Store(Generic[V]):
    """A dict of answers, emptied whenever the registry's index (and, when `timed`,
    the wall-clock second) moved since it was filled."""

    __slots__ = ("_bytes", "_data", "_registry", "_size", "_stamp", "_wall", "entries", "limit")

    def __init__(
        self,
        registry: Registry,
        size: Callable[[V], int],
        *,
        entries: int = ANSWERS_MAX,
        limit: int = ANSWER_BYTES_MAX,
        timed: bool = False,
        wall: Callable[[], float] = time.time,
    ) -> None:
        self._registry = registry
        self._size = size
        self.entries = entries
        self.limit = limit
        self._wall = wall if timed else None
        self._data: dict[Hashable, V] = {}
        self._bytes = 0
        self._stamp: tuple[int, int] = (0, 0)

    def _fresh(self) -> dict[Hashable, V]:
        stamp = (self._registry.index, 0 if self._wall is None else int(self._wall()))
        if stamp != self._stamp:
            self._data.clear()
            self._bytes = 0
            self._stamp = stamp
        return self._data

    def get(self, key: Hashable) -> V | None:
        return self._fresh().get(key)

    def put(self, key: Hashable, value: V) -> V:
        data = self._fresh()
        size = self._size(value)
        if len(data) >= self.entries or self._bytes + size > self.limit:
            data.clear()
            self._bytes = 0
        data[key] = value
        self._bytes += size
        return value

    def __len__(self) -> int:
        return len(self._fresh())


def _size(answer: Answer | Slices) -> int:
    return len(answer) if isinstance(answer, Answer) else 0


class Answers:
    """The HTTP answers built from the registry: lists of discoveries (GET /,
    /v1/discoveries and its filters; the callback's input), and whatever else a reader
    builds through `cached` (resolve, Prometheus SD). Shared by the API, the callback
    and Prometheus SD, so each answer is built once per change whoever asks.

    Lists are encoded straight from the registry's records (`Registry.rows`). A list
    whose body would pass `KEEP_MAX` is not kept: it is a `Slices` that encodes it
    anew, slice by slice, each time it is sent.
    """

    def __init__(self, registry: Registry, *, wall: Callable[[], float] = time.time) -> None:
        self.registry = registry
        # answers that show last_check are rebuilt every second; the others per change
        self._timed: Store[Answer | Slices] = Store(registry, _size, timed=True, wall=wall)
        self._untimed: Store[Answer | Slices] = Store(registry, _size)
        self._bytes_per_node = BYTES_PER_NODE
        # what a query string means, by its raw bytes: clients repeat theirs, so the
        # parsing and normalising (and the filter) are made once per query, not per
        # request; the answers themselves are kept by the normalised query
        self.queries: dict[Hashable, Prepared] = {}

    def query(self, raw: Hashable, prepare: Callable[[], Prepared]) -> Prepared:
        """What `prepare()` made for the query `raw` (kept: at most ANSWERS_MAX)."""
        prepared = self.queries.get(raw)
        if prepared is None:
            prepared = prepare()
            if len(self.queries) >= ANSWERS_MAX:
                self.queries.clear()
            self.queries[raw] = prepared
        return prepared

    def listing(
        self,
        key: Hashable = "all",
        pick: View | None = None,
        labels: frozenset[str] | None = None,
    ) -> Answer | Slices:
        """The discoveries `pick` keeps (every one when None), sorted by hostname, as
        the indented JSON list of GET /v1/discoveries. `labels`: `pick` keeps only
        nodes with one of these (a labels= filter): only those are looked at."""
        kept = self._timed.get(("list", key))
        if kept is not None:
            return kept

        def build() -> Answer | Slices:
            registry = self.registry
            hostnames = registry.hostnames() if labels is None else registry.carrying(labels)
            if pick is None:
                if len(hostnames) * self._bytes_per_node > KEEP_MAX:
                    return Slices(lambda: stream_list(registry.slices(hostnames, None)))
                body = encode_list(registry.rows(hostnames, None))
                if hostnames:
                    self._bytes_per_node = max(len(body) // len(hostnames), 1)
                return Answer(body)
            rows = registry.rows(hostnames, pick)
            if len(rows) * self._bytes_per_node > KEEP_MAX:
                del rows
                return Slices(lambda: stream_list(registry.slices(hostnames, pick)))
            return Answer(encode_list(rows))

        return self._timed.put(("list", key), build())

    def all_json(self) -> bytes:
        """GET /v1/discoveries (also the callback's input)."""
        return self.listing().body

    def cached(self, key: Hashable, build: Callable[[], bytes], *, timed: bool = True) -> bytes:
        """`build()`'s bytes, reused until the index moves (and, when `timed`, the
        wall-clock second: for answers that show last_check)."""
        return self.cached_answer(key, build, timed=timed).body

    def cached_answer(
        self, key: Hashable, build: Callable[[], bytes], *, timed: bool = True
    ) -> Answer | Slices:
        """As `cached`, as an `Answer` (whose gzip copy is then kept beside it)."""
        store = self._timed if timed else self._untimed
        answer = store.get(key)
        if answer is None:
            answer = store.put(key, Answer(build()))
        return answer

    def kept(self, key: Hashable, *, timed: bool = True) -> Answer | Slices | None:
        """The answer kept under `key` while the index (and, when `timed`, the second)
        has not moved, or None."""
        return (self._timed if timed else self._untimed).get(key)

    def keep(self, key: Hashable, answer: Answer, *, timed: bool = True) -> Answer:
        """Keep `answer`, made for the index as it is now, under `key`."""
        (self._timed if timed else self._untimed).put(key, answer)
        return answer

    def _answer(
        self, key: Hashable, build: Callable[[], Answer | Slices], *, timed: bool
    ) -> Answer | Slices:
        store = self._timed if timed else self._untimed
        answer = store.get(key)
        if answer is None:
            answer = store.put(key, build())
        return answer
