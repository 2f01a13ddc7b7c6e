"""Reference log-probs of preference pairs: computed once, cached with the prepared data, reused.

The reference is the model the policy starts from (finetune.config.describe.reference_model says
which): a fresh adapter is disabled (the base), an adapter continued from `lora_model_dir` is used
as loaded (base + SFT adapter), a full fine-tune's model as loaded. Its log-prob of a reply is the
sum over the reply tokens of log p(token | everything before it), exactly what DPOTrainer computes
on the fly (tested: precomputed == on-the-fly).

Cache: `<prepared>/<data fingerprint>/reference-<key>/{train,eval}.npy` ([pairs, 2] float64:
chosen, rejected), written atomically. The key hashes the data fingerprint, the reference weights
(base weight files, the lora_model_dir adapter file) by content, how they are loaded (quantization,
compute dtype, attention backend) and this module's code; not rl_beta nor the loss type, which do
not change a log-prob. A re-run, a resume or a new beta therefore reuses the file. Hashing the base
weights reads them once; the digest is remembered per file path, size and modification time.
"""

from __future__ import annotations

import hashlib
import json
import logging
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

import numpy as np

from finetune.config.settings import Settings
from finetune.data.cache import file_digest
from finetune.model.load import Precision
from finetune.model.loss import sequence_log_probs
from finetune.runs.atomic import atomic_path, write_text
from finetune.runs.read import base_model_dir

if TYPE_CHECKING:
    from datasets import Dataset
    from peft import PeftModel
    from transformers import PreTrainedModel

    from finetune.data.build import PreparedData

logger = logging.getLogger(__name__)

REF_COLUMNS = ("ref_chosen_logps", "ref_rejected_logps")
WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth")
DIGESTS = "weight-digests.json"  # {"path:size:mtime_ns": sha256} next to the prepared data


def reference_key(settings: Settings, data_key: str, precision: Precision) -> str:
    """sha256 of everything a reference log-prob depends on (see the module doc)."""
    memo = Path(settings.dataset_prepared_path) / DIGESTS
    digest = hashlib.sha256()
    parts: dict[str, Any] = {
        "data": data_key,
        "base": _weights_digest(base_model_dir(settings), memo),
        "adapter": _weights_digest(Path(settings.lora_model_dir).expanduser(), memo) if settings.lora_model_dir else None,
        "load": [settings.load_in_4bit, settings.load_in_8bit, precision.dtype, settings.attn_implementation],
        "code": hashlib.sha256(Path(__file__).read_bytes()).hexdigest(),
    }
    digest.update(json.dumps(parts, sort_keys=True).encode())
    return digest.hexdigest()


def _weights_digest(directory: Path, memo: Path) -> str:
    """Content digest of the weight files directly in `directory` (memoised by path, size and mtime)."""
    try:
        known = json.loads(memo.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        known = {}
    total = hashlib.sha256()
    changed = False
    for file in sorted(p for p in directory.iterdir() if p.is_file() and p.name.endswith(WEIGHT_SUFFIXES)):
        stat = file.stat()
        tag = f"{file.resolve()}:{stat.st_size}:{stat.st_mtime_ns}"
        if tag not in known:
            known[tag] = file_digest(file)
            changed = True
        total.update(f"{file.name}:{known[tag]}\n".encode())
    if changed:
        memo.parent.mkdir(parents=True, exist_ok=True)
        write_text(memo, json.dumps(known, indent=1))
    return total.hexdigest()


def with_reference(
    settings: Settings,
    prepared: PreparedData,
    model: PeftModel | PreTrainedModel,
    *,
    pad_id: int,
    precision: Precision,
    local_rank: int = 0,
    barrier: Callable[[], None] = lambda: None,
    progress: bool = True,
) -> tuple[Dataset, Dataset | None, Path]:
    """(train, eval) with REF_COLUMNS added, from the cache or computed now (the first process of each
    machine computes; the others wait at `barrier`, then read the file); and the cache directory."""
    directory = reference_dir(settings, prepared, precision)
    splits = {"train": prepared.train, "eval": prepared.eval}
    fresh = fresh_adapter(settings.adapter, settings.lora_model_dir)
    if local_rank == 0:
        for name, rows in splits.items():
            file = directory / f"{name}.npy"
            if rows is None or _readable(file, len(rows)):
                continue
            logger.info("computing reference log-probs of %d %s pairs (once; cached in %s)", len(rows), name, directory)

            shown = [0.0]

            def report(done: int, total: int, name: str = name) -> None:
                now = time.monotonic()
                if done == total or now - shown[0] > 5:
                    shown[0] = now
                    print(f"reference log-probs ({name}): {done:,}/{total:,} pairs", file=sys.stderr, flush=True)

            values = sequence_log_probs(model, rows, pad_id=pad_id, fresh_adapter=fresh,
                                        batch_size=settings.eval_batch,
                                        progress=report if progress else None)
            _save(file, values)
        barrier()
    else:
        barrier()
    out = []
    for name, rows in splits.items():
        if rows is None:
            out.append(None)
            continue
        values = np.load(directory / f"{name}.npy")
        out.append(rows.add_column(REF_COLUMNS[0], values[:, 0].tolist()).add_column(REF_COLUMNS[1],
                                                                                     values[:, 1].tolist()))
    return out[0], out[1], directory


def reference_dir(settings: Settings, prepared: PreparedData, precision: Precision) -> Path:
    """Where the reference log-probs of `prepared` live (inside its prepared-data directory)."""
    return prepared.path / f"reference-{reference_key(settings, prepared.path.name, precision)}"


def fresh_adapter(adapter: str | None, lora_model_dir: str | None) -> bool:
    """True when the policy starts from a new adapter (the recipe's `adapter`, no `lora_model_dir`): the reference is
    then the model with it disabled."""
    return adapter is not None and not lora_model_dir


def cached_reference(directory: Path, prepared: PreparedData) -> bool:
    """True when `directory` already holds the reference log-probs of every split of `prepared`."""
    splits = (("train", prepared.train), ("eval", prepared.eval))
    return all(rows is None or _readable(directory / f"{name}.npy", len(rows)) for name, rows in splits)


def _readable(file: Path, rows: int) -> bool:
    try:
        values = np.load(file)
    except (OSError, ValueError):
        return False
    return values.shape == (rows, 2) and bool(np.isfinite(values).all())


def _save(file: Path, values: np.ndarray) -> None:
    file.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(file) as tmp, open(tmp, "wb") as handle:
        np.save(handle, values)

