"""Change-triggered command runner (SPEC §8).

The registry calls `mark_dirty()` on every content change; `run()` waits on that flag
and runs the command at most once per cooldown, so a burst of changes costs one run
that sees the final state. The flag is cleared before the snapshot is taken, so a
change that lands during a run causes one more run afterwards: nothing is missed.

A run lasts until the command has exited AND closed its output (like cron: a
background process that keeps our pipe open is still part of the run), bounded by
`timeout`, after which the command's whole process group is killed. The command gets
its own session for that, so a killed shell script takes its children with it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import shlex
import signal
import time
from collections.abc import Callable
from typing import Final, Literal

log = logging.getLogger("lobby.callback")

OUTPUT_LIMIT: Final = 4096  # bytes of the command's output kept for the log
_READ_CHUNK: Final = 65536
_REAP_GRACE: Final = 1.0  # after SIGKILL: how long to wait for the pipes to close

Result = Literal["ok", "failed", "timeout"]
# told after every run: its result and how long it took (lobby.metrics)
RunHook = Callable[[Result, float], None]


class _Output:
    """The first `limit` bytes of a stream; the rest is read and counted, not kept."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.kept = bytearray()
        self.total = 0

    async def read(self, stream: asyncio.StreamReader) -> None:
        while chunk := await stream.read(_READ_CHUNK):
            self.total += len(chunk)
            room = self.limit - len(self.kept)
            if room > 0:
                self.kept += chunk[:room]

    def text(self) -> str:
        shown = self.kept.decode("utf-8", errors="replace").rstrip()
        if self.total > len(self.kept):
            shown += f"\n[... {self.total - len(self.kept)} more bytes not shown]"
        return shown


async def _feed(stdin: asyncio.StreamWriter, data: bytes) -> None:
    """Write `data` to the command's stdin and close it; a command need not read it.

    A command that exits without reading closes the pipe: the write then fails with
    BrokenPipeError or ConnectionResetError, or, under uvloop, with RuntimeError
    ("unable to perform operation on <WriteUnixTransport closed=True>") once the
    transport noticed. All three mean the same here.
    """
    try:
        if not stdin.is_closing():
            stdin.write(data)
            await stdin.drain()
    except (BrokenPipeError, ConnectionResetError):
        pass
    except RuntimeError:
        if not stdin.is_closing():
            raise  # not the closed pipe: a real bug
    finally:
        with contextlib.suppress(RuntimeError, OSError):
            stdin.close()


async def _spawn(argv: list[str]) -> asyncio.subprocess.Process:
    """Start the command in a session of its own, even if cancelled meanwhile.

    The child can run before asyncio has connected its pipes; a cancellation then
    would leave it (and whatever it started) running, so it is killed here.
    """
    start = asyncio.ensure_future(
        asyncio.create_subprocess_exec(
            *argv,
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
            start_new_session=True,
        )
    )
    try:
        return await asyncio.shield(start)
    except asyncio.CancelledError:
        with contextlib.suppress(Exception):
            proc = await start
            _kill_group(proc.pid)
            await _reap(proc)
        raise


async def _reap(proc: asyncio.subprocess.Process) -> None:
    """Wait for a finished or killed command, briefly.

    asyncio's wait() also waits for the pipes, which a process that left the group
    (setsid) may hold for ever.
    """
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(proc.wait(), _REAP_GRACE)


def _kill_group(pid: int) -> None:
    # pid is also the group id: the command was started in its own session
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, signal.SIGKILL)


def _signame(number: int) -> str:
    try:
        return signal.Signals(number).name
    except ValueError:
        return f"signal {number}"


async def _finish(task: asyncio.Task[None]) -> None:
    if not task.done():
        task.cancel()
    with contextlib.suppress(asyncio.CancelledError, OSError):
        await task


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
        name = self.command if len(self.command) <= 200 else self.command[:197] + "..."
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
        data = self._snapshot()
        started = time.monotonic()
        try:
            proc = await _spawn(argv)
        except OSError as exc:
            log.error("callback %r cannot start: %s", name, exc.strerror or exc)
            self._report("failed", time.monotonic() - started)
            return None
        assert proc.stdin is not None and proc.stdout is not None
        output = _Output(self._output_limit)
        feeder = asyncio.create_task(_feed(proc.stdin, data))
        reader = asyncio.create_task(output.read(proc.stdout))
        status: int | None = None
        try:
            try:
                async with asyncio.timeout(self.timeout):
                    await asyncio.wait({reader})  # not cancelled by the timeout
                    status = await proc.wait()
            except TimeoutError:
                _kill_group(proc.pid)
                await asyncio.wait({reader}, timeout=_REAP_GRACE)  # the output so far
        finally:
            # also on cancellation (daemon shutdown): leave no child behind
            if proc.returncode is None or not reader.done():
                _kill_group(proc.pid)
            await _finish(feeder)
            await _finish(reader)
            await _reap(proc)
        took = time.monotonic() - started
        self._report("timeout" if status is None else "ok" if status == 0 else "failed", took)
        shown = output.text()
        tail = f"; output:\n{shown}" if shown else ""
        if status is None:
            log.error("callback %r still running after %g s: killed%s", name, self.timeout, tail)
            return None
        if status == 0:
            log.info("callback %r finished in %.2f s%s", name, took, tail)
        elif status < 0:
            log.warning(
                "callback %r killed by %s after %.2f s%s", name, _signame(-status), took, tail
            )
        else:
            log.warning("callback %r failed with status %d in %.2f s%s", name, status, took, tail)
        return status

    def _report(self, result: Result, took: float) -> None:
        if self._on_run is not None:
            self._on_run(result, took)
