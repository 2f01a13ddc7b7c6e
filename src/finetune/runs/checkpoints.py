"""Checkpoints that are complete or absent: every file fsynced, then `.complete` written last.

The Trainer writes a checkpoint's files and returns; a crash, a full disk or a kill right after can leave
a file cut short that the next run would resume from. `seal_checkpoint` flushes every file of the
checkpoint to disk and only then writes `finetune.runs.read.COMPLETE_MARKER` (fsynced, with its directory).
Resuming verifies every checkpoint anyway (`finetune.runs.read.verify_checkpoint`, which also accepts
checkpoints of older runs that have no marker, and checks the optimizer/scheduler/RNG archives whole);
the marker records that every file was on disk before it was written.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from finetune.runs.read import COMPLETE_MARKER


def _fsync(path: Path) -> None:
    flags = os.O_RDONLY | getattr(os, "O_DIRECTORY", 0) if path.is_dir() else os.O_RDONLY
    try:
        fd = os.open(path, flags)
    except OSError:  # directories cannot be opened on some platforms (Windows)
        return
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def seal_checkpoint(checkpoint: Path) -> Path:
    """fsync every file under `checkpoint` and the directories holding them, then write the marker last."""
    checkpoint = Path(checkpoint)
    for root, _, names in os.walk(checkpoint):
        for name in names:
            if name != COMPLETE_MARKER:
                _fsync(Path(root) / name)
        _fsync(Path(root))
    marker = checkpoint / COMPLETE_MARKER
    with marker.open("w", encoding="utf-8") as handle:
        handle.write("every file of this checkpoint was on disk before this one was written\n")
        handle.flush()
        os.fsync(handle.fileno())
    _fsync(checkpoint)
    return marker


def seal_checkpoints_callback() -> Any:
    """TrainerCallback sealing each checkpoint right after the Trainer saved it (on the main process).
    Put it before any callback whose on_save may raise (the signal stop does), so the marker comes first."""
    from transformers import TrainerCallback

    class SealCheckpoints(TrainerCallback):
        def on_save(self, args, state, control, **kwargs):  # noqa: ANN001
            checkpoint = Path(args.output_dir) / f"checkpoint-{state.global_step}"
            if state.is_world_process_zero and checkpoint.is_dir():
                seal_checkpoint(checkpoint)
            return control

    return SealCheckpoints()
