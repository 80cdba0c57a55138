"""Environment -> typed settings (SPEC §7), with one clear line per mistake.

Names, types and defaults are the Go implementation's, so an existing systemd unit
works unchanged. Integers parse like Go's envconfig (strconv.ParseInt with base 0:
`0x1F`, `0o17`, `017`, `1_000`), booleans like strconv.ParseBool. An empty value is
treated as unset. Variables we add have defaults that change nothing for an old unit.

Each setting is written once, as a field of `Settings`:

    keep_alive: int = setting(5, "seconds between keep-alive announcements", low=1, go=True)

The field name upper-cased is the variable's name (`env=` overrides it), the annotation
its kind (str, int, bool, float for a duration in seconds, Literal[...] for a choice,
tuple[Literal[...], ...] for one or more choices, comma-separated, each at most once).
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

from lobby.urls import nats_urls_problem, redact_all, redact_text

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


def _is_min_max(text: str) -> bool:
    try:
        parse_min_max(text)
    except ValueError:
        return False
    return True


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
    must_be: str = ""  # ... and what it wants, for the error message (a check may also
    # raise ValueError: its text is added to the message in parentheses)
    problem: Callable[[Any], str | None] | None = None  # or: what is wrong with it, if anything

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

    def shown_default(self, empty: str) -> str:
        """The default as a user would write it; `empty` for the empty string."""
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
) -> _T:
    """Declare a `Settings` field as an environment variable (the field name upper-cased).

    `low`/`high` bound an int or a duration; `check` tests a parsed value further and
    `must_be` says what it wants; `problem` instead returns what is wrong with a value
    (None: nothing), for errors that must not repeat the value or that need their own
    words; `secret` keeps the value out of repr(); `redact` is how repr() shows a
    string value (by default without the password of any scheme://user:password@ in
    it); `go` marks a variable the Go implementation has.
    """
    spec = _Spec(help, env, low, high, secret, go, check, must_be, problem, redact)
    declared: _T = dataclasses.field(default=default, repr=not secret, metadata={_META: spec})
    return declared


def _plain_file_name(name: str) -> bool:
    return name not in (".", "..") and "/" not in name


_DNS_DOMAIN = re.compile(r"[A-Za-z0-9_-]{1,63}(?:\.[A-Za-z0-9_-]{1,63})*\.?")


def _dns_domain(domain: str) -> bool:
    return len(domain) <= 200 and _DNS_DOMAIN.fullmatch(domain) is not None


def _label_names(names: str) -> bool:
    parts = [part.strip() for part in names.split(",")]
    return all(part and ":" not in part for part in parts)


# -- checks of files named by a setting: done when the settings are loaded, so a bad
# path stops lobbyd at start (exit 2 naming the variable), not at first use ------------


def read_file(path: str) -> bytes:
    """The content of `path`; ValueError with the reason (never the content)."""
    try:
        with open(path, "rb") as file:
            return file.read(1 << 20)
    except OSError as exc:
        raise ValueError(exc.strerror or type(exc).__name__) from None


def readable_file(path: str) -> bool:
    read_file(path)
    return True


def _pem_file(path: str) -> bool:
    if b"-----BEGIN " not in read_file(path):
        raise ValueError("no PEM block in it")
    return True


def _keys_file(path: str) -> bool:
    from lobby.signing import SigningKeyError, parse_keys_file

    try:
        text = read_file(path).decode()
    except UnicodeDecodeError:
        raise ValueError("not UTF-8 text") from None
    try:
        keys = parse_keys_file(text)
    except SigningKeyError as exc:
        raise ValueError(str(exc)) from None
    if not keys:
        raise ValueError("it holds no key")
    return True


def _keys(text: str) -> bool:
    from lobby.signing import SigningKeyError, parse_keys

    try:
        parse_keys(text)
    except SigningKeyError as exc:
        raise ValueError(str(exc)) from None
    return True


def _creds_file(path: str) -> bool:
    text = read_file(path)
    if b"BEGIN NATS USER JWT" not in text or b"BEGIN USER NKEY SEED" not in text:
        raise ValueError("not a NATS .creds file (a user JWT and an nkey seed)")
    return True


def _seed_file(path: str) -> bool:
    if not read_file(path).strip().startswith(b"SU"):
        raise ValueError("not an nkey user seed (SU...)")
    return True


_FILE = "a readable file"
_PEM = "a readable PEM file"


def parse_host_ports(text: str) -> list[tuple[str, int]]:
    """`a:26379, [::1]:26380` -> [("a", 26379), ("::1", 26380)]; ValueError when malformed."""
    out = []
    for item in text.split(","):
        item = item.strip()
        if not item:
            continue
        host, sep, port = item.rpartition(":")
        if host.startswith("[") and host.endswith("]"):
            host = host[1:-1]
        bare_ipv6 = ":" in host and not item.startswith("[")
        if not sep or not host or bare_ipv6 or not port.isdigit():
            raise ValueError(item)
        if not 1 <= int(port) <= 65535:
            raise ValueError(item)
        out.append((host, int(port)))
    if not out:
        raise ValueError(text)
    return out


def _host_ports(text: str) -> bool:
    try:
        parse_host_ports(text)
    except ValueError:
        return False
    return True


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

    def __repr__(self) -> str:
        """Like the dataclass's, without secrets: no secret setting, and no password
        (or token) of a URL in any other (NATS_URL, a CALLBACK's or a check's URL)."""
        shown = []
        for f in dataclasses.fields(self):
            if not f.repr:  # a secret
                continue
            value = getattr(self, f.name)
            if isinstance(value, str):
                value = f.metadata[_META].redact(value)
            shown.append(f"{f.name}={value!r}")
        return f"{type(self).__name__}({', '.join(shown)})"

    token: str = setting("", "API token; empty disables authentication", secret=True, go=True)
    host: str = setting("127.0.0.1", "HTTP listen address", go=True)
    port: int = setting(1313, "HTTP listen port", low=1, high=65535, go=True)
    disable_api: bool = setting(False, "run without the HTTP server", go=True)
    drivers: tuple[Literal["NATS", "Redis"], ...] = setting(
        ("NATS",),
        "broker driver; new: several, comma-separated (NATS,Redis), to announce and listen on"
        " each at once",
        env="DRIVER",
        go=True,
    )
    nats_url: str = setting(
        "",
        "NATS URL (nats://, tls://, user:password@ allowed), or several comma-separated for"
        " a cluster; empty: start or join an embedded nats-server",
        go=True,
        problem=nats_urls_problem,
        redact=redact_all,  # also nats://TOKEN@host and user:password@host without a scheme
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
    templates: str = setting(
        "",
        "Jinja2 templates rendered from the registry: SOURCE:DESTINATION[:COMMAND], several"
        " separated by ';' (see Templates)",
    )
    template_wait: str = setting(
        "2s:10s",
        "MIN:MAX: render templates after MIN without a change, or MAX after the first change"
        " at the latest",
        check=_is_min_max,
        must_be="MIN:MAX, two durations like 2s:10s or 250ms:1m, MIN <= MAX",
    )
    template_command_timeout: float = setting(
        60.0,
        "seconds before a template's COMMAND is killed",
        check=lambda seconds: seconds > 0,
        must_be="a duration above 0 in seconds (1.5) or Go syntax (300ms, 1m30s)",
    )
    checks: str = setting(
        "",
        "health-checked labels: `LABELS=CHECK` entries separated by `;`, CHECK one of"
        " tcp://HOST:PORT, http(s)://URL, exec:COMMAND; a label is announced only while"
        " its check passes",
    )
    checks_file: str = setting(
        "", "file of CHECKS entries, one per line (`#` comments), re-read when it changes"
    )

    @property
    def has_checks(self) -> bool:
        """CHECKS or CHECKS_FILE is set: health checks run (and lobby.checks is loaded)."""
        return bool(self.checks.strip() or self.checks_file)

    check_interval: float = setting(10.0, "seconds between two runs of a check", low=0.1)
    check_timeout: float = setting(
        2.0, "seconds after which a check counts as failed (an exec check is killed)", low=0.01
    )
    check_rise: int = setting(2, "passes in a row that announce a checked label", low=1)
    check_fall: int = setting(3, "failures in a row that withdraw a checked label", low=1)
    embedded_nats_port: int = setting(4222, "port of the embedded nats-server", low=1, high=65535)
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = setting("INFO", "log level")
    dns_port: int = setting(
        0, "DNS interface port, UDP and TCP (SPEC §17); 0: no DNS interface", low=0, high=65535
    )
    dns_host: str = setting("", "DNS listen address; empty: the same as HOST")
    dns_domain: str = setting(
        "lobby",
        "the DNS domain lobbyd answers for",
        check=_dns_domain,
        must_be="a domain name (letters, digits, - and _ between dots)",
    )
    dns_ttl: int = setting(5, "TTL of DNS answers, and of negative answers, in seconds", low=0)
    dns_address_labels: str = setting(
        "public_ip4,public_ip6,ip4,ip6",
        "labels holding a node's addresses, by preference: per address family, the first"
        " one a node carries gives its A or AAAA records",
        check=_label_names,
        must_be="comma-separated label names (no colons)",
    )
    # -- security (SPEC §13) --
    signing_keys: str = setting(
        "",
        "comma-separated signing keys (lobbyctl keygen); the first signs, every one verifies",
        secret=True,
        check=_keys,
        must_be="comma-separated keys, each base64 of 32 bytes",
    )
    signing_keys_file: str = setting(
        "",
        "file of signing keys, one per line (# comments), added to SIGNING_KEYS",
        check=_keys_file,
        must_be="a readable file of keys, one per line",
    )
    accept_unsigned: bool = setting(
        False,
        "with signing keys, accept unsigned packets too (Go peers), except from a hostname"
        " once seen signed",
    )
    read_token: str = setting("", "API token that allows only GET and HEAD", secret=True)
    tls_cert: str = setting(
        "", "PEM certificate (chain) file: serve the API over HTTPS", check=_pem_file, must_be=_PEM
    )
    tls_key: str = setting("", "PEM private key file of TLS_CERT", check=_pem_file, must_be=_PEM)
    nats_ca: str = setting(
        "",
        "PEM file of the CAs that sign the NATS server's certificate",
        check=_pem_file,
        must_be=_PEM,
    )
    nats_cert: str = setting(
        "", "PEM client certificate file for NATS (mutual TLS)", check=_pem_file, must_be=_PEM
    )
    nats_key: str = setting("", "PEM private key file of NATS_CERT", check=_pem_file, must_be=_PEM)
    nats_creds: str = setting(
        "", "NATS .creds file (user JWT and nkey seed)", check=_creds_file, must_be=_FILE
    )
    nats_nkey_seed: str = setting(
        "", "file holding the NATS nkey user seed", check=_seed_file, must_be=_FILE
    )
    nats_token: str = setting("", "NATS authentication token", secret=True)
    redis_username: str = setting("", "Redis ACL user name (with REDIS_PASSWORD)")
    redis_tls: bool = setting(False, "connect to Redis over TLS")
    redis_ca: str = setting(
        "", "PEM file of the CAs that sign Redis's certificate", check=_pem_file, must_be=_PEM
    )
    redis_cert: str = setting(
        "", "PEM client certificate file for Redis", check=_pem_file, must_be=_PEM
    )
    redis_key: str = setting(
        "", "PEM private key file of REDIS_CERT", check=_pem_file, must_be=_PEM
    )

    def __post_init__(self) -> None:
        _check_pair(self.tls_cert, "TLS_CERT", self.tls_key, "TLS_KEY", server=True)
        _check_pair(self.nats_cert, "NATS_CERT", self.nats_key, "NATS_KEY")
        _check_pair(self.redis_cert, "REDIS_CERT", self.redis_key, "REDIS_KEY")
        if self.nats_ca:
            _check_ca(self.nats_ca, "NATS_CA")
        if self.redis_ca:
            _check_ca(self.redis_ca, "REDIS_CA")
        for name, value in (
            ("REDIS_CA", self.redis_ca),
            ("REDIS_CERT", self.redis_cert),
        ):
            if value and not (self.redis_tls or self.redis_sentinel_tls):
                raise ConfigError(
                    name,
                    value,
                    "REDIS_TLS=true or REDIS_SENTINEL_TLS=true beside it (used only over TLS)",
                )
        for name, set_ in (
            ("REDIS_SENTINEL_TLS", self.redis_sentinel_tls),
            ("REDIS_SENTINEL_USERNAME", bool(self.redis_sentinel_username)),
            ("REDIS_SENTINEL_PASSWORD", bool(self.redis_sentinel_password)),
        ):
            if set_ and not self.redis_sentinels:
                shown = None if name.endswith("PASSWORD") else "true"
                raise ConfigError(name, shown, "REDIS_SENTINELS beside it (it is for them)")

    relay: bool = setting(
        False,
        "with several drivers, forward every packet heard on one to the others, marked with"
        " this node's hostname",
    )
    redis_sentinels: str = setting(
        "",
        "Redis Sentinels (host:port, comma-separated) to ask for the master and follow its"
        " failovers; replaces REDIS_HOST and REDIS_PORT",
        check=_host_ports,
        must_be="host:port pairs, comma-separated ([::1]:26379 for IPv6)",
    )
    redis_sentinel_master: str = setting(
        "mymaster", "name of the master the REDIS_SENTINELS monitor"
    )
    redis_sentinel_username: str = setting(
        "", "ACL user name on the REDIS_SENTINELS (with REDIS_SENTINEL_PASSWORD)"
    )
    redis_sentinel_password: str = setting(
        "",
        "password of the REDIS_SENTINELS (their requirepass, or their ACL user's);"
        " REDIS_PASSWORD is the master's",
        secret=True,
    )
    redis_sentinel_tls: bool = setting(
        False,
        "connect to the REDIS_SENTINELS over TLS (with REDIS_CA, REDIS_CERT and REDIS_KEY)",
    )

    @property
    def sentinels(self) -> list[tuple[str, int]]:
        """REDIS_SENTINELS as (host, port) pairs; [] when unset."""
        return parse_host_ports(self.redis_sentinels) if self.redis_sentinels else []

    api_max_connections: int = setting(
        1000,
        "open API connections at most; past it a new connection gets 503 and is closed at once",
        low=1,
    )
    api_max_watchers: int = setting(
        500,
        "event streams and blocking queries open at once at most (they count as connections"
        " too); past it 503",
        low=0,
    )
    api_header_timeout: float = setting(
        10.0,
        "seconds a client has to send a complete request line and headers; then the"
        " connection is closed",
        low=0.1,
        high=3600,
    )
    api_idle_timeout: float = setting(
        5.0, "seconds an idle keep-alive API connection stays open", low=0.1, high=3600
    )
    api_max_header_bytes: int = setting(
        32768, "bytes of request line and headers at most; past it 431", low=1024
    )
    log_format: Literal["text", "json"] = setting(
        "text", "log lines as text, or as one JSON object per line (ts, level, logger, msg, ...)"
    )
    access_log: bool = setting(False, "log every HTTP request (method, path, status)")

    @property
    def nats_servers(self) -> list[str]:
        return [url.strip() for url in self.nats_url.split(",") if url.strip()]

    @property
    def dns_listen_host(self) -> str:
        return self.dns_host or self.host

    @property
    def dns_address_label_names(self) -> list[str]:
        return [name.strip() for name in self.dns_address_labels.split(",") if name.strip()]


def _check_pair(cert: str, cert_var: str, key: str, key_var: str, server: bool = False) -> None:
    """A certificate needs its key and the key must match it; ConfigError otherwise."""
    if not cert and not key:
        return
    if not key:
        raise ConfigError(cert_var, cert, f"{key_var} beside it (the certificate's private key)")
    if not cert:
        raise ConfigError(key_var, key, f"{cert_var} beside it (the key's certificate)")
    import ssl

    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER if server else ssl.PROTOCOL_TLS_CLIENT)
    try:
        context.load_cert_chain(cert, key)
    except ssl.SSLError as exc:
        if "KEY_VALUES_MISMATCH" in str(exc):
            raise ConfigError(key_var, key, f"the private key of {cert_var}={cert!r}") from None
        raise ConfigError(
            key_var, key, f"a PEM private key, with {cert_var} a PEM certificate ({exc.reason})"
        ) from None
    except OSError as exc:
        raise ConfigError(key_var, key, f"a readable file ({exc.strerror})") from None


def _check_ca(path: str, var: str) -> None:
    import ssl

    try:
        ssl.create_default_context(cafile=path)
    except (ssl.SSLError, OSError) as exc:
        reason = getattr(exc, "reason", None) or exc.strerror or exc
        raise ConfigError(var, path, f"a PEM file of CA certificates ({reason})") from None


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
