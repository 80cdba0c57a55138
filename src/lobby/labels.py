"""This node's own labels (SPEC §4): LABELS, label files, and the runtime file.

The runtime file is the only one lobbyd writes. Writes are serialized by one lock
and atomic (hidden temporary file in the same directory, fsync, rename, fsync of the
directory) so concurrent requests lose nothing and a crash leaves either the old or
the new file, never a torn one. The directory reader skips hidden files, so it never
sees a temporary file mid-write.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import TYPE_CHECKING, Final

from lobby._ratelimit import RateLimitedLog
from lobby.files import remove_stale_temp_files, write_atomic
from lobby.model import LabelError, clean_label, label_problem

if TYPE_CHECKING:
    from lobby.inotify import DirWatch

log = logging.getLogger("lobby.labels")


def parse_env_labels(text: str) -> list[str]:
    """LABELS: comma-separated, each item trimmed, empty items dropped.

    An invalid item (a control character, over 1024 bytes) is a config mistake:
    raises LabelError naming it.
    """
    return [clean_label(item) for item in text.split(",") if item.strip()]


def parse_label_lines(text: str) -> list[str]:
    """A label file: one label per line, trimmed; blank lines and `#` comments skipped.

    Invalid lines are skipped with a warning: a bad line in one file must not take
    every other label of the node down with it.
    """
    out = []
    for line in text.splitlines():
        label = line.strip()
        if not label or label.startswith("#"):
            continue
        problem = label_problem(label)
        if problem is not None:
            log.warning("skipping label %r: %s", label[:80], problem)
            continue
        out.append(clean_label(label))
    return out


def parse_label_body(text: str) -> list[str]:
    """An API request body: one label per line, blank lines ignored.

    Strict, unlike files: any invalid line fails the whole request (LabelError).
    Runtime labels are stored in a label file, where a line starting with `#` is a
    comment, so such a label would vanish: refuse it rather than lose it.
    """
    labels = [clean_label(line) for line in text.split("\n") if line.strip()]
    for label in labels:
        if label.startswith("#"):
            raise LabelError(
                f"invalid label {label[:80]!r}: a runtime label cannot start with '#' "
                "(label files read such a line as a comment)"
            )
    return labels


def _skipped(name: str) -> bool:
    """Hidden files and editors' / our own temporary files are not label files."""
    return name.startswith(".") or name.endswith((".tmp", "~"))


def read_label_dir(path: Path) -> list[str]:
    """Labels of every regular, non-hidden file in `path`; [] when it is missing.

    A one-shot read with no memory: a file or directory that cannot be read
    contributes nothing. The daemon uses `LocalLabels`, which keeps the last good
    content of a source that fails to read.
    """
    return list(LocalLabels((), path, ".none").read())


_Stamp = tuple[object, ...]
_DIR: Final = "."  # the directory itself, as a source name in `failing`


class LocalLabels:
    """The union of LABELS and the label directory, re-read on demand.

    Labels never vanish on an I/O error. Each source -- the directory listing and
    every label file, the runtime file included -- keeps its last good content when
    it cannot be read for any reason but "it does not exist" (EACCES, EIO, EMFILE on
    a node whose descriptors an attacker holds, an NFS hiccup). Only a read that
    succeeds and shows a file or the directory gone removes its labels. Each failed
    read is counted (`read_errors`, `failing`: plain attributes for /v1/stats and
    /metrics) and logged when a source starts failing, rate-limited.

    `read()` re-reads everything (a watcher event, the API, start-up). `refresh()`
    is the periodic path, run every KEEP_ALIVE: it only stats the directory and the
    files it knows (a stat needs no file descriptor) and re-reads when something
    changed or the last read failed, so nothing is opened per keep-alive.
    """

    def __init__(
        self,
        env_labels: Iterable[str],
        path: str | Path,
        runtime_name: str,
    ) -> None:
        self.env_labels = tuple(env_labels)
        self.path = Path(path)
        self.runtime = RuntimeLabels(self.path / runtime_name, on_write=self._runtime_written)
        self.read_errors = 0  # failed reads of any source, counted per source and attempt
        self.failing: set[str] = set()  # sources currently held at their last good content
        self._files: dict[str, tuple[str, ...]] = {}  # last good content per file name
        self._names: tuple[str, ...] = ()  # every label file name the last listing showed
        self._stamp: _Stamp | None = None  # what the last complete read saw; None: re-read
        self._log = RateLimitedLog(log, burst=5, every=60)

    def current(self) -> tuple[str, ...]:
        """The labels as last read, without touching the disk."""
        union = set(self.env_labels)
        for labels in self._files.values():
            union.update(labels)
        return tuple(sorted(union))

    def read(self) -> tuple[str, ...]:
        """Re-read the directory and every label file; see the class docstring."""
        # Stat before reading (the directory before listing it, the files before
        # opening them): a change made during the read shows at the next check.
        dir_stamp = self._dir_stamp()
        try:
            with os.scandir(self.path) as listing:
                entries = sorted(listing, key=lambda e: e.name)
        except (FileNotFoundError, NotADirectoryError):  # a successful read: it is gone
            self._files = {}
            self._names = ()
            self.failing.clear()
            self._stamp = (dir_stamp, ()) if dir_stamp is not None else None
            return self.current()
        except OSError as exc:
            self._failed(_DIR, f"cannot list label directory {self.path}", exc)
            self._stamp = None
            return self.current()
        self._recovered(_DIR)
        names: list[str] = []
        errors: dict[str, OSError] = {}
        for entry in entries:
            if _skipped(entry.name):
                continue
            try:
                if not entry.is_file():  # a directory, a dangling link: not a label file
                    continue
            except OSError as exc:  # cannot even stat it: unreadable, not gone
                errors[entry.name] = exc
            names.append(entry.name)
        self._names = tuple(names)
        file_stamps = self._file_stamps()
        files: dict[str, tuple[str, ...]] = {}
        for name in names:
            path = self.path / name
            try:
                if name in errors:
                    raise errors[name]
                with open(path, encoding="utf-8", errors="replace") as fh:
                    text = fh.read()
            except FileNotFoundError:  # removed since the listing: gone
                continue
            except OSError as exc:
                errors[name] = exc
                self._failed(name, f"cannot read label file {path}", exc)
                if name in self._files:
                    files[name] = self._files[name]
                continue
            files[name] = tuple(parse_label_lines(text))
            self._recovered(name)
        self.failing.intersection_update({_DIR, *names})
        self._files = files
        # a read that failed somewhere is retried at the next check
        ok = not errors and dir_stamp is not None and file_stamps is not None
        self._stamp = (dir_stamp, file_stamps) if ok else None
        return self.current()

    def refresh(self) -> tuple[str, ...]:
        """The periodic check: re-read only when a stat shows a change or a failure."""
        if self._stamp is not None:
            now = (self._dir_stamp(), self._file_stamps())
            if None not in now and now == self._stamp:
                return self.current()
        return self.read()

    # -- internals ----------------------------------------------------------------------

    def _dir_stamp(self) -> _Stamp | None:
        """What stat says of the directory (a stat needs no descriptor); None: unknown."""
        try:
            st = os.stat(self.path)
        except (FileNotFoundError, NotADirectoryError):
            return ("missing",)
        except OSError:
            return None
        return (st.st_ino, st.st_mtime_ns, st.st_ctime_ns)

    def _file_stamps(self) -> _Stamp | None:
        """What stat says of each file the last listing showed; None: unknown."""
        files: list[object] = []
        for name in self._names:
            try:
                fs = os.stat(self.path / name)
            except FileNotFoundError:
                files.append((name, None))
                continue
            except OSError:
                return None
            files.append((name, fs.st_ino, fs.st_size, fs.st_mtime_ns, fs.st_ctime_ns))
        return tuple(files)

    def _failed(self, source: str, what: str, exc: OSError) -> None:
        self.read_errors += 1
        if source in self.failing:
            return  # already reported; counted
        self.failing.add(source)
        self._log(
            logging.WARNING,
            "%s: %s; keeping its last good labels until it can be read",
            what,
            exc.strerror or exc,
        )

    def _recovered(self, source: str) -> None:
        if source in self.failing:
            self.failing.discard(source)
            where = self.path if source == _DIR else self.path / source
            log.info("label source %s can be read again", where)

    def _runtime_written(self, labels: list[str]) -> None:
        """The runtime file now holds exactly `labels` (we just wrote or read it)."""
        if _skipped(self.runtime.path.name):
            return  # a hidden runtime file is not read as a label file either
        self._files[self.runtime.path.name] = tuple(labels)
        self._stamp = None  # its stat changed: the next check re-reads


class RuntimeLabels:
    """The runtime label file, managed through the API."""

    def __init__(self, path: Path, on_write: Callable[[list[str]], None] | None = None) -> None:
        self.path = path
        self._lock = asyncio.Lock()
        self._on_write = on_write  # told the file's content after every add or delete

    def remove_stale_temp_files(self) -> None:
        """Remove temporary files that a write killed mid-way left (at startup only)."""
        remove_stale_temp_files(self.path)

    def read(self) -> list[str]:
        """The file's labels; [] when it does not exist.

        Any other OSError is raised: a read-modify-write must not start from nothing
        because the file could not be read (the API answers 500 and writes nothing).
        """
        try:
            text = self.path.read_text(encoding="utf-8", errors="replace")
        except (FileNotFoundError, NotADirectoryError):  # no file, no runtime labels
            return []
        return parse_label_lines(text)

    async def add(
        self, labels: Iterable[str], check: Callable[[list[str]], None] | None = None
    ) -> None:
        """Add labels; `check(new_runtime_labels)` may refuse them with LabelError."""
        new = list(labels)
        async with self._lock:
            written = await asyncio.to_thread(self._update, new, [], check)
            if self._on_write is not None:
                self._on_write(written)

    async def delete(self, labels: Iterable[str]) -> None:
        gone = list(labels)
        async with self._lock:
            written = await asyncio.to_thread(self._update, [], gone, None)
            if self._on_write is not None:
                self._on_write(written)

    def _update(
        self, add: list[str], delete: list[str], check: Callable[[list[str]], None] | None
    ) -> list[str]:
        """Apply the change; returns the labels the file holds afterwards."""
        current = self.read()
        merged = sorted((set(current) | set(add)) - set(delete))
        if check is not None:
            check(merged)
        if merged == sorted(set(current)):  # nothing to change: no write, no mkdir
            return merged
        write_atomic(self.path, "".join(label + "\n" for label in merged))
        return merged


__all__ = [
    "LabelError",
    "LocalLabels",
    "RuntimeLabels",
    "parse_env_labels",
    "parse_label_body",
    "parse_label_lines",
    "read_label_dir",
    "write_atomic",
]


async def watch_label_dir(
    path: Path, changed: Callable[[], object], stopping: asyncio.Event
) -> None:
    """Call `changed()` whenever the label directory may have changed, until `stopping`
    (`watch_dir`). The announcer also checks every KEEP_ALIVE, so a missed event costs
    at most one keep-alive."""
    await watch_dir(
        path, changed, stopping, what="label directory", fallback="checking it every KEEP_ALIVE"
    )


async def watch_dir(
    path: Path,
    changed: Callable[[], object],
    stopping: asyncio.Event,
    *,
    what: str,
    fallback: str,
) -> None:
    """Call `changed()` whenever directory `path` may have changed, until `stopping`.

    Its inotify events (`lobby.inotify`) are read by the event loop; a burst of edits
    within 50 ms is one call. A directory that does not exist yet (or any more) is
    polled every 0.5 s until it appears. A watch that cannot start (EMFILE or ENOSPC:
    no inotify instance or watch left) is retried with back-off, 0.5 s doubling to
    10 s, with one rate-limited warning naming `what` is watched and what is done
    meanwhile (`fallback`).
    """
    is_dir = path.is_dir  # a stat of a local directory: cheap enough for the loop
    fail_log = RateLimitedLog(log, burst=1, every=300)
    delay = 0.5
    while not stopping.is_set():
        if not is_dir():
            await _sleep_unless(stopping, 0.5)
            if is_dir():
                changed()
            continue
        from lobby.inotify import DirWatch  # only once there is a directory to watch

        try:
            watch = DirWatch(path)
        except OSError as exc:
            if is_dir():
                fail_log(
                    logging.WARNING,
                    "cannot watch %s %s: %s; %s and retrying the watch",
                    what,
                    path,
                    exc.strerror or exc,
                    fallback,
                )
        else:
            with watch:
                await _follow(watch, changed, stopping)
            if stopping.is_set():
                return
            delay = 0.5  # the back-off is for watches that cannot start, one after another
            changed()  # the directory went: what it held went with it
            continue
        delay = min(delay * 2, 10.0)
        changed()
        await _sleep_unless(stopping, delay)


async def _follow(watch: DirWatch, changed: Callable[[], object], stopping: asyncio.Event) -> None:
    """Call `changed()` after each burst of events, until the directory goes or `stopping`."""
    loop = asyncio.get_running_loop()
    ready = asyncio.Event()
    loop.add_reader(watch.fd, ready.set)
    stopper = asyncio.ensure_future(stopping.wait())
    stopper.add_done_callback(lambda _: ready.set())
    try:
        while True:
            await ready.wait()
            if stopping.is_set():
                return
            ready.clear()
            _, gone = watch.drain()
            if not gone:
                await asyncio.sleep(0.05)  # the rest of the burst: one call for it
                ready.clear()
                gone = watch.drain()[1]
            if gone:
                return
            changed()
    finally:
        loop.remove_reader(watch.fd)
        stopper.cancel()


async def _sleep_unless(stopping: asyncio.Event, seconds: float) -> None:
    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout(seconds):
            await stopping.wait()
