"""An agent's copy of the cluster, for what needs a registry (SPEC §20).

An agent hears no keep-alive, so its own registry holds itself only. Its API relays
the cluster reads to a listener; what reads a registry directly (`/v1/events`, the
dashboard through it, TEMPLATES and CALLBACK) reads the `Mirror`'s instead: a
registry kept by blocking queries of `/v1/discoveries` through listeners, the way
consul-template watches Consul. Each answer replaces the copy: nodes that joined or
changed are updated, nodes no longer listed leave (reason `expired`: gone from the
listener's view), so the change feed, the event stream and the runners see
join/update/leave as on a listener.

The copy's registry expires nothing itself (its clock stands paused): the listener's
view decides. At most one read a second (`MIN_INTERVAL`), so a busy cluster costs an
agent one whole list a second, not one per change. The mirror starts when something
needs it (`need`): at start with TEMPLATES or CALLBACK, else at the first event stream;
`ready` is set once the first list is in, before which nothing renders from it.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Final

import orjson

from lobby.core.model import Discovery
from lobby.core.query import NoAnswer
from lobby.node.queries import Asker
from lobby.view.registry import Registry

log = logging.getLogger("lobby")

WAIT: Final = 60  # seconds a blocking read is held
MIN_INTERVAL: Final = 1.0  # seconds between the starts of two reads
RETRY: Final = 1.0  # after no listener answered


class Mirror:
    def __init__(self, asker: Asker, registry: Registry) -> None:
        self.asker = asker
        self.registry = registry
        registry.pause(why="mirror")  # nothing expires here: the listener's view decides
        self.ready = asyncio.Event()
        self.reads = 0
        self.failures = 0
        self._task: asyncio.Task[None] | None = None

    def need(self) -> None:
        """Start keeping the copy (idempotent)."""
        if self._task is None:
            self._task = asyncio.create_task(self.run(), name="mirror")

    async def wait_ready(self) -> None:
        self.need()
        await self.ready.wait()

    async def run(self) -> None:
        index: int | None = None
        while True:
            started = time.monotonic()
            query = b"" if index is None else b"index=%d&wait=%ds" % (index, WAIT)
            try:
                reply = await self.asker.ask("GET", "/v1/discoveries", query)
            except NoAnswer:
                self.failures += 1
                await asyncio.sleep(RETRY)
                continue
            given = reply.header(b"x-lobby-index")
            if reply.status != 200 or given is None or not given.isdigit():
                self.failures += 1
                log.warning("mirror: a listener answered %d; reading again", reply.status)
                await asyncio.sleep(RETRY)
                index = None
                continue
            try:
                self.replace(orjson.loads(reply.body))
            except (orjson.JSONDecodeError, KeyError, TypeError) as exc:
                self.failures += 1
                log.warning("mirror: a listener's list did not parse: %s", exc)
                index = None
                continue
            self.reads += 1
            index = int(given)
            self.ready.set()
            await asyncio.sleep(max(0.0, MIN_INTERVAL - (time.monotonic() - started)))

    def replace(self, listed: list[dict[str, object]]) -> None:
        """Make the copy what `listed` (a /v1/discoveries answer) says."""
        registry = self.registry
        seen: set[str] = set()
        for item in listed:
            hostname = item["hostname"]
            labels = item["labels"]
            if not isinstance(hostname, str) or not isinstance(labels, list):
                raise TypeError("a discovery without hostname or labels")
            seen.add(hostname)
            current = registry.get(hostname)
            wanted = tuple(str(label) for label in labels)
            if current is None or current.labels != wanted:
                registry.update(Discovery(hostname, wanted))
        for hostname in [h for h in registry.hostnames() if h not in seen]:
            registry.remove(hostname, "expired")

    def stats(self) -> dict[str, object]:
        return {
            "running": self._task is not None,
            "ready": self.ready.is_set(),
            "nodes": len(self.registry),
            "reads": self.reads,
            "failures": self.failures,
        }

    def close(self) -> None:
        if self._task is not None:
            self._task.cancel()


__all__ = ["Mirror"]
