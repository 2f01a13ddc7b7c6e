"""Checkpoints that are whole or skipped: sealed after saving, verified before resuming.

The Trainer writes a checkpoint's files and returns; a crash, a full disk or a kill right after can leave
a file cut short that the next run would resume from. `seal_checkpoint` flushes every file of the
checkpoint to disk and only then writes the `COMPLETE_MARKER` (fsynced, with its directory): a JSON list of
every file under the checkpoint, DeepSpeed's `global_stepN/` shards included, with its size.

`verify_checkpoint` checks, before a resume reads anything:
- a sealed checkpoint: every file the marker lists is there with the size it had when sealed;
- every checkpoint (sealed or from an older run without a marker): the trainer state and configs parse, every
  weights file is whole (`verify_weights`), and every `torch.save` archive anywhere under it (optimizer,
  scheduler, RNG state, DeepSpeed's `global_stepN/*optim_states.pt`) is a whole zip (a cut-short one lacks
  its end record).
The TrainerCallback that seals each checkpoint lives in `finetune.train.resilience` (it needs transformers).
"""

from __future__ import annotations

import json
import os
import zipfile
from pathlib import Path

from finetune.errors import DataError
from finetune.runs.atomic import fsync_path, fsync_tree, write_text
from finetune.runs.layout import (ADAPTER_CONFIG, COMPLETE_MARKER, DEEPSPEED_LATEST, MODEL_CONFIG, SAFETENSORS_INDEX,
                                  TRAINER_STATE)
from finetune.runs.read import REPAIR_HINT, read_json, verify_weights

MARKER_FORMAT = 1


def checkpoint_files(checkpoint: Path) -> dict[str, int]:
    """{path relative to `checkpoint` (POSIX): size in bytes} of every file under it, but the marker."""
    checkpoint = Path(checkpoint)
    files = {}
    for root, _, names in os.walk(checkpoint):
        for name in names:
            path = Path(root) / name
            relative = path.relative_to(checkpoint).as_posix()
            if relative != COMPLETE_MARKER:
                files[relative] = path.stat().st_size
    return dict(sorted(files.items()))


def seal_checkpoint(checkpoint: Path) -> Path:
    """fsync every file under `checkpoint` and the directories holding them, then write the marker (listing
    each file with its size) last, atomically."""
    checkpoint = Path(checkpoint)
    fsync_tree(checkpoint)
    record = {"format": MARKER_FORMAT, "files": checkpoint_files(checkpoint)}
    marker = write_text(checkpoint / COMPLETE_MARKER, json.dumps(record, indent=1) + "\n")
    fsync_path(checkpoint)
    return marker


def is_sealed(checkpoint: Path) -> bool:
    return (Path(checkpoint) / COMPLETE_MARKER).is_file()


def sealed_files(checkpoint: Path) -> dict[str, int] | None:
    """The files and sizes the marker recorded; None for a checkpoint without one, or with the text marker of
    earlier versions (which recorded no sizes)."""
    marker = Path(checkpoint) / COMPLETE_MARKER
    if not marker.is_file():
        return None
    try:
        record = json.loads(marker.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        text = marker.read_text(encoding="utf-8", errors="replace") if marker.is_file() else ""
        if text.startswith("every file"):  # the plain-text marker of earlier versions
            return None
        raise DataError(f"{marker} is damaged (not the JSON list of files it should be); {REPAIR_HINT}") from None
    files = record.get("files") if isinstance(record, dict) else None
    if not isinstance(files, dict) or not all(isinstance(size, int) for size in files.values()):
        raise DataError(f"{marker} is damaged (no table of files and sizes); {REPAIR_HINT}")
    return files


def verify_checkpoint(checkpoint: Path) -> None:
    """DataError naming what is missing or damaged in a checkpoint directory (see the module docstring)."""
    checkpoint = Path(checkpoint)
    for relative, size in (sealed_files(checkpoint) or {}).items():
        path = checkpoint / relative
        try:
            actual = path.stat().st_size
        except FileNotFoundError:
            raise DataError(f"{path} is missing (the checkpoint was sealed with it); {REPAIR_HINT}") from None
        if actual != size:
            raise DataError(f"{path} is damaged: {actual} bytes, {size} when the checkpoint was sealed "
                            f"(cut short by a crash, a full disk or a partial copy?); {REPAIR_HINT}")
    read_json(checkpoint / TRAINER_STATE)
    for name in (ADAPTER_CONFIG, MODEL_CONFIG):
        if (checkpoint / name).is_file():
            read_json(checkpoint / name)
    for path in sorted(checkpoint.rglob("*")):  # optimizer, scheduler, RNG state, DeepSpeed's shards
        if path.suffix in (".pt", ".pth") and path.is_file() and not zipfile.is_zipfile(path):
            raise DataError(f"{path} is damaged: not a whole torch.save archive (cut short?); {REPAIR_HINT}")
    weights = any(checkpoint.glob("*.safetensors")) or (checkpoint / SAFETENSORS_INDEX).is_file()
    if not weights and deepspeed_state(checkpoint):
        return  # ZeRO-3 without stage3_gather_16bit_weights_on_model_save: the weights are in DeepSpeed's state
    verify_weights(checkpoint)


def deepspeed_state(checkpoint: Path) -> bool:
    """Whether `checkpoint` holds DeepSpeed's own state: a `latest` file naming a non-empty `global_step*` dir."""
    try:
        tag = (Path(checkpoint) / DEEPSPEED_LATEST).read_text(encoding="utf-8").strip()
    except (OSError, UnicodeDecodeError):
        return False
    return bool(tag) and (checkpoint / tag).is_dir() and any((checkpoint / tag).iterdir())
