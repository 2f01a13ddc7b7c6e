"""A streaming walk over a large JSON document: containers we care about are entered, and every
other value (one Telegram message, a chat's name) is decoded whole with the C decoder.

The file is read in chunks of bytes and decoded incrementally, so memory is bounded by the
largest single value plus one chunk, never the whole export.
"""

from __future__ import annotations

import codecs
import json
from pathlib import Path
from typing import Any, Callable

from finetune.errors import DataError

_DECODER = json.JSONDecoder()
_WS = " \t\r\n"


class JsonStream:
    def __init__(self, path: Path, chunk_bytes: int = 1 << 22, progress: Callable[[int], None] | None = None):
        self.path = path
        self.file = open(path, "rb")
        self.decoder = codecs.getincrementaldecoder("utf-8-sig")()
        self.chunk_bytes = chunk_bytes
        self.buf = ""
        self.pos = 0
        self.bytes_read = 0
        self.eof = False
        self.progress = progress

    def close(self) -> None:
        self.file.close()

    def _more(self) -> bool:
        if self.eof:
            return False
        data = self.file.read(self.chunk_bytes)
        self.bytes_read += len(data)
        try:
            text = self.decoder.decode(data, final=not data)
        except UnicodeDecodeError as exc:
            raise DataError(f"{self.path}: not UTF-8 text near byte {self.bytes_read - len(data) + exc.start} "
                            f"(exports are UTF-8 JSON)") from None
        if not data:
            self.eof = True
        if self.pos > len(self.buf) // 2:
            self.buf, self.pos = self.buf[self.pos:], 0
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

    def expect(self, char: str) -> None:
        got = self.peek()
        if got != char:
            raise self.error(f"expected {char!r}, found {got or 'the end of the file'!r}")
        self.pos += 1

    def value(self) -> Any:
        self.peek()
        while True:
            try:
                value, end = _DECODER.raw_decode(self.buf, self.pos)
            except json.JSONDecodeError as exc:
                # A value cut by the chunk boundary: read on and retry; at the end it is real.
                if self._more():
                    continue
                raise self.error(f"invalid JSON ({exc.msg})") from None
            # A number can end exactly at the chunk boundary (123|45): make sure it is whole.
            if end == len(self.buf) and not self.eof and isinstance(value, (int, float)):
                if self._more():
                    continue
            self.pos = end
            return value

    def error(self, what: str) -> DataError:
        return DataError(f"{self.path}: {what} (within the first {self.bytes_read:,} bytes)")

    def items(self):
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

    def elements(self):
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
