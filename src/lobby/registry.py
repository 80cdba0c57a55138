"""The live view: every node's latest discovery, keyed by hostname.

Knows nothing of brokers or HTTP. Three ideas carry it:

- Records sit in an OrderedDict in the order they were last refreshed, so the oldest
  record is always first: expiring is popping from the front (O(1) per record), and
  every read expires first, so no answer ever holds a record past its TTL (SPEC §3).
- Time for liveness is a monotonic clock that stands still while our own link to the
  broker is down (`pause`/`resume`): an outage on our side expires nobody, and a
  wall-clock jump neither expires nor resurrects anyone. `last_check` alone is wall time.
- With several brokers (SPEC §15) each link has its own such clock and its own queue.
  A record belongs to the link that refreshed it last and ages on that link's clock:
  a node heard last through a broker that is now down is kept through the outage
  (we cannot tell whether it is silent or dead), while a node that goes on being
  refreshed through a live broker after the other went down moves to the live link's
  queue and expires normally once it falls silent there. ("Last refresh wins" rather
  than "any link it was ever heard through": the latter would keep a node that lives
  on both brokers, and then died, for the whole outage of one of them.) With one link,
  which is the default, this is exactly the single clock and queue above.
- `index` grows on every content change (join, label change, leave, expiry), never on
  a plain keep-alive. Serialized answers are cached per query until it moves; answers
  that show `last_check` are also rebuilt when the wall-clock second changes, so that
  field is never staler than a second.
"""

from __future__ import annotations

import asyncio
import time
from collections import OrderedDict
from collections.abc import Callable, Hashable, Iterable
from dataclasses import dataclass
from typing import Final, Literal

from lobby.model import Discovery, discoveries_json

ChangeKind = Literal["join", "update", "leave"]
LeaveReason = Literal["", "goodbye", "expired"]

_CACHE_MAX: Final = 1024


@dataclass(frozen=True, slots=True)
class Change:
    """One content change, as told to listeners (callback runner, event stream)."""

    index: int
    kind: ChangeKind
    hostname: str
    labels: tuple[str, ...]
    reason: LeaveReason = ""
    old_labels: tuple[str, ...] = ()  # before an update; () for join and leave


@dataclass(slots=True)
class _Record:
    labels: tuple[str, ...]
    seen: float  # its link's registry time (monotonic, paused while that link is down)
    last_check: int  # wall-clock Unix seconds, shown in answers
    via: int = 0  # the link that refreshed it last; its queue holds the record


class _Link:
    """One broker link's liveness clock and the records it refreshed last, oldest first."""

    __slots__ = ("paused_at", "paused_total", "queue")

    def __init__(self) -> None:
        self.queue: OrderedDict[str, _Record] = OrderedDict()
        self.paused_at: float | None = None  # clock time the countdown stopped
        self.paused_total = 0.0  # clock seconds spent paused before that


Listener = Callable[[Change], None]
# A node's labels -> the labels a filtered view shows of it, or None: not in the view.
View = Callable[[tuple[str, ...]], "tuple[str, ...] | None"]


def make_view(labels: Iterable[str] = (), prefixes: Iterable[str] = ()) -> View:
    """The filters of SPEC §5: any of `labels` (which wins), else any of `prefixes`,
    else everything. A filtered node shows only its matching labels."""
    wanted = frozenset(labels)
    if wanted:
        return lambda have: tuple(x for x in have if x in wanted) or None
    starts = tuple(prefixes)
    if starts:
        return lambda have: tuple(x for x in have if x.startswith(starts)) or None
    return lambda have: have


class Registry:
    def __init__(
        self,
        ttl: float,
        *,
        clock: Callable[[], float] = time.monotonic,
        wall_clock: Callable[[], float] = time.time,
    ) -> None:
        if ttl <= 0:
            raise ValueError("ttl must be positive")
        self.ttl = ttl
        self._clock = clock
        self._wall = wall_clock
        self._links: list[_Link] = [_Link()]
        self._live: tuple[_Link, ...] = tuple(self._links)  # the links not paused
        # every record by hostname; with one link, the same object as its queue, so
        # the hot path (update) costs what it did before links had queues of their own
        self._records: dict[str, _Record] = self._links[0].queue
        self._index = 1
        self._listeners: list[Listener] = []
        self._cache: dict[Hashable, bytes] = {}
        self._cache_stamp: tuple[int, int] = (0, 0)
        self._sorted: list[str] | None = None

    # -- time ---------------------------------------------------------------------

    def _now(self, link: _Link) -> float:
        if link.paused_at is not None:
            return link.paused_at - link.paused_total
        return self._clock() - link.paused_total

    def add_link(self) -> int:
        """Another broker link, with a clock of its own (running); returns its number."""
        self._links.append(_Link())
        if len(self._links) == 2:  # from now on the queues and the lookup differ
            self._records = dict(self._records)
        self._live = tuple(link for link in self._links if link.paused_at is None)
        return len(self._links) - 1

    @property
    def links(self) -> int:
        return len(self._links)

    @property
    def paused(self) -> bool:
        """True while any link's countdown stands still."""
        return len(self._live) != len(self._links)

    def link_paused(self, link: int = 0) -> bool:
        return self._links[link].paused_at is not None

    def pause(self, link: int = 0, *, since: float | None = None) -> None:
        """Stop `link`'s TTL countdown: that link is down (since `since`, clock time).

        Nodes it refreshed last are kept until it resumes; the others age as before.
        """
        state = self._links[link]
        if state.paused_at is None:
            now = self._clock()
            state.paused_at = now if since is None else min(since, now)
            self._live = tuple(x for x in self._links if x.paused_at is None)

    def resume(self, link: int = 0) -> None:
        """Restart `link`'s TTL countdown where it stood when the link went down."""
        state = self._links[link]
        if state.paused_at is not None:
            state.paused_total += self._clock() - state.paused_at
            state.paused_at = None
            self._live = tuple(x for x in self._links if x.paused_at is None)

    # -- changes ------------------------------------------------------------------

    @property
    def index(self) -> int:
        self.expire()
        return self._index

    def add_listener(self, listener: Listener) -> None:
        self._listeners.append(listener)

    def _changed(
        self,
        kind: ChangeKind,
        hostname: str,
        labels: tuple[str, ...],
        reason: LeaveReason = "",
        old_labels: tuple[str, ...] = (),
    ) -> None:
        self._index += 1
        if kind != "update":
            self._sorted = None
        if self._listeners:
            change = Change(self._index, kind, hostname, labels, reason, old_labels)
            for listener in tuple(self._listeners):
                listener(change)

    def update(self, discovery: Discovery, via: int = 0) -> bool:
        """Insert or refresh a node ("hi") heard through link `via`; True when its
        content changed."""
        self.expire()
        hostname = discovery.hostname
        record = self._records.get(hostname)
        link = self._links[via]
        paused_at = link.paused_at  # self._now(link), inlined: this is the hot path
        now = (self._clock() if paused_at is None else paused_at) - link.paused_total
        last_check = int(self._wall())
        if record is not None:
            record.seen = now
            record.last_check = last_check
            if record.via == via:
                link.queue.move_to_end(hostname)
            else:  # now refreshed through another link: it ages on that link's clock
                del self._links[record.via].queue[hostname]
                link.queue[hostname] = record
                record.via = via
            old = record.labels
            if old == discovery.labels:
                return False
            record.labels = discovery.labels
            self._changed("update", hostname, discovery.labels, old_labels=old)
            return True
        record = _Record(discovery.labels, now, last_check, via)
        link.queue[hostname] = record
        self._records[hostname] = record  # the same dict with one link: a no-op store
        self._changed("join", hostname, discovery.labels)
        return True

    def remove(self, hostname: str, reason: LeaveReason = "goodbye") -> bool:
        """Drop a node ("goodbye"); True when it was there."""
        self.expire()
        record = self._records.pop(hostname, None)
        if record is None:
            return False
        self._links[record.via].queue.pop(hostname, None)  # gone already with one link
        self._changed("leave", hostname, record.labels, reason)
        return True

    def expire(self) -> int:
        """Drop every record past its TTL; returns how many. O(1) when none is."""
        records = self._records
        if not records:
            return 0
        dropped = 0
        now = self._clock()
        for link in self._live:  # a paused link's records wait for it
            queue = link.queue
            deadline = now - link.paused_total - self.ttl
            while queue:
                hostname, record = next(iter(queue.items()))
                if record.seen > deadline:
                    break
                del queue[hostname]
                records.pop(hostname, None)  # gone already with one link
                dropped += 1
                self._changed("leave", hostname, record.labels, "expired")
        return dropped

    def next_expiry(self) -> float | None:
        """Seconds until the oldest record of a running link expires; None when there is
        none (empty, or every record waits for a paused link)."""
        soonest: float | None = None
        for link in self._live:
            if link.queue:
                record = next(iter(link.queue.values()))
                wait = max(0.0, record.seen + self.ttl - self._now(link))
                soonest = wait if soonest is None else min(soonest, wait)
        return soonest

    # -- reads --------------------------------------------------------------------

    def __len__(self) -> int:
        self.expire()
        return len(self._records)

    def __contains__(self, hostname: object) -> bool:
        self.expire()
        return hostname in self._records

    def get(self, hostname: str) -> Discovery | None:
        self.expire()
        record = self._records.get(hostname)
        if record is None:
            return None
        return Discovery(hostname, record.labels, record.last_check)

    def _hostnames(self) -> list[str]:
        if self._sorted is None:
            self._sorted = sorted(self._records)
        return self._sorted

    def discoveries(self) -> list[Discovery]:
        """Every live discovery, sorted by hostname."""
        self.expire()
        records = self._records
        return [Discovery(h, (r := records[h]).labels, r.last_check) for h in self._hostnames()]

    def view(self, pick: View) -> list[Discovery]:
        """The nodes `pick` keeps, each carrying the labels it picked (sorted by hostname)."""
        self.expire()
        out = []
        records = self._records
        for hostname in self._hostnames():
            record = records[hostname]
            labels = pick(record.labels)
            if labels is not None:
                out.append(Discovery(hostname, labels, record.last_check))
        return out

    def with_labels(self, wanted: Iterable[str]) -> list[Discovery]:
        """Nodes with at least one of `wanted`, each carrying only its matching labels."""
        return self.view(make_view(labels=wanted))

    def with_prefixes(self, prefixes: Iterable[str]) -> list[Discovery]:
        """Nodes with a label starting with one of `prefixes`; only matching labels kept."""
        return self.view(make_view(prefixes=prefixes))

    def resolve(self, label: str) -> list[str]:
        """Sorted hostnames of the nodes that carry `label`."""
        self.expire()
        records = self._records
        return [h for h in self._hostnames() if label in records[h].labels]

    def all_json(self) -> bytes:
        """GET /v1/discoveries (also the callback's input), from the answer cache."""
        return self.cached("all", lambda: discoveries_json(self.discoveries()))

    async def sweep(self, clean_every: float) -> None:
        """Expire records at their exact deadline, forever (CLEAN_EVERY caps the sleep)."""
        while True:
            wait = self.next_expiry()
            await asyncio.sleep(clean_every if wait is None else min(wait + 0.001, clean_every))
            self.expire()

    # -- answer cache -------------------------------------------------------------

    def cached(self, key: Hashable, build: Callable[[], bytes], *, timed: bool = True) -> bytes:
        """`build()`'s bytes, reused until the index moves.

        `timed` answers (those that show last_check) are also rebuilt every wall-clock
        second. Key timed and untimed answers differently.
        """
        self.expire()
        stamp = (self._index, int(self._wall()))
        cache = self._cache
        if stamp != self._cache_stamp:
            if stamp[0] != self._cache_stamp[0]:
                cache.clear()
            else:  # same index, new second: only the timed answers are stale
                for k in [k for k in cache if type(k) is tuple and k and k[0] == "t"]:
                    del cache[k]
            self._cache_stamp = stamp
        full_key = ("t", key) if timed else ("u", key)
        answer = cache.get(full_key)
        if answer is None:
            if len(cache) >= _CACHE_MAX:
                cache.clear()
            answer = cache[full_key] = build()
        return answer
