"""Agents ask, listeners answer (SPEC §20).

An **agent** (LISTEN=false) hears no keep-alive: its API's cluster reads are asked of a
listener over the broker. `Asker.ask` sends one `lobby.core.query.Query` and waits for
the whole reply (`Reassembly`): 1 s a try (a blocking query: its `wait`, its jitter and
1 s). A silent or failed try is tried once more, on another listener: on NATS through the
queue group again and, at the same time, by name (`<subject>.query.<hostname>`) to the
listener that answered this agent last (within 10 s), the first whole reply winning
(the queue group alone could pick the silent one again: a stopped process keeps its
subscriptions until the server gives up on it, minutes later); on Redis the query's
hash moves on with `try`. "No responders" is retried at once. When nobody
answers, `NoAnswer` says so: the API answers 503 `no listener answered (tried N)`.

A **listener** (LISTEN=true) answers them through its own API (the `answer` it is
given: the same cached bytes its HTTP clients get), in a task per query, once it has
listened for KEEP_ALIVE + 1 s since its link came up (`Responder.warm`): before that its
view may miss nodes, so it leaves queries to the others. Its link dropping stops it
taking queries until it is warm again.

Redis has no queue groups: every listener hears every query (`fanout`), and the
listeners agree among themselves which one answers. Each warm listener says hello
(`lobby.core.query.Hello`, `{"v": 1, "listener": "<hostname>"}`) to the others at once and
then every KEEP_ALIVE, on a side channel of their own (`Driver.tell`; Redis:
`<REDIS_CHANNEL>:listeners`), and `"bye": true` when it stops. Every listener hears them
from the moment its link is up (`Driver.hear`), so by the time it is warm, KEEP_ALIVE + 1 s
later, it knows every warm listener. The live ones are those heard within HEARD_FOR x
KEEP_ALIVE (a hello's own clock, injectable); the query's id, hashed (crc32), picks one of
them in sorted order, and `try` moves the pick to the next one. Views that differ for a
moment (a listener warming up, stopping or dying) may make two answer (the agent takes
the first whole reply and drops the rest) or none (the retry goes to the next). A
listener killed without its bye is dropped after HEARD_FOR x KEEP_ALIVE; until then the
queries that hash to it are answered by the retry, after its 1 s.

SPEC §20 suggests `"listener": true` in the announcements instead. The side channel
keeps the main channel exactly as Go peers know it, needs no change to the packet model
or to signing, and tells who is *warm* (taking queries), which an announcement's flag
would say only of listeners that may still be warming up. It costs each listener one
message per KEEP_ALIVE per listener: nothing beside the N announcements.

Both ends count and time what they do (`/v1/stats` "queries", `lobby_queries_total`,
`lobby_query_seconds`).
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import os
import time
import zlib
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Final, Protocol

from lobby.core.query import (
    Hello,
    NoAnswer,
    Query,
    QueryError,
    Reassembly,
    Reply,
    encode_reply,
)
from lobby.drivers.base import DriverError, NoListener, Replier
from lobby.node.link import Link
from lobby.system.ratelimit import RateLimitedLog

log = logging.getLogger("lobby")

TRY_SECONDS: Final = 1.0  # each try of a query, past a blocking query's own wait
TRIES: Final = 2  # the first and one retry
RECENT: Final = 10.0  # a listener that answered this recently takes a retry by name
MAX_WAIT: Final = 600.0  # a blocking query's longest wait (lobby.view.feed)
DEFAULT_WAIT: Final = 300.0
# fanout: a listener counts as live this many KEEP_ALIVEs after its last hello
HEARD_FOR: Final = 3
# how long a stopping listener's bye may take
BYE_SECONDS: Final = 0.5

Observe = Callable[[str, str, float], None]  # role, result, seconds (lobby.ops.metrics)


def blocking_wait(query: bytes) -> float | None:
    """A blocking query's wait in seconds, the most a listener may hold it (its jitter of
    up to 1/16 included), or None for a query that is not held."""
    from urllib.parse import parse_qsl

    if b"index" not in query:
        return None
    params = dict(parse_qsl(query.decode("latin-1"), keep_blank_values=True))
    if "index" not in params:
        return None
    wait = DEFAULT_WAIT
    if "wait" in params:
        from lobby.view.feed import parse_wait

        try:
            wait = parse_wait(params["wait"])
        except ValueError:
            return 0.0  # the listener answers 400 at once
    return min(wait, MAX_WAIT) * 17 / 16


@dataclass
class _Counts:
    answered: int = 0
    failed: int = 0
    seconds: float = 0.0
    by_listener: dict[str, list[float]] = field(default_factory=dict)  # name: [n, seconds]


class Asker:
    """An agent's side: asks listeners over the first link that is up."""

    def __init__(
        self,
        links: Sequence[Link],
        *,
        try_seconds: float = TRY_SECONDS,
        tries: int = TRIES,
    ) -> None:
        self.links = links
        self.try_seconds = try_seconds
        self.tries = tries
        self.observe: Observe | None = None
        self.counts = _Counts()
        self.retries = 0
        self.no_answer = 0
        self.bad_replies = 0
        self.last_ok: float | None = None  # time.monotonic() of the last answer
        self.last_failed: float | None = None
        self.last_listener = ""  # who answered last
        self._ids = itertools.count(1)
        self._prefix = os.urandom(6).hex()
        self._log = RateLimitedLog(log, burst=3, every=30)

    def _link(self) -> Link | None:
        for link in self.links:
            if link.driver.connected:
                return link
        return None

    async def ask(self, method: str, path: str, query: bytes = b"", gzip: bool = False) -> Reply:
        """The reply of a listener, or NoAnswer after `tries` tries."""
        started = time.perf_counter()
        held = blocking_wait(query)
        budget = self.try_seconds + (held or 0.0)
        qid = f"{self._prefix}{next(self._ids)}"
        tried = 0
        for attempt in range(self.tries):
            tried += 1
            if attempt:
                self.retries += 1
            link = self._link()
            if link is None:
                continue
            request = Query(qid, method, path, query, gzip, attempt).encode()
            # a retry goes to the queue group again and, where the broker addresses a
            # listener by name (NATS), to the one that answered last: the group could
            # pick the silent one again; the first whole reply wins
            targets = [""]
            if attempt and not link.driver.fanout and (recent := self._recent()):
                targets.append(recent)
            try:
                reply = await self._try_any(link, qid, request, budget, targets)
            except NoListener:
                continue  # nobody takes queries now: the next try goes at once
            except (DriverError, TimeoutError) as exc:
                self._log(logging.INFO, "a query to a listener failed: %s", exc or "no answer")
                continue
            self._done("ok", started, reply.listener)
            return reply
        self.no_answer += 1
        self._done("no_listener", started)
        raise NoAnswer(tried)

    def _recent(self) -> str:
        """The listener that answered last, if it did within RECENT seconds."""
        if self.last_listener and time.monotonic() - (self.last_ok or 0.0) <= RECENT:
            return self.last_listener
        return ""

    async def _try_any(
        self, link: Link, qid: str, request: bytes, budget: float, targets: list[str]
    ) -> Reply:
        if len(targets) == 1:
            return await self._try(link, qid, request, budget, targets[0])
        tries = [asyncio.ensure_future(self._try(link, qid, request, budget, to)) for to in targets]
        failure: BaseException | None = None
        try:
            for done in asyncio.as_completed(tries):
                try:
                    return await done
                except (NoListener, DriverError, TimeoutError) as exc:
                    failure = exc
            assert failure is not None
            raise failure
        finally:
            for one in tries:
                one.cancel()

    async def _try(self, link: Link, qid: str, request: bytes, budget: float, to: str) -> Reply:
        inbox = await link.driver.ask(request, to)
        try:
            whole = Reassembly(qid)
            async with asyncio.timeout(budget):
                while True:
                    message = await inbox.get()
                    try:
                        reply = whole.add(message)
                    except QueryError as exc:
                        self.bad_replies += 1
                        self._log(logging.WARNING, "dropped a malformed query reply: %s", exc)
                        continue
                    if reply is not None:
                        return reply
        finally:
            inbox.close()

    def _done(self, result: str, started: float, listener: str = "") -> None:
        seconds = time.perf_counter() - started
        counts = self.counts
        if result == "ok":
            counts.answered += 1
            counts.seconds += seconds
            self.last_ok = time.monotonic()
            self.last_listener = listener
            one = counts.by_listener.setdefault(listener, [0, 0.0])
            one[0] += 1
            one[1] += seconds
        else:
            counts.failed += 1
            self.last_failed = time.monotonic()
        if self.observe is not None:
            self.observe("agent", result, seconds)

    def reachable(self, within: float) -> bool | None:
        """Whether a listener answered the last query, if one was asked in the last
        `within` seconds (else None: nothing recent is known)."""
        now = time.monotonic()
        last = max(self.last_ok or 0.0, self.last_failed or 0.0)
        if not last or now - last > within:
            return None
        return self.last_ok is not None and self.last_ok >= last

    def stats(self) -> dict[str, Any]:
        counts = self.counts
        return {
            "role": "agent",
            "answered": counts.answered,
            "failed": counts.failed,
            "retries": self.retries,
            "bad_replies": self.bad_replies,
            "seconds_avg": round(counts.seconds / counts.answered, 6) if counts.answered else None,
            "listeners": {
                name: {"answered": int(n), "seconds_avg": round(s / n, 6)}
                for name, (n, s) in sorted(counts.by_listener.items())
            },
        }


class Answerer(Protocol):
    def __call__(self, query: Query) -> Awaitable[Reply]: ...


class Responder:
    """A listener's side: takes queries on every link once warm, answers each."""

    def __init__(
        self,
        links: Sequence[Link],
        answer: Answerer,
        *,
        warm_after: float,
        keep_alive: float,
        hostname: Callable[[], str],
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        """`warm_after`: KEEP_ALIVE + 1 s; over fanout drivers a hello goes out every
        `keep_alive` seconds and holds HEARD_FOR of them on `clock`."""
        self.links = links
        self.answer = answer
        self.warm_after = warm_after
        self.keep_alive = keep_alive
        self.hostname = hostname
        self.clock = clock
        self.observe: Observe | None = None
        self.answered = 0
        self.failed = 0
        self.skipped = 0  # fanout: another listener's turn
        self.bad_queries = 0
        self.bad_hellos = 0
        self.seconds = 0.0
        self._warming: dict[int, asyncio.Task[None]] = {}
        self._warm: set[int] = set()
        self._hellos: dict[int, asyncio.Task[None]] = {}  # fanout: saying hello, per link
        self._heard: dict[int, dict[str, float]] = {}  # fanout: hostname: last hello, per link
        self._tasks: set[asyncio.Task[None]] = set()
        self._log = RateLimitedLog(log, burst=3, every=30)

    @property
    def warm(self) -> bool:
        """Whether this listener takes queries on some link."""
        return bool(self._warm)

    def link_changed(self, link: Link, up: bool) -> None:
        """A link came up (warm up, then take queries) or went down (stop taking them)."""
        key = id(link)
        for tasks in (self._warming, self._hellos):
            task = tasks.pop(key, None)
            if task is not None:
                task.cancel()
        self._warm.discard(key)
        self._heard.pop(key, None)  # heard afresh while warming up
        if up:
            if link.driver.fanout:
                link.driver.hear(lambda data: self.heard(link, data))
            self._warming[key] = self._spawn(self._warm_up(link))
        else:
            self._spawn(link.driver.stop_serving())

    async def _warm_up(self, link: Link) -> None:
        await asyncio.sleep(self.warm_after)
        self._warming.pop(id(link), None)
        if not link.up:
            return
        await link.driver.serve_queries(
            lambda data, reply: self.on_query(link, data, reply), self.hostname()
        )
        self._warm.add(id(link))
        if link.driver.fanout:
            self._hellos[id(link)] = self._spawn(self._say_hello(link))
        log.info("taking agents' queries on %s", link.name)

    async def _say_hello(self, link: Link) -> None:
        """Fanout: tell the other listeners that this one is warm, now and every
        KEEP_ALIVE, until the link drops or the listener stops."""
        while True:
            try:
                await link.driver.tell(Hello(self.hostname()).encode())
            except DriverError as exc:  # the link is going down: its report follows
                log.debug("cannot say hello to the listeners on %s: %s", link.name, exc)
            await asyncio.sleep(self.keep_alive)

    def heard(self, link: Link, data: bytes) -> None:
        """Fanout: a listener's hello (or bye), this one's own included."""
        try:
            hello = Hello.decode(data)
        except QueryError as exc:
            self.bad_hellos += 1
            self._log(logging.WARNING, "dropped a malformed listener hello: %s", exc)
            return
        heard = self._heard.setdefault(id(link), {})
        if hello.bye:
            heard.pop(hello.listener, None)
        else:
            heard[hello.listener] = self.clock()

    def listeners(self, link: Link) -> list[str]:
        """Fanout: the warm listeners on `link`, sorted: those heard of late, and this one
        while it is warm there (never while it is not, though its last hello is fresh)."""
        key = id(link)
        heard = self._heard.get(key, {})
        oldest = self.clock() - HEARD_FOR * self.keep_alive
        for name in [name for name, at in heard.items() if at < oldest]:
            del heard[name]  # silent too long: gone
        live = set(heard)
        me = self.hostname()
        if key in self._warm:
            live.add(me)
        else:
            live.discard(me)
        return sorted(live)

    def on_query(self, link: Link, data: bytes, reply: Replier) -> None:
        try:
            query = Query.decode(data)
        except QueryError as exc:
            self.bad_queries += 1
            self._log(logging.WARNING, "dropped a malformed query: %s", exc)
            return
        if link.driver.fanout and not self._my_turn(link, query):
            self.skipped += 1
            return
        self._spawn(self._answer(query, reply))

    def _my_turn(self, link: Link, query: Query) -> bool:
        """Fanout: whether the query's hash, moved on by its `try`, picks this listener
        among the warm ones."""
        live = self.listeners(link)
        me = self.hostname()
        if me not in live:
            return False
        pick = (zlib.crc32(query.id.encode()) + query.attempt) % len(live)
        return live[pick] == me

    async def _answer(self, query: Query, reply: Replier) -> None:
        started = time.perf_counter()
        result = "ok"
        try:
            answer = await self.answer(query)
            answer.listener = self.hostname()
            await reply(encode_reply(query.id, answer))
            self.answered += 1
        except Exception as exc:
            result = "failed"
            self.failed += 1
            self._log(logging.WARNING, "answering a query failed: %r", exc)
        seconds = time.perf_counter() - started
        self.seconds += seconds
        if self.observe is not None:
            self.observe("listener", result, seconds)

    def _spawn(self, coro: Any) -> asyncio.Task[Any]:
        task: asyncio.Task[Any] = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    def stats(self) -> dict[str, Any]:
        fanout = [link for link in self.links if link.driver.fanout]
        return {
            "role": "listener",
            "warm": self.warm,
            "answered": self.answered,
            "failed": self.failed,
            "skipped_other_listener": self.skipped,
            "bad_queries": self.bad_queries,
            "seconds_avg": round(self.seconds / self.answered, 6) if self.answered else None,
            # over fanout brokers (Redis): the warm listeners this one picks among
            "fanout_listeners": sorted({n for link in fanout for n in self.listeners(link)}),
            "bad_hellos": self.bad_hellos,
        }

    def close(self) -> None:
        for task in self._tasks:
            task.cancel()

    async def leave(self) -> None:
        """Stop taking queries on every link. Over fanout brokers the bye goes first,
        so the others take this listener's share at once instead of after HEARD_FOR x
        KEEP_ALIVE (their retries meanwhile)."""
        self.close()
        for link in self.links:
            if id(link) in self._warm and link.driver.fanout:
                try:
                    async with asyncio.timeout(BYE_SECONDS):
                        await link.driver.tell(Hello(self.hostname(), bye=True).encode())
                except (DriverError, TimeoutError) as exc:
                    log.debug("cannot say goodbye to the listeners on %s: %r", link.name, exc)
        self._warm.clear()
        for link in self.links:
            await link.driver.stop_serving()


__all__ = ["Asker", "NoAnswer", "Responder", "blocking_wait"]
