"""The API's protocol (lobby.api.protocol) on a real lobbyd over raw sockets: answers
written at once are the same bytes as those that go through a blocking query's
branch, pipelining in order, HTTP/1.0 closing, HEAD and OPTIONS, tokens and gzip,
the access log."""

from __future__ import annotations

import gzip
import re
import socket

import pytest
from support import Broker, wait_for


def exchange(port: int, raw: bytes, answers: int = 1, timeout: float = 5.0) -> list[bytes]:
    """Send `raw` at once, read until `answers` whole answers (or the connection closed);
    the answer to a HEAD has no body, whatever its content-length says."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
        sock.sendall(raw)
        data = b""
        out: list[bytes] = []
        while len(out) < answers:
            while b"\r\n\r\n" not in data:
                chunk = sock.recv(65536)
                if not chunk:
                    return out
                data += chunk
            head, _, rest = data.partition(b"\r\n\r\n")
            match = re.search(rb"content-length: (\d+)", head, re.I)
            assert match, head
            size = 0 if raw.startswith(b"HEAD ") else int(match.group(1))
            while len(rest) < size:
                chunk = sock.recv(65536)
                assert chunk, "closed mid-answer"
                rest += chunk
            out.append(head + b"\r\n\r\n" + rest[:size])
            data = rest[size:]
        return out


def undated(answer: bytes) -> bytes:
    return re.sub(rb"date: [^\r]*\r\n", b"", answer)


@pytest.fixture
def node(nats_server, channel, spawn):
    env = Broker("nats", nats_server, channel).env(LABELS="service:web,location:x")
    a = spawn("a.example", env)
    wait_for(lambda: a.hostnames() == ["a.example"], what="a listed")
    return a


def get(path: str, *headers: str, version: str = "1.1") -> bytes:
    lines = [f"GET {path} HTTP/{version}", "Host: x", *headers, "", ""]
    return "\r\n".join(lines).encode()


def test_same_bytes_as_through_the_blocking_branch(node):
    for path, asgi in [
        ("/v1/discoveries", "/v1/discoveries?index=0"),  # a blocking query (index moved)
        ("/v1/resolve?label=service:web", "/v1/resolve?label=service:web&index=0"),
        ("/v1/discovery", "/v1/discovery?index=0"),
    ]:
        for _ in range(5):  # the date, or a keep-alive's last_check, may turn over between
            [fast] = exchange(node.port, get(path))
            [slow] = exchange(node.port, get(asgi))
            if undated(fast) == undated(slow):
                break
        assert fast.startswith(b"HTTP/1.1 200 OK\r\ndate: ")
        assert undated(fast) == undated(slow), path


def test_pipelined_requests_are_answered_in_order(node):
    raw = get("/v1/discovery") + get("/v1/discoveries?index=0") + get("/v1/resolve?label=nope")
    answers = exchange(node.port, raw, answers=3)
    assert [a.rsplit(b"\r\n\r\n", 1)[1][:2] for a in answers] == [b"{\n", b"[\n", b"[]"]
    assert b'"hostname": "a.example"' in answers[0]


def test_http_1_0_gets_its_answer_and_the_connection_closes(node):
    with socket.create_connection(("127.0.0.1", node.port), timeout=5) as sock:
        sock.sendall(get("/v1/discoveries", version="1.0"))
        data = b""
        while chunk := sock.recv(65536):
            data += chunk
    assert b"connection: close\r\n" in data
    assert data.endswith(b"\n]\n")


def test_gzip_and_token_at_the_protocol_level(nats_server, channel, spawn):
    env = Broker("nats", nats_server, channel).env(TOKEN="s3cret", READ_TOKEN="r3ad")
    a = spawn("a.example", env)
    wait_for(lambda: a.hostnames() == ["a.example"], what="a listed")
    [denied] = exchange(a.port, get("/v1/discoveries"))
    assert denied.startswith(b"HTTP/1.1 403 Forbidden\r\n")
    assert denied.endswith(b'{\n "message": "access denied"\n}\n')
    head = b"HEAD /v1/discoveries HTTP/1.1\r\nHost: x\r\n"
    [fast] = exchange(a.port, head + b"\r\n")
    assert fast.startswith(b"HTTP/1.1 403 Forbidden\r\n")
    [allowed] = exchange(a.port, head + b"Authorization: Token r3ad\r\n\r\n")
    assert allowed.startswith(b"HTTP/1.1 200 ")  # the read token may HEAD
    [plain] = exchange(a.port, get("/v1/discoveries?index=0", "Authorization: Token r3ad"))
    # an answer of 1 KiB or more has a gzip copy: make ours that big
    fillers = "".join(f"filler:{i}{'x' * 100}\n" for i in range(12))
    assert a.client().post("/v1/labels", content=fillers).status_code == 200
    wait_for(lambda: b"filler:11" in a.get("/v1/discoveries").content, what="labels applied")
    [plain] = exchange(a.port, get("/v1/discoveries", "Authorization: Token r3ad"))
    [packed] = exchange(
        a.port, get("/v1/discoveries", "Authorization: Token r3ad", "Accept-Encoding: gzip")
    )
    assert b"content-encoding: gzip\r\n" in packed and b"vary: Accept-Encoding\r\n" in packed
    assert gzip.decompress(packed.rsplit(b"\r\n\r\n", 1)[1]) == plain.rsplit(b"\r\n\r\n", 1)[1]
    # a write with the read token is refused
    with socket.create_connection(("127.0.0.1", a.port), timeout=5) as sock:
        sock.sendall(
            b"POST /v1/labels HTTP/1.1\r\nHost: x\r\nAuthorization: Token r3ad\r\n"
            b"Content-Length: 4\r\n\r\nx:1\n"
        )
        assert sock.recv(65536).startswith(b"HTTP/1.1 403 ")


def _steady(head: bytes, path: str) -> list[bytes]:
    lines = head.split(b"\r\n")
    lines = [line for line in lines if not line.startswith(b"date: ")]
    if path == "/v1/stats":
        lines = [
            b"content-length: N" if line.startswith(b"content-length: ") else line for line in lines
        ]
    return lines


def test_head_gets_gets_headers_and_options_405(node):
    for path in ("/", "/v1/discoveries", "/v1/health", "/v1/prometheus/web", "/v1/stats"):
        [whole] = exchange(node.port, get(path))
        [head] = exchange(node.port, f"HEAD {path} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
        assert head.endswith(b"\r\n\r\n") and head.count(b"\r\n\r\n") == 1, path  # no body
        # GET's status line and headers, the same but for the date, which may turn over
        # between the two, and /v1/stats's length, since its counters move between them
        assert _steady(head, path) == _steady(whole.split(b"\r\n\r\n", 1)[0] + b"\r\n\r\n", path)
        [options] = exchange(node.port, f"OPTIONS {path} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
        assert options.startswith(b"HTTP/1.1 405 Method Not Allowed\r\n"), path
        assert b"allow: GET, HEAD\r\n" in options
        assert options.endswith(b"Method Not Allowed\n")
    with socket.create_connection(("127.0.0.1", node.port), timeout=5) as sock:
        sock.sendall(b"HEAD /v1/discoveries HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        data = b""
        while chunk := sock.recv(65536):
            data += chunk
    assert data.endswith(b"\r\n\r\n") and data.count(b"HTTP/1.1") == 1  # no body


def test_errors(node):
    for raw, status in [
        (b"HEAD /v1/labels HTTP/1.1\r\nHost: x\r\n\r\n", b"405"),
        (get("/v1/resolve"), b"400"),
        (get("/v1/discoveries/"), b"307"),
        (get("/v1/prometheus/a%20b"), b"200"),
        (get("/nothing"), b"404"),
    ]:
        with socket.create_connection(("127.0.0.1", node.port), timeout=5) as sock:
            sock.sendall(raw)
            assert sock.recv(65536).split(b" ")[1] == status, raw
    socket.create_connection(("127.0.0.1", node.port)).close()
    assert node.running


def test_answers_at_once_are_access_logged_like_the_others(nats_server, channel, spawn):
    a = spawn("a.example", Broker("nats", nats_server, channel).env(ACCESS_LOG="true"))
    wait_for(lambda: a.hostnames() == ["a.example"], what="a listed")
    exchange(a.port, get("/v1/resolve?label=x"))  # at once
    exchange(a.port, get("/v1/resolve?label=x&index=0"))  # through the blocking branch
    wait_for(lambda: a.output().count('"GET /v1/resolve?label=x') == 2, what="both logged")
    [fast, slow] = [line for line in a.output().splitlines() if "/v1/resolve?label=x" in line]
    assert fast.endswith(' - "GET /v1/resolve?label=x HTTP/1.1" 200')
    assert slow.endswith(' - "GET /v1/resolve?label=x&index=0 HTTP/1.1" 200')
    for line in (fast, slow):  # same logger, the peer's address
        assert re.search(r"uvicorn\.access: 127\.0\.0\.1:\d+ - ", line), line
