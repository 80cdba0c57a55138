"""DNS names and answers (lobby.dns) without sockets: queries made and read by dnspython."""

from __future__ import annotations

import struct
import subprocess
import sys

import dns.edns
import dns.flags
import dns.message
import dns.name
import dns.opcode
import dns.rcode
import dns.rdatatype
import pytest
from fakes import FakeClock
from hypothesis import given, settings
from hypothesis import strategies as st

from lobby import config
from lobby.core.model import Discovery
from lobby.nameserver.answers import Answers
from lobby.nameserver.names import Query, parse_name, split_label, split_target
from lobby.nameserver.wire import EDNS_PAYLOAD, question
from lobby.view.registry import Registry


def node(hostname: str, *labels: str) -> Discovery:
    return Discovery(hostname, tuple(sorted(set(labels))))


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def registry(clock: FakeClock) -> Registry:
    reg = Registry(30, clock=clock, wall_clock=lambda: 1_700_000_000.0)
    reg.update(
        node(
            "web1.example",
            "service:web",
            "service:smtp",
            "location:prague",
            "public_ip4:1.2.3.4",
            "ip4:10.0.0.1",
            "public_ip6:2a03::1",
            "prometheus:node",
            "prometheus:node:port:9200",
        )
    )
    reg.update(node("Web2", "service:SMTP", "ip4:10.0.0.2", "ip6:fd00::2", "prometheus:node"))
    reg.update(node("db1", "service:db", "backup:/srv/db", "prometheus:pg:host:10.9.9.9"))
    return reg


@pytest.fixture
def answers(registry: Registry) -> Answers:
    return Answers(registry)


def ask(
    answers: Answers, name: str, rdtype: str = "A", tcp: bool = False, **kw
) -> dns.message.Message:
    query = dns.message.make_query(name, rdtype, **kw)
    wire = answers.respond(query.to_wire(), tcp)
    assert wire is not None
    reply = dns.message.from_wire(wire)
    assert reply.id == query.id
    assert reply.flags & dns.flags.QR
    assert not reply.flags & dns.flags.RA  # never recursion
    return reply


def records(reply: dns.message.Message) -> list[str]:
    return sorted(rdata.to_text() for rrset in reply.answer for rdata in rrset)


def soa_in_authority(reply: dns.message.Message) -> bool:
    return [rrset.rdtype for rrset in reply.authority] == [dns.rdatatype.SOA]


# -- names --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("labels", "expected"),
    [
        ([], Query("apex")),
        (["web1", "node"], Query("node", "web1")),
        (["Web1", "Example", "NODE"], Query("node", "web1.example")),
        (["node"], Query("empty", "node")),
        (["_node", "_tcp", "prometheus"], Query("srv", "node")),
        (["_tcp", "prometheus"], Query("empty", "prometheus")),
        (["prometheus"], Query("empty", "prometheus")),
        (["node", "_udp", "prometheus"], Query("none")),
        (["x", "_node", "_tcp", "prometheus"], Query("none")),
        (["_", "_tcp", "prometheus"], Query("none")),
        (["smtp", "service"], Query("label", "service", "smtp")),
        (["1", "2", "3", "4", "public_ip4"], Query("label", "public_ip4", "1.2.3.4")),
        (["SMTP", "Service"], Query("label", "service", "smtp")),
        (["service"], Query("empty", "service")),
        (["a b", "service"], Query("none")),
        (["a.b", "service"], Query("none")),  # a dot inside one DNS label
        (["", "service"], Query("none")),
    ],
)
def test_parse_name(labels, expected):
    assert parse_name(labels) == expected


@pytest.mark.parametrize(
    ("label", "expected"),
    [
        ("service:smtp", ("service", "smtp")),
        ("Location:Prague", ("location", "prague")),
        ("public_ip4:1.2.3.4", ("public_ip4", "1.2.3.4")),
        ("public_ip6:2a03::1", None),  # colons: not a DNS label
        ("backup:/srv", None),
        ("service:", None),
        ("bare", None),
        ("node:x", None),  # reserved
        ("prometheus:node", None),  # reserved (its own form)
        ("a.b:c", None),  # a label name is one DNS label
        ("service:" + "x" * 64, None),
    ],
)
def test_split_label(label, expected):
    assert split_label(label) == expected


@pytest.mark.parametrize(
    ("target", "expected"),
    [
        ("web1:9100", ("web1", 9100)),
        ("[2a03::1]:9100", ("2a03::1", 9100)),
        ("[2a03::1]", None),
        ("web1", None),
        ("10.0.0.1:80", ("10.0.0.1", 80)),
    ],
)
def test_split_target(target, expected):
    assert split_target(target) == expected


def test_addresses_prefer_the_first_label_name_per_family(answers):
    labels = tuple(
        sorted(["ip4:10.0.0.1", "public_ip4:1.2.3.4", "public_ip4:1.2.3.5", "ip6:fd00::1"])
    )
    assert answers.addresses(labels) == (["1.2.3.4", "1.2.3.5"], ["fd00::1"])
    # an IPv6 address under an "ip4" name still counts as IPv6; garbage and scopes are skipped
    odd = tuple(sorted(["public_ip4:nonsense", "ip4:fe80::1%eth0", "ip4:2a03::9", "ip6:10.1.1.1"]))
    assert answers.addresses(odd) == (["10.1.1.1"], ["2a03::9"])


def test_settings():
    s = config.load({})
    assert (s.dns_port, s.dns_domain, s.dns_ttl, s.dns_listen_host) == (0, "lobby", 5, "127.0.0.1")
    assert s.dns_address_labels == ("public_ip4", "public_ip6", "ip4", "ip6")
    s = config.load({"HOST": "0.0.0.0", "DNS_ADDRESS_LABELS": "ip4, ip6", "DNS_HOST": "::1"})
    assert (s.dns_listen_host, s.dns_address_labels) == ("::1", ("ip4", "ip6"))
    for name, value in [
        ("DNS_PORT", "65536"),
        ("DNS_DOMAIN", "a b"),
        ("DNS_DOMAIN", "a..b"),
        ("DNS_TTL", "-1"),
        ("DNS_ADDRESS_LABELS", "ip4,,ip6"),
        ("DNS_ADDRESS_LABELS", "ip4:1"),
    ]:
        with pytest.raises(config.ConfigError, match=name):
            config.load({name: value})


def test_dns_modules_do_not_load_the_http_stack():
    run = subprocess.run(
        [sys.executable, "-c", "import lobby.nameserver.server, sys; print(' '.join(sys.modules))"],
        capture_output=True,
        text=True,
        check=True,
    )
    loaded = set(run.stdout.split())
    assert "lobby.nameserver.answers" in loaded and "dns.message" in loaded
    assert not {
        m for m in loaded if m.split(".")[0] in ("fastapi", "starlette", "uvicorn", "pydantic")
    }


# -- answers ------------------------------------------------------------------------


def test_label_form_a_and_aaaa(answers):
    reply = ask(answers, "smtp.service.lobby")
    assert reply.rcode() == dns.rcode.NOERROR and reply.flags & dns.flags.AA
    assert records(reply) == ["1.2.3.4", "10.0.0.2"]  # web1's public address, Web2's private
    assert reply.answer[0].ttl == 5
    assert records(ask(answers, "smtp.service.lobby", "AAAA")) == ["2a03::1", "fd00::2"]
    assert records(ask(answers, "1.2.3.4.public_ip4.lobby")) == ["1.2.3.4"]
    assert records(ask(answers, "prague.location.lobby")) == ["1.2.3.4"]


def test_node_form_a_aaaa_txt(answers):
    assert records(ask(answers, "web1.example.node.lobby")) == ["1.2.3.4"]
    assert records(ask(answers, "web1.example.node.lobby", "AAAA")) == ["2a03::1"]
    txt = ask(answers, "web1.example.node.lobby", "TXT")
    assert records(txt) == sorted(
        f'"{label}"' for label in answers.registry.get("web1.example").labels
    )
    assert records(ask(answers, "WEB2.node.lobby")) == ["10.0.0.2"]


def test_srv_form(answers):
    reply = ask(answers, "_node._tcp.prometheus.lobby", "SRV")
    assert records(reply) == ["1 1 9100 Web2.", "1 1 9200 web1.example."]
    assert records(ask(answers, "_PG._tcp.prometheus.lobby", "SRV")) == ["1 1 9100 10.9.9.9."]
    assert ask(answers, "_nope._tcp.prometheus.lobby", "SRV").rcode() == dns.rcode.NXDOMAIN


def test_apex_soa_and_any(answers):
    reply = ask(answers, "lobby", "SOA")
    assert [rrset.rdtype for rrset in reply.answer] == [dns.rdatatype.SOA]
    soa = reply.answer[0][0]
    assert (soa.mname.to_text(), soa.minimum) == ("ns.lobby.", 5)
    assert soa.serial == answers.registry.index
    every = ask(answers, "web1.example.node.lobby", "ANY")
    assert {rrset.rdtype for rrset in every.answer} == {
        dns.rdatatype.A,
        dns.rdatatype.AAAA,
        dns.rdatatype.TXT,
    }


@pytest.mark.parametrize(
    "name",
    [
        "nope.service.lobby",
        "nobody.node.lobby",
        "x.y.z.lobby",
        "nolabel.lobby",
        "srv.node._udp.prometheus.lobby",
        "a\\032b.service.lobby",
        "backup.lobby.",  # only "backup:/srv/db", which DNS cannot reach
    ],
)
def test_unknown_names_are_nxdomain_with_soa(answers, name):
    reply = ask(answers, name)
    assert reply.rcode() == dns.rcode.NXDOMAIN and reply.flags & dns.flags.AA
    assert reply.answer == [] and soa_in_authority(reply)
    assert reply.authority[0].ttl == 5


@pytest.mark.parametrize(
    ("name", "rdtype"),
    [
        ("smtp.service.lobby", "TXT"),  # the label form has only addresses
        ("smtp.service.lobby", "SRV"),
        ("db1.node.lobby", "A"),  # a node without address labels
        ("db.service.lobby", "A"),
        ("web1.example.node.lobby", "MX"),
        ("service.lobby", "A"),  # a label name: exists above its values
        ("node.lobby", "A"),
        ("_tcp.prometheus.lobby", "SRV"),
        ("lobby", "A"),
    ],
)
def test_known_names_without_such_records_are_noerror_empty_with_soa(answers, name, rdtype):
    reply = ask(answers, name, rdtype)
    assert reply.rcode() == dns.rcode.NOERROR and reply.flags & dns.flags.AA
    assert reply.answer == [] and soa_in_authority(reply)


@pytest.mark.parametrize("name", ["example.com", "lobby.example", "com", "."])
def test_other_domains_are_refused(answers, name):
    reply = ask(answers, name)
    assert reply.rcode() == dns.rcode.REFUSED
    assert not reply.flags & dns.flags.AA and reply.answer == reply.authority == []


def test_other_domain_setting(registry):
    answers = Answers(registry, domain="Sd.Example.", ttl=60)
    reply = ask(answers, "smtp.service.sd.example")
    assert records(reply) == ["1.2.3.4", "10.0.0.2"] and reply.answer[0].ttl == 60
    assert ask(answers, "smtp.service.lobby").rcode() == dns.rcode.REFUSED


def test_case_as_the_client_wrote_it_and_rd_echoed(answers):
    ask(answers, "smtp.service.lobby")  # cached in lower case
    query = dns.message.make_query("sMtP.SERVICE.lobBY", "A")
    query.flags |= dns.flags.CD
    query.flags &= ~dns.flags.RD
    wire = answers.respond(query.to_wire())
    assert b"\x04sMtP\x07SERVICE\x05lobBY\x00" in wire
    reply = dns.message.from_wire(wire)
    assert reply.question[0].name.to_text() == "sMtP.SERVICE.lobBY."
    assert reply.answer[0].name.to_text() == "sMtP.SERVICE.lobBY."
    assert reply.flags & dns.flags.CD and not reply.flags & dns.flags.RD
    rd = ask(answers, "smtp.service.lobby")  # make_query sets RD
    assert rd.flags & dns.flags.RD and not rd.flags & dns.flags.RA
    assert answers.stats.cache_hits == 2 and answers.stats.cache_misses == 1


def test_answers_follow_every_registry_change(registry, answers, clock):
    assert records(ask(answers, "smtp.service.lobby")) == ["1.2.3.4", "10.0.0.2"]
    registry.update(node("mx3", "service:smtp", "ip4:10.0.0.3"))  # join
    assert records(ask(answers, "smtp.service.lobby")) == ["1.2.3.4", "10.0.0.2", "10.0.0.3"]
    registry.update(node("mx3", "service:smtp", "ip4:10.0.0.33"))  # update
    assert records(ask(answers, "smtp.service.lobby")) == ["1.2.3.4", "10.0.0.2", "10.0.0.33"]
    registry.update(node("mx3", "service:web", "ip4:10.0.0.33"))  # the label goes
    assert records(ask(answers, "smtp.service.lobby")) == ["1.2.3.4", "10.0.0.2"]
    assert records(ask(answers, "mx3.node.lobby")) == ["10.0.0.33"]
    registry.remove("mx3")  # goodbye
    assert ask(answers, "mx3.node.lobby").rcode() == dns.rcode.NXDOMAIN
    registry.remove("db1")
    assert ask(answers, "db.service.lobby").rcode() == dns.rcode.NXDOMAIN
    assert ask(answers, "_pg._tcp.prometheus.lobby", "SRV").rcode() == dns.rcode.NXDOMAIN
    assert ask(answers, "backup.lobby").rcode() == dns.rcode.NXDOMAIN
    clock.now += 31  # everybody expires
    assert ask(answers, "web1.example.node.lobby").rcode() == dns.rcode.NXDOMAIN
    assert ask(answers, "service.lobby").rcode() == dns.rcode.NXDOMAIN
    assert answers.index.labels == {} and answers.index.hosts == {} and not answers.index.names


def test_labels_giving_the_same_key_come_and_go_one_at_a_time(registry, answers):
    registry.update(
        node(
            "mx", "ip4:10.0.0.5", "role:mx", "role:MX", "prometheus:mail", "prometheus:mail:port:25"
        )
    )
    assert records(ask(answers, "mx.role.lobby")) == ["10.0.0.5"]
    assert records(ask(answers, "_mail._tcp.prometheus.lobby", "SRV")) == ["1 1 25 mx."]
    registry.update(node("mx", "ip4:10.0.0.5", "role:mx", "prometheus:mail"))  # one of each goes
    assert records(ask(answers, "mx.role.lobby")) == ["10.0.0.5"]
    assert records(ask(answers, "_mail._tcp.prometheus.lobby", "SRV")) == ["1 1 9100 mx."]
    assert answers.index.names["role"] == 1
    registry.update(node("mx", "ip4:10.0.0.5"))
    assert ask(answers, "mx.role.lobby").rcode() == dns.rcode.NXDOMAIN
    assert ask(answers, "_mail._tcp.prometheus.lobby", "SRV").rcode() == dns.rcode.NXDOMAIN
    assert "role" not in answers.index.names


def test_index_starts_from_the_registry_as_it_is(registry):
    late = Answers(registry)
    assert records(ask(late, "web.service.lobby")) == ["1.2.3.4"]


def many_addresses(registry: Registry, n: int) -> None:
    registry.update(
        node("big", "service:big", *(f"ip4:10.1.{i // 250}.{i % 250 + 1}" for i in range(n)))
    )


def test_too_big_for_udp_sets_tc_and_tcp_gets_everything(registry, answers):
    many_addresses(registry, 40)  # 40 A records: 700 bytes
    plain = ask(answers, "big.service.lobby")
    assert plain.flags & dns.flags.TC and plain.answer == []
    assert plain.question[0].name.to_text() == "big.service.lobby."
    assert len(records(ask(answers, "big.service.lobby", tcp=True))) == 40
    # EDNS0: the client's size is respected, the answer carries our OPT record
    roomy = ask(answers, "big.service.lobby", use_edns=0, payload=4096)
    assert not roomy.flags & dns.flags.TC and len(records(roomy)) == 40
    assert roomy.edns == 0 and roomy.payload == EDNS_PAYLOAD
    tight = ask(answers, "big.service.lobby", use_edns=0, payload=600)
    assert tight.flags & dns.flags.TC and tight.answer == [] and tight.edns == 0
    assert answers.stats.truncated == 2


def test_udp_answers_stay_within_our_edns_size_even_if_the_client_offers_more(registry, answers):
    many_addresses(registry, 100)  # 1,600+ bytes
    reply = ask(answers, "big.service.lobby", use_edns=0, payload=65000)
    assert reply.flags & dns.flags.TC
    assert len(records(ask(answers, "big.service.lobby", tcp=True, use_edns=0))) == 100


def test_an_answer_beyond_64k_is_cut_with_tc_over_tcp(registry, answers):
    many_addresses(registry, 5000)  # 80,000+ bytes of A records
    wire = answers.respond(dns.message.make_query("big.service.lobby", "A").to_wire(), True)
    assert len(wire) <= 65535
    reply = dns.message.from_wire(wire)
    assert reply.flags & dns.flags.TC and 3000 < len(records(reply)) < 5000


def test_long_label_is_split_into_txt_strings(registry, answers):
    long = "note:" + "x" * 600
    registry.update(node("n1", long))
    rdata = ask(answers, "n1.node.lobby", "TXT", tcp=True).answer[0][0]
    assert [len(s) for s in rdata.strings] == [255, 255, 95]
    assert b"".join(rdata.strings).decode() == long


def test_unreachable_hostnames_and_values(registry, answers):
    registry.update(node("under_score-ok", "role:a_b", "bad:ü", "ip4:10.0.0.9"))
    registry.update(node("ü.example", "ip4:10.0.0.8"))
    assert records(ask(answers, "under_score-ok.node.lobby")) == ["10.0.0.9"]
    assert records(ask(answers, "a_b.role.lobby")) == ["10.0.0.9"]
    assert ask(answers, "bad.lobby").rcode() == dns.rcode.NXDOMAIN
    assert ask(answers, "xn--tda.example.node.lobby").rcode() == dns.rcode.NXDOMAIN


# -- bad input: answered FORMERR/NOTIMP where possible, dropped otherwise, counted --------


def wire(name: str = "smtp.service.lobby", rdtype: str = "A") -> bytes:
    return dns.message.make_query(name, rdtype).to_wire()


def header(qid=0x1234, flags=0x0100, qd=1, an=0, ns=0, ar=0) -> bytes:
    return struct.pack("!6H", qid, flags, qd, an, ns, ar)


def name_wire(*labels: bytes) -> bytes:
    return b"".join(bytes([len(x)]) + x for x in labels) + b"\x00"


def test_malformed_queries_are_counted_by_reason(answers):
    q = b"\x00\x01\x00\x01"  # type A, class IN
    good = wire()
    cases = [
        (good[:11], None, "truncated"),
        (good[:-1], dns.rcode.FORMERR, "truncated"),
        (good[:20], dns.rcode.FORMERR, "truncated"),
        (header(flags=0x8100) + good[12:], None, "not_a_query"),
        (header(flags=5 << 11 | 0x100) + good[12:], dns.rcode.NOTIMP, "opcode"),  # UPDATE
        (header(flags=2 << 11) + good[12:], dns.rcode.NOTIMP, "opcode"),  # STATUS
        (header(qd=0), dns.rcode.FORMERR, "question_count"),
        (header(qd=2) + good[12:] + good[12:], dns.rcode.FORMERR, "question_count"),
        (header() + name_wire(*[b"a" * 63] * 4) + q, dns.rcode.FORMERR, "name_too_long"),  # 257
        (header() + b"\xc0\x0c" + q, dns.rcode.FORMERR, "compression_loop"),  # to itself
        (header() + b"\x01a\xc0\x10" + q, dns.rcode.FORMERR, "compression_loop"),  # forward
        (header() + b"\x41abc" + q, dns.rcode.FORMERR, "bad_label_type"),
        (
            header(ar=2) + good[12:] + bytes(11) + b"\x00\x00\x29\x04\x00" + bytes(4),
            dns.rcode.FORMERR,
            "truncated",
        ),
    ]
    for packet, rcode, reason in cases:
        before = answers.stats.rejected[reason]
        reply = answers.respond(packet)
        assert answers.stats.rejected[reason] == before + 1, (packet, reason)
        if rcode is None:
            assert reply is None
        else:
            parsed = dns.message.from_wire(reply, question_only=True)
            assert parsed.rcode() == rcode
            assert parsed.id == struct.unpack("!H", packet[:2])[0]
            assert parsed.flags & dns.flags.QR
    assert answers.stats.rejected["opcode"] == 2
    update = answers.respond(header(flags=5 << 11 | 0x100) + good[12:])
    assert dns.message.from_wire(update, question_only=True).opcode() == dns.opcode.UPDATE


def test_names_of_exactly_255_bytes_are_answered(answers):
    labels = [b"a" * 63, b"b" * 63, b"c" * 63, b"d" * 55, b"lobby"]  # 64*3+56+6+1 = 255
    packet = header() + name_wire(*labels) + b"\x00\x01\x00\x01"
    assert len(name_wire(*labels)) == 255
    reply = dns.message.from_wire(answers.respond(packet))
    assert reply.rcode() == dns.rcode.NXDOMAIN
    assert answers.stats.rejected["name_too_long"] == 0


def test_a_backward_compression_pointer_in_the_question_is_followed(answers):
    # id = "\x01a", flags byte 2 = 0: the header itself spells the name "a."
    packet = b"\x01a\x00\x00" + b"\x00\x01" + bytes(6) + b"\xc0\x00" + b"\x00\x01\x00\x01"
    reply = dns.message.from_wire(answers.respond(packet))
    assert reply.rcode() == dns.rcode.REFUSED
    assert reply.question[0].name.to_text() == "a."


def test_edns_two_opts_badvers_other_classes_and_zone_transfers(answers):
    opt = b"\x00\x00\x29\x04\xd0" + bytes(6)
    two = header(ar=2) + wire()[12:] + opt + opt
    assert (
        dns.message.from_wire(answers.respond(two), question_only=True).rcode() == dns.rcode.FORMERR
    )
    assert answers.stats.rejected["bad_edns"] == 1
    query = dns.message.make_query("smtp.service.lobby", "A", use_edns=1)
    reply = dns.message.from_wire(answers.respond(query.to_wire()))
    assert reply.rcode() == dns.rcode.BADVERS and reply.edns == 0
    chaos = dns.message.make_query("version.bind", "TXT", rdclass="CH")
    assert dns.message.from_wire(answers.respond(chaos.to_wire())).rcode() == dns.rcode.REFUSED
    for rdtype in ("AXFR", "IXFR"):
        xfr = dns.message.make_query("lobby", rdtype)
        assert (
            dns.message.from_wire(answers.respond(xfr.to_wire(), True)).rcode() == dns.rcode.REFUSED
        )


def test_query_with_other_records_before_the_opt(answers):
    # a (strange but legal) query with an authority record and then EDNS0
    rr = name_wire(b"x") + struct.pack("!HHIH", 1, 1, 0, 4) + b"\x01\x02\x03\x04"
    opt = b"\x00\x00\x29\x10\x00" + bytes(6)
    packet = header(ns=1, ar=1) + wire()[12:] + rr + opt
    reply = dns.message.from_wire(answers.respond(packet))
    assert reply.edns == 0 and records(reply) == ["1.2.3.4", "10.0.0.2"]


def test_question_reads_plain_names_with_one_slice():
    packet = wire("A.b")
    assert question(packet) == (b"\x01A\x01b\x00", 1, 1, len(packet))


@settings(max_examples=300, deadline=None)
@given(data=st.binary(max_size=600))
def test_random_bytes_never_raise(data):
    reg = Registry(30)
    answers = Answers(reg)
    reply = answers.respond(data)
    if reply is not None:
        assert len(reply) >= 12 and reply[:2] == data[:2] and reply[2] & 0x80


@settings(max_examples=300, deadline=None)
@given(
    cut=st.integers(0, 80),
    flips=st.lists(st.tuples(st.integers(0, 79), st.integers(0, 255)), max_size=4),
    tcp=st.booleans(),
)
def test_mutated_queries_never_raise(cut, flips, tcp):
    reg = Registry(30)
    reg.update(node("a", "service:x", "ip4:10.0.0.1"))
    answers = Answers(reg)
    packet = bytearray(dns.message.make_query("x.service.lobby", "A", use_edns=0).to_wire())
    for pos, value in flips:
        if pos < len(packet):
            packet[pos] = value
    reply = answers.respond(bytes(packet[: len(packet) - cut % (len(packet) + 1)]), tcp)
    if reply is not None:
        dns.message.from_wire(reply, question_only=True)  # whatever we send, parses
