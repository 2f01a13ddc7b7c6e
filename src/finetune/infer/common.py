"""What both `finetune evaluate` paths (SFT loss, preference pairs) share: the run to score and the rows to
score it on."""

from __future__ import annotations

from pathlib import Path

from finetune.config.settings import Settings
from finetune.errors import FinetuneError
from finetune.runs.read import adapter_kind, read_adapter_config, resolve_adapter_dir


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
