"""Fixtures that own real brokers and real lobbyd processes.

Shared servers (`nats_server`, `redis_server`) live for the whole session; tests
stay apart by using their own subject/channel (`channel`). Fault tests that kill a
broker make their own with `make_nats` / `make_redis`. Everything started here is
stopped here, by PID.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable, Iterator, Mapping, Sequence
from pathlib import Path

import pytest
from support import Broker, Lobbyd, NatsServer, Proc, RedisServer, unique

from lobby import config
from lobby.core.clock import SYSTEM_CLOCK, Clock
from lobby.daemon import Daemon
from lobby.drivers.memory import MemoryBroker


@pytest.fixture(scope="session")
def session_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("servers")


@pytest.fixture(scope="session")
def nats_server(session_dir: Path) -> Iterator[NatsServer]:
    server = NatsServer(session_dir)
    server.start()
    yield server
    server.stop()


@pytest.fixture(scope="session")
def redis_server(session_dir: Path) -> Iterator[RedisServer]:
    server = RedisServer(session_dir)
    server.start()
    yield server
    server.stop()


@pytest.fixture
def channel() -> str:
    """A subject/channel of this test's own on the shared brokers."""
    return unique()


@pytest.fixture
def procs() -> Iterator[list[Proc]]:
    started: list[Proc] = []
    yield started
    for proc in reversed(started):
        proc.stop(timeout=3)


@pytest.fixture
def make_nats(tmp_path: Path, procs: list[Proc]) -> Callable[..., NatsServer]:
    def make(port: int | None = None, extra: list[str] | None = None) -> NatsServer:
        server = NatsServer(tmp_path, port, extra)
        procs.append(server)
        server.start()
        return server

    return make


@pytest.fixture
def make_redis(tmp_path: Path, procs: list[Proc]) -> Callable[..., RedisServer]:
    def make(port: int | None = None, password: str | None = None) -> RedisServer:
        server = RedisServer(tmp_path, port, password)
        procs.append(server)
        server.start()
        return server

    return make


@pytest.fixture
def spawn(tmp_path: Path, procs: list[Proc]) -> Callable[..., Lobbyd]:
    """Start a lobbyd: spawn("a", {"NATS_URL": ...}) -> Lobbyd (API up when it returns)."""

    def start(
        name: str, env: Mapping[str, str], ready: bool = True, wrapper: Sequence[str] = ()
    ) -> Lobbyd:
        node = Lobbyd(tmp_path, env, name, wrapper)
        procs.append(node)
        node.start(ready=ready)
        return node

    return start


@pytest.fixture(params=["nats", "redis"])
def broker(request: pytest.FixtureRequest, channel: str) -> Broker:
    """Each broker kind in turn, shared server, this test's own channel."""
    server = request.getfixturevalue(f"{request.param}_server")
    return Broker(request.param, server, channel)


@pytest.fixture(params=["nats", "redis"])
def own_broker(request: pytest.FixtureRequest, channel: str, make_nats, make_redis) -> Broker:
    """Each broker kind in turn, on a server of this test's own (to kill and restart)."""
    server = make_nats() if request.param == "nats" else make_redis()
    return Broker(request.param, server, channel)


@pytest.fixture
def memory_broker() -> MemoryBroker:
    return MemoryBroker()


@pytest.fixture
async def memory_daemons(
    tmp_path: Path, memory_broker: MemoryBroker
) -> AsyncIterator[Callable[..., Daemon]]:
    """Real Daemons on one in-memory broker: start(name, **env); all must exit 0 after."""
    started: list[tuple[Daemon, asyncio.Task[int]]] = []

    def start(name: str, clock: Clock = SYSTEM_CLOCK, **env: str) -> Daemon:
        settings = config.load(
            {"HOSTNAME": name, "DISABLE_API": "true", "LABELS_PATH": str(tmp_path / name), **env}
        )
        node = Daemon(settings, driver=memory_broker.driver(), clock=clock)
        started.append((node, asyncio.create_task(node.run())))
        return node

    yield start
    for node, _ in started:
        node.stop()
    for _, task in started:
        assert await asyncio.wait_for(task, 5) == 0


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if "integration" in item.path.parts:
            item.add_marker(pytest.mark.integration)
