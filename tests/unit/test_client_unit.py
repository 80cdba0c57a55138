"""The Python client without lobbyd: arguments, what goes on the wire, how answers are read.

A small real HTTP server (stdlib, in a thread) records each request and gives the answer
a test sets, so malformed answers a healthy lobbyd never gives can be checked too.
"""

import inspect
import subprocess
import sys
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlsplit

import pytest
from support import free_port

import lobby
from lobby import AsyncLobby, Lobby, LobbyException
from lobby.calls.transport import HttpLobby


@dataclass
class Seen:
    method: str
    path: str
    query: dict[str, list[str]]
    headers: dict[str, str]
    body: bytes


@dataclass
class Recorder:
    port: int
    seen: list[Seen] = field(default_factory=list)
    status: int = 200
    content_type: str = "application/json; charset=UTF-8"
    body: bytes = b"[]\n"

    def answer(
        self, status: int, body: bytes, content_type: str = "text/plain; charset=utf-8"
    ) -> None:
        self.status, self.body, self.content_type = status, body, content_type


@pytest.fixture
def server() -> Iterator[Recorder]:
    recorder = Recorder(port=0)

    class Handler(BaseHTTPRequestHandler):
        def handle_any(self) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            url = urlsplit(self.path)
            recorder.seen.append(
                Seen(
                    self.command,
                    url.path,
                    parse_qs(url.query, keep_blank_values=True),
                    dict(self.headers.items()),
                    self.rfile.read(length),
                )
            )
            self.send_response(recorder.status)
            self.send_header("Content-Type", recorder.content_type)
            self.send_header("Content-Length", str(len(recorder.body)))
            self.end_headers()
            self.wfile.write(recorder.body)

        do_GET = do_POST = do_DELETE = handle_any

        def log_message(self, *args: object) -> None:
            pass

    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    recorder.port = httpd.server_address[1]
    thread = threading.Thread(target=httpd.serve_forever, args=(0.02,), daemon=True)
    thread.start()
    yield recorder
    httpd.shutdown()
    httpd.server_close()


@pytest.fixture(params=[Lobby, HttpLobby], ids=["httpx", "http.client"])
def client(request, server: Recorder) -> Iterator[Lobby | HttpLobby]:
    """Both blocking clients: lobby.Lobby (httpx) and lobbyctl's (http.client) must send
    the same bytes and read answers alike."""
    with request.param("127.0.0.1", server.port) as c:
        yield c


# -- construction -----------------------------------------------------------------------


def test_defaults_are_lobby_pythons():
    c = Lobby()
    assert (c.host, c.port, c.token, c.proto) == ("localhost", 1313, "", "http")
    assert c.base_url == "http://localhost:1313"
    c.close()


def test_positional_arguments_keep_lobby_pythons_order():
    with Lobby("h.example", 8080, "tok", "https") as c:
        assert (c.base_url, c.token) == ("https://h.example:8080", "tok")


def test_port_as_a_string_and_proto_in_capitals_are_accepted():
    with Lobby(port="1414", proto="HTTP") as c:
        assert c.base_url == "http://localhost:1414"


def test_a_bare_ipv6_address_gets_brackets():
    with Lobby("::1", 1313) as c:
        assert c.base_url == "http://[::1]:1313"


@pytest.mark.parametrize("port", [0, -1, 65536, "abc", "", True, 1.5, None])
def test_bad_port_is_a_value_error(port):
    with pytest.raises(ValueError, match="port must be a number from 1 to 65535"):
        Lobby(port=port)


@pytest.mark.parametrize("proto", ["ftp", "", "http:"])
def test_bad_proto_is_a_value_error(proto):
    with pytest.raises(ValueError, match="proto must be http or https"):
        AsyncLobby(proto=proto)


@pytest.mark.parametrize("host", ["", "a b", "a/b", "user@h", "h?x", "h#x"])
def test_bad_host_is_a_value_error(host):
    with pytest.raises(ValueError, match="invalid host"):
        Lobby(host)


def test_repr_names_the_daemon():
    with Lobby("h", 1) as c:
        assert repr(c) == "Lobby('http://h:1')"


# -- the wire ---------------------------------------------------------------------------


def test_labels_go_one_per_line_with_the_token(server, client):
    server.answer(200, b"OK")
    c = type(client)("127.0.0.1", server.port, token="s3cret")
    assert c.add_labels(["service:web", "note:a b & c #1?"]) == "OK"
    assert c.delete_labels(["service:web"]) == "OK"
    c.close()
    add, delete = server.seen
    assert (add.method, add.path, add.body) == (
        "POST",
        "/v1/labels",
        b"service:web\nnote:a b & c #1?\n",
    )
    assert add.headers["Authorization"] == "Token s3cret"
    assert add.headers["Content-Type"].startswith("text/plain")
    assert (delete.method, delete.body) == ("DELETE", b"service:web\n")


def test_no_authorization_header_without_a_token(server, client):
    client.get_discoveries()
    assert "Authorization" not in server.seen[0].headers


def test_query_values_are_url_encoded(server, client):
    label = "note:a&b=c #x?y/z ü"
    client.resolve(label)
    client.find_by_labels([label, "service:web"])
    client.find_by_prefixes(["backup:/srv", "ü"])
    resolve, labels, prefixes = server.seen
    assert (resolve.path, resolve.query) == ("/v1/resolve", {"label": [label]})
    assert (labels.path, labels.query) == ("/v1/discoveries", {"labels": [f"{label},service:web"]})
    assert prefixes.query == {"prefixes": ["backup:/srv,ü"]}


def test_prometheus_name_is_one_path_segment(server, client):
    client.prometheus("node exporter/x?")
    assert server.seen[0].path == "/v1/prometheus/node%20exporter%2Fx%3F"


@pytest.mark.parametrize(
    ("call", "error", "message"),
    [
        (lambda c: c.add_labels(["a\nb"]), ValueError, "contains a line break"),
        (lambda c: c.delete_labels(["a\rb"]), ValueError, "contains a line break"),
        (lambda c: c.add_labels([""]), ValueError, "a label is empty"),
        (lambda c: c.add_labels("service:web"), TypeError, "not a string"),
        (lambda c: c.add_labels([1]), TypeError, "must be strings"),
        (lambda c: c.find_by_labels(["a,b"]), ValueError, "contains a comma"),
        (lambda c: c.find_by_prefixes(["p", ","]), ValueError, "contains a comma"),
        (lambda c: c.find_by_labels([]), ValueError, "at least one"),
        (lambda c: c.find_by_prefixes([""]), ValueError, "empty string"),
        (lambda c: c.prometheus(""), ValueError, "name is empty"),
    ],
)
def test_what_cannot_be_sent_is_refused_before_sending(server, client, call, error, message):
    with pytest.raises(error, match=message):
        call(client)
    assert server.seen == []


# -- answers ----------------------------------------------------------------------------


def test_plain_text_error_becomes_the_message(server, client):
    server.answer(400, b"query parameter label is required\n")
    with pytest.raises(LobbyException) as caught:
        client.resolve("")
    exc = caught.value
    assert (str(exc), exc.message, exc.status_code) == (
        "query parameter label is required",
    ) * 2 + (400,)
    assert exc.url == f"http://127.0.0.1:{server.port}/v1/resolve?label="


def test_json_error_message_is_unwrapped(server, client):
    server.answer(403, b'{\n "message": "access denied"\n}\n', "application/json; charset=UTF-8")
    with pytest.raises(LobbyException, match=r"^access denied$") as caught:
        client.get_discovery()
    assert caught.value.status_code == 403


def test_empty_error_body_falls_back_to_the_reason(server, client):
    server.answer(404, b"")
    with pytest.raises(LobbyException, match=r"^Not Found$"):
        client.get_discovery()


@pytest.mark.parametrize(
    ("call", "body", "message"),
    [
        (lambda c: c.get_discovery(), b"not json", "the answer is not JSON"),
        (lambda c: c.get_discovery(), b"[]", "expected a JSON object"),
        (lambda c: c.get_discoveries(), b"{}", "expected a JSON list of objects"),
        (lambda c: c.get_discoveries(), b"[1]", "expected a JSON list of objects"),
        (lambda c: c.resolve("x"), b'["a", 2]', "expected a JSON list of strings"),
        (lambda c: c.prometheus("x"), b'"s"', "expected a JSON list of objects"),
    ],
)
def test_an_answer_of_the_wrong_shape_is_a_lobby_exception(server, client, call, body, message):
    server.answer(200, body, "application/json")
    with pytest.raises(LobbyException, match=message) as caught:
        call(client)
    assert caught.value.status_code == 200


def test_answers_are_returned_as_parsed(server, client):
    server.answer(200, b'{"hostname": "a", "labels": ["x"], "last_check": 0}', "application/json")
    assert client.get_discovery() == {"hostname": "a", "labels": ["x"], "last_check": 0}
    server.answer(200, b'["a.example", "b.example"]', "application/json")
    assert client.resolve("x") == ["a.example", "b.example"]


@pytest.mark.parametrize("kind", [Lobby, HttpLobby])
def test_connection_refused_is_a_lobby_exception_without_status(kind):
    port = free_port()
    with kind("127.0.0.1", port) as c, pytest.raises(LobbyException) as caught:
        c.get_discoveries()
    exc = caught.value
    assert exc.status_code is None
    assert str(exc).startswith(f"cannot reach lobbyd at http://127.0.0.1:{port}: ")
    assert "refused" in str(exc).lower()
    assert exc.url == f"http://127.0.0.1:{port}/v1/discoveries"


async def test_async_twin_reads_answers_the_same_way(server):
    server.answer(403, b'{\n "message": "access denied"\n}\n', "application/json")
    async with AsyncLobby("127.0.0.1", server.port, token="t") as c:
        with pytest.raises(LobbyException, match=r"^access denied$"):
            await c.get_discoveries()
        server.answer(200, b"OK")
        assert await c.add_labels(["a:b"]) == "OK"
        with pytest.raises(ValueError, match="contains a comma"):
            await c.find_by_labels(["a,b"])
    assert [s.headers["Authorization"] for s in server.seen] == ["Token t", "Token t"]
    assert server.seen[1].body == b"a:b\n"


async def test_async_connection_refused():
    async with AsyncLobby("127.0.0.1", free_port()) as c:
        with pytest.raises(LobbyException, match="cannot reach lobbyd") as caught:
            await c.resolve("x")
    assert caught.value.status_code is None


# -- the shape of the package -----------------------------------------------------------


def public_methods(cls: type) -> dict[str, inspect.Signature]:
    return {
        name: inspect.signature(fn)
        for name, fn in vars(cls).items()
        if callable(fn) and not name.startswith("_") and name != "aclose"
    }


def test_async_twin_has_the_same_methods_as_coroutines():
    sync, async_ = public_methods(Lobby), public_methods(AsyncLobby)
    assert sync.keys() == async_.keys()
    assert {
        "get_discovery",
        "get_discoveries",
        "add_labels",
        "delete_labels",
        "resolve",
        "find_by_labels",
        "find_by_prefixes",
        "prometheus",
        "close",
    } <= sync.keys()
    for name in sync:
        method = getattr(AsyncLobby, name)
        if name == "watch":  # a stream: an async generator, used with `async for`
            assert inspect.isasyncgenfunction(method)
            continue
        assert inspect.iscoroutinefunction(method), name
        assert not inspect.iscoroutinefunction(getattr(Lobby, name)), name
        assert list(sync[name].parameters) == list(async_[name].parameters), name


def test_lobby_exports_the_client_lazily():
    assert lobby.Lobby is Lobby and lobby.LobbyException is LobbyException
    assert {"Lobby", "AsyncLobby", "LobbyException"} <= set(dir(lobby))
    with pytest.raises(AttributeError, match="no attribute 'Nope'"):
        _ = lobby.Nope
    run = subprocess.run(
        [
            sys.executable,
            "-c",
            "import sys, lobby; print('httpx' in sys.modules, 'lobby.client' in sys.modules)",
        ],
        capture_output=True,
        text=True,
        check=True,
    )
    assert run.stdout.split() == ["False", "False"]


def test_lobby_exception_is_an_exception_with_attributes():
    exc = LobbyException("access denied", 403, "http://h:1/v1/discovery")
    assert isinstance(exc, Exception)
    assert (str(exc), exc.status_code, exc.url) == ("access denied", 403, "http://h:1/v1/discovery")


def test_verify_takes_what_httpx_takes(tmp_path):
    import ssl

    from lobby.client import _tls

    assert _tls(False) is False
    assert isinstance(_tls(True), ssl.SSLContext)
    context = ssl.create_default_context()
    assert _tls(context) is context
    with pytest.raises(ValueError, match=r"missing\.pem"):
        _tls(str(tmp_path / "missing.pem"))
    with pytest.raises(ValueError, match="verify must be"):
        _tls(3)  # type: ignore[arg-type]
