"""Linux inotify for one directory, read by the event loop: no thread, no dependency.

lobbyd watches two directories (the label directory, a CHECKS_FILE's) for files that
appear, change or go. watchfiles did that with a Rust watcher in a thread of its own,
anyio and a polling fallback: 3.2 MiB of an idle daemon's resident memory for two
directories (bench/README.md, "Memory."). Here the kernel's inotify descriptor is
registered with the event loop (`loop.add_reader`) and its events are drained with
`os.read`; ctypes calls the two libc functions Python has no binding for.

What is watched is the directory's own entries (IN_ONLYDIR, not recursive): a file
created, modified, closed after writing, attributes changed, moved in or out, deleted; and the
directory itself deleted or moved, after which the watch is gone (`DirWatch.drain`
says so) and the caller starts over. An event queue overflow (IN_Q_OVERFLOW) only
means "something changed", which is all the callers want to know.
"""

from __future__ import annotations

import ctypes
import os
import struct
from typing import Final

IN_MODIFY: Final = 0x0002
IN_ATTRIB: Final = 0x0004
IN_CLOSE_WRITE: Final = 0x0008
IN_CLOSE_NOWRITE: Final = 0x0010
IN_OPEN: Final = 0x0020
IN_MOVED_FROM: Final = 0x0040
IN_MOVED_TO: Final = 0x0080
IN_CREATE: Final = 0x0100
IN_DELETE: Final = 0x0200
IN_DELETE_SELF: Final = 0x0400
IN_MOVE_SELF: Final = 0x0800
IN_UNMOUNT: Final = 0x2000
IN_Q_OVERFLOW: Final = 0x4000
IN_IGNORED: Final = 0x8000
IN_ONLYDIR: Final = 0x01000000
IN_ISDIR: Final = 0x40000000
IN_NONBLOCK: Final = os.O_NONBLOCK
IN_CLOEXEC: Final = os.O_CLOEXEC

WATCHED: Final = (
    IN_MODIFY
    | IN_ATTRIB
    | IN_CLOSE_WRITE
    | IN_MOVED_FROM
    | IN_MOVED_TO
    | IN_CREATE
    | IN_DELETE
    | IN_DELETE_SELF
    | IN_MOVE_SELF
)
# ...and who has a file open (lobby.labels: a file opened for writing may be torn);
# our own reads make these events too, so a watch that re-reads on any event must not
OPENS: Final = IN_OPEN | IN_CLOSE_NOWRITE
GONE: Final = IN_DELETE_SELF | IN_MOVE_SELF | IN_UNMOUNT | IN_IGNORED  # the watch ends

_EVENT: Final = struct.Struct("iIII")  # struct inotify_event: wd, mask, cookie, len; name
_libc: ctypes.CDLL | None = None


def _lib() -> ctypes.CDLL:
    global _libc
    if _libc is None:
        libc = ctypes.CDLL(None, use_errno=True)  # the C library this process runs on
        libc.inotify_init1.argtypes = [ctypes.c_int]
        libc.inotify_init1.restype = ctypes.c_int
        libc.inotify_add_watch.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_uint32]
        libc.inotify_add_watch.restype = ctypes.c_int
        _libc = libc
    return _libc


def _error(path: os.PathLike[str] | str | None = None) -> OSError:
    code = ctypes.get_errno()
    return OSError(code, os.strerror(code), *((os.fspath(path),) if path is not None else ()))


class DirWatch:
    """An inotify descriptor watching one directory; `fd` is for `loop.add_reader`.

    `mask` is what to watch, WATCHED by default (add OPENS to see opens and reads).
    Raises OSError when it cannot start: ENOENT or ENOTDIR (no such directory),
    EMFILE (the inotify instances or descriptors are used up), ENOSPC (the watches
    are), EACCES.
    """

    def __init__(self, path: os.PathLike[str] | str, mask: int = WATCHED) -> None:
        libc = _lib()
        fd = libc.inotify_init1(IN_NONBLOCK | IN_CLOEXEC)
        if fd < 0:
            raise _error()
        if libc.inotify_add_watch(fd, os.fsencode(path), mask | IN_ONLYDIR) < 0:
            exc = _error(path)
            os.close(fd)
            raise exc
        self.fd = fd

    def drain(self) -> tuple[int, bool]:
        """Read every pending event: how many, and whether the directory itself went
        (deleted, moved away, unmounted: the watch is over)."""
        events, gone = self.events()
        return len(events), gone

    def events(self) -> tuple[list[tuple[int, str]], bool]:
        """Read every pending event: each one's mask and file name ("" for the directory
        itself, or for a queue overflow), in order, and whether the directory itself
        went (deleted, moved away, unmounted: the watch is over)."""
        events: list[tuple[int, str]] = []
        gone = False
        while True:
            try:
                data = os.read(self.fd, 65536)
            except BlockingIOError:
                return events, gone
            offset = 0
            while offset + _EVENT.size <= len(data):
                _, mask, _, size = _EVENT.unpack_from(data, offset)
                start = offset + _EVENT.size
                offset = start + size
                raw = data[start:offset].rstrip(b"\0")  # the name is NUL-padded
                events.append((mask, os.fsdecode(raw)))
                if mask & GONE:
                    gone = True

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1

    def __enter__(self) -> DirWatch:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
