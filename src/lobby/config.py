"""Environment -> typed settings (SPEC §7), with one clear line per mistake.

Names, types and defaults are the Go implementation's, so an existing systemd unit
works unchanged. Integers parse like Go's envconfig (strconv.ParseInt with base 0:
`0x1F`, `0o17`, `017`, `1_000`), booleans like strconv.ParseBool. An empty value is
treated as unset. Variables we add have defaults that change nothing for an old unit.

Each setting is written once, as a field of `Settings`:

    keep_alive: int = setting(5, "seconds between keep-alive announcements", low=1, go=True)

The field name upper-cased is the variable's name (`env=` overrides it), the annotation
its kind (str, int, bool, float for a duration in seconds, Literal[...] for a choice).
`VARIABLES`, `load()`, `lobbyd --help` and README's table (`python -m lobby.config
--update-readme README.md`) are all derived from these fields.

Kept light on purpose: no pydantic here.
"""

from __future__ import annotations

import dataclasses
import re
import shlex
import sys
import textwrap
import typing
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Literal, TypeVar

from lobby.urls import nats_urls_problem

_T = TypeVar("_T")


class ConfigError(Exception):
    """A malformed environment variable; str() is the one line to print."""

    def __init__(self, name: str, value: str, expected: str, *, line: str = "") -> None:
        super().__init__(line or f"invalid {name}={value!r}: expected {expected}")
        self.name = name


_TRUE = {"1", "t", "T", "TRUE", "true", "True"}
_FALSE = {"0", "f", "F", "FALSE", "false", "False"}
_GO_INT = re.compile(
    r"[+-]?(?:0[xX](?:_?[0-9a-fA-F])+|0[bB](?:_?[01])+|0[oO](?:_?[0-7])+|0(?:_?[0-7])*|[1-9](?:_?[0-9])*)"
)
_SECONDS = re.compile(r"[+-]?(?:[0-9]+\.?[0-9]*|\.[0-9]+)")
_GO_DURATION = re.compile(r"[+-]?(?:(?:[0-9]+\.?[0-9]*|\.[0-9]+)(?:ns|us|µs|μs|ms|s|m|h))+")
_DURATION_PART = re.compile(r"([0-9]+\.?[0-9]*|\.[0-9]+)(ns|us|µs|μs|ms|s|m|h)")
_UNIT_SECONDS = {
    "ns": 1e-9,
    "us": 1e-6,
    "µs": 1e-6,
    "μs": 1e-6,
    "ms": 1e-3,
    "s": 1.0,
    "m": 60.0,
    "h": 3600.0,
}


def parse_go_int(text: str) -> int:
    """strconv.ParseInt(text, 0, 64); raises ValueError."""
    if not _GO_INT.fullmatch(text):
        raise ValueError(text)
    sign = -1 if text[0] == "-" else 1
    digits = text.lstrip("+-").replace("_", "")
    if len(digits) > 1 and digits[0] == "0" and digits[1].isdigit():
        return sign * int(digits, 8)  # Go: a leading 0 means octal
    return sign * int(digits, 0)


def parse_go_bool(text: str) -> bool:
    if text in _TRUE:
        return True
    if text in _FALSE:
        return False
    raise ValueError(text)


def parse_duration(text: str) -> float:
    """Seconds from a plain number (`1.5`) or a Go duration (`300ms`, `1m30s`); ValueError."""
    if _SECONDS.fullmatch(text):
        return float(text)
    if not _GO_DURATION.fullmatch(text):
        raise ValueError(text)
    total = sum(float(n) * _UNIT_SECONDS[unit] for n, unit in _DURATION_PART.findall(text))
    return -total if text[0] == "-" else total


def _seconds(value: float) -> str:
    return f"{value:g}s"


Kind = Literal["str", "int", "bool", "choice", "duration"]


@dataclass(frozen=True)
class Var:
    """One environment variable, derived from a `Settings` field (see `setting`)."""

    name: str
    kind: Kind
    default: Any
    help: str
    low: float | None = None
    high: float | None = None
    choices: tuple[str, ...] = ()
    field: str = ""  # the Settings attribute
    secret: bool = False  # never show its value (help and README show only the default)
    go: bool = False  # the Go implementation has it
    check: Callable[[Any], bool] | None = None  # an extra test of a parsed value ...
    must_be: str = ""  # ... and what it wants, for the error message
    problem: Callable[[Any], str | None] | None = None  # or: what is wrong with it, if anything

    def expected(self) -> str:
        """What a valid value looks like, for `invalid NAME='value': expected ...`."""
        if self.must_be:
            return self.must_be
        if self.kind == "bool":
            return "a boolean (1, t, true, 0, f, false, ...)"
        if self.kind == "choice":
            return " or ".join(self.choices) + " (case-insensitive)"
        if self.kind == "int":
            if self.high is not None:
                return f"an integer from {self.low} to {self.high}"
            if self.low is not None:
                return f"an integer >= {self.low}"
            return "an integer"
        if self.kind == "duration":
            what = "a duration in seconds (1.5) or Go syntax (300ms, 1m30s)"
            if self.low is not None and self.high is not None:
                return f"{what} from {_seconds(self.low)} to {_seconds(self.high)}"
            if self.low is not None:
                return f"{what} >= {_seconds(self.low)}"
            return what
        return "a string"

    def parse(self, raw: str) -> Any:
        """The typed value of a non-empty `raw`; raises ConfigError."""
        value: Any = raw
        try:
            if self.kind == "bool":
                value = parse_go_bool(raw)
            elif self.kind == "int":
                value = parse_go_int(raw)
            elif self.kind == "duration":
                value = parse_duration(raw)
            elif self.kind == "choice":
                value = next(c for c in self.choices if c.lower() == raw.lower())
        except (ValueError, StopIteration):
            raise ConfigError(self.name, raw, self.expected()) from None
        if (
            (self.low is not None and value < self.low)
            or (self.high is not None and value > self.high)
            or (self.check is not None and not self.check(value))
        ):
            raise ConfigError(self.name, raw, self.expected())
        if self.problem is not None and (problem := self.problem(value)):
            # says what is wrong in its own words; the value is not repeated (it may
            # hold a password: the problem shows only what it may)
            raise ConfigError(self.name, raw, "", line=f"invalid {self.name}: {problem}")
        return value

    def shown_default(self, empty: str) -> str:
        """The default as a user would write it; `empty` for the empty string."""
        if isinstance(self.default, bool):
            return str(self.default).lower()
        if self.kind == "duration":
            return _seconds(self.default)
        return str(self.default) if self.default != "" else empty

    def constraint(self) -> str:
        """The valid range or choices in a few words, "" when there is nothing to say."""
        if self.choices:
            head, last = self.choices[:-1], self.choices[-1]
            return f"{', '.join(head)} or {last}" if head else last
        show = _seconds if self.kind == "duration" else str
        if self.low is not None and self.high is not None:
            return f"{show(self.low)}-{show(self.high)}"
        if self.low is not None:
            return f">= {show(self.low)}"
        return ""


_META = "lobby.setting"


@dataclass(frozen=True)
class _Spec:
    help: str
    env: str | None
    low: float | None
    high: float | None
    secret: bool
    go: bool
    check: Callable[[Any], bool] | None
    must_be: str
    problem: Callable[[Any], str | None] | None


def setting(
    default: _T,
    help: str,
    *,
    env: str | None = None,
    low: float | None = None,
    high: float | None = None,
    secret: bool = False,
    go: bool = False,
    check: Callable[[_T], bool] | None = None,
    must_be: str = "",
    problem: Callable[[_T], str | None] | None = None,
) -> _T:
    """Declare a `Settings` field as an environment variable (the field name upper-cased).

    `low`/`high` bound an int or a duration; `check` tests a parsed value further and
    `must_be` says what it wants; `problem` instead returns what is wrong with a value
    (None: nothing), for errors that must not repeat the value or that need their own
    words; `secret` keeps the value out of repr(); `go` marks a variable the Go
    implementation has.
    """
    spec = _Spec(help, env, low, high, secret, go, check, must_be, problem)
    declared: _T = dataclasses.field(default=default, repr=not secret, metadata={_META: spec})
    return declared


def _plain_file_name(name: str) -> bool:
    return name not in (".", "..") and "/" not in name


def _command_problem(command: str) -> str | None:
    """CALLBACK must split like a shell would (balanced quotes) into at least one word."""
    try:
        words = shlex.split(command)
    except ValueError as exc:
        return f"{command!r} cannot be split like a shell would: {str(exc).lower()}"
    return None if words else "a blank command"


@dataclass(frozen=True, kw_only=True)
class Settings:
    """Typed, validated settings of one lobbyd: the one place each variable is declared."""

    token: str = setting("", "API token; empty disables authentication", secret=True, go=True)
    host: str = setting("127.0.0.1", "HTTP listen address", go=True)
    port: int = setting(1313, "HTTP listen port", low=1, high=65535, go=True)
    disable_api: bool = setting(False, "run without the HTTP server", go=True)
    driver: Literal["NATS", "Redis"] = setting("NATS", "broker driver", go=True)
    nats_url: str = setting(
        "",
        "NATS URL (nats://, tls://, user:password@ allowed), or several comma-separated for"
        " a cluster; empty: start or join an embedded nats-server",
        go=True,
        problem=nats_urls_problem,
    )
    nats_discovery_channel: str = setting(
        "lobby.discovery", "NATS subject for announcements", go=True
    )
    redis_host: str = setting("127.0.0.1", "Redis host", go=True)
    redis_port: int = setting(6379, "Redis port", low=1, high=65535, go=True)
    redis_db: int = setting(0, "Redis database number", low=0, high=1_000_000, go=True)
    redis_channel: str = setting("lobby:discovery", "Redis channel for announcements", go=True)
    redis_password: str = setting("", "Redis password", secret=True, go=True)
    labels: str = setting("", "comma-separated labels of this node", go=True)
    labels_path: str = setting(
        "/etc/lobby/labels", "directory of label files, one label per line", go=True
    )
    runtime_labels_filename: str = setting(
        "_runtime",
        "file in LABELS_PATH for API-managed labels",
        check=_plain_file_name,
        must_be="a plain file name",
        go=True,
    )
    hostname: str = setting("", "overrides the machine's hostname", go=True)
    clean_every: int = setting(
        15, "seconds between sweeps of dead records; expiry itself is exact", low=1, go=True
    )
    keep_alive: int = setting(5, "seconds between keep-alive announcements", low=1, go=True)
    ttl: int = setting(30, "seconds of silence after which a node is dead", low=1, go=True)
    node_exporter_port: int = setting(
        9100, "default Prometheus target port", low=1, high=65535, go=True
    )
    announce: bool = setting(
        True, "announce this node; false: listen and serve only", env="REGISTER", go=True
    )
    callback: str = setting(
        "",
        "command run when the registry changes, split like a shell",
        go=True,
        problem=_command_problem,
    )
    callback_cooldown: int = setting(
        15, "seconds from the end of one callback run to the start of the next", low=0, go=True
    )
    callback_first_run_delay: int = setting(
        30, "seconds after start before the first callback run", low=0, go=True
    )
    callback_timeout: int = setting(60, "seconds before a hung callback is killed", low=1)
    embedded_nats_port: int = setting(4222, "port of the embedded nats-server", low=1, high=65535)
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = setting("INFO", "log level")
    log_format: Literal["text", "json"] = setting(
        "text", "log lines as text, or as one JSON object per line (ts, level, logger, msg, ...)"
    )
    access_log: bool = setting(False, "log every HTTP request (method, path, status)")

    @property
    def nats_servers(self) -> list[str]:
        return [url.strip() for url in self.nats_url.split(",") if url.strip()]


def _kind(name: str, hint: Any) -> tuple[Kind, tuple[str, ...]]:
    if typing.get_origin(hint) is Literal:
        return "choice", tuple(str(choice) for choice in typing.get_args(hint))
    kinds: dict[Any, Kind] = {str: "str", int: "int", bool: "bool", float: "duration"}
    if hint not in kinds:
        raise TypeError(f"Settings.{name}: unsupported type {hint!r}")
    return kinds[hint], ()


def _variables() -> tuple[Var, ...]:
    hints = typing.get_type_hints(Settings)
    out: list[Var] = []
    for f in dataclasses.fields(Settings):
        spec = f.metadata.get(_META)
        if not isinstance(spec, _Spec):
            raise TypeError(f"Settings.{f.name} is not declared with setting()")
        kind, choices = _kind(f.name, hints[f.name])
        default = float(f.default) if kind == "duration" else f.default  # type: ignore[arg-type]
        out.append(
            Var(
                name=spec.env or f.name.upper(),
                kind=kind,
                default=default,
                help=spec.help,
                low=spec.low,
                high=spec.high,
                choices=choices,
                field=f.name,
                secret=spec.secret,
                go=spec.go,
                check=spec.check,
                must_be=spec.must_be,
                problem=spec.problem,
            )
        )
    names = [var.name for var in out]
    if len(set(names)) != len(names):
        raise TypeError(f"two Settings fields share a variable name: {names}")
    return tuple(out)


VARIABLES: tuple[Var, ...] = _variables()


def load(environ: Mapping[str, str]) -> Settings:
    """Settings from `environ`; raises ConfigError on the first malformed variable."""
    values: dict[str, Any] = {}
    for var in VARIABLES:
        raw = environ.get(var.name, "")
        if raw != "":
            values[var.field] = var.parse(raw)
    return Settings(**values)


def help_text() -> str:
    """What `lobbyd --help` prints."""
    lines = [
        "usage: lobbyd [--help] [--version]",
        "",
        "lobbyd announces this server's hostname and labels through NATS or Redis and",
        "serves an HTTP API listing every server that does the same. It is configured",
        "only through environment variables:",
        "",
    ]
    width = max(len(v.name) for v in VARIABLES)
    indent = " " * (width + 4)
    for var in VARIABLES:
        notes = [note for note in (var.constraint(), "secret" if var.secret else "") if note]
        notes.append(f"default {var.shown_default('empty')}")
        tail = f"({'; '.join(notes)})".replace(" ", "\N{NO-BREAK SPACE}")  # kept on one line
        text = f"  {var.name:<{width}}  {var.help} {tail}"
        wrapped = textwrap.wrap(text, 100, subsequent_indent=indent, break_on_hyphens=False)
        lines += [line.replace("\N{NO-BREAK SPACE}", " ") for line in wrapped]
    lines += [
        "",
        "A malformed value stops lobbyd with exit status 2 and a line naming the variable.",
    ]
    return "\n".join(lines)


_TYPE_NAMES = {"str": "string", "int": "int", "bool": "bool", "choice": "", "duration": "duration"}
README_START = "<!-- settings:start -->"
README_END = "<!-- settings:end -->"


def markdown_table() -> str:
    """README's configuration table (between README_START and README_END)."""

    def cell(text: str) -> str:
        return text.replace("|", "\\|")

    lines = ["| variable | type | default | meaning |", "| --- | --- | --- | --- |"]
    for var in VARIABLES:
        kind = " ".join(filter(None, (_TYPE_NAMES[var.kind], var.constraint())))
        if var.secret:
            kind += ", secret"
        meaning = var.help if var.go else f"*new*: {var.help}"
        default = var.shown_default("(empty)")
        lines.append(f"| {var.name} | {cell(kind)} | {cell(default)} | {cell(meaning)} |")
    return "\n".join(lines)


def replace_table(readme: str) -> str:
    """`readme` with the text between the settings markers replaced by markdown_table()."""
    start, end = readme.index(README_START), readme.index(README_END)
    return f"{readme[: start + len(README_START)]}\n{markdown_table()}\n{readme[end:]}"


def _main(argv: list[str]) -> int:
    if argv == ["--markdown"]:
        print(markdown_table())
        return 0
    if len(argv) == 2 and argv[0] == "--update-readme":
        with open(argv[1], encoding="utf-8") as file:
            text = file.read()
        with open(argv[1], "w", encoding="utf-8") as file:
            file.write(replace_table(text))
        return 0
    print("usage: python -m lobby.config --markdown | --update-readme README.md", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(_main(sys.argv[1:]))
