"""The DNS wire, by hand (SPEC §17): the header, one question, the EDNS0 OPT record.

Enough of RFC 1035 and RFC 6891 to read a query without building a message object per
query: `question` finds the name, type and class, `edns` the client's UDP size and
EDNS version, `header_only` answers with the header alone (FORMERR, NOTIMP). Anything
malformed raises `Malformed` with the reason it is counted under.
"""

from __future__ import annotations

from typing import Final

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
NO_RECORDS: Final = bytes(6)  # ANCOUNT, NSCOUNT, ARCOUNT of a query without EDNS0


class Malformed(Exception):
    """A query that cannot be answered normally; `reason` is its counter's name."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


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
