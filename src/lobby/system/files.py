"""Atomic file replacement: a reader, or a crash, sees the old file or the new one.

The new text goes to a hidden temporary file in the same directory (`.NAME.XXXX.tmp`),
is fsynced, renamed over the destination, and the directory is fsynced: a SIGKILL or
a power cut at any point leaves either the old or the new file, never a torn one, and
at worst a stale temporary file, which `remove_stale_temp_files` clears at the next
start. Used for the runtime label file (lobby.labels) and rendered templates
(lobby.templates).
"""

from __future__ import annotations

import contextlib
import logging
import os
import tempfile
from pathlib import Path

log = logging.getLogger("lobby.files")

NEW_FILE_MODE = 0o644


def write_atomic(path: Path, data: str | bytes, *, keep_owner: bool = False) -> None:
    """Replace `path` with `data` (str: UTF-8) atomically and durably.

    Without `keep_owner` the file gets mode 0644 and our owner. With it, an existing
    destination keeps its mode, and its owner and group as far as we may set them (a
    non-root lobbyd can only give a file its own user; it logs a warning then); a new
    file gets mode 0644. The parent directory is created when missing.
    """
    old = None
    if keep_owner:
        with contextlib.suppress(FileNotFoundError):
            old = os.stat(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data.encode() if isinstance(data, str) else data)
            fh.flush()
            os.fsync(fh.fileno())
        os.chmod(tmp, NEW_FILE_MODE if old is None else old.st_mode & 0o7777)
        if old is not None:
            _chown_like(tmp, old, path)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    dir_fd = os.open(path.parent, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def _chown_like(tmp: str, old: os.stat_result, path: Path) -> None:
    mine = os.stat(tmp)
    if (mine.st_uid, mine.st_gid) == (old.st_uid, old.st_gid):
        return
    try:
        os.chown(tmp, old.st_uid, old.st_gid)
    except PermissionError:
        # a user may still give the file a group it belongs to
        with contextlib.suppress(PermissionError):
            os.chown(tmp, -1, old.st_gid)
        log.warning(
            "%s: cannot keep owner %d:%d (not permitted), the new file belongs to %d",
            path,
            old.st_uid,
            old.st_gid,
            mine.st_uid,
        )


def remove_stale_temp_files(path: Path) -> None:
    """Remove the temporary files that writes of `path` killed mid-way left behind."""
    try:
        stale = list(path.parent.glob(f".{path.name}.*.tmp"))
    except OSError:
        return
    for tmp in stale:
        try:
            tmp.unlink()
            log.info("removed %s, left by an interrupted write", tmp)
        except OSError as exc:
            log.warning("cannot remove stale temporary file %s: %s", tmp, exc)
