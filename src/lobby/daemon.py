"""lobbyd: wiring and lifecycle, nothing else (SPEC §3).

One asyncio loop holds everything. The daemon builds the registry, the node's
presence on the bus (`lobby.node.presence`), the change feed, and, when configured, the
API server, the callback, the templates, the DNS interface and the health checks
(`lobby.node.checks`, which give presence the labels that pass); it supervises their tasks
(one dying stops the daemon with status 1) and shuts them down in order: goodbye
first, then the rest. Data flows one way: driver -> presence -> registry -> feed ->
api / callback / templates, and registry -> dns.
"""

from __future__ import annotations

import asyncio
import logging
import socket
from collections.abc import Callable, Coroutine, Sequence
from typing import TYPE_CHECKING, Any

from lobby import __version__
from lobby.config import Settings
from lobby.core.clock import SYSTEM_CLOCK, Clock, StallClock
from lobby.drivers.base import Driver
from lobby.node import report
from lobby.node.presence import Presence
from lobby.node.queries import Asker, Responder
from lobby.ops.logs import NodeEventLog
from lobby.view.cache import Answers
from lobby.view.feed import ChangeFeed
from lobby.view.registry import Registry

if TYPE_CHECKING:  # each imported only when its setting asks for it
    from lobby.api.dispatch import Api
    from lobby.api.relayed import AgentSide
    from lobby.api.server import ApiServer
    from lobby.core.query import Query, Reply
    from lobby.drivers.embedded import EmbeddedNats
    from lobby.hooks.callback import CallbackRunner
    from lobby.hooks.templates import TemplateRunner
    from lobby.nameserver.server import DnsServer
    from lobby.node.checks import Checks
    from lobby.node.mirror import Mirror
    from lobby.ops.metrics import Metrics

log = logging.getLogger("lobby")


class Daemon:
    def __init__(
        self,
        settings: Settings,
        *,
        driver: Driver | None = None,
        drivers: Sequence[tuple[str, Driver]] = (),
        clock: Clock = SYSTEM_CLOCK,
        system_hostname: Callable[[], str] = socket.gethostname,
    ) -> None:
        self.settings = settings
        if clock is SYSTEM_CLOCK:  # real time: a frozen loop's gap counts towards no TTL
            clock = Clock(StallClock(), clock.wall)
        self.clock = clock
        self.registry = Registry(settings.ttl, clock=clock.monotonic, wall_clock=clock.wall)
        self.checks: Checks | None = None  # lobby.checks is imported only with CHECKS(_FILE)
        if settings.has_checks:
            from lobby.node.checks import Checks

            self.checks = Checks.from_settings(settings, clock)
        self.presence = Presence(
            settings,
            self.registry,
            clock=clock,
            system_hostname=system_hostname,
            extra_labels=self.checks.passing_labels if self.checks else None,
        )
        self.feed = ChangeFeed(self.registry)
        self.answers = Answers(self.registry, wall=clock.wall)  # kept until it changes
        # what the event streams, templates and callback read: the registry, or on an
        # agent the mirror's copy (below)
        self.view = self.registry
        self.view_feed = self.feed
        self.view_answers = self.answers
        self.mirror: Mirror | None = None
        # what the API reads (lobby.api.answers.Node) besides stats: presence's own
        self.own_discovery = self.presence.own_discovery
        self.add_labels = self.presence.add_labels
        self.delete_labels = self.presence.delete_labels
        self.health = self.presence.health
        # given (tests) or built from DRIVER at run(); `driver` is the first DRIVER's
        self.drivers = list(drivers) or ([(settings.drivers[0], driver)] if driver else [])
        # join, update, leave and expire at INFO on the `lobby.nodes` logger
        self.registry.add_listener(NodeEventLog(logging.getLogger("lobby.nodes"), settings.ttl))
        # agents and listeners (SPEC §20): an agent asks, a listener answers
        self.asker: Asker | None = None
        self.responder: Responder | None = None
        if settings.listen:
            self.responder = Responder(
                self.presence.links,
                self._answer_query,
                warm_after=settings.keep_alive + 1.0,
                keep_alive=settings.keep_alive,
                hostname=lambda: self.presence.hostname,
                clock=clock.monotonic,
            )
            self.presence.link_watchers.append(self.responder.link_changed)
        else:
            self.asker = Asker(self.presence.links)
            # what reads a registry (event streams, templates, callback) reads a copy
            # kept through listeners (lobby.node.mirror); the own registry holds us
            from lobby.node.mirror import Mirror

            view = Registry(settings.ttl, clock=clock.monotonic, wall_clock=clock.wall)
            self.mirror = Mirror(self.asker, view)
            self.view = view
            self.view_feed = ChangeFeed(view)
            self.view_answers = Answers(view, wall=clock.wall)
        self.metrics: Metrics | None = None
        if not settings.disable_api:
            from lobby.ops.metrics import Metrics

            self.metrics = report.track(
                Metrics(__version__), self.registry, self.presence, self.feed
            )
            for side in (self.asker, self.responder):
                if side is not None:
                    side.observe = self.metrics.query
        self.embedded: EmbeddedNats | None = None
        self.callback: CallbackRunner | None = None
        self.templates: TemplateRunner | None = None
        self.started = clock.wall()
        self.exit_status = 0
        self._stopping = asyncio.Event()
        self._tasks: list[asyncio.Task[object]] = []
        self._api: ApiServer | None = None
        self._dispatch: Api | None = None  # the API's dispatch, socket or not
        self.dns: DnsServer | None = None  # when DNS_PORT is set

    # -- what the API reads (lobby.api.answers.Node) -------------------------------------

    @property
    def hostname(self) -> str:
        return self.presence.hostname

    @property
    def driver(self) -> Driver | None:
        """The first driver: the only one with a single DRIVER."""
        return self.drivers[0][1] if self.drivers else None

    def stats(self) -> dict[str, Any]:
        parts = {
            "api": self._api,
            "callback": self.callback,
            "templates": self.templates,
            "queries": self.asker or self.responder,
            "mirror": self.mirror,
        }
        return report.stats(self, self.presence, self.feed, {**parts, "dns": self.dns})

    # -- lifecycle ----------------------------------------------------------------

    def stop(self) -> None:
        self._stopping.set()

    def _spawn(self, coro: Coroutine[Any, Any, object], name: str) -> None:
        """Start a task that must live as long as the daemon; if it dies, so do we."""
        task = asyncio.create_task(coro, name=name)
        task.add_done_callback(self._task_done)
        self._tasks.append(task)

    def _task_done(self, task: asyncio.Task[object]) -> None:
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
        sock = None
        if not s.disable_api:
            from lobby.api.server import bind

            try:
                sock = bind(s.host, s.port)
            except OSError as exc:
                log.error("cannot listen on %s:%d: %s", s.host, s.port, exc.strerror or exc)
                return 1
        if s.dns_port:
            from lobby.nameserver.server import from_settings

            self.dns = from_settings(s, self.registry)  # None: cannot listen (logged)
            if self.dns is None:
                if sock is not None:
                    sock.close()
                return 1
        try:
            if not self.drivers:
                from lobby.node.brokers import BrokerSetupError, make_drivers

                try:
                    self.drivers, self.embedded = await make_drivers(s, self.hostname)
                except BrokerSetupError as exc:
                    log.error("%s", exc)
                    return 1
            await self.presence.start(self.drivers)
            if self.embedded is not None:
                from lobby.drivers.embedded import keep_serving

                nats = dict(self.drivers)["NATS"]
                self._spawn(keep_serving(self.embedded, lambda: nats.connected), "embedded")
            for name, loop in self.presence.loops().items():
                self._spawn(loop, name)
            self._spawn(self.presence.watch_labels(self._stopping), "label-watch")
            if self.checks is not None:
                self._spawn(self.checks.run(self.presence.refresh_labels, self._stopping), "checks")
            self._spawn(self.registry.sweep(s.clean_every), "sweeper")
            if self.dns is not None:
                await self.dns.start()
            self._start_runners()
            if sock is not None:
                self._start_api(sock)
            await self._stopping.wait()
        finally:
            await self._shutdown()
        return self.exit_status

    async def _answer_query(self, query: Query) -> Reply:
        """A listener's answer to an agent's query: through its own API (SPEC §20)."""
        from lobby.api.relayed import answer_query

        return await answer_query(self._api_dispatch(), query)

    async def _probe(self) -> bool:
        """An agent's /v1/health: did a listener answer of late, or does one now?"""
        assert self.asker is not None
        recent = self.asker.reachable(within=self.settings.keep_alive)
        if recent is not None:
            return recent
        from lobby.core.query import NoAnswer

        try:
            await self.asker.ask("GET", "/v1/health")
        except NoAnswer:
            return False
        return True

    def _api_dispatch(self) -> Api:
        """The API's dispatch: the HTTP server's, or one without a socket (a listener
        with DISABLE_API still answers agents)."""
        if self._dispatch is None:
            from lobby.api.dispatch import Api
            from lobby.api.server import api_limits

            s = self.settings
            self._dispatch = Api(
                self,
                s.token,
                self.feed,
                node_exporter_port=s.node_exporter_port,
                read_token=s.read_token,
                checks=self.checks.report if self.checks else None,
                metrics=self.metrics,
                limits=api_limits(s),
                access_log=s.access_log,
                agent=self._agent_side(),
            )
        return self._dispatch

    def _agent_side(self) -> AgentSide | None:
        if self.asker is None or self.mirror is None:
            return None
        from lobby.api.relayed import AgentSide

        return AgentSide(self.asker.ask, self._probe, self.view_feed, self.mirror.wait_ready)

    def _start_api(self, sock: socket.socket) -> None:
        from lobby.api.server import ApiServer

        s = self.settings
        api = self._api_dispatch()
        self._api = ApiServer.from_settings(s, api, sock)
        self._spawn(self._api.serve(), "api")

    async def _start_runners_on_mirror(self) -> None:
        """An agent's runners start once its copy of the cluster is in: never on an
        empty cluster that is only not read yet."""
        assert self.mirror is not None
        await self.mirror.wait_ready()
        self._start_runners()
        await self._stopping.wait()  # a supervised task: it ends with the daemon

    def _start_runners(self) -> None:
        """CALLBACK and TEMPLATES: each runs after registry changes (startup counts)."""
        s = self.settings
        if self.mirror is not None and not self.mirror.ready.is_set():
            if s.callback or s.templates:
                self._spawn(self._start_runners_on_mirror(), "runners")
            return
        if s.callback:
            from lobby.hooks.callback import CallbackRunner

            on_run = self.metrics.callback_run if self.metrics is not None else None
            callback = self.callback = CallbackRunner.from_settings(
                s, self.view_answers.all_json, on_run
            )
            self.view.add_listener(lambda change: callback.mark_dirty())
            self._spawn(callback.run(), "callback")
        if s.templates:
            from lobby.hooks.templates import TemplateRunner

            templates = self.templates = TemplateRunner.from_settings(
                s, self.view, self.own_discovery
            )
            self.view.add_listener(lambda change: templates.changed())
            self._spawn(templates.run(), "templates")

    async def _shutdown(self) -> None:
        started = self.clock.monotonic()
        if self.responder is not None:  # agents ask the other listeners from now on
            await self.responder.leave()
        await self.presence.leave()
        # end every event stream and held query, so each request finishes normally
        self.feed.close()
        if self.mirror is not None:
            self.mirror.close()
            self.view_feed.close()
        if self._api is not None:
            await self._api.stop(timeout=1.0)
        if self.dns is not None:
            self.dns.close()
        for task in self._tasks:
            task.cancel()
        await asyncio.wait(self._tasks, timeout=0.5) if self._tasks else None
        await self.presence.close()
        if self.embedded is not None:
            await self.embedded.stop()
        log.info("stopped in %.2f s", self.clock.monotonic() - started)


__all__ = ["Daemon"]
