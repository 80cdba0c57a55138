"""The lean NATS read path (lobby.drivers.nats_lean): every message of our sids, in
order, whatever the chunking, with nats-py's own parser still handling the rest."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from nats.errors import ProtocolError

from lobby.drivers.nats_lean import LeanClient


def client() -> tuple[LeanClient, list[Any]]:
    nc = LeanClient()
    seen: list[Any] = []
    nc.direct[1] = lambda batch: seen.extend(("main", data) for data in batch)
    nc.direct[2] = lambda batch: seen.extend(("sync", data) for data in batch)

    async def ping() -> None:
        seen.append("PING")

    async def pong() -> None:
        seen.append("PONG")

    async def info(info: dict[str, Any]) -> None:
        seen.append(("INFO", info["server_id"]))

    nc._process_ping = ping  # type: ignore[method-assign]
    nc._process_pong = pong  # type: ignore[method-assign]
    nc._process_info = info  # type: ignore[method-assign,assignment]
    return nc, seen


def msg(sid: int, payload: bytes, subject: bytes = b"lobby.discovery", reply: bytes = b"") -> bytes:
    head = b"MSG %s %d %s%d\r\n" % (subject, sid, reply + b" " if reply else b"", len(payload))
    return head + payload + b"\r\n"


STREAM = b"".join(
    [
        msg(1, b'{"message":"hi"}'),
        msg(2, b"sync one"),
        b"PING\r\n",
        msg(1, b""),
        msg(3, b"someone else's"),
        msg(1, b"with reply", reply=b"_INBOX.x"),
        b'INFO {"server_id":"s1"}\r\n',
        msg(1, b"\r\nMSG 1 1 inside\r\n"),
        b"PONG\r\n",
        msg(2, b"last"),
    ]
)
EXPECTED = [
    ("main", b'{"message":"hi"}'),
    ("sync", b"sync one"),
    "PING",
    ("main", b""),
    ("main", b"with reply"),
    ("INFO", "s1"),
    ("main", b"\r\nMSG 1 1 inside\r\n"),
    "PONG",
    ("sync", b"last"),
]


async def test_one_chunk() -> None:
    nc, seen = client()
    await nc._ps.parse(STREAM)
    assert seen == EXPECTED
    assert not nc._ps.buf
    assert nc.stats["in_msgs"] == 7  # 6 of ours, and the other sid's (by nats-py)


async def test_split_at_every_byte() -> None:
    for cut in range(1, len(STREAM)):
        nc, seen = client()
        await nc._ps.parse(STREAM[:cut])
        await nc._ps.parse(STREAM[cut:])
        assert seen == EXPECTED, cut


@settings(max_examples=60, deadline=None)
@given(st.lists(st.integers(min_value=1, max_value=40), min_size=1, max_size=30))
async def test_any_chunking(sizes: list[int]) -> None:
    nc, seen = client()
    pos = 0
    for size in sizes * (len(STREAM) // sum(sizes) + 1):
        if pos >= len(STREAM):
            break
        await nc._ps.parse(STREAM[pos : pos + size])
        pos += size
    assert seen == EXPECTED


async def test_a_malformed_frame_is_a_protocol_error() -> None:
    nc, _ = client()
    with pytest.raises(ProtocolError):
        await nc._ps.parse(b"MSG lobby.discovery x 3\r\nabc\r\n")


async def test_messages_nats_py_parsed_also_go_straight_to_the_handler() -> None:
    nc, seen = client()
    await nc._process_msg(1, b"lobby.discovery", b"", b"direct", None)
    assert seen == [("main", b"direct")]
