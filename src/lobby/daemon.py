"""lobbyd: wiring and lifecycle, nothing else (SPEC §3).

One asyncio loop holds everything. The daemon builds the registry, the node's
presence on the bus (`lobby.presence`), the change feed, and, when configured, the
API server and the callback; it supervises their tasks (one dying stops the daemon
with status 1) and shuts them down in order: goodbye first, then the rest.
Data flows one way: driver -> presence -> registry -> feed -> api / callback.
"""

from __future__ import annotations

import asyncio
import logging
import socket
from collections.abc import Callable, Coroutine
from typing import Any

from lobby import __version__, observe
from lobby.backoff import reconnect_backoff
from lobby.clock import SYSTEM_CLOCK, Clock
from lobby.config import Settings
from lobby.drivers.base import Driver
from lobby.feed import ChangeFeed
from lobby.model import Discovery
from lobby.presence import Presence
from lobby.registry import Registry

log = logging.getLogger("lobby")


class Daemon:
    def __init__(
        self,
        settings: Settings,
        *,
        driver: Driver | None = None,
        clock: Clock = SYSTEM_CLOCK,
        system_hostname: Callable[[], str] = socket.gethostname,
    ) -> None:
        self.settings = settings
        self.clock = clock
        self.registry = Registry(settings.ttl, clock=clock.monotonic, wall_clock=clock.wall)
        self.presence = Presence(
            settings, self.registry, clock=clock, system_hostname=system_hostname
        )
        self.feed = ChangeFeed(self.registry)
        observe.log_node_events(self.registry)
        self.metrics = (
            None
            if settings.disable_api
            else observe.metrics(self.registry, self.presence, self.feed)
        )
        self.driver = driver
        self.embedded: Any = None
        self.callback: Any = None
        self.started = clock.wall()
        self.exit_status = 0
        self._stopping = asyncio.Event()
        self._tasks: list[asyncio.Task[Any]] = []
        self._api: Any = None

    # -- what the API reads (lobby.api.app.Node) -------------------------------------

    @property
    def hostname(self) -> str:
        return self.presence.hostname

    def own_discovery(self) -> Discovery:
        return self.presence.own_discovery()

    async def add_labels(self, labels: list[str]) -> None:
        await self.presence.add_labels(labels)

    async def delete_labels(self, labels: list[str]) -> None:
        await self.presence.delete_labels(labels)

    def health(self) -> tuple[bool, dict[str, str]]:
        return self.presence.health()

    def stats(self) -> dict[str, Any]:
        driver = self.driver
        callback = self.callback
        return {
            "hostname": self.hostname,
            "version": __version__,
            "uptime": round(self.clock.wall() - self.started, 3),
            "nodes": len(self.registry),
            "index": self.registry.index,
            "broker": {
                "driver": self.settings.driver,
                "address": driver.address if driver else "",
                "connected": bool(driver and driver.connected),
                "expiry_paused": self.registry.paused,
            },
            **self.presence.stats(),
            "watchers": {"streams": len(self.feed.watchers), "blocking": self.feed.waiting},
            "callback": (
                {"runs": callback.runs, "last_status": callback.last_status}
                if callback is not None
                else None
            ),
        }

    # -- lifecycle ----------------------------------------------------------------

    def stop(self) -> None:
        self._stopping.set()

    def _spawn(self, coro: Coroutine[Any, Any, Any], name: str) -> None:
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
            ", ".join(self.presence.labels) or "(none)",
        )
        if s.ttl <= s.keep_alive:
            log.warning(
                "TTL=%d <= KEEP_ALIVE=%d: nodes will flap between keep-alives", s.ttl, s.keep_alive
            )
        sock = None
        if not s.disable_api:
            from lobby.api.server import bind

            try:
                sock = bind(s.host, s.port)
            except OSError as exc:
                log.error("cannot listen on %s:%d: %s", s.host, s.port, exc.strerror or exc)
                return 1
        try:
            if self.driver is None:
                self.driver = await self._make_driver()
                if self.driver is None:
                    return 1
            log.info("broker: %s %s", s.driver, self.driver.address)
            await self.presence.start([(s.driver, self.driver)])
            if self.embedded is not None:
                from lobby.embedded import keep_serving

                driver = self.driver
                self._spawn(keep_serving(self.embedded, lambda: driver.connected), "embedded")
            for name, loop in self.presence.loops().items():
                self._spawn(loop, name)
            self._spawn(self.presence.watch_labels(self._stopping), "label-watch")
            self._spawn(self.registry.sweep(s.clean_every), "sweeper")
            if s.callback:
                self._start_callback()
            if sock is not None:
                self._start_api(sock)
            await self._stopping.wait()
        finally:
            await self._shutdown()
        return self.exit_status

    async def _make_driver(self) -> Driver | None:
        s = self.settings
        if s.driver == "Redis":
            from lobby.drivers.redis import RedisDriver

            return RedisDriver(
                host=s.redis_host,
                port=s.redis_port,
                db=s.redis_db,
                password=s.redis_password,
                channel=s.redis_channel,
                backoff=reconnect_backoff(s.ttl),
            )
        from lobby.drivers.nats import NatsDriver

        servers = s.nats_servers
        if not servers:
            from lobby.embedded import EmbeddedError, EmbeddedNats

            self.embedded = EmbeddedNats(s.embedded_nats_port)
            try:
                await self.embedded.start()
            except (EmbeddedError, OSError) as exc:
                log.error("%s", exc)
                return None
            servers = [self.embedded.url]
        return NatsDriver(
            servers,
            s.nats_discovery_channel,
            ping_interval=max(1, min(s.keep_alive, 10)),
            name=f"lobbyd {self.hostname}",
            backoff=reconnect_backoff(s.ttl),
        )

    def _start_api(self, sock: socket.socket) -> None:
        from lobby.api import create_app
        from lobby.api.server import ApiServer

        s = self.settings
        app = create_app(
            self, s.token, self.feed, node_exporter_port=s.node_exporter_port, metrics=self.metrics
        )
        self._api = ApiServer(app, sock, access_log=s.access_log)
        self._spawn(self._api.serve(), "api")

    def _start_callback(self) -> None:
        from lobby.callback import CallbackRunner

        s = self.settings
        runner = CallbackRunner(
            s.callback,
            cooldown=s.callback_cooldown,
            first_run_delay=s.callback_first_run_delay,
            timeout=s.callback_timeout,
            snapshot=self.registry.all_json,
            on_run=self.metrics.callback_run if self.metrics is not None else None,
        )
        # startup counts as a change: the runner starts dirty
        self.registry.add_listener(lambda change: runner.mark_dirty())
        self.callback = runner
        self._spawn(runner.run(), "callback")

    async def _shutdown(self) -> None:
        started = self.clock.monotonic()
        await self.presence.leave()
        # end every event stream and held query, so each request finishes normally
        self.feed.close()
        if self._api is not None:
            await self._api.stop(timeout=1.0)
        for task in self._tasks:
            task.cancel()
        await asyncio.wait(self._tasks, timeout=0.5) if self._tasks else None
        await self.presence.close()
        if self.embedded is not None:
            await self.embedded.stop()
        log.info("stopped in %.2f s", self.clock.monotonic() - started)


__all__ = ["Daemon"]
