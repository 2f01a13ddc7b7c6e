"""A large text file's lines, read a chunk at a time: UTF-8 (a byte order mark is dropped) or UTF-16 (after
its byte order mark), split exactly as `str.splitlines()` splits the whole decoded text, so memory is one
chunk and line numbers are those of the whole file."""

from __future__ import annotations

import codecs
from pathlib import Path
from typing import Callable, Iterator

from finetune.errors import DataError

BREAKS = "\n\r\v\f\x1c\x1d\x1e\x85\u2028\u2029"  # what str.splitlines() splits at ("\r\n" is one break)


def read_lines(path: Path, chunk_bytes: int = 1 << 20, progress: Callable[[int], None] | None = None,
               what: str = "") -> Iterator[str]:
    """The lines of `path` without their line breaks; `progress(bytes read)` after each chunk. Bytes that
    are not UTF-8 (UTF-16) raise a DataError naming the file and the byte's offset; `what` ends the message
    (what to do about it)."""
    with path.open("rb") as f:
        data = f.read(max(chunk_bytes, 3))  # a byte order mark is whole in it
        done, final = 0, not data  # bytes given to the decoder before `data`; the file ends
        if data.startswith((b"\xff\xfe", b"\xfe\xff")):
            decoder = codecs.getincrementaldecoder("utf-16")()  # reads and drops the mark itself
        else:
            decoder = codecs.getincrementaldecoder("utf-8")()
            if data.startswith(codecs.BOM_UTF8):
                data, done = data[3:], 3
        partial: list[str] = []  # the last line's text so far, when a chunk ended inside it
        skip_lf = False  # a chunk ended in "\r", maybe half of a "\r\n"
        while True:
            held = len(decoder.getstate()[0])  # bytes of an unfinished character the decoder keeps
            try:
                text = decoder.decode(data, final)
            except UnicodeDecodeError as exc:
                raise DataError(f"{path}: not UTF-8 text (byte {done - held + exc.start}){what}") from None
            done += len(data)
            if text and skip_lf:
                skip_lf = False
                if text[0] == "\n":
                    text = text[1:]
            if text:
                ends = final or text[-1] in BREAKS
                lines = text.splitlines()
                if partial and len(lines) == 1 and not ends:  # a line longer than a chunk: joined once, at its end
                    partial.append(text)
                    lines = []
                else:
                    if partial:
                        lines[0] = "".join(partial) + lines[0]
                    partial = [] if ends else [lines.pop()]
                skip_lf = text[-1] == "\r"
                yield from lines
            if final:
                if partial:
                    yield "".join(partial)
                return
            if progress is not None:
                progress(done)
            data = f.read(chunk_bytes)
            final = not data
