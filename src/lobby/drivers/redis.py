"""Redis transport on redis.asyncio (hiredis parser).

The main topic is PUBLISH/SUBSCRIBE on REDIS_CHANNEL, where Go peers listen; the sync
topic is `<REDIS_CHANNEL>:sync`, which only Python peers use. Envelopes are opaque bytes.

Agents' queries (SPEC §20) use three more channels beside them, which Go peers never
see. Every message is opaque bytes with a first line of our own (a channel name holds
no newline):

- `<REDIS_CHANNEL>:query`, subscribed by warm listeners only (`serve_queries`, undone by
  `stop_serving`): a query is `<reply channel> <token>\n<query bytes>`. PUBLISH answers
  how many subscribers took it, so 0 means no warm listener: the asker's inbox raises
  NoListener at once, as NATS's "no responders" does. Every listener hears every query
  (`fanout`): `lobby.node.queries` says which one answers.
- `<REDIS_CHANNEL>:reply:<random id>`, one per driver, subscribed at connect: each reply
  message is published there (pipelined) as `<token>\n<reply message>`, and the token
  routes it to the inbox of that one `ask`, as NATS's per-request inbox does: a late
  reply to an earlier try never mixes its chunks into the retry's. One plain channel per
  node, never a pattern (Redis matches every PUBLISH against every pattern).
- `<REDIS_CHANNEL>:listeners`, subscribed by listeners at connect, even while they warm
  up: what listeners `tell` each other (their hellos), handed to the `hear` handler.

An agent (`listen=False`) subscribes to its reply channel only; a listener to the
discovery, sync, listeners and reply channels at connect, and to the query channel once
warm. The watchdog below works the same on one channel as on four.

Two links to Redis:

- One subscription connection, owned by this module. redis-py's PubSub reconnects
  and resubscribes behind our back (so the daemon would never hear that its link
  dropped) and spends several awaits, a dict and an observability hook on every
  message. We use a bare `Connection` instead: SUBSCRIBE, then a loop over
  `read_response()` that hands each message to the daemon synchronously. A sibling
  watchdog PINGs every second; three silent seconds (no message, no PONG) mean a
  dead link, since a cut network can leave a TCP connection looking open for minutes.
  Any failure ends the session: we report the link down, log one line, and reconnect
  with back-off forever (lobby.backoff: 0.1 s doubling to 10 s with jitter; the
  failures logged each of the first five, then once per doubling interval).
- A small pool for PUBLISH, with short timeouts, so an announcement never waits on
  the subscription and never blocks for long when Redis is away.

Both speak RESP2, which every Redis version understands (redis-py 8 defaults to
RESP3, where pub/sub messages arrive as push replies).

`dropped` stays 0: a Redis client never drops messages itself. Redis instead closes a
subscriber whose output buffer overflows (`client-output-buffer-limit pubsub`,
32mb hard / 8mb for 60 s by default), so falling behind shows up as a disconnect.
We notice it after reconnecting: Redis is still the same process (same run_id), so it
dropped us, and we log that this node possibly fell behind and lost messages.

REDIS_DB is selected on both connections, as the Go implementation does, but Redis
pub/sub ignores databases: every db on a server shares one set of channels.

Both links authenticate the same way (AUTH [username] password, an ACL user with
REDIS_USERNAME) and, with `tls`, speak TLS (redis-py's SSLConnection: the server's
certificate is verified against `ssl_ca_certs` or the system CAs, and its name
checked; a client certificate is sent when given).

With Sentinel (REDIS_SENTINELS, SPEC §15) the master's address is not configured but
asked for: each session starts with `SENTINEL get-master-addr-by-name` on the first
Sentinel that answers, checks with ROLE that the server really is the master, and
moves the publishing pool there too. A failover then needs no restart: when the master
dies the subscription breaks and the next session asks again (with the usual back-off
while the Sentinels are still electing). To move without waiting for that, a side task
subscribes to the Sentinels' `+switch-master` event: a switch ends the current session
(also when the old master lives on as a replica, which would still feed us messages
but not pass ours on) and wakes the back-off. Every switch is logged. That watch has a
watchdog too (a PING every SENTINEL_PING_EVERY s, SENTINEL_DEAD_AFTER silent ones): a
silent Sentinel is left for the next, which is asked where the master is at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import os
import ssl
from collections.abc import Callable, Sequence
from typing import Any

from redis.asyncio.client import Redis
from redis.asyncio.connection import Connection, SSLConnection
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import AuthenticationError, RedisError, ResponseError
from redis.exceptions import ConnectionError as RedisConnectionError

from lobby.drivers.backoff import Backoff, BackoffLog
from lobby.drivers.base import (
    BatchHandler,
    DriverError,
    Inbox,
    LinkHandler,
    MessageHandler,
    QueryHandler,
    QueueInbox,
    Replier,
    ToldHandler,
    Topic,
    deliverer,
)
from lobby.system.ratelimit import RateLimitedLog

log = logging.getLogger("lobby.redis")

# the Sentinel watch's own back-off between Sentinels (the link's is lobby.backoff)
BACKOFF_MIN = 0.2
BACKOFF_MAX = 2.0
# The Sentinel watch's watchdog: PING the Sentinel every SENTINEL_PING_EVERY seconds;
# SENTINEL_DEAD_AFTER ticks in a row without a reply or a message mean a silent
# Sentinel (stopped, or its packets dropped), which would miss a failover: the watch
# moves to the next one.
SENTINEL_PING_EVERY = 1.0
SENTINEL_DEAD_AFTER = 3

# Connect, authenticate and subscribe within this.
CONNECT_TIMEOUT = 2.0
# A publish gives up after this (socket timeouts are 1 s, one retry on a stale socket).
PUBLISH_TIMEOUT = 2.0
SOCKET_TIMEOUT = 1.0
# Dead-link detection: PING the subscription every PING_EVERY seconds; DEAD_AFTER
# ticks in a row without any reply or message mean the link is dead. Counting ticks,
# not seconds, keeps a busy event loop from looking like a dead link.
PING_EVERY = 1.0
DEAD_AFTER = 3


def _auth_failure(exc: BaseException) -> bool:
    """The server refused our credentials."""
    return isinstance(exc, AuthenticationError) or (
        isinstance(exc, ResponseError) and str(exc).startswith(("WRONGPASS", "NOAUTH", "NOPERM"))
    )


def _tls_failure(exc: BaseException, over_tls: bool) -> bool:
    """A TLS failure, possibly wrapped by redis-py in a ConnectionError.

    Over TLS, a connection reset while connecting counts too: a server that refuses
    our client certificate (or its absence) sends an alert and closes, and when our
    first command is still unread there, its kernel resets the connection, so the
    alert may be lost to the reset (seen under load)."""
    seen: BaseException | None = exc
    while seen is not None:
        if isinstance(seen, ssl.SSLError) or "[SSL" in str(seen):
            return True
        if over_tls and isinstance(seen, ConnectionResetError):
            return True
        seen = seen.__cause__ or seen.__context__
    return False


class LinkDead(Exception):
    """The subscription stopped answering PINGs."""


class Silence:
    """A watchdog's count of ticks without a sign of life: pure, no clock.

    `heard()` on every reply or message; `tick()` once per PING interval, True when
    `limit` ticks in a row passed without anything heard. Counting ticks, not
    seconds, keeps a busy event loop from looking like a dead link.
    """

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.silent = 0  # ticks in a row without a sign of life
        self._heard = 0
        self._seen = 0

    def heard(self) -> None:
        self._heard += 1

    def tick(self) -> bool:
        if self._heard != self._seen:
            self._seen = self._heard
            self.silent = 0
            return False
        self.silent += 1
        return self.silent >= self.limit


class MasterMoved(Exception):
    """Sentinel announced a new master: the session must move there."""


class NoMaster(ConnectionError):
    """No Sentinel named the master, or the server named is not (or no longer) it."""


def describe(exc: BaseException) -> str:
    if isinstance(exc, TimeoutError) and not str(exc):
        return "timed out"
    return str(exc) or type(exc).__name__


class RedisDriver:
    def __init__(
        self,
        *,
        host: str = "127.0.0.1",
        port: int = 6379,
        db: int = 0,
        password: str = "",
        channel: str = "lobby:discovery",
        username: str = "",
        tls: dict[str, Any] | None = None,
        sentinels: Sequence[tuple[str, int]] = (),
        sentinel_master: str = "mymaster",
        sentinel_username: str | None = None,
        sentinel_password: str | None = None,
        sentinel_tls: dict[str, Any] | None = None,
        backoff: Backoff | None = None,
        sentinel_ping_every: float = SENTINEL_PING_EVERY,
        sentinel_dead_after: int = SENTINEL_DEAD_AFTER,
        listen: bool = True,
    ) -> None:
        """`tls`: None for plain TCP, else redis-py's SSL options (`ssl_ca_certs`,
        `ssl_certfile`, `ssl_keyfile`), {} for TLS with the system CAs. `sentinel_tls`
        is the same for the Sentinels, `sentinel_username` and `sentinel_password`
        their credentials. The watched Sentinel is PINGed every `sentinel_ping_every`
        seconds and given up after `sentinel_dead_after` silent ones."""
        self.channels: dict[Topic, str] = {"discovery": channel, "sync": f"{channel}:sync"}
        self.listen = listen  # False: an agent (SPEC §20)
        self.fanout = True  # every listener hears every query (lobby.node.queries)
        self._topic_of: dict[bytes, Topic] = {
            name.encode(): topic for topic, name in self.channels.items()
        }
        # agents' queries (SPEC §20): see the module's docstring
        self.query_channel = f"{channel}:query".encode()
        self.listeners_channel = f"{channel}:listeners".encode()
        self._reply_prefix = f"{channel}:reply:".encode()
        self.reply_channel = self._reply_prefix + os.urandom(8).hex().encode()
        # what the subscription connection subscribes to at connect
        self._at_connect: list[bytes] = [self.reply_channel]
        if listen:
            self._at_connect[:0] = [*self._topic_of, self.listeners_channel]
        self._inboxes: dict[bytes, QueueInbox] = {}  # token: the inbox of one ask
        self._tokens = itertools.count(1)
        self._on_query: QueryHandler | None = None
        self._on_told: ToldHandler | None = None
        self._conn: Connection | None = None  # the session's subscription, once subscribed
        self._query_conn: Connection | None = None  # that one, once it takes queries
        self.dropped = 0
        self._conn_args: dict[str, Any] = {
            "host": host,
            "port": port,
            "db": db,
            "username": username or None,
            "password": password or None,
            "protocol": 2,
            **(tls or {}),
        }
        self._scheme = "rediss" if tls is not None else "redis"
        self._tls = tls is not None
        self._connection_class: type[Connection] = Connection if tls is None else SSLConnection
        self._sentinels = list(sentinels)
        self._master_name = sentinel_master
        # Sentinels have no database, and not the master's user and password
        self._sentinel_args: dict[str, Any] = {
            "username": sentinel_username,
            "password": sentinel_password,
            **(sentinel_tls or {}),
        }
        self._sentinel_class: type[Connection] = (
            Connection if sentinel_tls is None else SSLConnection
        )
        self._master: tuple[str, int] | None = None if sentinels else (host, port)
        self._moved = asyncio.Event()  # Sentinel switched the master away from _master
        self._sentinel_task: asyncio.Task[None] | None = None
        self._sentinel_ping_every = sentinel_ping_every
        self._sentinel_dead_after = sentinel_dead_after
        self._silent_sentinel_log = RateLimitedLog(log, burst=5, every=60)
        if sentinels:
            shown = ",".join(_host_port(h, p) for h, p in sentinels)
            self.address = f"sentinel://{shown}/{sentinel_master}"  # until it answers
        else:
            self.address = f"{self._scheme}://{_host_port(host, port)}/{db}"
        self._publisher = self._make_publisher()
        self._on_message: MessageHandler | None = None
        self._on_batch: BatchHandler | None = None
        self._on_link: LinkHandler | None = None
        self._task: asyncio.Task[None] | None = None
        self._up = False
        self._closing = False
        self._heard = 0  # messages and PONGs read: the watchdog's sign of life
        self._run_id: bytes | None = None  # the server process we last subscribed on
        self._dropped_by_server = False
        self._backoff = backoff if backoff is not None else Backoff()
        self._fail_log = BackoffLog(log)
        self._lost_log = RateLimitedLog(log, burst=5, every=30)  # a link that keeps flapping
        self._handler_log = RateLimitedLog(log, burst=5, every=30)

    @property
    def connected(self) -> bool:
        return self._up

    async def start(
        self,
        on_message: MessageHandler,
        on_link: LinkHandler,
        on_batch: BatchHandler | None = None,
    ) -> None:
        self._on_message = on_message
        self._on_batch = on_batch
        self._on_link = on_link
        self._task = asyncio.create_task(self._run(), name="redis-link")
        if self._sentinels:
            self._sentinel_task = asyncio.create_task(
                self._watch_failovers(), name="redis-sentinel"
            )

    def _make_publisher(self) -> Redis:
        return Redis(
            **self._conn_args,
            ssl=self._tls,
            socket_timeout=SOCKET_TIMEOUT,
            socket_connect_timeout=SOCKET_TIMEOUT,
            retry=Retry(NoBackoff(), 1),
        )

    def _link(self, up: bool) -> None:
        if self._on_link is None or self._closing:
            return
        try:
            self._on_link(up)
        except Exception:  # the daemon's bug must not stop reconnecting
            log.exception("Redis link handler failed")

    async def _run(self) -> None:
        while True:
            try:
                await self._session()
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                delay = self._backoff.next()  # reset when the link comes up
                if self._up:
                    self._up = False
                    self._link(False)
                    self._dropped_by_server = not isinstance(
                        exc, LinkDead | TimeoutError | MasterMoved
                    )
                    self._lost_log(
                        logging.WARNING,
                        "lost Redis connection %s: %s; reconnecting",
                        self.address,
                        describe(exc),
                    )
                else:
                    self._report_failure(exc, delay)
            # a failover announced by Sentinel cuts the wait short
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(delay):  # not wait_for: see lobby.feed
                    await self._moved.wait()

    def _report_failure(self, exc: Exception, delay: float) -> None:
        if _auth_failure(exc):
            self._fail_log(
                logging.ERROR,
                "Redis %s refused our credentials: %s (check REDIS_USERNAME and "
                "REDIS_PASSWORD); retrying in %.1f s",
                self.address,
                describe(exc),
                delay,
            )
        elif _tls_failure(exc, self._tls):
            self._fail_log(
                logging.ERROR,
                "TLS with Redis %s failed: %s (check REDIS_CA, REDIS_CERT and REDIS_KEY); "
                "retrying in %.1f s",
                self.address,
                describe(exc),
                delay,
            )
        elif isinstance(exc, NoMaster):
            self._fail_log(
                logging.WARNING,
                "cannot find the Redis master %r: %s; retrying in %.1f s",
                self._master_name,
                describe(exc),
                delay,
            )
        elif isinstance(exc, RedisError | OSError | TimeoutError):
            self._fail_log(
                logging.WARNING,
                "cannot connect to Redis %s: %s; retrying in %.1f s",
                self.address,
                describe(exc),
                delay,
            )
        else:  # a bug: say what it was, keep going
            self._fail_log(logging.ERROR, "Redis link failed unexpectedly: %r", exc)
            log.debug("Redis link failure", exc_info=exc)

    async def _session(self) -> None:
        """Connect, subscribe and read until the link fails; always ends by raising."""
        self._moved.clear()
        if self._sentinels:
            await self._find_master()
        conn = self._connection_class(
            **self._conn_args, socket_timeout=None, retry=Retry(NoBackoff(), 0)
        )
        try:
            async with asyncio.timeout(CONNECT_TIMEOUT):
                await conn.connect()  # type: ignore[no-untyped-call]
                if self._sentinels:
                    await self._check_role(conn)
                run_id = await self._server_run_id(conn)
                await conn.send_command("SUBSCRIBE", *self._at_connect)
                for _ in self._at_connect:
                    reply = await conn.read_response(disconnect_on_error=False)
                    if not isinstance(reply, list) or reply[0] != b"subscribe":
                        raise ResponseError(f"unexpected reply to SUBSCRIBE: {reply!r}")
            self._conn = conn
            self._subscribed(run_id)
            reader = asyncio.create_task(self._read(conn), name="redis-read")
            watchdog = asyncio.create_task(self._watchdog(conn), name="redis-ping")
            moved = asyncio.create_task(self._moved.wait(), name="redis-moved")
            try:
                done, _ = await asyncio.wait(
                    {reader, watchdog, moved}, return_when=asyncio.FIRST_COMPLETED
                )
            finally:
                reader.cancel()
                watchdog.cancel()
                moved.cancel()
                await asyncio.gather(reader, watchdog, moved, return_exceptions=True)
            for task in (reader, watchdog):
                if task in done:
                    task.result()
            if moved in done:
                raise MasterMoved("Sentinel switched the master")
            raise ConnectionError("subscription ended")  # unreachable: both loop forever
        finally:
            self._conn = self._query_conn = None  # a new session takes queries once warm
            await conn.disconnect(nowait=True)

    # -- Sentinel ---------------------------------------------------------------------

    async def _find_master(self) -> None:
        """Ask the Sentinels where the master is; move both connections there."""
        host, port = await self._ask_sentinels()
        if (host, port) == self._master:
            return
        old, self._master = self._master, (host, port)
        self._conn_args.update(host=host, port=port)
        self.address = f"{self._scheme}://{_host_port(host, port)}/{self._conn_args['db']}"
        publisher, self._publisher = self._publisher, self._make_publisher()
        with contextlib.suppress(Exception):
            async with asyncio.timeout(0.2):
                await publisher.aclose()
        if old is None:
            log.info("Redis Sentinel: master %r is %s", self._master_name, self.address)
        else:
            log.warning(
                "Redis Sentinel: master %r moved from %s to %s",
                self._master_name,
                _host_port(*old),
                _host_port(host, port),
            )

    def _sentinel_connection(self, host: str, port: int) -> Connection:
        return self._sentinel_class(
            host=host,
            port=port,
            protocol=2,
            socket_timeout=None,
            socket_connect_timeout=SOCKET_TIMEOUT,
            retry=Retry(NoBackoff(), 0),
            **self._sentinel_args,
        )

    async def _ask_sentinels(self) -> tuple[str, int]:
        problems = []
        over_tls = self._sentinel_class is SSLConnection
        for host, port in self._sentinels:
            try:
                master = await self._ask_sentinel(host, port)
            except (RedisError, OSError, TimeoutError) as exc:
                problems.append(
                    f"Sentinel {_host_port(host, port)}: {_sentinel_problem(exc, over_tls)}"
                )
                continue
            if master is not None:
                return master
            problems.append(f"Sentinel {_host_port(host, port)} does not know it")
        raise NoMaster("; ".join(problems))

    async def _ask_sentinel(self, host: str, port: int) -> tuple[str, int] | None:
        """The master's address as one Sentinel tells it; None if it does not know it."""
        conn = self._sentinel_connection(host, port)
        try:
            async with asyncio.timeout(SOCKET_TIMEOUT):
                await conn.connect()  # type: ignore[no-untyped-call]
                ask = ("SENTINEL", "get-master-addr-by-name", self._master_name)
                await conn.send_command(*ask)
                reply = await conn.read_response(disconnect_on_error=False)
        finally:
            await conn.disconnect(nowait=True)
        if isinstance(reply, list) and len(reply) == 2:
            return bytes(reply[0]).decode(), int(reply[1])
        return None

    async def _check_role(self, conn: Connection) -> None:
        """Refuse a server that is not the master (any more): ask the Sentinels again."""
        await conn.send_command("ROLE")
        try:
            role = await conn.read_response(disconnect_on_error=False)
        except ResponseError:  # ROLE denied by an ACL: trust the Sentinels
            return
        if isinstance(role, list) and role and role[0] != b"master":
            raise NoMaster(f"{self.address} is a {bytes(role[0]).decode()}, not the master")

    async def _watch_failovers(self) -> None:
        """Listen for `+switch-master` on one Sentinel after another, forever.

        A watchdog PINGs the watched Sentinel (RESP2 allows PING in pub/sub mode; the
        answer is a "pong" message): a Sentinel that stops answering (stopped, or its
        packets dropped) is left for the next one. Each time the watch starts on a
        Sentinel, after subscribing, it asks that Sentinel where the master is, so a
        failover announced while no Sentinel was heard is still followed.
        """
        delay = BACKOFF_MIN
        turn = 0
        while True:
            host, port = self._sentinels[turn % len(self._sentinels)]
            conn = self._sentinel_connection(host, port)
            try:
                async with asyncio.timeout(CONNECT_TIMEOUT):
                    await conn.connect()  # type: ignore[no-untyped-call]
                    await conn.send_command("SUBSCRIBE", "+switch-master")
                    await conn.read_response(disconnect_on_error=False)
                master = await self._ask_sentinel(host, port)
                if master is not None and self._master is not None and master != self._master:
                    self._master_moved(master, f"Redis Sentinel {_host_port(host, port)} says")
                delay = BACKOFF_MIN
                await self._listen_to_sentinel(conn)
            except asyncio.CancelledError:
                raise
            except LinkDead as exc:
                self._silent_sentinel_log(
                    logging.WARNING,
                    "Redis Sentinel %s: %s; watching the next Sentinel for failovers",
                    _host_port(host, port),
                    exc,
                )
                turn += 1
            except Exception as exc:  # this Sentinel is away: try the next
                log.debug("Sentinel %s: %s", _host_port(host, port), describe(exc))
                turn += 1
            finally:
                await conn.disconnect(nowait=True)
            await asyncio.sleep(delay)
            delay = min(delay * 2, BACKOFF_MAX)

    async def _listen_to_sentinel(self, conn: Connection) -> None:
        """Hand on `+switch-master` events until the Sentinel fails or falls silent."""
        silence = Silence(self._sentinel_dead_after)
        every = self._sentinel_ping_every

        async def read() -> None:
            while True:
                try:
                    reply = await conn.read_response(disconnect_on_error=False)
                except ResponseError:  # PING refused (an ACL without it): an answer too
                    silence.heard()
                    continue
                silence.heard()  # a message, or the "pong" of our PING
                if isinstance(reply, list) and reply[0] == b"message":
                    self._switched(bytes(reply[2]).decode(errors="replace"))

        async def ping() -> None:
            while True:
                await asyncio.sleep(every)
                if silence.tick():
                    raise LinkDead(f"no reply to PING (silent for {silence.silent * every:g} s)")
                async with asyncio.timeout(every):
                    await conn.send_command("PING", check_health=False)

        reader = asyncio.create_task(read(), name="redis-sentinel-read")
        pinger = asyncio.create_task(ping(), name="redis-sentinel-ping")
        try:
            done, _ = await asyncio.wait({reader, pinger}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            reader.cancel()
            pinger.cancel()
            await asyncio.gather(reader, pinger, return_exceptions=True)
        for task in done:
            task.result()  # raises what ended it
        raise ConnectionError("Sentinel watch ended")  # unreachable: both loop forever

    def _switched(self, event: str) -> None:
        """`+switch-master`: "<name> <old ip> <old port> <new ip> <new port>"."""
        parts = event.split()
        if len(parts) != 5 or parts[0] != self._master_name or not parts[4].isdigit():
            return
        self._master_moved((parts[3], int(parts[4])), "Redis Sentinel reports a failover:")

    def _master_moved(self, new: tuple[str, int], who: str) -> None:
        log.warning("%s master %r is now %s", who, self._master_name, _host_port(*new))
        if new != self._master:
            self._moved.set()

    async def _server_run_id(self, conn: Connection) -> bytes | None:
        """The server's run_id, which changes when Redis restarts; None if INFO is denied."""
        await conn.send_command("INFO", "server")
        try:
            info = await conn.read_response(disconnect_on_error=False)
        except ResponseError:  # e.g. an ACL without INFO: we lose only a log hint
            return None
        for line in bytes(info).splitlines():
            if line.startswith(b"run_id:"):
                return line[7:].strip()
        return None

    def _subscribed(self, run_id: bytes | None) -> None:
        if self._dropped_by_server and run_id is not None and run_id == self._run_id:
            log.warning(
                "Redis %s closed our subscription while it kept running: this node possibly "
                "fell behind (pubsub output buffer over client-output-buffer-limit) and "
                "lost messages",
                self.address,
            )
        self._run_id = run_id
        self._dropped_by_server = False
        self._up = True
        self._backoff.reset()
        failures, took = self._fail_log.success()
        after = f" after {failures} failed attempts in {took:.0f} s" if failures > 1 else ""
        log.info(
            "subscribed to Redis %s channels %s%s",
            self.address,
            ", ".join(name.decode(errors="replace") for name in self._at_connect),
            after,
        )
        self._link(True)

    async def _read(self, conn: Connection) -> None:
        # The hot path: hiredis parses replies out of each socket read, and
        # read_response() returns without suspending while replies are buffered.
        # The replies one read brought are taken from hiredis at once (its `gets()`,
        # which read_response calls too) and handed over together: one call of the
        # daemon's batch handler per topic run instead of one per message.
        read = conn.read_response
        on_message = self._on_message
        assert on_message is not None
        deliver_of: dict[bytes, Callable[[Sequence[bytes]], None]] = {
            # channel -> what hands its messages to the daemon
            channel: deliverer(topic, on_message, self._on_batch, self._handler_failed)
            for channel, topic in self._topic_of.items()
        }
        deliver_of[self.reply_channel] = self._replied
        deliver_of[self.query_channel] = self._queried
        deliver_of[self.listeners_channel] = self._told
        gets, nothing = _parsed_replies(conn)
        while True:
            reply = await read(disconnect_on_error=False)
            self._heard += 1
            batch: list[bytes] = []
            batch_for: Callable[[Sequence[bytes]], None] | None = None
            while True:
                if reply[0] == b"message":
                    deliver = deliver_of[reply[1]]
                    if deliver is not batch_for and batch_for is not None:
                        batch_for(batch)
                        batch = []
                    batch_for = deliver
                    batch.append(reply[2])
                if gets is None:
                    break
                more = gets()
                if more is nothing:  # nothing more parsed: the next read awaits the socket
                    break
                failed = _failure(more)
                if failed is not None:  # raised as read_response raises it
                    if batch_for is not None:
                        batch_for(batch)
                    raise failed
                self._heard += 1
                reply = more
            if batch_for is not None:
                batch_for(batch)

    def _handler_failed(self, exc: Exception) -> None:
        self._handler_log(logging.ERROR, "Redis message handler failed: %r", exc)

    async def _watchdog(self, conn: Connection) -> None:
        last = self._heard
        silent = 0
        while True:
            await asyncio.sleep(PING_EVERY)
            if self._heard != last:
                last = self._heard
                silent = 0
            else:
                silent += 1
                if silent >= DEAD_AFTER:
                    raise LinkDead(f"no reply to PING for {silent * PING_EVERY:.0f} s")
            async with asyncio.timeout(PING_EVERY):
                await conn.send_command("PING", check_health=False)

    async def publish(self, topic: Topic, data: bytes) -> None:
        if not self._up:
            raise DriverError("not connected to Redis")
        try:
            async with asyncio.timeout(PUBLISH_TIMEOUT):
                await self._publisher.publish(self.channels[topic], data)
        except Exception as exc:
            raise DriverError(describe(exc)) from exc

    async def publish_many(self, topic: Topic, items: Sequence[bytes]) -> None:
        """One pipeline of PUBLISH: one round trip for the lot."""
        if not self._up:
            raise DriverError("not connected to Redis")
        channel = self.channels[topic]
        try:
            async with asyncio.timeout(PUBLISH_TIMEOUT):
                pipe = self._publisher.pipeline(transaction=False)
                for data in items:
                    pipe.publish(channel, data)
                await pipe.execute()
        except Exception as exc:
            raise DriverError(describe(exc)) from exc

    async def flush(self, timeout: float) -> None:
        """Nothing to do: Redis acknowledges every PUBLISH before publish() returns."""

    # -- agents' queries (SPEC §20) ---------------------------------------------------

    async def serve_queries(self, on_query: QueryHandler, name: str = "") -> None:
        """SUBSCRIBE the query channel on the live subscription (its confirmation is
        read, and ignored, by `_read`); a new session starts without it."""
        self._on_query = on_query
        conn = self._conn
        if conn is None or conn is self._query_conn or not self._live(conn):
            return
        self._query_conn = conn
        try:
            await conn.send_command("SUBSCRIBE", self.query_channel, check_health=False)
        except Exception as exc:  # the session ends on it, and reports the link down
            log.debug("cannot take queries: %r", exc)

    async def stop_serving(self) -> None:
        conn, self._query_conn = self._query_conn, None
        if conn is None or conn is not self._conn or not self._live(conn):
            return
        with contextlib.suppress(Exception):
            await conn.send_command("UNSUBSCRIBE", self.query_channel, check_health=False)

    def _live(self, conn: Connection) -> bool:
        """Whether a command may go out on the session's subscription: on a connection
        that dropped, redis-py would quietly open a new one (unsubscribed, unwatched)."""
        return self._up and conn.is_connected

    def _queried(self, batch: Sequence[bytes]) -> None:
        on_query = self._on_query
        if on_query is None or self._query_conn is None:
            return  # stopped serving: the UNSUBSCRIBE is on its way
        for message in batch:
            head, nl, data = message.partition(b"\n")
            channel, space, token = head.rpartition(b" ")
            if not nl or not space or not channel.startswith(self._reply_prefix):
                self._handler_log(logging.WARNING, "dropped a malformed Redis query")
                continue
            try:
                on_query(data, self._replier(channel, token))
            except Exception as exc:
                self._handler_failed(exc)

    def _replier(self, channel: bytes, token: bytes) -> Replier:
        prefix = token + b"\n"

        async def reply(messages: Sequence[bytes]) -> None:
            try:
                async with asyncio.timeout(PUBLISH_TIMEOUT):
                    pipe = self._publisher.pipeline(transaction=False)
                    for data in messages:
                        pipe.publish(channel, prefix + data)
                    await pipe.execute()
            except Exception as exc:
                raise DriverError(describe(exc)) from exc

        return reply

    async def ask(self, data: bytes, to: str = "") -> Inbox:
        if not self._up:
            raise DriverError("not connected to Redis")
        token = str(next(self._tokens)).encode()
        inbox = self._inboxes[token] = QueueInbox(
            "no listener takes queries (Redis: nobody subscribed)",
            lambda: self._inboxes.pop(token, None),
        )
        message = b"%s %s\n%s" % (self.reply_channel, token, data)
        try:
            async with asyncio.timeout(PUBLISH_TIMEOUT):
                takers = await self._publisher.publish(self.query_channel, message)
        except Exception as exc:
            inbox.close()
            raise DriverError(describe(exc)) from exc
        if not takers:  # no warm listener is subscribed
            inbox.close()
            inbox.queue.put_nowait(None)
        return inbox

    def _replied(self, batch: Sequence[bytes]) -> None:
        for message in batch:
            token, nl, data = message.partition(b"\n")
            inbox = self._inboxes.get(token)
            if inbox is not None and nl:
                inbox.queue.put_nowait(data)

    async def tell(self, data: bytes) -> None:
        if not self._up:
            raise DriverError("not connected to Redis")
        try:
            async with asyncio.timeout(PUBLISH_TIMEOUT):
                await self._publisher.publish(self.listeners_channel, data)
        except Exception as exc:
            raise DriverError(describe(exc)) from exc

    def hear(self, on_told: ToldHandler) -> None:
        self._on_told = on_told

    def _told(self, batch: Sequence[bytes]) -> None:
        on_told = self._on_told
        if on_told is None:
            return
        for data in batch:
            try:
                on_told(data)
            except Exception as exc:
                self._handler_failed(exc)

    async def close(self) -> None:
        if self._closing:
            return
        self._closing = True
        self._up = False
        tasks = {task for task in (self._task, self._sentinel_task) if task is not None}
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.wait(tasks, timeout=0.3)
        with contextlib.suppress(Exception):
            async with asyncio.timeout(0.2):
                await self._publisher.aclose()


def _sentinel_problem(exc: BaseException, over_tls: bool) -> str:
    """What a Sentinel's refusal means, with the setting to check."""
    text = describe(exc)
    if _auth_failure(exc):
        return f"{text} (check REDIS_SENTINEL_USERNAME and REDIS_SENTINEL_PASSWORD)"
    if _tls_failure(exc, over_tls):
        return f"{text} (check REDIS_SENTINEL_TLS, REDIS_CA, REDIS_CERT and REDIS_KEY)"
    return text


def _host_port(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def _failure(reply: Any) -> RedisConnectionError | None:
    """The error redis-py's read_response raises for this hiredis reply, if any."""
    if isinstance(reply, RedisConnectionError):
        return reply
    if type(reply) is list and reply and isinstance(reply[0], RedisConnectionError):
        return reply[0]
    return None


def _parsed_replies(conn: Connection) -> tuple[Any, object]:
    """hiredis's `gets` for this connection and what it returns when no whole reply is
    buffered (redis-py's own read_response uses the two); (None, None) when the
    connection does not parse with hiredis, or redis-py has moved them: then every
    message is read and handed over on its own, as before."""
    try:
        from redis._parsers.hiredis import NOT_ENOUGH_DATA, _AsyncHiredisParser
    except ImportError:
        return None, None
    parser = getattr(conn, "_parser", None)
    reader = getattr(parser, "_reader", None)
    if not isinstance(parser, _AsyncHiredisParser) or reader is None:
        return None, None
    return reader.gets, NOT_ENOUGH_DATA
