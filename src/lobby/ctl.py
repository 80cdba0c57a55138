"""lobbyctl: ask a lobbyd from the shell (SPEC §9).

Arguments follow Go's `flag` package, like the Go lobbyctl: flags come before the
command (`-host H`, `--host H`, `-host=H`, `--host=H`), and parsing stops at the first
non-flag word or at `--`, so a label may start with a dash. Unset or empty flags fall
back to the environment (HOST, PORT, PROTOCOL, TOKEN, CA_FILE), then to 127.0.0.1, 1313,
http, no token and the system's CAs. `-insecure` skips checking the daemon's
certificate. `keygen` prints a new signing key (SPEC §13.1) and talks to nobody.

Exit status: 0 done, 1 lobbyd failed (unreachable, 403, 400, ...), 2 usage error. Errors
are one line on stderr (a usage error ends with a hint to run `lobbyctl -help`; only
`lobbyctl` without any argument prints the whole usage). `-version` prints the version.

Human output (`-json` prints the API's JSON instead, indented by 2 like the daemon's):

- `discoveries`, `discoveries labels ...`, `discoveries search ...`: one block per node,
  blocks separated by one blank line. A block's first line is the hostname, padded with
  spaces to the longest hostname plus 4, then the node's first label; each further label
  is on its own line, indented by that same width. A node without labels is its
  hostname alone. No line has trailing spaces::

      a.example            location:prague
                           service:web

      long-name.example    service:db

      bare.example

- `discovery`: as the Go lobbyctl prints it (no `Labels:` section without labels)::

      Hostname:
        a.example
      Labels:
        location:prague
        service:web

- `resolve LABEL`: one hostname per line.
- `prometheus NAME`: one line per target, padded like the hostnames above, then its
  group's labels as `key=value`, separated by single spaces::

      10.0.0.1:9100     location=prague env=prod
      [2a03::1]:9100    location=prague env=prod

- `checks`: one line per health check: its state (`up` green, `down` red), its labels
  (joined by `,`), the check, how long it has been in that state and its streak, then
  what its last run said; columns padded to the widest entry plus 2. A check that is
  down and printed something shows the first line of that output below, indented::

      up    service:smtp         tcp://[::1]:25  for 3m12s  41 passes   connected to [::1]:25
      down  web:api,service:web  exec:check-api  for 10s    3 failures  exit status 1
            database is read-only

- `watch`: one line per event as it happens: the event name padded to 6, the hostname,
  then its (matching) labels separated by two spaces; a leave ends with its reason in
  parentheses. It starts with a `join` for every node already there. When lobbyd goes
  away it says so once on stderr, keeps retrying every second, and says when it is
  back (the events it missed follow)::

      join   a.example  location:prague  service:web
      update a.example  service:web
      leave  a.example  service:web  (goodbye)

  With `-json`, one compact JSON object per line (`{"event": "join", ...}`).
- `labels add|del`: nothing; the exit status tells.
- Nothing at all for an empty answer, except `prometheus NAME`, which says on stderr
  that no node announces that service (so a typo does not look like a broken daemon).

Colours (rich, loaded only when they are used): hostnames and targets yellow, a label's
name (up to its first colon) green and its value magenta. Only when stdout is a terminal
and NO_COLOR is unset or empty. Control characters from the daemon are printed escaped
(`\\x1b`), so a hostile label cannot drive the terminal.

- `render SOURCE [-o FILE]`: the template's text, exactly as lobbyd renders it (the
  same code, lobby.templates, on the daemon's view fetched over the API), on stdout
  or written atomically to FILE.

Start-up stays fast: this module imports the standard library's http.client (through
lobby._http), neither httpx nor asyncio, nothing of the daemon; `watch` alone imports
the httpx client (lobby.client), `render` alone lobby.templates (jinja2), `keygen`
lobby.signing, and colour rich, each when it runs.
"""

from __future__ import annotations

import json
import os
import re
import sys
import time
from collections.abc import Callable, Mapping, Sequence

from lobby import __version__  # the package itself, loaded already: costs nothing
from lobby.calls.requests import LobbyException
from lobby.calls.transport import HttpLobby

# Neither typing nor dataclasses is imported at run time: together they are a quarter of
# a `lobbyctl resolve` (bench/README.md, "lobbyctl").
TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any, TextIO

    from lobby.client import Lobby

USAGE = """\
Usage: lobbyctl [-host H] [-port P] [-proto http|https] [-token T] [-cacert FILE]
                [-insecure] [-json] COMMAND

Commands:
  resolve LABEL                    hostnames with that label
  discovery                        the packet of the node lobbyctl talks to
  discoveries                      all discoveries
  discoveries labels LABEL...      discoveries with any of the labels
  discoveries search PREFIX...     discoveries with labels starting with any prefix
  labels add LABEL...              add runtime labels
  labels del LABEL...              delete runtime labels
  prometheus NAME                  Prometheus HTTP SD targets of service NAME
  checks                           health checks and the labels they govern
  watch [labels L...|search P...]  print changes as they happen (Ctrl-C ends)
  render SOURCE [-o FILE]          render a template against lobbyd's view (SPEC §18)
  keygen                           print a new signing key for SIGNING_KEYS

Flags (also --flag, -flag=value), before the command:
  -host H          lobbyd's address (env HOST, default 127.0.0.1)
  -port P          lobbyd's port (env PORT, default 1313)
  -proto PROTO     http or https (env PROTOCOL, default http)
  -token T         API token (env TOKEN, default none)
  -cacert FILE     PEM file of the CAs that sign lobbyd's certificate, with https
                   (env CA_FILE, default the system's CAs)
  -insecure        with https, do not check lobbyd's certificate
  -json            print the API's JSON instead of text
  -h, -help        show this help
  -version         print lobbyctl's version

Exit status: 0 done, 1 lobbyd failed or unreachable (or the template failed to
render), 2 usage error (or the template is missing or does not compile).
"""

VALUE_FLAGS = ("host", "port", "proto", "token", "cacert")
BOOL_FLAGS = ("json", "insecure")
# Go's strconv.ParseBool, which `-json=value` goes through in the Go tool.
TRUE = frozenset({"1", "t", "T", "TRUE", "true", "True"})
FALSE = frozenset({"0", "f", "F", "FALSE", "false", "False"})

# command words -> (action, how many arguments: exact count, or -1 for one or more)
COMMANDS: dict[tuple[str, ...], tuple[str, int, str]] = {
    ("resolve",): ("resolve", 1, "LABEL"),
    ("discovery",): ("discovery", 0, ""),
    ("discoveries",): ("discoveries", 0, ""),
    ("discoveries", "labels"): ("find_labels", -1, "LABEL"),
    ("discoveries", "search"): ("find_prefixes", -1, "PREFIX"),
    ("labels", "add"): ("add", -1, "LABEL"),
    ("labels", "del"): ("del", -1, "LABEL"),
    ("prometheus",): ("prometheus", 1, "NAME"),
    ("checks",): ("checks", 0, ""),
    ("watch",): ("watch", 0, ""),
    ("watch", "labels"): ("watch_labels", -1, "LABEL"),
    ("watch", "search"): ("watch_prefixes", -1, "PREFIX"),
    ("render",): ("render", -1, "SOURCE"),
    ("keygen",): ("keygen", 0, ""),
}


class UsageError(Exception):
    """Bad command line: print the message and the usage, exit 2."""


class Options:
    """What the command line asks for."""

    def __init__(self) -> None:
        self.host = "127.0.0.1"
        self.port = 1313
        self.proto = "http"
        self.token = ""
        self.cacert = ""
        self.insecure = False
        self.json = False
        self.help = False
        self.version = False
        self.action = ""
        self.args: list[str] = []

    def __repr__(self) -> str:
        return f"Options({', '.join(f'{k}={v!r}' for k, v in vars(self).items())})"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Options) and vars(self) == vars(other)

    __hash__ = None  # type: ignore[assignment]  # mutable, like the dataclass it was


def parse_args(argv: Sequence[str], env: Mapping[str, str]) -> Options:
    """Flags, then the command; raises UsageError."""
    flags: dict[str, str] = {}
    opts = Options()
    i = 0
    while i < len(argv):
        arg = argv[i]
        if arg == "--":
            i += 1
            break
        if not arg.startswith("-") or arg == "-":
            break
        name, eq, value = arg.removeprefix("-").removeprefix("-").partition("=")
        i += 1
        if name in ("h", "help"):
            opts.help = True
        elif name in ("V", "version"):
            opts.version = True
        elif name in BOOL_FLAGS:
            setattr(opts, name, _flag_bool(name, value) if eq else True)
        elif name in VALUE_FLAGS:
            if not eq:
                if i == len(argv):
                    raise UsageError(f"flag needs an argument: {arg}")
                value = argv[i]
                i += 1
            flags[name] = value
        else:
            raise UsageError(f"unknown flag: {arg}")
    if opts.help or opts.version:
        return opts

    # Like the Go tool: an empty flag is an unset flag.
    def setting(name: str, var: str, default: str) -> tuple[str, str]:
        if flags.get(name):
            return flags[name], f"-{name}"
        if env.get(var):
            return env[var], var
        return default, ""

    opts.host = setting("host", "HOST", "127.0.0.1")[0]
    opts.token = setting("token", "TOKEN", "")[0]
    opts.cacert = setting("cacert", "CA_FILE", "")[0]
    proto, source = setting("proto", "PROTOCOL", "http")
    opts.proto = proto.lower()
    if opts.proto not in ("http", "https"):
        raise UsageError(f"{source} {proto!r}: expected http or https")
    port, source = setting("port", "PORT", "1313")
    if not port.isdigit() or not 1 <= int(port) <= 65535:
        raise UsageError(f"{source} {port!r}: expected a port number from 1 to 65535")
    opts.port = int(port)
    opts.action, opts.args = _command(list(argv[i:]))
    if opts.action == "render":
        opts.args = _render_args(opts.args)
    return opts


def _is_flag(word: str) -> bool:
    """One of our flags, misplaced after the command (a label never looks like one)."""
    name = word[2:] if word.startswith("--") else word[1:] if word.startswith("-") else ""
    return name.partition("=")[0] in ("h", "help", "V", "version", *BOOL_FLAGS, *VALUE_FLAGS)


def _flag_bool(name: str, value: str) -> bool:
    if value in TRUE:
        return True
    if value in FALSE:
        return False
    raise UsageError(f"invalid boolean value {value!r} for -{name}")


def _command(words: list[str]) -> tuple[str, list[str]]:
    if not words:
        raise UsageError("missing command")
    stray = next((word for word in words[1:] if _is_flag(word)), None)
    if stray is not None:
        raise UsageError(f"flags go before the command: {stray}")
    subcommands = [w[1] for w in COMMANDS if len(w) == 2 and w[0] == words[0]]
    if subcommands and len(words) > 1 and words[1] not in subcommands:
        raise UsageError(f"unknown {words[0]} subcommand {words[1]!r}")
    # The longest matching command wins: `discoveries labels X` over `discoveries`.
    for size in (2, 1):
        spec = COMMANDS.get(tuple(words[:size])) if len(words) >= size else None
        if spec is None:
            continue
        action, count, metavar = spec
        args = words[size:]
        shown = " ".join(words[:size])
        if count == -1 and not args:
            raise UsageError(f"{shown}: give at least one {metavar}")
        if count >= 0 and len(args) != count:
            if count == 0:
                raise UsageError(f"{shown}: unexpected argument {args[0]!r}")
            raise UsageError(f"{shown}: expects exactly one {metavar}")
        return action, args
    if subcommands:  # `labels` alone
        raise UsageError(f"{words[0]}: expects {' or '.join(subcommands)}")
    raise UsageError(f"unknown command {words[0]!r}")


def _render_args(args: list[str]) -> list[str]:
    """render's SOURCE and `-o FILE` (in either order) -> [SOURCE, FILE or ""]."""
    source: str | None = None
    output: str | None = None
    i = 0
    while i < len(args):
        word = args[i]
        i += 1
        name, eq, value = word.partition("=")
        if name in ("-o", "--o", "-output", "--output"):
            if not eq:
                if i == len(args):
                    raise UsageError(f"flag needs an argument: {word}")
                value = args[i]
                i += 1
            if not value or output is not None:
                raise UsageError(f"render: {word}: give -o one FILE, once")
            output = value
        elif source is None:
            source = word
        else:
            raise UsageError(f"render: unexpected argument {word!r}")
    if source is None:
        raise UsageError("render: give at least one SOURCE")
    return [source, output or ""]


# -- human output -----------------------------------------------------------------------

HOST_STYLE = "yellow"
NAME_STYLE = "green"
VALUE_STYLE = "magenta"
GAP = 4  # spaces between the hostname column and the labels, as in the Go tool

Segment = tuple[str, str | None]  # text and its rich style
Line = list[Segment]

_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]")


def safe(text: str) -> str:
    """`text` with control characters escaped: they would drive the terminal."""
    return _CONTROL.sub(lambda m: f"\\x{ord(m.group()):02x}", text)


def label_segments(label: str) -> Line:
    """`name:value` as name (green), colon, value (magenta); split on the first colon."""
    name, colon, value = safe(label).partition(":")
    line: Line = [(name, NAME_STYLE)]
    if colon:
        line += [(colon, None), (value, VALUE_STYLE)]
    return line


def _table(rows: Sequence[tuple[str, Sequence[Line]]], blank_between: bool) -> list[Line]:
    """First column padded to the widest entry + GAP; further cells aligned under it."""
    width = max((len(key) for key, _ in rows), default=0) + GAP
    lines: list[Line] = []
    for n, (key, cells) in enumerate(rows):
        if blank_between and n:
            lines.append([])
        if not cells:
            lines.append([(key, HOST_STYLE)])
            continue
        lines.append([(key, HOST_STYLE), (" " * (width - len(key)), None), *cells[0]])
        lines.extend([(" " * width, None), *cell] for cell in cells[1:])
    return lines


def discoveries_lines(discoveries: Sequence[Mapping[str, Any]]) -> list[Line]:
    rows = [
        (safe(str(d.get("hostname", ""))), [label_segments(lab) for lab in d.get("labels") or []])
        for d in discoveries
    ]
    return _table(rows, blank_between=True)


def discovery_lines(discovery: Mapping[str, Any]) -> list[Line]:
    hostname = safe(str(discovery.get("hostname", "")))
    lines: list[Line] = [[("Hostname:", None)], [("  ", None), (hostname, HOST_STYLE)]]
    labels = discovery.get("labels") or []
    if labels:
        lines.append([("Labels:", None)])
        lines.extend([("  ", None), *label_segments(label)] for label in labels)
    return lines


def hostnames_lines(hostnames: Sequence[str]) -> list[Line]:
    return [[(safe(name), HOST_STYLE)] for name in hostnames]


def prometheus_lines(groups: Sequence[Mapping[str, Any]]) -> list[Line]:
    rows: list[tuple[str, Sequence[Line]]] = []
    for group in groups:
        # Prometheus reads the keys case-insensitively; lobbyd writes Targets/Labels.
        targets = group.get("Targets", group.get("targets")) or []
        labels = group.get("Labels", group.get("labels")) or {}
        cell: Line = []
        for key, value in labels.items():
            if cell:
                cell.append((" ", None))
            cell += [(safe(str(key)), NAME_STYLE), ("=", None), (safe(str(value)), VALUE_STYLE)]
        rows.extend((safe(str(t)), [cell] if cell else []) for t in targets)
    return _table(rows, blank_between=False)


UP_STYLE = "green"
DOWN_STYLE = "red"
COLUMN_GAP = 2


def _duration(seconds: float) -> str:
    """`45s`, `3m12s`, `2h05m`, `3d04h`."""
    s = max(0, int(seconds))
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s"
    if s < 86400:
        return f"{s // 3600}h{s % 3600 // 60:02d}m"
    return f"{s // 86400}d{s % 86400 // 3600:02d}h"


def _streak(check: Mapping[str, Any]) -> str:
    passes, failures = check.get("passes") or 0, check.get("failures") or 0
    if passes:
        return f"{passes} pass" + ("es" if passes != 1 else "")
    if failures:
        return f"{failures} failure" + ("s" if failures != 1 else "")
    return "not run yet"


def checks_lines(checks: Sequence[Mapping[str, Any]], now: float | None = None) -> list[Line]:
    now = time.time() if now is None else now
    rows: list[tuple[list[Line], str]] = []
    for check in checks:
        up = check.get("state") == "up"
        labels: Line = []
        for label in check.get("labels") or []:
            if labels:
                labels.append((",", None))
            labels += label_segments(str(label))
        changed = check.get("changed")
        since = f"for {_duration(now - changed)}" if isinstance(changed, int | float) else ""
        cells: list[Line] = [
            [("up" if up else "down", UP_STYLE if up else DOWN_STYLE)],
            labels,
            [(safe(str(check.get("check", ""))), HOST_STYLE)],
            [(since, None)],
            [(_streak(check), None)],
            [(safe(str(check.get("last_detail") or "")), None)],
        ]
        output = str(check.get("last_output") or "").strip()
        note = safe(output.splitlines()[0][:100]) if output and not up else ""
        rows.append((cells, note))
    if not rows:
        return []
    columns = len(rows[0][0])
    widths = [
        max(sum(len(text) for text, _ in cells[i]) for cells, _ in rows) for i in range(columns - 1)
    ]
    lines: list[Line] = []
    for cells, note in rows:
        line: Line = []
        for i, cell in enumerate(cells):
            line += cell
            if i < columns - 1:
                line.append((" " * (widths[i] - sum(len(t) for t, _ in cell) + COLUMN_GAP), None))
        while line and not line[-1][0].strip():  # no trailing spaces
            line.pop()
        lines.append(line)
        if note:
            lines.append([(" " * (widths[0] + COLUMN_GAP), None), (note, None)])
    return lines


def use_colour(out: TextIO, env: Mapping[str, str]) -> bool:
    """Colour only on a terminal, never with NO_COLOR (https://no-color.org)."""
    isatty = getattr(out, "isatty", None)
    return bool(isatty and isatty()) and not env.get("NO_COLOR")


def write_lines(lines: Sequence[Line], out: TextIO, colour: bool) -> None:
    if not colour:
        out.writelines("".join(text for text, _ in line) + "\n" for line in lines)
        return
    from rich.console import Console  # only here: rich costs more to import than the rest
    from rich.text import Text

    console = Console(file=out, force_terminal=True, highlight=False, emoji=False, markup=False)
    for line in lines:
        console.print(Text.assemble(*[(t, s) if s else t for t, s in line]), soft_wrap=True)


def write_json(value: object, out: TextIO) -> None:
    """The API's JSON as the daemon prints it: 2-space indent, UTF-8, final newline."""
    out.write(json.dumps(value, indent=2, ensure_ascii=False) + "\n")


# -- running a command --------------------------------------------------------------------

if TYPE_CHECKING:
    Render = Callable[[Any], list[Line]]


def execute(lobby: HttpLobby, opts: Options) -> tuple[object, Render] | None:
    """Ask lobbyd; the answer and how to print it, or None for nothing to print."""
    args = opts.args
    match opts.action:
        case "add":
            lobby.add_labels(args)
            return None
        case "del":
            lobby.delete_labels(args)
            return None
        case "resolve":
            return lobby.resolve(args[0]), hostnames_lines
        case "discovery":
            return lobby.get_discovery(), discovery_lines
        case "discoveries":
            return lobby.get_discoveries(), discoveries_lines
        case "find_labels":
            return lobby.find_by_labels(args), discoveries_lines
        case "find_prefixes":
            return lobby.find_by_prefixes(args), discoveries_lines
        case "prometheus":
            return lobby.prometheus(args[0]), prometheus_lines
        case "checks":
            return lobby.checks(), checks_lines
    raise AssertionError(f"no such action {opts.action!r}")


def event_line(event: Mapping[str, Any]) -> Line:
    kind = str(event.get("event", ""))
    line: Line = [(f"{kind:<6}", None)]
    if kind == "reset":
        return [*line, (" (the stream starts over: a fresh snapshot follows)", None)]
    line += [(" ", None), (safe(str(event.get("hostname", ""))), HOST_STYLE)]
    for label in event.get("labels") or []:
        line += [("  ", None), *label_segments(str(label))]
    if kind == "leave":
        line.append((f"  ({safe(str(event.get('reason', '')))})", None))
    return line


def watch(lobby: Lobby, opts: Options, out: TextIO, err: TextIO) -> None:
    """Print events until interrupted; each line is flushed as it comes.

    Says once on stderr when lobbyd goes away, and when it is back.
    """
    labels = opts.args if opts.action == "watch_labels" else None
    prefixes = opts.args if opts.action == "watch_prefixes" else None
    colour = use_colour(out, os.environ)

    def link(up: bool, reason: str) -> None:
        if up:
            err.write(f"lobbyctl: lobbyd at {lobby.base_url} is back\n")
        else:
            err.write(
                f"lobbyctl: lost lobbyd at {lobby.base_url} ({reason}); retrying every second\n"
            )
        err.flush()

    for event in lobby.watch(labels, prefixes, on_link=link):
        if opts.json:
            out.write(json.dumps(event, ensure_ascii=False) + "\n")
        else:
            write_lines([event_line(event)], out, colour)
        out.flush()


def render_template(lobby: HttpLobby, opts: Options, out: TextIO, err: TextIO) -> int:
    """`render SOURCE [-o FILE]`: the template against lobbyd's view, as lobbyd renders it.

    The template module (jinja2, lobby.model) is imported only here. Exit status 2 for
    a missing or broken template, 1 for a render or write error.
    """
    from pathlib import Path

    from lobby.hooks.templates import (
        RenderError,
        TemplateConfigError,
        TemplateData,
        compile_template,
    )
    from lobby.hooks.templates import render as render_text
    from lobby.system.files import write_atomic

    source, output = opts.args
    try:
        template = compile_template(Path(source).absolute())
    except TemplateConfigError as exc:
        err.write(f"lobbyctl: {exc}\n")
        return 2
    view = TemplateData(
        lobby.get_discoveries(), lobby.get_discovery(), lobby.prometheus, os.environ
    )
    try:
        text = render_text(template, view)
    except RenderError as exc:
        err.write(f"lobbyctl: {' '.join(str(exc).split())}\n")
        return 1
    if not output:
        out.write(text)
        out.flush()
        return 0
    try:
        write_atomic(Path(output), text, keep_owner=True)
    except OSError as exc:
        err.write(f"lobbyctl: cannot write {output}: {exc.strerror or exc}\n")
        return 1
    return 0


def error_line(exc: LobbyException) -> str:
    """One line for stderr, whatever the daemon answered."""
    message = " ".join(str(exc).split())
    if exc.status_code is None:
        return message
    line = f"lobbyd answered {exc.status_code} for {exc.url}: {message}"
    if exc.status_code == 403:
        line += " (give the token with -token or TOKEN)"
    return line


def _unverified_hint(exc: LobbyException) -> str:
    if exc.status_code is None and "CERTIFICATE_VERIFY_FAILED" in str(exc):
        return " (give lobbyd's CA with -cacert or CA_FILE)"
    return ""


def main(argv: Sequence[str] | None = None) -> int:
    """The `lobbyctl` console script; returns the exit status."""
    out, err = sys.stdout, sys.stderr
    args = sys.argv[1:] if argv is None else argv
    if not args:  # `lobbyctl` alone: show what it can do
        err.write(USAGE)
        return 2
    try:
        opts = parse_args(args, os.environ)
    except UsageError as exc:
        err.write(f"lobbyctl: {exc} (see lobbyctl -help)\n")
        return 2
    if opts.help:
        out.write(USAGE)
        return 0
    if opts.version:
        out.write(f"lobbyctl {__version__}\n")
        return 0
    if opts.action == "keygen":
        from lobby.core.signing import generate_key

        out.write(generate_key() + "\n")
        return 0
    verify: bool | str = False if opts.insecure else (opts.cacert or True)
    try:
        if opts.action.startswith("watch"):
            from lobby.client import Lobby  # httpx: a stream that reconnects

            with Lobby(opts.host, opts.port, opts.token, opts.proto, verify=verify) as streamer:
                watch(streamer, opts, out, err)
            return 0
        agent = f"lobbyctl/{__version__}"
        with HttpLobby(
            opts.host, opts.port, opts.token, opts.proto, verify=verify, user_agent=agent
        ) as lobby:
            if opts.action == "render":
                return render_template(lobby, opts, out, err)
            result = execute(lobby, opts)
    except KeyboardInterrupt:
        return 0
    except BrokenPipeError:
        os.dup2(os.open(os.devnull, os.O_WRONLY), out.fileno())
        return 1
    except ValueError as exc:  # an argument the client refuses to send
        err.write(f"lobbyctl: {exc}\n")
        return 2
    except LobbyException as exc:
        err.write(f"lobbyctl: {error_line(exc)}{_unverified_hint(exc)}\n")
        return 1
    if result is None:
        return 0
    value, render = result
    if opts.action == "prometheus" and not value and not opts.json:
        err.write(f"lobbyctl: no targets: no node has a prometheus:{safe(opts.args[0])} label\n")
        return 0
    try:
        if opts.json:
            write_json(value, out)
        else:
            write_lines(render(value), out, use_colour(out, os.environ))
        out.flush()
    except BrokenPipeError:
        # `lobbyctl discoveries | head`: the reader left. Stop quietly, and keep Python
        # from failing again when it flushes stdout at exit.
        os.dup2(os.open(os.devnull, os.O_WRONLY), out.fileno())
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
