"""Local data files -> rows (dicts), each remembering where it came from.

Formats: JSON (an array of objects, or JSON lines in a `.json` file, as Axolotl
accepts), JSONL, Parquet, CSV and `datasets.save_to_disk` directories (a Dataset,
or a DatasetDict read at `split`). The format comes from `ds_type`, else from the
extension (a directory is `arrow`).

Every row keeps its origin so later stages can name it in errors: `file:LINE` for
JSON, JSONL and CSV (the line the record starts on), `file:record N` (1-based) for
Parquet and Arrow. Bad input raises `DataError` (or `RecipeError` for a recipe
problem such as a missing path) with that location and what was expected.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from finetune.config.settings import DatasetSettings
from finetune.errors import DataError, RecipeError

EXTENSIONS = {".json": "json", ".jsonl": "jsonl", ".parquet": "parquet", ".csv": "csv", ".arrow": "arrow"}


@dataclass(frozen=True)
class Origins:
    """Where each row of a table came from: `file:LINE` or `file:record N` (both 1-based)."""

    source: str
    numbers: tuple[int, ...] | range
    unit: str  # "line" | "record"

    def __getitem__(self, index: int) -> str:
        number = self.numbers[index]
        return f"{self.source}:{number}" if self.unit == "line" else f"{self.source}:record {number}"

    def __len__(self) -> int:
        return len(self.numbers)


@dataclass(frozen=True)
class RawTable:
    """The rows of one dataset file, in file order, with their origins."""

    source: str
    rows: list[dict[str, Any]]
    origins: Origins


def resolve_format(dataset: DatasetSettings, path: Path) -> str:
    """`ds_type`, or the format implied by `path` (directory -> arrow)."""
    if dataset.ds_type is not None:
        return dataset.ds_type
    if path.is_dir():
        return "arrow"
    fmt = EXTENSIONS.get(path.suffix.lower())
    if fmt is None:
        known = ", ".join(sorted(EXTENSIONS))
        raise RecipeError(
            f"{dataset.where('path')}: cannot tell the format of `{dataset.path}` from its extension "
            f"(known: {known}); set `ds_type:` (json, jsonl, parquet, csv or arrow) on this dataset"
        )
    return fmt


def dataset_path(dataset: DatasetSettings) -> Path:
    """The dataset's path, resolved from the current directory; RecipeError naming the recipe line if missing."""
    path = Path(dataset.path).expanduser()
    if not path.exists():
        raise RecipeError(
            f"{dataset.where('path')}: dataset path `{dataset.path}` does not exist "
            f"(resolved to {path.resolve()}); relative paths are resolved from the current directory"
        )
    return path


def check_dataset_paths(datasets: Sequence[DatasetSettings]) -> None:
    """Fail fast, naming the recipe line, when any dataset path is missing (before slow model/tokenizer loads)."""
    for dataset in datasets:
        dataset_path(dataset)


def read_dataset(dataset: DatasetSettings) -> RawTable:
    """Read one `datasets:` entry into rows with origins."""
    path = dataset_path(dataset)
    fmt = resolve_format(dataset, path)
    if fmt != "arrow" and path.is_dir():
        raise RecipeError(f"{dataset.where('path')}: `{dataset.path}` is a directory, but ds_type is {fmt}")
    if fmt in ("json", "jsonl"):
        return read_json(path, lines_only=fmt == "jsonl")
    if fmt == "parquet":
        return read_parquet(path)
    if fmt == "csv":
        return read_csv(path)
    return read_arrow(path, dataset)


# --- JSON and JSON lines ------------------------------------------------------------------


def read_json(path: Path, *, lines_only: bool = False) -> RawTable:
    """A JSON array of objects, or one JSON object per line (blank lines skipped)."""
    data = path.read_bytes()
    bom = 3 if data.startswith(b"\xef\xbb\xbf") else 0
    start = _first_non_space(data[bom:])
    if start < 0:
        raise DataError(f"{path}: the file is empty; expected JSON objects (one per line, or a JSON array)")
    if data[bom + start : bom + start + 1] == b"[" and not lines_only:
        return _read_json_array(path, _decode(path, data))
    return _read_json_lines(path, data)


def _first_non_space(data: bytes) -> int:
    stripped = data.lstrip()
    return len(data) - len(stripped) if stripped else -1


def _decode(path: Path, data: bytes) -> str:
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = data[: exc.start].count(b"\n") + 1
        raise DataError(f"{path}:{line}: not valid UTF-8 ({exc.reason} at byte {exc.start})") from None


def _read_json_lines(path: Path, data: bytes) -> RawTable:
    rows: list[dict[str, Any]] = []
    lines: list[int] = []
    for row, number in json_lines(path, data.split(b"\n")):
        rows.append(row)
        lines.append(number)
    return RawTable(str(path), rows, Origins(str(path), tuple(lines), "line"))


def json_lines(path: Path, lines: Iterable[bytes]) -> Iterator[tuple[dict[str, Any], int]]:
    """(object, line number) of every non-blank line; DataError naming the line otherwise."""
    loads = json.loads
    for number, line in enumerate(lines, 1):
        if number == 1 and line.startswith(b"\xef\xbb\xbf"):
            line = line[3:]
        if not line.strip():
            continue
        try:
            row = loads(line)
        except json.JSONDecodeError as exc:
            raise DataError(
                f"{path}:{number}: invalid JSON at column {exc.colno}: {exc.msg}; "
                "expected one JSON object per line"
            ) from None
        except UnicodeDecodeError as exc:
            raise DataError(f"{path}:{number}: not valid UTF-8 ({exc.reason})") from None
        if type(row) is not dict:
            raise DataError(f"{path}:{number}: expected a JSON object per line, got {_json_kind(row)}")
        yield row, number


def _read_json_array(path: Path, text: str) -> RawTable:
    """Parse `[obj, obj, ...]` element by element so every record keeps its line."""
    decoder = json.JSONDecoder()
    rows: list[dict[str, Any]] = []
    lines: list[int] = []
    pos, line, counted = text.index("[") + 1, 1, 0
    length = len(text)

    def fail(at: int, what: str) -> DataError:
        at_line = text.count("\n", 0, at) + 1
        column = at - (text.rfind("\n", 0, at) + 1) + 1
        return DataError(f"{path}:{at_line}: invalid JSON at column {column}: {what}")

    while True:
        pos = _skip_space(text, pos)
        if pos >= length:
            raise fail(pos, "the array is not closed; expected `]`")
        if text[pos] == "]":
            break
        if rows:
            if text[pos] != ",":
                raise fail(pos, "expected `,` or `]` between array elements")
            pos = _skip_space(text, pos + 1)
            if pos >= length:
                raise fail(pos, "the array is not closed; expected `]`")
        line += text.count("\n", counted, pos)
        counted = pos
        try:
            row, end = decoder.raw_decode(text, pos)
        except json.JSONDecodeError as exc:
            raise fail(exc.pos, exc.msg) from None
        if type(row) is not dict:
            raise DataError(f"{path}:{line}: expected each array element to be a JSON object, got {_json_kind(row)}")
        rows.append(row)
        lines.append(line)
        pos = end
    if _skip_space(text, pos + 1) < length:
        raise fail(_skip_space(text, pos + 1), "extra data after the closing `]`")
    if not rows:
        raise DataError(f"{path}: the JSON array is empty; expected objects such as {{\"messages\": [...]}}")
    return RawTable(str(path), rows, Origins(str(path), tuple(lines), "line"))


def _skip_space(text: str, pos: int) -> int:
    length = len(text)
    while pos < length and text[pos] in " \t\r\n":
        pos += 1
    return pos


def _json_kind(value: Any) -> str:
    return {list: "an array", str: "a string", bool: "a boolean", type(None): "null"}.get(type(value), "a number")


# --- Parquet, CSV, Arrow ---------------------------------------------------------------------


def read_parquet(path: Path) -> RawTable:
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        table = pq.read_table(path)
    except (pa.ArrowInvalid, OSError) as exc:
        raise DataError(f"{path}: cannot read as Parquet: {exc}") from None
    return _table_rows(str(path), table.to_pylist())


def read_csv(path: Path) -> RawTable:
    """CSV with a header row; every value is a string. Origins are the line each record starts on."""
    import csv
    import io

    text = _decode(path, path.read_bytes())
    if not text.strip():
        raise DataError(f"{path}: the file is empty; expected a CSV header row and records")
    reader = csv.reader(io.StringIO(text, newline=""))
    try:
        header = next(reader)
        rows: list[dict[str, Any]] = []
        lines: list[int] = []
        start = reader.line_num + 1
        for record in reader:
            if record:
                if len(record) != len(header):
                    raise DataError(
                        f"{path}:{start}: expected {len(header)} fields (header: {', '.join(header)}), "
                        f"got {len(record)}"
                    )
                rows.append(dict(zip(header, record)))
                lines.append(start)
            start = reader.line_num + 1
    except csv.Error as exc:
        raise DataError(f"{path}:{reader.line_num}: invalid CSV: {exc}") from None
    if not rows:
        raise DataError(f"{path}: no records after the header row")
    return RawTable(str(path), rows, Origins(str(path), tuple(lines), "line"))


def read_arrow(path: Path, dataset: DatasetSettings) -> RawTable:
    """A `datasets.save_to_disk` directory (Dataset, or DatasetDict read at `split`)."""
    source, loaded = open_arrow(path, dataset)
    return _table_rows(source, loaded.to_list())


def open_arrow(path: Path, dataset: DatasetSettings) -> tuple[str, Any]:
    """(source name, the memory-mapped `datasets.Dataset`) of a save_to_disk directory."""
    import datasets

    try:
        loaded = datasets.load_from_disk(str(path))
    except (FileNotFoundError, ValueError) as exc:
        raise DataError(
            f"{path}: not a `datasets.save_to_disk` directory ({exc}); "
            "set `ds_type:` if this directory holds something else"
        ) from None
    source = str(path)
    if isinstance(loaded, datasets.DatasetDict):
        if dataset.split not in loaded:
            raise RecipeError(
                f"{dataset.where('split')}: `{dataset.path}` has no split `{dataset.split}`; "
                f"it has: {', '.join(loaded)}"
            )
        loaded = loaded[dataset.split]
        source = f"{path}[{dataset.split}]"
    return source, loaded


def _table_rows(source: str, rows: list[dict[str, Any]]) -> RawTable:
    if not rows:
        raise DataError(f"{source}: the dataset has no rows")
    return RawTable(source, rows, Origins(source, range(1, len(rows) + 1), "record"))
