"""Change-triggered command runner (SPEC §8).

The registry calls `mark_dirty()` on every content change; `run()` waits on that flag
and runs the command at most once per cooldown, so a burst of changes costs one run
that sees the final state. The flag is cleared before the snapshot is taken, so a
change that lands during a run causes one more run afterwards: nothing is missed.

A run lasts until the command has exited AND closed its output (like cron: a
background process that keeps our pipe open is still part of the run), bounded by
`timeout`, after which the command's whole process group is killed. The command gets
its own session for that, so a killed shell script takes its children with it
(`lobby._process`, shared with exec health checks).
"""

from __future__ import annotations

import asyncio
import logging
import shlex
from collections.abc import Callable
from typing import Final

from lobby._process import run_command, signame

log = logging.getLogger("lobby.callback")

OUTPUT_LIMIT: Final = 4096  # bytes of the command's output kept for the log


class CallbackRunner:
    def __init__(
        self,
        command: str,
        *,
        cooldown: float,
        first_run_delay: float,
        timeout: float,
        snapshot: Callable[[], bytes],
        output_limit: int = OUTPUT_LIMIT,
    ) -> None:
        self.command = command
        self.cooldown = cooldown
        self.first_run_delay = first_run_delay
        self.timeout = timeout
        self._snapshot = snapshot
        self._output_limit = output_limit
        self._dirty = asyncio.Event()
        self._dirty.set()  # startup counts as a change
        self.runs = 0  # runs attempted (whatever their outcome)
        self.last_status: int | None = None  # exit status; None: did not start / killed

    def mark_dirty(self) -> None:
        """Note a registry change; cheap, called for every change."""
        self._dirty.set()

    async def run(self) -> None:
        """Run the command whenever dirty, forever (until cancelled)."""
        await asyncio.sleep(self.first_run_delay)
        while True:
            await self._dirty.wait()
            self._dirty.clear()
            try:
                self.last_status = await self.run_once()
            except Exception:  # a bug here must not end the daemon, which supervises us
                log.exception("callback: unexpected error")
                self.last_status = None
            self.runs += 1
            await asyncio.sleep(self.cooldown)

    async def run_once(self) -> int | None:
        """One run with the current snapshot on stdin; the exit status or None.

        A negative status is the signal that ended the command.
        """
        name = self.command if len(self.command) <= 200 else self.command[:197] + "..."
        try:
            argv = shlex.split(self.command)
        except ValueError as exc:
            log.error("callback %r cannot be split like a shell would: %s", name, exc)
            return None
        if not argv:
            log.error("callback: CALLBACK is blank")
            return None
        data = self._snapshot()
        try:
            done = await run_command(
                argv, timeout=self.timeout, stdin=data, output_limit=self._output_limit
            )
        except OSError as exc:
            log.error("callback %r cannot start: %s", name, exc.strerror or exc)
            return None
        status, took = done.status, done.took
        shown = done.output.text()
        tail = f"; output:\n{shown}" if shown else ""
        if status is None:
            log.error("callback %r still running after %g s: killed%s", name, self.timeout, tail)
            return None
        if status == 0:
            log.info("callback %r finished in %.2f s%s", name, took, tail)
        elif status < 0:
            log.warning(
                "callback %r killed by %s after %.2f s%s", name, signame(-status), took, tail
            )
        else:
            log.warning("callback %r failed with status %d in %.2f s%s", name, status, took, tail)
        return status
