import asyncio
import logging
import os
import stat
import threading

import pytest
from fakes import FakeClock
from support import until, wait_for

from lobby.core.model import LabelError, parse_label_body
from lobby.node.labels import (
    LocalLabels,
    NotRegularFile,
    RuntimeLabels,
    Writes,
    parse_env_labels,
    parse_label_lines,
    read_label_dir,
    read_regular_file,
    write_atomic,
)
from lobby.system.inotify import (
    IN_CLOSE_NOWRITE,
    IN_CLOSE_WRITE,
    IN_CREATE,
    IN_DELETE,
    IN_ISDIR,
    IN_MODIFY,
    IN_MOVED_TO,
    IN_OPEN,
    IN_Q_OVERFLOW,
)


def test_env_labels_trimmed_and_empty_dropped():
    assert parse_env_labels(" service:ns, ns:primary ,,public_ip6:2a03::1, ") == [
        "service:ns",
        "ns:primary",
        "public_ip6:2a03::1",
    ]
    assert parse_env_labels("") == []


def test_env_labels_reject_control_characters():
    with pytest.raises(LabelError):
        parse_env_labels("a,b\x07")


def test_label_file_lines():
    text = "# comment\n\n  service:web  \n#x\nlocation:prague\r\nbad\x01label\n" + "y" * 2000 + "\n"
    assert parse_label_lines(text) == ["service:web", "location:prague"]


def test_label_body_is_strict():
    assert parse_label_body("a\n\n  b \r\n") == ["a", "b"]
    assert parse_label_body("tag:#hash") == ["tag:#hash"]
    with pytest.raises(LabelError, match="comment"):
        parse_label_body("ok\n#hash:tag")
    with pytest.raises(LabelError, match="control"):
        parse_label_body("a\nb\x00c")
    with pytest.raises(LabelError, match="1024"):
        parse_label_body("z" * 1025)


def test_read_label_dir(tmp_path):
    (tmp_path / "a").write_text("service:web\n")
    (tmp_path / "b.conf").write_text("location:prague\n# c\n")
    (tmp_path / ".hidden").write_text("hidden:1\n")
    (tmp_path / "._runtime.x.tmp").write_text("torn:1\n")
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "deep").write_text("deep:1\n")
    assert sorted(read_label_dir(tmp_path)) == ["location:prague", "service:web"]
    assert read_label_dir(tmp_path / "missing") == []


def test_local_labels_union_sorted(tmp_path):
    (tmp_path / "f").write_text("b\nc\n")
    local = LocalLabels(["c", "a"], tmp_path, "_runtime")
    assert local.read() == ("a", "b", "c")


async def test_runtime_add_delete_creates_directory(tmp_path):
    path = tmp_path / "missing" / "dir" / "_runtime"
    runtime = RuntimeLabels(path)
    await runtime.add(["b", "a"])
    assert path.read_text() == "a\nb\n"
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o644
    await runtime.delete(["a", "not-there"])
    assert runtime.read() == ["b"]
    assert [p.name for p in path.parent.iterdir()] == ["_runtime"]  # no temp files left


async def test_concurrent_writes_lose_nothing(tmp_path):
    runtime = RuntimeLabels(tmp_path / "_runtime")
    await asyncio.gather(*(runtime.add([f"l:{i}"]) for i in range(100)))
    await asyncio.gather(*(runtime.delete([f"l:{i}"]) for i in range(0, 100, 2)))
    assert sorted(runtime.read()) == sorted(f"l:{i}" for i in range(1, 100, 2))


async def test_check_refuses_before_writing(tmp_path):
    runtime = RuntimeLabels(tmp_path / "_runtime")
    await runtime.add(["keep"])

    def refuse(labels: list[str]) -> None:
        raise LabelError("too many")

    with pytest.raises(LabelError):
        await runtime.add(["x"], check=refuse)
    assert runtime.read() == ["keep"]


def test_write_atomic_failure_leaves_old_file(tmp_path, monkeypatch):
    path = tmp_path / "_runtime"
    write_atomic(path, "old\n")

    def boom(*args):
        raise OSError("disk full")

    monkeypatch.setattr(os, "replace", boom)
    with pytest.raises(OSError):
        write_atomic(path, "new\n")
    assert path.read_text() == "old\n"
    assert [p.name for p in tmp_path.iterdir()] == ["_runtime"]


# -- labels never vanish on an I/O error (issue 20) ------------------------------------


def make_unreadable(path):
    """Turn `path` into a symlink to itself: every read fails with ELOOP, even as root."""
    path.unlink()
    os.symlink(path.name, path)


def test_unreadable_file_keeps_its_last_good_labels(tmp_path):
    (tmp_path / "f").write_text("a:1\n")
    (tmp_path / "g").write_text("b:1\n")
    local = LocalLabels(["env:1"], tmp_path, "_runtime")
    assert local.read() == ("a:1", "b:1", "env:1")

    make_unreadable(tmp_path / "f")
    (tmp_path / "g").write_text("b:2\n")
    assert local.read() == ("a:1", "b:2", "env:1")  # f kept, g re-read
    assert local.failing == {"f"}
    assert local.read() == ("a:1", "b:2", "env:1")
    assert local.read_errors == 2

    (tmp_path / "f").unlink()
    (tmp_path / "f").write_text("a:2\n")
    assert local.read() == ("a:2", "b:2", "env:1")
    assert local.failing == set()
    (tmp_path / "f").unlink()  # a successful read that shows it gone: its labels go
    assert local.read() == ("b:2", "env:1")


def test_unreadable_file_never_read_contributes_nothing(tmp_path):
    (tmp_path / "f").write_text("a:1\n")
    make_unreadable(tmp_path / "f")
    local = LocalLabels([], tmp_path, "_runtime")
    assert local.read() == ()
    assert local.failing == {"f"}


def test_unlistable_directory_keeps_everything_until_it_is_gone(tmp_path):
    labels = tmp_path / "labels"
    labels.mkdir()
    (labels / "f").write_text("a:1\n")
    local = LocalLabels(["env:1"], labels, "_runtime")
    assert local.read() == ("a:1", "env:1")
    labels.rename(tmp_path / "elsewhere")
    os.symlink("labels", labels)  # ELOOP on listing
    assert local.read() == ("a:1", "env:1")
    assert local.failing == {"."}
    labels.unlink()  # now it is simply missing
    assert local.read() == ("env:1",)
    assert local.failing == set()


def test_out_of_descriptors_keeps_labels_and_the_check_opens_nothing(tmp_path):
    from support import no_free_descriptors

    (tmp_path / "f").write_text("a:1\n")
    (tmp_path / "_runtime").write_text("r:1\n")
    local = LocalLabels([], tmp_path, "_runtime")
    assert local.read() == ("a:1", "r:1")
    with no_free_descriptors():
        unchanged = local.refresh()  # the periodic check: stat only
        reread = local.read()  # a full read: EMFILE on the listing
    assert unchanged == reread == ("a:1", "r:1")
    assert local.read_errors == 1
    assert local.failing == {"."}

    (tmp_path / "f").write_text("a:2\n")
    with no_free_descriptors():
        assert local.refresh() == ("a:1", "r:1")  # changed, cannot be read: kept
    assert local.read_errors == 2
    assert local.refresh() == ("a:2", "r:1")  # descriptors back: the next check reads
    assert local.failing == set()


def test_check_rereads_only_on_change(tmp_path):
    (tmp_path / "f").write_text("a:1\n")
    local = LocalLabels([], tmp_path, "_runtime")
    assert local.refresh() == ("a:1",)
    (tmp_path / "f").write_text("a:22\n")  # a new size and mtime
    assert local.refresh() == ("a:22",)
    (tmp_path / "g").write_text("b:1\n")  # a new file: the directory's mtime moves
    assert local.refresh() == ("a:22", "b:1")
    (tmp_path / "g").unlink()
    assert local.refresh() == ("a:22",)
    (tmp_path / "f").unlink()
    tmp_path.rmdir()
    assert local.refresh() == ()


async def test_runtime_write_updates_the_labels_without_a_read(tmp_path):
    local = LocalLabels(["env:1"], tmp_path, "_runtime")
    assert local.read() == ("env:1",)
    await local.runtime.add(["r:1", "r:2"])
    assert local.current() == ("env:1", "r:1", "r:2")
    await local.runtime.delete(["r:1"])
    assert local.current() == ("env:1", "r:2")
    assert local.read() == ("env:1", "r:2")


async def test_unreadable_runtime_file_refuses_the_write(tmp_path):
    local = LocalLabels([], tmp_path, "_runtime")
    await local.runtime.add(["r:1"])
    make_unreadable(tmp_path / "_runtime")
    with pytest.raises(OSError):
        await local.runtime.add(["r:2"])  # a read-modify-write must not start from nothing
    assert local.read() == ("r:1",)


# -- files written in place, reads off the loop (issue 24) ------------------------------


def test_a_file_modified_is_open_until_closed_after_writing():
    writes = Writes(FakeClock())
    assert writes.event(IN_OPEN, "f") is False  # an open asks for no read
    assert writes.event(IN_MODIFY, "f") is False  # nor does a write: it is not finished
    assert writes.unsettled() == {"f"}
    assert writes.event(IN_CLOSE_NOWRITE, "f") is False  # a reader's close, not the writer's
    assert writes.unsettled() == {"f"}
    assert writes.event(IN_CLOSE_WRITE, "f") is True  # now it is whole: read it
    assert writes.unsettled() == frozenset()
    assert writes.expire() == (False, None)


def test_a_reader_holds_a_file_open_until_it_closes_it():
    writes = Writes(FakeClock())
    writes.event(IN_OPEN, "f")
    assert writes.unsettled() == {"f"}  # opened: maybe by a writer about to truncate it
    writes.event(IN_CLOSE_NOWRITE, "f")
    assert writes.unsettled() == frozenset()  # a reader: nothing was written


def test_moves_deletes_and_creates_ask_for_a_read_and_settle_the_file():
    writes = Writes(FakeClock())
    for mask in (IN_MOVED_TO, IN_DELETE):
        writes.event(IN_MODIFY, "f")
        assert writes.event(mask, "f") is True
        assert writes.unsettled() == frozenset()
    assert writes.event(IN_CREATE, "g") is True
    assert writes.event(IN_CREATE | IN_ISDIR, "sub") is True  # may replace a file
    # hidden and temporary files (the runtime file's, mid-write) are no label files
    assert writes.event(IN_MODIFY, "._runtime.x.tmp") is False
    assert writes.event(IN_CLOSE_WRITE, "._runtime.x.tmp") is False
    assert writes.unsettled() == frozenset()
    # the directory's own open and close (our listing) ask for nothing either
    assert writes.event(IN_OPEN | IN_ISDIR, "") is False
    assert writes.event(IN_CLOSE_NOWRITE | IN_ISDIR, "") is False


def test_an_unclosed_write_settles_when_quiet_or_at_the_latest():
    clock = FakeClock()
    writes = Writes(clock, quiet=2.0, longest=20.0)
    writes.event(IN_MODIFY, "f")  # truncate(2), or a writer that keeps the file open
    clock.now += 1.5
    assert writes.unsettled() == {"f"}
    assert writes.expire() == (False, 0.5)  # the watch wakes then
    clock.now += 0.5
    assert writes.unsettled() == frozenset()
    assert writes.expire() == (True, None)  # quiet for 2 s: read it as it is

    start = clock.now
    for second in range(20):  # a writer that never stops: a write every second
        clock.now = start + second
        writes.event(IN_MODIFY, "g")
        clock.now += 0.5
        assert writes.unsettled() == {"g"}, second
    assert writes.expire() == (False, 0.5)
    clock.now += 0.5
    assert writes.unsettled() == frozenset()  # 20 s after its first write
    assert writes.expire() == (True, None)


def test_the_read_in_progress_is_judged_by_what_happened_before_it_closed_the_file():
    writes = Writes(FakeClock())

    def judged(*events):
        writes.begin()
        for mask, name in events:
            writes.event(mask, name)
        return writes.stale("f")

    ours = [(IN_OPEN, "f"), (IN_CLOSE_NOWRITE, "f")]
    assert not judged(*ours)  # only our own open and close
    # a writer that opens it after we closed it writes the next version: ours was whole
    assert not judged(*ours, (IN_OPEN, "f"), (IN_MODIFY, "f"), (IN_CLOSE_WRITE, "f"))
    assert not judged(*ours, (IN_MODIFY, "g"))  # another file
    # a writer that opened it before we closed it: its truncation may be what we read
    assert judged((IN_OPEN, "f"), (IN_OPEN, "f"), (IN_CLOSE_NOWRITE, "f"))
    assert judged((IN_OPEN, "f"), (IN_MODIFY, "f"), (IN_CLOSE_NOWRITE, "f"))
    # a modify after our close with no open first: truncate(2), or a writer holding
    # the file open, changed it and the kernel queued its event late
    assert judged(*ours, (IN_MODIFY, "f"))
    assert judged(*ours, (IN_DELETE, "f"))
    assert judged(*ours[:1], (IN_Q_OVERFLOW, ""), *ours[1:])  # events lost: anything
    writes.begin()
    writes.touch("f")  # the runtime file, written by us while it was read
    assert writes.stale("f")
    writes.begin()
    assert not writes.stale("f")


def test_a_file_being_written_keeps_its_last_good_labels_until_it_settles(tmp_path):
    clock = FakeClock()
    f = tmp_path / "f"
    f.write_text("service:stable\nchurn:1\n")
    local = LocalLabels(["env:1"], tmp_path, "_runtime", clock=clock)
    assert local.read() == ("churn:1", "env:1", "service:stable")

    with open(f, "w") as fh:  # truncated: what a watch hears
        local.writes.event(IN_OPEN, "f")
        local.writes.event(IN_MODIFY, "f")
        assert local.read() == ("churn:1", "env:1", "service:stable")
        fh.write("serv")
        fh.flush()
        local.writes.event(IN_MODIFY, "f")
        assert local.read() == ("churn:1", "env:1", "service:stable")
        assert local.refresh() == ("churn:1", "env:1", "service:stable")  # the check too
        fh.write("ice:stable\nchurn:2\n")
    local.writes.event(IN_CLOSE_WRITE, "f")
    assert local.refresh() == ("churn:2", "env:1", "service:stable")  # the check re-reads

    # a writer that keeps it open: read once quiet for 2 s
    local.writes.event(IN_OPEN, "f")
    f.write_text("service:stable\nchurn:3\n")
    local.writes.event(IN_MODIFY, "f")
    assert local.read() == ("churn:2", "env:1", "service:stable")
    clock.now += 2.0
    assert local.read() == ("churn:3", "env:1", "service:stable")

    # a new file being written contributes nothing until it is whole
    local.writes.event(IN_CREATE, "g")
    local.writes.event(IN_OPEN, "g")
    (tmp_path / "g").write_text("half")
    local.writes.event(IN_MODIFY, "g")
    assert local.read() == ("churn:3", "env:1", "service:stable")
    local.writes.event(IN_CLOSE_WRITE, "g")
    assert local.read() == ("churn:3", "env:1", "half", "service:stable")


def test_a_read_that_saw_the_file_change_keeps_its_last_good_labels(tmp_path):
    f = tmp_path / "f"
    f.write_text("a:1\n")
    local = LocalLabels([], tmp_path, "_runtime")
    assert local.read() == ("a:1",)
    torn = True

    def read_during_a_rewrite(path):
        # our own open, then a writer's open and truncation, before we read
        local.writes.event(IN_OPEN, path.name)
        if torn:
            local.writes.event(IN_OPEN, path.name)
            local.writes.event(IN_MODIFY, path.name)
        text = "" if torn else path.read_text()
        local.writes.event(IN_CLOSE_NOWRITE, path.name)
        if torn:  # the writer writes it whole again, and closes it
            local.writes.event(IN_MODIFY, path.name)
            local.writes.event(IN_CLOSE_WRITE, path.name)
        return text

    local._read_file = read_during_a_rewrite
    assert local.read() == ("a:1",)  # the empty file is not taken
    torn = False
    assert local.read() == ("a:1",)
    f.write_text("a:2\n")
    assert local.read() == ("a:2",)


def test_a_fifo_is_not_a_label_file_and_does_not_block(tmp_path):
    (tmp_path / "f").write_text("a:1\n")
    os.mkfifo(tmp_path / "pipe")
    with pytest.raises(NotRegularFile):
        read_regular_file(tmp_path / "pipe")  # no writer: a blocking open would hang
    assert read_regular_file(tmp_path / "f") == "a:1\n"
    local = LocalLabels([], tmp_path, "_runtime")
    assert local.read() == ("a:1",)
    assert local.failing == set() and local.read_errors == 0


class BlockingReader:
    """A label file reader that hangs on the file `slow` until released."""

    def __init__(self) -> None:
        self.release = threading.Event()
        self.calls: list[str] = []

    def __call__(self, path):
        self.calls.append(path.name)
        if path.name == "slow":
            assert self.release.wait(30), "never released"
        return read_regular_file(path)


def test_a_read_that_hangs_keeps_the_labels_and_is_not_started_twice(tmp_path, caplog):
    caplog.set_level(logging.INFO, "lobby.labels")
    (tmp_path / "f").write_text("a:1\n")
    reader = BlockingReader()
    local = LocalLabels(["env:1"], tmp_path, "_runtime", read_file=reader, read_timeout=0.2)
    assert local.read() == ("a:1", "env:1")
    (tmp_path / "slow").write_text("slow:1\n")
    try:
        assert local.read() == ("a:1", "env:1")  # after 0.2 s, as they were
        assert local.hung_reads == 1
        calls = len(reader.calls)
        assert local.read() == ("a:1", "env:1")  # at once: one read at a time
        assert local.refresh() == ("a:1", "env:1")
        assert len(reader.calls) == calls and reader.calls.count("slow") == 1
    finally:
        reader.release.set()
    wait_for(lambda: local._job is None, 5, what="the hung read to end")
    assert local.read() == ("a:1", "env:1", "slow:1")
    hung = [r for r in caplog.records if "has taken over" in r.getMessage()]
    assert len(hung) == 1 and hung[0].exc_info is None
    assert str(tmp_path / "slow") in hung[0].getMessage()  # where it hangs
    assert any("returned after" in r.getMessage() for r in caplog.records)


async def test_a_read_that_hangs_leaves_the_event_loop_free(tmp_path, caplog):
    (tmp_path / "f").write_text("a:1\n")
    reader = BlockingReader()
    local = LocalLabels([], tmp_path, "_runtime", read_file=reader, read_timeout=0.2)
    local.read()
    calls = 0

    def changed() -> None:
        nonlocal calls
        calls += 1

    stopping = asyncio.Event()
    task = asyncio.create_task(local.watch(changed, stopping))
    try:
        await asyncio.sleep(0)  # the watch starts
        (tmp_path / "slow").write_text("slow:1\n")
        await until(lambda: "slow" in reader.calls, timeout=5, what="the read of slow")
        ticks = 0
        for _ in range(30):  # the loop runs on, 10 ms at a time, while the read hangs
            await asyncio.sleep(0.01)
            local.request_check()  # every keep-alive asks; none starts a second read
            ticks += 1
            assert local.current() == ("a:1",)
        await until(lambda: local.hung_reads == 1, timeout=5, what="the hang reported")
        assert ticks == 30 and reader.calls.count("slow") == 1
    finally:
        reader.release.set()
    # its end asks for a fresh read, which sees the file
    await until(lambda: local.current() == ("a:1", "slow:1"), timeout=5, what="slow read")
    stopping.set()
    await asyncio.wait_for(task, 5)
    assert calls >= 1
    hung = [r for r in caplog.records if "has taken over" in r.getMessage()]
    assert len(hung) == 1 and hung[0].exc_info is None


async def test_a_runtime_write_during_a_read_is_not_undone_by_it(tmp_path):
    (tmp_path / "_runtime").write_text("r:1\n")
    armed, started, release = threading.Event(), threading.Event(), threading.Event()

    def reader(path):
        text = read_regular_file(path)  # the runtime file before the write
        if path.name == "_runtime" and armed.is_set():
            started.set()
            assert release.wait(30)
        return text

    local = LocalLabels([], tmp_path, "_runtime", read_file=reader)
    assert local.read() == ("r:1",)
    armed.set()
    reading = asyncio.create_task(local._read_async(check_only=False))
    assert await asyncio.to_thread(started.wait, 5)
    await local.runtime.add(["r:2"])  # POST /v1/labels: read your writes, at once
    assert local.current() == ("r:1", "r:2")
    release.set()
    await reading
    assert local.current() == ("r:1", "r:2")  # the read saw the old file: not taken
    assert local.read() == ("r:1", "r:2")


async def test_a_read_that_fails_unexpectedly_keeps_the_labels_and_the_watch(tmp_path, caplog):
    (tmp_path / "f").write_text("a:1\n")
    broken = True

    def reader(path):
        if broken and path.name == "g":
            raise ValueError("a bug")
        return read_regular_file(path)

    local = LocalLabels([], tmp_path, "_runtime", read_file=reader)
    assert local.read() == ("a:1",)
    stopping = asyncio.Event()
    task = asyncio.create_task(local.watch(lambda: None, stopping))
    try:
        await asyncio.sleep(0)
        (tmp_path / "g").write_text("b:1\n")
        await until(lambda: "a bug" in caplog.text, timeout=5, what="the failure logged")
        assert local.current() == ("a:1",) and not task.done()
        broken = False
        (tmp_path / "g").write_text("b:2\n")  # the next change is read
        await until(lambda: local.current() == ("a:1", "b:2"), timeout=5, what="b:2")
    finally:
        stopping.set()
        await asyncio.wait_for(task, 5)
