"""On-disk pieces of a streaming build: tokenized-sample shards, kept texts, and the final split directories.

* `TokenShardWriter` / `TokenShards`: tokenized samples (int32 `input_ids` and `labels` lists) in Arrow
  IPC files of `shard_size` samples each, written as batches are produced and gathered back by sample
  index. Each gather memory-maps the shards it needs and lets go of them afterwards, so the pages it
  touched do not stay in this process's resident memory.
* `TextStore`: texts appended to one file, read back by index (the near-duplicate rule's kept texts).
* `SplitWriter`: a `datasets.save_to_disk` directory written chunk by chunk (one Arrow file per chunk,
  `state.json`, `dataset_info.json`), loaded by `datasets.load_from_disk` memory-mapped like any other.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator, MutableMapping
from pathlib import Path
from typing import Any

import numpy as np

from finetune.data.pack import Ragged

COLUMNS = ("input_ids", "labels")


def list_array(ragged: Ragged) -> Any:
    """A pyarrow int32 list array of the ragged sequences (large offsets only past 2**31 values)."""
    import pyarrow as pa

    big = ragged.offsets[-1] - ragged.offsets[0] >= 2**31
    offsets = pa.array((ragged.offsets - ragged.offsets[0]).astype(np.int64 if big else np.int32))
    values = pa.array(ragged.values[ragged.offsets[0] : ragged.offsets[-1]].astype(np.int32, copy=False))
    return (pa.LargeListArray if big else pa.ListArray).from_arrays(offsets, values)


def ragged_of(array: Any) -> Ragged:
    """The sequences of a pyarrow list array (or chunked array) as int32 values + int64 offsets."""
    import pyarrow as pa

    if isinstance(array, pa.ChunkedArray):
        array = array.combine_chunks() if array.num_chunks != 1 else array.chunk(0)
    offsets = array.offsets.to_numpy().astype(np.int64)
    values = array.values.to_numpy(zero_copy_only=False)[offsets[0] : offsets[-1]].astype(np.int32, copy=False)
    return Ragged(values, offsets - offsets[0])


class TokenShardWriter:
    """Appends tokenized batches to `<directory>/tokens-NNNNN.arrow`, `shard_size` samples per file."""

    def __init__(self, directory: Path, shard_size: int) -> None:
        self.directory = Path(directory)
        self.directory.mkdir(parents=True, exist_ok=True)
        self.shard_size = shard_size
        self.count = 0
        self._writer: Any = None
        self._sink: Any = None

    def add(self, ids: Ragged, labels: Ragged) -> None:
        start = 0
        while start < len(ids):
            room = self.shard_size - self.count % self.shard_size
            end = min(len(ids), start + room)
            self._write(_slice(ids, start, end), _slice(labels, start, end))
            start = end

    def _write(self, ids: Ragged, labels: Ragged) -> None:
        import pyarrow as pa

        if self.count % self.shard_size == 0:
            self._close_shard()
            self._sink = pa.OSFile(str(shard_path(self.directory, self.count // self.shard_size)), "wb")
            schema = pa.schema([(name, pa.list_(pa.int32())) for name in COLUMNS])
            self._writer = pa.ipc.new_file(self._sink, schema)
        batch = pa.record_batch([list_array(ids), list_array(labels)], names=list(COLUMNS))
        self._writer.write_batch(batch)
        self.count += len(ids)

    def _close_shard(self) -> None:
        if self._writer is not None:
            self._writer.close()
            self._sink.close()
            self._writer = self._sink = None

    def close(self) -> "TokenShards":
        self._close_shard()
        return TokenShards(self.directory, self.shard_size, self.count)


def shard_path(directory: Path, number: int) -> Path:
    return Path(directory) / f"tokens-{number:05d}.arrow"


def _slice(ragged: Ragged, start: int, end: int) -> Ragged:
    return Ragged(ragged.values, ragged.offsets[start : end + 1])


class TokenShards:
    """Read access to what a `TokenShardWriter` wrote."""

    def __init__(self, directory: Path, shard_size: int, count: int) -> None:
        self.directory, self.shard_size, self.count = Path(directory), shard_size, count

    @property
    def files(self) -> list[Path]:
        return [shard_path(self.directory, n) for n in range(-(-self.count // self.shard_size))]

    def gather(self, indices: np.ndarray) -> tuple[Ragged, Ragged]:
        """(input_ids, labels) of the samples at `indices`, in that order."""
        import pyarrow as pa

        indices = np.asarray(indices, dtype=np.int64)
        shard_of = indices // self.shard_size
        by_shard = np.argsort(shard_of, kind="stable")
        pieces: dict[str, list[Ragged]] = {name: [] for name in COLUMNS}
        bounds = np.flatnonzero(np.diff(shard_of[by_shard])) + 1
        for group in np.split(by_shard, bounds) if len(indices) else []:
            number = int(shard_of[group[0]])
            with pa.memory_map(str(shard_path(self.directory, number))) as source:
                table = pa.ipc.open_file(source).read_all()
                taken = table.take(pa.array(indices[group] - number * self.shard_size))
                for name in COLUMNS:
                    pieces[name].append(ragged_of(taken.column(name)))
                del table, taken
        inverse = np.empty(len(indices), dtype=np.int64)
        inverse[by_shard] = np.arange(len(indices))
        ids, labels = (_concat(pieces[name]).take(inverse) for name in COLUMNS)
        return ids, labels


def _concat(parts: list[Ragged]) -> Ragged:
    if not parts:
        return Ragged(np.zeros(0, dtype=np.int32), np.zeros(1, dtype=np.int64))
    lengths = np.concatenate([part.lengths for part in parts])
    offsets = np.zeros(len(lengths) + 1, dtype=np.int64)
    np.cumsum(lengths, out=offsets[1:])
    return Ragged(np.concatenate([part.values for part in parts]), offsets)


class TextStore(MutableMapping[int, str]):
    """Texts kept on disk by integer key (appended to one file; an index of offsets in memory)."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self._handle = open(self.path, "w+b")
        self._spans: dict[int, tuple[int, int]] = {}
        self._end = 0

    def __setitem__(self, key: int, text: str) -> None:
        blob = text.encode("utf-8")
        self._handle.seek(self._end)
        self._handle.write(blob)
        self._spans[key] = (self._end, len(blob))
        self._end += len(blob)

    def __getitem__(self, key: int) -> str:
        start, size = self._spans[key]
        self._handle.flush()
        return os.pread(self._handle.fileno(), size, start).decode("utf-8")

    def __delitem__(self, key: int) -> None:
        del self._spans[key]

    def __iter__(self) -> Iterator[int]:
        return iter(self._spans)

    def __len__(self) -> int:
        return len(self._spans)

    def close(self) -> None:
        self._handle.close()


class SplitWriter:
    """Writes one split as a `datasets.save_to_disk` directory, a chunk of rows at a time."""

    def __init__(self, directory: Path, names: tuple[str, ...]) -> None:
        self.directory = Path(directory)
        self.directory.mkdir(parents=True)
        self.names = names
        self.files: list[Path] = []
        self.rows = 0

    def write(self, columns: dict[str, Ragged]) -> None:
        import pyarrow as pa
        from datasets.arrow_writer import ArrowWriter

        table = pa.table({name: list_array(columns[name]) for name in self.names})
        path = self.directory / f"part-{len(self.files):05d}.arrow"
        writer = ArrowWriter(path=str(path), features=_features(self.names))
        try:
            writer.write_table(table)
            writer.finalize()
        finally:
            writer.close()
        self.files.append(path)
        self.rows += table.num_rows

    def close(self, fingerprint: str) -> None:
        """Name the files as save_to_disk does and write state.json and dataset_info.json."""
        import datasets

        if not self.files:  # an empty split still has its columns
            empty = Ragged(np.zeros(0, dtype=np.int32), np.zeros(1, dtype=np.int64))
            self.write({name: empty for name in self.names})
        total = len(self.files)
        names = [f"data-{n:05d}-of-{total:05d}.arrow" for n in range(total)]
        for path, name in zip(self.files, names):
            os.replace(path, self.directory / name)
        state = {
            "_data_files": [{"filename": name} for name in names],
            "_fingerprint": fingerprint,
            "_format_columns": None,
            "_format_kwargs": {},
            "_format_type": None,
            "_output_all_columns": False,
            "_split": None,
        }
        (self.directory / "state.json").write_text(json.dumps(state, indent=2, sort_keys=True), encoding="utf-8")
        datasets.DatasetInfo(features=_features(self.names)).write_to_directory(str(self.directory))


def _features(names: tuple[str, ...]) -> Any:
    import datasets

    return datasets.Features({name: datasets.List(datasets.Value("int32")) for name in names})
