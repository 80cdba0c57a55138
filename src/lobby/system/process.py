"""Commands run with a deadline: the callback's (SPEC §8) and exec checks' (SPEC §19).

A command gets a session of its own, so killing its process group at the deadline takes
whatever it started with it. A run lasts until the command has exited AND closed its
output (like cron: a background process that keeps our pipe open is still part of the
run), bounded by `timeout`. Only the first `output_limit` bytes of its output (stdout
and stderr together) are kept; the rest is read and counted. Nothing is left running
when a run is cancelled (daemon shutdown) either.

A command starts with the soft RLIMIT_NOFILE lobbyd was started with, not the one it
raised for itself (lobby.lobbyd.raise_open_file_limit), as Go's os/exec does: see
`restore_open_file_limit`.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import os
import shutil
import signal
import subprocess
import time
from dataclasses import dataclass
from typing import Final

_READ_CHUNK: Final = 65536
_REAP_GRACE: Final = 1.0  # after SIGKILL: how long to wait for the pipes to close
_POLL: Final = 0.05  # seconds between looks at a child's exit where there is no pidfd

# what starts each command when lobbyd raised its open file limit: util-linux's prlimit
# putting the soft limit back before it execs the command (see restore_open_file_limit)
_limit_wrapper: list[str] = []


def restore_open_file_limit(soft: int) -> bool:
    """Start every command from now on with `soft` as its soft RLIMIT_NOFILE.

    lobbyd raises its own soft limit to the hard one; commands (the callback, template
    commands, exec checks) must get the limit they would have had without lobbyd, as
    Go's os/exec gives them: programs that select() or size tables by the limit break
    with a huge one. Setting it in the child between fork and exec would need a
    preexec_fn, which is unsafe in a process with threads (lobbyd has them:
    asyncio.to_thread for label files and template rendering) and would stop Popen's
    vfork (see _Child). Lowering the limit in lobbyd around each start would make
    every socket opened meanwhile fail past the old limit. So the command is started
    by `prlimit --nofile=SOFT: -- COMMAND`, which sets the soft limit of its own
    process and execs the command: one more exec in the child, nothing in the loop.

    False (and commands keep the raised limit) where there is no prlimit.
    """
    prlimit = shutil.which("prlimit")
    if prlimit is None:
        _limit_wrapper.clear()
        return False
    _limit_wrapper[:] = [prlimit, f"--nofile={soft}:", "--"]
    return True


def _wrapped(argv: list[str]) -> list[str]:
    """`argv` as started: behind the limit wrapper, if any.

    The command is looked up here as Popen would, so that a missing one still raises
    OSError at start (not a wrapper's exit status 127 and message)."""
    if not _limit_wrapper or not argv:
        return argv
    found = shutil.which(argv[0])
    if found is None:
        if os.sep in argv[0] and os.path.exists(argv[0]):
            raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), argv[0])
        raise FileNotFoundError(errno.ENOENT, os.strerror(errno.ENOENT), argv[0])
    return [*_limit_wrapper, found, *argv[1:]]


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


class _Child:
    """A started command: its output, its input, and when it exits.

    Started with `subprocess.Popen` (vfork: about 0.3 ms, even from a big process)
    rather than the event loop's subprocess support: uvloop's spawn forks the whole
    process and blocks the loop until the child has exec'd, 5-25 ms on a busy machine,
    which 200 exec checks a second turn into a loop that never gets to answer. The exit
    is watched with a pidfd (Linux 5.3+), else by polling.
    """

    def __init__(self, popen: subprocess.Popen[bytes]) -> None:
        self.popen = popen
        self.pid = popen.pid
        self.stdout = asyncio.StreamReader(limit=_READ_CHUNK)
        self.stdin: asyncio.StreamWriter | None = None
        self._transports: list[asyncio.BaseTransport] = []
        # pipes not (yet) handed to a transport, which we must close ourselves
        self._unowned_stdout = popen.stdout
        self._unowned_stdin = popen.stdin
        self._loop = asyncio.get_running_loop()
        self.exited: asyncio.Future[int] = self._loop.create_future()
        self._pidfd = -1
        self._poller: asyncio.Task[None] | None = None
        try:
            self._pidfd = os.pidfd_open(popen.pid)
        except (AttributeError, OSError):  # not Linux, or older than 5.3
            self._poller = asyncio.ensure_future(self._poll())
        else:
            self._loop.add_reader(self._pidfd, self._reap_now)

    async def connect(self) -> None:
        """Hand the pipes to the event loop."""
        loop = self._loop
        reader = self.stdout
        stdout, self._unowned_stdout = self._unowned_stdout, None
        transport, _ = await loop.connect_read_pipe(
            lambda: asyncio.StreamReaderProtocol(reader), stdout
        )
        self._transports.append(transport)  # it closes the pipe: the loop tracks its fd
        stdin, self._unowned_stdin = self._unowned_stdin, None
        if stdin is not None:
            wtransport, protocol = await loop.connect_write_pipe(
                asyncio.streams.FlowControlMixin, stdin
            )
            self._transports.append(wtransport)
            self.stdin = asyncio.StreamWriter(wtransport, protocol, None, loop)

    @property
    def returncode(self) -> int | None:
        return self.popen.returncode

    def _reap_now(self) -> None:
        self._stop_watching()
        if not self.exited.done():
            self.exited.set_result(self.popen.wait())  # it has exited: no wait

    async def _poll(self) -> None:
        while self.popen.poll() is None:  # noqa: ASYNC110 - nothing to wait on without a pidfd
            await asyncio.sleep(_POLL)
        self._reap_now()

    def _stop_watching(self) -> None:
        if self._pidfd >= 0:
            self._loop.remove_reader(self._pidfd)
            os.close(self._pidfd)
            self._pidfd = -1
        if self._poller is not None and self._poller is not asyncio.current_task():
            self._poller.cancel()

    async def wait(self) -> int:
        return await asyncio.shield(self.exited)

    def close(self) -> None:
        """Let go of everything: pipes and the exit watch (once the child is gone)."""
        self._stop_watching()
        for transport in self._transports:
            transport.close()
        for pipe in (self._unowned_stdin, self._unowned_stdout):
            if pipe is not None:
                with contextlib.suppress(OSError):
                    pipe.close()
        self._unowned_stdin = self._unowned_stdout = None


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


async def _spawn(argv: list[str], with_stdin: bool) -> _Child:
    """Start the command in a session of its own; nothing is left behind on failure."""
    # blocking, but only until the child has exec'd (vfork): see _Child
    popen = subprocess.Popen(  # noqa: ASYNC220
        _wrapped(argv),
        stdin=subprocess.PIPE if with_stdin else subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    child = _Child(popen)
    try:
        await child.connect()
    except BaseException:  # cancelled meanwhile, or the loop refused the pipes
        kill_group(child.pid)
        try:
            await _reap(child)
        finally:
            child.close()
        raise
    return child


async def _reap(child: _Child) -> None:
    """Wait for a finished or killed command, briefly.

    (Not wait_for: in Python 3.11 it swallows a cancellation that meets the exit.)
    """
    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout(_REAP_GRACE):
            await child.wait()


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
    """Cancel a helper task and wait for it, whatever it ended with.

    Only the helper's own end is swallowed: a cancellation of the caller propagates
    (swallowing it would leave a cancelled check running for ever).
    """
    if not task.done():
        task.cancel()
    await asyncio.wait({task})
    if not task.cancelled():
        task.exception()  # retrieved: a broken pipe is no news


async def run_process(
    argv: list[str], *, timeout: float, stdin: bytes | None, output_limit: int
) -> Finished:
    """Run `argv` (no shell) with `stdin` as its input (None: /dev/null).

    Raises OSError when the command cannot start.
    """
    started = time.monotonic()
    child = await _spawn(argv, stdin is not None)
    output = BoundedOutput(output_limit)
    feeder = None
    if child.stdin is not None and stdin is not None:
        feeder = asyncio.create_task(_feed(child.stdin, stdin))
    reader = asyncio.create_task(output.read(child.stdout))
    status: int | None = None
    try:
        try:
            async with asyncio.timeout(timeout):
                await asyncio.wait({reader})  # not cancelled by the timeout
                status = await child.wait()
        except TimeoutError:
            kill_group(child.pid)
            await asyncio.wait({reader}, timeout=_REAP_GRACE)  # the output so far
    finally:
        # also on cancellation (daemon shutdown): leave no child behind
        if child.returncode is None or not reader.done():
            kill_group(child.pid)
        try:
            if feeder is not None:
                await _finish(feeder)
            await _finish(reader)
            await _reap(child)
        finally:
            child.close()
    return Finished(status, output, time.monotonic() - started)
