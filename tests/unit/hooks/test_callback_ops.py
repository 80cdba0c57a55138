"""The callback under uvloop, its result for /metrics, and the closed-pipe race (SPEC §8, §14).

A command that exits without reading its stdin closes the pipe while lobbyd may still
be writing to it: uvloop then raises RuntimeError ("unable to perform operation on
<WriteUnixTransport closed=True>"), not BrokenPipeError. Every run must still end
with the command's own status and output in the log.
"""

from __future__ import annotations

import logging

import pytest
import uvloop

from lobby.hooks.callback import CallbackRunner


def runner(command: str, snapshot: bytes, results: list[tuple[str, float]]) -> CallbackRunner:
    return CallbackRunner(
        command,
        cooldown=0,
        first_run_delay=0,
        timeout=10,
        snapshot=lambda: snapshot,
        on_run=lambda result, took: results.append((result, took)),
    )


@pytest.mark.parametrize("size", [10, 100_000, 2_000_000])
def test_a_command_that_exits_without_reading_stdin_under_uvloop(
    size: int, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, "lobby.callback")
    results: list[tuple[str, float]] = []
    r = runner("sh -c 'echo oops >&2; exit 3'", b"x" * size, results)

    async def runs() -> list[int | None]:
        return [await r.run_once() for _ in range(12)]

    assert uvloop.run(runs()) == [3] * 12
    assert "unexpected error" not in caplog.text
    assert "RuntimeError" not in caplog.text
    assert caplog.text.count("failed with status 3") == 12
    assert caplog.text.count("output:\noops") == 12
    assert [result for result, _ in results] == ["failed"] * 12


def test_false_under_uvloop(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, "lobby.callback")
    results: list[tuple[str, float]] = []
    r = runner("false", b"[]\n" * 1000, results)

    async def runs() -> list[int | None]:
        return [await r.run_once() for _ in range(12)]

    assert uvloop.run(runs()) == [1] * 12
    assert "unexpected error" not in caplog.text


def test_each_run_reports_its_result_and_duration() -> None:
    results: list[tuple[str, float]] = []

    async def runs() -> None:
        await runner("true", b"[]", results).run_once()
        await runner("sh -c 'exit 2'", b"[]", results).run_once()
        await runner("/nonexistent/command", b"[]", results).run_once()
        slow = runner("sleep 30", b"[]", results)
        slow.timeout = 0.2
        await slow.run_once()

    uvloop.run(runs())
    assert [result for result, _ in results] == ["ok", "failed", "failed", "timeout"]
    assert all(took < 10 for _, took in results[:3]), results  # quick ones: none held
    assert results[3][1] >= 0.2  # a lower bound: the command ran until the timeout
