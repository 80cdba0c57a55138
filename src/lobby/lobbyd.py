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

from lobby import __version__, config, logs
from lobby.config import Settings
from lobby.daemon import Daemon
from lobby.labels import parse_env_labels
from lobby.model import LabelError, label_problem

log = logging.getLogger("lobby")


def _usage_error(message: str) -> None:
    print(f"lobbyd: {message}", file=sys.stderr)
    sys.exit(2)


def load_settings(environ: dict[str, str] | os._Environ[str]) -> Settings:
    """Settings, or exit 2 with one line naming the variable."""
    try:
        settings = config.load(environ)
        parse_env_labels(settings.labels)
    except config.ConfigError as exc:
        _usage_error(str(exc))
        raise  # unreachable
    except LabelError as exc:
        _usage_error(f"invalid LABELS: {exc}")
        raise
    problem = label_problem(settings.hostname) if settings.hostname else None
    if problem is not None:
        _usage_error(f"invalid HOSTNAME={settings.hostname!r}: {problem.replace('label', 'name')}")
    return settings


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
    try:
        import uvloop

        runner: Any = uvloop.run
    except ImportError:  # pragma: no cover
        runner = asyncio.run
    sys.exit(runner(_main(settings)))


if __name__ == "__main__":
    main()
