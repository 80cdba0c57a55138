"""Running a command the way lobbyd runs every command it is given (SPEC §8, §18).

Split like a shell would (shlex), never through a shell; started in a session of its
own, so a timeout kills its whole process group and a killed shell script takes its
children with it. A run lasts until the command has exited AND closed its output
(like cron: a background process that keeps our pipe open is still part of the run),
bounded by the timeout. Only the first few KiB of its output are kept, for the log.

The callback (stdin: the discoveries) and the templates' reload commands (no stdin)
both run through `run_command` and are logged by `report`; the process handling
itself (spawning off the event loop, pidfd exit watch, group kill) is
`lobby.system.process`, shared with exec health checks.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Final

from lobby.system import process as _process

OUTPUT_LIMIT: Final = 4096  # bytes of the command's output kept for the log


@dataclass(frozen=True, slots=True)
class CommandResult:
    """How a run ended: `status` is the exit status (negative: the signal that ended
    it), or None when it was still running at the timeout and was killed."""

    status: int | None
    output: str
    took: float


async def run_command(
    argv: list[str],
    *,
    stdin: bytes | None,
    timeout: float,
    output_limit: int = OUTPUT_LIMIT,
) -> CommandResult:
    """Run `argv` (stdin: `stdin`, or /dev/null for None) for at most `timeout` seconds.

    Raises OSError when the command cannot start. Cancelling it (daemon shutdown)
    kills the command's process group: no child is left behind.
    """
    done = await _process.run_process(argv, timeout=timeout, stdin=stdin, output_limit=output_limit)
    return CommandResult(done.status, done.output.text(), done.took)


def shown(command: str) -> str:
    """A command as the log shows it: at most 200 characters."""
    return command if len(command) <= 200 else command[:197] + "..."


def report(log: logging.Logger, what: str, outcome: CommandResult, timeout: float) -> None:
    """One log line for a finished run of `what` (e.g. "callback 'x'"), with its output."""
    tail = f"; output:\n{outcome.output}" if outcome.output else ""
    status, took = outcome.status, outcome.took
    if status is None:
        log.error("%s still running after %g s: killed%s", what, timeout, tail)
    elif status == 0:
        log.info("%s finished in %.2f s%s", what, took, tail)
    elif status < 0:
        log.warning("%s killed by %s after %.2f s%s", what, _process.signame(-status), took, tail)
    else:
        log.warning("%s failed with status %d in %.2f s%s", what, status, took, tail)
