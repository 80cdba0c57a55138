"""Garbage on the DNS port: random and mutated packets thrown at a real lobbyd over UDP.

Whatever comes in, lobbyd keeps answering valid queries correctly (checked every few
packets), counts what it rejected, logs no traceback and stays up.
"""

from __future__ import annotations

import socket
import struct

import dns.message
import dns.rcode
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from support import free_port, wait_for

pytestmark = pytest.mark.fault

BASES = [
    dns.message.make_query("smtp.service.lobby", "A").to_wire(),
    dns.message.make_query("fuzz.example.node.lobby", "TXT", use_edns=0).to_wire(),
    dns.message.make_query(
        "_node._tcp.prometheus.lobby", "SRV", use_edns=0, payload=4096
    ).to_wire(),
    dns.message.make_query("example.com", "ANY").to_wire(),
]
NASTY = [
    b"",
    bytes(12),
    struct.pack("!6H", 1, 0x0100, 1, 0, 0, 0) + b"\xc0\x0c\x00\x01\x00\x01",  # a pointer to itself
    struct.pack("!6H", 1, 0x0100, 1, 0, 0, 0)
    + b"\x01a\xc0\x0c\x00\x01\x00\x01",  # a loop via a label
    struct.pack("!6H", 1, 0x0100, 1, 0xFFFF, 0xFFFF, 0xFFFF) + BASES[0][12:],  # counts that lie
    struct.pack("!6H", 1, 0x0100, 1, 0, 0, 0) + b"\x3f" + b"a" * 63 + b"\x3f" + b"b" * 63 * 4,
    struct.pack("!6H", 1, 0x0100, 0xFFFF, 0, 0, 0) + BASES[0][12:] * 3,
]


@st.composite
def mutated(draw: st.DrawFn) -> bytes:
    packet = bytearray(draw(st.sampled_from(BASES + NASTY)))
    for _ in range(draw(st.integers(1, 6))):
        op = draw(st.sampled_from(["flip", "set", "cut", "insert", "repeat"]))
        pos = draw(st.integers(0, max(0, len(packet) - 1)))
        if op == "flip" and packet:
            packet[pos] ^= 1 << draw(st.integers(0, 7))
        elif op == "set" and packet:
            packet[pos] = draw(st.sampled_from([0, 1, 0x3F, 0x40, 0x80, 0xC0, 0xFF, 0x29]))
        elif op == "cut":
            del packet[pos:]
        elif op == "insert":
            packet[pos:pos] = draw(st.binary(min_size=1, max_size=8))
        elif op == "repeat":
            packet += packet[12:]
    return bytes(packet)


def test_random_and_mutated_packets_never_stop_valid_answers(nats_server, channel, spawn):
    port = free_port()
    node = spawn(
        "fuzz.example",
        {
            "NATS_URL": nats_server.url,
            "NATS_DISCOVERY_CHANNEL": channel,
            "DNS_PORT": str(port),
            "LABELS": "service:smtp,ip4:10.0.0.1,prometheus:node",
            "LOG_LEVEL": "INFO",
        },
    )
    # DNS answers from the registry: its own record is there once its announcement is back
    wait_for(lambda: node.hostnames() == ["fuzz.example"], 15, what="fuzz.example listed")
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.connect(("127.0.0.1", port))
    sock.settimeout(5)
    thrown = {"packets": 0, "checks": 0}

    def still_answers() -> None:
        wire = dns.message.make_query("smtp.service.lobby", "A").to_wire()
        sock.send(wire)
        while True:  # answers to earlier garbage may come first
            data = sock.recv(65535)
            if data[:2] == wire[:2] and wire[12:] in data:
                reply = dns.message.from_wire(data)
                break
        assert reply.rcode() == dns.rcode.NOERROR
        assert [r.to_text() for rrset in reply.answer for r in rrset] == ["10.0.0.1"]
        thrown["checks"] += 1

    @settings(
        max_examples=600,
        deadline=None,
        database=None,
        suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
    )
    @given(packet=st.one_of(st.binary(max_size=700), mutated()))
    def throw(packet: bytes) -> None:
        sock.send(packet)
        thrown["packets"] += 1
        if thrown["packets"] % 25 == 0:
            still_answers()

    try:
        still_answers()
        throw()
        still_answers()
    finally:
        sock.close()
    assert thrown["packets"] >= 300 and thrown["checks"] >= 12
    assert node.running
    stats = node.get("/v1/stats").json()["dns"]
    assert stats["errors"] == 0
    assert stats["rejected"] > 50
    for reason in ("truncated", "question_count", "compression_loop"):
        assert stats["rejected_by_reason"].get(reason, 0) > 0, stats["rejected_by_reason"]
    assert stats["queries"]["udp"] >= thrown["packets"]
    log = node.output()
    assert "Traceback" not in log and "ERROR" not in log
