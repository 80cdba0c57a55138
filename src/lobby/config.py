"""Environment -> typed settings (SPEC §7), with one clear line per mistake.

Names, types and defaults are the Go implementation's, so an existing systemd unit
works unchanged. Integers parse like Go's envconfig (strconv.ParseInt with base 0:
`0x1F`, `0o17`, `017`, `1_000`), booleans like strconv.ParseBool. An empty value is
treated as unset. Variables we add have defaults that change nothing for an old unit.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict


class ConfigError(Exception):
    """A malformed environment variable; str() is the one line to print."""

    def __init__(self, name: str, value: str, expected: str) -> None:
        super().__init__(f"invalid {name}={value!r}: expected {expected}")
        self.name = name


_TRUE = {"1", "t", "T", "TRUE", "true", "True"}
_FALSE = {"0", "f", "F", "FALSE", "false", "False"}
_GO_INT = re.compile(
    r"[+-]?(?:0[xX](?:_?[0-9a-fA-F])+|0[bB](?:_?[01])+|0[oO](?:_?[0-7])+|0(?:_?[0-7])*|[1-9](?:_?[0-9])*)"
)


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


@dataclass(frozen=True)
class Var:
    name: str
    kind: Literal["str", "int", "bool"]
    default: Any
    help: str
    low: int | None = None
    high: int | None = None
    choices: tuple[str, ...] = ()

    def expected(self) -> str:
        if self.kind == "bool":
            return "a boolean (1, t, true, 0, f, false, ...)"
        if self.choices:
            return " or ".join(self.choices) + " (case-insensitive)"
        if self.kind == "int":
            if self.high is not None:
                return f"an integer from {self.low} to {self.high}"
            if self.low is not None:
                return f"an integer >= {self.low}"
            return "an integer"
        return "a string"

    def parse(self, raw: str) -> Any:
        try:
            if self.kind == "bool":
                return parse_go_bool(raw)
            if self.kind == "int":
                value = parse_go_int(raw)
                if (self.low is not None and value < self.low) or (
                    self.high is not None and value > self.high
                ):
                    raise ValueError(raw)
                return value
        except ValueError:
            raise ConfigError(self.name, raw, self.expected()) from None
        if self.choices:
            for choice in self.choices:
                if raw.lower() == choice.lower():
                    return choice
            raise ConfigError(self.name, raw, self.expected())
        return raw


VARIABLES: tuple[Var, ...] = (
    Var("TOKEN", "str", "", "API token; empty disables authentication"),
    Var("HOST", "str", "127.0.0.1", "HTTP listen address"),
    Var("PORT", "int", 1313, "HTTP listen port", 1, 65535),
    Var("DISABLE_API", "bool", False, "run without the HTTP server"),
    Var("DRIVER", "str", "NATS", "broker driver: NATS or Redis", choices=("NATS", "Redis")),
    Var(
        "NATS_URL",
        "str",
        "",
        "NATS server URL(s), comma-separated; empty: start or join an embedded nats-server",
    ),
    Var("NATS_DISCOVERY_CHANNEL", "str", "lobby.discovery", "NATS subject for announcements"),
    Var("REDIS_HOST", "str", "127.0.0.1", "Redis host"),
    Var("REDIS_PORT", "int", 6379, "Redis port", 1, 65535),
    Var("REDIS_DB", "int", 0, "Redis database number", 0, 1_000_000),
    Var("REDIS_CHANNEL", "str", "lobby:discovery", "Redis channel for announcements"),
    Var("REDIS_PASSWORD", "str", "", "Redis password"),
    Var("LABELS", "str", "", "comma-separated labels of this node"),
    Var("LABELS_PATH", "str", "/etc/lobby/labels", "directory of label files, one label per line"),
    Var("RUNTIME_LABELS_FILENAME", "str", "_runtime", "file in LABELS_PATH for API-managed labels"),
    Var("HOSTNAME", "str", "", "overrides the machine's hostname"),
    Var("CLEAN_EVERY", "int", 15, "seconds between sweeps of dead records", 1),
    Var("KEEP_ALIVE", "int", 5, "seconds between keep-alive announcements", 1),
    Var("TTL", "int", 30, "seconds of silence after which a node is dead", 1),
    Var("NODE_EXPORTER_PORT", "int", 9100, "default Prometheus target port", 1, 65535),
    Var("REGISTER", "bool", True, "announce this node (false: listen and serve only)"),
    Var("CALLBACK", "str", "", "command run when the registry changes (split like a shell)"),
    Var("CALLBACK_COOLDOWN", "int", 15, "seconds from the end of one callback run to the next", 0),
    Var("CALLBACK_FIRST_RUN_DELAY", "int", 30, "seconds after start before the first run", 0),
    # ours
    Var("CALLBACK_TIMEOUT", "int", 60, "seconds before a hung callback is killed", 1),
    Var("EMBEDDED_NATS_PORT", "int", 4222, "port of the embedded nats-server", 1, 65535),
    Var(
        "LOG_LEVEL",
        "str",
        "INFO",
        "DEBUG, INFO, WARNING or ERROR",
        choices=("DEBUG", "INFO", "WARNING", "ERROR"),
    ),
)


class Settings(BaseModel):
    """Typed, validated settings of one lobbyd."""

    model_config = ConfigDict(frozen=True)

    token: str = ""
    host: str = "127.0.0.1"
    port: int = 1313
    disable_api: bool = False
    driver: Literal["NATS", "Redis"] = "NATS"
    nats_url: str = ""
    nats_discovery_channel: str = "lobby.discovery"
    redis_host: str = "127.0.0.1"
    redis_port: int = 6379
    redis_db: int = 0
    redis_channel: str = "lobby:discovery"
    redis_password: str = ""
    labels: str = ""
    labels_path: str = "/etc/lobby/labels"
    runtime_labels_filename: str = "_runtime"
    hostname: str = ""
    clean_every: int = 15
    keep_alive: int = 5
    ttl: int = 30
    node_exporter_port: int = 9100
    announce: bool = True  # REGISTER (BaseModel already has a `register`)
    callback: str = ""
    callback_cooldown: int = 15
    callback_first_run_delay: int = 30
    callback_timeout: int = 60
    embedded_nats_port: int = 4222
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"

    @property
    def nats_servers(self) -> list[str]:
        return [url.strip() for url in self.nats_url.split(",") if url.strip()]


def load(environ: Mapping[str, str]) -> Settings:
    """Settings from `environ`; raises ConfigError on the first malformed variable."""
    values: dict[str, Any] = {}
    for var in VARIABLES:
        raw = environ.get(var.name, "")
        field = "announce" if var.name == "REGISTER" else var.name.lower()
        values[field] = var.parse(raw) if raw != "" else var.default
    if values["runtime_labels_filename"] in (".", "..") or "/" in values["runtime_labels_filename"]:
        raise ConfigError(
            "RUNTIME_LABELS_FILENAME", values["runtime_labels_filename"], "a plain file name"
        )
    return Settings(**values)


def help_text() -> str:
    lines = [
        "usage: lobbyd [--help] [--version]",
        "",
        "lobbyd announces this server's hostname and labels through NATS or Redis and",
        "serves an HTTP API listing every server that does the same. It is configured",
        "only through environment variables:",
        "",
    ]
    width = max(len(v.name) for v in VARIABLES)
    for var in VARIABLES:
        default = var.default
        if isinstance(default, bool):
            default = str(default).lower()
        shown = f"(default {default})" if default != "" else "(default empty)"
        lines.append(f"  {var.name:<{width}}  {var.help} {shown}")
    lines += [
        "",
        "A malformed value stops lobbyd with exit status 2 and a line naming the variable.",
    ]
    return "\n".join(lines)
