"""The one streaming JSON reader: a large JSON document walked a chunk at a time.

Containers the caller cares about are entered (`items`, `elements`); every other value (one dataset row, one
Telegram message) is decoded whole by the C decoder (`value`). The file is read in chunks of bytes and decoded
incrementally, so memory is bounded by the largest single value plus one chunk, never the whole file. Used by
finetune.data.stream_readers (JSON array datasets) and finetune.importers (the Telegram export).
"""

from __future__ import annotations

import codecs
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Callable

from finetune.errors import DataError

CHUNK_BYTES = 1 << 22
_DECODER = json.JSONDecoder()
_WS = " \t\r\n"
_NUMBER = "0123456789+-.eE"


class JsonStream:
    """A UTF-8 JSON file; `buf[pos:]` is what has not been consumed yet. Errors are `DataError`s."""

    def __init__(self, path: Path, chunk_bytes: int = CHUNK_BYTES, progress: Callable[[int], None] | None = None):
        self.path = path
        self.file = open(path, "rb")  # noqa: SIM115 - closed by close()
        self.decoder = codecs.getincrementaldecoder("utf-8-sig")()
        self.chunk_bytes = chunk_bytes
        self.buf = ""
        self.pos = 0
        self.bytes_read = 0
        self.eof = False
        self.progress = progress
        self._line, self._counted = 1, 0  # the line number at buf[_counted]

    def close(self) -> None:
        self.file.close()

    def _more(self) -> bool:
        """Append the next chunk (dropping what was consumed when that is most of the buffer)."""
        if self.eof:
            return False
        data = self.file.read(self.chunk_bytes)
        self.bytes_read += len(data)
        try:
            text = self.decoder.decode(data, final=not data)
        except UnicodeDecodeError as exc:
            raise DataError(f"{self.path}: not UTF-8 text near byte {self.bytes_read - len(data) + exc.start} "
                            f"(JSON files are UTF-8)") from None
        if not data:
            self.eof = True
        if self.pos > len(self.buf) // 2:
            self._line += self.buf.count("\n", self._counted, self.pos)
            self.buf, self.pos, self._counted = self.buf[self.pos:], 0, 0
        self.buf += text
        if self.progress is not None:
            self.progress(self.bytes_read)
        return True

    def peek(self) -> str:
        """The next non-space character ('' at the end of the file)."""
        while True:
            buf, pos = self.buf, self.pos
            while pos < len(buf) and buf[pos] in _WS:
                pos += 1
            self.pos = pos
            if pos < len(buf):
                return buf[pos]
            if not self._more():
                return ""

    def line(self) -> int:
        """The 1-based line of the next non-space character."""
        self.peek()
        self._line += self.buf.count("\n", self._counted, self.pos)
        self._counted = self.pos
        return self._line

    def expect(self, char: str) -> None:
        got = self.peek()
        if got != char:
            raise self.error(f"expected {char!r}, found {got or 'the end of the file'!r}")
        self.pos += 1

    def value(self) -> Any:
        """The next JSON value, decoded whole."""
        self.peek()
        while True:
            try:
                value, end = _DECODER.raw_decode(self.buf, self.pos)
            except json.JSONDecodeError as exc:
                # A value cut by the chunk boundary: read on and retry; at the end it is real.
                if self._more():
                    continue
                raise self.error(f"invalid JSON ({exc.msg})") from None
            # A number may go on in the next chunk (123|45, 1.|5, 1e|3): read on until something else follows.
            if isinstance(value, (int, float)) and not self.eof and not self.buf[end:].strip(_NUMBER):
                if self._more():
                    continue
            self.pos = end
            return value

    def error(self, what: str) -> DataError:
        return DataError(f"{self.path}: {what} (within the first {self.bytes_read:,} bytes)")

    def items(self) -> Iterator[str]:
        """Iterate an object's keys; the caller reads (or enters) each value before the next key."""
        self.expect("{")
        if self.peek() == "}":
            self.pos += 1
            return
        while True:
            key = self.value()
            if not isinstance(key, str):
                raise self.error("expected an object key")
            self.expect(":")
            yield key
            if self._closed("}"):
                return

    def elements(self) -> Iterator[None]:
        """Iterate an array; the caller reads (or enters) each element before the next."""
        self.expect("[")
        if self.peek() == "]":
            self.pos += 1
            return
        while True:
            yield
            if self._closed("]"):
                return

    def _closed(self, close: str) -> bool:
        """After a member: True at the container's `close`, False after a ',' (anything else is an error)."""
        nxt = self.peek()
        self.pos += 1
        if nxt == close:
            return True
        if nxt != ",":
            raise self.error(f"expected ',' or {close!r}, found {nxt or 'the end of the file'!r}")
        return False
