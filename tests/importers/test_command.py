"""Import failures are clear errors (issue #21 item 8): a Telegram date that is not a number names the file
and the message; a full disk while writing the output exits 1, names the file and leaves no partial file."""

from __future__ import annotations

import errno
import json
import os
from pathlib import Path

import pytest

from finetune.cli import main

CHAT = "".join(f"0{d}/01/23, 10:00 - Alice: question {d}?\n0{d}/01/23, 10:01 - Me: answer {d}\n" for d in range(1, 4))


def test_telegram_non_numeric_date_unixtime_is_a_located_error(tmp_path: Path, capsys) -> None:
    export = tmp_path / "result.json"
    export.write_text(json.dumps({"name": "Alice", "messages": [
        {"id": 7, "type": "message", "date_unixtime": "1700000000", "from": "Alice", "from_id": "user2", "text": "hi"},
        {"id": 8, "type": "message", "date_unixtime": "yesterday", "from": "Me", "from_id": "user1", "text": "yo"},
    ]}), encoding="utf-8")
    assert main(["import", "telegram", str(export), "--me", "Me", "-o", str(tmp_path / "o.jsonl")]) == 2
    err = capsys.readouterr().err
    assert f"{export}: message 8: date_unixtime 'yesterday' is not a number" in err
    assert "Traceback" not in err and not (tmp_path / "o.jsonl").exists()


class _FullDisk:
    """A text file whose writes fail as on a full disk (the test's stand-in for the real device)."""

    def __init__(self, file):
        self.file = file

    def write(self, text: str) -> int:
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    def __getattr__(self, name):
        return getattr(self.file, name)


@pytest.mark.parametrize("where", ["write", "fsync"])
def test_disk_full_while_writing_exits_1_and_removes_the_temp_file(tmp_path: Path, capsys, monkeypatch,
                                                                    where: str) -> None:
    chat = tmp_path / "chat.txt"
    chat.write_text(CHAT, encoding="utf-8")
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    out = out_dir / "rows.jsonl"
    if where == "write":
        real_fdopen = os.fdopen
        monkeypatch.setattr(os, "fdopen", lambda *a, **k: _FullDisk(real_fdopen(*a, **k)))
    else:
        def full(fd: int) -> None:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        monkeypatch.setattr(os, "fsync", full)
    assert main(["import", "whatsapp", str(chat), "--me", "Me", "-o", str(out)]) == 1
    err = capsys.readouterr().err
    assert f"error: {out}: no space left on the disk while writing" in err and "Traceback" not in err
    assert list(out_dir.iterdir()) == []  # neither the output nor its temporary file
