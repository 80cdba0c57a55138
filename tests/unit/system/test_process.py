"""lobby._process, below the callback and exec checks: a cancelled caller stays cancelled.

A helper that swallowed its caller's cancellation would leave a cancelled health check
running for ever, and a daemon that never finishes shutting down.
"""

from __future__ import annotations

import asyncio

import pytest

from lobby.system import process as _process
from lobby.system.process import _finish, _reap, restore_open_file_limit, run_process


async def test_finish_lets_the_callers_cancellation_through():
    async def slow_to_stop() -> None:
        try:
            await asyncio.sleep(60)
        except asyncio.CancelledError:
            await asyncio.sleep(0.05)  # still cleaning up when the caller is cancelled
            raise

    helper = asyncio.create_task(slow_to_stop())
    await asyncio.sleep(0)
    caller = asyncio.create_task(_finish(helper))
    await asyncio.sleep(0.01)
    caller.cancel()
    with pytest.raises(asyncio.CancelledError):
        await caller
    assert caller.cancelled()


class Exiting:
    """The part of a started command that `_reap` uses: its exit, set by the test."""

    def __init__(self) -> None:
        self.exited: asyncio.Future[int] = asyncio.get_running_loop().create_future()

    async def wait(self) -> int:
        return await asyncio.shield(self.exited)


async def test_reap_lets_the_callers_cancellation_through_when_the_exit_comes_with_it():
    child = Exiting()
    caller = asyncio.create_task(_reap(child))  # type: ignore[arg-type]
    await asyncio.sleep(0.01)  # waiting for the exit
    child.exited.set_result(0)  # the command exits just as ...
    await asyncio.sleep(0)  # (one step: Python 3.11's wait_for swallowed the cancel here)
    assert caller.cancel()  # ... the daemon stops, while the caller still waits
    with pytest.raises(asyncio.CancelledError):
        await caller


async def test_run_command_feeds_stdin_and_keeps_the_first_bytes():
    done = await run_process(
        ["sh", "-c", "cat; echo done >&2; exit 3"],
        timeout=10,
        stdin=b"x" * 100_000,
        output_limit=10,
    )
    assert done.status == 3
    assert bytes(done.output.kept) == b"x" * 10 and done.output.total == 100_005


@pytest.fixture
def limit_restored():
    """Commands start with a soft open file limit of 64 (as after lobbyd raised its own)."""
    assert restore_open_file_limit(64)
    yield
    _process._limit_wrapper.clear()


async def test_commands_start_with_the_restored_open_file_limit(limit_restored):
    done = await run_process(["sh", "-c", "ulimit -n"], timeout=10, stdin=None, output_limit=100)
    assert (done.status, done.output.text()) == (0, "64")


async def test_a_missing_command_still_cannot_start_behind_the_limit_wrapper(limit_restored):
    with pytest.raises(FileNotFoundError):
        await run_process(["no-such-command-here"], timeout=10, stdin=None, output_limit=100)
    with pytest.raises(FileNotFoundError):
        await run_process(["/no/such/command"], timeout=10, stdin=None, output_limit=100)
