"""The settings mini-framework: environment variables declared as dataclass fields.

A settings class (`lobby.config.Settings`) declares each variable once, as a field:

    keep_alive: int = setting(5, "seconds between keep-alive announcements", low=1, go=True)

The field name upper-cased is the variable's name (`env=` overrides it), the annotation
its kind (str, int, bool, float for a duration in seconds, Literal[...] for a choice,
tuple[Literal[...], ...] for one or more choices, comma-separated, each at most once).
A field declared with `parse_setting` holds whatever that function makes of the text (a
tuple of labels, of template entries, ...); its default is then written as a user
would write it. `variables()` derives a `Var` per field, and `load()`, `help_text()`
and `markdown_table()` work from those.

Integers parse like Go's envconfig (strconv.ParseInt with base 0: `0x1F`, `0o17`,
`017`, `1_000`), booleans like strconv.ParseBool, durations as seconds or Go syntax.
Nothing here knows any setting; kept light on purpose: no pydantic.
"""

from __future__ import annotations

import dataclasses
import re
import sys
import textwrap
import typing
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Literal, TypeVar

from lobby.system.urls import redact_text

_T = TypeVar("_T")


class ConfigError(Exception):
    """A malformed environment variable; str() is the one line to print.

    `value` None keeps a secret's value out of the line; `line` replaces the whole line.
    """

    def __init__(self, name: str, value: str | None, expected: str, *, line: str = "") -> None:
        shown = f"{name}={value!r}" if value is not None else f"{name} (value not shown)"
        super().__init__(line or f"invalid {shown}: expected {expected}")
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


def parse_min_max(text: str) -> tuple[float, float]:
    """`MIN:MAX`, two durations with MIN <= MAX (`2s:10s`, `250ms:1m`), in seconds.

    `MIN` alone means MAX = 4 x MIN, as consul-template's `wait`. Raises ValueError.
    """
    low_text, colon, high_text = text.partition(":")
    low = parse_duration(low_text)
    high = parse_duration(high_text) if colon else 4 * low
    if low < 0 or high < low:
        raise ValueError(text)
    return low, high


def parse_choices(text: str, choices: tuple[str, ...]) -> tuple[str, ...]:
    """`NATS, redis` -> ("NATS", "Redis"): comma-separated choices, matched
    case-insensitively, blanks ignored, in the order given; ValueError when one is
    unknown, repeated, or none is given."""
    by_name = {choice.lower(): choice for choice in choices}
    out: list[str] = []
    for item in text.split(","):
        name = item.strip().lower()
        if not name:
            continue
        if name not in by_name or by_name[name] in out:
            raise ValueError(text)
        out.append(by_name[name])
    if not out:
        raise ValueError(text)
    return tuple(out)


def _seconds(value: float) -> str:
    return f"{value:g}s"


Kind = Literal["str", "int", "bool", "choice", "choices", "duration"]


@dataclass(frozen=True)
class Var:
    """One environment variable, derived from a settings field (see `setting`)."""

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
    must_be: str = ""  # ... and what it wants, for the error message (a check may also
    # raise ValueError: its text is added to the message in parentheses)
    problem: Callable[[Any], str | None] | None = None  # or: what is wrong with it, if anything
    parser: Callable[[str], Any] | None = None  # `parse_setting`: text -> the value
    text: str | None = None  # `parse_setting`: the default as a user would write it
    check_file: Callable[[str], bool] | None = None  # I/O on a named file (`check_files`)

    def expected(self) -> str:
        """What a valid value looks like, for `invalid NAME='value': expected ...`."""
        if self.must_be:
            return self.must_be
        if self.kind == "bool":
            return "a boolean (1, t, true, 0, f, false, ...)"
        if self.kind == "choice":
            return " or ".join(self.choices) + " (case-insensitive)"
        if self.kind == "choices":
            return (
                " or ".join(self.choices)
                + ", or several comma-separated, each once (case-insensitive)"
            )
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
        shown = None if self.secret else raw
        if self.parser is not None:
            try:
                return self.parser(raw)
            except ConfigError:
                raise
            except ValueError as exc:
                why = f" ({exc})" if str(exc) else ""
                raise ConfigError(self.name, shown, f"{self.expected()}{why}") from None
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
            elif self.kind == "choices":
                value = parse_choices(raw, self.choices)
        except (ValueError, StopIteration):
            raise ConfigError(self.name, shown, self.expected()) from None
        try:
            ok = self.check is None or self.check(value)
        except ValueError as exc:
            raise ConfigError(self.name, shown, f"{self.expected()} ({exc})") from None
        if (
            (self.low is not None and value < self.low)
            or (self.high is not None and value > self.high)
            or not ok
        ):
            raise ConfigError(self.name, shown, self.expected())
        if self.problem is not None and (problem := self.problem(value)):
            # says what is wrong in its own words; the value is not repeated (it may
            # hold a password: the problem shows only what it may)
            raise ConfigError(self.name, raw, "", line=f"invalid {self.name}: {problem}")
        return value

    def check_value_file(self, value: Any) -> None:
        """The file check of a set value (reads the file); raises ConfigError."""
        if self.check_file is None or not value:
            return
        shown = None if self.secret else value
        try:
            ok = self.check_file(value)
        except ValueError as exc:
            raise ConfigError(self.name, shown, f"{self.expected()} ({exc})") from None
        if not ok:
            raise ConfigError(self.name, shown, self.expected())

    def shown_default(self, empty: str) -> str:
        """The default as a user would write it; `empty` for the empty string."""
        if self.text is not None:
            return self.text or empty
        if isinstance(self.default, bool):
            return str(self.default).lower()
        if isinstance(self.default, tuple):
            return ",".join(self.default) or empty
        if self.kind == "duration":
            return _seconds(self.default)
        return str(self.default) if self.default != "" else empty

    def constraint(self) -> str:
        """The valid range or choices in a few words, "" when there is nothing to say."""
        if self.kind == "choices":
            return ", ".join(self.choices)
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
    redact: Callable[[str], str]
    parser: Callable[[str], Any] | None = None
    text: str | None = None
    check_file: Callable[[str], bool] | None = None


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
    redact: Callable[[str], str] = redact_text,
    check_file: Callable[[str], bool] | None = None,
) -> _T:
    """Declare a settings field as an environment variable (the field name upper-cased).

    `low`/`high` bound an int or a duration; `check` tests a parsed value further and
    `must_be` says what it wants; `problem` instead returns what is wrong with a value
    (None: nothing), for errors that must not repeat the value or that need their own
    words; `secret` keeps the value out of repr(); `redact` is how repr() shows a
    string value (by default without the password of any scheme://user:password@ in
    it); `go` marks a variable the Go implementation has. `check_file` tests the file a
    string names (it reads it: run by `check_files`, not by `load`; it may raise
    ValueError with the reason) and `must_be` says what it wants.
    """
    spec = _Spec(
        help, env, low, high, secret, go, check, must_be, problem, redact, check_file=check_file
    )
    declared: _T = dataclasses.field(default=default, repr=not secret, metadata={_META: spec})
    return declared


def parse_setting(
    text: str,
    help: str,
    parse: Callable[[str], _T],
    *,
    must_be: str = "",
    env: str | None = None,
    secret: bool = False,
    go: bool = False,
    redact: Callable[[str], str] = redact_text,
) -> _T:
    """Declare a settings field whose value `parse` makes of the variable's text, once,
    when the settings are loaded: a tuple of labels, of template entries, a (min, max)
    pair... `text` is the default as a user would write it (the field's default is
    `parse(text)`), shown by `--help` and the README.

    `parse` raises ValueError when the text is wrong: the message is then `invalid
    NAME='text': expected MUST_BE` plus the error's text in parentheses, if it has one;
    or ConfigError for a line of its own. `redact` is applied to repr() of the value.
    """
    spec = _Spec(
        help, env, None, None, secret, go, None, must_be, None, redact, parser=parse, text=text
    )
    declared: _T = dataclasses.field(default=parse(text), repr=not secret, metadata={_META: spec})
    return declared


def redacted_repr(instance: Any) -> str:
    """repr() of a settings instance without secrets: no secret field, and every other
    value shown through its `redact` (by default: no password of a URL in it)."""
    shown = []
    for f in dataclasses.fields(instance):
        if not f.repr:  # a secret
            continue
        value = getattr(instance, f.name)
        redact = f.metadata[_META].redact
        if isinstance(value, str):
            shown.append(f"{f.name}={redact(value)!r}")
        else:
            shown.append(f"{f.name}={redact(repr(value))}")
    return f"{type(instance).__name__}({', '.join(shown)})"


def _kind(name: str, hint: Any) -> tuple[Kind, tuple[str, ...]]:
    if typing.get_origin(hint) is Literal:
        return "choice", tuple(str(choice) for choice in typing.get_args(hint))
    args = typing.get_args(hint)
    if (
        typing.get_origin(hint) is tuple
        and len(args) == 2
        and args[1] is Ellipsis
        and typing.get_origin(args[0]) is Literal
    ):
        return "choices", tuple(str(choice) for choice in typing.get_args(args[0]))
    kinds: dict[Any, Kind] = {str: "str", int: "int", bool: "bool", float: "duration"}
    if hint not in kinds:
        raise TypeError(f"Settings.{name}: unsupported type {hint!r}")
    return kinds[hint], ()


def variables(cls: type[Any]) -> tuple[Var, ...]:
    """One `Var` per field of the settings class `cls`, in declaration order."""
    module = vars(sys.modules[cls.__module__])
    out: list[Var] = []
    for f in dataclasses.fields(cls):
        spec = f.metadata.get(_META)
        if not isinstance(spec, _Spec):
            raise TypeError(f"{cls.__name__}.{f.name} is not declared with setting()")
        if spec.parser is not None:  # its annotation may name a type imported lazily
            kind: Kind = "str"
            choices: tuple[str, ...] = ()
        else:
            hint = eval(f.type, module) if isinstance(f.type, str) else f.type
            kind, choices = _kind(f"{cls.__name__}.{f.name}", hint)
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
                parser=spec.parser,
                text=spec.text,
                check_file=spec.check_file,
            )
        )
    names = [var.name for var in out]
    if len(set(names)) != len(names):
        raise TypeError(f"two {cls.__name__} fields share a variable name: {names}")
    return tuple(out)


def load(cls: type[_T], declared: tuple[Var, ...], environ: Mapping[str, str]) -> _T:
    """`cls` from `environ`; raises ConfigError on the first malformed variable."""
    values: dict[str, Any] = {}
    for var in declared:
        raw = environ.get(var.name, "")
        if raw != "":
            values[var.field] = var.parse(raw)
    return cls(**values)


def check_files(settings: Any, declared: tuple[Var, ...]) -> None:
    """Run the file check of every variable that has one and is set, in order."""
    for var in declared:
        var.check_value_file(getattr(settings, var.field))


def help_lines(declared: tuple[Var, ...]) -> list[str]:
    """Every variable, its help, range and default, wrapped at 100 columns."""
    lines = []
    width = max(len(v.name) for v in declared)
    indent = " " * (width + 4)
    for var in declared:
        notes = [note for note in (var.constraint(), "secret" if var.secret else "") if note]
        notes.append(f"default {var.shown_default('empty')}")
        tail = f"({'; '.join(notes)})".replace(" ", "\N{NO-BREAK SPACE}")  # kept on one line
        text = f"  {var.name:<{width}}  {var.help} {tail}"
        wrapped = textwrap.wrap(text, 100, subsequent_indent=indent, break_on_hyphens=False)
        lines += [line.replace("\N{NO-BREAK SPACE}", " ") for line in wrapped]
    return lines


_TYPE_NAMES = {
    "str": "string",
    "int": "int",
    "bool": "bool",
    "choice": "",
    "choices": "one or more of",
    "duration": "duration",
}
README_START = "<!-- settings:start -->"
README_END = "<!-- settings:end -->"


def markdown_table(declared: tuple[Var, ...]) -> str:
    """A markdown table of the variables: name, type, default, meaning."""

    def cell(text: str) -> str:
        return text.replace("|", "\\|")

    lines = ["| variable | type | default | meaning |", "| --- | --- | --- | --- |"]
    for var in declared:
        kind = " ".join(filter(None, (_TYPE_NAMES[var.kind], var.constraint())))
        if var.secret:
            kind += ", secret"
        meaning = var.help if var.go else f"*new*: {var.help}"
        default = var.shown_default("(empty)")
        lines.append(f"| {var.name} | {cell(kind)} | {cell(default)} | {cell(meaning)} |")
    return "\n".join(lines)


def replace_table(readme: str, table: str) -> str:
    """`readme` with the text between the settings markers replaced by `table`."""
    start, end = readme.index(README_START), readme.index(README_END)
    return f"{readme[: start + len(README_START)]}\n{table}\n{readme[end:]}"
