"""Atomic writes: a file or directory is either whole at its final name or absent.

Everything is written under a temporary name beside the target (same directory, so the same file system),
flushed to disk (fsync), renamed over the target with `os.replace`, and the directory holding it is fsynced so
the rename itself survives a power cut. An error, a full disk or Ctrl-C leaves the old target untouched and no
temporary file behind. Callers that turn a full disk into their own message catch `OSError` with
`exc.errno in DISK_FULL`.
"""

from __future__ import annotations

import errno
import os
import shutil
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

DISK_FULL = (errno.ENOSPC, errno.EDQUOT)


def temp_path(target: str | Path, kind: str = "tmp") -> Path:
    """The hidden name beside `target` that this process writes it under: `.<name>.<kind>-<pid>`."""
    target = Path(target)
    return target.with_name(f".{target.name}.{kind}-{os.getpid()}")


def fsync_path(path: str | Path) -> None:
    """Flush a file, or a directory's entries, to disk (directories are skipped where they cannot be opened)."""
    path = Path(path)
    if path.is_dir():
        try:
            fd = os.open(path, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
        except OSError:  # Windows cannot open directories
            return
    else:
        fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    except OSError as exc:
        if exc.errno not in (errno.EINVAL, errno.EBADF) or not path.is_dir():
            raise  # some file systems refuse fsync on a directory; a file's fsync error is real
    finally:
        os.close(fd)


def fsync_tree(root: str | Path) -> None:
    """fsync every file under `root`, then each directory holding them (deepest first)."""
    for directory, _, names in os.walk(root, topdown=False):
        for name in names:
            fsync_path(Path(directory) / name)
        fsync_path(directory)


def publish(tmp: str | Path, target: str | Path) -> Path:
    """Make the finished temporary file or directory `tmp` the `target`: fsync it, rename, fsync the parent.
    A directory target that exists is moved aside first and removed after (os.replace cannot replace a
    non-empty directory)."""
    tmp, target = Path(tmp), Path(target)
    if tmp.is_dir():
        fsync_tree(tmp)
        old = temp_path(target, "old") if target.exists() else None
        if old is not None:
            os.replace(target, old)
        os.replace(tmp, target)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True) if old.is_dir() else old.unlink(missing_ok=True)
    else:
        fsync_path(tmp)
        os.replace(tmp, target)
    fsync_path(target.parent)
    return target


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)


@contextmanager
def atomic_path(target: str | Path) -> Iterator[Path]:
    """Yield a temporary path beside `target` to write a file or a directory at (any writer: np.save, a GGUF
    writer, a merge); on a clean exit it becomes `target` (`publish`), on an error it is removed."""
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = temp_path(target)
    try:
        yield tmp
        publish(tmp, target)
    finally:
        _remove(tmp)


def write_bytes(path: str | Path, data: bytes) -> Path:
    """Write `data` to `path` atomically."""
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as handle:
            handle.write(data)
    return Path(path)


def write_text(path: str | Path, text: str) -> Path:
    """Write `text` (UTF-8) to `path` atomically."""
    return write_bytes(path, text.encode("utf-8"))
