"""JSON arrays and CSV files read a batch of rows at a time (JSON lines, Parquet and Arrow: finetune.data.readers).

Memory is bounded by one read chunk plus the largest record, not the file. Rows and origins are those of the
whole-file readers (`readers.read_json`, `readers.read_csv`). Bad input is rare and its message must be exactly
the whole-file reader's, so at the first problem the stream hands the file to that reader and raises its error.
"""

from __future__ import annotations

import codecs
import csv
import io
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Callable

from finetune.data.readers import Origins, RawTable, RowBatch, read_csv, read_json
from finetune.errors import DataError

CHUNK_BYTES = 1 << 22
_SPACE = " \t\r\n"


def stream_json_array(path: Path, batch_size: int) -> Iterator[RowBatch]:
    """The objects of a `[{...}, {...}]` file, `batch_size` at a time, each with the line it starts on."""
    stream = _TextStream(path)
    source = str(path)
    decoder = json.JSONDecoder()
    rows: list[dict[str, Any]] = []
    lines: list[int] = []
    total = reported = 0
    try:
        stream.skip_space()
        if not stream.take("["):
            raise _Invalid
        while True:
            stream.skip_space()
            if stream.at_end():
                raise _Invalid  # not closed
            if stream.take("]"):
                break
            if total and not stream.take(","):
                raise _Invalid
            stream.skip_space()
            line = stream.line()
            row = stream.decode(decoder)
            if type(row) is not dict:
                raise _Invalid
            rows.append(row)
            lines.append(line)
            total += 1
            if len(rows) == batch_size:
                yield RowBatch(RawTable(source, rows, Origins(source, tuple(lines), "line")), stream.bytes - reported)
                rows, lines, reported = [], [], stream.bytes
        stream.skip_space()
        if not stream.at_end() or not total:
            raise _Invalid  # extra data after `]`, or an empty array
        if rows:
            yield RowBatch(RawTable(source, rows, Origins(source, tuple(lines), "line")), stream.bytes - reported)
    except (_Invalid, UnicodeDecodeError):
        raise _whole_file_error(path, read_json) from None
    finally:
        stream.close()


def stream_csv(path: Path, batch_size: int) -> Iterator[RowBatch]:
    """The records of a CSV file with a header row, `batch_size` at a time, each with the line it starts on."""
    source = str(path)
    raw = open(path, "rb")  # noqa: SIM115 - closed in finally; wrapped for decoding
    try:
        reader = csv.reader(io.TextIOWrapper(raw, encoding="utf-8-sig", newline=""))
        header = next(reader, None)
        if header is None or not "".join(header).strip():
            raise _Invalid  # empty (or a blank first line: the whole-file reader names it)
        rows: list[dict[str, Any]] = []
        lines: list[int] = []
        total = reported = 0
        start = reader.line_num + 1
        for record in reader:
            if record:
                if len(record) != len(header):
                    raise _Invalid
                rows.append(dict(zip(header, record)))
                lines.append(start)
                total += 1
                if len(rows) == batch_size:
                    yield RowBatch(RawTable(source, rows, Origins(source, tuple(lines), "line")), raw.tell() - reported)
                    rows, lines, reported = [], [], raw.tell()
            start = reader.line_num + 1
        if not total:
            raise _Invalid
        if rows:
            yield RowBatch(RawTable(source, rows, Origins(source, tuple(lines), "line")), raw.tell() - reported)
    except (_Invalid, csv.Error, UnicodeDecodeError):
        raise _whole_file_error(path, read_csv) from None
    finally:
        raw.close()


class _Invalid(Exception):
    """The stream met bad input; the whole-file reader says what and where."""


def _whole_file_error(path: Path, reader: Callable[[Path], Any]) -> DataError:
    try:
        reader(path)
    except DataError as exc:
        return exc
    return DataError(f"{path}: the file could not be read in a stream, though it parses whole; please report this")


class _TextStream:
    """A UTF-8 file as text, decoded a chunk at a time; `buf[pos:]` is what has not been consumed yet."""

    def __init__(self, path: Path) -> None:
        self.handle = open(path, "rb")  # noqa: SIM115 - closed by close()
        self.decoder = codecs.getincrementaldecoder("utf-8-sig")()
        self.buf, self.pos, self.eof, self.bytes = "", 0, False, 0
        self._line, self._counted = 1, 0  # the line number at buf[_counted]

    def close(self) -> None:
        self.handle.close()

    def more(self) -> bool:
        """Append the next chunk (dropping what was consumed); False at the end of the file."""
        if self.eof:
            return False
        data = self.handle.read(CHUNK_BYTES)
        self.bytes += len(data)
        text = self.decoder.decode(data, final=not data)
        self.eof = not data
        self._line += self.buf.count("\n", self._counted, self.pos)
        self.buf, self.pos, self._counted = self.buf[self.pos :] + text, 0, 0
        return True

    def skip_space(self) -> None:
        while True:
            while self.pos < len(self.buf) and self.buf[self.pos] in _SPACE:
                self.pos += 1
            if self.pos < len(self.buf) or not self.more():
                return

    def at_end(self) -> bool:
        return self.pos >= len(self.buf) and not self.more()

    def take(self, char: str) -> bool:
        if self.pos >= len(self.buf) and not self.more():
            return False
        if self.buf[self.pos] == char:
            self.pos += 1
            return True
        return False

    def line(self) -> int:
        self._line += self.buf.count("\n", self._counted, self.pos)
        self._counted = self.pos
        return self._line

    def decode(self, decoder: json.JSONDecoder) -> Any:
        """The JSON value at `pos`, reading more of the file until it is complete."""
        while True:
            try:
                value, end = decoder.raw_decode(self.buf, self.pos)
            except json.JSONDecodeError:
                if self.more():
                    continue
                raise _Invalid from None
            if end == len(self.buf) and self.more():
                continue  # a number (or literal) may go on in the next chunk
            self.pos = end
            return value
