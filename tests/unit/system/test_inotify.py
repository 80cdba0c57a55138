"""lobby.inotify on real directories (the kernel's inotify, no mock), and the label
directory watch built on it (lobby.labels.watch_label_dir)."""

from __future__ import annotations

import asyncio
import errno
import os
import sys

import pytest
from support import until

from lobby.node.labels import LocalLabels, watch_label_dir
from lobby.system.inotify import (
    IN_CLOSE_NOWRITE,
    IN_CLOSE_WRITE,
    IN_CREATE,
    IN_MODIFY,
    IN_OPEN,
    OPENS,
    WATCHED,
    DirWatch,
)


def test_every_kind_of_change_is_an_event_and_the_directory_going_ends_the_watch(tmp_path):
    with DirWatch(tmp_path) as watch:
        assert watch.drain() == (0, False)
        (tmp_path / "a").write_text("service:web\n")  # create, modify, close
        events, gone = watch.drain()
        assert events >= 2 and not gone
        assert watch.drain() == (0, False)  # drained
        for change in (
            lambda: os.rename(tmp_path / "a", tmp_path / "b"),
            lambda: os.chmod(tmp_path / "b", 0o600),
            lambda: (tmp_path / "b").unlink(),
        ):
            change()
            assert watch.drain()[0] >= 1
        tmp_path.rmdir()
        assert watch.drain()[1]  # gone: IN_DELETE_SELF, then IN_IGNORED


def test_a_watch_that_cannot_start_says_why(tmp_path):
    with pytest.raises(OSError) as missing:
        DirWatch(tmp_path / "missing")
    assert missing.value.errno == errno.ENOENT and "missing" in str(missing.value)
    (tmp_path / "file").write_text("")
    with pytest.raises(OSError) as not_dir:
        DirWatch(tmp_path / "file")
    assert not_dir.value.errno == errno.ENOTDIR


def test_the_descriptor_is_closed_and_not_inherited(tmp_path):
    watch = DirWatch(tmp_path)
    fd = watch.fd
    assert not os.get_inheritable(fd)
    watch.close()
    watch.close()  # twice is fine
    with pytest.raises(OSError):
        os.fstat(fd)


async def test_the_label_watch_calls_back_on_changes_and_follows_the_directory(tmp_path):
    labels = tmp_path / "labels"
    labels.mkdir()
    calls = 0

    def changed() -> None:
        nonlocal calls
        calls += 1

    stopping = asyncio.Event()
    task = asyncio.create_task(watch_label_dir(labels, changed, stopping))
    await asyncio.sleep(0)  # its first step starts the watch, then waits for events

    async def after(change) -> None:
        before = calls
        change()
        await until(lambda: calls > before, timeout=5, what="a call for the change")

    await after(lambda: (labels / "web").write_text("service:web\n"))
    await after(lambda: (labels / "web").write_text("service:db\n"))
    await after(lambda: (labels / "web").unlink())
    await after(labels.rmdir)  # gone: polled from now on
    await after(labels.mkdir)  # back: watched again (from the step that saw it)
    await after(lambda: (labels / "late").write_text("late:1\n"))
    assert "lobby.system.inotify" in sys.modules
    stopping.set()
    await asyncio.wait_for(task, timeout=5)


def test_events_say_which_file_and_what_happened(tmp_path):
    (tmp_path / "old").write_text("x\n")
    with DirWatch(tmp_path, WATCHED | OPENS) as watch:
        (tmp_path / "a").write_text("service:web\n")
        assert watch.events() == (
            [(IN_CREATE, "a"), (IN_OPEN, "a"), (IN_MODIFY, "a"), (IN_CLOSE_WRITE, "a")],
            False,
        )
        with open(tmp_path / "old", "w"):  # O_TRUNC: the open is queued before the truncation
            pass
        assert watch.events()[0] == [(IN_OPEN, "old"), (IN_MODIFY, "old"), (IN_CLOSE_WRITE, "old")]
        (tmp_path / "a").read_text()
        assert watch.events()[0] == [(IN_OPEN, "a"), (IN_CLOSE_NOWRITE, "a")]
    with DirWatch(tmp_path) as watch:  # by default, opens and reads are not watched
        (tmp_path / "a").read_text()
        assert watch.events() == ([], False)


async def test_the_label_watch_keeps_a_file_open_for_writing_at_its_last_good_labels(tmp_path):
    labels = tmp_path / "labels"
    labels.mkdir()
    (labels / "web").write_text("service:web\n")
    local = LocalLabels([], labels, "_runtime")
    local.read()
    reads = 0

    def changed() -> None:
        nonlocal reads
        reads += 1

    stopping = asyncio.Event()
    task = asyncio.create_task(local.watch(changed, stopping))
    await asyncio.sleep(0)  # its first step starts the watch
    try:
        with open(labels / "web", "w") as fh:  # noqa: ASYNC230 - truncated, held open
            fh.write("service:")
            fh.flush()
            await until(lambda: local.writes.unsettled() == {"web"}, 5, what="the open write")
            before = reads
            (labels / "db").write_text("service:db\n")  # a full read meanwhile
            await until(lambda: reads > before and "service:db" in local.current(), 5)
            local.request_check()  # and a keep-alive check
            await until(lambda: reads > before + 1, 5, what="the check")
            assert local.current() == ("service:db", "service:web")  # web kept whole
            fh.write("db\n")
        await until(lambda: local.current() == ("service:db",), 5, what="web, closed")
    finally:
        stopping.set()
        await asyncio.wait_for(task, timeout=5)
