"""Templates (SPEC §18): render files from the registry and reload what reads them.

consul-template's job, built in. Three parts, each usable alone:

- Parsing and compiling (`parse_templates`, `load_templates`): `TEMPLATES` is
  `SOURCE:DESTINATION[:COMMAND]` entries separated by `;`. Paths hold no colon; the
  command is everything after the second colon, so it may hold colons. lobbyd checks
  every entry at start (a missing source or a template that does not compile exits 2).
- Rendering (`render`, `TemplateData`): a sandboxed Jinja2 environment with undefined
  names an error, and the context `nodes`, `me`, `with_labels`, `with_prefixes`,
  `label_values`, `prometheus`, `env`. The data comes in a `TemplateData` (not to be
  confused with `registry.View`, a label filter), so lobbyd (from its registry) and
  `lobbyctl render` (from a daemon's API) run exactly the same code on the same data.
- The runner (`TemplateRunner`): renders after `TEMPLATE_WAIT` MIN without a change,
  or MAX after the first change at the latest (`Quiescence`, pure, with an injectable
  clock); writes a destination only when its text changed, atomically and keeping its
  mode and owner (`lobby.system.files`); then runs the COMMAND of each changed template once
  (`lobby.system.command`: split like a shell, with a timeout, output and status logged).
  A render error is logged with the template's line number and leaves the old file;
  the other templates go on.

This module imports nothing of the daemon, the API or the drivers: lobbyctl uses it.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import inspect
import logging
import os
import shlex
import time
from collections.abc import Awaitable, Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any, Protocol

import jinja2
from jinja2.sandbox import ImmutableSandboxedEnvironment

from lobby.core.model import Discovery
from lobby.system.command import report, run_command, shown
from lobby.system.files import remove_stale_temp_files, write_atomic
from lobby.view.prometheus import target_groups
from lobby.view.registry import Registry

log = logging.getLogger("lobby.templates")

Node = Mapping[str, Any]  # {"hostname": str, "labels": [str, ...], "last_check": int}
Groups = list[dict[str, object]]


class TemplateConfigError(ValueError):
    """A TEMPLATES entry lobbyd cannot start with; str() is the one line to print."""


class RenderError(Exception):
    """A template failed while rendering; str() names the file and line."""

    def __init__(self, where: str, message: str) -> None:
        super().__init__(f"{where}: {message}")
        self.where = where
        self.message = message


# -- parsing and compiling --------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class TemplateSpec:
    """One TEMPLATES entry; `command` is "" when there is none."""

    source: Path
    destination: Path
    command: str = ""


def parse_templates(text: str) -> list[TemplateSpec]:
    """The entries of TEMPLATES; raises TemplateConfigError naming a bad one.

    Blank entries (a trailing `;`) are ignored. Relative paths are taken from the
    current directory. A command that shlex cannot split, or two entries with one
    destination, are refused here rather than failing at every render.
    """
    specs: list[TemplateSpec] = []
    seen: dict[Path, str] = {}
    for raw in text.split(";"):
        entry = raw.strip()
        if not entry:
            continue
        source, colon, rest = entry.partition(":")
        destination, _, command = rest.partition(":")
        source, destination, command = source.strip(), destination.strip(), command.strip()
        if not colon or not source or not destination:
            raise TemplateConfigError(
                f"TEMPLATES: invalid entry {entry!r}: expected SOURCE:DESTINATION[:COMMAND]"
            )
        if command:
            try:
                argv = shlex.split(command)
            except ValueError as exc:
                raise TemplateConfigError(
                    f"TEMPLATES: command {command!r}: cannot be split like a shell would: {exc}"
                ) from None
            if not argv:
                command = ""
        spec = TemplateSpec(Path(source).absolute(), Path(destination).absolute(), command)
        if spec.destination in seen:
            raise TemplateConfigError(
                f"TEMPLATES: {seen[spec.destination]!r} and {source!r} both write {destination}"
            )
        seen[spec.destination] = source
        specs.append(spec)
    return specs


def environment(directory: Path) -> jinja2.Environment:
    """The rendering environment: sandboxed, undefined names an error.

    Templates may `{% include %}` or `{% import %}` files from their own directory.
    Blocks take their line with them (trim_blocks, lstrip_blocks), as config-file
    templates want; the final newline of the source is kept.
    """
    return ImmutableSandboxedEnvironment(
        loader=jinja2.FileSystemLoader(directory),
        undefined=jinja2.StrictUndefined,
        autoescape=False,
        trim_blocks=True,
        lstrip_blocks=True,
        keep_trailing_newline=True,
        auto_reload=False,
    )


def compile_template(source: Path) -> jinja2.Template:
    """`source` compiled; raises TemplateConfigError naming it (and the line)."""
    env = environment(source.parent)
    try:
        return env.get_template(source.name)
    except jinja2.TemplateNotFound:
        raise TemplateConfigError(f"{source}: no such file") from None
    except jinja2.TemplateSyntaxError as exc:
        where = exc.filename or str(source)
        raise TemplateConfigError(
            f"{where} line {exc.lineno} does not compile: {exc.message}"
        ) from None
    except (OSError, UnicodeDecodeError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else exc
        raise TemplateConfigError(f"{source}: cannot read it: {reason}") from None


@dataclass(eq=False)
class Template:
    """A compiled TEMPLATES entry and what became of it."""

    spec: TemplateSpec
    compiled: jinja2.Template
    renders: int = 0  # renders attempted
    writes: int = 0  # renders whose text changed and was written
    failures: int = 0  # renders or writes that failed
    last_error: str = ""

    def stats(self) -> dict[str, object]:
        return {
            "source": str(self.spec.source),
            "destination": str(self.spec.destination),
            "renders": self.renders,
            "writes": self.writes,
            "failures": self.failures,
            "last_error": self.last_error,
        }


def load_templates(specs: Iterable[TemplateSpec]) -> list[Template]:
    """Compile the source of every TEMPLATES entry (parsed by lobby.config, which also
    runs this at start); raises TemplateConfigError naming a bad one."""
    out = []
    for spec in specs:
        try:
            out.append(Template(spec, compile_template(spec.source)))
        except TemplateConfigError as exc:
            raise TemplateConfigError(f"TEMPLATES: {exc}") from None
    return out


# -- rendering --------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class TemplateData:
    """What a template sees: the nodes (sorted by hostname), this node, the Prometheus
    SD groups of a service, and the environment."""

    nodes: Sequence[Node]
    me: Node
    prometheus: Callable[[str], Groups]
    environ: Mapping[str, str]


class _Unset(Exception):
    """env(name) of a variable that is not set, without a default."""


def _flat(items: Iterable[Any]) -> list[str]:
    """with_labels("a", "b") and with_labels(["a", "b"]) alike."""
    out: list[str] = []
    for item in items:
        if isinstance(item, str):
            out.append(item)
        else:
            out.extend(str(x) for x in item)
    return out


def context(view: TemplateData) -> dict[str, Any]:
    """The names a template can use."""
    nodes = view.nodes
    by_name = {node["hostname"]: node for node in nodes}
    groups: dict[str, Groups] = {}

    def with_labels(*labels: Any) -> list[Node]:
        """Nodes carrying at least one of the labels, with ALL their labels."""
        wanted = frozenset(_flat(labels))
        return [n for n in nodes if not wanted.isdisjoint(n["labels"])]

    def with_prefixes(*prefixes: Any) -> list[Node]:
        """Nodes with a label starting with one of the prefixes, with ALL their labels."""
        starts = tuple(_flat(prefixes))
        return [n for n in nodes if starts and any(x.startswith(starts) for x in n["labels"])]

    def label_values(node: Node | str, name: str) -> list[str]:
        """VALUE of each `name:VALUE` label of the node (a node or a hostname)."""
        if isinstance(node, str):
            node = by_name.get(node) or {"labels": []}
        head = f"{name}:"
        return [x[len(head) :] for x in node["labels"] if x.startswith(head)]

    def prometheus(name: str) -> Groups:
        """GET /v1/prometheus/NAME: [{"Targets": [...], "Labels": {...}}, ...]."""
        if name not in groups:
            groups[name] = view.prometheus(name)
        return groups[name]

    def env(name: str, default: str | None = None) -> str:
        """An environment variable of the rendering process; unset is an error
        unless a default is given."""
        value = view.environ.get(name, default)
        if value is None:
            raise _Unset(
                f"environment variable {name} is not set (give a default: env({name!r}, ''))"
            )
        return value

    return {
        "nodes": nodes,
        "me": view.me,
        "with_labels": with_labels,
        "with_prefixes": with_prefixes,
        "label_values": label_values,
        "prometheus": prometheus,
        "env": env,
    }


def _where(tb: TracebackType | None, fallback: str) -> str:
    """`FILE line N` of the template code that raised (Jinja marks its frames)."""
    frames: list[tuple[str, int]] = []
    while tb is not None:
        if "__jinja_exception__" in tb.tb_frame.f_globals:
            frames.append((tb.tb_frame.f_code.co_filename, tb.tb_lineno))
        tb = tb.tb_next
    if not frames:
        return fallback
    (top, line), (deep, deep_line) = frames[0], frames[-1]
    if (deep, deep_line) == (top, line):
        return f"{top} line {line}"
    return f"{top} line {line} ({deep} line {deep_line})"


def render(template: jinja2.Template, view: TemplateData) -> str:
    """The text of `template` for `view`; raises RenderError naming the line."""
    try:
        return template.render(context(view))
    except Exception as exc:
        where = _where(exc.__traceback__, template.filename or template.name or "template")
        message = str(exc) if isinstance(exc, _Unset) else f"{type(exc).__name__}: {exc}"
        raise RenderError(where, message) from None


# Taken on the event loop (the registry is not thread-safe), it returns what builds the
# TemplateData from that snapshot in the worker thread, so the loop pays only for the
# snapshot; lobbyd's takes it a slice at a time (a coroutine: awaited).
Built = Callable[[], TemplateData]
Snapshot = Callable[[], Built | Awaitable[Built]]


def registry_view(registry: Registry, me: Callable[[], Discovery], default_port: int) -> Snapshot:
    """lobbyd's view: the registry now, this node, target_groups as the API answers."""

    async def snapshot() -> Callable[[], TemplateData]:
        # plain tuples, taken over several turns of the loop; the objects the template
        # sees are made from them in the worker thread
        nodes = await registry.snapshot()
        own = me()

        def build() -> TemplateData:
            discoveries = [Discovery(*node) for node in nodes]
            return TemplateData(
                nodes=[d.to_dict() for d in discoveries],
                me=own.to_dict(),
                prometheus=lambda name: target_groups(discoveries, name, default_port),
                environ=os.environ,
            )

        return build

    return snapshot


# -- when to render ---------------------------------------------------------------------


class Quiescence:
    """consul-template's `wait`: due MIN after the last change, or MAX after the first
    change not yet rendered, whichever comes first. Pure; `clock` is injectable."""

    def __init__(
        self, low: float, high: float, clock: Callable[[], float] = time.monotonic
    ) -> None:
        if not 0 <= low <= high:
            raise ValueError("need 0 <= MIN <= MAX")
        self.low = low
        self.high = high
        self._clock = clock
        self._first: float | None = None  # the first change not rendered yet
        self._last = 0.0

    def changed(self) -> None:
        now = self._clock()
        if self._first is None:
            self._first = now
        self._last = now

    @property
    def pending(self) -> bool:
        return self._first is not None

    def due(self) -> float | None:
        """Seconds until a render is due (0: now), or None when nothing changed."""
        if self._first is None:
            return None
        at = min(self._last + self.low, self._first + self.high)
        return max(0.0, at - self._clock())

    def rendering(self) -> None:
        """A render starts: changes from now on are the next render's."""
        self._first = None


# -- the runner -------------------------------------------------------------------------


class TemplateSettings(Protocol):
    """What the runner reads of the settings (lobby.config.Settings has it)."""

    @property
    def templates(self) -> Sequence[TemplateSpec]: ...
    @property
    def template_wait(self) -> tuple[float, float]: ...
    @property
    def template_command_timeout(self) -> float: ...
    @property
    def node_exporter_port(self) -> int: ...


class TemplateRunner:
    """Renders every template when the registry has been quiet long enough."""

    def __init__(
        self,
        templates: Sequence[Template],
        *,
        wait: tuple[float, float],
        timeout: float,
        snapshot: Snapshot,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.templates = list(templates)
        self.timeout = timeout
        self.quiet = Quiescence(*wait, clock=clock)
        self._snapshot = snapshot
        self._wake = asyncio.Event()
        self.passes = 0  # times every template was rendered
        self.command_runs = 0
        self.command_failures = 0  # failed to start, non-zero status, or killed
        self.quiet.changed()  # startup counts as a change

    @classmethod
    def from_settings(
        cls, settings: TemplateSettings, registry: Registry, me: Callable[[], Discovery]
    ) -> TemplateRunner:
        """lobbyd's runner: TEMPLATES, TEMPLATE_WAIT, TEMPLATE_COMMAND_TIMEOUT."""
        return cls(
            load_templates(settings.templates),
            wait=settings.template_wait,
            timeout=settings.template_command_timeout,
            snapshot=registry_view(registry, me, settings.node_exporter_port),
        )

    def changed(self) -> None:
        """Note a registry change; cheap, called for every change."""
        self.quiet.changed()
        self._wake.set()

    def stats(self) -> dict[str, object]:
        return {
            "passes": self.passes,
            "commands": {"runs": self.command_runs, "failed": self.command_failures},
            "templates": [t.stats() for t in self.templates],
        }

    async def run(self) -> None:
        """Render whenever due, forever (until cancelled)."""
        for template in self.templates:
            remove_stale_temp_files(template.spec.destination)
        while True:
            delay = self.quiet.due()
            if delay is None:
                self._wake.clear()
                await self._wake.wait()
            elif delay > 0:
                await asyncio.sleep(delay)
            else:
                self.quiet.rendering()
                try:
                    await self.render_all()
                except Exception:  # a bug here must not end the daemon
                    log.exception("templates: unexpected error")

    async def render_all(self) -> None:
        """Render every template from one snapshot; then run each changed one's command once.

        The snapshot is taken here, on the loop; building the view, rendering and
        writing happen in a worker thread, so a large cluster does not stall the loop.
        """
        made = self._snapshot()
        build = await made if inspect.isawaitable(made) else made
        commands = await asyncio.to_thread(self._render_pass, build)
        self.passes += 1
        for command in commands:
            await self._run_command(command)

    def _render_pass(self, build: Callable[[], TemplateData]) -> list[str]:
        """Render every template; the commands to run, in TEMPLATES order, each once.

        The cyclic garbage collector is paused meanwhile (see `_gc_paused`)."""
        with _gc_paused():
            view = build()
            commands: dict[str, None] = {}
            for template in self.templates:
                if self._render_one(template, view) and template.spec.command:
                    commands[template.spec.command] = None
            del view
        return list(commands)

    def _render_one(self, template: Template, view: TemplateData) -> bool:
        """Render and write one template; True when its destination changed."""
        spec = template.spec
        template.renders += 1
        try:
            text = render(template.compiled, view)
        except RenderError as exc:
            self._failed(template, f"template {exc}; {spec.destination} left as it was")
            return False
        data = text.encode()
        try:
            if _content(spec.destination) == data:
                log.debug("template %s: %s unchanged", spec.source, spec.destination)
                self._recovered(template)
                return False
            write_atomic(spec.destination, data, keep_owner=True)
        except OSError as exc:
            reason = exc.strerror or str(exc)
            self._failed(
                template, f"template {spec.source}: cannot write {spec.destination}: {reason}"
            )
            return False
        template.writes += 1
        self._recovered(template)
        log.info("template %s: wrote %s (%d bytes)", spec.source, spec.destination, len(data))
        return True

    def _failed(self, template: Template, message: str) -> None:
        template.failures += 1
        if message != template.last_error:  # the same error again is no news
            log.error("%s", message)
        template.last_error = message

    def _recovered(self, template: Template) -> None:
        if template.last_error:
            log.info("template %s renders again", template.spec.source)
            template.last_error = ""

    async def _run_command(self, command: str) -> None:
        name = shown(command)
        self.command_runs += 1
        try:
            outcome = await run_command(shlex.split(command), stdin=None, timeout=self.timeout)
        except OSError as exc:
            self.command_failures += 1
            log.error("template command %r cannot start: %s", name, exc.strerror or exc)
            return
        if outcome.status != 0:
            self.command_failures += 1
        report(log, f"template command {name!r}", outcome, self.timeout)


@contextlib.contextmanager
def _gc_paused() -> Iterator[None]:
    """No cyclic garbage collection during a render pass (in the worker thread).

    A pass at 50,000 nodes holds hundreds of thousands of objects (a Discovery, a dict
    and a list per node) for 100-300 ms: long enough for the collector to promote them
    to its oldest generation, whose collections then walk them, 40-70 ms each, while
    holding the GIL, so the event loop stood still that long, every few seconds
    (bench/README.md, "Loop lag"). They are acyclic and freed by their reference counts
    when the pass ends, so there is nothing for the collector to find; it runs again
    at the next allocations after the pass. Process-wide, so left alone when someone
    else paused it."""
    if not gc.isenabled():
        yield
        return
    gc.disable()
    try:
        yield
    finally:
        gc.enable()


def _content(path: Path) -> bytes | None:
    try:
        return path.read_bytes()
    except FileNotFoundError:
        return None


__all__ = [
    "Quiescence",
    "RenderError",
    "Snapshot",
    "Template",
    "TemplateConfigError",
    "TemplateData",
    "TemplateRunner",
    "TemplateSpec",
    "compile_template",
    "context",
    "environment",
    "load_templates",
    "parse_templates",
    "registry_view",
    "render",
]
