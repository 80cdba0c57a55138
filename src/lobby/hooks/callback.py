"""Change-triggered command runner (SPEC §8).

The registry calls `mark_dirty()` on every content change; `run()` waits on that flag
and runs the command at most once per cooldown, so a burst of changes costs one run
that sees the final state. The flag is cleared before the snapshot is taken, so a
change that lands during a run causes one more run afterwards: nothing is missed.

The command runs through `lobby.system.command` (split like a shell, its own session, the
whole process group killed at `timeout`, output and exit status logged), as the
templates' reload commands do.
"""

from __future__ import annotations

import asyncio
import logging
import shlex
import time
from collections.abc import Callable
from typing import Any, Literal, Protocol

from lobby.system.command import OUTPUT_LIMIT, report, run_command, shown

log = logging.getLogger("lobby.callback")

Result = Literal["ok", "failed", "timeout"]
# told after every run: its result and how long it took (lobby.metrics)
RunHook = Callable[[Result, float], None]


class CallbackSettings(Protocol):
    """What the runner reads of the settings (lobby.config.Settings has it)."""

    @property
    def callback(self) -> str: ...
    @property
    def callback_cooldown(self) -> int: ...
    @property
    def callback_first_run_delay(self) -> int: ...
    @property
    def callback_timeout(self) -> int: ...


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
        on_run: RunHook | None = None,
    ) -> None:
        self.command = command
        self.cooldown = cooldown
        self.first_run_delay = first_run_delay
        self.timeout = timeout
        self._snapshot = snapshot
        self._output_limit = output_limit
        self._on_run = on_run
        self._dirty = asyncio.Event()
        self._dirty.set()  # startup counts as a change
        self.runs = 0  # runs attempted (whatever their outcome)
        self.last_status: int | None = None  # exit status; None: did not start / killed

    @classmethod
    def from_settings(
        cls, s: CallbackSettings, snapshot: Callable[[], bytes], on_run: RunHook | None = None
    ) -> CallbackRunner:
        return cls(
            s.callback,
            cooldown=s.callback_cooldown,
            first_run_delay=s.callback_first_run_delay,
            timeout=s.callback_timeout,
            snapshot=snapshot,
            on_run=on_run,
        )

    def stats(self) -> dict[str, Any]:
        return {"runs": self.runs, "last_status": self.last_status}

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
                self._report("failed", 0.0)
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
            self._report("failed", 0.0)
            return None
        if not argv:
            log.error("callback: CALLBACK is blank")
            self._report("failed", 0.0)
            return None
        started = time.monotonic()
        try:
            outcome = await run_command(
                argv, stdin=self._snapshot(), timeout=self.timeout, output_limit=self._output_limit
            )
        except OSError as exc:
            log.error("callback %r cannot start: %s", name, exc.strerror or exc)
            self._report("failed", time.monotonic() - started)
            return None
        status = outcome.status
        self._report(
            "timeout" if status is None else "ok" if status == 0 else "failed", outcome.took
        )
        report(log, f"callback {name!r}", outcome, self.timeout)
        return status

    def _report(self, result: Result, took: float) -> None:
        if self._on_run is not None:
            self._on_run(result, took)
