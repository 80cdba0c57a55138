"""The lobbyd command: arguments, environment, logging and signals, then the daemon.

lobbyd takes no arguments but --help and --version; everything else comes from the
environment (lobby.config). A malformed variable exits 2 with one line naming it.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import sys
from collections.abc import Sequence
from typing import Any

from lobby import __version__, config
from lobby.config import Settings
from lobby.daemon import Daemon
from lobby.ops import logs
from lobby.system import process as _process

log = logging.getLogger("lobby")


def _usage_error(message: str) -> None:
    print(f"lobbyd: {message}", file=sys.stderr)
    sys.exit(2)


def load_settings(environ: dict[str, str] | os._Environ[str]) -> Settings:
    """Settings, their files checked, or exit 2 with one line naming the variable."""
    try:
        settings = config.load(environ)
        config.check_files(settings)
    except config.ConfigError as exc:
        _usage_error(str(exc))
        raise  # unreachable
    return settings


def raise_open_file_limit() -> None:
    """Raise the soft RLIMIT_NOFILE to the hard limit, as Go's runtime does for every
    Go program, and log the figure: 1,024 (systemd's default soft limit) is too few for
    API_MAX_CONNECTIONS plus the broker, the label files and inotify. The commands
    lobbyd starts get the original soft limit back (lobby._process), as in Go.
    """
    try:
        import resource
    except ImportError:  # pragma: no cover - not Unix
        return
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY or (soft != resource.RLIM_INFINITY and soft < hard):
        target = hard
        if hard == resource.RLIM_INFINITY:  # Linux refuses more than fs.nr_open
            try:
                with open("/proc/sys/fs/nr_open") as fh:
                    target = int(fh.read())
            except (OSError, ValueError):
                target = soft
        if target > soft:
            try:
                resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
            except (OSError, ValueError) as exc:
                log.warning("cannot raise the open file limit from %d to %d: %s", soft, target, exc)
            else:
                log.info("open file limit raised from %d to %d (the hard limit)", soft, target)
                # commands lobbyd starts get the limit back, as Go's os/exec gives it
                if not _process.restore_open_file_limit(soft):
                    log.info(
                        "no prlimit (util-linux): commands started by lobbyd get its open"
                        " file limit, %d, not %d",
                        target,
                        soft,
                    )
                return
    log.info("open file limit: %s", "unlimited" if soft == resource.RLIM_INFINITY else soft)


async def _main(settings: Settings) -> int:
    daemon = Daemon(settings)
    loop = asyncio.get_running_loop()
    signals = 0

    def on_signal(sig: signal.Signals) -> None:
        nonlocal signals
        signals += 1
        if signals > 1:
            log.warning("second %s: exiting now", sig.name)
            os._exit(1)
        log.info("%s: shutting down", sig.name)
        daemon.stop()

    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, on_signal, sig)
    return await daemon.run()


def main(argv: Sequence[str] | None = None) -> None:
    args = list(sys.argv[1:] if argv is None else argv)
    if args and args[0] in ("-h", "--help", "help"):
        print(config.help_text())
        return
    if args and args[0] in ("-V", "--version"):
        print(f"lobbyd {__version__}")
        return
    if args:
        _usage_error(
            f"unexpected argument {args[0]!r}; lobbyd is configured by environment "
            "variables (see lobbyd --help)"
        )
    settings = load_settings(os.environ)
    logs.setup(settings.log_level, settings.log_format, access_log=settings.access_log)
    raise_open_file_limit()
    if settings.ttl <= settings.keep_alive:
        log.warning(
            "TTL=%d <= KEEP_ALIVE=%d: nodes will flap between keep-alives",
            settings.ttl,
            settings.keep_alive,
        )
    try:
        import uvloop

        runner: Any = uvloop.run
    except ImportError:  # pragma: no cover
        runner = asyncio.run
    sys.exit(runner(_main(settings)))


if __name__ == "__main__":
    main()
