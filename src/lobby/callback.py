"""Change-triggered command runner (SPEC §8). Placeholder: being written."""

from __future__ import annotations

import asyncio
from collections.abc import Callable


class CallbackRunner:
    def __init__(
        self,
        command: str,
        *,
        cooldown: float,
        first_run_delay: float,
        timeout: float,
        snapshot: Callable[[], bytes],
    ) -> None:
        self.command = command

    def mark_dirty(self) -> None:
        pass

    async def run(self) -> None:
        await asyncio.Event().wait()
