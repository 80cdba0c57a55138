"""lobbyd's log: one formatter for every line, and the peers' comings and goings (SPEC §14.2).

`setup` puts one handler on the root logger, so every line lobbyd prints goes
through the same formatter: ours, nats-py's, asyncio's and warnings'.
`LOG_FORMAT=text` writes `TIME LEVEL LOGGER: MESSAGE`; `LOG_FORMAT=json` writes one
JSON object per line with `ts` (UTC, RFC 3339), `level`, `logger`, `msg`, the
fields a line was given (`extra=`), `exc` for a traceback, and for the access lines
`client`, `method`, `path` and `status`. `ACCESS_LOG=true` turns the access lines on,
whatever LOG_LEVEL says: one per answer, logged by lobby.api.dispatch under the
logger name and in the format uvicorn used (`uvicorn.access`), which log readers know.

`NodeEventLog` listens to the registry and logs every join, label change, goodbye
and expiry at INFO, one line each, with the event's fields; past `limit` events in a
second it counts instead, and one line sums up the rest when the second is over
(`… and 9,980 more joins in the last second`): a 10,000-node cluster restarting
costs a few dozen lines, not ten thousand.
"""

from __future__ import annotations

import asyncio
import logging
import sys
import time
from collections import Counter
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from typing import Any, Final, Protocol, TextIO

import orjson

TEXT_FORMAT: Final = "%(asctime)s %(levelname)s %(name)s: %(message)s"
# LogRecord's own attributes: everything else on a record came in through `extra=`
_RECORD_FIELDS: Final = frozenset(
    vars(logging.LogRecord("", 0, "", 0, "", None, None)).keys()
    | {"message", "asctime", "color_message"}  # uvicorn's coloured copy of msg
)
_ACCESS_FIELDS: Final = ("client", "method", "path", "http_version", "status")


class JsonFormatter(logging.Formatter):
    """One JSON object per line: ts, level, logger, msg, then the record's own fields."""

    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, Any] = {
            "ts": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds")[
                :-6
            ]
            + "Z",
            "level": record.levelname,
            "logger": record.name,
            "msg": record.getMessage(),
        }
        args = record.args
        if record.name == "uvicorn.access" and isinstance(args, tuple) and len(args) == 5:
            out.update(zip(_ACCESS_FIELDS, args, strict=True))
        for key, value in record.__dict__.items():
            if key not in _RECORD_FIELDS and not key.startswith("_") and key not in out:
                out[key] = value
        if record.exc_info:
            out["exc"] = self.formatException(record.exc_info)
        if record.stack_info:
            out["stack"] = self.formatStack(record.stack_info)
        return orjson.dumps(out, default=str).decode()


def formatter(fmt: str) -> logging.Formatter:
    return JsonFormatter() if fmt == "json" else logging.Formatter(TEXT_FORMAT)


def setup(
    level: str, fmt: str = "text", *, access_log: bool = False, stream: TextIO | None = None
) -> None:
    """Every logger through one handler and one formatter, on stderr."""
    handler = logging.StreamHandler(stream if stream is not None else sys.stderr)
    handler.setFormatter(formatter(fmt))
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(getattr(logging, level))
    logging.captureWarnings(True)
    sys.excepthook = _log_uncaught  # a crash, too, is one line (a JSON object) with `exc`
    for noisy in ("httpx", "httpcore"):  # httpx: a line per http check run
        logging.getLogger(noisy).setLevel(logging.WARNING)
    # the access log keeps the logger name uvicorn gave it (lobby.api.dispatch)
    quiet = max(logging.WARNING, root.level)
    for name in ("uvicorn", "uvicorn.error", "uvicorn.asgi", "uvicorn.access"):
        logger = logging.getLogger(name)  # no handler of its own: through ours
        logger.handlers.clear()
        logger.propagate = True
        logger.setLevel(quiet)
    logging.getLogger("uvicorn.access").setLevel(logging.INFO if access_log else quiet)


def _log_uncaught(kind: type[BaseException], exc: BaseException, tb: Any) -> None:
    logging.getLogger("lobby").critical("lobbyd crashed: %r", exc, exc_info=(kind, exc, tb))


# -- the peers' comings and goings ---------------------------------------------------


class NodeChange(Protocol):
    """What a registry change tells (lobby.registry.Change has these)."""

    @property
    def kind(self) -> str: ...
    @property
    def hostname(self) -> str: ...
    @property
    def labels(self) -> tuple[str, ...]: ...
    @property
    def reason(self) -> str: ...
    @property
    def old_labels(self) -> tuple[str, ...]: ...


def event_name(change: NodeChange) -> str:
    """join, update, leave (a goodbye) or expire."""
    if change.kind == "leave" and change.reason == "expired":
        return "expire"
    return change.kind


SHOWN_LABELS: Final = 10
_PLURAL: Final = {"join": "joins", "update": "updates", "leave": "leaves", "expire": "expiries"}

Schedule = Callable[[float, Callable[[], None]], object]


def _call_later(delay: float, callback: Callable[[], None]) -> object:
    try:
        return asyncio.get_running_loop().call_later(delay, callback)
    except RuntimeError:  # no loop (a test): the next event or flush() sums up
        return None


def _shown(labels: Sequence[str]) -> str:
    head = ", ".join(labels[:SHOWN_LABELS])
    more = len(labels) - SHOWN_LABELS
    return f"[{head}, ... {more} more]" if more > 0 else f"[{head}]"


class NodeEventLog:
    """A registry listener: joins, updates, leaves and expiries at INFO, summed up
    above `limit` a `window`."""

    def __init__(
        self,
        logger: logging.Logger,
        ttl: float,
        *,
        limit: int = 20,
        window: float = 1.0,
        clock: Callable[[], float] = time.monotonic,
        schedule: Schedule = _call_later,
    ) -> None:
        self._log = logger
        self._ttl = ttl
        self._limit = limit
        self._window = window
        self._clock = clock
        self._schedule = schedule
        self._window_start = -float("inf")
        self._count = 0
        self._more: Counter[str] = Counter()
        self._flush_pending = False

    def __call__(self, change: NodeChange) -> None:
        now = self._clock()
        if now - self._window_start >= self._window:
            self.flush()
            self._window_start = now
            self._count = 0
        self._count += 1
        event = event_name(change)
        if self._count <= self._limit:
            self._line(event, change)
            return
        self._more[event] += 1
        if not self._flush_pending:
            self._flush_pending = True
            self._schedule(max(0.0, self._window_start + self._window - now), self.flush)

    def _line(self, event: str, change: NodeChange) -> None:
        fields: dict[str, Any] = {"event": event, "hostname": change.hostname}
        if event == "join":
            fields["labels"] = list(change.labels)
            self._log.info("join %s %s", change.hostname, _shown(change.labels), extra=fields)
        elif event == "update":
            added = sorted(set(change.labels) - set(change.old_labels))
            removed = sorted(set(change.old_labels) - set(change.labels))
            fields.update(labels=list(change.labels), added=added, removed=removed)
            diff = [f"+{label}" for label in added] + [f"-{label}" for label in removed]
            self._log.info("update %s %s", change.hostname, _shown(diff), extra=fields)
        elif event == "expire":
            fields["silent"] = self._ttl
            self._log.info("expire %s (silent %g s)", change.hostname, self._ttl, extra=fields)
        else:
            fields["reason"] = change.reason
            self._log.info("leave %s (%s)", change.hostname, change.reason, extra=fields)

    def flush(self) -> None:
        """Sum up what the window did not log one by one (called when it ends)."""
        self._flush_pending = False
        if not self._more:
            return
        more = dict(self._more)
        self._more.clear()
        parts = [f"{n:,} more {_PLURAL.get(event, event)}" for event, n in more.items()]
        text = parts[0] if len(parts) == 1 else ", ".join(parts[:-1]) + " and " + parts[-1]
        span = "second" if self._window == 1.0 else f"{self._window:g} s"
        self._log.info(
            "… and %s in the last %s", text, span, extra={"event": "summary", "more": more}
        )
