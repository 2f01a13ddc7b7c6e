"""`rl: dpo|ipo`: preference tuning with TRL's DPOTrainer on prepared pairs, with everything `train` has.

`DPOStage` is the preference stage of `finetune.train.run.run_training`: the same run (model setup: 4-bit base,
LoRA/DoRA, `lora_model_dir`; callbacks: checkpoints sealed, progress, run summary, loss plot, W&B, signals;
outputs), with TRL's DPOTrainer in place of the SFT trainer. Why a thin subclass:

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
from typing import TYPE_CHECKING, Any, Callable, Sequence

from trl import DPOConfig, DPOTrainer

from finetune.config.settings import Settings
from finetune.data.collate import pad_token_id
from finetune.model.adapters import keep_trainable_values, trainable_to_fp32
from finetune.model.load import Precision
from finetune.train.args import training_arguments
from finetune.train.reference import REF_COLUMNS, fresh_adapter, with_reference
from finetune.train.trainer import TokenCounter

if TYPE_CHECKING:
    from datasets import Dataset
    from peft import PeftModel
    from transformers import PreTrainedModel, PreTrainedTokenizerBase, TrainerCallback

    from finetune.data.build import PreparedData

logger = logging.getLogger(__name__)

# DPO metrics that go into run_summary.json (last logged value of each).
SUMMARY_METRICS = ("rewards/chosen", "rewards/rejected", "rewards/margins", "rewards/accuracies")


class FinetuneDPOTrainer(DPOTrainer):
    """DPOTrainer over prepared pairs with a cached reference (see the module docstring)."""

    _tag_names = ["finetune", "dpo"]

    def __init__(self, *args: Any, counter: TokenCounter, cached_reference: bool, keep_ref_adapter: bool,
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


def dpo_config(settings: Settings, *, steps_per_epoch: int, output_dir: str, precision: Precision) -> DPOConfig:
    """TRL's DPOConfig from the recipe: the SFT run's arguments (finetune.train.args) plus the preference keys."""
    arguments = training_arguments(settings, steps_per_epoch=steps_per_epoch, output_dir=output_dir,
                                   precision=precision)
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


class DPOStage:
    """Preference tuning as a stage of `finetune.train.run.run_training` (see `Stage` there)."""

    nothing_to_train = "the prepared training split has no pairs; nothing to train"

    def arguments(self, settings: Settings, *, steps_per_epoch: int, output_dir: str,
                  precision: Precision) -> DPOConfig:
        return dpo_config(settings, steps_per_epoch=steps_per_epoch, output_dir=output_dir, precision=precision)

    def datasets(self, settings: Settings, prepared: PreparedData, model: PeftModel | PreTrainedModel,
                 tokenizer: PreTrainedTokenizerBase, *, precision: Precision, local_rank: int,
                 barrier: Callable[[], None]) -> tuple[Dataset, Dataset | None]:
        """The prepared pairs, with the reference log-probs (REF_COLUMNS) when they are precomputed."""
        if not settings.precompute_ref_log_probs:
            return prepared.train, prepared.eval
        train, evaluation, where = with_reference(settings, prepared, model, pad_id=pad_token_id(tokenizer),
                                                  precision=precision, local_rank=local_rank, barrier=barrier)
        logger.info("reference log-probs: %s", where)
        return train, evaluation

    def trainer(self, settings: Settings, model: PeftModel | PreTrainedModel, tokenizer: PreTrainedTokenizerBase,
                train: Dataset, evaluation: Dataset | None, *, args: DPOConfig, counter: TokenCounter,
                callbacks: Sequence[TrainerCallback]) -> FinetuneDPOTrainer:
        return build_dpo_trainer(model, tokenizer, train, evaluation, args=args, counter=counter, callbacks=callbacks,
                                 early_stopping_patience=settings.early_stopping_patience,
                                 fresh=fresh_adapter(settings.adapter, settings.lora_model_dir))

    def summary(self, log_history: Sequence[dict[str, Any]]) -> dict[str, Any]:
        return preference_summary(log_history)


def build_dpo_trainer(model: PeftModel | PreTrainedModel, tokenizer: PreTrainedTokenizerBase, train: Dataset,
                      evaluation: Dataset | None, *, args: DPOConfig, counter: TokenCounter,
                      callbacks: Sequence[TrainerCallback] = (), early_stopping_patience: int | None,
                      fresh: bool) -> FinetuneDPOTrainer:
    """The FinetuneDPOTrainer for prepared pairs (with REF_COLUMNS when the reference is precomputed); `fresh`: the
    policy starts from a new adapter (`finetune.train.reference.fresh_adapter`)."""
    from transformers import EarlyStoppingCallback, PrinterCallback

    all_callbacks = list(callbacks)
    if early_stopping_patience is not None and evaluation is not None:
        all_callbacks.append(EarlyStoppingCallback(early_stopping_patience=early_stopping_patience))
    cached = REF_COLUMNS[0] in train.column_names
    trainer = FinetuneDPOTrainer(
        model=model,
        args=args,
        train_dataset=train,
        eval_dataset=evaluation,
        processing_class=tokenizer,
        callbacks=all_callbacks,
        counter=counter,
        cached_reference=cached,
        keep_ref_adapter=not fresh and not cached,
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
