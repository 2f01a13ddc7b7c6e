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

import contextlib
import hashlib
import json
import logging
from pathlib import Path
from typing import Any, Callable

import numpy as np

from finetune.config.settings import Settings
from finetune.runs.atomic import atomic_path, write_text

logger = logging.getLogger(__name__)

REF_COLUMNS = ("ref_chosen_logps", "ref_rejected_logps")
WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth")
DIGESTS = "weight-digests.json"  # {"path:size:mtime_ns": sha256} next to the prepared data


def reference_key(settings: Settings, data_key: str, precision: Any) -> str:
    """sha256 of everything a reference log-prob depends on (see the module doc)."""
    from finetune.runs.read import base_model_dir

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
            from finetune.data.cache import file_digest

            known[tag] = file_digest(file)
            changed = True
        total.update(f"{file.name}:{known[tag]}\n".encode())
    if changed:
        memo.parent.mkdir(parents=True, exist_ok=True)
        write_text(memo, json.dumps(known, indent=1))
    return total.hexdigest()


def sequence_log_probs(model: Any, rows: Any, *, pad_id: int, batch_size: int, fresh_adapter: bool,
                       progress: Callable[[int, int], None] | None = None) -> np.ndarray:
    """[pairs, 2] (chosen, rejected) summed reply log-probs of `model` (dropout off, no gradients)."""
    import torch

    from finetune.model.loss import fused_nll

    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    off = model.disable_adapter() if fresh_adapter and hasattr(model, "disable_adapter") else contextlib.nullcontext()
    out = np.zeros((len(rows), 2), dtype=np.float64)
    config = model.config.get_text_config()
    head = model.get_output_embeddings()
    try:
        with torch.no_grad(), off:
            for first in range(0, len(rows), batch_size):
                batch = [rows[i] for i in range(first, min(first + batch_size, len(rows)))]
                ids, mask, scored = pair_batch(batch, pad_id)
                hidden = model(input_ids=ids.to(device), attention_mask=mask.to(device), use_cache=False,
                               output_hidden_states=True, logits_to_keep=1).hidden_states[-1]
                out[first : first + len(batch)] = reply_log_probs(hidden, ids.to(device), scored.to(device), head,
                                                                  config, fused_nll).reshape(2, -1).T.cpu().numpy()
                if progress is not None:
                    progress(first + len(batch), len(rows))
    finally:
        model.train(was_training)
    return out


def pair_batch(rows: list, pad_id: int) -> tuple[Any, Any, Any]:
    """(input_ids, attention_mask, scored) [2B, T] as TRL's preference collator lays them out: all chosen
    sequences (prompt + reply), then all rejected ones, right-padded; `scored` marks the reply tokens."""
    import torch

    sequences, scored = [], []
    for side in ("chosen_ids", "rejected_ids"):
        for row in rows:
            prompt, reply = list(row["prompt_ids"]), list(row[side])
            sequences.append(prompt + reply)
            scored.append([0] * len(prompt) + [1] * len(reply))
    width = max(len(s) for s in sequences)
    ids = torch.full((len(sequences), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(sequences), width), dtype=torch.long)
    marks = torch.zeros((len(sequences), width), dtype=torch.long)
    for i, (sequence, marked) in enumerate(zip(sequences, scored)):
        ids[i, : len(sequence)] = torch.tensor(sequence)
        mask[i, : len(sequence)] = 1
        marks[i, : len(marked)] = torch.tensor(marked)
    return ids, mask, marks


def reply_log_probs(hidden: Any, ids: Any, scored: Any, head: Any, config: Any, fused_nll: Any) -> Any:
    """Per sequence, the summed log-prob of its scored tokens given what precedes them ([2B] fp32)."""
    import torch

    targets = scored[:, 1:].bool()
    rows = torch.arange(ids.shape[0], device=ids.device).unsqueeze(1).expand_as(targets)[targets]
    _, per_token = fused_nll(hidden[:, :-1][targets], head.weight, getattr(head, "bias", None), ids[:, 1:][targets],
                             logit_scale=float(getattr(config, "logit_scale", None) or 1.0),
                             softcap=getattr(config, "final_logit_softcapping", None))
    return -torch.zeros(ids.shape[0], dtype=torch.float32, device=ids.device).index_add_(0, rows, per_token)


def with_reference(
    settings: Settings,
    prepared: Any,
    model: Any,
    *,
    pad_id: int,
    precision: Any,
    local_rank: int = 0,
    barrier: Callable[[], None] = lambda: None,
    progress: bool = True,
) -> tuple[Any, Any, Path]:
    """(train, eval) with REF_COLUMNS added, from the cache or computed now (the first process of each
    machine computes; the others wait at `barrier`, then read the file); and the cache directory."""
    import sys
    import time

    directory = reference_dir(settings, prepared, precision)
    splits = {"train": prepared.train, "eval": prepared.eval}
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

            values = sequence_log_probs(model, rows, pad_id=pad_id, fresh_adapter=fresh_adapter(settings),
                                        batch_size=settings.eval_batch_size or settings.micro_batch_size,
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


def reference_dir(settings: Settings, prepared: Any, precision: Any) -> Path:
    """Where the reference log-probs of `prepared` live (inside its prepared-data directory)."""
    return prepared.path / f"reference-{reference_key(settings, prepared.path.name, precision)}"


def fresh_adapter(settings: Settings) -> bool:
    """True when the policy starts from a new adapter: the reference is then the model with it disabled."""
    return settings.adapter is not None and not settings.lora_model_dir


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


def precompute_for_preprocess(settings: Settings, tokenizer: Any, prepared: Any, *, progress: bool = True) -> Path:
    """`finetune preprocess` on a preference recipe: load the model as training would and fill the cache
    (a no-op read when it is already there); returns the cache directory."""
    from finetune.data.collate import pad_token_id
    from finetune.train.run import setup_model

    from finetune.model.load import resolve_precision

    directory = reference_dir(settings, prepared, resolve_precision(settings))
    if all(rows is None or _readable(directory / f"{name}.npy", len(rows))
           for name, rows in (("train", prepared.train), ("eval", prepared.eval))):
        return directory  # cached: no model load
    model, precision = setup_model(settings, tokenizer)
    *_, directory = with_reference(settings, prepared, model, pad_id=pad_token_id(tokenizer), precision=precision,
                                   progress=progress)
    return directory
