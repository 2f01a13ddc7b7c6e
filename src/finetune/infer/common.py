"""What scoring a run shares (`finetune evaluate`'s two paths, `finetune report`): the run to score, the rows to
score it on, and the trained-token loss over them."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

from finetune.config.settings import Settings
from finetune.errors import FinetuneError
from finetune.model.loss import trained_token_nll
from finetune.runs.read import adapter_kind, read_adapter_config, resolve_adapter_dir

if TYPE_CHECKING:
    from transformers import PreTrainedModel


def trained_dir(settings: Settings, adapter_dir: Path | None) -> Path:
    """The run to score (`--adapter DIR`, else output_dir), checked whole: an adapter run's adapter, or a full
    fine-tune's model. Never the untouched base under the "fine-tuned" label: a FinetuneError instead."""
    if settings.adapter:
        path = resolve_adapter_dir(settings, adapter_dir)
        read_adapter_config(path)
        return path
    path = Path(adapter_dir if adapter_dir is not None else settings.output_dir).expanduser()
    if not (path / "config.json").is_file():
        raise FinetuneError(
            f"no fine-tuned model in {path} (config.json missing): a full fine-tune saves its model there; "
            "evaluating now would score the untouched base. Run `finetune train` first or pass --adapter DIR"
        )
    adapter_kind(path)  # config and weights whole, else a DataError naming the file
    return path


def dataset_settings(settings: Settings, dataset: str) -> Settings:
    """The recipe with its data replaced by `dataset` (same format as the first entry), all of it one split;
    eval rows stay packed or unpacked as the recipe's eval split would be."""
    first = settings.datasets[0].detached(path=dataset)
    return settings.model_copy(
        update={
            "datasets": [first],
            "val_set_size": 0.0,
            "dedup": False,
            "sample_packing": settings.packs_eval,
            "eval_sample_packing": None,
        }
    )


def trained_token_loss(model: PreTrainedModel, rows: Any, collate: Callable[[list], dict], batch_size: int,
                       label: str, progress: bool) -> tuple[float, int]:
    """(summed NLL, count) of the trained tokens of `rows` under `model`, in batches of `batch_size`; every
    token weighs the same (summed over all rows first). `label` names the progress line."""
    import torch

    total_nll, total_count = 0.0, 0
    device = next(model.parameters()).device
    config = model.config.get_text_config()
    with torch.no_grad():
        for first in range(0, len(rows), batch_size):
            batch = collate([rows[i] for i in range(first, min(first + batch_size, len(rows)))])
            batch = {key: value.to(device) for key, value in batch.items()}
            labels = batch.pop("labels")
            out = model(**batch, use_cache=False, output_hidden_states=True, logits_to_keep=1)
            nll, count = trained_token_nll(out.hidden_states[-1], labels, model.get_output_embeddings(), config)
            total_nll += float(nll)
            total_count += int(count)
            if progress:
                done = min(first + batch_size, len(rows))
                print(f"\r{label}: {done}/{len(rows)} rows", end="", file=sys.stderr, flush=True)
    if progress:
        print(file=sys.stderr)
    return total_nll, total_count
