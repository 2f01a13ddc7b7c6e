"""Streaming safetensors I/O: sharded checkpoints written tensor by tensor, never assembled in memory.

A safetensors file is an 8-byte little-endian header length, a JSON header (dtype code, shape and
byte offsets per tensor), then the raw tensor bytes. Since the header only needs shapes and dtypes,
it is planned first and each tensor is then produced, written and dropped one at a time: peak memory
is one tensor, whatever the checkpoint size. Sharding follows transformers' layout
(`model-00001-of-0000N.safetensors` + `model.safetensors.index.json`; a tensor is never split).

torch is imported only where tensor bytes are written.
"""

from __future__ import annotations

import json
import math
import struct
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Optional

from finetune.errors import FinetuneError

if TYPE_CHECKING:
    import torch

INDEX_FILE = "model.safetensors.index.json"
FLOAT_CODES = ("F64", "F32", "F16", "BF16")
DTYPE_CODES = {"float64": "F64", "float32": "F32", "float16": "F16", "bfloat16": "BF16", "int64": "I64",
               "int32": "I32", "int16": "I16", "int8": "I8", "uint8": "U8", "bool": "BOOL"}
DTYPE_SIZES = {"F64": 8, "F32": 4, "F16": 2, "BF16": 2, "I64": 8, "I32": 4, "I16": 2, "I8": 1, "U8": 1, "BOOL": 1}


def st_code(dtype: torch.dtype) -> str:
    """The safetensors dtype code of a torch dtype (torch.bfloat16 -> "BF16")."""
    return DTYPE_CODES[str(dtype).removeprefix("torch.")]


def nbytes(shape: list[int], code: str) -> int:
    if code not in DTYPE_SIZES:
        raise FinetuneError(f"cannot merge tensors of dtype {code}")
    return math.prod(shape) * DTYPE_SIZES[code]


def weight_files(model_dir: Path) -> Optional[dict[str, Path]]:
    """Tensor name -> the safetensors file holding it (sharded index or a single file); None when there is none."""
    from safetensors import safe_open

    index = model_dir / INDEX_FILE
    if index.is_file():
        weight_map = json.loads(index.read_text(encoding="utf-8"))["weight_map"]
        return {key: model_dir / name for key, name in weight_map.items()}
    single = model_dir / "model.safetensors"
    if single.is_file():
        with safe_open(str(single), framework="pt") as f:
            return {key: single for key in f.keys()}
    return None


def plan_shards(keys: list[str], shapes: dict, codes: dict, limit: int) -> list[list[str]]:
    """`keys` in order, cut into shards of at most `limit` bytes (a tensor larger than `limit` gets its own)."""
    shards: list[list[str]] = [[]]
    size = 0
    for key in keys:
        size_of = nbytes(shapes[key], codes[key])
        if shards[-1] and size + size_of > limit:
            shards.append([])
            size = 0
        shards[-1].append(key)
        size += size_of
    return shards


def write_shard(path: Path, keys: list[str], shapes: dict, codes: dict, produce: Callable[[str], Any],
                on_written: Optional[Callable[[str], None]] = None) -> int:
    """Write one safetensors file tensor by tensor: the header is computed from the planned shapes first.

    `produce(key)` returns the tensor (contiguous, of the planned shape and dtype code); `on_written(key)`
    is called once its bytes are written. Returns the data size in bytes.
    """
    import torch

    header: dict[str, Any] = {"__metadata__": {"format": "pt"}}
    offset = 0
    for key in keys:
        size = nbytes(shapes[key], codes[key])
        header[key] = {"dtype": codes[key], "shape": shapes[key], "data_offsets": [offset, offset + size]}
        offset += size
    blob = json.dumps(header, separators=(",", ":")).encode("utf-8")
    blob += b" " * (-len(blob) % 8)
    with open(path, "wb") as handle:
        handle.write(struct.pack("<Q", len(blob)))
        handle.write(blob)
        for key in keys:
            tensor = produce(key)
            if list(tensor.shape) != shapes[key] or st_code(tensor.dtype) != codes[key]:
                raise FinetuneError(f"internal error: {key} came out {list(tensor.shape)} {tensor.dtype}")
            handle.write(memoryview(tensor.reshape(-1).view(torch.uint8).numpy()))
            if on_written is not None:
                on_written(key)
            del tensor
    return offset


def write_sharded(out_dir: Path, keys: list[str], shapes: dict, codes: dict, produce: Callable[[str], Any],
                  max_shard_bytes: int, on_written: Optional[Callable[[str], None]] = None,
                  ) -> tuple[dict[str, str], int, int]:
    """Write `keys` into `out_dir` as transformers-named shards; returns (weight_map, total bytes, shard count).

    The index file is not written: call `write_index` once everything else has succeeded.
    """
    shards = plan_shards(keys, shapes, codes, max_shard_bytes)
    weight_map: dict[str, str] = {}
    total = 0
    for number, shard in enumerate(shards, 1):
        name = f"model-{number:05d}-of-{len(shards):05d}.safetensors"
        total += write_shard(out_dir / name, shard, shapes, codes, produce, on_written)
        weight_map.update({key: name for key in shard})
    return weight_map, total, len(shards)


def write_index(out_dir: Path, weight_map: dict[str, str], total_size: int) -> None:
    index = {"metadata": {"total_size": total_size}, "weight_map": weight_map}
    (out_dir / INDEX_FILE).write_text(json.dumps(index, indent=2) + "\n", encoding="utf-8")
