"""Atomic writes: the target is the old content or the new one, never a part; no temporary file is left."""

from __future__ import annotations

import errno
import os
from pathlib import Path

import pytest

from finetune.runs import atomic
from finetune.runs.atomic import atomic_path, publish, write_bytes, write_text


def test_write_text_replaces_and_leaves_no_temp(tmp_path: Path) -> None:
    target = tmp_path / "sub" / "a.json"
    target.parent.mkdir()
    write_text(target, "old")
    write_text(target, "new ✓")
    assert target.read_text(encoding="utf-8") == "new ✓"
    assert sorted(p.name for p in target.parent.iterdir()) == ["a.json"]


def test_an_error_while_writing_keeps_the_old_file(tmp_path: Path) -> None:
    target = tmp_path / "model.gguf"
    write_bytes(target, b"old")
    with pytest.raises(RuntimeError):
        with atomic_path(target) as tmp:
            tmp.write_bytes(b"half")
            raise RuntimeError("disk pulled")
    assert target.read_bytes() == b"old" and sorted(p.name for p in tmp_path.iterdir()) == ["model.gguf"]


def test_a_full_disk_keeps_its_errno_for_the_callers_message(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def full(fd: int) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(atomic.os, "fsync", full)
    with pytest.raises(OSError) as caught:
        write_text(tmp_path / "Modelfile", "FROM x\n")
    assert caught.value.errno in atomic.DISK_FULL
    assert list(tmp_path.iterdir()) == []


def test_a_directory_is_published_whole_over_an_old_one(tmp_path: Path) -> None:
    target = tmp_path / "merged"
    target.mkdir()
    (target / "stale.safetensors").write_bytes(b"old")
    with atomic_path(target) as tmp:
        tmp.mkdir()
        (tmp / "model.safetensors").write_bytes(b"new")
    assert sorted(p.name for p in target.iterdir()) == ["model.safetensors"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["merged"]


def test_a_failed_directory_write_leaves_nothing(tmp_path: Path) -> None:
    with pytest.raises(ValueError):
        with atomic_path(tmp_path / "merged") as tmp:
            tmp.mkdir()
            (tmp / "part").write_bytes(b"x")
            raise ValueError
    assert list(tmp_path.iterdir()) == []


def test_publish_fsyncs_before_the_rename(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    events: list[str] = []
    real_fsync, real_replace = os.fsync, os.replace
    monkeypatch.setattr(atomic.os, "fsync", lambda fd: (events.append("fsync"), real_fsync(fd))[1])
    monkeypatch.setattr(atomic.os, "replace", lambda a, b: (events.append("replace"), real_replace(a, b))[1])
    tmp = tmp_path / ".x.tmp"
    tmp.write_bytes(b"data")
    publish(tmp, tmp_path / "x")
    assert events[0] == "fsync" and events.index("replace") > 0 and events[-1] == "fsync"  # file, rename, dir
