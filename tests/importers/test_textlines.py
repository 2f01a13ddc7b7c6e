"""textlines.read_lines: a file read a chunk at a time gives the lines str.splitlines() gives for the whole
decoded text, whatever the chunk size, encoding and line breaks; bytes that are not UTF-8 are located."""

from __future__ import annotations

import codecs
import random
from pathlib import Path

import pytest

from finetune.errors import DataError
from finetune.importers.textlines import read_lines

PIECES = ["a", "é", "👍", "\n", "\r", "\r\n", "\u2028", "\x85", "\x0b", "\x1c", " ", "\n\n", "\r\r\n", "bc"]


@pytest.mark.parametrize("encoding", ["utf-8", "utf-8-sig", "utf-16-le", "utf-16-be"])
def test_lines_match_splitlines_for_any_chunk_size(tmp_path: Path, encoding: str) -> None:
    rng = random.Random(encoding)
    path = tmp_path / "chat.txt"
    bom = {"utf-16-le": codecs.BOM_UTF16_LE, "utf-16-be": codecs.BOM_UTF16_BE}.get(encoding, b"")
    for _ in range(300):
        text = "".join(rng.choices(PIECES, k=rng.randint(0, 40)))
        path.write_bytes(bom + text.encode(encoding))
        for chunk in (1, 2, 3, 5, 1 << 20):  # chunks split characters, "\r\n" and the byte order mark
            assert list(read_lines(path, chunk_bytes=chunk)) == text.splitlines(), (chunk, text)


def test_a_line_longer_than_many_chunks(tmp_path: Path) -> None:
    path = tmp_path / "chat.txt"
    path.write_text("x" * 10_000 + "\nshort\n" + "y" * 5_000, encoding="utf-8")
    assert list(read_lines(path, chunk_bytes=64)) == ["x" * 10_000, "short", "y" * 5_000]


@pytest.mark.parametrize("bom", [b"", codecs.BOM_UTF8])
def test_bytes_that_are_not_utf8_name_their_offset_in_the_file(tmp_path: Path, bom: bytes) -> None:
    path = tmp_path / "chat.txt"
    data = bom + "31/12/22, 21:41 - Zoë: hi\n".encode() * 3 + b"caf\xe9\n"
    path.write_bytes(data)
    for chunk in (1, 7, 1 << 20):
        with pytest.raises(DataError, match=rf"chat.txt: not UTF-8 text \(byte {len(data) - 2}\); convert it"):
            list(read_lines(path, chunk_bytes=chunk, what="; convert it"))
