"""nats-py's client with a lean path for the messages of our own subscriptions.

For every message nats-py matches two regular expressions, builds a `Msg` object,
puts it on the subscription's `asyncio.Queue` and runs the callback as a coroutine
in the subscription's task: about a third of lobbyd's CPU per packet under load.
`LeanClient` keeps nats-py for everything else (connecting, TLS, credentials,
PING/PONG, reconnects, replaying subscriptions) and replaces only that path for the
subscriptions registered in `direct` (sid -> plain function of the payload):

- its parser reads the `MSG` frames at the front of each chunk read from the socket
  in one loop (`bytes.find`, `split`, a slice per payload) and calls the function
  synchronously, once per run of messages for the same sid, with their payloads in
  arrival order (one Python call for a chunk instead of one per message);
- anything else (`PING`, `INFO`, `-ERR`, `HMSG`, a frame cut by the read) is left to
  nats-py's own parser, and `_process_msg` still calls the function directly for
  our sids, so the order holds whichever parser read the message.

It also closes a hole of nats-py's (2.16): given a `tls://` URL or a TLS context, it
still speaks plaintext to a server whose INFO does not say `tls_required`, CONNECT
and credentials included. Like nats.go, `LeanClient` then upgrades to TLS when the
server says `tls_available` and otherwise refuses the server (`TlsNotOffered`)
before a byte of ours is written.

The function must not raise (the driver catches and logs). A message for any other
subscription takes nats-py's usual path. Falling behind no longer fills a client-side
queue (nothing is dropped in this process): the socket backs up and, past its limit,
the NATS server drops the slow connection, which shows as a disconnect.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from nats.aio.client import Client
from nats.errors import Error, ProtocolError
from nats.protocol.parser import AWAITING_CONTROL_LINE, Parser

Deliver = Callable[[list[bytes]], None]  # the payloads of one sid, in order

_MSG = b"MSG "
_CRLF = b"\r\n"


class _LeanParser(Parser):
    def __init__(self, nc: LeanClient) -> None:
        super().__init__(nc)
        self.lean = nc

    async def parse(self, data: bytes = b"") -> None:
        direct = self.lean.direct
        if self.state != AWAITING_CONTROL_LINE or not direct:
            await super().parse(data)
            return
        view = bytes(self.buf) + data if self.buf else data
        size = len(view)
        pos = 0
        count = 0
        received = 0
        batch: list[bytes] = []
        batch_for: Deliver | None = None  # whom `batch` goes to
        try:
            while pos < size and view.startswith(_MSG, pos):
                eol = view.find(_CRLF, pos)
                if eol < 0:
                    break
                args = view[pos + 4 : eol].split()
                try:
                    sid = int(args[1])
                    need = int(args[-1])
                except (IndexError, ValueError):
                    raise ProtocolError("nats: malformed MSG") from None
                start = eol + 2
                stop = start + need
                if stop + 2 > size:
                    break  # the rest of this frame is still on its way
                deliver = direct.get(sid)
                pos = stop + 2
                if deliver is not None and len(args) in (3, 4):
                    if deliver is not batch_for:
                        if batch_for is not None:
                            batch_for(batch)
                            batch = []
                        batch_for = deliver
                    batch.append(view[start:stop])
                    count += 1
                    received += need
                else:
                    if batch_for is not None:  # keep the order across both paths
                        batch_for(batch)
                        batch, batch_for = [], None
                    reply = args[2] if len(args) == 4 else b""
                    await self.lean._process_msg(sid, args[0], reply, view[start:stop], None)
        finally:
            if batch_for is not None:  # what was read before a malformed frame, too
                batch_for(batch)
            stats = self.lean.stats
            stats["in_msgs"] += count
            stats["in_bytes"] += received
        self.buf = bytearray(view[pos:]) if pos < size else bytearray()
        if self.buf and not self.buf.startswith(_MSG):
            await super().parse()  # PING, INFO, -ERR, HMSG, ...: nats-py's own parser


class TlsNotOffered(Error):
    """TLS is wanted, and the server offers none: nothing is sent to it."""

    def __str__(self) -> str:
        return "the server does not offer TLS"


class LeanClient(Client):
    """A nats-py Client that hands our subscriptions' messages straight to `direct`."""

    def __init__(self) -> None:
        super().__init__()
        self.direct: dict[int, Deliver] = {}
        self._ps = _LeanParser(self)

    async def _process_msg(
        self, sid: int, subject: bytes, reply: bytes, data: bytes, headers: Any
    ) -> None:
        deliver = self.direct.get(sid)
        if deliver is None or headers:
            await super()._process_msg(sid, subject, reply, data, headers)
            return
        self.stats["in_msgs"] += 1
        self.stats["in_bytes"] += len(data)
        deliver([data])

    async def _process_info(self, info: dict[str, Any], initial_connection: bool = False) -> None:
        # nats-py upgrades to TLS only on `tls_required`, after this call, reading the same
        # dict: a server's first INFO is where TLS is insisted on (see the module's text)
        if initial_connection and not info.get("tls_required") and self._wants_tls():
            if not info.get("tls_available"):
                raise TlsNotOffered
            info["tls_required"] = True
        await super()._process_info(info, initial_connection)

    def _wants_tls(self) -> bool:
        """A `tls://` server, or a TLS context with `nats://` (websockets do their own)."""
        server = self._current_server
        scheme = server.uri.scheme if server is not None else "nats"
        return scheme == "tls" or (scheme == "nats" and "tls" in self.options)
