"""Change-triggered command runner (SPEC §8).

The registry calls `mark_dirty()` on every content change; `run()` waits on that flag
and runs the command at most once per cooldown, so a burst of changes costs one run
that sees the final state. The flag is cleared before the snapshot is taken, so a
change that lands during a run causes one more run afterwards: nothing is missed.

The command runs through `lobby.command` (split like a shell, its own session, the
whole process group killed at `timeout`, output and exit status logged), as the
templates' reload commands do.
"""

from __future__ import annotations

import asyncio
import logging
import shlex
from collections.abc import Callable

from lobby.command import OUTPUT_LIMIT, report, run_command, shown

log = logging.getLogger("lobby.callback")


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
        name = shown(self.command)
        try:
            argv = shlex.split(self.command)
        except ValueError as exc:
            log.error("callback %r cannot be split like a shell would: %s", name, exc)
            return None
        if not argv:
            log.error("callback: CALLBACK is blank")
            return None
        try:
            outcome = await run_command(
                argv, stdin=self._snapshot(), timeout=self.timeout, output_limit=self._output_limit
            )
        except OSError as exc:
            log.error("callback %r cannot start: %s", name, exc.strerror or exc)
            return None
        report(log, f"callback {name!r}", outcome, self.timeout)
        return outcome.status
