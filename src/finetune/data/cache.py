"""The prepared-data cache: a content fingerprint and atomic save/load.

The fingerprint (sha256) covers everything that can change the prepared tokens:
the data files' bytes (every file of a directory), the tokenizer (its full
serialized form, special tokens, chat template source), every recipe setting marked
data-affecting on its field (`settings.data_values`), and the code (finetune version, cache
format and the source of the data modules). Editing a data file in place, even to
the same size, therefore misses the cache.

Layout: `<dataset_prepared_path>/<fingerprint>/{train,eval}/` (`datasets.save_to_disk`
directories with integer list columns, written by finetune.data.shards) + `summary.json` +
`COMPLETE`. A build is written into a temporary sibling directory and moved into place with `os.replace`;
`COMPLETE` (holding the fingerprint) is written last, and loading checks it, so a
crashed or partial write is never loaded.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import finetune
from finetune.config.settings import Settings, data_values
from finetune.data.readers import dataset_path

CACHE_FORMAT = 1
MARKER = "COMPLETE"
SUMMARY = "summary.json"
SPLITS = ("train", "eval")
# Modules whose code decides the prepared tokens; editing them invalidates caches.
_CODE = (
    "readers.py", "formats.py", "templates.py", "tokenize.py", "pack.py", "build.py", "cache.py", "neardup.py",
    "stream.py", "stream_readers.py", "parallel.py", "shards.py", "summary.py", "pairs.py",
)


def fingerprint(settings: Settings, tokenizer: Any, template_source: str) -> str:
    """sha256 hex digest of data contents + tokenizer + data-affecting settings + code."""
    digest = hashlib.sha256()

    def part(name: str, value: Any) -> None:
        blob = value if isinstance(value, bytes) else json.dumps(value, sort_keys=True, default=str).encode()
        digest.update(f"{name}:{len(blob)}:".encode())
        digest.update(blob)

    part("code", _code_identity())
    part("settings", data_values(settings))
    for index, dataset in enumerate(settings.datasets):
        part(f"data{index}", file_digest(dataset_path(dataset)).encode())
    part("tokenizer", tokenizer_identity(tokenizer))
    part("template", template_source.encode())
    return digest.hexdigest()


def file_digest(path: Path) -> str:
    """sha256 of a file's bytes, or of every file (relative path + bytes) under a directory."""
    digest = hashlib.sha256()
    files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
    for file in files:
        if path.is_dir():
            digest.update(f"{file.relative_to(path).as_posix()}\0".encode())
        with open(file, "rb") as handle:
            for block in iter(lambda: handle.read(1 << 22), b""):
                digest.update(block)
        digest.update(b"\0")
    return digest.hexdigest()


def tokenizer_identity(tokenizer: Any) -> bytes:
    """The tokenizer's serialized vocabulary/merges/normalizers plus its special tokens and template."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    body = backend.to_str() if backend is not None else repr(sorted(tokenizer.get_vocab().items()))
    extra = {
        "class": type(tokenizer).__name__,
        "special": {k: str(v) for k, v in tokenizer.special_tokens_map.items()},
        "ids": [tokenizer.bos_token_id, tokenizer.eos_token_id, tokenizer.pad_token_id],
        "chat_template": getattr(tokenizer, "chat_template", None),
    }
    return hashlib.sha256(body.encode()).hexdigest().encode() + json.dumps(extra, sort_keys=True).encode()


def _code_identity() -> dict[str, str]:
    here = Path(__file__).parent
    code = hashlib.sha256()
    for name in _CODE:
        file = here / name
        code.update(file.read_bytes() if file.is_file() else b"")
    return {"finetune": finetune.__version__, "format": str(CACHE_FORMAT), "code": code.hexdigest()}


# --- save / load -------------------------------------------------------------------------------


def commit(directory: Path, key: str, fill: Callable[[Path], dict[str, Any]]) -> dict[str, Any]:
    """Atomically make `directory` (= <prepared>/<key>): `fill(tmp)` writes the split directories into a
    temporary sibling and returns the summary; then summary.json, the marker, and the move into place.
    Whatever `fill` leaves besides the splits (scratch files) must be gone when it returns."""
    directory = Path(directory)
    directory.parent.mkdir(parents=True, exist_ok=True)
    tmp = directory.parent / f".tmp-{key[:16]}-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    try:
        tmp.mkdir()
        summary = fill(tmp)
        (tmp / SUMMARY).write_text(json.dumps({**summary, "fingerprint": key}, indent=2) + "\n", encoding="utf-8")
        (tmp / MARKER).write_text(key + "\n", encoding="utf-8")
        _replace_dir(tmp, directory)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    _remove_abandoned(directory.parent, key)
    return summary


def _replace_dir(src: Path, dst: Path) -> None:
    """Move `src` to `dst`; an existing `dst` (forced rebuild, stale partial copy) is moved aside first."""
    old = None
    if dst.exists():
        old = dst.parent / f".old-{dst.name[:16]}-{uuid.uuid4().hex[:8]}"
        os.replace(dst, old)
    os.replace(src, dst)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def _remove_abandoned(parent: Path, key: str) -> None:
    """Delete temp dirs for `key` left by processes that no longer run (crashed builds)."""
    for stale in parent.glob(f".tmp-{key[:16]}-*"):
        try:
            pid = int(stale.name.split("-")[2])
            os.kill(pid, 0)
        except ProcessLookupError:
            shutil.rmtree(stale, ignore_errors=True)
        except (ValueError, IndexError, PermissionError, OSError):
            continue


def is_complete(directory: Path, key: str) -> bool:
    """True when `directory` holds a finished build whose marker and summary name `key`."""
    try:
        if (Path(directory) / MARKER).read_text(encoding="utf-8").strip() != key:
            return False
        return read_summary(directory).get("fingerprint") == key
    except (OSError, ValueError):
        return False


def read_summary(directory: Path) -> dict[str, Any]:
    return json.loads((Path(directory) / SUMMARY).read_text(encoding="utf-8"))


def load(directory: Path, key: str) -> tuple[dict[str, Any], dict[str, Any]] | None:
    """(`{"train": Dataset, "eval": Dataset | None}`, summary) of a complete build for `key`, else None."""
    import datasets

    directory = Path(directory)
    if not is_complete(directory, key):
        return None
    splits: dict[str, Any] = {}
    try:
        for name in SPLITS:
            split_dir = directory / name
            splits[name] = datasets.load_from_disk(str(split_dir)) if split_dir.is_dir() else None
        return splits, read_summary(directory)
    except (OSError, ValueError):  # damaged after completion: rebuild rather than fail
        return None
