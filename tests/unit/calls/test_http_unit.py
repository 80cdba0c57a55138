"""lobbyctl's socket client (lobby._http) against answers framed every way HTTP allows,
and cut short: a real socket server in a thread writes the bytes each test gives."""

import socket
import threading
import time
from collections.abc import Iterator

import pytest

from lobby import Lobby, LobbyException
from lobby.calls.transport import HttpLobby

HOLD = b"<hold the connection open>"


@pytest.fixture
def raw() -> Iterator[tuple[int, list[bytes], list[bytes]]]:
    """(port, answers to send, requests seen): one answer per connection, then close."""
    listener = socket.create_server(("127.0.0.1", 0))
    answers: list[bytes] = []
    seen: list[bytes] = []

    def serve() -> None:
        while True:
            try:
                conn, _ = listener.accept()
            except OSError:
                return
            with conn:
                data = b""
                while b"\r\n\r\n" not in data:
                    data += conn.recv(65536)
                head, _, body = data.partition(b"\r\n\r\n")
                length = next(
                    (
                        int(line.split(b":")[1])
                        for line in head.split(b"\r\n")
                        if line.lower().startswith(b"content-length:")
                    ),
                    0,
                )
                while len(body) < length:
                    body += conn.recv(65536)
                seen.append(head + b"\r\n\r\n" + body)
                answer = answers.pop(0)
                conn.sendall(answer.removesuffix(HOLD))
                if answer.endswith(HOLD):  # then silence, the connection open
                    time.sleep(1.0)

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    yield listener.getsockname()[1], answers, seen
    listener.close()


def test_chunked_answer_is_joined(raw):
    port, answers, seen = raw
    answers.append(
        b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n"
        b'4\r\n["a"\r\n5;ext=1\r\n, "b"\r\n1\r\n]\r\n0\r\nX-Trailer: 1\r\n\r\n'
    )
    assert HttpLobby("127.0.0.1", port).resolve("x:1") == ["a", "b"]
    request = seen[0].decode()
    assert request.startswith("GET /v1/resolve?label=x%3A1 HTTP/1.1\r\n")
    assert f"Host: 127.0.0.1:{port}\r\n" in request and "Connection: close\r\n" in request


def test_answer_read_to_the_end_without_a_length(raw):
    port, answers, _ = raw
    answers.append(b"HTTP/1.0 200 OK\r\nContent-Type: text/plain\r\n\r\nOK")
    assert HttpLobby("127.0.0.1", port, token="t").add_labels(["a:b"]) == "OK"


def test_body_and_token_are_sent(raw):
    port, answers, seen = raw
    answers.append(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nOK")
    assert HttpLobby("127.0.0.1", port, token="s3cret").delete_labels(["a:b", "c"]) == "OK"
    head, _, body = seen[0].partition(b"\r\n\r\n")
    assert head.startswith(b"DELETE /v1/labels HTTP/1.1\r\n")
    assert b"\r\nAuthorization: Token s3cret" in head and b"\r\nContent-Length: 6" in head
    assert body == b"a:b\nc\n"


@pytest.mark.parametrize(
    "answer",
    [
        b"",  # closed without a word
        b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\n[1,",  # cut short
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\n[1",  # chunk cut short
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",  # not a chunk size
        b"SSH-2.0-OpenSSH_9.2\r\n",  # not HTTP
        b"HTTP/1.1 200 OK\r\nContent-Le",  # headers cut short
    ],
)
def test_a_broken_answer_is_a_lobby_exception_without_status(raw, answer):
    port, answers, _ = raw
    answers.append(answer)
    with pytest.raises(LobbyException) as caught:
        HttpLobby("127.0.0.1", port).get_discoveries()
    assert caught.value.status_code is None
    assert str(caught.value).startswith(f"cannot reach lobbyd at http://127.0.0.1:{port}: ")


def test_an_answer_without_a_reason_phrase_gets_the_standard_one(raw):
    port, answers, _ = raw
    answers.append(b"HTTP/1.1 404\r\nContent-Length: 0\r\n\r\n")
    with pytest.raises(LobbyException, match=r"^Not Found$") as caught:
        HttpLobby("127.0.0.1", port).get_discovery()
    assert caught.value.status_code == 404


def test_timeout_is_said(raw):
    port, answers, _ = raw
    answers.append(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\n[" + HOLD)
    with pytest.raises(LobbyException, match="timed out"):
        HttpLobby("127.0.0.1", port, timeout=0.3).get_discoveries()


# -- proxies from the environment, as httpx (and so lobby.Lobby) uses them -----------------

PROXY_VARS = ("http_proxy", "https_proxy", "all_proxy", "no_proxy")


@pytest.fixture
def no_proxy_env(monkeypatch):
    for name in PROXY_VARS:
        monkeypatch.delenv(name, raising=False)
        monkeypatch.delenv(name.upper(), raising=False)
    return monkeypatch


@pytest.mark.parametrize("kind", [Lobby, HttpLobby], ids=["httpx", "socket"])
def test_http_goes_through_the_proxy_the_environment_names(raw, no_proxy_env, kind):
    port, answers, seen = raw
    no_proxy_env.setenv("HTTP_PROXY", f"http://user:p%40ss@127.0.0.1:{port}")
    answers.append(b'HTTP/1.1 200 OK\r\nContent-Length: 8\r\n\r\n["a.ex"]')
    with kind("lobbyd.example", 1313) as client:
        assert client.resolve("x:1") == ["a.ex"]
    head = seen[0].decode()
    assert head.startswith("GET http://lobbyd.example:1313/v1/resolve?label=x%3A1 HTTP/1.1\r\n")
    assert "\r\nProxy-Authorization: Basic dXNlcjpwQHNz\r\n" in head  # user:p@ss


@pytest.mark.parametrize("kind", [Lobby, HttpLobby], ids=["httpx", "socket"])
def test_no_proxy_goes_direct(raw, no_proxy_env, kind):
    port, answers, seen = raw
    no_proxy_env.setenv("http_proxy", "http://127.0.0.1:9")  # nothing listens there
    no_proxy_env.setenv("no_proxy", "localhost,127.0.0.1")
    answers.append(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\n[]")
    with kind("127.0.0.1", port) as client:
        assert client.resolve("x") == []
    assert seen[0].startswith(b"GET /v1/resolve?label=x HTTP/1.1\r\n")


@pytest.mark.parametrize("kind", [Lobby, HttpLobby], ids=["httpx", "socket"])
def test_https_asks_the_proxy_for_a_tunnel(raw, no_proxy_env, kind):
    port, answers, seen = raw
    no_proxy_env.setenv("HTTPS_PROXY", f"http://127.0.0.1:{port}")
    answers.append(b"HTTP/1.1 407 Proxy Authentication Required\r\nContent-Length: 0\r\n\r\n")
    with (
        kind("lobbyd.example", 1313, proto="https") as client,
        pytest.raises(LobbyException) as caught,
    ):
        client.get_discovery()
    assert caught.value.status_code is None and "407" in str(caught.value)
    assert seen[0].startswith(b"CONNECT lobbyd.example:1313 HTTP/1.1\r\n")
