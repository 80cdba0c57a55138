"""Health-checked labels (SPEC §19): a label announced only while its check passes.

`CHECKS` holds `LABELS=CHECK` entries separated by `;`; `CHECKS_FILE` holds the same
entries one per line (`#` comments), so a command there may contain `;`. LABELS is one
label or several joined by `,` (they rise and fall together); the text is split at the
first `=`, so a checked label cannot contain one. CHECK is one of

- `tcp://HOST:PORT`: a TCP connection opens (asyncio);
- `http://URL`, `https://URL`: a GET answers 2xx; redirects are not followed, only the
  first bytes of the body are read, certificates are verified against the system CAs,
  no proxy is used;
- `exec:COMMAND`: the command, split like a shell would and run without one, exits 0.
  It runs like the callback's commands (`lobby.system.process`): in a session of its own,
  its whole process group killed at the timeout.

Each check runs on its own schedule: a first run at a random moment within the first
second (or interval, if shorter), then every CHECK_INTERVAL +-10 %, never overlapping
itself (the next run is scheduled after the previous one ends); CHECK_TIMEOUT cuts a
run and counts it as a failure. Hysteresis is HAProxy's rise/fall: a check starts down,
goes up after CHECK_RISE passes in a row and down after CHECK_FALL failures in a row.

A label is "passing" while every check that names it is up. `Checks` never touches the
driver: presence asks `passing_labels()` for the labels to announce besides its own
(a label that also comes from LABELS or a file is announced regardless), and `Checks`
calls `on_change()` (presence.refresh_labels, which announces at once) when the
passing set changes.

For /metrics: every `Check` has `name` (`LABELS=CHECK`, a URL's password hidden), `up`
(bool) and `transitions` (state flips since it was created), which map to
`lobby_check_up{check}` and `lobby_check_transitions_total{check}`.

A malformed entry in CHECKS or CHECKS_FILE stops lobbyd at start (exit 2, naming it:
lobby.config parses CHECKS and reads the file with `read_checks_file(strict=True)`); a
malformed line in CHECKS_FILE at run time is logged and skipped, and the other checks
go on. The settings come in as `CheckSettings` (lobby.config.Settings has them).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import random
import shlex
import ssl
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final, Literal, Protocol
from urllib.parse import SplitResult, urlsplit

from lobby import __version__
from lobby.core.clock import SYSTEM_CLOCK, Clock
from lobby.core.model import LabelError, clean_label
from lobby.node.labels import watch_dir
from lobby.system.process import run_process, signame
from lobby.system.urls import redact_text

if TYPE_CHECKING:
    import httpx

log = logging.getLogger("lobby.checks")

OUTPUT_LIMIT: Final = 200  # bytes of a check's output kept (GET /v1/checks)
JITTER: Final = 0.1  # each interval is CHECK_INTERVAL times 1 +- JITTER
FIRST_SPREAD: Final = 1.0  # seconds over which the first runs are spread
FILE_RECHECK: Final = 30.0  # seconds: CHECKS_FILE is re-read this often even without an event
FILE_GONE_GRACE: Final = 0.5  # a file missing now may be mid-replace: look once more after

Kind = Literal["tcp", "http", "exec"]
EXPECTED = "expected LABELS=CHECK with CHECK tcp://HOST:PORT, http(s)://URL or exec:COMMAND"


class CheckSettings(Protocol):
    """The settings the health checks read (lobby.config.Settings has them)."""

    @property
    def checks(self) -> Sequence[CheckSpec]: ...
    @property
    def checks_file(self) -> str: ...
    @property
    def check_interval(self) -> float: ...
    @property
    def check_timeout(self) -> float: ...
    @property
    def check_rise(self) -> int: ...
    @property
    def check_fall(self) -> int: ...


class CheckError(ValueError):
    """A malformed entry: `entry` as written, `problem` what is wrong with it.

    str(): `invalid entry '...' in CHECKS: ...` (or `in CHECKS_FILE PATH line N`).
    """

    def __init__(self, entry: str, problem: str, where: str = "CHECKS") -> None:
        entry = entry.strip()
        shown = redact_text(entry)  # no password of a URL in it
        shown = shown if len(shown) <= 200 else shown[:197] + "..."
        super().__init__(f"invalid entry {shown!r} in {where}: {problem}")
        self.entry = entry
        self.problem = problem


@dataclass(frozen=True)
class CheckSpec:
    """One parsed entry."""

    labels: tuple[str, ...]
    kind: Kind
    target: str  # the CHECK as written (stripped)
    host: str = ""  # tcp
    port: int = 0  # tcp
    argv: tuple[str, ...] = ()  # exec

    @property
    def shown_target(self) -> str:
        """The target as shown in the API, logs and metrics: a URL's password hidden."""
        if self.kind != "http":  # an exec check's command may hold a URL too
            return redact_text(self.target)
        parts = urlsplit(self.target)
        if parts.password is None:
            return self.target
        user, _, host = parts.netloc.rpartition("@")
        name = user.partition(":")[0]
        return parts._replace(netloc=f"{name}:***@{host}").geturl()

    @property
    def name(self) -> str:
        return f"{','.join(self.labels)}={self.shown_target}"


def _port(parts: SplitResult, entry: str) -> int | None:
    try:
        return parts.port
    except ValueError:
        raise CheckError(entry, "the port is not a number from 0 to 65535") from None


def parse_entry(entry: str) -> CheckSpec:
    """`LABELS=CHECK` -> CheckSpec; raises CheckError."""
    text = entry.strip()
    labels_text, eq, target = text.partition("=")
    if not eq:
        raise CheckError(entry, EXPECTED)
    try:
        labels = tuple(
            dict.fromkeys(clean_label(item) for item in labels_text.split(",") if item.strip())
        )
    except LabelError as exc:
        raise CheckError(entry, str(exc)) from None
    if not labels:
        raise CheckError(entry, "no label before '='")
    target = target.strip()
    scheme = target.partition(":")[0].lower()
    if scheme == "exec":
        command = target[len("exec:") :]
        try:
            argv = shlex.split(command)
        except ValueError as exc:
            raise CheckError(
                entry, f"the command cannot be split like a shell would: {exc}"
            ) from None
        if not argv:
            raise CheckError(entry, "exec: without a command")
        return CheckSpec(labels, "exec", target, argv=tuple(argv))
    if scheme == "tcp" and target[4:6] == "//":
        parts = urlsplit(target)
        port = _port(parts, entry)
        extra = parts.path not in ("", "/") or parts.query or parts.fragment or "@" in parts.netloc
        if not parts.hostname or not port or extra:
            raise CheckError(entry, "expected tcp://HOST:PORT (a port from 1 to 65535)")
        return CheckSpec(labels, "tcp", target, host=parts.hostname, port=port)
    if scheme in ("http", "https") and target[len(scheme) + 1 :].startswith("//"):
        parts = urlsplit(target)
        if not parts.hostname:
            raise CheckError(entry, f"no host in the {scheme} URL")
        if _port(parts, entry) == 0:
            raise CheckError(entry, "port 0 in the URL")
        if any(ord(c) < 0x21 or ord(c) == 0x7F for c in target):
            raise CheckError(entry, "a space or control character in the URL")
        import httpx  # only with an http check: the daemon otherwise never loads it

        try:
            httpx.URL(target)
        except (httpx.InvalidURL, ValueError) as exc:
            raise CheckError(entry, f"invalid URL: {exc}") from None
        return CheckSpec(labels, "http", target)
    raise CheckError(entry, EXPECTED)


def parse_checks(text: str) -> list[CheckSpec]:
    """CHECKS: entries separated by `;`, blank ones ignored; raises CheckError."""
    return [parse_entry(item) for item in text.split(";") if item.strip()]


def parse_check_lines(text: str, source: str, *, strict: bool) -> list[CheckSpec]:
    """CHECKS_FILE's text: one entry per line, blank lines and `#` comments skipped.

    strict: a bad line raises CheckError (at start); otherwise it is logged and skipped.
    """
    out = []
    for number, line in enumerate(text.splitlines(), 1):
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        try:
            out.append(parse_entry(line))
        except CheckError as exc:
            where = f"CHECKS_FILE {source} line {number}"
            if strict:
                raise CheckError(line, exc.problem, where) from None
            log.warning("skipped: %s", CheckError(line, exc.problem, where))
    return out


def read_checks_file(file: str, labels_path: str, *, strict: bool = True) -> list[CheckSpec]:
    """The entries of CHECKS_FILE `file` (what lobbyd checks before it starts).

    Raises CheckError for a malformed entry when `strict`, OSError when the file cannot
    be read, and ValueError when it lies in LABELS_PATH, where lobbyd would read its
    lines as labels.
    """
    path = Path(file)
    labels_dir = Path(labels_path)
    if not path.name.startswith(".") and path.parent.resolve() == labels_dir.resolve():
        raise ValueError(f"{path} is in LABELS_PATH, where every file is read as labels; move it")
    text = path.read_text(encoding="utf-8", errors="replace")
    return parse_check_lines(text, str(path), strict=strict)


# -- running a check ------------------------------------------------------------------


@dataclass(frozen=True)
class CheckResult:
    """One run's result."""

    ok: bool
    detail: str  # "connected", "HTTP 503 Service Unavailable", "exit status 1", ...
    output: str = ""  # what the check printed or answered (first OUTPUT_LIMIT bytes)


def _text(data: bytes | bytearray) -> str:
    return bytes(data[:OUTPUT_LIMIT]).decode("utf-8", errors="replace").strip()


def _reason(exc: BaseException) -> str:
    """The most telling words of an error: the OS's (`Connection refused`) when there are."""
    seen: BaseException | None = exc
    while seen is not None:
        if isinstance(seen, ssl.SSLError):
            return f"TLS: {seen}"
        if isinstance(seen, OSError) and isinstance(seen.errno, int) and seen.errno > 0:
            return os.strerror(seen.errno)  # asyncio's strerror is "Connect call failed (...)"
        if isinstance(seen, OSError) and seen.strerror:
            return seen.strerror
        seen = seen.__cause__ or seen.__context__
    return str(exc) or type(exc).__name__


def _timed_out(timeout: float) -> str:
    return f"timed out after {timeout:g} s"


async def probe_tcp(host: str, port: int, timeout: float) -> CheckResult:
    try:
        async with asyncio.timeout(timeout):
            _, writer = await asyncio.open_connection(host, port)
    except TimeoutError:
        return CheckResult(False, _timed_out(timeout))
    except OSError as exc:
        return CheckResult(False, _reason(exc))
    peer = writer.get_extra_info("peername")
    writer.close()
    with contextlib.suppress(OSError, TimeoutError):
        async with asyncio.timeout(timeout):  # not wait_for: it can swallow a cancellation
            await writer.wait_closed()
    if not peer:
        return CheckResult(True, "connected")
    address = f"[{peer[0]}]" if ":" in peer[0] else peer[0]
    return CheckResult(True, f"connected to {address}:{peer[1]}")


async def probe_http(client: httpx.AsyncClient, url: str, timeout: float) -> CheckResult:
    import httpx

    body = bytearray()
    try:
        async with asyncio.timeout(timeout), client.stream("GET", url) as response:
            async for chunk in response.aiter_raw():
                body += chunk
                if len(body) >= OUTPUT_LIMIT:
                    break
    except (TimeoutError, httpx.TimeoutException):
        return CheckResult(False, _timed_out(timeout))
    except (httpx.HTTPError, httpx.InvalidURL, OSError) as exc:
        return CheckResult(False, _reason(exc))
    status = response.status_code
    detail = f"HTTP {status} {response.reason_phrase}".rstrip()
    if response.is_redirect:
        detail += f" to {response.headers.get('location', '?')} (redirects are not followed)"
    return CheckResult(200 <= status < 300, detail, _text(body))


async def probe_exec(argv: list[str], timeout: float) -> CheckResult:
    try:
        done = await run_process(argv, timeout=timeout, stdin=None, output_limit=OUTPUT_LIMIT)
    except OSError as exc:
        return CheckResult(False, f"cannot start {argv[0]!r}: {exc.strerror or exc}")
    output = _text(done.output.kept)
    if done.status is None:
        return CheckResult(False, f"{_timed_out(timeout)}: killed", output)
    if done.status < 0:
        return CheckResult(False, f"killed by {signame(-done.status)}", output)
    return CheckResult(done.status == 0, f"exit status {done.status}", output)


@dataclass(eq=False)
class Check:
    """One check and what it has seen; `record` is its rise/fall state machine."""

    spec: CheckSpec
    source: str  # "CHECKS" or the file's path
    rise: int
    fall: int
    changed: float  # wall time the current state began
    up: bool = False  # a checked label starts withdrawn
    passes: int = 0  # consecutive
    failures: int = 0  # consecutive
    transitions: int = 0
    runs: int = 0
    last: CheckResult | None = None
    last_run: float | None = None  # wall time
    task: asyncio.Task[None] | None = field(default=None, repr=False)

    @property
    def name(self) -> str:
        return self.spec.name

    def record(self, outcome: CheckResult, now: float) -> bool:
        """Count one result at wall time `now`; True when the state flipped."""
        self.runs += 1
        self.last = outcome
        self.last_run = now
        if outcome.ok:
            self.passes, self.failures = self.passes + 1, 0
        else:
            self.passes, self.failures = 0, self.failures + 1
        if (not self.up and self.passes >= self.rise) or (self.up and self.failures >= self.fall):
            self.up = not self.up
            self.transitions += 1
            self.changed = now
            return True
        return False

    def report(self) -> dict[str, Any]:
        last = self.last
        return {
            "name": self.name,
            "check": self.spec.shown_target,
            "labels": list(self.spec.labels),
            "source": self.source,
            "state": "up" if self.up else "down",
            "passes": self.passes,
            "failures": self.failures,
            "last_result": None if last is None else ("pass" if last.ok else "fail"),
            "last_detail": "" if last is None else last.detail,
            "last_output": "" if last is None else last.output,
            "last_run": self.last_run,
            "changed": self.changed,
            "transitions": self.transitions,
            "runs": self.runs,
        }


Probe = Callable[[Check], Awaitable[CheckResult]]


class Checks:
    """Every check of this node, their schedules, and the labels they let through."""

    def __init__(
        self,
        specs: Iterable[CheckSpec],
        *,
        interval: float,
        timeout: float,
        rise: int,
        fall: int,
        file: str | Path | None = None,
        clock: Clock = SYSTEM_CLOCK,
        probe: Probe | None = None,
    ) -> None:
        self.interval = interval
        self.timeout = timeout
        self.rise = rise
        self.fall = fall
        self.file = Path(file) if file else None
        self._clock = clock
        self._probe: Probe = probe or self._run_probe
        self._checks: dict[str, Check] = {}
        self._file_text: str | None = None  # None: missing
        self._file_read = False
        self._file_dirty = asyncio.Event()
        self._passing: frozenset[str] = frozenset()
        self._on_change: Callable[[], object] = lambda: None
        self._running = False
        self._http: httpx.AsyncClient | None = None
        for spec in specs:
            self._add(spec, "CHECKS")
        self._env_names = set(self._checks)

    @classmethod
    def from_settings(cls, settings: CheckSettings, clock: Clock = SYSTEM_CLOCK) -> Checks | None:
        """The configured checks (CHECKS_FILE is read by `run`); None when there are none."""
        if not settings.checks and not settings.checks_file:
            return None
        return cls(
            settings.checks,
            interval=settings.check_interval,
            timeout=settings.check_timeout,
            rise=settings.check_rise,
            fall=settings.check_fall,
            file=settings.checks_file or None,
            clock=clock,
        )

    # -- what presence, the API and /metrics read ---------------------------------------

    @property
    def checks(self) -> list[Check]:
        return list(self._checks.values())

    def passing_labels(self) -> frozenset[str]:
        """Labels whose every check is up."""
        return self._passing

    def report(self) -> list[dict[str, Any]]:
        """GET /v1/checks: every check, in the order configured."""
        return [check.report() for check in self._checks.values()]

    # -- results ----------------------------------------------------------------------

    def record(self, check: Check, outcome: CheckResult) -> None:
        """Count a result; on a flip, log it and tell presence when the labels change."""
        flipped = check.record(outcome, self._clock.wall())
        if not flipped:
            log.debug("check %s: %s (%s)", check.name, outcome.detail, "up" if check.up else "down")
            return
        if check.up:
            log.info("check %s is up after %d passes: %s", check.name, check.passes, outcome.detail)
        else:
            log.warning(
                "check %s is down after %d failures: %s%s",
                check.name,
                check.failures,
                outcome.detail,
                f" ({outcome.output[:80]})" if outcome.output else "",
            )
        self._update_passing()

    def _update_passing(self) -> None:
        named: dict[str, bool] = {}
        for check in self._checks.values():
            for label in check.spec.labels:
                named[label] = named.get(label, True) and check.up
        passing = frozenset(label for label, up in named.items() if up)
        if passing != self._passing:
            self._passing = passing
            self._on_change()

    # -- the set of checks --------------------------------------------------------------

    def _add(self, spec: CheckSpec, source: str) -> None:
        if spec.name in self._checks:
            return
        check = Check(spec, source, self.rise, self.fall, changed=self._clock.wall())
        self._checks[spec.name] = check
        if self._running:
            self._start(check)

    def _start(self, check: Check) -> None:
        check.task = asyncio.create_task(self._loop(check), name=f"check {check.name}")

    def _replace_file_checks(self, specs: list[CheckSpec], source: str, quiet: bool) -> None:
        wanted = {spec.name for spec in specs} | self._env_names
        for name in [name for name in self._checks if name not in wanted]:
            check = self._checks.pop(name)
            if check.task is not None:
                check.task.cancel()
            log.info("check %s removed", name)
        for spec in specs:
            if spec.name not in self._checks:
                if not quiet:
                    log.info("check %s added (from %s)", spec.name, source)
                self._add(spec, source)
        self._update_passing()

    def reload_file(self) -> None:
        """Re-read CHECKS_FILE; bad lines are logged and skipped."""
        if self.file is None:
            return
        try:
            text: str | None = self.file.read_text(encoding="utf-8", errors="replace")
        except FileNotFoundError:
            text = None
        except OSError as exc:
            log.warning("cannot read CHECKS_FILE %s: %s; keeping its checks", self.file, exc)
            return
        if text == self._file_text:
            return
        first, self._file_read = not self._file_read, True
        previous, self._file_text = self._file_text, text
        source = str(self.file)
        if text is None:
            log.warning("CHECKS_FILE %s is gone: its checks are removed", source)
            self._replace_file_checks([], source, quiet=False)
            return
        if previous is not None:
            log.info("CHECKS_FILE %s changed: reloading it", source)
        specs = parse_check_lines(text, source, strict=False)
        self._replace_file_checks(specs, source, quiet=first)

    # -- running ----------------------------------------------------------------------

    async def run(self, on_change: Callable[[], object], stopping: asyncio.Event) -> None:
        """Run every check until cancelled; `on_change()` when the passing labels change."""
        self._on_change = on_change
        self._running = True
        for check in self._checks.values():
            self._start(check)
        self.reload_file()  # starts the file's checks
        log.info(
            "%d health checks, every %g s (timeout %g s, up after %d passes, down after %d"
            " failures)",
            len(self._checks),
            self.interval,
            self.timeout,
            self.rise,
            self.fall,
        )
        try:
            if self.file is None:
                await asyncio.Event().wait()  # until cancelled
            else:
                await self._watch_file(stopping)
        finally:
            self._running = False
            tasks = [c.task for c in self._checks.values() if c.task is not None]
            for task in tasks:
                task.cancel()
            if tasks:
                await asyncio.wait(tasks, timeout=2)
            if self._http is not None:
                with contextlib.suppress(Exception):
                    await self._http.aclose()

    async def _watch_file(self, stopping: asyncio.Event) -> None:
        assert self.file is not None
        watcher = asyncio.create_task(
            watch_dir(
                self.file.parent,
                self._file_dirty.set,
                stopping,
                what="the directory of CHECKS_FILE",
                fallback=f"re-reading the file every {FILE_RECHECK:g} s",
            ),
            name="checks-file",
        )
        try:
            while not stopping.is_set():
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(FILE_RECHECK):  # not wait_for: see lobby.feed
                        await self._file_dirty.wait()
                self._file_dirty.clear()
                if not self.file.exists():  # perhaps being replaced: look once more
                    await asyncio.sleep(FILE_GONE_GRACE)
                self.reload_file()
        finally:
            watcher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await watcher

    async def _loop(self, check: Check) -> None:
        await asyncio.sleep(random.uniform(0, min(self.interval, FIRST_SPREAD)))
        monotonic = self._clock.monotonic
        while True:
            started = monotonic()
            outcome = await self._probe(check)
            try:
                self.record(check, outcome)
            except Exception:  # e.g. in on_change: the check goes on
                log.exception("check %s: cannot record its result", check.name)
            period = self.interval * random.uniform(1 - JITTER, 1 + JITTER)
            await asyncio.sleep(max(0.0, period - (monotonic() - started)))

    async def _run_probe(self, check: Check) -> CheckResult:
        spec = check.spec
        try:
            if spec.kind == "tcp":
                return await probe_tcp(spec.host, spec.port, self.timeout)
            if spec.kind == "http":
                return await probe_http(self._http_client(), spec.target, self.timeout)
            return await probe_exec(list(spec.argv), self.timeout)
        except Exception as exc:  # a bug here must not stop the check, nor the daemon
            log.exception("check %s: unexpected error", check.name)
            return CheckResult(False, f"unexpected error: {exc!r}")

    def _http_client(self) -> httpx.AsyncClient:
        if self._http is None:
            import httpx  # only when an http check exists: the daemon otherwise never loads it

            self._http = httpx.AsyncClient(
                follow_redirects=False,
                timeout=self.timeout,
                verify=ssl.create_default_context(),  # the system's CAs, SSL_CERT_FILE honoured
                trust_env=False,  # no proxy from the environment for a local health check
                # a fresh connection each run, and no cap: hung checks must not queue others
                limits=httpx.Limits(max_connections=None, max_keepalive_connections=0),
                headers={
                    "User-Agent": f"lobbyd/{__version__} health check",
                    "Accept-Encoding": "identity",
                    "Connection": "close",  # the server need not wait for another request
                },
            )
        return self._http


__all__ = [
    "Check",
    "CheckError",
    "CheckResult",
    "CheckSpec",
    "Checks",
    "parse_check_lines",
    "parse_checks",
    "parse_entry",
    "read_checks_file",
]
