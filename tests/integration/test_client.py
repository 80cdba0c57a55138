"""The Python client (sync and async) against real lobbyd processes on a real NATS server."""

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import Any

import pytest
from support import free_port, wait_for

from lobby import AsyncLobby, Lobby, LobbyException

A_LABELS = "service:web,location:prague"
B_LABELS = (
    "service:db,location:brno,"
    "prometheus:node:host:10.0.0.2,prometheus:node:port:9200,prometheus:node:location:brno"
)
# Characters that break naive query strings, paths or bodies: & = # ? + % / space, unicode.
SPECIAL = [
    "path:/srv/app dir",
    "url:http://x.example/a?b=c&d=e#frag",
    "plus:a+b",
    "pct:100%25",
    "name:Žluťoučký kůň",
    "emoji:🚀",
    "tag:#hash",  # not first: the runtime label file would read `#...` back as a comment
    "q?:what",
    "amp&:and",
    "ipv6:2a03::1",
]


@pytest.fixture
def env(nats_server, channel) -> dict[str, str]:
    return {"NATS_URL": nats_server.url, "NATS_DISCOVERY_CHANNEL": channel, "KEEP_ALIVE": "1"}


@pytest.fixture
def pair(env, spawn):
    a = spawn("a.example", {**env, "LABELS": A_LABELS})
    b = spawn("b.example", {**env, "LABELS": B_LABELS})
    wait_for(lambda: a.hostnames() == ["a.example", "b.example"], what="a lists both")
    return a, b


def without_time(discoveries: list[dict[str, Any]]) -> list[tuple[str, list[str]]]:
    for d in discoveries:
        assert isinstance(d["last_check"], int)
    return [(d["hostname"], d["labels"]) for d in discoveries]


def test_every_read_method(pair):
    a, _ = pair
    with Lobby("127.0.0.1", a.port) as c:
        assert c.get_discovery() == {
            "hostname": "a.example",
            "labels": ["location:prague", "service:web"],
            "last_check": 0,
        }
        assert without_time(c.get_discoveries()) == [
            ("a.example", ["location:prague", "service:web"]),
            ("b.example", sorted(B_LABELS.split(","))),
        ]
        assert without_time(c.get_discoveries()) == without_time(a.get("/v1/discoveries").json())
        assert c.resolve("service:db") == ["b.example"]
        assert c.resolve("service:none") == []
        assert without_time(c.find_by_labels(["service:web", "location:brno"])) == [
            ("a.example", ["service:web"]),
            ("b.example", ["location:brno"]),
        ]
        assert without_time(c.find_by_prefixes(["location:", "service:d"])) == [
            ("a.example", ["location:prague"]),
            ("b.example", ["location:brno", "service:db"]),
        ]
        assert c.find_by_labels(["nothing:here"]) == []
        assert c.prometheus("node") == [
            {"Targets": ["10.0.0.2:9200"], "Labels": {"location": "brno"}}
        ]
        assert c.prometheus("other") == []


def test_add_and_delete_labels(env, spawn):
    a = spawn("a.example", env)
    with Lobby("127.0.0.1", a.port) as c:
        assert c.add_labels(["service:smtp", "backup:/etc"]) == "OK"
        wait_for(lambda: c.resolve("service:smtp") == ["a.example"], what="label added")
        assert c.get_discovery()["labels"] == ["backup:/etc", "service:smtp"]
        assert c.delete_labels(["service:smtp"]) == "OK"
        wait_for(lambda: c.resolve("service:smtp") == [], what="label deleted")
    assert (a.labels_path / "_runtime").read_text() == "backup:/etc\n"


def test_labels_with_special_characters(env, spawn):
    a = spawn("a.example", env)
    with Lobby("127.0.0.1", a.port) as c:
        assert c.add_labels(SPECIAL) == "OK"
        assert c.get_discovery()["labels"] == sorted(SPECIAL)
        wait_for(lambda: c.resolve(SPECIAL[0]) == ["a.example"], what="labels announced")
        for label in SPECIAL:
            assert c.resolve(label) == ["a.example"], label
            assert without_time(c.find_by_labels([label])) == [("a.example", [label])], label
        assert without_time(c.find_by_labels(SPECIAL)) == [("a.example", sorted(SPECIAL))]
        assert without_time(c.find_by_prefixes(["url:http://x.example/a?b=c&", "pct:100%"])) == [
            ("a.example", ["pct:100%25", "url:http://x.example/a?b=c&d=e#frag"])
        ]
        assert c.resolve("plus:a b") == []  # `+` was not sent as a space
        assert c.delete_labels(SPECIAL) == "OK"
        assert c.get_discovery()["labels"] == []


def test_daemon_errors_carry_its_message(env, spawn):
    a = spawn("a.example", {**env, "LABELS": "service:web"})
    with Lobby("127.0.0.1", a.port) as c:
        with pytest.raises(LobbyException) as caught:
            c.resolve("")
        assert caught.value.status_code == 400
        assert str(caught.value) == "query parameter label is required"

        with pytest.raises(LobbyException) as caught:
            c.add_labels(["fine:label", "bad\x01label"])
        assert caught.value.status_code == 400
        assert "bad\\x01label" in str(caught.value) and "control character" in str(caught.value)
        assert c.get_discovery()["labels"] == ["service:web"]  # the whole request failed


def test_token(env, spawn):
    a = spawn("a.example", {**env, "TOKEN": "s3cret"})
    for token in ("", "wrong"):
        with Lobby("127.0.0.1", a.port, token=token) as c, pytest.raises(LobbyException) as caught:
            c.get_discoveries()
        assert (caught.value.status_code, str(caught.value)) == (403, "access denied")
    with Lobby("127.0.0.1", a.port, token="s3cret") as c:
        assert c.get_discovery()["hostname"] == "a.example"
        assert c.add_labels(["x:y"]) == "OK"


def test_daemon_down():
    port = free_port()
    with Lobby("127.0.0.1", port) as c, pytest.raises(LobbyException) as caught:
        c.get_discovery()
    assert caught.value.status_code is None
    assert f"cannot reach lobbyd at http://127.0.0.1:{port}" in str(caught.value)


def test_a_stopped_daemon_is_reported_not_raised_raw(env, spawn):
    a = spawn("a.example", env)
    with Lobby("127.0.0.1", a.port) as c:
        assert c.get_discovery()["hostname"] == "a.example"  # a kept-alive connection exists
        a.stop()
        with pytest.raises(LobbyException, match="cannot reach lobbyd") as caught:
            c.get_discovery()
        assert caught.value.status_code is None


# -- async ------------------------------------------------------------------------------


async def eventually(probe: Callable[[], Awaitable[Any]], expected: Any, what: str) -> None:
    deadline = time.monotonic() + 10
    while (got := await probe()) != expected:
        assert time.monotonic() < deadline, f"{what}: {got!r}"
        await asyncio.sleep(0.05)


async def test_async_every_method(pair):
    a, _ = pair
    async with AsyncLobby("127.0.0.1", a.port) as c:
        assert (await c.get_discovery())["labels"] == ["location:prague", "service:web"]
        assert [d["hostname"] for d in await c.get_discoveries()] == ["a.example", "b.example"]
        assert await c.resolve("service:db") == ["b.example"]
        assert without_time(await c.find_by_labels(["service:web"])) == [
            ("a.example", ["service:web"])
        ]
        assert without_time(await c.find_by_prefixes(["location:b"])) == [
            ("b.example", ["location:brno"])
        ]
        assert await c.prometheus("node") == [
            {"Targets": ["10.0.0.2:9200"], "Labels": {"location": "brno"}}
        ]
        # several requests at once share the client
        both = await asyncio.gather(c.resolve("service:web"), c.resolve("service:db"))
        assert both == [["a.example"], ["b.example"]]

        assert await c.add_labels(["async:yes", *SPECIAL]) == "OK"
        await eventually(lambda: c.resolve("async:yes"), ["a.example"], "label added")
        assert await c.resolve(SPECIAL[1]) == ["a.example"]
        assert await c.delete_labels(["async:yes"]) == "OK"
        await eventually(lambda: c.resolve("async:yes"), [], "label deleted")

        with pytest.raises(LobbyException, match="query parameter label is required"):
            await c.resolve("")


async def test_async_token_and_daemon_down(env, spawn):
    a = spawn("a.example", {**env, "TOKEN": "s3cret"})
    async with AsyncLobby("127.0.0.1", a.port) as c:
        with pytest.raises(LobbyException, match=r"^access denied$") as caught:
            await c.get_discovery()
        assert caught.value.status_code == 403
    async with AsyncLobby("127.0.0.1", a.port, "s3cret") as c:
        assert (await c.get_discovery())["hostname"] == "a.example"
    c = AsyncLobby("127.0.0.1", free_port())
    with pytest.raises(LobbyException, match="cannot reach lobbyd"):
        await c.get_discoveries()
    await c.close()
