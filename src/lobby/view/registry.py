"""The live view: every node's latest discovery, keyed by hostname.

Knows records, not bytes: nothing of brokers, HTTP or DNS (the answers built from it,
and when they are stale, are `lobby.view.cache`'s). Three ideas carry it:

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
- This node's own record (`set_own`) is never expired: we know we are alive. A link
  whose own echo is overdue (`expect_echo`) stops its clock as of the last echo, at the
  first read that notices, so a hung broker cannot expire anyone in the meantime.
- `index` grows on every content change (join, label change, leave, expiry), never on
  a plain keep-alive: whoever keeps an answer keeps it until the index moves.

`rows` and `slices` hand the records out as the plain dicts a list of discoveries is
encoded from, without building a `Discovery` for each.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import math
import time
from collections import OrderedDict
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from typing import Literal

from lobby.core.answer import SLICE, Row
from lobby.core.model import Discovery

ChangeKind = Literal["join", "update", "leave"]
LeaveReason = Literal["", "goodbye", "expired"]


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
    via: LinkClock  # the link that refreshed it last; its queue holds the record


class LinkClock:
    """One broker link's liveness clock and the records it refreshed last, oldest first.

    Handed out by the registry (`first_link`, `add_link`) and handed back to address
    that link: the presence's `Link` keeps its own.
    """

    __slots__ = ("echo_due", "echo_since", "paused_at", "paused_total", "queue", "why")

    def __init__(self) -> None:
        self.queue: OrderedDict[str, _Record] = OrderedDict()
        self.paused_at: float | None = None  # clock time the countdown stopped
        self.paused_total = 0.0  # clock seconds spent paused before that
        self.why: set[str] = set()  # what holds it paused: "link", "echo"
        # our own announcement last came back at echo_since; the next is due by
        # echo_due (inf: not expected, as with REGISTER=false)
        self.echo_since = 0.0
        self.echo_due = math.inf


Listener = Callable[[Change], None]
Snapshot = tuple[str, tuple[str, ...], int]  # a node as Registry.snapshot gives it
# A node heard: (hostname, labels) and maybe more (a model.Packet: hostname, labels, ...).
Heard = tuple[str, tuple[str, ...], *tuple[object, ...]]
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
        # the link every record belongs to until a second one is added: with one
        # broker, the only one
        self.first_link = LinkClock()
        self._links: list[LinkClock] = [self.first_link]
        self._live: tuple[LinkClock, ...] = tuple(self._links)  # the links not paused
        # every record by hostname; with one link, the same object as its queue, so
        # the hot path (update) costs what it did before links had queues of their own
        self._records: dict[str, _Record] = self.first_link.queue
        # read-only to others: what `model.decode_packet` is given as `known`
        self.records: Mapping[str, _Record] = self._records
        self._index = 1
        self._own: str | None = None  # this node's hostname: listed, never expired
        self._echo_due = math.inf  # the soonest echo_due of a link not held for it
        self._listeners: list[Listener] = []
        self._sorted: list[str] | None = None
        # label -> the hostnames that carry it, kept at every change: /v1/resolve and a
        # labels= filter walk the nodes that match, not all of them (at 100,000 nodes a
        # scan was 140 ms a read; bench/README.md, "Agents and listeners")
        self._by_label: dict[str, set[str]] = {}
        # joins and whether anyone left since `_sorted` was made (see `_hostnames`)
        self._joined: list[str] = []
        self._left = False
        self._last_check = 0
        # clock time before which `expire` has nothing to do: the oldest record of each
        # running link cannot be due sooner. Lowered when a record joins a queue, reset
        # when a link pauses or resumes; between those it may only be too early (then
        # `expire` scans, finds nothing, and moves it on), never too late.
        self._expire_due = -math.inf

    # -- time ---------------------------------------------------------------------

    def _now(self, link: LinkClock) -> float:
        if link.paused_at is not None:
            return link.paused_at - link.paused_total
        return self._clock() - link.paused_total

    def add_link(self) -> LinkClock:
        """Another broker link, with a clock of its own (running): its handle."""
        link = LinkClock()
        self._links.append(link)
        if len(self._links) == 2:  # from now on the queues and the lookup differ
            self._records = dict(self._records)
            self.records = self._records
        self._live = tuple(x for x in self._links if x.paused_at is None)
        self._expire_due = -math.inf
        return link

    @property
    def links(self) -> tuple[LinkClock, ...]:
        """Every link's clock, `first_link` first, then in the order they were added."""
        return tuple(self._links)

    @property
    def paused(self) -> bool:
        """True while any link's countdown stands still."""
        self._hold_overdue(self._clock())
        return len(self._live) != len(self._links)

    def link_paused(self, link: LinkClock | None = None) -> bool:
        self._hold_overdue(self._clock())
        return (link or self.first_link).paused_at is not None

    def pause(
        self, link: LinkClock | None = None, *, since: float | None = None, why: str = "link"
    ) -> None:
        """Stop `link`'s TTL countdown: that link is down (since `since`, clock time).

        Nodes it refreshed last are kept until it resumes; the others age as before.
        The countdown runs again when every `why` that paused it has resumed.
        """
        state = link or self.first_link
        state.why.add(why)
        if state.paused_at is None:
            now = self._clock()
            state.paused_at = now if since is None else min(since, now)
            self._live = tuple(x for x in self._links if x.paused_at is None)
            self._expire_due = -math.inf

    def resume(self, link: LinkClock | None = None, why: str = "link") -> None:
        """Restart `link`'s TTL countdown where it stood when the link went down (once
        nothing else holds it)."""
        state = link or self.first_link
        state.why.discard(why)
        if state.paused_at is not None and not state.why:
            state.paused_total += self._clock() - state.paused_at
            state.paused_at = None
            self._live = tuple(x for x in self._links if x.paused_at is None)
            self._expire_due = -math.inf

    def grant_ttl(self, link: LinkClock | None = None) -> None:
        """Every node `link` refreshed last gets a whole TTL from now (its link came
        back: the nodes reconnect over the next seconds, and none may expire meanwhile)."""
        state = link or self.first_link
        now = self._now(state)
        for record in state.queue.values():
            record.seen = now
        self._expire_due = -math.inf

    def expect_echo(self, link: LinkClock, *, since: float, within: float) -> None:
        """Our own announcement came back through `link` at `since` (clock time); the
        next one is due within `within` seconds.

        When it is overdue, the link's countdown stops as of `since`, until the next
        echo: a hung broker (TCP open, nothing flowing) can then expire nobody. This is
        checked at every read and every refresh, not by a task that ticks, so no node
        can expire between the echo falling due and someone noticing (SPEC §3).
        """
        state = link
        state.echo_since = since
        state.echo_due = since + within
        self._echo_due = min(x.echo_due for x in self._links)
        if "echo" in state.why:
            self.resume(link, "echo")

    def echo_overdue(self, link: LinkClock | None = None) -> bool:
        """Whether `link` is held because our own announcement did not come back."""
        self._hold_overdue(self._clock())
        return "echo" in (link or self.first_link).why

    def _hold_overdue(self, clock: float) -> None:
        if clock < self._echo_due:
            return
        for state in self._links:
            if state.echo_due <= clock:
                state.echo_due = math.inf  # until the next echo
                self.pause(state, since=state.echo_since, why="echo")
        self._echo_due = min(x.echo_due for x in self._links)

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
        if kind == "join":
            self._joined.append(hostname)
        elif kind == "leave":
            self._left = True
        by_label = self._by_label
        if kind != "join":  # the labels it leaves behind
            gone = labels if kind == "leave" else [x for x in old_labels if x not in labels]
            for label in gone:
                carriers = by_label.get(label)
                if carriers is not None:
                    carriers.discard(hostname)
                    if not carriers:
                        del by_label[label]
        if kind != "leave":
            for label in labels:
                carriers = by_label.get(label)
                if carriers is None:
                    by_label[label] = {hostname}
                else:
                    carriers.add(hostname)
        if self._listeners:
            change = Change(self._index, kind, hostname, labels, reason, old_labels)
            for listener in tuple(self._listeners):
                listener(change)

    @property
    def own(self) -> str | None:
        return self._own

    def set_own(
        self, hostname: str | None, labels: tuple[str, ...] = (), via: LinkClock | None = None
    ) -> None:
        """This node's own record: listed from now on with `labels` (read your own
        writes: a local change shows at once, not when its echo comes back) and never
        expired; None: no such record from now on (REGISTER=false, or leaving).

        A new hostname replaces the old one's record (a hostname change). `via`: the
        link it was heard through (else the one it was last heard through, or the first)."""
        old = self._own
        self._own = hostname
        if old is not None and old != hostname and hostname is not None:
            self.remove(old, "goodbye")
        if hostname is not None:
            if via is None:
                record = self._records.get(hostname)
                via = self.first_link if record is None else record.via
            self.refresh(hostname, labels, via)

    def update(self, discovery: Discovery, via: LinkClock | None = None) -> bool:
        """Insert or refresh a node ("hi") heard through link `via`; True when its
        content changed."""
        return self.refresh(discovery.hostname, discovery.labels, via)

    def refresh(self, hostname: str, labels: tuple[str, ...], via: LinkClock | None = None) -> bool:
        """`update` without a Discovery: `labels` sorted, unique."""
        return self.refresh_many(((hostname, labels),), via) > 0

    def refresh_many(self, nodes: Iterable[Heard], via: LinkClock | None = None) -> int:
        """Insert or refresh each (hostname, labels, ...) heard at once through link
        `via`, in order (the daemon's hot path: the clocks are read and the link looked
        up once for all of them); how many joined or changed their labels. A
        `model.Packet` is such a tuple."""
        clock = self._clock()
        if clock >= self._expire_due or clock >= self._echo_due:
            self.expire()
        link = self.first_link if via is None else via
        paused_at = link.paused_at  # self._now(link), inlined
        now = (clock if paused_at is None else paused_at) - link.paused_total
        last_check = int(self._wall())
        if last_check == self._last_check:
            last_check = self._last_check  # one int object per second, not one per node
        else:
            self._last_check = last_check
        records = self._records
        queue = link.queue
        to_end = queue.move_to_end
        changed = 0
        for node in nodes:
            hostname = node[0]
            labels = node[1]
            record = records.get(hostname)
            if record is None:
                record = _Record(labels, now, last_check, link)
                queue[hostname] = record
                records[hostname] = record  # the same dict with one link: a no-op store
                self._due_by(clock)
                self._changed("join", hostname, labels)
                changed += 1
                continue
            record.seen = now
            record.last_check = last_check
            if record.via is link:
                to_end(hostname)
            else:  # now refreshed through another link: it ages on that link's clock
                del record.via.queue[hostname]
                queue[hostname] = record
                record.via = link
                self._due_by(clock)
            old = record.labels
            if old is not labels and old != labels:
                record.labels = labels
                self._changed("update", hostname, labels, old_labels=old)
                changed += 1
        return changed

    def _due_by(self, clock: float) -> None:
        """A record refreshed at `clock` joined the end of a queue: it is due at
        clock + TTL (on a running link; a paused link's records wait for `resume`)."""
        due = clock + self.ttl - 1e-6
        if due < self._expire_due:
            self._expire_due = due

    def remove(self, hostname: str, reason: LeaveReason = "goodbye") -> bool:
        """Drop a node ("goodbye"); True when it was there."""
        self.expire()
        record = self._records.pop(hostname, None)
        if record is None:
            return False
        record.via.queue.pop(hostname, None)  # gone already with one link
        self._changed("leave", hostname, record.labels, reason)
        return True

    def expire(self) -> int:
        """Drop every record past its TTL; returns how many. O(1) when none is."""
        now = self._clock()
        self._hold_overdue(now)  # first: a link whose echo is overdue expires nobody
        if now < self._expire_due:
            return 0
        records = self._records
        own = self._own
        dropped = 0
        due = math.inf
        ttl = self.ttl
        self._expire_due = math.inf  # a listener's join below lowers it again
        for link in self._live:  # a paused link's records wait for it
            queue = link.queue
            deadline = now - link.paused_total - ttl
            while queue:
                hostname, record = next(iter(queue.items()))
                if record.seen > deadline:
                    # a microsecond early rather than a rounding late
                    due = min(due, record.seen + link.paused_total + ttl - 1e-6)
                    break
                if hostname == own:  # we know we are alive: never expire ourselves
                    record.seen = now - link.paused_total
                    queue.move_to_end(hostname)
                    continue
                del queue[hostname]
                records.pop(hostname, None)  # gone already with one link
                dropped += 1
                self._changed("leave", hostname, record.labels, "expired")
        self._expire_due = min(self._expire_due, due)
        return dropped

    def next_expiry(self) -> float | None:
        """Seconds until the oldest record of a running link expires; None when there is
        none (empty, or every record waits for a paused link)."""
        self._hold_overdue(self._clock())
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
        """Sorted hostnames; the list is replaced on a join or leave, never changed.

        Made from the previous list when few joined since (sorting 50,000 hostnames in
        the registry's order, which keep-alives shuffle, takes 20-75 ms on the loop;
        the previous list with the few joined added is nearly sorted: 3-5 ms)."""
        old = self._sorted
        if old is not None and not self._joined and not self._left:
            return old
        records = self._records
        if old is None or len(self._joined) > len(old) // 8:
            new = sorted(records)
        else:
            joined = {h for h in self._joined if h in records}
            new = [h for h in old if h in records and h not in joined]
            new += joined
            new.sort()
        self._sorted = new
        self._joined = []
        self._left = False
        return new

    def discoveries(self) -> list[Discovery]:
        """Every live discovery, sorted by hostname."""
        self.expire()
        records = self._records
        with _no_gc():
            return [Discovery(h, (r := records[h]).labels, r.last_check) for h in self._hostnames()]

    async def snapshot(self, step: int = 4096, tries: int = 3) -> list[Snapshot]:
        """(hostname, labels, last_check) of every live node, sorted by hostname: what
        `discoveries()` holds, made `step` nodes at a time with a turn of the event loop
        in between (at 50,000 nodes the whole of `discoveries()` holds the loop about
        45 ms), and as plain tuples, which the cyclic garbage collector stops tracking
        at its first look (50,000 Discovery objects kept through a template render are
        tracked, promoted to the oldest generation, and make its collections longer).
        A node that changes meanwhile moves the index: the list is then made again, at
        most `tries` times, and then at once."""
        for attempt in range(tries + 1):
            index = self.index
            hostnames = self._hostnames()
            out: list[Snapshot] = []
            add = out.append
            whole = attempt == tries
            for start in range(0, len(hostnames), step):
                if start and not whole:
                    await asyncio.sleep(0)
                records = self._records
                for hostname in hostnames[start : start + step]:
                    record = records.get(hostname)
                    if record is not None:
                        add((hostname, record.labels, record.last_check))
            if whole or self.index == index:
                return out
        raise AssertionError("unreachable")

    def labelled(self) -> Iterator[tuple[str, tuple[str, ...]]]:
        """(hostname, labels) of every live node, sorted by hostname, without making a
        Discovery of each: for a reader that keeps its own per-node state and looks at
        the labels of most nodes only to see they did not change (lobby.prometheus).
        Walk it to the end before the next await."""
        self.expire()
        records = self._records
        for hostname in self._hostnames():
            yield hostname, records[hostname].labels

    def labels_of(self, hostnames: list[str]) -> Iterator[tuple[str, tuple[str, ...]]]:
        """(hostname, labels) of those of `hostnames` still here, without expiring: a
        slice of `hostnames()` at a time, for a reader that walks the registry over
        several turns of the loop (lobby.view.prometheus; it checks the index did not
        move meanwhile)."""
        records = self._records
        for hostname in hostnames:
            record = records.get(hostname)
            if record is not None:
                yield hostname, record.labels

    def view(self, pick: View) -> list[Discovery]:
        """The nodes `pick` keeps, each carrying the labels it picked (sorted by hostname)."""
        self.expire()
        out = []
        records = self._records
        with _no_gc():
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
        return sorted(self._by_label.get(label, ()))

    def carrying(self, labels: Iterable[str]) -> list[str]:
        """Sorted hostnames of the nodes that carry any of `labels` (what a labels=
        filter keeps), from the label index: the cost is the matches', not the cluster's."""
        self.expire()
        by_label = self._by_label
        found: set[str] = set()
        for label in labels:
            found.update(by_label.get(label, ()))
        return sorted(found)

    # -- rows: what the answers (lobby.cache) encode ------------------------------

    def hostnames(self) -> list[str]:
        """Every live hostname, sorted; the list is replaced on a join or leave, never
        changed, so a reader may keep it while it walks the records."""
        self.expire()
        return self._hostnames()

    def rows(self, hostnames: list[str], pick: View | None) -> list[Row]:
        """The discoveries among `hostnames` that `pick` keeps (all when None), as the
        dicts orjson encodes; records gone meanwhile are skipped."""
        records = self._records
        rows: list[Row] = []
        add = rows.append
        for hostname in hostnames:
            record = records.get(hostname)
            if record is None:
                continue
            labels = record.labels if pick is None else pick(record.labels)
            if labels is not None:
                add({"hostname": hostname, "labels": labels, "last_check": record.last_check})
        return rows

    def slices(self, hostnames: list[str], pick: View | None) -> Iterator[list[Row]]:
        """`rows` of `hostnames`, SLICE at a time: a stream may outlive a TTL deadline
        between slices, so each slice expires first."""
        for start in range(0, len(hostnames), SLICE):
            self.expire()
            yield self.rows(hostnames[start : start + SLICE], pick)

    async def sweep(self, clean_every: float) -> None:
        """Expire records at their exact deadline, forever (CLEAN_EVERY caps the sleep)."""
        while True:
            wait = self.next_expiry()
            await asyncio.sleep(clean_every if wait is None else min(wait + 0.001, clean_every))
            self.expire()


@contextlib.contextmanager
def _no_gc() -> Iterator[None]:
    """No cyclic garbage collection while a list of (acyclic) Discovery objects is built.

    Building one per node triggers the collector, which walks every object of the
    registry each time: at 50,000 nodes the snapshot a template render takes on the
    loop held it 120 ms, 45 without (bench/README.md, "Templates"). Nothing here makes
    a cycle, so nothing is left for later; the collector runs again at the next
    allocations after this."""
    if not gc.isenabled():  # someone up the stack paused it: leave it to them
        yield
        return
    gc.disable()
    try:
        yield
    finally:
        gc.enable()
