"""Commands run with a deadline: the callback's (SPEC §8) and exec checks' (SPEC §19).

A command gets a session of its own, so killing its process group at the deadline takes
whatever it started with it. A run lasts until the command has exited AND closed its
output (like cron: a background process that keeps our pipe open is still part of the
run), bounded by `timeout`. Only the first `output_limit` bytes of its output (stdout
and stderr together) are kept; the rest is read and counted. Nothing is left running
when a run is cancelled (daemon shutdown) either.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import time
from dataclasses import dataclass
from typing import Final

_READ_CHUNK: Final = 65536
_REAP_GRACE: Final = 1.0  # after SIGKILL: how long to wait for the pipes to close


class BoundedOutput:
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
        """What was kept, decoded, trailing space removed, with a note of what was not."""
        shown = self.kept.decode("utf-8", errors="replace").rstrip()
        if self.total > len(self.kept):
            shown += f"\n[... {self.total - len(self.kept)} more bytes not shown]"
        return shown


@dataclass
class Finished:
    """How a run ended."""

    status: int | None  # exit status; negative: the signal that ended it; None: timed out
    output: BoundedOutput
    took: float  # seconds


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
            kill_group(proc.pid)
            await _reap(proc)
        raise


async def _reap(proc: asyncio.subprocess.Process) -> None:
    """Wait for a finished or killed command, briefly.

    asyncio's wait() also waits for the pipes, which a process that left the group
    (setsid) may hold for ever.
    """
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(proc.wait(), _REAP_GRACE)


def kill_group(pid: int) -> None:
    """SIGKILL the process group of a command started here (its pid is the group id)."""
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, signal.SIGKILL)


def signame(number: int) -> str:
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
    argv: list[str], *, timeout: float, stdin: bytes | None, output_limit: int
) -> Finished:
    """Run `argv` (no shell) with `stdin` as its input (None: /dev/null).

    Raises OSError when the command cannot start.
    """
    started = time.monotonic()
    proc = await _spawn(argv, stdin is not None)
    assert proc.stdout is not None
    output = BoundedOutput(output_limit)
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
            kill_group(proc.pid)
            await asyncio.wait({reader}, timeout=_REAP_GRACE)  # the output so far
    finally:
        # also on cancellation (daemon shutdown): leave no child behind
        if proc.returncode is None or not reader.done():
            kill_group(proc.pid)
        if feeder is not None:
            await _finish(feeder)
        await _finish(reader)
        await _reap(proc)
    return Finished(status, output, time.monotonic() - started)
