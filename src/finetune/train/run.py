"""`run_training`: setup -> train -> save, in one plain flow, for supervised fine-tuning and preference tuning.

What differs between the two is a `Stage` (`SFTStage` here, `finetune.train.dpo.DPOStage`): the trainer's
arguments, the datasets it reads (preference pairs gain their reference log-probs), the trainer, and a few
summary entries. `stage_for` picks it from the recipe's `rl`; everything else happens once, below.

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
from typing import TYPE_CHECKING, Any, Callable, Protocol, Sequence

from finetune.config.settings import ChatTemplateName, Settings
from finetune.data.collate import make_collator
from finetune.data.templates import resolve_template
from finetune.errors import FinetuneError, RecipeError
from finetune.model.load import Precision, resolve_precision
from finetune.model.trainable import trainable_model
from finetune.runs.checkpoints import verify_checkpoint
from finetune.runs.layout import checkpoint_dirs
from finetune.runs.read import stop_strings
from finetune.train.args import sft_config, steps_per_epoch
from finetune.train.dpo import DPOStage
from finetune.train.progress import best_checkpoint_entry, progress_callback
from finetune.train.resilience import known_secrets, latest_checkpoint, redact_config, seal_checkpoints_callback
from finetune.train.trainer import TokenCounter, build_trainer, summary_callbacks
from finetune.train.zero3 import check_zero3, init_deepspeed_comm, partition_quantized, zero3_enabled

if TYPE_CHECKING:
    from datasets import Dataset
    from peft import PeftModel
    from transformers import PreTrainedModel, PreTrainedTokenizerBase, Trainer, TrainerCallback, TrainingArguments

    from finetune.data.build import PreparedData

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


class Stage(Protocol):
    """What differs between supervised fine-tuning (`SFTStage`) and preference tuning (`DPOStage`)."""

    nothing_to_train: str  # the error when the prepared training split is empty

    def arguments(self, settings: Settings, *, steps_per_epoch: int, output_dir: str,
                  precision: Precision) -> TrainingArguments:
        """The trainer's arguments (TRL's SFTConfig or DPOConfig)."""
        ...

    def datasets(self, settings: Settings, prepared: PreparedData, model: PeftModel | PreTrainedModel,
                 tokenizer: PreTrainedTokenizerBase, *, precision: Precision, local_rank: int,
                 barrier: Callable[[], None]) -> tuple[Dataset, Dataset | None]:
        """(train, eval) as the trainer reads them, from the prepared data and the loaded model."""
        ...

    def trainer(self, settings: Settings, model: PeftModel | PreTrainedModel, tokenizer: PreTrainedTokenizerBase,
                train: Dataset, evaluation: Dataset | None, *, args: TrainingArguments, counter: TokenCounter,
                callbacks: Sequence[TrainerCallback]) -> Trainer:
        """The trainer; `evaluation` is None when the run does not evaluate."""
        ...

    def summary(self, log_history: Sequence[dict[str, Any]]) -> dict[str, Any]:
        """The stage's own entries of run_summary.json."""
        ...


class SFTStage:
    """Supervised fine-tuning on prepared rows (finetune.train.trainer)."""

    nothing_to_train = "the prepared training split is empty; nothing to train"

    def arguments(self, settings: Settings, *, steps_per_epoch: int, output_dir: str,
                  precision: Precision) -> TrainingArguments:
        return sft_config(settings, steps_per_epoch=steps_per_epoch, output_dir=output_dir, precision=precision)

    def datasets(self, settings: Settings, prepared: PreparedData, model: PeftModel | PreTrainedModel,
                 tokenizer: PreTrainedTokenizerBase, *, precision: Precision, local_rank: int,
                 barrier: Callable[[], None]) -> tuple[Dataset, Dataset | None]:
        return prepared.train, prepared.eval

    def trainer(self, settings: Settings, model: PeftModel | PreTrainedModel, tokenizer: PreTrainedTokenizerBase,
                train: Dataset, evaluation: Dataset | None, *, args: TrainingArguments, counter: TokenCounter,
                callbacks: Sequence[TrainerCallback]) -> Trainer:
        return build_trainer(model, tokenizer, train_dataset=train, eval_dataset=evaluation, args=args,
                             collator=make_collator(settings, tokenizer), counter=counter, callbacks=callbacks,
                             early_stopping_patience=settings.early_stopping_patience, loss_head=settings.loss_head)

    def summary(self, log_history: Sequence[dict[str, Any]]) -> dict[str, Any]:
        return {}


def stage_for(rl: str | None) -> Stage:
    """The recipe's stage: preference tuning with `rl` (dpo, ipo), else supervised fine-tuning."""
    return DPOStage() if rl is not None else SFTStage()


def run_training(
    settings: Settings,
    prepared: PreparedData,
    tokenizer: PreTrainedTokenizerBase,
    *,
    output_dir: Path | None = None,
    resume: bool | str = False,
    world_size: int = 1,
    local_rank: int = 0,
    callbacks: Sequence[TrainerCallback] = (),
    barrier: Callable[[], None] = lambda: None,
) -> RunResult:
    """Train on `prepared` (finetune.data.build.PreparedData: .train, .eval) and save everything.

    `resume`: False, True (the latest checkpoint in output_dir) or a checkpoint directory.
    `world_size`, `local_rank`: this process's place in the run (read from the environment once, by the
    worker). `callbacks`: extra TrainerCallbacks (tracking, signals). `barrier`: waits for the other processes
    (the first process of each machine computes the reference log-probs of preference pairs; the others read them).
    """
    stage = stage_for(settings.rl)
    output_dir = Path(output_dir if output_dir is not None else settings.output_dir)
    resume_from = resume_point(resume, output_dir)
    template = chat_template_source(settings.chat_template, settings.chat_template_jinja, tokenizer)
    if template is not None:  # a model whose replies could never be stopped is refused before it is trained
        check_end_of_turn(tokenizer, template, settings.where("chat_template"))
    if len(prepared.train) == 0:
        raise FinetuneError(stage.nothing_to_train)
    precision = resolve_precision(settings)
    # The arguments first: under ZeRO-3 they tell transformers to load the model partitioned (finetune.train.zero3).
    args = trainer_arguments(stage, settings, len(prepared.train), precision=precision, world_size=world_size,
                             output_dir=output_dir)
    model, _ = setup_model(settings, tokenizer, precision=precision, local_rank=local_rank)
    train, evaluation = stage.datasets(settings, prepared, model, tokenizer, precision=precision,
                                       local_rank=local_rank, barrier=barrier)
    counter = TokenCounter()
    own = summary_callbacks(counter, output_dir)
    # sealed first, before the signal stop raises
    all_callbacks = [seal_checkpoints_callback(), *own, progress_callback(lambda: counter.tokens), *callbacks]
    trainer = stage.trainer(settings, model, tokenizer, train, evaluation if args.eval_strategy != "no" else None,
                            args=args, counter=counter, callbacks=all_callbacks)
    if trainer.is_world_process_zero():
        output_dir.mkdir(parents=True, exist_ok=True)
        (output_dir / "recipe.yml").write_text(resolved_recipe_yaml(settings), encoding="utf-8")
    trainer.train(resume_from_checkpoint=resume_from)
    summary = {**(own[0].summary or {}), **stage.summary(trainer.state.log_history)}
    return save_run(trainer, tokenizer, template, output_dir, summary=summary, prepared=prepared)


def setup_model(settings: Settings, tokenizer: PreTrainedTokenizerBase, *, precision: Precision | None = None,
                local_rank: int = 0) -> tuple[PeftModel | PreTrainedModel, Precision]:
    """(the base model with the recipe's adapter, seeded first (finetune.model.trainable), its precision); under
    ZeRO-3 checked and partitioned too (finetune.train.zero3)."""
    precision = precision or resolve_precision(settings)
    zero3 = zero3_enabled()
    if zero3:
        check_zero3(settings, cpu=precision.cpu)
        init_deepspeed_comm()
    model = trainable_model(settings, tokenizer, precision=precision, local_rank=local_rank)
    if zero3 and (settings.load_in_4bit or settings.load_in_8bit):
        partition_quantized(model)
    return model, precision


def trainer_arguments(stage: Stage, settings: Settings, rows: int, *, precision: Precision, world_size: int,
                      output_dir: Path) -> TrainingArguments:
    """The stage's trainer arguments for `rows` training rows (the step arithmetic needs the row count)."""
    per_epoch = steps_per_epoch(
        rows,
        micro_batch_size=settings.micro_batch_size,
        gradient_accumulation_steps=settings.gradient_accumulation_steps,
        world_size=world_size,
    )
    return stage.arguments(settings, steps_per_epoch=per_epoch, output_dir=str(output_dir), precision=precision)


def save_run(
    trainer: Trainer, tokenizer: PreTrainedTokenizerBase, template: str | None, output_dir: Path, *,
    summary: dict[str, Any], prepared: PreparedData,
) -> RunResult:
    """Save the model and tokenizer, then run_summary.json last (its presence means the run finished)."""
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


def save_outputs(trainer: Trainer, tokenizer: PreTrainedTokenizerBase, template: str | None, output_dir: Path) -> None:
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


def chat_template_source(name: ChatTemplateName, jinja: str | None, tokenizer: PreTrainedTokenizerBase) -> str | None:
    """The Jinja source of the recipe's chat template (`chat_template`, `chat_template_jinja`), saved with the
    tokenizer; None when there is none."""
    try:
        return resolve_template(name, jinja, tokenizer).jinja_source
    except RecipeError as exc:
        if name == "tokenizer_default":
            logger.warning("no chat template saved with the tokenizer: %s", exc)
            return None
        raise


def check_end_of_turn(tokenizer: PreTrainedTokenizerBase, template: str, where: str) -> None:
    """RecipeError at `where` (the chat_template line) when `template` writes nothing after a reply that
    generation could stop on (`finetune.runs.read.stop_strings`): chat, serve, report and the Modelfile
    would never end a turn."""
    saved = tokenizer.chat_template
    tokenizer.chat_template = template
    try:
        stop_strings(tokenizer, where=where)
    finally:
        tokenizer.chat_template = saved


def resolved_recipe_yaml(settings: Settings) -> str:
    """The validated recipe as YAML, every default filled in, secrets replaced by <redacted>."""
    import yaml

    data = redact_config(settings.model_dump(mode="json"), known_secrets(os.environ))
    header = "# resolved by finetune: every key with its effective value; secrets redacted\n"
    return header + yaml.safe_dump(data, sort_keys=False, allow_unicode=True)


def resume_point(resume: bool | str, output_dir: Path) -> str | None:
    """The checkpoint directory to resume from: None for `resume` False, the latest complete checkpoint in
    `output_dir` for True, else the named (verified) checkpoint directory."""
    if resume is False or resume is None:
        return None
    if resume is True:
        latest = latest_checkpoint(output_dir)  # verified, not merely the newest name
        if latest is None:
            raise FinetuneError(f"nothing to resume: no complete checkpoint directory in {output_dir}")
        return str(latest)
    path = Path(resume)
    if not path.is_dir():
        raise FinetuneError(f"cannot resume from {path}: no such checkpoint directory")
    verify_checkpoint(path)  # a damaged one: a DataError naming the file, not a traceback from torch.load
    return str(path)
