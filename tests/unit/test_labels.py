import asyncio
import os
import stat

import pytest

from lobby.labels import (
    LocalLabels,
    RuntimeLabels,
    parse_env_labels,
    parse_label_lines,
    read_label_dir,
    write_atomic,
)
from lobby.model import LabelError, parse_label_body


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
