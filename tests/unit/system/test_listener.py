"""lobby.listener: the connection cap and running out of descriptors, on real loopback
sockets, on both event loops lobbyd may run (uvloop in production, asyncio without it).
"""

from __future__ import annotations

import asyncio
import logging
import socket
from collections.abc import Callable, Coroutine
from typing import Any

import pytest
import uvloop
from support import no_free_descriptors, until

from lobby.system.listener import Listener, ListenerLimits, Slot, fd_budget_warning

LOOPS = {"uvloop": uvloop.new_event_loop, "asyncio": asyncio.new_event_loop}


@pytest.fixture(params=sorted(LOOPS))
def run(request: pytest.FixtureRequest) -> Callable[[Coroutine[Any, Any, Any]], Any]:
    factory = LOOPS[request.param]

    def run(coro: Coroutine[Any, Any, Any]) -> Any:
        with asyncio.Runner(loop_factory=factory) as runner:
            return runner.run(coro)

    return run


class Echo(asyncio.Protocol):
    def __init__(self, slot: Slot) -> None:
        self.slot = slot

    def connection_made(self, transport: Any) -> None:
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        self.transport.write(data)

    def connection_lost(self, exc: Exception | None) -> None:
        self.slot.release()


def listening() -> socket.socket:
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    return sock


async def echo(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> bytes:
    writer.write(b"ping")
    return await asyncio.wait_for(reader.readexactly(4), 5)


def test_past_the_cap_connections_are_refused_at_once(run):
    async def scenario() -> None:
        sock = listening()
        limits = ListenerLimits(max_connections=3)
        listener = Listener(sock, Echo, limits, name="test", refusal=b"busy\n")
        listener.start()
        port = sock.getsockname()[1]
        clients = []
        for _ in range(5):
            clients.append(await asyncio.open_connection("127.0.0.1", port))
            await until(lambda: limits.accepted + limits.refused == len(clients), 5)
        for reader, writer in clients[:3]:
            assert await echo(reader, writer) == b"ping"
        for reader, _ in clients[3:]:  # answered and closed, never left waiting
            assert await asyncio.wait_for(reader.read(), 5) == b"busy\n"
        assert (limits.connections, limits.accepted, limits.refused) == (3, 3, 2)

        clients[0][1].close()  # a slot frees up: the next client is served
        await until(lambda: limits.connections == 2, 5)
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        assert await echo(reader, writer) == b"ping"
        for _, w in [*clients, (reader, writer)]:
            w.close()
        await until(lambda: limits.connections == 0, 5)
        listener.close()
        await listener.wait_closed()
        sock.close()

    run(scenario())


def test_out_of_descriptors_backs_off_logs_once_and_keeps_serving(run, caplog):
    async def scenario() -> None:
        sock = listening()
        limits = ListenerLimits(max_connections=100)
        listener = Listener(sock, Echo, limits, name="test")
        listener.start()
        port = sock.getsockname()[1]
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        assert await echo(reader, writer) == b"ping"

        waiting = [socket.create_connection(("127.0.0.1", port)) for _ in range(10)]
        with no_free_descriptors():  # the kernel queued them; accepting needs descriptors
            await until(lambda: limits.accept_errors >= 3, 10, what="accept retried")
            assert await echo(reader, writer) == b"ping"  # the open one is still served
            assert limits.connections == 1
        await until(lambda: limits.connections == 11, 10, what="the queue accepted")
        for client in waiting:
            r, w = await asyncio.open_connection(sock=client)
            assert await echo(r, w) == b"ping"
            w.close()
        writer.close()
        await until(lambda: limits.connections == 0, 5)
        listener.close()
        sock.close()

    with caplog.at_level(logging.WARNING, logger="lobby"):
        run(scenario())
    failures = [r for r in caplog.records if "cannot accept connections" in r.getMessage()]
    assert len(failures) == 1  # logged once, then rate-limited
    assert "Too many open files" in failures[0].getMessage()


def test_slot_release_is_idempotent():
    limits = ListenerLimits(max_connections=1)
    slot = limits.admit()
    assert slot is not None
    assert limits.admit() is None
    slot.release()
    slot.release()
    assert limits.connections == 0
    assert (limits.accepted, limits.refused) == (1, 1)


def test_watcher_slots():
    limits = ListenerLimits(max_watchers=2)
    assert limits.acquire_watcher() and limits.acquire_watcher()
    assert not limits.acquire_watcher()
    limits.release_watcher()
    assert limits.acquire_watcher()
    assert (limits.watchers, limits.watchers_refused) == (2, 1)


def test_fd_budget_warning():
    assert fd_budget_warning(1000, "API_MAX_CONNECTIONS", 2048) is None
    assert fd_budget_warning(1000, "API_MAX_CONNECTIONS", None) is None
    warning = fd_budget_warning(1000, "API_MAX_CONNECTIONS", 1024)
    assert warning is not None
    assert "API_MAX_CONNECTIONS=1000" in warning and "1024" in warning


def test_tls_handshake_is_bounded_by_the_read_timeout(run, tmp_path):
    """A TLS listener (for when the API serves HTTPS): a client that never says hello
    is cut at read_timeout and its slot freed; a real client is served."""
    import ssl
    import subprocess

    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    openssl = ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1"]
    openssl += ["-subj", "/CN=localhost", "-keyout", str(key), "-out", str(cert)]
    subprocess.run(openssl, check=True, capture_output=True)
    server_ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server_ctx.load_cert_chain(cert, key)
    client_ctx = ssl.create_default_context(cafile=str(cert))

    async def scenario() -> None:
        sock = listening()
        # read_timeout also bounds the real client's handshake: room for a loaded machine
        limits = ListenerLimits(max_connections=5, read_timeout=2)
        listener = Listener(sock, Echo, limits, name="tls", refusal=b"busy\n", ssl=server_ctx)
        listener.start()
        port = sock.getsockname()[1]
        mute_reader, mute_writer = await asyncio.open_connection("127.0.0.1", port)
        await until(lambda: limits.connections == 1, 5)
        reader, writer = await asyncio.open_connection(
            "127.0.0.1", port, ssl=client_ctx, server_hostname="localhost"
        )
        assert await echo(reader, writer) == b"ping"
        assert await asyncio.wait_for(mute_reader.read(), 5) == b""  # cut, no plaintext
        await until(lambda: limits.connections == 1, 5, what="the mute client's slot freed")
        writer.close()
        mute_writer.close()
        await until(lambda: limits.connections == 0, 5)
        listener.close()
        sock.close()

    run(scenario())
