"""NATS transport on nats-py.

nats-py already reconnects forever (max_reconnect_attempts=-1), cycles through every
URL of a cluster and replays subscriptions after a reconnect; this module adds the
logging, the link reports and the slow-consumer count the daemon needs. Messages of
our two subscriptions skip nats-py's per-message queue and task
(`lobby.drivers.nats_lean`): they reach the daemon synchronously, in order.

Credentials and TLS (SPEC §13.3) are nats-py's own connect options, passed through
as `options` (`tls`, `token`, `user_credentials`, `nkeys_seed`); a server that
refuses them is logged as such, one line per attempt (rate-limited), and retried
like any other failure. Three workarounds for nats-py (2.16):

- Asked for TLS, it would speak plaintext (credentials included) to a server that
  offers none; `LeanClient` refuses such a server (`TlsNotOffered`, one ERROR line
  per attempt, retried), and upgrades where the server says `tls_available`.

- After a failed TLS handshake (e.g. the server's certificate is not trusted) it
  waits forever for the socket to close (asyncio never tells a stream whose TLS
  upgrade failed that its connection was lost), so it never tries again. When
  nothing happens for STALL_AFTER seconds after such a failure, the driver drops
  that client and starts a fresh one.
- It reports a refused client certificate twice (the connection reset, then the TLS
  alert): a connection reset is logged only when no TLS or credential failure
  follows within ERROR_COALESCE seconds, so each attempt gets one clear line.

logging, the link reports and the slow-consumer count the daemon needs, and the
back-off (SPEC §14.2).

Back-off: nats-py waits a fixed `reconnect_time_wait` before trying a server it
tried last less than that long ago, for the first connection as for reconnects, and
reads that option from `Client.options` at each attempt. So after every failed
attempt (nats-py calls `error_cb` with it) the driver sets the next wait there from
a `lobby.drivers.backoff.Backoff` (0.1 s doubling to 10 s, with jitter), and starts over
after a success. (nats-py's `reconnect_to_server_handler` would give the delay only
for reconnects, not for a broker that is down when lobbyd starts.) The failures are
logged through a `BackoffLog`: each of the first five, then one line per doubling
interval up to 5 minutes.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import ssl
import time
from collections.abc import Sequence
from typing import Any

from nats.aio.msg import Msg
from nats.aio.subscription import Subscription
from nats.errors import SlowConsumerError
from nats.nuid import NUID

from lobby.drivers.backoff import Backoff, BackoffLog
from lobby.drivers.base import (
    BatchHandler,
    DriverError,
    LinkHandler,
    MessageHandler,
    QueryHandler,
    QueueInbox,
    ToldHandler,
    Topic,
    deliverer,
)
from lobby.drivers.nats_lean import Deliver, LeanClient, TlsNotOffered
from lobby.drivers.nats_lean import LeanClient as Client  # what the driver builds
from lobby.system.ratelimit import RateLimitedLog
from lobby.system.urls import redact

log = logging.getLogger("lobby.nats")

# The wait before the first retry of a lost connection; later ones back off (Backoff).
# nats.go waits 2 s each time; a discovery daemon wants its peers back quickly.
RECONNECT_WAIT = 0.1
# Up to this many messages may wait for the daemon before the client drops (and we
# count) them: a few seconds of the largest cluster's traffic (SPEC §11).
PENDING_MSGS = 200_000
CONNECT_TIMEOUT = 2.0
STALL_AFTER = RECONNECT_WAIT + CONNECT_TIMEOUT + 1.0
ERROR_COALESCE = 0.05
QUEUE_GROUP = "lobby"  # listeners answer agents' queries in it: one each (SPEC §20)
_NO_RESPONDERS = "503"  # the status NATS sends to a request's inbox that nobody takes


class NatsDriver:
    def __init__(
        self,
        servers: list[str],
        subject: str,
        *,
        ping_interval: int = 5,
        name: str = "lobbyd",
        options: dict[str, Any] | None = None,
        backoff: Backoff | None = None,
        listen: bool = True,
    ) -> None:
        """`listen=False`: an agent (SPEC §20), subscribed to neither topic."""
        self.servers = servers
        self.listen = listen
        self.fanout = False  # a queue group: one listener hears each query
        self.query_subject = f"{subject}.query"
        self._on_query: QueryHandler | None = None
        self._query_subs: list[Subscription] = []  # the queue group's, and by name
        self._inbox_for: Client | None = None  # the client our inbox is subscribed on
        self._inbox_prefix = f"_INBOX.{NUID().next().decode()}"
        self._inboxes: dict[str, QueueInbox] = {}
        self._next_inbox = itertools.count(1)
        self._options = dict(options or {})
        self._tls = "tls" in self._options or any(s.startswith("tls://") for s in servers)
        self.subjects: dict[Topic, str] = {"discovery": subject, "sync": f"{subject}.sync"}
        self.address = ",".join(redact(s) for s in servers)
        self.dropped = 0
        self._ping_interval = ping_interval
        self._name = name
        self._nc = Client()
        self._on_message: MessageHandler | None = None
        self._on_batch: BatchHandler | None = None
        self._on_link: LinkHandler | None = None
        self._task: asyncio.Task[None] | None = None
        self._guard: asyncio.Task[None] | None = None
        self._tls_failed_at: float | None = None
        self._pending_error: str | None = None
        self._pending_wait = 0.0
        self._old_clients: set[asyncio.Task[None]] = set()
        self._subscribed = False
        self._closing = False
        self._backoff = backoff if backoff is not None else Backoff(RECONNECT_WAIT)
        self._fail_log = BackoffLog(log)
        self._error_log = RateLimitedLog(log, burst=5, every=30)
        self._slow_log = RateLimitedLog(log, burst=1, every=10)
        self._handler_log = RateLimitedLog(log, burst=5, every=30)

    @property
    def connected(self) -> bool:
        return self._subscribed and self._nc.is_connected

    async def start(
        self,
        on_message: MessageHandler,
        on_link: LinkHandler,
        on_batch: BatchHandler | None = None,
    ) -> None:
        self._on_message = on_message
        self._on_batch = on_batch
        self._on_link = on_link
        self._task = asyncio.create_task(self._connect(self._nc), name="nats-connect")
        self._guard = asyncio.create_task(self._stall_guard(), name="nats-stall-guard")

    def _callbacks(self, nc: Client) -> dict[str, Any]:
        """nats-py's callbacks for client `nc`; silent once `nc` was replaced."""

        def only_current(callback: Any) -> Any:
            async def call(*args: Any) -> None:
                if nc is self._nc:
                    await callback(*args)

            return call

        return {
            "error_cb": only_current(self._error),
            "disconnected_cb": only_current(self._disconnected),
            "reconnected_cb": only_current(self._reconnected),
            "closed_cb": only_current(self._closed),
        }

    async def _stall_guard(self) -> None:
        while True:
            await asyncio.sleep(1.0)
            failed = self._tls_failed_at
            if failed is None or self._closing or time.monotonic() - failed < STALL_AFTER:
                continue
            self._tls_failed_at = None
            log.debug("NATS client stalled after a failed TLS handshake: starting a fresh one")
            old, self._nc = self._nc, Client()
            self._subscribed = False
            if self._task is not None and not self._task.done():
                self._task.cancel()
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await self._task
            closing = asyncio.create_task(self._close_quietly(old))
            self._old_clients.add(closing)
            closing.add_done_callback(self._old_clients.discard)
            self._task = asyncio.create_task(self._connect(self._nc), name="nats-connect")

    @staticmethod
    async def _close_quietly(nc: Client) -> None:
        with contextlib.suppress(Exception):
            async with asyncio.timeout(1.0):  # not wait_for: see lobby.feed
                await nc.close()

    async def _connect(self, nc: Client) -> None:
        try:
            await nc.connect(
                servers=self.servers,
                name=self._name,
                allow_reconnect=True,
                max_reconnect_attempts=-1,
                reconnect_time_wait=self._backoff.first,  # type: ignore[arg-type]
                connect_timeout=CONNECT_TIMEOUT,  # type: ignore[arg-type]
                ping_interval=self._ping_interval,
                max_outstanding_pings=2,
                **self._callbacks(nc),
                **self._options,
            )
            for topic, subject in self.subjects.items() if self.listen else ():
                sub = await nc.subscribe(
                    subject, cb=self._handler(topic), pending_msgs_limit=PENDING_MSGS
                )
                if isinstance(nc, LeanClient):  # our messages skip nats-py's queue
                    nc.direct[sub._id] = self._deliverer(topic)
            await nc.flush(timeout=5)
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # only a bug or a closed client get here
            log.error("NATS connection setup failed: %s", exc)
            return
        self._subscribed = True
        self._tls_failed_at = None
        log.info("connected to NATS %s%s", self._current(), self._recovered())
        self._link(True)

    def _deliverer(self, topic: Topic) -> Deliver:
        """The plain function that hands messages of `topic` (those one read brought)
        to the daemon (`lobby.drivers.base.deliverer`)."""
        assert self._on_message is not None
        return deliverer(topic, self._on_message, self._on_batch, self._handler_failed)

    def _handler_failed(self, exc: Exception) -> None:
        self._handler_log(logging.ERROR, "NATS message handler failed: %r", exc)

    def _handler(self, topic: Topic) -> Any:
        """nats-py's callback, for a message that took its usual path."""
        deliver = self._deliverer(topic)

        async def on_msg(msg: Msg) -> None:
            deliver([msg.data])

        return on_msg

    def _attempted(self) -> str:
        """The server of the attempt that just failed (or every configured one)."""
        server = self._nc._current_server
        return redact(server.uri.geturl()) if server is not None else self.address

    def _current(self) -> str:
        url = self._nc.connected_url
        return redact(url.geturl()) if url is not None else self.address

    def _link(self, up: bool) -> None:
        if self._on_link is None or self._closing:
            return
        try:
            self._on_link(up)
        except Exception:  # the daemon's bug must not stop nats-py reconnecting
            log.exception("NATS link handler failed")

    async def _error(self, exc: Exception) -> None:
        if isinstance(exc, SlowConsumerError):
            self.dropped += 1
            self._slow_log(
                logging.WARNING,
                "falling behind: NATS client dropped a message (slow consumer, %d dropped so far)",
                self.dropped,
            )
            return
        if self._closing:
            return
        if self._nc.is_connected:  # e.g. a permissions violation: the link stands
            self._error_log(logging.WARNING, "NATS error: %s: %s", type(exc).__name__, exc)
            return
        # a failed connection attempt: wait longer before the next one
        wait = self._backoff.next()
        self._nc.options["reconnect_time_wait"] = wait
        text = str(exc)
        lowered = text.lower()
        self._tls_failed_at = time.monotonic() if isinstance(exc, ssl.SSLError) else None
        if "authorization" in lowered or "authentication" in lowered:
            self._pending_error = None
            self._fail_log(
                logging.ERROR,
                "NATS %s refused our credentials (%s): check NATS_TOKEN, NATS_CREDS, "
                "NATS_NKEY_SEED or the user:password in NATS_URL; retrying in %.1f s",
                self.address,
                text.removeprefix("nats: ").strip("'"),
                wait,
            )
            return
        if isinstance(exc, TlsNotOffered):
            self._pending_error = None
            self._fail_log(
                logging.ERROR,
                "NATS %s does not offer TLS, which NATS_URL (tls://) or NATS_CA/NATS_CERT "
                "ask for: not connecting in plaintext; retrying in %.1f s",
                self._attempted(),
                wait,
            )
            return
        if isinstance(exc, ssl.SSLError):
            self._pending_error = None
            self._fail_log(
                logging.ERROR,
                "TLS with NATS %s failed: %s (check NATS_CA, NATS_CERT and NATS_KEY); "
                "retrying in %.1f s",
                self.address,
                exc,
                wait,
            )
            return
        error = f"{type(exc).__name__}: {exc or 'connection failed'}"
        if isinstance(exc, ConnectionResetError):
            # maybe the first half of a refused client certificate: log it only if no
            # TLS or credential failure follows at once
            self._pending_error = error
            self._pending_wait = wait
            asyncio.get_running_loop().call_later(ERROR_COALESCE, self._log_pending_error)
            return
        self._pending_error = None
        self._fail_log(
            logging.WARNING,
            "cannot connect to NATS %s: %s; retrying in %.1f s",
            self.address,
            error,
            wait,
        )

    def _log_pending_error(self) -> None:
        error, self._pending_error = self._pending_error, None
        if error is None or self._closing:
            return
        if self._tls:  # the TLS alert may be lost to the reset that follows it (under load)
            self._fail_log(
                logging.ERROR,
                "TLS with NATS %s failed: %s (check NATS_CA, NATS_CERT and NATS_KEY); "
                "retrying in %.1f s",
                self.address,
                error,
                self._pending_wait,
            )
        else:
            self._fail_log(
                logging.WARNING,
                "cannot connect to NATS %s: %s; retrying in %.1f s",
                self.address,
                error,
                self._pending_wait,
            )

    def _recovered(self) -> str:
        """Start the back-off over after a success; how long the trouble lasted, if any."""
        self._backoff.reset()
        self._nc.options["reconnect_time_wait"] = self._backoff.first
        failures, took = self._fail_log.success()
        if not failures:
            return ""
        return f" after {failures} failed attempt{'s' if failures > 1 else ''} in {took:.0f} s"

    async def _disconnected(self) -> None:
        if not self._closing and self._subscribed:
            log.warning("disconnected from NATS; reconnecting")
            self._link(False)

    async def _reconnected(self) -> None:
        self._tls_failed_at = None
        log.info("reconnected to NATS %s%s", self._current(), self._recovered())
        self._link(True)

    async def _closed(self) -> None:
        if not self._closing:
            log.error("NATS connection closed")
            self._link(False)

    async def publish(self, topic: Topic, data: bytes) -> None:
        if not self.connected:
            raise DriverError("not connected to NATS")
        try:
            await self._nc.publish(self.subjects[topic], data)
        except Exception as exc:
            raise DriverError(str(exc) or type(exc).__name__) from exc

    async def publish_many(self, topic: Topic, items: Sequence[bytes]) -> None:
        # nats-py buffers publishes and writes them out together: no round trip each
        for data in items:
            await self.publish(topic, data)

    async def flush(self, timeout: float) -> None:
        if self.connected:
            try:
                await self._nc.flush(timeout=max(timeout, 0.01))  # type: ignore[arg-type]
            except Exception as exc:
                log.debug("NATS flush failed: %s", exc)

    # -- agents' queries (SPEC §20) ---------------------------------------------------

    async def serve_queries(self, on_query: QueryHandler, name: str = "") -> None:
        self._on_query = on_query
        if self._query_subs or not self.connected:
            return
        nc = self._nc
        try:
            self._query_subs.append(
                await nc.subscribe(self.query_subject, queue=QUEUE_GROUP, cb=self._query)
            )
            if name:  # asked by name: an agent's retry (lobby.node.queries)
                subject = f"{self.query_subject}.{name}"
                self._query_subs.append(await nc.subscribe(subject, cb=self._query))
            await nc.flush(timeout=2)  # the server has them: "warm" means taking queries
        except Exception as exc:
            log.debug("cannot take queries: %r", exc)

    async def stop_serving(self) -> None:
        subs, self._query_subs = self._query_subs, []
        for sub in subs:
            with contextlib.suppress(Exception):
                await sub.unsubscribe()

    async def _query(self, msg: Msg) -> None:
        on_query = self._on_query
        if on_query is None or not msg.reply:
            return
        nc, subject = self._nc, msg.reply

        async def reply(messages: Sequence[bytes]) -> None:
            for data in messages:
                await nc.publish(subject, data)

        try:
            on_query(msg.data, reply)
        except Exception as exc:
            self._handler_failed(exc)

    async def ask(self, data: bytes, to: str = "") -> QueueInbox:
        if not self.connected:
            raise DriverError("not connected to NATS")
        nc = self._nc
        try:
            if self._inbox_for is not nc:  # once per client (the stall guard replaces it)
                await nc.subscribe(f"{self._inbox_prefix}.*", cb=self._replied)
                self._inbox_for = nc
            token = str(next(self._next_inbox))
            inbox = self._inboxes[token] = QueueInbox(
                "no listener takes queries (NATS: no responders)",
                lambda: self._inboxes.pop(token, None),
            )
            subject = f"{self.query_subject}.{to}" if to else self.query_subject
            await nc.publish(subject, data, reply=f"{self._inbox_prefix}.{token}")
        except Exception as exc:
            raise DriverError(str(exc) or type(exc).__name__) from exc
        return inbox

    async def tell(self, data: bytes) -> None:
        """Nothing to say: the queue group picks who answers, no listener needs to know
        the others (lobby.node.queries tells only over fanout drivers)."""

    def hear(self, on_told: ToldHandler) -> None:
        """Nothing is told over NATS (see `tell`)."""

    async def _replied(self, msg: Msg) -> None:
        inbox = self._inboxes.get(msg.subject.rpartition(".")[2])
        if inbox is None:
            return
        if msg.headers and msg.headers.get("Status") == _NO_RESPONDERS:
            inbox.queue.put_nowait(None)
        else:
            inbox.queue.put_nowait(msg.data)

    async def close(self) -> None:
        self._closing = True
        if self._guard is not None:
            self._guard.cancel()
        if self._task is not None and not self._task.done():
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._task
        self._subscribed = False
        if not self._nc.is_closed:
            try:
                async with asyncio.timeout(1.0):
                    await self._nc.close()
            except Exception as exc:
                log.debug("NATS close: %s", exc)
