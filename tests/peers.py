"""Run many real lobbyd daemons in one process (API off): a crowd of live peers.

    python tests/peers.py COUNT PREFIX   (broker settings from the environment, as lobbyd)

Each is a full `Daemon` on its own real broker connection; only the process is shared,
so a test can stand up 50 live nodes for the price of one interpreter.
"""

from __future__ import annotations

import asyncio
import os
import signal
import sys

from lobby import config
from lobby.daemon import Daemon


async def main(count: int, prefix: str) -> None:
    daemons = []
    for i in range(count):
        env = {
            **os.environ,
            "HOSTNAME": f"{prefix}{i:03d}",
            "DISABLE_API": "true",
            "LABELS_PATH": "/nonexistent",
            "LABELS": f"peer:{i},crowd:{prefix}",
        }
        daemons.append(Daemon(config.load(env)))
    tasks = [asyncio.create_task(d.run()) for d in daemons]
    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    print("ready", flush=True)
    await stop.wait()
    for d in daemons:
        d.stop()
    await asyncio.gather(*tasks)


if __name__ == "__main__":
    asyncio.run(main(int(sys.argv[1]), sys.argv[2]))
