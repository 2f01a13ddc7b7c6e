"""Settings -> trainer arguments. Pure: every number is computed here from the settings and the row count.

Step arithmetic (identical on every process, because the packed row count is known before training):
- steps_per_epoch = ceil(ceil(ceil(rows / world_size) / micro_batch_size) / gradient_accumulation_steps),
  the count transformers' Trainer itself derives from the distributed dataloader (a last partial
  accumulation window still makes an optimizer step).
- total steps = max_steps, else ceil(num_epochs * steps_per_epoch); always passed as `max_steps`, so the
  schedule never depends on an estimate.
- warmup: warmup_steps; else ceil(warmup_ratio * total); else Axolotl's default min(ceil(3% of total), 100).
- evals_per_epoch / saves_per_epoch -> every max(1, steps_per_epoch // n) steps (so at least n per epoch;
  with an epoch a multiple of n steps they fall exactly on the epoch's end).
- early_stopping_patience -> load_best_model_at_end on eval_loss; checkpoints then follow the eval cadence.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from finetune.config.settings import Settings
from finetune.errors import RecipeError
from finetune.log import quiet_stdout
from finetune.model.load import Precision

if TYPE_CHECKING:
    from trl import SFTConfig

DEFAULT_WARMUP_FRACTION = 0.03
DEFAULT_WARMUP_CAP = 100


@dataclass(frozen=True)
class Schedule:
    """The step plan of a run."""

    steps_per_epoch: int
    total_steps: int
    warmup_steps: int
    eval_steps: int | None
    save_steps: int | None


def steps_per_epoch(rows: int, *, micro_batch_size: int, gradient_accumulation_steps: int, world_size: int) -> int:
    """Optimizer steps in one pass over `rows` training rows (see the module docstring)."""
    if rows <= 0:
        raise ValueError("no training rows")
    per_process = math.ceil(rows / world_size)
    micro_batches = math.ceil(per_process / micro_batch_size)
    return max(1, math.ceil(micro_batches / gradient_accumulation_steps))


def schedule(settings: Settings, *, steps_per_epoch: int) -> Schedule:
    """Total, warmup, eval and save steps for a run of `steps_per_epoch` optimizer steps per epoch."""
    total = settings.max_steps or max(1, math.ceil(settings.num_epochs * steps_per_epoch))
    if settings.warmup_steps is not None:
        warmup = settings.warmup_steps
    elif settings.warmup_ratio is not None:
        warmup = math.ceil(settings.warmup_ratio * total)
    else:
        warmup = min(math.ceil(DEFAULT_WARMUP_FRACTION * total), DEFAULT_WARMUP_CAP)
    eval_steps = _cadence(settings.eval_steps, settings.evals_per_epoch, steps_per_epoch)
    save_steps = _cadence(settings.save_steps, settings.saves_per_epoch, steps_per_epoch)
    if settings.early_stopping_patience is not None and eval_steps is not None:
        if save_steps is None:
            save_steps = eval_steps
        elif save_steps % eval_steps:
            key = "save_steps" if settings.save_steps is not None else "saves_per_epoch"
            raise RecipeError(
                f"{settings.where(key)}: early stopping keeps the best checkpoint, so checkpoints must fall on "
                f"evaluations: checkpoint every {save_steps} steps is not a multiple of the eval interval "
                f"({eval_steps} steps)"
            )
    return Schedule(steps_per_epoch, total, min(warmup, total), eval_steps, save_steps)


def _cadence(every: int | None, per_epoch: int | None, epoch_steps: int) -> int | None:
    if every is not None:
        return every
    if per_epoch is not None:
        return max(1, epoch_steps // per_epoch)
    return None


def training_arguments(
    settings: Settings,
    *,
    steps_per_epoch: int,
    output_dir: str,
    precision: Precision,
) -> dict[str, Any]:
    """Keyword arguments for TRL's SFTConfig (a transformers TrainingArguments), fed pre-tokenized rows.

    `steps_per_epoch` already accounts for the number of processes. No trainer integration logs
    (`report_to: none`): W&B is driven by finetune.train.tracking's callback.
    """
    plan = schedule(settings, steps_per_epoch=steps_per_epoch)
    evaluating = plan.eval_steps is not None
    kwargs: dict[str, Any] = {
        "output_dir": output_dir,
        "seed": settings.seed,
        "data_seed": settings.seed,
        # optimisation
        "optim": settings.optimizer,
        "learning_rate": settings.learning_rate,
        "lr_scheduler_type": settings.lr_scheduler,
        "warmup_steps": plan.warmup_steps,
        "weight_decay": settings.weight_decay,
        "max_grad_norm": settings.max_grad_norm,
        "max_steps": plan.total_steps,
        "num_train_epochs": settings.num_epochs,
        "per_device_train_batch_size": settings.micro_batch_size,
        "per_device_eval_batch_size": settings.eval_batch,
        "gradient_accumulation_steps": settings.gradient_accumulation_steps,
        # loss over trained tokens of the whole accumulation window, summed across processes
        "average_tokens_across_devices": True,
        # precision
        "bf16": precision.dtype == "bf16",
        "fp16": precision.dtype == "fp16",
        "tf32": True if precision.tf32 else None,
        "use_cpu": precision.cpu,
        "gradient_checkpointing": settings.gradient_checkpointing,
        "gradient_checkpointing_kwargs": {"use_reentrant": False} if settings.gradient_checkpointing else None,
        # cadence
        "logging_strategy": "steps",
        "logging_steps": settings.logging_steps,
        "logging_first_step": True,
        "eval_strategy": "steps" if evaluating else "no",
        "eval_steps": plan.eval_steps,
        "save_strategy": "steps" if plan.save_steps is not None else "no",
        "save_steps": plan.save_steps if plan.save_steps is not None else 500,
        "save_total_limit": settings.save_total_limit,
        "report_to": "none",
        "deepspeed": settings.deepspeed,
        # our rows are final: no re-tokenizing, no re-packing, no EOS added, keep position_ids
        "dataset_kwargs": {"skip_prepare_dataset": True},
        "packing": False,
        "padding_free": False,
        "max_length": settings.sequence_len,
        "remove_unused_columns": False,
        "dataloader_drop_last": False,
        "disable_tqdm": True,
        # Every trainable parameter takes part in every step's loss (the trained-token loss reads the head's weight
        # even for a micro batch without trained tokens). transformers' default for a PeftModel is True: a graph
        # walk each step and DDP's warning that nothing was unused (measured in docs/benchmarks.md).
        "ddp_find_unused_parameters": False,
    }
    if settings.early_stopping_patience is not None and evaluating:
        kwargs.update(load_best_model_at_end=True, metric_for_best_model="eval_loss", greater_is_better=False)
    return kwargs


def sft_config(settings: Settings, *, steps_per_epoch: int, output_dir: str, precision: Precision) -> SFTConfig:
    """`training_arguments` as a TRL SFTConfig (same keyword arguments)."""
    from trl import SFTConfig

    arguments = training_arguments(settings, steps_per_epoch=steps_per_epoch, output_dir=output_dir,
                                   precision=precision)
    if "activation_checkpointing" in SFTConfig.__dataclass_fields__:  # transformers >= 5.2x renamed it
        arguments["activation_checkpointing"] = arguments.pop("gradient_checkpointing")
        arguments["activation_checkpointing_kwargs"] = arguments.pop("gradient_checkpointing_kwargs")
    with quiet_stdout():  # DeepSpeed's communication setup prints on the CPU ("... built successfully")
        return SFTConfig(**arguments)
