"""What a health check can point at, owned by the test: real sockets on 127.0.0.1.

- `Listener`: a TCP port that accepts (and at once closes) every connection, closed and
  reopened on the same port at will. With a `greeting` it plays a server that speaks
  first (a NATS server's INFO, say): it sends the greeting, keeps what the client sends
  until it closes (or 2 s pass) in `received`, one entry per connection, then closes.
- `Httpd`: a stdlib HTTP server whose answer the test switches: a status code, or
  "hang" (it reads the request and answers nothing until the test ends).

Both serve from a thread of their own and are stopped by `close()`.
"""

from __future__ import annotations

import contextlib
import socket
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from support import free_port


class Listener:
    def __init__(self, port: int | None = None, greeting: bytes | None = None) -> None:
        self.port = port or free_port()
        self.greeting = greeting
        self.received: list[bytes] = []
        self._sock: socket.socket | None = None
        self._thread: threading.Thread | None = None

    def open(self) -> None:
        sock = socket.socket()
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(("127.0.0.1", self.port))
        sock.listen(64)
        self._sock = sock
        self._thread = threading.Thread(target=self._accept, args=(sock,), daemon=True)
        self._thread.start()

    def _accept(self, sock: socket.socket) -> None:
        while True:
            try:
                conn, _ = sock.accept()
            except OSError:  # closed
                return
            with conn:
                if self.greeting is not None:
                    self.received.append(self._converse(conn, self.greeting))

    @staticmethod
    def _converse(conn: socket.socket, greeting: bytes) -> bytes:
        conn.settimeout(2)
        data = b""
        with contextlib.suppress(OSError):
            conn.sendall(greeting)
            while chunk := conn.recv(4096):
                data += chunk
        return data

    def close(self) -> None:
        if self._sock is None:
            return
        with contextlib.suppress(OSError):
            self._sock.shutdown(socket.SHUT_RDWR)  # wakes the accepting thread
        self._sock.close()
        self._sock = None
        if self._thread is not None:
            self._thread.join(5)


class Httpd:
    def __init__(self) -> None:
        self.answer: int | str = 200  # a status code, or "hang"
        self.requests = 0
        self._release = threading.Event()
        httpd = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                httpd.requests += 1
                answer = httpd.answer
                if answer == "hang":
                    httpd._release.wait(60)
                    return
                assert isinstance(answer, int)
                body = f"answer {answer} for {self.path}\n".encode()
                self.send_response(answer)
                if 300 <= answer < 400:
                    self.send_header("Location", "/elsewhere")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.port = self.server.server_address[1]
        self.url = f"http://127.0.0.1:{self.port}"
        self._thread = threading.Thread(
            target=self.server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )
        self._thread.start()

    def close(self) -> None:
        self._release.set()
        self.server.shutdown()
        self.server.server_close()
        self._thread.join(5)
