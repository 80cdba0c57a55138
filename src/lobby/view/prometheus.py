"""Prometheus HTTP service discovery (SPEC §6): labels become target groups.

A node joins the answer for service NAME with the bare label `prometheus:NAME` or any
label `prometheus:NAME:KEY:VALUE`. KEY `host` adds a target host, KEY `port` sets the
port of every host of that node (`-`: no port), any other KEY becomes a group label.

Prometheus (2.42) throws away a WHOLE answer for one bad label name, so everything a
label could break is checked here and left out with a warning; the rest stands:

- KEY must be a Prometheus label name. Names starting with `__` are allowed: they are
  how an SD answer sets `__scheme__`, `__metrics_path__` or `__param_<x>` per group.
  Only `__address__` is refused, since the targets come from the host labels.
- A host must be scrapeable: `srv1`, `srv1:1234`, `10.0.0.1`, `2a03::1`, `[2a03::1]` or
  `[2a03::1]:9100`. A host with a port that is not 1-65535 (`srv1:abc`), an empty host,
  and anything else with colons that is not an IPv6 address are left out; the node's
  hostname is NOT used instead (it would scrape a machine nobody named).
- A `port` value that is not `-` or 1-65535 is ignored; the default port is used.
- A bare IPv6 address always gets brackets, also with port `-`: `[2a03::1]` is what
  Prometheus scrapes on the scheme's port, while `2a03::1` could never be scraped.

Several values for one KEY (`port`, a label): the last in label order wins, as in Go.
A setting without VALUE (`prometheus:NAME:location`) is ignored, as in Go, with a
warning; it still makes the node a member, as the bare label does.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import re
import time
from bisect import bisect_left
from collections.abc import Callable, Generator, Iterable
from functools import partial
from itertools import islice
from typing import Final

import orjson

from lobby.core.answer import EMPTY_LIST, Answer, Slices
from lobby.core.model import Discovery
from lobby.view.cache import Answers

log = logging.getLogger("lobby.prometheus")

_LABEL_NAME: Final = re.compile(r"[a-zA-Z_][a-zA-Z0-9_]*")
_NO_PORT: Final = "-"
_BAD_HOST_CHAR: Final = re.compile(r"[\s/]")  # never in a scrapeable address
# Services whose last answer had warnings, remembered so that a rebuild after an
# unrelated registry change does not log the same problems again.
_WARNED_MAX: Final = 1000
_WARN_LINES: Final = 20  # per build: a bad label copied to 10k nodes is not 10k lines
_PARTS_MAX: Final = 32  # services whose members' parts are kept between builds
# Past this many nodes a build is done over several turns of the event loop: a slice
# of _SLICE nodes at a time, handing the loop back whenever _BUDGET seconds of work
# have passed; it is tried again (its parts made: faster) if the registry moved
# meanwhile, at most _TRIES times, then made at once.
SLICED_FROM: Final = 2000
_SLICE: Final = 256
_BUDGET: Final = 0.004
_TRIES: Final = 3
_JOIN: Final = 4096  # parts joined at a time

Warn = Callable[[str], None]


def _valid_port(port: str) -> bool:
    return port.isascii() and port.isdigit() and 0 < int(port) <= 65535


def target(host: str, port: str | None) -> str:
    """The scrape address for `host`; `port` None means no port (`-`).

    Raises ValueError naming the problem when `host` cannot be scraped.
    """
    if not host:
        raise ValueError("empty host")
    if _BAD_HOST_CHAR.search(host):
        raise ValueError("not a host name or address")
    if host[0] == "[":  # [v6] or [v6]:port
        end = host.find("]")
        if end < 2:
            raise ValueError("unbalanced brackets")
        rest = host[end + 1 :]
        if not rest:
            return host if port is None else f"{host}:{port}"
        if rest[0] != ":" or not _valid_port(rest[1:]):
            raise ValueError("invalid port after brackets")
        return host
    if "[" in host or "]" in host:
        raise ValueError("misplaced brackets")
    colons = host.count(":")
    if colons == 0:
        return host if port is None else f"{host}:{port}"
    if colons == 1:  # host:port
        name, _, own_port = host.partition(":")
        if not name or not _valid_port(own_port):
            raise ValueError("invalid host:port")
        return host
    # Several colons: only a bare IPv6 address makes sense (`2a03::1:9100` is one
    # too, so a port after a bare IPv6 address cannot be told apart: use brackets).
    try:
        ipaddress.IPv6Address(host)
    except ValueError:
        raise ValueError("neither host:port nor an IPv6 address") from None
    return f"[{host}]" if port is None else f"[{host}]:{port}"


def _group(
    discovery: Discovery, settings: list[str], default_port: int, warn: Warn
) -> dict[str, object]:
    """One target group from the node's `KEY:VALUE` settings (prefix already stripped)."""
    hosts: list[str] = []
    saw_host = False
    port: str | None = str(default_port)
    labels: dict[str, str] = {}
    for setting in settings:
        key, colon, value = setting.partition(":")
        if not colon:  # Go skipped these too
            warn(f"{discovery.hostname}: {setting!r} is not KEY:VALUE, ignored")
        elif key == "host":
            saw_host = True
            hosts.append(value.strip())
        elif key == "port":
            value = value.strip()
            if value == _NO_PORT:
                port = None
            elif _valid_port(value):
                port = value
            else:
                warn(f"{discovery.hostname}: port {value!r} is not 1-65535 or '-', ignored")
        elif _LABEL_NAME.fullmatch(key) is None or key == "__address__":
            warn(f"{discovery.hostname}: {key!r} is not a usable Prometheus label name, left out")
        else:
            labels[key] = value
    if not saw_host:
        hosts.append(discovery.hostname)
    targets: dict[str, None] = {}  # ordered and de-duplicated
    for host in hosts:
        try:
            targets[target(host, port)] = None
        except ValueError as exc:
            warn(f"{discovery.hostname}: host {host!r} left out: {exc}")
    return {"Targets": list(targets), "Labels": dict(sorted(labels.items()))}


def target_groups(
    discoveries: Iterable[Discovery],
    name: str,
    default_port: int,
    warn: Warn | None = None,
) -> list[dict[str, object]]:
    """HTTP SD target groups for service `name`, one per node that has its labels.

    One pass over the nodes; `discovery.labels` must be sorted (as every Discovery's
    are), so finding a node's labels for the service is a binary search.
    """
    bare = f"prometheus:{name}"
    size = len(bare)
    say: Warn = warn if warn is not None else (lambda message: None)
    groups: list[dict[str, object]] = []
    for discovery in discoveries:
        labels = discovery.labels
        # Labels are sorted, so this service's labels sit together from here on.
        i = bisect_left(labels, bare)
        member = False
        settings: list[str] = []
        for label in islice(labels, i, None):
            if not label.startswith(bare):
                break
            if len(label) == size:
                member = True
            elif label[size] == ":":  # not prometheus:{name}xyz
                member = True
                settings.append(label[size + 1 :])
        if member:
            groups.append(_group(discovery, settings, default_port, say))
    return groups


# A member node's part of one service's answer: its labels when it was made, its
# group encoded as the inner lines of the indented list, and the problems found.
_Part = tuple[tuple[str, ...], bytes, tuple[str, ...]]


class PrometheusSD:
    """GET /v1/prometheus/{name}'s answers, cached per name until the registry changes.

    A rebuild re-makes only the groups of nodes whose labels changed: each member's
    group is kept encoded (`_Part`, ~210 bytes) for the `_PARTS_MAX` names asked for
    last, and the answer is those parts joined, byte for byte what `pretty()` of
    `target_groups` gives. At 10,000 members a rebuild after one change takes
    4 ms instead of 40 on the loop (bench/README.md, "Prometheus SD").

    In a registry of more than SLICED_FROM nodes, `get` builds over several turns of
    the event loop (a first build of a service of 50,000 members is 250-350 ms of
    work, which would stall every other client): one build per name at a time, which
    every request for that name waits for; it is kept only if the registry's index
    did not move while it was made, else made again.

    Warnings are logged when a build finds a problem the previous build of that name
    did not have.
    """

    def __init__(self, answers: Answers, default_port: int) -> None:
        self.answers = answers
        self.registry = answers.registry
        self.default_port = default_port
        self._warned: dict[str, frozenset[str]] = {}
        self._parts: dict[str, dict[str, _Part]] = {}  # name -> hostname -> part
        self._building: dict[str, asyncio.Future[Answer | Slices]] = {}

    def answer(self, name: str) -> bytes:
        return self.cached(name).body

    def cached(self, name: str) -> Answer | Slices:
        """The answer for `name`, kept until the registry changes (with its gzip copy),
        made at once if need be."""
        return self.answers.cached_answer(
            ("prometheus", name), lambda: self._build(name), timed=False
        )

    def get(self, name: str) -> Answer | Slices | asyncio.Future[Answer | Slices]:
        """The kept answer for `name`; else, in a small registry, the answer made at
        once; else a future of it, built over several turns of the loop (call this on
        the loop). A client that goes away ends only its wait, never the build."""
        kept = self.answers.kept(("prometheus", name), timed=False)
        if kept is not None:
            return kept
        if len(self.registry) <= SLICED_FROM:
            return self.cached(name)
        building = self._building.get(name)
        if building is None:
            building = asyncio.ensure_future(self._build_sliced(name))
            self._building[name] = building
            building.add_done_callback(partial(self._built, name))
        return asyncio.shield(building)

    def _built(self, name: str, building: asyncio.Future[Answer | Slices]) -> None:
        if self._building.get(name) is building:
            del self._building[name]
        if not building.cancelled():
            building.exception()  # retrieved: the waiters, if any, have it

    async def _build_sliced(self, name: str) -> Answer | Slices:
        for _ in range(_TRIES):
            index = self.registry.index
            found: list[str] = []
            steps = self._steps(name, found)
            while True:
                try:
                    next(steps)
                except StopIteration as done:
                    body: bytes = done.value
                    break
                await asyncio.sleep(0)
            if self.registry.index == index:  # no change meanwhile: the answer of now
                self._warn(name, found)
                return self.answers.keep(("prometheus", name), Answer(body), timed=False)
        return self.cached(name)  # still moving: at once (its parts are made by now)

    def _build(self, name: str) -> bytes:
        found: list[str] = []
        body = self._assemble(name, found)
        self._warn(name, found)
        return body

    def _warn(self, name: str, found: list[str]) -> None:
        warned = self._warned
        before = warned.pop(name, frozenset())
        new = [m for m in dict.fromkeys(found) if m not in before]
        for message in new[:_WARN_LINES]:
            log.warning("prometheus/%s: %s", name, message)
        if len(new) > _WARN_LINES:
            log.warning("prometheus/%s: ... and %d more problems", name, len(new) - _WARN_LINES)
        if found:
            if len(warned) >= _WARNED_MAX:
                warned.clear()
            warned[name] = frozenset(found)

    def _assemble(self, name: str, found: list[str]) -> bytes:
        """The answer for `name` from each member's part, re-made where labels moved."""
        steps = self._steps(name, found)
        while True:
            try:
                next(steps)
            except StopIteration as done:
                body: bytes = done.value
                return body

    def _steps(self, name: str, found: list[str]) -> Generator[None, None, bytes]:
        """`_assemble`, yielding whenever _BUDGET seconds of work have passed (between
        slices of _SLICE nodes). A node that left meanwhile is skipped; one that joined
        is not seen (the caller compares the index before and after)."""
        old = self._parts.get(name, {})
        parts: dict[str, _Part] = {}
        bare = f"prometheus:{name}"
        registry = self.registry
        hostnames = registry.hostnames()
        clock = time.perf_counter
        since = clock()
        for start in range(0, len(hostnames), _SLICE):
            if clock() - since > _BUDGET:
                yield
                since = clock()
            for hostname, labels in registry.labels_of(hostnames[start : start + _SLICE]):
                part = old.get(hostname)
                if part is None or (part[0] is not labels and part[0] != labels):
                    i = bisect_left(labels, bare)  # sorted: its labels would start here
                    if i == len(labels) or not labels[i].startswith(bare):
                        continue  # not a member, the common case of a small service
                    problems: list[str] = []
                    node = (Discovery(hostname, labels),)
                    groups = target_groups(node, name, self.default_port, problems.append)
                    if not groups:  # not a member (a member with only bad hosts has a group)
                        continue
                    inner = orjson.dumps(groups, option=orjson.OPT_INDENT_2)[2:-2]
                    part = (labels, inner, tuple(problems))
                parts[hostname] = part
                if part[2]:
                    found += part[2]
        self._parts.pop(name, None)
        if parts:
            if len(self._parts) >= _PARTS_MAX:  # forget the name asked for longest ago
                del self._parts[next(iter(self._parts))]
            self._parts[name] = parts
        if not parts:
            return EMPTY_LIST
        # joined a slice at a time too (50,000 parts: 4.4 MiB, a join and a copy of it
        # took 18 ms), then once, the brackets put on the first and last slices
        encoded = [part[1] for part in parts.values()]
        pieces: list[bytes] = []
        for start in range(0, len(encoded), _JOIN):
            if clock() - since > _BUDGET:
                yield
                since = clock()
            pieces.append(b",\n".join(encoded[start : start + _JOIN]))
        pieces[0] = b"[\n" + pieces[0]
        pieces[-1] += b"\n]\n"
        return b",\n".join(pieces)
