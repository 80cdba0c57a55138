"""lobby.inotify on real directories (the kernel's inotify, no mock), and the label
directory watch built on it (lobby.labels.watch_label_dir)."""

from __future__ import annotations

import asyncio
import errno
import os
import sys

import pytest
from support import until

from lobby.inotify import DirWatch
from lobby.labels import watch_label_dir


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
    assert "lobby.inotify" in sys.modules
    stopping.set()
    await asyncio.wait_for(task, timeout=5)
