"""The bytes of agents' queries and listeners' replies (lobby.core.query, SPEC §20)."""

import random

import pytest
from hypothesis import given
from hypothesis import strategies as st

from lobby.core.query import CHUNK, NoAnswer, Query, QueryError, Reassembly, Reply, encode_reply


def test_a_query_round_trips():
    q = Query("ab12", "GET", "/v1/resolve", b"label=service:web&index=7&wait=5s", True, 1)
    assert Query.decode(q.encode()) == q


@pytest.mark.parametrize(
    "data",
    [
        b"",
        b"not json",
        b"[]",
        b'{"v": 2, "id": "x", "m": "GET", "p": "/"}',
        b'{"v": 1, "m": "GET", "p": "/"}',
        b'{"v": 1, "id": 5, "m": "GET", "p": "/"}',
        b'{"v": 1, "id": "x", "m": "GET", "p": "no-slash"}',
        b'{"v": 1, "id": "x", "m": "GET", "p": "/", "try": "1"}',
    ],
)
def test_a_bad_query_is_refused(data):
    with pytest.raises(QueryError):
        Query.decode(data)


def reply(body: bytes) -> Reply:
    headers = [(b"content-length", b"%d" % len(body)), (b"x-lobby-index", b"42")]
    return Reply(200, headers, body, "listener-1")


def test_a_small_reply_is_one_message():
    [message] = encode_reply("q1", reply(b"[]\n"))
    assert Reassembly("q1").add(message) == reply(b"[]\n")


def test_a_large_reply_comes_in_messages_of_at_most_512_kib_in_any_order():
    body = random.Random(7).randbytes(3 * CHUNK + 1234)
    messages = encode_reply("q1", reply(body))
    assert len(messages) == 4
    assert all(len(m) <= CHUNK for m in messages)
    whole = Reassembly("q1")
    order = [3, 1, 0, 2]
    for i in order[:-1]:
        assert whole.add(messages[i]) is None
    assert whole.add(messages[order[-1]]) == reply(body)


@given(st.binary(max_size=5000), st.integers(min_value=600, max_value=2000))
def test_any_body_survives_any_chunk_size(body, chunk):
    messages = encode_reply("id", reply(body), chunk=chunk)
    assert all(len(m) <= chunk for m in messages)
    whole = Reassembly("id")
    results = [whole.add(m) for m in messages]
    assert results[-1] == reply(body) and all(r is None for r in results[:-1])


@pytest.mark.parametrize(
    "message",
    [
        b"garbage",
        b"LQ1 q1 0 1",  # no newline
        b"LQ1 other 0 1\n{}\n",  # another query's
        b"LQ1 q1 x 1\n",
        b"LQ1 q1 2 2\n",  # out of range
        b'LQ1 q1 0 1\n{"h": []}\n',  # no status
        b"LQ1 q1 0 1\nnot json\n",
    ],
)
def test_a_malformed_reply_message_is_refused(message):
    with pytest.raises(QueryError):
        Reassembly("q1").add(message)


def test_no_answer_says_how_many_tries():
    assert str(NoAnswer(2)) == "no listener answered (tried 2)"
