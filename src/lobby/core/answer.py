"""Ready HTTP bodies: a JSON answer, its gzip copy beside it, or a stream of slices.

The registry caches answers per query until it changes (SPEC §5, §11). Two shapes:

- `Answer`: the whole body as one `bytes`, kept in the cache. Its gzip copy (level 1,
  about 13x smaller for discovery lists) is made the first time a client accepts
  gzip and kept beside it, so Prometheus's HTTP SD client (which sends
  `Accept-Encoding: gzip`) costs one compression per registry change, not one per
  request.
- `Slices`: an answer too big to keep (above `KEEP_MAX`; the full list of about
  14,000 nodes and more). It holds no body: every request encodes the list slice by
  slice while it is sent, so serving it leaves no large allocation behind. Its gzip
  copy is small (1/15) and is kept.

Compression is ISA-L's (the `isal` package) where it is installed: level 1 compresses
the 3 MiB list of 10,000 nodes in 1.6 ms, against zlib's 6-10 ms, for an answer 8 %
larger; an answer that shows `last_check` is compressed anew every second under
keep-alive traffic, on the event loop, so this is what a request can wait behind.

Lists are encoded by orjson straight from plain dicts whose labels are the registry's
own tuples: at 10,000 nodes that is 1.5-2.5 ms for the 3 MiB list, five times faster
than building `Discovery` objects first. A slice of a list encodes, with
`OPT_INDENT_2`, to exactly the inner lines of the whole list, so slices joined with
",\\n" between "[\\n" and "\\n]\\n" are byte for byte the answer `pretty()` gives.
"""

from __future__ import annotations

import zlib
from collections.abc import Callable, Iterable, Iterator
from typing import Any, Final

import orjson

# Bodies up to this size are kept in the answer cache; bigger ones are encoded per
# request (`Slices`). The full list is about 300 bytes per node.
KEEP_MAX: Final = 4 * 1024 * 1024
# Below this a gzip copy saves too little to be worth a header and a compression.
GZIP_MIN: Final = 1024
GZIP_LEVEL: Final = 1
SLICE: Final = 512  # nodes per encoded slice of a streamed list

_INDENT: Final = orjson.OPT_INDENT_2
_PRETTY: Final = orjson.OPT_INDENT_2 | orjson.OPT_APPEND_NEWLINE
EMPTY_LIST: Final = b"[]\n"

Row = dict[str, object]


_codec: Any = None


def _deflate() -> Any:
    """isal_zlib when installed (zlib's interface, 4x faster at level 1), else zlib."""
    global _codec
    if _codec is None:
        try:
            from isal import isal_zlib

            _codec = isal_zlib
        except ImportError:  # pragma: no cover - isal is a dependency
            _codec = zlib
    return _codec


def gzip_bytes(chunks: Iterable[bytes]) -> bytes:
    """One gzip member of the concatenated chunks."""
    z = _deflate().compressobj(GZIP_LEVEL, zlib.DEFLATED, 31)
    out = [z.compress(chunk) for chunk in chunks]
    out.append(z.flush())
    return b"".join(out)


class Answer:
    """A body kept whole, with its gzip copy made on first demand."""

    __slots__ = ("_gzip", "body", "sent")

    def __init__(self, body: bytes) -> None:
        self.body = body
        self._gzip: bytes | None = None
        # what a server made to send this body (lobby.api.dispatch: the whole
        # response per variant), kept as long as the answer is
        self.sent: dict[object, tuple[int, object]] = {}

    def __len__(self) -> int:
        return len(self.body)

    def gzip(self) -> bytes | None:
        """The gzip copy, or None when the body is too small to be worth one."""
        if self._gzip is None and len(self.body) >= GZIP_MIN:
            self._gzip = _deflate().compress(self.body, GZIP_LEVEL, 31)
        return self._gzip


class Slices:
    """A list too big to keep: its slices are encoded anew by every `chunks()`."""

    __slots__ = ("_chunks", "_gzip")

    def __init__(self, chunks: Callable[[], Iterator[bytes]]) -> None:
        self._chunks = chunks
        self._gzip: bytes | None = None

    def chunks(self) -> Iterator[bytes]:
        return self._chunks()

    @property
    def body(self) -> bytes:
        """The whole body at once (for callers that need bytes, like the callback)."""
        return b"".join(self._chunks())

    def gzip(self) -> bytes:
        if self._gzip is None:
            self._gzip = gzip_bytes(self._chunks())
        return self._gzip

    @property
    def gzipped(self) -> bytes | None:
        """The gzip copy when one was made, else None."""
        return self._gzip

    def gzip_chunks(self) -> Iterator[bytes]:
        """The gzip copy made slice by slice while it is sent (compressing the 14.6 MiB
        list of 50,000 nodes at once held the event loop 40-50 ms), kept once whole."""
        z = _deflate().compressobj(GZIP_LEVEL, zlib.DEFLATED, 31)
        out: list[bytes] = []
        for chunk in self._chunks():
            piece = z.compress(chunk)  # ISA-L's keeps its output until flush: b"" then
            out.append(piece)
            yield piece  # even b"": the sender's turn of the loop comes between slices
        out.append(z.flush())
        yield out[-1]
        self._gzip = b"".join(out)


def encode_list(rows: list[Row]) -> bytes:
    """The whole indented list, as `lobby.core.model.pretty` writes it."""
    return orjson.dumps(rows, option=_PRETTY)


def stream_list(slices: Iterable[list[Row]]) -> Iterator[bytes]:
    """The indented list of every row of `slices`, one chunk per non-empty slice."""
    first = True
    for rows in slices:
        if not rows:
            continue
        inner = orjson.dumps(rows, option=_INDENT)[2:-2]  # without "[\n" and "\n]"
        yield (b"[\n" if first else b",\n") + inner
        first = False
    yield EMPTY_LIST if first else b"\n]\n"
