"""lobbyd: wiring and lifecycle (SPEC §3).

One asyncio loop holds everything: the driver feeds `on_message`, which validates a
packet and applies it to the registry synchronously (no queue, no task per packet);
one announcer task publishes "hi" every KEEP_ALIVE and at once when woken by a label
change; a sweeper expires records at their exact deadline; uvicorn serves the API
from the same loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import random
import signal
import socket
import sys
import time
from collections import Counter
from collections.abc import Callable, Generator, Sequence
from typing import Any, Literal

from lobby import __version__, config
from lobby._ratelimit import RateLimitedLog
from lobby.config import Settings
from lobby.drivers.base import Driver, DriverError, Topic
from lobby.labels import LocalLabels, parse_env_labels
from lobby.model import (
    GOODBYE,
    HI,
    MAX_PACKET_BYTES,
    Discovery,
    LabelError,
    PacketError,
    decode_envelope,
    decode_sync,
    encode_envelope,
    encode_sync,
    label_problem,
)
from lobby.registry import Registry
from lobby.watch import ChangeFeed

log = logging.getLogger("lobby")

SYNC_SPREAD = 0.2  # seconds over which peers answer a sync request


class Daemon:
    def __init__(
        self,
        settings: Settings,
        *,
        driver: Driver | None = None,
        system_hostname: Callable[[], str] = socket.gethostname,
    ) -> None:
        self.settings = settings
        self.registry = Registry(settings.ttl)
        self.local = LocalLabels(
            parse_env_labels(settings.labels),
            settings.labels_path,
            settings.runtime_labels_filename,
        )
        # before anything can write: a temporary file found now is a crash's leftover,
        # one found later may be a write in progress
        self.local.runtime.remove_stale_temp_files()
        self._system_hostname = system_hostname
        self.hostname = settings.hostname or system_hostname()
        self._labels = self.local.read()
        self.driver = driver
        self.embedded: Any = None
        self.started = time.time()
        # counters (GET /v1/stats)
        self.received = 0
        self.rejected: Counter[str] = Counter()
        self.sent = 0
        self.send_failures = 0
        # link state: paused expiry unless the broker link is up and, when we
        # announce, our own "hi" keeps coming back (a cut TCP link can look open)
        self._link_up = False
        self._echo_ok = True
        self._heard_self = time.monotonic()
        self._wake = asyncio.Event()
        self._stopping = asyncio.Event()
        self._tasks: list[asyncio.Task[Any]] = []
        self._server: Any = None
        self.callback: Any = None
        self.exit_status = 0
        self._garbage_log = RateLimitedLog(log, burst=5, every=30)
        self._send_log = RateLimitedLog(log, burst=3, every=30)
        self.registry.pause()  # nothing is live until we are linked
        self.feed = ChangeFeed(self.registry)
        self._sync_pending = False

    # -- what the API reads -------------------------------------------------------

    def own_discovery(self) -> Discovery:
        return Discovery(self.hostname, self._labels, 0)

    def stats(self) -> dict[str, Any]:
        driver = self.driver
        return {
            "hostname": self.hostname,
            "version": __version__,
            "uptime": round(time.time() - self.started, 3),
            "nodes": len(self.registry),
            "index": self.registry.index,
            "broker": {
                "driver": self.settings.driver,
                "address": driver.address if driver else "",
                "connected": bool(driver and driver.connected),
                "expiry_paused": self.registry.paused,
            },
            "packets": {
                "received": self.received,
                "rejected": sum(self.rejected.values()),
                "rejected_by_reason": dict(sorted(self.rejected.items())),
                "dropped_slow_consumer": driver.dropped if driver else 0,
            },
            "announcements": {"sent": self.sent, "failed": self.send_failures},
            "watchers": {"streams": len(self.feed.watchers), "blocking": self.feed.waiting},
            "callback": (
                {"runs": self.callback.runs, "last_status": self.callback.last_status}
                if self.callback is not None
                else None
            ),
        }

    # -- incoming -----------------------------------------------------------------

    def on_message(self, topic: Topic, data: bytes) -> None:
        if topic == "sync":
            self._on_sync(data)
            return
        self.received += 1
        try:
            envelope = decode_envelope(data)
        except PacketError as exc:
            self.rejected[exc.reason] += 1
            self._garbage_log(
                logging.WARNING,
                "dropped invalid packet (%s); %d dropped so far",
                exc,
                sum(self.rejected.values()),
            )
            return
        discovery = envelope.discovery
        if envelope.message == HI:
            self.registry.update(discovery)
            if discovery.hostname == self.hostname:
                self._heard_self = time.monotonic()
                if not self._echo_ok:
                    log.info("our own announcements come back again; resuming expiry")
                    self._echo_ok = True
                    self._update_pause()
        else:
            self.registry.remove(discovery.hostname, "goodbye")

    def on_link(self, up: bool) -> None:
        self._link_up = up
        if up:
            self._heard_self = time.monotonic()
            self._echo_ok = True
            self._wake.set()  # announce at once after (re)connecting
            # and ask every peer to announce itself too, instead of waiting for their
            # next keep-alive (fast join; Go peers never see the sync topic)
            task = asyncio.create_task(self._request_sync())
            self._tasks.append(task)
            task.add_done_callback(self._tasks.remove)
        self._update_pause()

    async def _request_sync(self) -> None:
        assert self.driver is not None
        request = encode_sync(self.hostname)
        try:
            await self.driver.publish("sync", request)
        except DriverError as exc:
            log.debug("cannot ask peers to sync: %s", exc)

    def _on_sync(self, data: bytes) -> None:
        try:
            requester = decode_sync(data)
        except PacketError as exc:
            self.rejected["sync_" + exc.reason] += 1
            return
        if requester == self.hostname or not self.settings.announce or self._sync_pending:
            return
        # a random delay spreads the answers of a large cluster over SYNC_SPREAD seconds;
        # requests arriving meanwhile share the one announcement
        self._sync_pending = True
        asyncio.get_running_loop().call_later(random.uniform(0, SYNC_SPREAD), self._sync_now)

    def _sync_now(self) -> None:
        self._sync_pending = False
        self._wake.set()

    def _update_pause(self) -> None:
        if self._link_up and self._echo_ok:
            self.registry.resume()
        else:
            # from the last sign the link worked: our own "hi" coming back to us
            self.registry.pause(since=self._heard_self if self.settings.announce else None)

    # -- local labels -------------------------------------------------------------

    def refresh_labels(self) -> bool:
        """Re-read the local labels; announce at once when they changed."""
        labels = self.local.read()
        if labels == self._labels:
            return False
        self._labels = labels
        log.info("local labels changed: %s", ", ".join(labels) or "(none)")
        self._wake.set()
        return True

    def _check_size(self, runtime: list[str]) -> None:
        # our labels already hold LABELS and every file's; add the new runtime set
        labels = tuple(sorted(set(self._labels).union(runtime)))
        size = len(encode_envelope(HI, Discovery(self.hostname, labels)))
        if size > MAX_PACKET_BYTES:
            raise LabelError(
                f"too many labels: this node's announcement would be {size} bytes, "
                f"over the {MAX_PACKET_BYTES} byte limit peers accept"
            )

    async def add_labels(self, labels: list[str]) -> None:
        await self.local.runtime.add(labels, check=self._check_size)
        self.refresh_labels()

    async def delete_labels(self, labels: list[str]) -> None:
        await self.local.runtime.delete(labels)
        self.refresh_labels()

    # -- outgoing -----------------------------------------------------------------

    async def _publish(self, message: Literal["hi", "goodbye"], discovery: Discovery) -> bool:
        assert self.driver is not None
        data = encode_envelope(message, discovery)
        if len(data) > MAX_PACKET_BYTES:
            self._send_log(
                logging.ERROR,
                "our announcement is %d bytes, over the %d byte limit: peers drop it; "
                "remove labels",
                len(data),
                MAX_PACKET_BYTES,
            )
        try:
            await self.driver.publish("discovery", data)
        except DriverError as exc:
            self.send_failures += 1
            self._send_log(
                logging.WARNING,
                "cannot announce %r (%s); retrying in %d s",
                message,
                exc,
                self.settings.keep_alive,
            )
            return False
        self.sent += 1
        return True

    def _hostname_changed(self) -> str | None:
        """The old hostname when the system hostname changed (HOSTNAME unset)."""
        if self.settings.hostname:
            return None
        try:
            current = self._system_hostname()
        except OSError:
            return None
        if not current or current == self.hostname:
            return None
        old, self.hostname = self.hostname, current
        log.info("hostname changed from %s to %s", old, current)
        return old

    async def _announcer(self) -> None:
        keep_alive = self.settings.keep_alive
        while True:
            old_name = None
            try:
                await asyncio.wait_for(self._wake.wait(), timeout=keep_alive)
            except TimeoutError:
                # the periodic path: fallback label re-read, hostname, log summaries
                self.refresh_labels()
                self._garbage_log.flush()
                self._send_log.flush()
                old_name = self._hostname_changed()
            self._wake.clear()
            if self.settings.announce and self.driver is not None and self.driver.connected:
                if old_name is not None:
                    await self._publish(GOODBYE, Discovery(old_name, ()))
                await self._publish(HI, self.own_discovery())

    async def _echo_watchdog(self) -> None:
        # Its own task, ticking faster than KEEP_ALIVE: the announcer can sit in a
        # publish for seconds on a frozen broker (Redis: PUBLISH_TIMEOUT), and noticing
        # the silence that late let records expire before expiry was paused.
        tick = self.settings.keep_alive / 4
        while True:
            await asyncio.sleep(tick)
            self._watch_echo()

    def _watch_echo(self) -> None:
        if not (self.settings.announce and self._link_up and self._echo_ok):
            return
        silent = time.monotonic() - self._heard_self
        if silent > 2 * self.settings.keep_alive:
            log.warning(
                "our own announcements have not come back for %.0f s: treating the broker "
                "link as down and pausing expiry",
                silent,
            )
            self._echo_ok = False
            self._update_pause()

    async def _sweeper(self) -> None:
        clean_every = self.settings.clean_every
        while True:
            wait = self.registry.next_expiry()
            await asyncio.sleep(clean_every if wait is None else min(wait + 0.001, clean_every))
            self.registry.expire()

    async def _watch_label_dir(self) -> None:
        from watchfiles import awatch

        path = self.local.path
        while True:
            if not path.is_dir():
                await asyncio.sleep(0.5)
                if path.is_dir():
                    self.refresh_labels()
                continue
            try:
                async for _ in awatch(
                    path, debounce=50, step=25, recursive=False, stop_event=self._stopping
                ):
                    self.refresh_labels()
            except (OSError, RuntimeError) as exc:
                log.debug("label directory watch ended: %s", exc)
            if self._stopping.is_set():
                return
            self.refresh_labels()
            await asyncio.sleep(0.5)

    # -- lifecycle ----------------------------------------------------------------

    async def _keep_embedded(self) -> None:
        """If the node that ran the local nats-server went away, run one ourselves.

        Every node on the embedded default watches the port; the first to find it dead
        starts a server there, the others lose the race for the port and join it. The
        NATS client keeps reconnecting to the same URL, so nothing else changes.
        """
        from lobby.embedded import EmbeddedError, is_nats

        embedded = self.embedded
        assert embedded is not None and self.driver is not None
        while True:
            await asyncio.sleep(1.0 + random.random())
            if self.driver.connected or embedded.owned:
                continue
            if await is_nats(embedded.host, embedded.port, timeout=0.5):
                continue
            log.warning("nothing serves NATS on %s any more: starting it here", embedded.url)
            try:
                await embedded.start()
            except (EmbeddedError, OSError) as exc:
                log.warning("cannot start the embedded nats-server: %s", exc)

    def _make_driver(self, servers: list[str]) -> Driver:
        s = self.settings
        if s.driver == "Redis":
            from lobby.drivers.redis import RedisDriver

            return RedisDriver(
                host=s.redis_host,
                port=s.redis_port,
                db=s.redis_db,
                password=s.redis_password,
                channel=s.redis_channel,
            )
        from lobby.drivers.nats import NatsDriver

        return NatsDriver(
            servers,
            s.nats_discovery_channel,
            ping_interval=max(1, min(s.keep_alive, 10)),
            name=f"lobbyd {self.hostname}",
        )

    def _bind(self) -> socket.socket:
        s = self.settings
        family, kind, proto, _, address = socket.getaddrinfo(
            s.host, s.port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
        )[0]
        sock = socket.socket(family, kind, proto)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(address)
        except OSError:
            sock.close()
            raise
        sock.set_inheritable(True)
        return sock

    def stop(self) -> None:
        self._stopping.set()

    def _spawn(self, coro: Any, name: str) -> None:
        """Start a task that must live as long as the daemon; if it dies, so do we."""
        task = asyncio.create_task(coro, name=name)
        task.add_done_callback(self._task_done)
        self._tasks.append(task)

    def _task_done(self, task: asyncio.Task[Any]) -> None:
        if task.cancelled() or self._stopping.is_set():
            return
        exc = task.exception()
        log.error(
            "task %s ended unexpectedly: %r; shutting down", task.get_name(), exc, exc_info=exc
        )
        self.exit_status = 1
        self.stop()

    async def run(self) -> int:
        """Serve until stop(); returns the exit status."""
        s = self.settings
        log.info(
            "lobbyd %s starting as %s with labels: %s",
            __version__,
            self.hostname,
            ", ".join(self._labels) or "(none)",
        )
        if s.ttl <= s.keep_alive:
            log.warning(
                "TTL=%d <= KEEP_ALIVE=%d: nodes will flap between keep-alives", s.ttl, s.keep_alive
            )
        sock = None
        if not s.disable_api:
            try:
                sock = self._bind()
            except OSError as exc:
                log.error("cannot listen on %s:%d: %s", s.host, s.port, exc.strerror or exc)
                return 1
        try:
            if self.driver is None:
                servers = s.nats_servers
                if s.driver == "NATS" and not servers:
                    from lobby.embedded import EmbeddedError, EmbeddedNats

                    self.embedded = EmbeddedNats(s.embedded_nats_port)
                    try:
                        await self.embedded.start()
                    except (EmbeddedError, OSError) as exc:
                        log.error("%s", exc)
                        return 1
                    servers = [self.embedded.url]
                self.driver = self._make_driver(servers)
            log.info("broker: %s %s", s.driver, self.driver.address)
            await self.driver.start(self.on_message, self.on_link)
            if self.embedded is not None:
                self._spawn(self._keep_embedded(), "embedded-watch")
            self._spawn(self._announcer(), "announcer")
            self._spawn(self._echo_watchdog(), "echo-watchdog")
            self._spawn(self._sweeper(), "sweeper")
            self._spawn(self._watch_label_dir(), "label-watch")
            if s.callback:
                self._start_callback()
            if sock is not None:
                self._spawn(self._serve_api(sock), "api")
            await self._stopping.wait()
        finally:
            await self._shutdown()
        return self.exit_status

    async def _serve_api(self, sock: socket.socket) -> None:
        import uvicorn

        from lobby.api import create_app

        class Server(uvicorn.Server):
            @contextlib.contextmanager
            def capture_signals(self) -> Generator[None, None, None]:
                yield  # the daemon owns SIGTERM/SIGINT

        app = create_app(self, token=self.settings.token, extra=self.api_extras(), feed=self.feed)
        cfg = uvicorn.Config(
            app,
            log_level="warning",
            access_log=False,
            lifespan="off",
            server_header=False,
            timeout_graceful_shutdown=1,
        )
        self._server = Server(cfg)
        log.info("API listening on http://%s:%d", *sock.getsockname()[:2])
        await self._server.serve(sockets=[sock])

    def api_extras(self) -> Sequence[Callable[[Any], None]]:
        """Routes owned by other modules (Prometheus, events)."""
        from lobby import prometheus

        def add_prometheus(app: Any) -> None:
            prometheus.add_routes(app, self.registry, self.settings.node_exporter_port)

        return (add_prometheus,)

    def _start_callback(self) -> None:
        from lobby.api import all_discoveries
        from lobby.callback import CallbackRunner

        s = self.settings
        runner = CallbackRunner(
            s.callback,
            cooldown=s.callback_cooldown,
            first_run_delay=s.callback_first_run_delay,
            timeout=s.callback_timeout,
            snapshot=lambda: all_discoveries(self.registry),
        )
        # startup counts as a change: the runner starts dirty
        self.registry.add_listener(lambda change: runner.mark_dirty())
        self.callback = runner
        self._spawn(runner.run(), "callback")

    async def _shutdown(self) -> None:
        started = time.monotonic()
        driver = self.driver
        if (
            driver is not None
            and self.settings.announce
            and driver.connected
            and await self._publish(GOODBYE, Discovery(self.hostname, ()))
        ):
            await driver.flush(0.5)
        if self._server is not None:
            self._server.should_exit = True
            self._server.force_exit = True
        for task in self._tasks:
            task.cancel()
        await asyncio.wait(self._tasks, timeout=0.5) if self._tasks else None
        if driver is not None:
            try:
                await asyncio.wait_for(driver.close(), timeout=0.5)
            except (TimeoutError, Exception) as exc:
                log.debug("driver close: %r", exc)
        if self.embedded is not None:
            await self.embedded.stop()
        log.info("stopped in %.2f s", time.monotonic() - started)


def _usage_error(message: str) -> None:
    print(f"lobbyd: {message}", file=sys.stderr)
    sys.exit(2)


def load_settings(environ: dict[str, str] | os._Environ[str]) -> Settings:
    """Settings, or exit 2 with one line naming the variable."""
    try:
        settings = config.load(environ)
        parse_env_labels(settings.labels)
    except config.ConfigError as exc:
        _usage_error(str(exc))
        raise  # unreachable
    except LabelError as exc:
        _usage_error(f"invalid LABELS: {exc}")
        raise
    problem = label_problem(settings.hostname) if settings.hostname else None
    if problem is not None:
        _usage_error(f"invalid HOSTNAME={settings.hostname!r}: {problem.replace('label', 'name')}")
    return settings


def setup_logging(level: str) -> None:
    logging.basicConfig(
        level=getattr(logging, level),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    logging.getLogger("watchfiles").setLevel(logging.WARNING)


async def _main(settings: Settings) -> int:
    daemon = Daemon(settings)
    loop = asyncio.get_running_loop()
    signals = 0

    def on_signal(sig: signal.Signals) -> None:
        nonlocal signals
        signals += 1
        if signals > 1:
            log.warning("second %s: exiting now", sig.name)
            os._exit(1)
        log.info("%s: shutting down", sig.name)
        daemon.stop()

    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, on_signal, sig)
    return await daemon.run()


def main(argv: Sequence[str] | None = None) -> None:
    args = list(sys.argv[1:] if argv is None else argv)
    if args and args[0] in ("-h", "--help", "help"):
        print(config.help_text())
        return
    if args and args[0] in ("-V", "--version"):
        print(f"lobbyd {__version__}")
        return
    if args:
        _usage_error(
            f"unexpected argument {args[0]!r}; lobbyd is configured by environment "
            "variables (see lobbyd --help)"
        )
    settings = load_settings(os.environ)
    setup_logging(settings.log_level)
    try:
        import uvloop

        runner: Any = uvloop.run
    except ImportError:  # pragma: no cover
        runner = asyncio.run
    sys.exit(runner(_main(settings)))


if __name__ == "__main__":
    main()


__all__ = ["Daemon", "main"]
