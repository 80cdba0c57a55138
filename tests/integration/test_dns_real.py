"""The DNS interface of real lobbyd processes (two nodes on NATS), read by dnspython and dig.

Also the server's TCP limits and its start-up failure, in-process on loopback sockets.
"""

from __future__ import annotations

import asyncio
import shutil
import socket
import struct
import subprocess

import dns.flags
import dns.message
import dns.query
import dns.rcode
import dns.resolver
import pytest
from support import Lobbyd, free_port, wait_for

from lobby import config
from lobby.core.model import Discovery
from lobby.daemon import Daemon
from lobby.drivers.memory import MemoryBroker
from lobby.nameserver.answers import Answers
from lobby.nameserver.server import DnsServer, bind
from lobby.view.registry import Registry

DIG = shutil.which("dig") or "/usr/bin/dig"
MANY = [f"ip4:10.0.1.{i}" for i in range(1, 41)]  # 40 A records: too big for 512 bytes


def resolver(port: int) -> dns.resolver.Resolver:
    r = dns.resolver.Resolver(configure=False)
    r.nameservers = ["127.0.0.1"]
    r.port = port
    r.lifetime = 5
    r.cache = None
    return r


def answer(r: dns.resolver.Resolver, name: str, rdtype: str = "A") -> list[str]:
    return sorted(rdata.to_text() for rdata in r.resolve(name, rdtype))


def dns_env(broker_env: dict[str, str], labels: list[str]) -> dict[str, str]:
    return {**broker_env, "DNS_PORT": str(free_port()), "LABELS": ",".join(labels)}


@pytest.fixture
def cluster(nats_server, channel, spawn) -> tuple[Lobbyd, Lobbyd]:
    env = {"NATS_URL": nats_server.url, "NATS_DISCOVERY_CHANNEL": channel}
    a = spawn(
        "a.example",
        dns_env(
            env,
            [
                "service:smtp",
                "location:prague",
                "public_ip4:192.0.2.1",
                "ip4:10.0.0.1",
                "public_ip6:2001:db8::1",
                "prometheus:node",
            ],
        ),
    )
    b = spawn(
        "b.example",
        dns_env(env, ["service:SMTP", "prometheus:node", "prometheus:node:port:9200", *MANY]),
    )
    both = ["a.example", "b.example"]
    wait_for(lambda: a.hostnames() == both and b.hostnames() == both, what="both nodes")
    return a, b


def port_of(node: Lobbyd) -> int:
    return int(node.env["DNS_PORT"])  # type: ignore[index]


def test_every_record_type_through_a_resolver(cluster):
    a, b = cluster
    r = resolver(port_of(a))
    assert answer(r, "prague.location.lobby") == ["192.0.2.1"]  # public before private
    assert answer(r, "a.example.node.lobby", "AAAA") == ["2001:db8::1"]
    assert answer(r, "A.Example.NODE.lobby", "TXT") == sorted(
        f'"{label}"' for label in a.get("/v1/discovery").json()["labels"]
    )
    assert answer(r, "_node._tcp.prometheus.lobby", "SRV") == [
        "1 1 9100 a.example.",
        "1 1 9200 b.example.",
    ]
    assert answer(r, "lobby", "SOA")[0].startswith("ns.lobby. hostmaster.lobby. ")
    # 41 addresses: too big for UDP without EDNS0, so TC, and the resolver asks over TCP
    smtp = answer(r, "smtp.service.lobby")
    assert smtp == sorted(["192.0.2.1", *(label[4:] for label in MANY)])
    query = dns.message.make_query("smtp.service.lobby", "A")
    over_udp = dns.query.udp(query, "127.0.0.1", port=port_of(a), timeout=5)
    assert over_udp.flags & dns.flags.TC and over_udp.answer == []
    over_tcp = dns.query.tcp(query, "127.0.0.1", port=port_of(a), timeout=5)
    assert not over_tcp.flags & dns.flags.TC and len(over_tcp.answer[0]) == 41
    # negative answers: NXDOMAIN, and NOERROR without records; both with the SOA
    with pytest.raises(dns.resolver.NXDOMAIN):
        r.resolve("nobody.node.lobby", "A")
    with pytest.raises(dns.resolver.NoAnswer):
        r.resolve("b.example.node.lobby", "AAAA")
    nodata = dns.query.udp(
        dns.message.make_query("smtp.service.lobby", "TXT"), "127.0.0.1", port=port_of(a), timeout=5
    )
    assert (
        nodata.rcode() == dns.rcode.NOERROR and nodata.answer == [] and len(nodata.authority) == 1
    )
    refused = dns.query.udp(
        dns.message.make_query("example.com", "A"), "127.0.0.1", port=port_of(a), timeout=5
    )
    assert refused.rcode() == dns.rcode.REFUSED
    # both nodes answer the same
    assert answer(resolver(port_of(b)), "smtp.service.lobby") == smtp
    stats = a.get("/v1/stats").json()["dns"]
    assert stats["queries"]["udp"] >= 8 and stats["queries"]["tcp"] >= 2
    assert stats["responses"]["nxdomain"] >= 1 and stats["truncated"] >= 2
    assert stats["rejected"] == 0 and stats["errors"] == 0


def test_label_change_is_in_the_next_answer(cluster):
    a, b = cluster
    r = resolver(port_of(a))
    with pytest.raises(dns.resolver.NXDOMAIN):
        r.resolve("imap.service.lobby", "A")
    assert (
        b.request("POST", "/v1/labels", content="service:imap\npublic_ip4:198.51.100.7\n").text
        == "OK"
    )
    wait_for(
        lambda: "service:imap" in a.get("/v1/discoveries?labels=service:imap").text,
        what="a hears b",
    )
    assert answer(r, "imap.service.lobby") == ["198.51.100.7"]  # the very next answer
    assert answer(r, "b.example.node.lobby") == ["198.51.100.7"]  # public_ip4 now wins
    assert b.request("DELETE", "/v1/labels", content="service:imap\n").text == "OK"
    wait_for(lambda: "service:imap" not in a.get("/v1/discoveries").text, what="a hears it go")
    with pytest.raises(dns.resolver.NXDOMAIN):
        r.resolve("imap.service.lobby", "A")


def test_goodbye_removes_the_nodes_records(cluster):
    a, b = cluster
    r = resolver(port_of(a))
    assert len(answer(r, "b.example.node.lobby")) == 40
    b.stop()
    wait_for(lambda: a.hostnames() == ["a.example"], what="b's goodbye")
    with pytest.raises(dns.resolver.NXDOMAIN):
        r.resolve("b.example.node.lobby", "A")
    assert answer(r, "smtp.service.lobby") == ["192.0.2.1"]
    assert answer(r, "_node._tcp.prometheus.lobby", "SRV") == ["1 1 9100 a.example."]


def test_dig_reads_the_answers(nats_server, channel, spawn):
    env = {"NATS_URL": nats_server.url, "NATS_DISCOVERY_CHANNEL": channel}
    a = spawn(
        "mail1.example", {**dns_env(env, ["service:smtp", *MANY]), "DNS_ADDRESS_LABELS": "ip4"}
    )
    wait_for(lambda: a.hostnames() == ["mail1.example"], 15, what="mail1 listed")
    port = str(port_of(a))
    addresses = sorted(label[4:] for label in MANY)

    def dig(*args: str) -> str:
        run = subprocess.run(
            [DIG, "@127.0.0.1", "-p", port, "+time=5", "+tries=1", *args],
            capture_output=True,
            text=True,
            timeout=30,
        )
        assert run.returncode == 0, run.stdout + run.stderr
        return run.stdout

    def flags(output: str) -> set[str]:
        line = next(line for line in output.splitlines() if line.startswith(";; flags:"))
        return set(line.split(";")[2].split(":")[1].split())

    assert sorted(dig("+short", "smtp.service.lobby").split()) == addresses  # EDNS0: 1232 bytes
    full = dig("mail1.example.node.lobby", "TXT", "+norecurse")
    assert "status: NOERROR" in full and flags(full) == {"qr", "aa"}  # no ra: never recursion
    assert '"service:smtp"' in full and '"ip4:10.0.1.40"' in full
    missing = dig("nobody.node.lobby")
    assert "status: NXDOMAIN" in missing and "IN\tSOA\tns.lobby. hostmaster.lobby." in missing
    # without EDNS0 the answer is too big for UDP: TC, and dig retries over TCP by itself
    assert "tc" in flags(dig("+noedns", "+ignore", "mail1.example.node.lobby", "A"))
    assert sorted(dig("+short", "+noedns", "mail1.example.node.lobby", "A").split()) == addresses
    assert sorted(dig("+short", "+tcp", "mail1.example.node.lobby", "A").split()) == addresses
    assert dig("+short", "_x._tcp.prometheus.lobby", "SRV") == ""


# -- the server in-process: TCP limits, start-up -------------------------------------------


def tcp_query(name: str = "a.svc.lobby") -> bytes:
    wire = dns.message.make_query(name, "A").to_wire()
    return struct.pack("!H", len(wire)) + wire


async def read_answer(reader: asyncio.StreamReader) -> dns.message.Message:
    size = struct.unpack("!H", await reader.readexactly(2))[0]
    return dns.message.from_wire(await reader.readexactly(size))


@pytest.fixture
async def server():
    registry = Registry(30)
    registry.update(Discovery("n1", ("ip4:10.0.0.1", "svc:a")))
    srv = DnsServer(
        Answers(registry), bind("127.0.0.1", free_port()), max_connections=2, idle_timeout=2.0
    )
    await srv.start()
    yield srv
    srv.close()


async def test_tcp_pipelined_and_split_queries(server):
    host, port = server.address
    reader, writer = await asyncio.open_connection(host, port)
    writer.write(tcp_query() + tcp_query("n1.node.lobby") + tcp_query("x.lobby"))
    answers = [await read_answer(reader) for _ in range(3)]
    assert [str(m.question[0].name) for m in answers] == [
        "a.svc.lobby.",
        "n1.node.lobby.",
        "x.lobby.",
    ]
    assert [m.rcode() for m in answers] == [
        dns.rcode.NOERROR,
        dns.rcode.NOERROR,
        dns.rcode.NXDOMAIN,
    ]
    for byte in tcp_query():  # one byte at a time
        writer.write(bytes([byte]))
        await writer.drain()
    assert (await read_answer(reader)).answer[0][0].to_text() == "10.0.0.1"
    writer.write(b"\x00\x05junk!")  # too short for a header: dropped, and the connection goes on
    writer.write(b"\x00\x0c" + bytes(12))  # no question: FORMERR
    assert (await read_answer(reader)).rcode() == dns.rcode.FORMERR
    writer.write(tcp_query())
    assert (await read_answer(reader)).rcode() == dns.rcode.NOERROR
    writer.close()


async def test_tcp_connection_cap_and_idle_timeout(server):
    host, port = server.address
    stats = server.answers.stats
    first = await asyncio.open_connection(host, port)
    second = await asyncio.open_connection(host, port)
    for reader, writer in (first, second):  # both served
        writer.write(tcp_query())
        assert (await read_answer(reader)).rcode() == dns.rcode.NOERROR
    assert stats.tcp_connections == 2
    reader, writer = await asyncio.open_connection(host, port)  # the third is closed at once
    assert await asyncio.wait_for(reader.read(), 5) == b""
    assert stats.tcp_refused == 1
    writer.close()
    # the idle ones are closed after 2 s without a query; then there is room again
    assert await asyncio.wait_for(first[0].read(), 5) == b""
    assert await asyncio.wait_for(second[0].read(), 5) == b""
    assert stats.tcp_idle_closed == 2
    for _ in range(100):
        if stats.tcp_connections == 0:
            break
        await asyncio.sleep(0.02)
    assert stats.tcp_connections == 0
    reader, writer = await asyncio.open_connection(host, port)
    writer.write(tcp_query())
    assert (await read_answer(reader)).rcode() == dns.rcode.NOERROR
    writer.close()


async def test_udp_answers_and_drops_what_is_not_a_query(server):
    host, port = server.address
    loop = asyncio.get_running_loop()
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.setblocking(False)
    try:
        await loop.sock_connect(sock, (host, port))
        await loop.sock_sendall(sock, b"\x01\x02")  # no header: dropped
        await loop.sock_sendall(sock, tcp_query()[2:])
        reply = dns.message.from_wire(await asyncio.wait_for(loop.sock_recv(sock, 4096), 5))
        assert reply.answer[0][0].to_text() == "10.0.0.1"
        assert server.answers.stats.rejected["truncated"] == 1
    finally:
        sock.close()


async def test_daemon_exits_1_when_the_dns_port_is_taken(tmp_path, caplog):
    taken = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    taken.bind(("127.0.0.1", 0))
    try:
        port = taken.getsockname()[1]
        settings = config.load(
            {
                "HOSTNAME": "a",
                "DISABLE_API": "true",
                "LABELS_PATH": str(tmp_path),
                "DNS_PORT": str(port),
            }
        )
        daemon = Daemon(settings, driver=MemoryBroker().driver())
        assert await asyncio.wait_for(daemon.run(), 5) == 1
        assert f"cannot listen for DNS on 127.0.0.1:{port}" in caplog.text
    finally:
        taken.close()


async def test_daemon_serves_dns_and_counts_it_in_stats(memory_daemons):
    port = free_port()
    a = memory_daemons("a", DNS_PORT=str(port), LABELS="ip4:10.0.0.1,role:db")
    memory_daemons("b", LABELS="ip4:10.0.0.2,role:db")
    loop = asyncio.get_running_loop()

    def ask() -> list[str]:
        reply = dns.query.udp(
            dns.message.make_query("db.role.lobby", "A"), "127.0.0.1", port=port, timeout=2
        )
        return sorted(r.to_text() for rrset in reply.answer for r in rrset)

    for _ in range(200):
        if len(a.registry) == 2 and a.dns is not None and a.dns._udp is not None:
            break
        await asyncio.sleep(0.02)
    assert await loop.run_in_executor(None, ask) == ["10.0.0.1", "10.0.0.2"]
    assert a.stats()["dns"]["queries"]["udp"] == 1
