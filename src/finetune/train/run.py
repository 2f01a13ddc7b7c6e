"""`run_training`: setup -> train -> save, in one plain flow.

Outputs in `output_dir`: the adapter (or the full model without an adapter), generation_config.json
with the trained eos/pad ids, the tokenizer with its chat template, `recipe.yml` (resolved, secrets
redacted), `run_summary.json`, `loss.png` and checkpoint directories (`finetune.runs.layout`) per the save cadence.
"""

from __future__ import annotations

import copy
import json
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

from finetune.config.settings import Settings
from finetune.errors import FinetuneError, RecipeError
from finetune.runs.layout import checkpoint_dirs

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class RunResult:
    """What a finished run produced."""

    output_dir: Path
    summary: dict[str, Any]
    checkpoints: list[Path] = field(default_factory=list)
    global_step: int = 0

    @property
    def train_loss(self) -> float | None:
        return self.summary.get("train_loss")

    @property
    def eval_loss(self) -> float | None:
        return self.summary.get("eval_loss")


def run_training(
    settings: Settings,
    prepared: Any,
    tokenizer: Any,
    *,
    output_dir: Path | None = None,
    resume: bool | str = False,
    world_size: int = 1,
    local_rank: int = 0,
    callbacks: Sequence[Any] = (),
) -> RunResult:
    """Train on `prepared` (finetune.data.build.PreparedData: .train, .eval) and save everything.

    `resume`: False, True (the latest checkpoint in output_dir) or a checkpoint directory.
    `world_size`, `local_rank`: this process's place in the run (read from the environment once, by the
    worker). `callbacks`: extra TrainerCallbacks (tracking, signals).
    """
    from finetune.train.resilience import seal_checkpoints_callback
    from finetune.train.progress import progress_callback
    from finetune.train.trainer import TokenCounter, summary_callbacks

    output_dir = Path(output_dir if output_dir is not None else settings.output_dir)
    resume_from = _resume_point(resume, output_dir)
    template = chat_template_source(settings, tokenizer)
    if len(prepared.train) == 0:
        raise FinetuneError("the prepared training split is empty; nothing to train")
    from finetune.model.load import resolve_precision

    precision = resolve_precision(settings)
    # The arguments first: under ZeRO-3 they tell transformers to load the model partitioned (finetune.train.zero3).
    args = trainer_arguments(settings, prepared, precision=precision, world_size=world_size, output_dir=output_dir)
    model, precision = setup_model(settings, tokenizer, local_rank=local_rank)
    counter = TokenCounter()
    own = summary_callbacks(counter, output_dir)
    # sealed first, before the signal stop raises
    all_callbacks = [seal_checkpoints_callback(), *own, progress_callback(lambda: counter.tokens), *callbacks]
    trainer = build(settings, model, tokenizer, prepared, args=args, counter=counter, callbacks=all_callbacks)
    if trainer.is_world_process_zero():
        output_dir.mkdir(parents=True, exist_ok=True)
        (output_dir / "recipe.yml").write_text(resolved_recipe_yaml(settings), encoding="utf-8")
    trainer.train(resume_from_checkpoint=resume_from)
    return save_run(trainer, tokenizer, template, output_dir, summary=dict(own[0].summary or {}), prepared=prepared)


def setup_model(settings: Settings, tokenizer: Any, *, local_rank: int = 0) -> tuple[Any, Any]:
    """(the base model with the recipe's adapter, its precision), seeded first: adapter initialisation is random."""
    from transformers import set_seed

    from finetune.model.adapters import apply_adapter
    from finetune.model.load import load_model, resolve_precision

    from finetune.train.zero3 import check_zero3, init_deepspeed_comm, partition_quantized, zero3_enabled

    set_seed(settings.seed)
    precision = resolve_precision(settings)
    zero3 = zero3_enabled()
    if zero3:
        check_zero3(settings, cpu=precision.cpu)
        init_deepspeed_comm()
    model = load_model(settings, tokenizer, precision=precision, local_rank=local_rank)
    if settings.adapter:
        model = apply_adapter(settings, model)
    if zero3 and (settings.load_in_4bit or settings.load_in_8bit):
        partition_quantized(model)
    return model, precision


def trainer_arguments(settings: Settings, prepared: Any, *, precision: Any, world_size: int, output_dir: Path) -> Any:
    """TRL's SFTConfig for this run (the step arithmetic needs the prepared row count)."""
    from finetune.train.args import sft_config, steps_per_epoch

    per_epoch = steps_per_epoch(
        len(prepared.train),
        micro_batch_size=settings.micro_batch_size,
        gradient_accumulation_steps=settings.gradient_accumulation_steps,
        world_size=world_size,
    )
    return sft_config(settings, steps_per_epoch=per_epoch, output_dir=str(output_dir), precision=precision)


def build(
    settings: Settings,
    model: Any,
    tokenizer: Any,
    prepared: Any,
    *,
    args: Any,
    counter: Any,
    callbacks: Sequence[Any],
) -> Any:
    """The trainer: the training arguments, the collator, the prepared splits."""
    from finetune.data.collate import make_collator
    from finetune.train.trainer import build_trainer

    return build_trainer(
        settings,
        model,
        tokenizer,
        train_dataset=prepared.train,
        eval_dataset=prepared.eval if args.eval_strategy != "no" else None,
        args=args,
        collator=make_collator(settings, tokenizer),
        counter=counter,
        callbacks=callbacks,
    )


def save_run(
    trainer: Any, tokenizer: Any, template: str | None, output_dir: Path, *, summary: dict[str, Any], prepared: Any
) -> RunResult:
    """Save the model and tokenizer, then run_summary.json last (its presence means the run finished)."""
    from finetune.train.progress import best_checkpoint_entry

    if trainer.is_world_process_zero():
        adapter = getattr(trainer.model, "peft_config", None) is not None
        logger.info("saving the %s to %s", "adapter" if adapter else "model", output_dir)
    save_outputs(trainer, tokenizer, template, output_dir)
    efficiency = getattr(getattr(prepared, "summary", None), "packing_efficiency", None)
    if efficiency is not None:
        summary["packing_efficiency"] = efficiency
    checkpoints = checkpoint_dirs(output_dir)
    summary["best_checkpoint"] = best_checkpoint_entry(trainer.state.log_history, checkpoints, output_dir,
                                                       final_step=trainer.state.global_step)
    if trainer.is_world_process_zero():
        (output_dir / "run_summary.json").write_text(json.dumps(summary, indent=2) + "\n", encoding="utf-8")
    return RunResult(output_dir=output_dir, summary=summary, checkpoints=checkpoints, global_step=trainer.state.global_step)


def save_outputs(trainer: Any, tokenizer: Any, template: str | None, output_dir: Path) -> None:
    """The final adapter/model, generation config and the tokenizer with its chat template."""
    trainer.save_model(str(output_dir))
    if not trainer.is_world_process_zero():
        return
    model = trainer.accelerator.unwrap_model(trainer.model)
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    base.generation_config.save_pretrained(str(output_dir))
    saved = copy.deepcopy(tokenizer)
    if template is not None:
        saved.chat_template = template
    saved.save_pretrained(str(output_dir))


def chat_template_source(settings: Settings, tokenizer: Any) -> str | None:
    """The Jinja source of the recipe's chat template (saved with the tokenizer), or None when there is none."""
    from finetune.data.templates import resolve_template

    try:
        return resolve_template(settings.chat_template, settings.chat_template_jinja, tokenizer).jinja_source
    except RecipeError as exc:
        if settings.chat_template == "tokenizer_default":
            logger.warning("no chat template saved with the tokenizer: %s", exc)
            return None
        raise


def resolved_recipe_yaml(settings: Settings) -> str:
    """The validated recipe as YAML, every default filled in, secrets replaced by <redacted>."""
    import yaml

    from finetune.train.resilience import known_secrets, redact_config

    data = redact_config(settings.model_dump(mode="json"), known_secrets(os.environ))
    header = "# resolved by finetune: every key with its effective value; secrets redacted\n"
    return header + yaml.safe_dump(data, sort_keys=False, allow_unicode=True)


def _resume_point(resume: bool | str, output_dir: Path) -> bool | str | None:
    if resume is False or resume is None:
        return None
    if resume is True:
        from finetune.train.resilience import latest_checkpoint

        latest = latest_checkpoint(output_dir)  # verified, not merely the newest name
        if latest is None:
            raise FinetuneError(f"nothing to resume: no complete checkpoint directory in {output_dir}")
        return str(latest)
    path = Path(resume)
    if not path.is_dir():
        raise FinetuneError(f"cannot resume from {path}: no such checkpoint directory")
    from finetune.runs.checkpoints import verify_checkpoint

    verify_checkpoint(path)  # a damaged one: a DataError naming the file, not a traceback from torch.load
    return str(path)
