"""The DNS interface on UDP and TCP, in the daemon's event loop (SPEC §17).

`lobby.nameserver.answers.Answers` does the work; this module only moves packets:

- UDP: one datagram in, at most one out, answered synchronously in
  `datagram_received` (no task, no queue per query).
- TCP (RFC 7766): two-byte length-prefixed messages, pipelined queries answered in
  order. Connections are bounded: at most `max_connections` open (one more is closed
  at once and counted), each closed after `idle_timeout` seconds without a query, and
  a client that does not read its answers stops being read from (transport flow
  control) until it does, so its backlog cannot grow. These limits are constants
  here, not settings: they are written simply in this module on purpose (the HTTP
  API has its own).

Sockets are bound before the daemon connects to its broker, so a port in use stops
lobbyd at once (exit 1) rather than later.
"""

from __future__ import annotations

import asyncio
import logging
import socket
from typing import Any, Final, cast

from lobby.config import Settings
from lobby.nameserver.answers import Answers
from lobby.nameserver.wire import SERVFAIL, header_only
from lobby.system.ratelimit import RateLimitedLog
from lobby.view.registry import Registry

log = logging.getLogger("lobby.dns")

MAX_TCP_CONNECTIONS: Final = 128
TCP_IDLE_TIMEOUT: Final = 10.0  # seconds without a query (RFC 7766 §6.2.3: "a few seconds")


def bind(host: str, port: int) -> tuple[socket.socket, socket.socket]:
    """A UDP and a TCP socket bound to `host`:`port`; raises OSError."""
    family, _, _, _, address = socket.getaddrinfo(
        host, port, type=socket.SOCK_DGRAM, flags=socket.AI_PASSIVE
    )[0]
    udp = socket.socket(family, socket.SOCK_DGRAM)
    tcp = socket.socket(family, socket.SOCK_STREAM)
    try:
        tcp.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        udp.bind(address)
        tcp.bind(address)
    except OSError:
        udp.close()
        tcp.close()
        raise
    return udp, tcp


class _Udp(asyncio.DatagramProtocol):
    def __init__(self, server: DnsServer) -> None:
        self.server = server
        self.answer = server.answers.respond
        self.transport: asyncio.DatagramTransport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.DatagramTransport, transport)  # uvloop's is no subclass

    def datagram_received(self, data: bytes, addr: Any) -> None:
        try:
            reply = self.answer(data, False)
        except Exception as exc:  # a bug: answer, count and log it, never die of it
            reply = self.server.failed(data, exc)
        if reply is not None and self.transport is not None:
            self.transport.sendto(reply, addr)

    def error_received(self, exc: Exception) -> None:
        pass  # e.g. ICMP port unreachable for an earlier answer: nothing to do


class _Tcp(asyncio.Protocol):
    def __init__(self, server: DnsServer) -> None:
        self.server = server
        self.transport: asyncio.Transport | None = None
        self.buffer = bytearray()
        self.last_query = 0.0
        self.timer: asyncio.TimerHandle | None = None
        self.counted = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        transport = cast(asyncio.Transport, transport)  # uvloop's is no subclass
        server = self.server
        stats = server.answers.stats
        if len(server.connections) >= server.max_connections:
            stats.tcp_refused += 1
            transport.close()
            return
        self.transport = transport
        self.counted = True
        server.connections.add(self)
        stats.tcp_connections = len(server.connections)
        loop = asyncio.get_running_loop()
        self.last_query = loop.time()
        self.timer = loop.call_later(server.idle_timeout, self._check_idle)

    def _check_idle(self) -> None:
        if self.transport is None:
            return
        loop = asyncio.get_running_loop()
        left = self.last_query + self.server.idle_timeout - loop.time()
        if left > 0:
            self.timer = loop.call_later(left, self._check_idle)
            return
        self.server.answers.stats.tcp_idle_closed += 1
        if self.transport.get_write_buffer_size():
            self.transport.abort()  # it does not read its answers: do not wait for it
        else:
            self.transport.close()

    def data_received(self, data: bytes) -> None:
        transport = self.transport
        if transport is None:
            return
        buffer = self.buffer
        buffer += data
        while len(buffer) >= 2:
            size = (buffer[0] << 8) | buffer[1]
            if len(buffer) < 2 + size:
                break
            message = bytes(buffer[2 : 2 + size])
            del buffer[: 2 + size]
            self.last_query = asyncio.get_running_loop().time()
            try:
                reply = self.server.answers.respond(message, True)
            except Exception as exc:  # a bug: answer, count and log it, never die of it
                reply = self.server.failed(message, exc)
            if reply is not None:
                transport.write(len(reply).to_bytes(2, "big") + reply)
            if transport.is_closing():
                return

    def pause_writing(self) -> None:
        if self.transport is not None:
            self.transport.pause_reading()  # read no more queries until it reads its answers

    def resume_writing(self) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.transport.resume_reading()

    def connection_lost(self, exc: Exception | None) -> None:
        if self.timer is not None:
            self.timer.cancel()
        self.transport = None
        if self.counted:
            self.counted = False
            self.server.connections.discard(self)
            self.server.answers.stats.tcp_connections = len(self.server.connections)


class DnsServer:
    """Answers' UDP and TCP listeners. `start()` in the loop, `close()` on shutdown."""

    def __init__(
        self,
        answers: Answers,
        sockets: tuple[socket.socket, socket.socket],
        *,
        max_connections: int = MAX_TCP_CONNECTIONS,
        idle_timeout: float = TCP_IDLE_TIMEOUT,
    ) -> None:
        self.answers = answers
        self.udp_sock, self.tcp_sock = sockets
        self.max_connections = max_connections
        self.idle_timeout = idle_timeout
        self.connections: set[_Tcp] = set()
        self._udp: asyncio.DatagramTransport | None = None
        self._tcp: asyncio.Server | None = None
        self._bug_log = RateLimitedLog(log, burst=3, every=60)

    @property
    def address(self) -> tuple[str, int]:
        host, port = self.udp_sock.getsockname()[:2]
        return str(host), int(port)

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        self._udp, _ = await loop.create_datagram_endpoint(lambda: _Udp(self), sock=self.udp_sock)
        self._tcp = await loop.create_server(lambda: _Tcp(self), sock=self.tcp_sock, backlog=64)
        log.info(
            "DNS listening on %s port %d (UDP and TCP) for %s",
            *self.address,
            self.answers.origin.to_text(omit_final_dot=True),
        )

    def failed(self, data: bytes, exc: Exception) -> bytes | None:
        """SERVFAIL for a query that hit a bug; the bug is counted and logged."""
        self.answers.stats.errors += 1
        self._bug_log(logging.ERROR, "DNS: answering a query failed: %r", exc)
        if len(data) < 12 or data[2] & 0x80:
            return None
        return header_only(data, SERVFAIL)

    def close(self) -> None:
        if self._udp is not None:
            self._udp.close()
        else:
            self.udp_sock.close()
        if self._tcp is not None:
            self._tcp.close()
        else:
            self.tcp_sock.close()
        for connection in list(self.connections):
            if connection.transport is not None:
                connection.transport.abort()

    def stats(self) -> dict[str, object]:
        return self.answers.stats.as_dict()


def from_settings(settings: Settings, registry: Registry) -> DnsServer | None:
    """The DNS server lobbyd's settings describe, its sockets bound; None (and one log
    line saying why) when it cannot listen."""
    answers = Answers(
        registry,
        domain=settings.dns_domain,
        ttl=settings.dns_ttl,
        address_labels=settings.dns_address_labels,
        default_port=settings.node_exporter_port,
    )
    host, port = settings.dns_listen_host, settings.dns_port
    try:
        return DnsServer(answers, bind(host, port))
    except OSError as exc:
        log.error("cannot listen for DNS on %s:%d: %s", host, port, exc.strerror or exc)
        return None


__all__ = ["MAX_TCP_CONNECTIONS", "TCP_IDLE_TIMEOUT", "DnsServer", "bind", "from_settings"]
