"""DNS names under DNS_DOMAIN, and what each asks for (SPEC §17).

`parse_name` turns a name relative to the domain into a `Query`: `<hostname>.node`
(A/AAAA from the node's address labels, TXT: its labels), `_<name>._tcp.prometheus`
(SRV: the targets of /v1/prometheus/<name> that carry a port), or `<value>.<name>`
(A/AAAA of every node carrying label `<name>:<value>`). `node` and `prometheus` are
reserved for their forms. Matching is case-insensitive (ASCII, as DNS is); a hostname
or label value that is not made of valid DNS labels (letters, digits, `-`, `_`, 1-63
of them between dots) is simply not reachable. Of the names that exist only above
others, `node`, `prometheus`, `_tcp.prometheus` and a label name (`service`) answer
NOERROR without records; the inner parts of dotted values and hostnames
(`4.public_ip4`, `example.node`) answer NXDOMAIN, as SPEC §17 reads ("unknown name"):
knowing them would cost an index entry per suffix.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Final

RESERVED: Final = frozenset({"node", "prometheus"})
_LABEL: Final = re.compile(r"[A-Za-z0-9_-]{1,63}")
_DOTTED: Final = re.compile(r"[A-Za-z0-9_-]{1,63}(?:\.[A-Za-z0-9_-]{1,63})*")


# -- names ----------------------------------------------------------------------------


def dns_label(text: str) -> bool:
    """True when `text` is one DNS label we serve (letters, digits, -, _; 1-63)."""
    return _LABEL.fullmatch(text) is not None


def dns_name(text: str) -> bool:
    """True when `text` is dot-separated DNS labels we serve (a hostname, a value)."""
    return len(text) <= 253 and _DOTTED.fullmatch(text) is not None


@dataclass(frozen=True, slots=True)
class Query:
    """What a name under the domain asks for. `kind` is one of:

    - "apex": the domain itself (SOA);
    - "empty": a name that exists only as a parent of others (`node`, `prometheus`,
      `_tcp.prometheus`, a label name such as `service`): checked against the index;
    - "node": `key` is the lower-cased hostname;
    - "srv": `key` is the lower-cased Prometheus service name;
    - "label": `key` is the lower-cased label name, `value` the lower-cased value;
    - "none": a name no record can ever have (NXDOMAIN).
    """

    kind: str
    key: str = ""
    value: str = ""


NOWHERE: Final = Query("none")


def parse_name(labels: Sequence[str]) -> Query:
    """What the name made of `labels` (relative to the domain, leftmost first) asks for.

    Labels are compared lower-cased; one that is not a label we serve makes the name
    unreachable ("none").
    """
    if not labels:
        return Query("apex")
    rel = [label.lower() for label in labels]
    if not all(_LABEL.fullmatch(label) for label in rel):
        return NOWHERE
    last = rel[-1]
    if last == "node":
        if len(rel) == 1:
            return Query("empty", "node")
        return Query("node", ".".join(rel[:-1]))
    if last == "prometheus":
        if len(rel) == 1:
            return Query("empty", "prometheus")
        if rel[-2] != "_tcp":
            return NOWHERE
        if len(rel) == 2:
            return Query("empty", "prometheus")
        if len(rel) == 3 and rel[0].startswith("_") and len(rel[0]) > 1:
            return Query("srv", rel[0][1:])
        return NOWHERE
    if len(rel) == 1:
        return Query("empty", last)
    return Query("label", last, ".".join(rel[:-1]))


def split_label(label: str) -> tuple[str, str] | None:
    """(name, value) of a label reachable as `<value>.<name>`, lower-cased, or None."""
    name, colon, value = label.partition(":")
    if not colon or not _LABEL.fullmatch(name) or not dns_name(value):
        return None
    name = name.lower()
    if name in RESERVED:
        return None
    return name, value.lower()


def service_of(label: str) -> str | None:
    """The Prometheus service a `prometheus:NAME[:...]` label puts its node in, or None."""
    if not label.startswith("prometheus:"):
        return None
    name = label[11:].partition(":")[0]
    return name if len(name) < 63 and _LABEL.fullmatch(name) else None


def split_target(target: str) -> tuple[str, int] | None:
    """(host, port) of an HTTP SD target (`host:port`, `[v6]:port`); None without a port."""
    if target.startswith("["):
        host, _, rest = target[1:].partition("]")
        port = rest[1:] if rest.startswith(":") else ""
    else:
        host, colon, port = target.rpartition(":")
        if not colon:
            return None
    return (host, int(port)) if port.isdigit() else None
