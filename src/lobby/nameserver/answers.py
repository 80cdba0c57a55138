"""The DNS interface's answers (SPEC §17): names -> records from the registry, no I/O.

`lobby.nameserver.server` puts this on UDP and TCP sockets. Three parts, each in a
module of its own (`names`, `index`, `wire` beside this one), put together here:

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
from bisect import bisect_left
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from itertools import islice
from typing import Final

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

from lobby.nameserver.index import LabelIndex
from lobby.nameserver.names import RESERVED, Query, parse_name, service_of, split_target
from lobby.nameserver.wire import (
    AAAA,
    ANY,
    AXFR,
    CLASS_IN,
    EDNS_PAYLOAD,
    FORMERR,
    IXFR,
    NO_RECORDS,
    NOERROR,
    NOTIMP,
    NXDOMAIN,
    OPT,
    RCODE_NAMES,
    REFUSED,
    SOA,
    SRV,
    TCP_MAX,
    TXT,
    UDP_PLAIN,
    A,
    Malformed,
    edns,
    header_only,
    question,
)
from lobby.view.cache import Store
from lobby.view.prometheus import target_groups
from lobby.view.registry import Registry

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


CACHE_ENTRIES: Final = 4096
CACHE_BYTES: Final = 32 * 2**20
SRV_PRIORITY: Final = 1
SRV_WEIGHT: Final = 1

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
            payload, version = edns(data, end) if data[6:12] != NO_RECORDS else (0, 0)
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


__all__ = ["Answers", "DnsStats"]
