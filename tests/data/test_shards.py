"""The on-disk pieces of a preprocessing build (finetune.data.shards) when the disk fills up."""

from __future__ import annotations

import errno
from pathlib import Path

import pytest

from finetune.cli import main
from finetune.data import shards


def no_space(*args, **kwargs):
    raise OSError(errno.ENOSPC, "No space left on device")


def fail_on_call(number: int, original):
    calls = []

    def write(*args, **kwargs):
        calls.append(1)
        if len(calls) == number:
            no_space()
        return original(*args, **kwargs)

    return write


@pytest.mark.parametrize("where, workers", [("token shards", 2), ("split rows", 1), ("summary", 1)])
def test_a_full_disk_is_a_clear_error_and_leaves_nothing(where, workers, tmp_path, monkeypatch, capsys,
                                                         data_settings, write_chats):
    data_settings([{"path": write_chats(40)}], preprocess_shard_size=8, preprocess_workers=workers)
    recipe = tmp_path / "recipe.yml"
    if where == "token shards":
        monkeypatch.setattr(shards.TokenShardWriter, "_write", fail_on_call(2, shards.TokenShardWriter._write))
    elif where == "split rows":  # after some rows of train were written
        monkeypatch.setattr(shards.SplitWriter, "write", fail_on_call(3, shards.SplitWriter.write))
    else:
        original = Path.write_text
        monkeypatch.setattr(Path, "write_text",
                            lambda self, *a, **k: no_space() if self.name == "summary.json" else original(self, *a, **k))
    assert main(["preprocess", str(recipe), "--no-progress"]) == 1
    err = capsys.readouterr().err
    prepared = tmp_path / "prepared"
    assert err.startswith(f"error: {prepared}: No space left on device while writing the prepared data; "
                          "nothing was cached and the partial files were removed. Free space there, or set "
                          "dataset_prepared_path to a disk with more room")
    assert "Traceback" not in err
    assert list(prepared.iterdir()) == []  # no temporary directory, no cache
    if where != "split rows":
        return
    monkeypatch.undo()  # and the next run builds afresh
    assert main(["preprocess", str(recipe), "--no-progress"]) == 0
    assert "prepared data built" in capsys.readouterr().out


def test_a_read_error_names_the_data_file(tmp_path):
    from finetune.data import cache

    error = cache.disk_error(PermissionError(errno.EACCES, "Permission denied", str(tmp_path / "chats.jsonl")),
                             tmp_path / "prepared")
    assert str(error).startswith(f"{tmp_path / 'chats.jsonl'}: Permission denied while reading the data; nothing")
    assert "Check that it is readable" in str(error) and error.exit_code == 1
