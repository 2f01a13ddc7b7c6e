"""`rl: dpo|ipo`: preference tuning with TRL's DPOTrainer on prepared pairs, with everything `train` has.

The run is `finetune.train.run`'s (same model setup: 4-bit base, LoRA/DoRA, `lora_model_dir`; same
callbacks: checkpoints sealed, progress, run summary, loss plot, W&B, signals; same outputs), with
TRL's DPOTrainer in place of the SFT trainer. Why a thin subclass:

- Rows arrive final (`prompt_ids`, `chosen_ids`, `rejected_ids` from finetune.data.pairs, already cut to
  sequence_len): TRL's `_prepare_dataset` (prompt extraction, chat template, EOS, tokenizing) is skipped.
- Reference log-probs: with `precompute_ref_log_probs` (the default) they come from finetune.train.reference,
  computed once and cached with the prepared data keyed by the reference weights, so a re-run, a resume or a new
  rl_beta does not recompute them (TRL's own precompute hashes the whole model every start and keeps its file in
  the datasets cache). Training then runs no reference forward at all.
- The reference is never a second model: a fresh adapter is disabled (TRL's frozen "ref" copy of it is removed),
  an adapter continued from `lora_model_dir` keeps TRL's frozen copy only when the reference is computed on the fly.
- TRL casts trainable parameters of a quantized base to bf16; their fp32 values are put back, as for SFT.
- Token counters per process (as the SFT trainer keeps them) for the summary and W&B rates.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Callable, Sequence

from trl import DPOTrainer

from finetune.config.settings import Settings
from finetune.errors import FinetuneError
from finetune.model.adapters import keep_trainable_values, trainable_to_fp32

logger = logging.getLogger(__name__)

# DPO metrics that go into run_summary.json (last logged value of each).
SUMMARY_METRICS = ("rewards/chosen", "rewards/rejected", "rewards/margins", "rewards/accuracies")


class FinetuneDPOTrainer(DPOTrainer):
    """DPOTrainer over prepared pairs with a cached reference (see the module docstring)."""

    _tag_names = ["finetune", "dpo"]

    def __init__(self, *args: Any, counter: Any, cached_reference: bool, keep_ref_adapter: bool,
                 **kwargs: Any) -> None:
        with keep_trainable_values(kwargs["model"]):
            super().__init__(*args, **kwargs)
        self.counter = counter
        # Training reads the reference from the batch; TRL's config flag stayed off so it hashed and computed nothing.
        self.precompute_ref_logps = cached_reference
        unwrapped = self.accelerator.unwrap_model(self.model)
        peft_config = getattr(unwrapped, "peft_config", {})
        if "ref" in peft_config and not keep_ref_adapter:
            unwrapped.delete_adapter("ref")
        trainable_to_fp32(self.model)

    def _prepare_dataset(self, dataset, processing_class, args, dataset_name):  # noqa: ANN001
        return dataset  # prepared pairs are final (finetune.data.pairs)

    def _precompute_ref_logps(self, dataset, name, batch_size):  # noqa: ANN001
        return dataset  # the reference columns are already there (finetune.train.reference)

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):  # noqa: ANN001
        result = super().compute_loss(model, inputs, return_outputs, num_items_in_batch)
        if model.training:
            self.counter.tokens += int(inputs["attention_mask"].sum())
            self.counter.trained_tokens += int(inputs["completion_mask"].sum())
            self._metrics["train"]["num_tokens"] = [self.counter.tokens]
            self._metrics["train"]["num_trained_tokens"] = [self.counter.trained_tokens]
        return result


def dpo_config(settings: Settings, **kwargs: Any) -> Any:
    """TRL's DPOConfig from the recipe: the SFT run's arguments (finetune.train.args) plus the preference keys."""
    from trl import DPOConfig

    from finetune.train.args import training_arguments

    arguments = training_arguments(settings, **kwargs)
    for key in ("dataset_kwargs", "packing"):
        arguments.pop(key)
    arguments.update(
        beta=settings.rl_beta,
        loss_type=[settings.loss_type],
        label_smoothing=settings.dpo_label_smoothing,
        # finetune.train.reference computes (and caches) them. TRL's flag stays off with an adapter (TRL would hash
        # the whole model at every start); a full fine-tune needs it on, or TRL would load a second model copy.
        precompute_ref_log_probs=settings.adapter is None,
        average_tokens_across_devices=False,  # the DPO loss is a mean over pairs, not over tokens
        truncation_mode="keep_start",
        pad_to_multiple_of=None,
    )
    if "activation_checkpointing" in DPOConfig.__dataclass_fields__:  # transformers >= 5.2x renamed it
        arguments["activation_checkpointing"] = arguments.pop("gradient_checkpointing")
        arguments["activation_checkpointing_kwargs"] = arguments.pop("gradient_checkpointing_kwargs")
    return DPOConfig(**arguments)


def run_dpo(
    settings: Settings,
    prepared: Any,
    tokenizer: Any,
    *,
    output_dir: Path | None = None,
    resume: bool | str = False,
    world_size: int = 1,
    local_rank: int = 0,
    callbacks: Sequence[Any] = (),
    barrier: Callable[[], None] = lambda: None,
) -> Any:
    """Preference-tune on `prepared` pairs and save everything (`run_training`'s outputs and RunResult)."""
    from finetune.data.collate import pad_token_id
    from finetune.train.resilience import seal_checkpoints_callback
    from finetune.train.progress import progress_callback
    from finetune.train.reference import with_reference
    from finetune.train.run import _resume_point, chat_template_source, resolved_recipe_yaml, save_run, setup_model
    from finetune.train.trainer import TokenCounter, summary_callbacks

    output_dir = Path(output_dir if output_dir is not None else settings.output_dir)
    resume_from = _resume_point(resume, output_dir)
    template = chat_template_source(settings, tokenizer)
    if len(prepared.train) == 0:
        raise FinetuneError("the prepared training split has no pairs; nothing to train")
    model, precision = setup_model(settings, tokenizer, local_rank=local_rank)
    pad_id = pad_token_id(tokenizer)
    train, evaluation = prepared.train, prepared.eval
    if settings.precompute_ref_log_probs:
        train, evaluation, where = with_reference(settings, prepared, model, pad_id=pad_id, precision=precision,
                                                  local_rank=local_rank, barrier=barrier)
        logger.info("reference log-probs: %s", where)
    counter = TokenCounter()
    own = summary_callbacks(counter, output_dir)
    all_callbacks = [seal_checkpoints_callback(), *own, progress_callback(lambda: counter.tokens), *callbacks]
    trainer = build_dpo_trainer(settings, model, tokenizer, train, evaluation, precision=precision,
                                world_size=world_size, output_dir=output_dir, counter=counter, callbacks=all_callbacks)
    if trainer.is_world_process_zero():
        output_dir.mkdir(parents=True, exist_ok=True)
        (output_dir / "recipe.yml").write_text(resolved_recipe_yaml(settings), encoding="utf-8")
    trainer.train(resume_from_checkpoint=resume_from)
    summary = dict(own[0].summary or {})
    summary.update(preference_summary(trainer.state.log_history))
    return save_run(trainer, tokenizer, template, output_dir, summary=summary, prepared=prepared)


def build_dpo_trainer(settings: Settings, model: Any, tokenizer: Any, train: Any, evaluation: Any, *, precision: Any,
                      world_size: int, output_dir: Path, counter: Any, callbacks: Sequence[Any] = ()) -> Any:
    """The FinetuneDPOTrainer for prepared pairs (with REF_COLUMNS when the reference is precomputed)."""
    from transformers import EarlyStoppingCallback, PrinterCallback

    from finetune.train.args import steps_per_epoch
    from finetune.train.reference import fresh_adapter

    per_epoch = steps_per_epoch(len(train), micro_batch_size=settings.micro_batch_size,
                                gradient_accumulation_steps=settings.gradient_accumulation_steps, world_size=world_size)
    args = dpo_config(settings, steps_per_epoch=per_epoch, output_dir=str(output_dir), precision=precision)
    evaluating = args.eval_strategy != "no"
    all_callbacks = list(callbacks)
    if settings.early_stopping_patience is not None and evaluating:
        all_callbacks.append(EarlyStoppingCallback(early_stopping_patience=settings.early_stopping_patience))
    cached = "ref_chosen_logps" in train.column_names
    trainer = FinetuneDPOTrainer(
        model=model,
        args=args,
        train_dataset=train,
        eval_dataset=evaluation if evaluating else None,
        processing_class=tokenizer,
        callbacks=all_callbacks,
        counter=counter,
        cached_reference=cached,
        keep_ref_adapter=not fresh_adapter(settings) and not cached,
    )
    trainer.remove_callback(PrinterCallback)
    return trainer


def preference_summary(log_history: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """The last logged train (and eval) value of each DPO reward metric, as `rewards/x` and `eval_rewards/x`."""
    out: dict[str, Any] = {}
    for entry in log_history:
        for name in SUMMARY_METRICS:
            for key in (name, f"eval_{name}"):
                if key in entry:
                    out[key] = entry[key]
    return out
