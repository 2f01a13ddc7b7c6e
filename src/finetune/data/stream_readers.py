"""The rows of a dataset file a batch at a time (`iter_dataset`), every format streamed.

Memory is bounded by one read chunk plus the largest record, not the file. Rows and origins are those of the
whole-file readers in finetune.data.readers. Bad input is rare and its message must be exactly the whole-file
reader's, so at the first problem a JSON array or CSV stream hands the file to that reader and raises its error.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from finetune.config.settings import DatasetSettings
from finetune.data.jsonstream import JsonStream
from finetune.data.readers import (
    Origins,
    RawTable,
    dataset_path,
    json_lines,
    open_arrow,
    read_csv,
    read_dataset,
    read_json,
    resolve_format,
)
from finetune.errors import DataError

CHUNK_BYTES = 1 << 22  # bytes read at a time by the JSON array stream


@dataclass(frozen=True)
class RowBatch:
    """Consecutive rows of one dataset file with their origins, and the input bytes they came from
    (for progress; 0 where the format is read whole)."""

    table: RawTable
    bytes_read: int


def iter_dataset(dataset: DatasetSettings, batch_size: int) -> Iterator[RowBatch]:
    """The rows of one `datasets:` entry in file order, `batch_size` at a time, with their origins.

    Every format is streamed (memory does not grow with the file). Errors are those of `read_dataset`.
    """
    path = dataset_path(dataset)
    fmt = resolve_format(dataset, path)
    if fmt in ("json", "jsonl") and not path.is_dir() and (fmt == "jsonl" or _first_byte(path) != b"["):
        yield from _stream_json_lines(path, batch_size)
        return
    if fmt == "parquet" and not path.is_dir():
        yield from _stream_parquet(path, batch_size)
        return
    if fmt == "arrow":
        yield from _stream_arrow(path, dataset, batch_size)
        return
    if fmt == "csv" and not path.is_dir():
        yield from stream_csv(path, batch_size)
        return
    if fmt == "json" and not path.is_dir():
        yield from stream_json_array(path, batch_size)
        return
    table = read_dataset(dataset)  # a directory given as parquet/json/csv: read as read_dataset reads it
    for start in range(0, len(table.rows), batch_size):
        rows = table.rows[start : start + batch_size]
        numbers = table.origins.numbers[start : start + batch_size]
        yield RowBatch(RawTable(table.source, rows, Origins(table.source, numbers, table.origins.unit)), 0)


# --- formats read a batch at a time ------------------------------------------------------------------


def _stream_parquet(path: Path, batch_size: int) -> Iterator[RowBatch]:
    import pyarrow as pa
    import pyarrow.parquet as pq

    source, start = str(path), 0
    try:
        file = pq.ParquetFile(path)
        share = path.stat().st_size / max(file.metadata.num_rows, 1)  # bytes per row, for progress
        for batch in file.iter_batches(batch_size=batch_size):
            yield _record_batch(source, batch.to_pylist(), start, share)
            start += batch.num_rows
    except (pa.ArrowInvalid, OSError) as exc:
        raise DataError(f"{path}: cannot read as Parquet: {exc}") from None
    if not start:
        raise DataError(f"{source}: the dataset has no rows")


def _stream_arrow(path: Path, dataset: DatasetSettings, batch_size: int) -> Iterator[RowBatch]:
    source, loaded = open_arrow(path, dataset)
    if not len(loaded):
        raise DataError(f"{source}: the dataset has no rows")
    share = sum(p.stat().st_size for p in path.rglob("*") if p.is_file()) / len(loaded)
    for start in range(0, len(loaded), batch_size):
        columns = loaded[start : start + batch_size]
        rows = [dict(zip(columns, values)) for values in zip(*columns.values())]
        yield _record_batch(source, rows, start, share)


def _record_batch(source: str, rows: list[dict[str, Any]], start: int, row_bytes: float) -> RowBatch:
    origins = Origins(source, range(start + 1, start + len(rows) + 1), "record")
    return RowBatch(RawTable(source, rows, origins), round(row_bytes * len(rows)))


def _first_byte(path: Path) -> bytes:
    """The first non-whitespace byte of a file (b"" when there is none)."""
    with open(path, "rb") as handle:
        for number, block in enumerate(iter(lambda: handle.read(1 << 16), b"")):
            stripped = (block.removeprefix(b"\xef\xbb\xbf") if number == 0 else block).lstrip()
            if stripped:
                return stripped[:1]
    return b""


def _stream_json_lines(path: Path, batch_size: int) -> Iterator[RowBatch]:
    source = str(path)
    with open(path, "rb") as handle:
        rows: list[dict[str, Any]] = []
        numbers: list[int] = []
        consumed = counted = total = 0

        def counting(lines: Iterable[bytes]) -> Iterator[bytes]:
            nonlocal consumed
            for line in lines:
                consumed += len(line)
                yield line.rstrip(b"\n")

        for row, number in json_lines(path, counting(handle)):
            rows.append(row)
            numbers.append(number)
            total += 1
            if len(rows) == batch_size:
                yield RowBatch(RawTable(source, rows, Origins(source, tuple(numbers), "line")), consumed - counted)
                rows, numbers, counted = [], [], consumed
        if rows:
            yield RowBatch(RawTable(source, rows, Origins(source, tuple(numbers), "line")), consumed - counted)
        elif not total:
            raise DataError(f"{path}: the file is empty; expected JSON objects (one per line, or a JSON array)")


def stream_json_array(path: Path, batch_size: int) -> Iterator[RowBatch]:
    """The objects of a `[{...}, {...}]` file, `batch_size` at a time, each with the line it starts on."""
    stream = JsonStream(path, chunk_bytes=CHUNK_BYTES)
    source = str(path)
    rows: list[dict[str, Any]] = []
    lines: list[int] = []
    total = reported = 0
    try:
        for _ in stream.elements():
            line = stream.line()
            row = stream.value()
            if type(row) is not dict:
                raise _Invalid
            rows.append(row)
            lines.append(line)
            total += 1
            if len(rows) == batch_size:
                table = RawTable(source, rows, Origins(source, tuple(lines), "line"))
                yield RowBatch(table, stream.bytes_read - reported)
                rows, lines, reported = [], [], stream.bytes_read
        if stream.peek() or not total:
            raise _Invalid  # extra data after `]`, or an empty array
        if rows:
            yield RowBatch(RawTable(source, rows, Origins(source, tuple(lines), "line")), stream.bytes_read - reported)
    except (_Invalid, DataError):
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
