import asyncio
import os
import stat

import pytest

from lobby.labels import (
    LocalLabels,
    RuntimeLabels,
    parse_env_labels,
    parse_label_body,
    parse_label_lines,
    read_label_dir,
    write_atomic,
)
from lobby.model import LabelError


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
