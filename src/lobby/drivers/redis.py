"""Redis transport on redis.asyncio (hiredis parser).

The main topic is PUBLISH/SUBSCRIBE on REDIS_CHANNEL, where Go peers listen; the sync
topic is `<REDIS_CHANNEL>:sync`, which only Python peers use. Envelopes are opaque bytes.

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
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import Any

from redis.asyncio import Redis
from redis.asyncio.connection import Connection
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import AuthenticationError, RedisError, ResponseError

from lobby._ratelimit import RateLimitedLog
from lobby.backoff import Backoff, BackoffLog
from lobby.drivers.base import DriverError, LinkHandler, MessageHandler, Topic

log = logging.getLogger("lobby.redis")

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


class LinkDead(Exception):
    """The subscription stopped answering PINGs."""


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
        backoff: Backoff | None = None,
    ) -> None:
        self.channels: dict[Topic, str] = {"discovery": channel, "sync": f"{channel}:sync"}
        self._topic_of: dict[bytes, Topic] = {
            name.encode(): topic for topic, name in self.channels.items()
        }
        shown = f"[{host}]" if ":" in host else host
        self.address = f"redis://{shown}:{port}/{db}"
        self.dropped = 0
        self._conn_args: dict[str, Any] = {
            "host": host,
            "port": port,
            "db": db,
            "password": password or None,
            "protocol": 2,
        }
        self._publisher = Redis(
            **self._conn_args,
            socket_timeout=SOCKET_TIMEOUT,
            socket_connect_timeout=SOCKET_TIMEOUT,
            retry=Retry(NoBackoff(), 1),
        )
        self._on_message: MessageHandler | None = None
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

    async def start(self, on_message: MessageHandler, on_link: LinkHandler) -> None:
        self._on_message = on_message
        self._on_link = on_link
        self._task = asyncio.create_task(self._run(), name="redis-link")

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
                    self._dropped_by_server = not isinstance(exc, LinkDead | TimeoutError)
                    self._lost_log(
                        logging.WARNING,
                        "lost Redis connection %s: %s; reconnecting",
                        self.address,
                        describe(exc),
                    )
                else:
                    self._report_failure(exc, delay)
            await asyncio.sleep(delay)

    def _report_failure(self, exc: Exception, delay: float) -> None:
        if isinstance(exc, AuthenticationError):
            self._fail_log(
                logging.ERROR,
                "Redis authentication failed: %s (check REDIS_PASSWORD); retrying in %.1f s",
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
        conn = Connection(**self._conn_args, socket_timeout=None, retry=Retry(NoBackoff(), 0))
        try:
            async with asyncio.timeout(CONNECT_TIMEOUT):
                await conn.connect()  # type: ignore[no-untyped-call]
                run_id = await self._server_run_id(conn)
                await conn.send_command("SUBSCRIBE", *self._topic_of)
                for _ in self._topic_of:
                    reply = await conn.read_response(disconnect_on_error=False)
                    if not isinstance(reply, list) or reply[0] != b"subscribe":
                        raise ResponseError(f"unexpected reply to SUBSCRIBE: {reply!r}")
            self._subscribed(run_id)
            reader = asyncio.create_task(self._read(conn), name="redis-read")
            watchdog = asyncio.create_task(self._watchdog(conn), name="redis-ping")
            try:
                done, _ = await asyncio.wait(
                    {reader, watchdog}, return_when=asyncio.FIRST_COMPLETED
                )
            finally:
                reader.cancel()
                watchdog.cancel()
                await asyncio.gather(reader, watchdog, return_exceptions=True)
            for task in done:
                task.result()
            raise ConnectionError("subscription ended")  # unreachable: both loop forever
        finally:
            await conn.disconnect(nowait=True)

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
            ", ".join(self.channels.values()),
            after,
        )
        self._link(True)

    async def _read(self, conn: Connection) -> None:
        # The hot path: hiredis parses replies out of each socket read, and
        # read_response() returns without suspending while replies are buffered.
        read = conn.read_response
        topic_of = self._topic_of
        on_message = self._on_message
        assert on_message is not None
        while True:
            reply = await read(disconnect_on_error=False)
            self._heard += 1
            if reply[0] == b"message":
                try:
                    on_message(topic_of[reply[1]], reply[2])
                except Exception as exc:
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

    async def flush(self, timeout: float) -> None:
        """Nothing to do: Redis acknowledges every PUBLISH before publish() returns."""

    async def close(self) -> None:
        if self._closing:
            return
        self._closing = True
        self._up = False
        if self._task is not None:
            self._task.cancel()
            await asyncio.wait({self._task}, timeout=0.3)
        with contextlib.suppress(Exception):
            await asyncio.wait_for(self._publisher.aclose(), timeout=0.2)
