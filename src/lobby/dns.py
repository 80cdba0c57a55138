"""The DNS interface's answers (SPEC §17): names -> records from the registry, no I/O.

`lobby.dns_server` puts this on UDP and TCP sockets. Three parts:

- **Names.** `parse_name` turns a name relative to DNS_DOMAIN into what it asks for:
  `<hostname>.node` (A/AAAA from the node's address labels, TXT: its labels),
  `_<name>._tcp.prometheus` (SRV: the targets of /v1/prometheus/<name> that carry a
  port), or `<value>.<name>` (A/AAAA of every node carrying label `<name>:<value>`).
  `node` and `prometheus` are reserved for their forms. Matching is case-insensitive
  (ASCII, as DNS is); a hostname or label value that is not made of valid DNS labels
  (letters, digits, `-`, `_`, 1-63 of them between dots) is simply not reachable.
  Of the names that exist only above others, `node`, `prometheus`, `_tcp.prometheus`
  and a label name (`service`) answer NOERROR without records; the inner parts of
  dotted values and hostnames (`4.public_ip4`, `example.node`) answer NXDOMAIN, as
  SPEC §17 reads ("unknown name"): knowing them would cost an index entry per suffix.
- **The index.** `LabelIndex` keeps, per lower-cased (label name, value), the
  hostnames that carry it, and per lower-cased hostname and Prometheus service name
  the nodes behind them. It follows the registry's changes (a listener: O(labels) per
  join, update or leave, nothing per keep-alive), so no query ever scans the registry.
- **The wire.** `Answers.respond(packet)` parses the query by hand (header, one
  question, the EDNS0 OPT record) and answers from a cache of finished wire messages,
  keyed by (lower-cased name, type) and emptied when the registry's index moves. A
  cached answer is the stored bytes with the client's query id, RD/CD bits and the
  question name as the client spelled it (DNS 0x20) copied in: no message object per
  query. A miss builds the message with dnspython. Answers that do not fit the
  client's UDP size (512, or its EDNS0 size up to 1232) carry TC and no records; over
  TCP the whole answer goes out (cut to 64 KiB with TC if it is even bigger).

Negative answers (NXDOMAIN: the name does not exist; NOERROR with no records: it
exists without records of that type) carry the zone's SOA in the authority section,
whose minimum (DNS_TTL) tells resolvers how long to cache them. Names outside the
domain get REFUSED; the server never recurses (RA is never set). Bad input never
raises out of `respond`: it is answered FORMERR or NOTIMP where a header can be
echoed, dropped otherwise, and counted by reason in `DnsStats.rejected`.
"""

from __future__ import annotations

import ipaddress
import re
from bisect import bisect_left
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from itertools import islice
from typing import Final, TypeVar

import dns.exception
import dns.flags
import dns.message
import dns.name
import dns.rcode
import dns.rdata
import dns.rdataclass
import dns.rdatatype
import dns.rdtypes.ANY.SOA
import dns.rdtypes.ANY.TXT
import dns.rdtypes.IN.A
import dns.rdtypes.IN.AAAA
import dns.rdtypes.IN.SRV
import dns.rrset

from lobby.cache import Store
from lobby.prometheus import target_groups
from lobby.registry import Change, Registry

A: Final = 1
AAAA: Final = 28
TXT: Final = 16
SRV: Final = 33
SOA: Final = 6
OPT: Final = 41
IXFR: Final = 251
AXFR: Final = 252
ANY: Final = 255
CLASS_IN: Final = 1

NOERROR: Final = 0
FORMERR: Final = 1
SERVFAIL: Final = 2
NXDOMAIN: Final = 3
NOTIMP: Final = 4
REFUSED: Final = 5
RCODE_NAMES: Final = {
    NOERROR: "noerror",
    FORMERR: "formerr",
    SERVFAIL: "servfail",
    NXDOMAIN: "nxdomain",
    NOTIMP: "notimp",
    REFUSED: "refused",
}

UDP_PLAIN: Final = 512  # the UDP answer limit without EDNS0 (RFC 1035)
EDNS_PAYLOAD: Final = 1232  # the largest UDP answer we send, and advertise (DNS flag day 2020)
TCP_MAX: Final = 65535
MAX_NAME: Final = 255  # a name's wire length, root label included (RFC 1035 §3.1)
CACHE_ENTRIES: Final = 4096
CACHE_BYTES: Final = 32 * 2**20
SRV_PRIORITY: Final = 1
SRV_WEIGHT: Final = 1
RESERVED: Final = frozenset({"node", "prometheus"})

_K = TypeVar("_K")
_NO_RECORDS: Final = bytes(6)  # ANCOUNT, NSCOUNT, ARCOUNT of a query without EDNS0
_LABEL: Final = re.compile(r"[A-Za-z0-9_-]{1,63}")
_DOTTED: Final = re.compile(r"[A-Za-z0-9_-]{1,63}(?:\.[A-Za-z0-9_-]{1,63})*")


class Malformed(Exception):
    """A query that cannot be answered normally; `reason` is its counter's name."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


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


# -- the index --------------------------------------------------------------------


class LabelIndex:
    """Who carries what, by lower-cased DNS name, kept up to date from registry changes."""

    def __init__(self, registry: Registry) -> None:
        self.registry = registry
        self.hosts: dict[str, set[str]] = {}  # lower-cased hostname -> hostnames
        self.labels: dict[tuple[str, str], set[str]] = {}  # (name, value) -> hostnames
        self.names: Counter[str] = Counter()  # label name -> how many (node, value) pairs
        self.services: dict[str, set[str]] = {}  # lower-cased service -> hostnames
        for discovery in registry.discoveries():
            self._host(discovery.hostname, add=True)
            self._add(discovery.hostname, *_keys(discovery.labels))
        registry.add_listener(self.on_change)

    def on_change(self, change: Change) -> None:
        hostname = change.hostname
        if change.kind == "join":
            self._host(hostname, add=True)
            self._add(hostname, *_keys(change.labels))
        elif change.kind == "leave":
            self._host(hostname, add=False)
            self._remove(hostname, *_keys(change.labels))
        else:  # several labels can give one key (`service:smtp`, `service:SMTP`): diff keys
            old, old_services = _keys(change.old_labels)
            new, new_services = _keys(change.labels)
            self._remove(hostname, old - new, old_services - new_services)
            self._add(hostname, new - old, new_services - old_services)

    def _host(self, hostname: str, *, add: bool) -> None:
        if dns_name(hostname):
            if add:
                self.hosts.setdefault(hostname.lower(), set()).add(hostname)
            else:
                _discard(self.hosts, hostname.lower(), hostname)

    def _add(self, hostname: str, keys: set[tuple[str, str]], services: set[str]) -> None:
        for key in keys:
            self.labels.setdefault(key, set()).add(hostname)
            self.names[key[0]] += 1
        for service in services:
            self.services.setdefault(service, set()).add(hostname)

    def _remove(self, hostname: str, keys: set[tuple[str, str]], services: set[str]) -> None:
        for key in keys:
            _discard(self.labels, key, hostname)
            self.names[key[0]] -= 1
            if self.names[key[0]] <= 0:
                del self.names[key[0]]
        for service in services:
            _discard(self.services, service, hostname)


def _keys(labels: Iterable[str]) -> tuple[set[tuple[str, str]], set[str]]:
    """The (name, value) keys and lower-cased Prometheus services that `labels` give."""
    keys: set[tuple[str, str]] = set()
    services: set[str] = set()
    for label in labels:
        key = split_label(label)
        if key is not None:
            keys.add(key)
        elif label.startswith("prometheus:") and (service := service_of(label)):
            services.add(service.lower())
    return keys, services


def _discard(table: dict[_K, set[str]], key: _K, hostname: str) -> None:
    members = table.get(key)
    if members is not None:
        members.discard(hostname)
        if not members:
            del table[key]


# -- statistics --------------------------------------------------------------------


@dataclass
class DnsStats:
    """Counters, each a plain attribute or a dict of them (for /v1/stats and /metrics)."""

    queries: dict[str, int] = field(default_factory=lambda: {"udp": 0, "tcp": 0})
    responses: Counter[str] = field(default_factory=Counter)  # by rcode name
    truncated: int = 0  # answers sent with TC (too big for the client's UDP size)
    cache_hits: int = 0
    cache_misses: int = 0
    rejected: Counter[str] = field(default_factory=Counter)  # bad input, by reason
    tcp_connections: int = 0  # open now
    tcp_refused: int = 0  # closed at once: too many open
    tcp_idle_closed: int = 0
    errors: int = 0  # bugs: answered SERVFAIL, logged

    def as_dict(self) -> dict[str, object]:
        return {
            "queries": dict(self.queries),
            "responses": dict(sorted(self.responses.items())),
            "truncated": self.truncated,
            "cache": {"hits": self.cache_hits, "misses": self.cache_misses},
            "rejected": sum(self.rejected.values()),
            "rejected_by_reason": dict(sorted(self.rejected.items())),
            "tcp": {
                "open": self.tcp_connections,
                "refused": self.tcp_refused,
                "idle_closed": self.tcp_idle_closed,
            },
            "errors": self.errors,
        }


# -- the wire ---------------------------------------------------------------------


def _read_name(data: bytes, start: int) -> tuple[bytes, int]:
    """(the name at `start`, uncompressed, as wire bytes; the offset after it).

    Compression pointers must each point before the previous one (as dnspython
    requires), so a loop is impossible: one that would loop raises "compression_loop".
    """
    n = len(data)
    pos = start
    end = -1
    parts: list[bytes] = []
    size_total = 1
    lowest = start
    while True:
        if pos >= n:
            raise Malformed("truncated")
        size = data[pos]
        if size == 0:
            break
        if size < 64:
            if pos + 1 + size > n:
                raise Malformed("truncated")
            size_total += size + 1
            if size_total > MAX_NAME:
                raise Malformed("name_too_long")
            parts.append(data[pos : pos + 1 + size])
            pos += size + 1
        elif size >= 0xC0:
            if pos + 1 >= n:
                raise Malformed("truncated")
            if end < 0:
                end = pos + 2
            target = ((size & 0x3F) << 8) | data[pos + 1]
            if target >= lowest:
                raise Malformed("compression_loop")
            lowest = pos = target
        else:
            raise Malformed("bad_label_type")  # 0x40/0x80: extended labels, long obsolete
    return b"".join(parts) + b"\x00", (pos + 1 if end < 0 else end)


def _skip_name(data: bytes, pos: int) -> int:
    """The offset after the (possibly compressed) name at `pos`."""
    n = len(data)
    while True:
        if pos >= n:
            raise Malformed("truncated")
        size = data[pos]
        if size == 0:
            return pos + 1
        if size < 64:
            pos += size + 1
        elif size >= 0xC0:
            return pos + 2
        else:
            raise Malformed("bad_label_type")


def question(data: bytes) -> tuple[bytes, int, int, int]:
    """(question name as uncompressed wire bytes, qtype, qclass, offset after it).

    `data` is a query of at least 12 bytes with QDCOUNT 1. The usual question (no
    compression pointer) is read with one slice; raises Malformed.
    """
    n = len(data)
    pos = 12
    while True:
        if pos >= n:
            raise Malformed("truncated")
        size = data[pos]
        if size == 0:
            pos += 1
            break
        if size < 64:
            pos += size + 1
            if pos - 11 > MAX_NAME:  # with the root label still to come
                raise Malformed("name_too_long")
        elif size >= 0xC0:
            qname, pos = _read_name(data, 12)
            if pos + 4 > n:
                raise Malformed("truncated")
            return (
                qname,
                (data[pos] << 8) | data[pos + 1],
                (data[pos + 2] << 8) | data[pos + 3],
                pos + 4,
            )
        else:
            raise Malformed("bad_label_type")
    if pos + 4 > n:
        raise Malformed("truncated")
    return (
        data[12:pos],
        (data[pos] << 8) | data[pos + 1],
        (data[pos + 2] << 8) | data[pos + 3],
        pos + 4,
    )


def edns(data: bytes, pos: int) -> tuple[int, int]:
    """(the client's UDP payload size, 0 without EDNS0; the EDNS version) from the records
    after the question at `pos`. Raises Malformed."""
    n = len(data)
    answers = (data[6] << 8) | data[7]
    authority = (data[8] << 8) | data[9]
    additional = (data[10] << 8) | data[11]
    before = answers + authority
    payload = 0
    version = 0
    for i in range(before + additional):
        pos = _skip_name(data, pos)
        if pos + 10 > n:
            raise Malformed("truncated")
        rdlen = (data[pos + 8] << 8) | data[pos + 9]
        if i >= before and (data[pos] << 8) | data[pos + 1] == OPT:
            if payload:
                raise Malformed("bad_edns")  # two OPT records (RFC 6891 §6.1.1)
            payload = max(UDP_PLAIN, (data[pos + 2] << 8) | data[pos + 3])
            version = data[pos + 5]
        pos += 10 + rdlen
        if pos > n:
            raise Malformed("truncated")
    return payload, version


def header_only(data: bytes, rcode: int) -> bytes:
    """An answer with only the header: id, opcode and RD echoed, no sections."""
    return data[:2] + bytes((0x80 | (data[2] & 0x79), rcode)) + bytes(8)


# A cached answer: the whole answer and its truncated form, each without and with an
# OPT record, and the rcode's counter name. All with id 0, RD clear, the name lower-cased.
Entry = tuple[bytes, bytes, bytes, bytes, str]


def _entry_size(entry: Entry) -> int:
    return len(entry[0]) + len(entry[1]) + len(entry[2]) + len(entry[3])


class Answers:
    """Answers queries for `domain` from `registry`: `respond(packet, tcp)`."""

    def __init__(
        self,
        registry: Registry,
        *,
        domain: str = "lobby",
        ttl: int = 5,
        address_labels: Sequence[str] = ("public_ip4", "public_ip6", "ip4", "ip6"),
        default_port: int = 9100,
        index: LabelIndex | None = None,
    ) -> None:
        self.registry = registry
        self.origin = dns.name.from_text(domain.lower().rstrip(".") + ".")
        self.ttl = ttl
        self.address_labels = tuple(address_labels)
        self.default_port = default_port
        self.index = index if index is not None else LabelIndex(registry)
        self.stats = DnsStats()
        # one invalidation with every other answer (lobby.cache): emptied on a change
        self._cache: Store[Entry] = Store(
            registry, _entry_size, entries=CACHE_ENTRIES, limit=CACHE_BYTES
        )
        self._mname = dns.name.from_text("ns", self.origin)
        self._rname = dns.name.from_text("hostmaster", self.origin)

    # -- the hot path -------------------------------------------------------------

    def respond(self, data: bytes, tcp: bool = False) -> bytes | None:
        """The answer to the query `data`, or None when nothing should be sent back."""
        stats = self.stats
        stats.queries["tcp" if tcp else "udp"] += 1
        if len(data) < 12:
            stats.rejected["truncated"] += 1
            return None  # not even a header to echo
        flags = data[2]
        if flags & 0x80:
            stats.rejected["not_a_query"] += 1
            return None  # a response: answering could start a loop between servers
        try:
            if flags & 0x78:  # opcode: only QUERY (0)
                raise Malformed("opcode")
            if data[4] != 0 or data[5] != 1:
                raise Malformed("question_count")
            qname, qtype, qclass, end = question(data)
            payload, version = edns(data, end) if data[6:12] != _NO_RECORDS else (0, 0)
        except Malformed as exc:
            stats.rejected[exc.reason] += 1
            rcode = NOTIMP if exc.reason == "opcode" else FORMERR
            stats.responses[RCODE_NAMES[rcode]] += 1
            return header_only(data, rcode)
        if version or qclass != CLASS_IN or qtype in (AXFR, IXFR, OPT):
            return self._special(data, qname, qtype, qclass, version, payload)

        key = (qname.lower(), qtype)
        entry = self._cache.get(key)
        if entry is None:
            stats.cache_misses += 1
            entry = self._cache.put(key, self.build(key[0], qtype))
        else:
            stats.cache_hits += 1
        if tcp:
            body = entry[2] if payload else entry[0]
        elif payload:
            body = entry[2] if len(entry[2]) <= min(payload, EDNS_PAYLOAD) else entry[3]
        else:
            body = entry[0] if len(entry[0]) <= UDP_PLAIN else entry[1]
        if body[2] & 0x02:
            stats.truncated += 1
        stats.responses[entry[4]] += 1
        return (
            data[:2]
            + bytes((body[2] | (flags & 0x01), body[3] | (data[3] & 0x10)))
            + body[4:12]
            + qname
            + body[12 + len(qname) :]
        )

    def _special(
        self, data: bytes, qname: bytes, qtype: int, qclass: int, version: int, payload: int
    ) -> bytes:
        """The rare cases, built each time: EDNS versions we do not speak (BADVERS),
        classes other than IN and zone transfers (REFUSED)."""
        name = dns.name.from_wire(qname, 0)[0]
        msg = dns.message.Message(id=(data[0] << 8) | data[1])
        msg.flags = dns.flags.QR | (data[2] & 0x01)
        msg.question.append(dns.rrset.RRset(name, _class(qclass), _type(qtype)))
        if version:
            self.stats.rejected["bad_edns"] += 1
            msg.use_edns(0, payload=EDNS_PAYLOAD)
            msg.set_rcode(dns.rcode.BADVERS)
            self.stats.responses["badvers"] += 1
        else:
            if payload:
                msg.use_edns(0, payload=EDNS_PAYLOAD)
            msg.set_rcode(dns.rcode.REFUSED)
            self.stats.responses["refused"] += 1
        return msg.to_wire()

    # -- building answers (cache misses) ------------------------------------------

    def build(self, qname: bytes, qtype: int) -> Entry:
        """The cache entry for the lower-cased wire name `qname` and `qtype`."""
        name = dns.name.from_wire(qname, 0)[0]
        if not name.is_subdomain(self.origin):
            return self._render(name, qtype, REFUSED, [], authoritative=False)
        rel = name.relativize(self.origin).labels
        query = parse_name([label.decode("ascii", "replace") for label in rel])
        records = self.lookup(query)
        if records is None:
            return self._render(name, qtype, NXDOMAIN, [])
        if qtype == ANY:
            rdatas = [r for rdtype in sorted(records) for r in records[rdtype]]
        else:
            rdatas = records.get(qtype, [])
        return self._render(name, qtype, NOERROR, rdatas)

    def lookup(self, query: Query) -> dict[int, list[dns.rdata.Rdata]] | None:
        """The records of a name by type, {} when it exists without any, None when it
        does not exist (NXDOMAIN)."""
        kind = query.kind
        index = self.index
        if kind == "node":
            hostnames = index.hosts.get(query.key)
            if not hostnames:
                return None
            return self._node_records(sorted(hostnames))
        if kind == "label":
            hostnames = index.labels.get((query.key, query.value))
            if not hostnames:
                return None
            return self._address_records(sorted(hostnames))
        if kind == "srv":
            hostnames = index.services.get(query.key)
            if not hostnames:
                return None
            return self._srv_records(query.key, sorted(hostnames))
        if kind == "apex":
            return {SOA: [self._soa()]}
        if kind == "empty":
            if query.key in RESERVED or index.names.get(query.key):
                return {}
            return None
        return None

    def addresses(self, labels: Sequence[str]) -> tuple[list[str], list[str]]:
        """A node's (IPv4, IPv6) addresses: for each family, those of the first name in
        DNS_ADDRESS_LABELS that the node carries with an address of that family."""
        v4: list[str] | None = None
        v6: list[str] | None = None
        for name in self.address_labels:
            prefix = name + ":"
            size = len(prefix)
            found4: list[str] = []
            found6: list[str] = []
            for label in islice(labels, bisect_left(labels, prefix), None):
                if not label.startswith(prefix):
                    break
                value = label[size:].strip()
                if "%" in value:  # a scoped address means nothing to another host
                    continue
                try:
                    address = ipaddress.ip_address(value)
                except ValueError:
                    continue
                (found4 if address.version == 4 else found6).append(str(address))
            if v4 is None and found4:
                v4 = found4
            if v6 is None and found6:
                v6 = found6
            if v4 is not None and v6 is not None:
                break
        return v4 or [], v6 or []

    def _labels_of(self, hostname: str) -> tuple[str, ...]:
        discovery = self.registry.get(hostname)
        return discovery.labels if discovery is not None else ()

    def _address_records(self, hostnames: Sequence[str]) -> dict[int, list[dns.rdata.Rdata]]:
        v4: dict[str, None] = {}
        v6: dict[str, None] = {}
        for hostname in hostnames:
            four, six = self.addresses(self._labels_of(hostname))
            v4.update(dict.fromkeys(four))
            v6.update(dict.fromkeys(six))
        out: dict[int, list[dns.rdata.Rdata]] = {}
        if v4:
            out[A] = [_a(address) for address in v4]
        if v6:
            out[AAAA] = [_aaaa(address) for address in v6]
        return out

    def _node_records(self, hostnames: Sequence[str]) -> dict[int, list[dns.rdata.Rdata]]:
        out = self._address_records(hostnames)
        texts: dict[str, None] = {}
        for hostname in hostnames:
            texts.update(dict.fromkeys(self._labels_of(hostname)))
        if texts:
            out[TXT] = [_txt(label) for label in texts]
        return out

    def _srv_records(
        self, service: str, hostnames: Sequence[str]
    ) -> dict[int, list[dns.rdata.Rdata]]:
        discoveries = [d for h in hostnames if (d := self.registry.get(h)) is not None]
        names = {
            s
            for d in discoveries
            for label in d.labels
            if (s := service_of(label)) is not None and s.lower() == service
        }
        found: dict[tuple[str, int], None] = {}
        for name in sorted(names):
            for group in target_groups(discoveries, name, self.default_port):
                targets = group["Targets"]
                assert isinstance(targets, list)
                for target in targets:
                    hostport = split_target(target)
                    if hostport is not None:
                        found[hostport] = None
        records: list[dns.rdata.Rdata] = []
        for host, port in found:
            try:
                target_name = dns.name.from_text(host.rstrip(".") + ".")
            except dns.exception.DNSException:
                continue  # not representable as a name (e.g. a label over 63 bytes)
            records.append(_srv(port, target_name))
        return {SRV: records} if records else {}

    def _soa(self) -> dns.rdata.Rdata:
        return _soa(
            self._mname,
            self._rname,
            self.registry.index & 0xFFFFFFFF,  # serial: moves with every change
            3600,  # refresh
            600,  # retry
            86400,  # expire
            self.ttl,  # minimum: how long resolvers cache a negative answer
        )

    def _render(
        self,
        name: dns.name.Name,
        qtype: int,
        rcode: int,
        rdatas: list[dns.rdata.Rdata],
        *,
        authoritative: bool = True,
    ) -> Entry:
        flags = dns.flags.QR | (dns.flags.AA if authoritative else 0)
        negative = authoritative and (rcode == NXDOMAIN or not rdatas)
        authority = [self._soa()] if negative else []
        whole = self._message(name, qtype, rcode, flags, rdatas, authority, edns=False)
        whole_edns = self._message(name, qtype, rcode, flags, rdatas, authority, edns=True)
        cut = self._message(name, qtype, rcode, flags | dns.flags.TC, [], [], edns=False)
        cut_edns = self._message(name, qtype, rcode, flags | dns.flags.TC, [], [], edns=True)
        return whole, cut, whole_edns, cut_edns, RCODE_NAMES[rcode]

    def _message(
        self,
        name: dns.name.Name,
        qtype: int,
        rcode: int,
        flags: int,
        rdatas: list[dns.rdata.Rdata],
        authority: list[dns.rdata.Rdata],
        *,
        edns: bool,
    ) -> bytes:
        """One answer's wire bytes; cut (with TC) to fit a TCP message if need be."""
        keep = len(rdatas)
        while True:
            msg = dns.message.Message(id=0)
            msg.flags = flags if keep == len(rdatas) else flags | dns.flags.TC
            msg.set_rcode(dns.rcode.Rcode.make(rcode))
            msg.question.append(dns.rrset.RRset(name, dns.rdataclass.IN, _type(qtype)))
            by_type: dict[int, list[dns.rdata.Rdata]] = {}
            for rdata in rdatas[:keep]:
                by_type.setdefault(rdata.rdtype, []).append(rdata)
            for records in by_type.values():
                msg.answer.append(dns.rrset.from_rdata_list(name, self.ttl, records))
            if authority:
                msg.authority.append(dns.rrset.from_rdata_list(self.origin, self.ttl, authority))
            if edns:
                msg.use_edns(0, payload=EDNS_PAYLOAD)
            try:
                return msg.to_wire(max_size=TCP_MAX)
            except dns.exception.TooBig:
                keep = keep * 3 // 4  # thousands of nodes behind one name: rare, so simple


# -- records (dnspython's rdata constructors are untyped) ----------------------------


def _type(value: int) -> dns.rdatatype.RdataType:
    return dns.rdatatype.RdataType.make(value)


def _class(value: int) -> dns.rdataclass.RdataClass:
    return dns.rdataclass.RdataClass.make(value)


def _a(address: str) -> dns.rdata.Rdata:
    return dns.rdtypes.IN.A.A(dns.rdataclass.IN, dns.rdatatype.A, address)  # type: ignore[no-untyped-call]


def _aaaa(address: str) -> dns.rdata.Rdata:
    return dns.rdtypes.IN.AAAA.AAAA(dns.rdataclass.IN, dns.rdatatype.AAAA, address)  # type: ignore[no-untyped-call]


def _txt(label: str) -> dns.rdata.Rdata:
    """One label as a TXT record: strings of at most 255 bytes."""
    data = label.encode()
    chunks = [data[i : i + 255] for i in range(0, len(data), 255)] or [b""]
    return dns.rdtypes.ANY.TXT.TXT(dns.rdataclass.IN, dns.rdatatype.TXT, chunks)


def _srv(port: int, target: dns.name.Name) -> dns.rdata.Rdata:
    return dns.rdtypes.IN.SRV.SRV(  # type: ignore[no-untyped-call]
        dns.rdataclass.IN, dns.rdatatype.SRV, SRV_PRIORITY, SRV_WEIGHT, port, target
    )


def _soa(
    mname: dns.name.Name,
    rname: dns.name.Name,
    serial: int,
    refresh: int,
    retry: int,
    expire: int,
    minimum: int,
) -> dns.rdata.Rdata:
    return dns.rdtypes.ANY.SOA.SOA(  # type: ignore[no-untyped-call]
        dns.rdataclass.IN, dns.rdatatype.SOA, mname, rname, serial, refresh, retry, expire, minimum
    )


__all__ = [
    "Answers",
    "DnsStats",
    "LabelIndex",
    "Malformed",
    "Query",
    "parse_name",
    "question",
    "split_label",
]
