"""Pure translation of recipe settings into trainer arguments."""

from __future__ import annotations

import pytest

from finetune.config import load_recipe_text
from finetune.errors import RecipeError
from finetune.model.load import Precision
from finetune.train.args import schedule, sft_config, steps_per_epoch, training_arguments

BASE = "base_model: /nowhere\ndatasets: [{path: x.jsonl}]\n"
FP32_CPU = Precision(dtype="fp32", cpu=True)


def recipe(text: str = ""):
    return load_recipe_text(BASE + text).settings


def args(text: str = "", *, steps: int = 10, precision: Precision = FP32_CPU, **kw):
    return training_arguments(recipe(text), steps_per_epoch=steps, output_dir="/tmp/o",
                              precision=precision, **kw)


@pytest.mark.parametrize(
    ("rows", "mb", "ga", "world", "expected"),
    [(100, 1, 1, 1, 100), (100, 1, 4, 1, 25), (101, 1, 4, 1, 26), (100, 2, 2, 2, 13), (3, 4, 4, 2, 1), (7, 2, 1, 2, 2)],
)
def test_steps_per_epoch_matches_the_dataloader_arithmetic(rows, mb, ga, world, expected) -> None:
    assert steps_per_epoch(rows, micro_batch_size=mb, gradient_accumulation_steps=ga, world_size=world) == expected


def test_warmup_default_is_three_percent_capped_at_100() -> None:
    assert schedule(recipe(), steps_per_epoch=100).warmup_steps == 3
    assert schedule(recipe("num_epochs: 50\n"), steps_per_epoch=100).warmup_steps == 100
    assert schedule(recipe("warmup_ratio: 0.1\nnum_epochs: 4\n"), steps_per_epoch=25).warmup_steps == 10
    assert schedule(recipe("warmup_steps: 7\n"), steps_per_epoch=25).warmup_steps == 7


def test_total_steps_from_epochs_or_max_steps() -> None:
    assert schedule(recipe("num_epochs: 2.5\n"), steps_per_epoch=10).total_steps == 25
    assert schedule(recipe("num_epochs: 3\nmax_steps: 7\n"), steps_per_epoch=10).total_steps == 7


def test_eval_and_save_cadence_per_epoch_and_per_steps() -> None:
    plan = schedule(recipe("val_set_size: 0.1\nevals_per_epoch: 2\nsaves_per_epoch: 1\n"), steps_per_epoch=10)
    assert (plan.eval_steps, plan.save_steps) == (5, 10)
    plan = schedule(recipe("val_set_size: 0.1\neval_steps: 3\nsave_steps: 4\n"), steps_per_epoch=10)
    assert (plan.eval_steps, plan.save_steps) == (3, 4)
    assert schedule(recipe("val_set_size: 0.1\nevals_per_epoch: 4\n"), steps_per_epoch=2).eval_steps == 1
    a = args()
    assert a["eval_strategy"] == "no" and a["save_strategy"] == "no"


def test_early_stopping_keeps_the_best_checkpoint() -> None:
    a = args("val_set_size: 0.1\nevals_per_epoch: 2\nearly_stopping_patience: 3\n")
    assert a["load_best_model_at_end"] and a["metric_for_best_model"] == "eval_loss"
    assert a["greater_is_better"] is False and a["save_steps"] == a["eval_steps"] == 5
    with pytest.raises(RecipeError, match="multiple of the eval interval"):
        args("val_set_size: 0.1\neval_steps: 3\nsave_steps: 4\nearly_stopping_patience: 2\n")


def test_optimizer_scheduler_and_batch_settings_pass_through() -> None:
    a = args("optimizer: adamw_bnb_8bit\nlr_scheduler: cosine\nlearning_rate: 0.0002\nweight_decay: 0.01\n"
             "max_grad_norm: 0.5\nmicro_batch_size: 2\neval_batch_size: 8\ngradient_accumulation_steps: 4\n"
             "seed: 7\nlogging_steps: 3\nsave_total_limit: 2\ndeepspeed: ds.json\n")
    assert a["optim"] == "adamw_bnb_8bit" and a["lr_scheduler_type"] == "cosine"
    assert (a["learning_rate"], a["weight_decay"], a["max_grad_norm"]) == (0.0002, 0.01, 0.5)
    assert (a["per_device_train_batch_size"], a["per_device_eval_batch_size"], a["gradient_accumulation_steps"]) == (2, 8, 4)
    assert (a["seed"], a["logging_steps"], a["save_total_limit"], a["deepspeed"]) == (7, 3, 2, "ds.json")
    assert a["max_steps"] == 10 and a["report_to"] == "none"


def test_rows_are_used_as_prepared() -> None:
    a = args("sequence_len: 512\n")
    assert a["dataset_kwargs"] == {"skip_prepare_dataset": True}
    assert a["packing"] is False and a["padding_free"] is False and a["remove_unused_columns"] is False
    assert a["average_tokens_across_devices"] is True


def test_precision_and_checkpointing_flags() -> None:
    a = args("gradient_checkpointing: true\ntf32: true\n", precision=Precision(dtype="bf16", tf32=False, cpu=True))
    assert a["bf16"] and not a["fp16"] and a["tf32"] is None and a["use_cpu"]
    assert a["gradient_checkpointing"] and a["gradient_checkpointing_kwargs"] == {"use_reentrant": False}
    a = args(precision=Precision(dtype="fp16", tf32=True))
    assert a["fp16"] and not a["bf16"] and a["tf32"] is True and a["gradient_checkpointing_kwargs"] is None


def test_sft_config_accepts_the_arguments(tmp_path) -> None:
    config = sft_config(recipe("gradient_checkpointing: true\nval_set_size: 0.1\nevals_per_epoch: 1\n"),
                        steps_per_epoch=4, output_dir=str(tmp_path), precision=FP32_CPU)
    assert config.max_steps == 4 and config.eval_steps == 4 and config.gradient_checkpointing
    assert config.gradient_checkpointing_kwargs == {"use_reentrant": False}
    assert config.warmup_steps == 1 and config.packing is False
