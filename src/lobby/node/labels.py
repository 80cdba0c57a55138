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
import errno
import logging
import os
import stat
import threading
import time
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Final

from lobby.core.model import LabelError, clean_label, label_problem
from lobby.system.files import remove_stale_temp_files, write_atomic
from lobby.system.ratelimit import RateLimitedLog

if TYPE_CHECKING:
    from lobby.system.inotify import DirWatch

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

SETTLE_QUIET: Final = 2.0  # a file written in place and not closed is read once quiet this long
SETTLE_LONGEST: Final = 20.0  # ...or this long after its first unclosed write, at the latest
READ_TIMEOUT: Final = 5.0  # a read of the directory taking longer is reported as hung
BURST: Final = 0.05  # events within this long are one read
AFTER: Final = -1  # Writes._reads: the read closed the file
NEXT: Final = -2  # ...and someone opened it again since: a new version, not the read's
# The kernel queues a change's event an instant after the change is visible (a reader on
# another core can see a file truncated before its IN_MODIFY is queued): a read is
# judged by the events of this long after it ended. (A writer's IN_OPEN comes before
# its O_TRUNC: see `Writes`. This is for truncate(2), which opens nothing.)
GRACE: Final = 0.02


class NotRegularFile(OSError):
    """A label directory entry that is not a regular file (a FIFO, a device): skipped."""


def read_regular_file(path: Path) -> str:
    """The text of `path`, a regular file; NotRegularFile when it is anything else.

    Opened with O_NONBLOCK, so a FIFO that replaced a file after the listing cannot
    hang the open (SPEC §4 reads "every regular file"; the listing skips the rest).
    """
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise NotRegularFile(errno.EINVAL, "not a regular file", str(path))
        with open(fd, encoding="utf-8", errors="replace", closefd=False) as fh:
            return fh.read()
    finally:
        os.close(fd)


class Writes:
    """Which label files are being written in place, from the watch's inotify events.

    The pure part of the label watch: no I/O, the clock injected. A file opened
    (IN_OPEN) or modified (IN_MODIFY: written, truncated) and not closed after
    writing yet is "open": a read may find it empty or half-written, so it keeps its
    last good labels until it settles -- closed after writing (IN_CLOSE_WRITE),
    closed by a reader that wrote nothing (IN_CLOSE_NOWRITE after an open with no
    modify), moved, deleted, or quiet for `quiet` seconds (a writer that keeps it
    open, truncate(2) with no open), or `longest` seconds after it opened at the
    latest (a writer that never stops). Every other event of a label file (create,
    close after writing, move, delete, attributes) asks for a re-read; an open, a
    modify or a reader's close does not.

    Opens are watched because the kernel queues a truncation's IN_MODIFY an instant
    after the file shows empty (for as long as the writer is not scheduled again,
    on a busy machine), but queues the writer's IN_OPEN before its O_TRUNC: a read
    that finds the file truncated finds that IN_OPEN queued when it ends.

    It also judges the read in progress (`begin`, `stale`): what it saw of a file
    may be torn, so it is not taken, when the file changed or someone else opened it
    before the read closed it (the read's own open and close are events too: the
    first close after an open is taken for the read's), or when it was modified
    after that with no open first (a truncate(2), a writer holding it open). What a
    writer opening it after the read closed it does is the next version: no harm.
    """

    def __init__(
        self,
        clock: Callable[[], float] = time.monotonic,
        quiet: float = SETTLE_QUIET,
        longest: float = SETTLE_LONGEST,
    ) -> None:
        self.clock = clock
        self.quiet = quiet
        self.longest = longest
        self._open: dict[str, tuple[float, float, bool]] = {}  # name: first, last, modified
        # since `begin`, per file the read opens: its IN_OPENs until the read closed it
        # (a positive count), then AFTER (closed), then NEXT (opened again: done)
        self._reads: dict[str, int] = {}
        self._stale: set[str] = set()  # files whose read may be torn
        self._overflow = False  # events lost since `begin`: any file may have changed

    def event(self, mask: int, name: str) -> bool:
        """Take one inotify event; True when it asks for a re-read now."""
        from lobby.system.inotify import (
            IN_CLOSE_NOWRITE,
            IN_CLOSE_WRITE,
            IN_DELETE,
            IN_ISDIR,
            IN_MODIFY,
            IN_MOVED_FROM,
            IN_MOVED_TO,
            IN_OPEN,
            IN_Q_OVERFLOW,
        )

        if mask & IN_Q_OVERFLOW:  # lost events: anything may have changed
            self._overflow = True
            return True
        if not mask & ~(IN_OPEN | IN_CLOSE_NOWRITE | IN_ISDIR):  # an open, a reader's close
            if name and not mask & IN_ISDIR and not _skipped(name):
                self._opened(name, opening=bool(mask & IN_OPEN))
            return False  # nothing changed (our own reads make these too)
        if not name:  # the directory itself (its attributes; its end is the watch's)
            return True
        if _skipped(name):  # hidden and temporary files are not label files
            return False
        if self._reads.get(name, 0) != NEXT:
            self._stale.add(name)  # during the read, or after it with no open first
        if mask & IN_ISDIR:  # a subdirectory is not a label file; it may replace one
            return True
        if mask & IN_MODIFY and not mask & IN_CLOSE_WRITE:
            now = self.clock()
            first = self._open.get(name, (now, now, True))[0]
            self._open[name] = (first, now, True)
            return False
        if mask & (IN_CLOSE_WRITE | IN_MOVED_FROM | IN_MOVED_TO | IN_DELETE):
            self._open.pop(name, None)
        return True

    def _opened(self, name: str, opening: bool) -> None:
        now = self.clock()
        seen = self._reads.get(name, 0)
        if opening:
            if seen >= 1:  # someone else opened it while the read had it open
                self._stale.add(name)
            if seen == AFTER:
                self._reads[name] = NEXT
            elif seen >= 0:
                self._reads[name] = seen + 1
            first, _, modified = self._open.get(name, (now, now, False))
            self._open[name] = (first, now, modified)
        else:
            if seen >= 1:  # the first close after an open: the read's own
                self._reads[name] = AFTER
            if name in self._open and not self._open[name][2]:
                del self._open[name]  # a reader closed it, and nobody wrote meanwhile

    def touch(self, name: str) -> None:
        """`name` changed through us (the runtime file): a read in progress is stale."""
        self._stale.add(name)

    def unsettled(self) -> frozenset[str]:
        """Files open or written in place, not settled yet: their last good labels stand."""
        now = self.clock()
        return frozenset(
            name
            for name, (first, last, _) in self._open.items()
            if now - last < self.quiet and now - first < self.longest
        )

    def expire(self) -> tuple[bool, float | None]:
        """Forget the writes that settled by time: whether any did (a re-read is due),
        and in how many seconds the next one will (None: no file is open)."""
        now = self.clock()
        settled = False
        wait: float | None = None
        for name, (first, last, _) in list(self._open.items()):
            left = min(last + self.quiet, first + self.longest) - now
            if left <= 0:
                del self._open[name]
                settled = True
            elif wait is None or left < wait:
                wait = left
        return settled, wait

    def begin(self) -> None:
        """A read starts: from now on, `stale` names what changed during it."""
        self._reads.clear()
        self._stale.clear()
        self._overflow = False

    def stale(self, name: str) -> bool:
        """Whether what the read in progress saw of `name` (a file it opened) may be torn."""
        return self._overflow or name in self._stale


@dataclass
class _Scan:
    """What one read of the directory saw (made in the reader thread, applied on the loop)."""

    dir_stamp: _Stamp | None
    unchanged: bool = False  # a check whose stats show no change: nothing was read
    missing: bool = False  # the directory is not there
    list_error: OSError | None = None
    names: tuple[str, ...] = ()  # the label files the listing showed
    files: dict[str, tuple[str, ...]] = field(default_factory=dict)  # read now
    errors: dict[str, OSError] = field(default_factory=dict)  # could not be read
    kept: frozenset[str] = frozenset()  # open for writing: not read
    file_stamps: _Stamp | None = None


class _Job:
    """One read of the label directory, in a daemon thread of its own.

    A daemon thread, not an executor's: a read hung for good (a dead NFS server)
    must not hold up the exit, which joins an executor's threads.
    """

    def __init__(self, work: Callable[[_Job], _Scan]) -> None:
        self.started = time.monotonic()
        self.reading = ""  # the file being read, for the log (written by the thread)
        self.result: _Scan | None = None
        self.error: BaseException | None = None
        self.done = threading.Event()
        self._lock = threading.Lock()
        self._callbacks: list[Callable[[], None]] = []
        self._work = work
        threading.Thread(target=self._run, name="lobby-labels", daemon=True).start()

    def _run(self) -> None:
        try:
            self.result = self._work(self)
        except BaseException as exc:  # handed to whoever waits; never lost in a thread
            self.error = exc
        with self._lock:
            self.done.set()
            callbacks, self._callbacks = self._callbacks, []
        for callback in callbacks:
            callback()

    def when_done(self, callback: Callable[[], None]) -> None:
        """Call `callback()` when the read ends (in its thread), or now if it has."""
        with self._lock:
            if not self.done.is_set():
                self._callbacks.append(callback)
                return
        callback()

    def scan(self) -> _Scan:
        if self.error is not None:
            raise self.error
        assert self.result is not None
        return self.result


class LocalLabels:
    """The union of LABELS and the label directory, re-read on demand.

    Labels never vanish on an I/O error. Each source -- the directory listing and
    every label file, the runtime file included -- keeps its last good content when
    it cannot be read for any reason but "it does not exist" (EACCES, EIO, EMFILE on
    a node whose descriptors an attacker holds, an NFS hiccup). Only a read that
    succeeds and shows a file or the directory gone removes its labels. Each failed
    read is counted (`read_errors`, `failing`: plain attributes for /v1/stats and
    /metrics) and logged when a source starts failing, rate-limited.

    Nor do they vanish while a file is rewritten in place: a file the watch saw
    modified and not closed yet keeps its last good content until it settles
    (`Writes`), and a file that changed while a read was under way keeps it until
    the next read.

    Every read runs in a thread, one at a time: a read that hangs (NFS, a FIFO)
    leaves the event loop free and the labels as they were; it is reported once
    after `read_timeout` seconds, and no other read starts before it returns.

    `read()` re-reads everything (start-up, tests), waiting up to `read_timeout`.
    `watch()` is the daemon's task: it follows the directory with inotify, re-reads
    it when a file is created, closed after writing, moved or deleted, and serves
    `request_check()`, the periodic path run every KEEP_ALIVE: it only stats the
    directory and the files it knows (a stat needs no file descriptor) and re-reads
    when something changed or the last read failed, so nothing is opened per
    keep-alive. `refresh()` is that check, waited for.
    """

    def __init__(
        self,
        env_labels: Iterable[str],
        path: str | Path,
        runtime_name: str,
        *,
        clock: Callable[[], float] = time.monotonic,
        read_file: Callable[[Path], str] = read_regular_file,
        read_timeout: float = READ_TIMEOUT,
    ) -> None:
        self.env_labels = tuple(env_labels)
        self.path = Path(path)
        self.runtime = RuntimeLabels(self.path / runtime_name, on_write=self._runtime_written)
        self.read_errors = 0  # failed reads of any source, counted per source and attempt
        self.failing: set[str] = set()  # sources currently held at their last good content
        self.hung_reads = 0  # reads that took over read_timeout
        self.writes = Writes(clock)
        self.read_timeout = read_timeout
        self._read_file = read_file
        self._files: dict[str, tuple[str, ...]] = {}  # last good content per file name
        self._names: tuple[str, ...] = ()  # every label file name the last listing showed
        self._stamp: _Stamp | None = None  # what the last complete read saw; None: re-read
        self._log = RateLimitedLog(log, burst=5, every=60)
        self._hung_log = RateLimitedLog(log, burst=1, every=300)
        self._job: _Job | None = None  # the read in progress
        self._watch: DirWatch | None = None  # while the directory is watched
        self._wanted: asyncio.Event | None = None  # while `watch` runs: a read is due
        self._full = False  # ...a full one, not only a check

    def current(self) -> tuple[str, ...]:
        """The labels as last read, without touching the disk."""
        union = set(self.env_labels)
        for labels in self._files.values():
            union.update(labels)
        return tuple(sorted(union))

    def read(self) -> tuple[str, ...]:
        """Re-read the directory and every label file; see the class docstring."""
        return self._read_waiting(check_only=False)

    def refresh(self) -> tuple[str, ...]:
        """The periodic check: re-read only when a stat shows a change or a failure."""
        return self._read_waiting(check_only=True)

    def request_check(self) -> None:
        """Ask the watch (when it runs) for the periodic check, off the event loop."""
        if self._wanted is not None:
            self._wanted.set()

    async def watch(self, changed: Callable[[], object], stopping: asyncio.Event) -> None:
        """Keep the labels read until `stopping`, calling `changed()` after each read.

        Follows the directory with inotify (`watch_label_dir`: it polls a missing
        directory, retries a watch that cannot start) and serves `request_check()`.
        """
        self._wanted = asyncio.Event()
        server = asyncio.ensure_future(self._serve(changed))
        try:
            from lobby.system.inotify import OPENS, WATCHED

            await watch_label_dir(
                self.path, self._want_read, stopping, follow=self._follow, mask=WATCHED | OPENS
            )
        finally:
            self._wanted = None
            server.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await server

    # -- internals ----------------------------------------------------------------------

    def _want_read(self) -> None:
        self._full = True
        if self._wanted is not None:
            self._wanted.set()

    async def _serve(self, changed: Callable[[], object]) -> None:
        wanted = self._wanted
        assert wanted is not None
        while True:
            await wanted.wait()
            await asyncio.sleep(BURST)  # the rest of the burst: one read for it
            wanted.clear()
            full, self._full = self._full, False
            try:
                await self._read_async(check_only=not full)
            except Exception as exc:  # a bug: report it, keep the labels, keep watching
                self._job = None
                self._stamp = None
                self._log(logging.ERROR, "reading label directory %s failed: %r", self.path, exc)
            changed()

    async def _follow(
        self, watch: DirWatch, changed: Callable[[], object], stopping: asyncio.Event
    ) -> None:
        """Feed the watch's events to `Writes` until the directory goes or `stopping`."""
        loop = asyncio.get_running_loop()
        ready = asyncio.Event()
        loop.add_reader(watch.fd, ready.set)
        stopper = asyncio.ensure_future(stopping.wait())
        stopper.add_done_callback(lambda _: ready.set())
        self._watch = watch
        try:
            while True:
                wait = self.writes.expire()[1]  # wake when an open write settles by time
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(wait):
                        await ready.wait()
                if stopping.is_set():
                    return
                ready.clear()
                if self._pump():
                    return
        finally:
            self._watch = None
            loop.remove_reader(watch.fd)
            stopper.cancel()

    def _pump(self) -> bool:
        """Take the watch's pending events (they are queued as the changes happen, so
        after a read they tell what changed during it); True when the directory went."""
        watch = self._watch
        if watch is None:
            return False
        events, gone = watch.events()
        due = False
        for mask, name in events:
            due |= self.writes.event(mask, name)
        due |= self.writes.expire()[0]
        if due:
            self._want_read()
        return gone

    def _start(self, check_only: bool) -> _Job:
        self._pump()  # which files are open for writing, as of now
        self.writes.begin()
        skip = self.writes.unsettled()
        names, stamp = self._names, self._stamp if check_only else None
        job = _Job(lambda job: self._scan(job, skip, names, stamp))
        self._job = job
        return job

    def _read_waiting(self, check_only: bool) -> tuple[str, ...]:
        if self._job is not None:
            return self.current()  # a read is still under way (hung): one at a time
        job = self._start(check_only)
        if not job.done.wait(self.read_timeout):
            self._hung(job, None)
            return self.current()
        self._job = None
        self._pump()
        return self._apply(job.scan())

    async def _read_async(self, check_only: bool) -> None:
        if self._job is not None:
            return  # a read is still under way (hung): its end asks for another
        job = self._start(check_only)
        loop = asyncio.get_running_loop()
        finished = loop.create_future()

        def wake() -> None:
            with contextlib.suppress(RuntimeError):  # the loop closed: nobody waits
                loop.call_soon_threadsafe(_resolve, finished)

        job.when_done(wake)
        try:
            async with asyncio.timeout(self.read_timeout):
                await asyncio.shield(finished)
        except TimeoutError:
            self._hung(job, loop)
            return
        await asyncio.sleep(GRACE)  # the events of changes made while it read, all queued
        self._job = None
        self._pump()  # what changed while it read
        self._apply(job.scan())

    def _hung(self, job: _Job, loop: asyncio.AbstractEventLoop | None) -> None:
        """A read over `read_timeout`: report it once, keep the labels, wait for it."""
        self.hung_reads += 1
        self._stamp = None  # whatever it returns is old by then: read again
        where = self.path / job.reading if job.reading else self.path
        self._hung_log(
            logging.WARNING,
            "reading label directory %s has taken over %g s (at %s); keeping the last "
            "good labels, and starting no other read until it returns",
            self.path,
            self.read_timeout,
            where,
        )

        def ended() -> None:
            if self._job is not job:
                return
            self._job = None
            log.info(
                "the hung read of label directory %s returned after %.0f s",
                self.path,
                time.monotonic() - job.started,
            )
            if loop is not None:
                self._want_read()  # what it read is old: read again
            # else (start-up, in the reader thread): the next check reads again

        if loop is None:
            job.when_done(ended)
        else:

            def later() -> None:
                with contextlib.suppress(RuntimeError):  # the loop closed: nobody waits
                    loop.call_soon_threadsafe(ended)

            job.when_done(later)

    def _scan(
        self, job: _Job, skip: frozenset[str], names: tuple[str, ...], stamp: _Stamp | None
    ) -> _Scan:
        """The I/O of a read, in the reader thread: touches nothing of `self` but reads."""
        # Stat before reading (the directory before listing it, the files before
        # opening them): a change made during the read shows at the next check.
        dir_stamp = self._dir_stamp()
        if stamp is not None:  # a check: stats first, and only read on a change
            now = (dir_stamp, self._file_stamps(names))
            if None not in now and now == stamp:
                return _Scan(dir_stamp, unchanged=True)
        try:
            with os.scandir(self.path) as listing:
                entries = sorted(listing, key=lambda e: e.name)
        except (FileNotFoundError, NotADirectoryError):  # a successful read: it is gone
            return _Scan(dir_stamp, missing=True)
        except OSError as exc:
            return _Scan(dir_stamp, list_error=exc)
        scan = _Scan(dir_stamp, kept=skip)
        found: list[str] = []
        for entry in entries:
            if _skipped(entry.name):
                continue
            try:
                if not entry.is_file():  # a directory, a FIFO, a dangling link: not a label file
                    continue
            except OSError as exc:  # cannot even stat it: unreadable, not gone
                scan.errors[entry.name] = exc
            found.append(entry.name)
        scan.file_stamps = self._file_stamps(found)
        for name in found:
            if name in scan.errors or name in skip:
                continue
            job.reading = name
            try:
                text = self._read_file(self.path / name)
            except (FileNotFoundError, NotRegularFile):  # gone since the listing; not a file
                continue
            except OSError as exc:
                scan.errors[name] = exc
                continue
            scan.files[name] = tuple(parse_label_lines(text))
        job.reading = ""
        scan.names = tuple(n for n in found if n in scan.files or n in scan.errors or n in skip)
        return scan

    def _apply(self, scan: _Scan) -> tuple[str, ...]:
        """Take what a read saw, on the loop: last good content where it was torn."""
        if scan.unchanged:
            return self.current()
        if scan.missing:
            self._files = {}
            self._names = ()
            self.failing.clear()
            self._stamp = (scan.dir_stamp, ()) if scan.dir_stamp is not None else None
            return self.current()
        if scan.list_error is not None:
            self._failed(_DIR, f"cannot list label directory {self.path}", scan.list_error)
            self._stamp = None
            return self.current()
        self._recovered(_DIR)
        files: dict[str, tuple[str, ...]] = {}
        kept = False
        for name in scan.names:
            if name in scan.kept or self.writes.stale(name):
                # open for writing, or changed while read: what we saw may be torn
                kept = True
                if name in self._files:
                    files[name] = self._files[name]
                continue
            if name in scan.errors:
                self._failed(name, f"cannot read label file {self.path / name}", scan.errors[name])
                if name in self._files:
                    files[name] = self._files[name]
                continue
            files[name] = scan.files[name]
            self._recovered(name)
        self._names = scan.names
        self.failing.intersection_update({_DIR, *scan.names})
        self._files = files
        # a read that failed or kept anything is retried at the next check
        ok = not (scan.errors or kept) and None not in (scan.dir_stamp, scan.file_stamps)
        self._stamp = (scan.dir_stamp, scan.file_stamps) if ok else None
        return self.current()

    def _dir_stamp(self) -> _Stamp | None:
        """What stat says of the directory (a stat needs no descriptor); None: unknown."""
        try:
            st = os.stat(self.path)
        except (FileNotFoundError, NotADirectoryError):
            return ("missing",)
        except OSError:
            return None
        return (st.st_ino, st.st_mtime_ns, st.st_ctime_ns)

    def _file_stamps(self, names: Iterable[str]) -> _Stamp | None:
        """What stat says of each file in `names`; None: unknown."""
        files: list[object] = []
        for name in names:
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
        name = self.runtime.path.name
        if _skipped(name):
            return  # a hidden runtime file is not read as a label file either
        self._files[name] = tuple(labels)
        self.writes.touch(name)  # a read under way saw the file before: not taken
        self._stamp = None  # its stat changed: the next check re-reads


def _resolve(future: asyncio.Future[None]) -> None:
    if not future.done():
        future.set_result(None)


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
    "parse_label_lines",
    "read_label_dir",
    "write_atomic",
]


_Follow = Callable[["DirWatch", Callable[[], object], asyncio.Event], Awaitable[None]]


async def watch_label_dir(
    path: Path,
    changed: Callable[[], object],
    stopping: asyncio.Event,
    follow: _Follow | None = None,
    mask: int | None = None,
) -> None:
    """Call `changed()` whenever the label directory may have changed, until `stopping`
    (`watch_dir`). The announcer also checks every KEEP_ALIVE, so a missed event costs
    at most one keep-alive."""
    await watch_dir(
        path,
        changed,
        stopping,
        what="label directory",
        fallback="checking it every KEEP_ALIVE",
        follow=follow,
        mask=mask,
    )


async def watch_dir(
    path: Path,
    changed: Callable[[], object],
    stopping: asyncio.Event,
    *,
    what: str,
    fallback: str,
    follow: _Follow | None = None,
    mask: int | None = None,
) -> None:
    """Call `changed()` whenever directory `path` may have changed, until `stopping`.

    Its inotify events (`lobby.system.inotify`) are read by the event loop; a burst of edits
    within 50 ms is one call. A directory that does not exist yet (or any more) is
    polled every 0.5 s until it appears. A watch that cannot start (EMFILE or ENOSPC:
    no inotify instance or watch left) is retried with back-off, 0.5 s doubling to
    10 s, with one rate-limited warning naming `what` is watched and what is done
    meanwhile (`fallback`).

    `follow(watch, changed, stopping)`, when given, takes the events of a running
    watch instead (`LocalLabels.watch`: which files changed, and how); `mask`, when
    given, is what the watch watches (lobby.inotify.WATCHED by default).
    """
    follow = follow or _follow
    is_dir = path.is_dir  # a stat of a local directory: cheap enough for the loop
    fail_log = RateLimitedLog(log, burst=1, every=300)
    delay = 0.5
    while not stopping.is_set():
        if not is_dir():
            await _sleep_unless(stopping, 0.5)
            if is_dir():
                changed()
            continue
        from lobby.system.inotify import DirWatch  # only once there is a directory to watch

        try:
            watch = DirWatch(path) if mask is None else DirWatch(path, mask)
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
                await follow(watch, changed, stopping)
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
