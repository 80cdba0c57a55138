"""Environment -> typed settings (SPEC §7), with one clear line per mistake.

Names, types and defaults are the Go implementation's, so an existing systemd unit
works unchanged. An empty value is treated as unset. Variables we add have defaults
that change nothing for an old unit.

Each setting is declared once, as a field of `Settings` (the machinery is
`lobby.system.settings`), grouped by topic: node, brokers, NATS, Redis, API,
security, hooks (callback, templates), DNS, health checks, logging. Every value is
parsed once, into its type (LABELS into a tuple of labels, TEMPLATES into template
entries, CHECKS into check specs, TEMPLATE_WAIT into a (min, max) pair, ...), and
checked in one place:

- `load(environ)`: every variable parsed and validated (LABELS, HOSTNAME, TEMPLATES'
  and CHECKS' entries included); no file is opened.
- `check_files(settings)`: the files the settings name (they exist and are readable,
  PEM files parse, a certificate has its key and matches it, a CA or client
  certificate has TLS to serve, templates compile, CHECKS_FILE's entries); lobbyd runs
  it right after `load`, in the order the checks ran when they were all made at load.

Either raises ConfigError, whose text is the one line lobbyd prints before it exits 2.
`VARIABLES`, `lobbyd --help`, the settings page of the documentation (written at build
time: docs/_gen/hooks.py) and `python -m lobby.config --markdown` are derived from the
fields.

This module is the top of the settings: the node layer (presence and its parts,
checks, brokers, labels, relay) does not import it; each names what it reads in a
Protocol that `Settings` satisfies.
"""

from __future__ import annotations

import re
import shlex
import sys
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

from lobby.system import settings as framework
from lobby.system.settings import (
    README_END,
    README_START,
    ConfigError,
    Var,
    parse_choices,
    parse_duration,
    parse_go_bool,
    parse_go_int,
    parse_min_max,
    parse_setting,
    redacted_repr,
    setting,
)
from lobby.system.urls import nats_urls_problem, redact_all

if TYPE_CHECKING:
    from lobby.hooks.templates import TemplateSpec
    from lobby.node.checks import CheckSpec

__all__ = [
    "README_END",
    "README_START",
    "VARIABLES",
    "ConfigError",
    "Settings",
    "Var",
    "check_files",
    "help_text",
    "load",
    "markdown_table",
    "parse_choices",
    "parse_duration",
    "parse_go_bool",
    "parse_go_int",
    "parse_host_ports",
    "parse_min_max",
    "replace_table",
]

# -- parsers and checks of single values (no I/O) ----------------------------------------


def _labels(text: str) -> tuple[str, ...]:
    from lobby.core.model import LabelError
    from lobby.node.labels import parse_env_labels

    try:
        return tuple(parse_env_labels(text))
    except LabelError as exc:
        raise ConfigError("LABELS", text, "", line=f"invalid LABELS: {exc}") from None


def _hostname(text: str) -> str:
    from lobby.core.model import label_problem

    problem = label_problem(text) if text else None
    if problem is not None:
        line = f"invalid HOSTNAME={text!r}: {problem.replace('label', 'name')}"
        raise ConfigError("HOSTNAME", text, "", line=line)
    return text


def _templates(text: str) -> tuple[TemplateSpec, ...]:
    if not text.strip():
        return ()
    from lobby.hooks.templates import TemplateConfigError, parse_templates  # jinja2: only if used

    try:
        return tuple(parse_templates(text))
    except TemplateConfigError as exc:
        raise ConfigError("TEMPLATES", text, "", line=str(exc)) from None


def _checks(text: str) -> tuple[CheckSpec, ...]:
    if not text.strip():
        return ()
    from lobby.node.checks import CheckError, parse_checks  # lobby.checks: only if used

    try:
        return tuple(parse_checks(text))
    except CheckError as exc:
        raise ConfigError("CHECKS", text, "", line=str(exc)) from None


def _min_max(text: str) -> tuple[float, float]:
    try:
        return parse_min_max(text)
    except ValueError:
        raise ValueError("") from None


def _signing_keys(text: str) -> tuple[bytes, ...]:
    from lobby.core.signing import SigningKeyError, parse_keys

    try:
        return tuple(parse_keys(text))
    except SigningKeyError as exc:
        raise ValueError(str(exc)) from None


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


def _sentinels(text: str) -> tuple[tuple[str, int], ...]:
    if not text:
        return ()
    try:
        return tuple(parse_host_ports(text))
    except ValueError:
        raise ValueError("") from None


def _label_names(text: str) -> tuple[str, ...]:
    parts = tuple(part.strip() for part in text.split(","))
    if not all(part and ":" not in part for part in parts):
        raise ValueError("")
    return parts


def _plain_file_name(name: str) -> bool:
    return name not in (".", "..") and "/" not in name


_DNS_DOMAIN = re.compile(r"[A-Za-z0-9_-]{1,63}(?:\.[A-Za-z0-9_-]{1,63})*\.?")


def _dns_domain(domain: str) -> bool:
    return len(domain) <= 200 and _DNS_DOMAIN.fullmatch(domain) is not None


def _command_problem(command: str) -> str | None:
    """CALLBACK must split like a shell would (balanced quotes) into at least one word."""
    try:
        words = shlex.split(command)
    except ValueError as exc:
        return f"{command!r} cannot be split like a shell would: {str(exc).lower()}"
    return None if words else "a blank command"


# -- checks of the files a setting names: run by check_files, not by load -----------------


def read_file(path: str) -> bytes:
    """The content of `path` (its first MiB); ValueError with the reason (never the
    content)."""
    try:
        with open(path, "rb") as file:
            return file.read(1 << 20)
    except OSError as exc:
        raise ValueError(exc.strerror or type(exc).__name__) from None


def _pem_file(path: str) -> bool:
    if b"-----BEGIN " not in read_file(path):
        raise ValueError("no PEM block in it")
    return True


def _keys_file(path: str) -> bool:
    from lobby.core.signing import SigningKeyError, parse_keys_file

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


@dataclass(frozen=True, kw_only=True)
class Settings:
    """Typed, validated settings of one lobbyd: the one place each variable is declared."""

    def __repr__(self) -> str:
        """Like the dataclass's, without secrets: no secret setting, and no password
        (or token) of a URL in any other (NATS_URL, a CALLBACK's or a check's URL)."""
        return redacted_repr(self)

    # -- this node (SPEC §2-4) --
    hostname: str = parse_setting("", "overrides the machine's hostname", _hostname, go=True)
    labels: tuple[str, ...] = parse_setting(
        "", "comma-separated labels of this node", _labels, go=True
    )
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
    announce: bool = setting(
        True, "announce this node; false: listen and serve only", env="REGISTER", go=True
    )
    listen: bool = setting(
        True,
        "hear every node and answer agents' queries (a listener); false: an agent, which"
        " announces but subscribes to nothing and asks a listener for cluster reads (SPEC §20)",
    )
    keep_alive: int = setting(5, "seconds between keep-alive announcements", low=1, go=True)
    ttl: int = setting(30, "seconds of silence after which a node is dead", low=1, go=True)
    clean_every: int = setting(
        15, "seconds between sweeps of dead records; expiry itself is exact", low=1, go=True
    )

    # -- brokers (SPEC §15) --
    drivers: tuple[Literal["NATS", "Redis"], ...] = setting(
        ("NATS",),
        "broker driver; new: several, comma-separated (NATS,Redis), to announce and listen on"
        " each at once",
        env="DRIVER",
        go=True,
    )
    relay: bool = setting(
        False,
        "with several drivers, forward every packet heard on one to the others, marked with"
        " this node's hostname",
    )

    # -- NATS (SPEC §13.3) --
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
    embedded_nats_port: int = setting(4222, "port of the embedded nats-server", low=1, high=65535)
    nats_ca: str = setting(
        "",
        "PEM file of the CAs that sign the NATS server's certificate",
        check_file=_pem_file,
        must_be=_PEM,
    )
    nats_cert: str = setting(
        "", "PEM client certificate file for NATS (mutual TLS)", check_file=_pem_file, must_be=_PEM
    )
    nats_key: str = setting(
        "", "PEM private key file of NATS_CERT", check_file=_pem_file, must_be=_PEM
    )
    nats_creds: str = setting(
        "", "NATS .creds file (user JWT and nkey seed)", check_file=_creds_file, must_be=_FILE
    )
    nats_nkey_seed: str = setting(
        "", "file holding the NATS nkey user seed", check_file=_seed_file, must_be=_FILE
    )
    nats_token: str = setting("", "NATS authentication token", secret=True)

    # -- Redis (SPEC §13.3, §15) --
    redis_host: str = setting("127.0.0.1", "Redis host", go=True)
    redis_port: int = setting(6379, "Redis port", low=1, high=65535, go=True)
    redis_db: int = setting(0, "Redis database number", low=0, high=1_000_000, go=True)
    redis_channel: str = setting("lobby:discovery", "Redis channel for announcements", go=True)
    redis_username: str = setting("", "Redis ACL user name (with REDIS_PASSWORD)")
    redis_password: str = setting("", "Redis password", secret=True, go=True)
    redis_tls: bool = setting(False, "connect to Redis over TLS")
    redis_ca: str = setting(
        "",
        "PEM file of the CAs that sign Redis's certificate",
        check_file=_pem_file,
        must_be=_PEM,
    )
    redis_cert: str = setting(
        "", "PEM client certificate file for Redis", check_file=_pem_file, must_be=_PEM
    )
    redis_key: str = setting(
        "", "PEM private key file of REDIS_CERT", check_file=_pem_file, must_be=_PEM
    )
    redis_sentinels: tuple[tuple[str, int], ...] = parse_setting(
        "",
        "Redis Sentinels (host:port, comma-separated) to ask for the master and follow its"
        " failovers; replaces REDIS_HOST and REDIS_PORT",
        _sentinels,
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

    # -- the HTTP API (SPEC §5, §13.2) --
    host: str = setting("127.0.0.1", "HTTP listen address", go=True)
    port: int = setting(1313, "HTTP listen port", low=1, high=65535, go=True)
    disable_api: bool = setting(False, "run without the HTTP server", go=True)
    token: str = setting("", "API token; empty disables authentication", secret=True, go=True)
    read_token: str = setting("", "API token that allows only GET and HEAD", secret=True)
    tls_cert: str = setting(
        "",
        "PEM certificate (chain) file: serve the API over HTTPS",
        check_file=_pem_file,
        must_be=_PEM,
    )
    tls_key: str = setting(
        "", "PEM private key file of TLS_CERT", check_file=_pem_file, must_be=_PEM
    )
    node_exporter_port: int = setting(
        9100, "default Prometheus target port", low=1, high=65535, go=True
    )
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
    access_log: bool = setting(False, "log every HTTP request (method, path, status)")

    # -- security: signed packets (SPEC §13.1) --
    signing_keys: tuple[bytes, ...] = parse_setting(
        "",
        "comma-separated signing keys (lobbyctl keygen); the first signs, every one verifies",
        _signing_keys,
        secret=True,
        must_be="comma-separated keys, each base64 of 32 bytes",
    )
    signing_keys_file: str = setting(
        "",
        "file of signing keys, one per line (# comments), added to SIGNING_KEYS",
        check_file=_keys_file,
        must_be="a readable file of keys, one per line",
    )
    accept_unsigned: bool = setting(
        False,
        "with signing keys, accept unsigned packets too (Go peers), except from a hostname"
        " once seen signed",
    )

    # -- hooks: the callback and templates (SPEC §8, §18) --
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
    templates: tuple[TemplateSpec, ...] = parse_setting(
        "",
        "Jinja2 templates rendered from the registry: SOURCE:DESTINATION[:COMMAND], several"
        " separated by ';' (see Templates)",
        _templates,
    )
    template_wait: tuple[float, float] = parse_setting(
        "2s:10s",
        "MIN:MAX: render templates after MIN without a change, or MAX after the first change"
        " at the latest",
        _min_max,
        must_be="MIN:MAX, two durations like 2s:10s or 250ms:1m, MIN <= MAX",
    )
    template_command_timeout: float = setting(
        60.0,
        "seconds before a template's COMMAND is killed",
        check=lambda seconds: seconds > 0,
        must_be="a duration above 0 in seconds (1.5) or Go syntax (300ms, 1m30s)",
    )

    # -- the DNS interface (SPEC §17) --
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
    dns_address_labels: tuple[str, ...] = parse_setting(
        "public_ip4,public_ip6,ip4,ip6",
        "labels holding a node's addresses, by preference: per address family, the first"
        " one a node carries gives its A or AAAA records",
        _label_names,
        must_be="comma-separated label names (no colons)",
    )

    # -- health-checked labels (SPEC §19) --
    checks: tuple[CheckSpec, ...] = parse_setting(
        "",
        "health-checked labels: `LABELS=CHECK` entries separated by `;`, CHECK one of"
        " tcp://HOST:PORT, http(s)://URL, exec:COMMAND; a label is announced only while"
        " its check passes",
        _checks,
    )
    checks_file: str = setting(
        "", "file of CHECKS entries, one per line (`#` comments), re-read when it changes"
    )
    check_interval: float = setting(10.0, "seconds between two runs of a check", low=0.1)
    check_timeout: float = setting(
        2.0, "seconds after which a check counts as failed (an exec check is killed)", low=0.01
    )
    check_rise: int = setting(2, "passes in a row that announce a checked label", low=1)
    check_fall: int = setting(3, "failures in a row that withdraw a checked label", low=1)

    # -- logging --
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = setting("INFO", "log level")
    log_format: Literal["text", "json"] = setting(
        "text", "log lines as text, or as one JSON object per line (ts, level, logger, msg, ...)"
    )

    # -- derived --

    @property
    def has_checks(self) -> bool:
        """CHECKS or CHECKS_FILE is set: health checks run (and lobby.checks is loaded)."""
        return bool(self.checks or self.checks_file)

    @property
    def nats_servers(self) -> list[str]:
        return [url.strip() for url in self.nats_url.split(",") if url.strip()]

    @property
    def dns_listen_host(self) -> str:
        return self.dns_host or self.host


VARIABLES: tuple[Var, ...] = framework.variables(Settings)


# -- loading and validating ---------------------------------------------------------------


def load(environ: Mapping[str, str]) -> Settings:
    """Settings from `environ`, each variable parsed and checked; raises ConfigError on
    the first mistake. Opens no file: what needs one is `check_files`."""
    settings = framework.load(Settings, VARIABLES, environ)
    for name, set_ in (
        ("REDIS_SENTINEL_TLS", settings.redis_sentinel_tls),
        ("REDIS_SENTINEL_USERNAME", bool(settings.redis_sentinel_username)),
        ("REDIS_SENTINEL_PASSWORD", bool(settings.redis_sentinel_password)),
    ):
        if set_ and not settings.redis_sentinels:
            shown = None if name.endswith("PASSWORD") else "true"
            raise ConfigError(name, shown, "REDIS_SENTINELS beside it (it is for them)")
    if not settings.listen and settings.dns_port:
        raise ConfigError(
            "DNS_PORT",
            str(settings.dns_port),
            "",
            line=f"DNS_PORT={settings.dns_port} with LISTEN=false: DNS is served by listeners"
            " only (an agent knows no other node); unset DNS_PORT or set LISTEN=true",
        )
    return settings


def check_files(settings: Settings) -> None:
    """Check every file the settings name, reading it, and what each needs beside it:
    lobbyd runs this right after `load`, so a bad path stops it at start (exit 2 naming
    the variable), not at first use. Raises ConfigError."""
    s = settings
    framework.check_files(s, VARIABLES)  # each file alone: readable, PEM, keys, creds
    _check_pair(s.tls_cert, "TLS_CERT", s.tls_key, "TLS_KEY", server=True)
    _check_pair(s.nats_cert, "NATS_CERT", s.nats_key, "NATS_KEY")
    _check_pair(s.redis_cert, "REDIS_CERT", s.redis_key, "REDIS_KEY")
    if s.nats_ca:
        _check_ca(s.nats_ca, "NATS_CA")
    if s.redis_ca:
        _check_ca(s.redis_ca, "REDIS_CA")
    for name, value in (("REDIS_CA", s.redis_ca), ("REDIS_CERT", s.redis_cert)):
        if value and not (s.redis_tls or s.redis_sentinel_tls):
            raise ConfigError(
                name,
                value,
                "REDIS_TLS=true or REDIS_SENTINEL_TLS=true beside it (used only over TLS)",
            )
    if s.templates:
        _check_templates(s.templates)
    if s.checks_file:
        _check_checks_file(s.checks_file, s.labels_path)


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


def _check_templates(specs: tuple[TemplateSpec, ...]) -> None:
    """Every template source exists and compiles."""
    from lobby.hooks.templates import TemplateConfigError, load_templates

    try:
        load_templates(specs)
    except TemplateConfigError as exc:
        raise ConfigError("TEMPLATES", None, "", line=str(exc)) from None


def _check_checks_file(path: str, labels_path: str) -> None:
    """CHECKS_FILE is readable, outside the label directory, and every line an entry."""
    from lobby.node.checks import CheckError, read_checks_file

    try:
        read_checks_file(path, labels_path, strict=True)
    except CheckError as exc:
        raise ConfigError("CHECKS_FILE", path, "", line=str(exc)) from None
    except OSError as exc:
        line = f"invalid CHECKS_FILE={path!r}: {exc.strerror or exc}"
        raise ConfigError("CHECKS_FILE", path, "", line=line) from None
    except ValueError as exc:
        line = f"invalid CHECKS_FILE={path!r}: {exc}"
        raise ConfigError("CHECKS_FILE", path, "", line=line) from None


# -- what lobbyd --help and the README show -----------------------------------------------


def help_text() -> str:
    """What `lobbyd --help` prints."""
    lines = [
        "usage: lobbyd [--help] [--version]",
        "",
        "lobbyd announces this server's hostname and labels through NATS or Redis and",
        "serves an HTTP API listing every server that does the same. It is configured",
        "only through environment variables:",
        "",
        *framework.help_lines(VARIABLES),
        "",
        "A malformed value stops lobbyd with exit status 2 and a line naming the variable.",
    ]
    return "\n".join(lines)


def markdown_table() -> str:
    """The settings table of the documentation (docs/reference/settings.md)."""
    return framework.markdown_table(VARIABLES)


def replace_table(readme: str) -> str:
    """`readme` with the text between the settings markers replaced by markdown_table()."""
    return framework.replace_table(readme, markdown_table())


def _main(argv: list[str]) -> int:
    if argv == ["--markdown"]:
        print(markdown_table())
        return 0
    print("usage: python -m lobby.config --markdown", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(_main(sys.argv[1:]))
