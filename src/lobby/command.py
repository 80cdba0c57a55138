"""Running a command the way lobbyd runs every command it is given (SPEC §8, §18).

Split like a shell would (shlex), never through a shell; started in a session of its
own, so a timeout kills its whole process group and a killed shell script takes its
children with it. A run lasts until the command has exited AND closed its output
(like cron: a background process that keeps our pipe open is still part of the run),
bounded by the timeout. Only the first few KiB of its output are kept, for the log.

The callback (stdin: the discoveries) and the templates' reload commands (no stdin)
both run through `run_command` and are logged by `report`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import time
from dataclasses import dataclass
from typing import Final

OUTPUT_LIMIT: Final = 4096  # bytes of the command's output kept for the log
_READ_CHUNK: Final = 65536
_REAP_GRACE: Final = 1.0  # after SIGKILL: how long to wait for the pipes to close


@dataclass(frozen=True, slots=True)
class Outcome:
    """How a run ended: `status` is the exit status (negative: the signal that ended
    it), or None when it was still running at the timeout and was killed."""

    status: int | None
    output: str
    took: float


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
    try:
        stdin.write(data)
        await stdin.drain()
    except (BrokenPipeError, ConnectionResetError):
        pass  # the command need not read its input
    finally:
        stdin.close()


async def _spawn(argv: list[str], with_stdin: bool) -> asyncio.subprocess.Process:
    """Start the command in a session of its own, even if cancelled meanwhile.

    The child can run before asyncio has connected its pipes; a cancellation then
    would leave it (and whatever it started) running, so it is killed here.
    """
    start = asyncio.ensure_future(
        asyncio.create_subprocess_exec(
            *argv,
            stdin=asyncio.subprocess.PIPE if with_stdin else asyncio.subprocess.DEVNULL,
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


async def run_command(
    argv: list[str],
    *,
    stdin: bytes | None,
    timeout: float,
    output_limit: int = OUTPUT_LIMIT,
) -> Outcome:
    """Run `argv` (stdin: `stdin`, or /dev/null for None) for at most `timeout` seconds.

    Raises OSError when the command cannot start. Cancelling it (daemon shutdown)
    kills the command's process group: no child is left behind.
    """
    started = time.monotonic()
    proc = await _spawn(argv, stdin is not None)
    assert proc.stdout is not None
    output = _Output(output_limit)
    feeder = None
    if stdin is not None:
        assert proc.stdin is not None
        feeder = asyncio.create_task(_feed(proc.stdin, stdin))
    reader = asyncio.create_task(output.read(proc.stdout))
    status: int | None = None
    try:
        try:
            async with asyncio.timeout(timeout):
                await asyncio.wait({reader})  # not cancelled by the timeout
                status = await proc.wait()
        except TimeoutError:
            _kill_group(proc.pid)
            await asyncio.wait({reader}, timeout=_REAP_GRACE)  # the output so far
    finally:
        # also on cancellation (daemon shutdown): leave no child behind
        if proc.returncode is None or not reader.done():
            _kill_group(proc.pid)
        if feeder is not None:
            await _finish(feeder)
        await _finish(reader)
        await _reap(proc)
    return Outcome(status, output.text(), time.monotonic() - started)


def shown(command: str) -> str:
    """A command as the log shows it: at most 200 characters."""
    return command if len(command) <= 200 else command[:197] + "..."


def report(log: logging.Logger, what: str, outcome: Outcome, timeout: float) -> None:
    """One log line for a finished run of `what` (e.g. "callback 'x'"), with its output."""
    tail = f"; output:\n{outcome.output}" if outcome.output else ""
    status, took = outcome.status, outcome.took
    if status is None:
        log.error("%s still running after %g s: killed%s", what, timeout, tail)
    elif status == 0:
        log.info("%s finished in %.2f s%s", what, took, tail)
    elif status < 0:
        log.warning("%s killed by %s after %.2f s%s", what, _signame(-status), took, tail)
    else:
        log.warning("%s failed with status %d in %.2f s%s", what, status, took, tail)
