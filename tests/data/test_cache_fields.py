"""Data-affecting settings: every field is classified, the marked ones are fingerprinted, and they do change data.

A field that changes tokens, labels, packing, dedup or the split carries
`json_schema_extra={"affects_data": True}`; the cache fingerprint hashes exactly those.
A new field fails `test_every_field_is_classified` until it is either marked or added to
NON_DATA below (with the reason it cannot change the prepared rows).
"""

from __future__ import annotations

import typing

import pytest
from pydantic import BaseModel

from finetune.config.describe import section_model
from finetune.config.settings import DatasetSettings, Settings, SpecialTokens, affects_data
from finetune.data import cache
from finetune.data.build import prepare_data

# Reviewed: fields that never change the prepared rows (model, adapter, optimizer, schedule, logging...).
NON_DATA = {
    Settings: {
        # the tokenizer itself is fingerprinted (cache.tokenizer_identity), not the name it was loaded by
        "base_model", "tokenizer_config", "trust_remote_code",
        "load_in_4bit", "load_in_8bit", "strict", "attn_implementation",
        "dataset_prepared_path",  # where the cache lives, not what it holds
        "preprocess_shard_size", "preprocess_workers",  # how preprocessing runs, not what it makes (tested)
        "pad_to_sequence_len",  # applied by the collator at batch time
        "adapter", "lora_r", "lora_alpha", "lora_dropout", "lora_target_linear", "lora_target_modules",
        "lora_modules_to_save", "lora_model_dir", "peft_use_dora", "peft_use_rslora",
        "output_dir", "micro_batch_size", "eval_batch_size", "gradient_accumulation_steps", "num_epochs",
        "max_steps", "optimizer", "lr_scheduler", "learning_rate", "warmup_ratio", "warmup_steps",
        "weight_decay", "max_grad_norm", "bf16", "fp16", "tf32", "gradient_checkpointing", "loss_head",
        "logging_steps", "evals_per_epoch", "eval_steps", "saves_per_epoch", "save_steps", "save_total_limit",
        "early_stopping_patience", "deepspeed",
        "wandb_project", "wandb_entity", "wandb_name", "wandb_watch", "wandb_log_model", "wandb_mode",
        # preference tuning: whether rows are pairs follows the (marked) dataset types, which `rl` must agree with;
        # the rest shape the loss or the reference cache (keyed separately, finetune.train.reference)
        "rl", "rl_beta", "dpo_loss_type", "dpo_label_smoothing", "precompute_ref_log_probs", "rl_adapter_ref_model",
    },
    DatasetSettings: set(),
    SpecialTokens: set(),
}

# One different, valid value per marked field (dotted: `datasets.x` is a field of the dataset entry).
PERTURB = {
    "chat_template": "chatml",
    "chat_template_jinja": "{{ messages }}",
    "val_set_size": 0.2,
    "val_split": "newest",
    "dedup": True,
    "dedup_threshold": 0.7,
    "dedup_ngram": 2,
    "min_assistant_chars": 5,
    "sequence_len": 64,
    "excess_length_strategy": "truncate",
    "sample_packing": True,
    "eval_sample_packing": False,
    "train_on_inputs": True,
    "seed": 7,
    "datasets.path": "COPY",
    "datasets.type": "alpaca",
    "datasets.ds_type": "json",
    "datasets.split": "test",
    "datasets.field_messages": "conversations",
    "datasets.message_property_mappings": {"role": "from", "content": "value"},
    "datasets.roles": {"user": ["human"], "assistant": ["gpt"]},
    "datasets.roles_to_train": ["user", "assistant"],
    "datasets.train_on_eos": "all",
    "datasets.field_instruction": "question",
    "datasets.field_input": "context",
    "datasets.field_output": "answer",
    "datasets.field_system": "preamble",
    "datasets.field": "body",
    "datasets.field_chosen": "preferred",
    "datasets.field_rejected": "dispreferred",
    "special_tokens.bos_token": "<s>",
    "special_tokens.eos_token": "</s>",
    "special_tokens.pad_token": "<pad>",
    "special_tokens.unk_token": "<unk>",
    "special_tokens.additional_special_tokens": ["<extra>"],
}


def leaf_fields(model: type[BaseModel] = Settings, prefix: str = "") -> dict[str, tuple[type[BaseModel], str]]:
    """Dotted name -> (section, field name) for every non-section field reachable from `model`."""
    out: dict[str, tuple[type[BaseModel], str]] = {}
    for name, field in model.model_fields.items():
        section = section_model(field.annotation)
        if section is not None:
            out.update(leaf_fields(section, f"{prefix}{name}."))
        else:
            out[f"{prefix}{name}"] = (model, name)
    return out


def marked() -> set[str]:
    return {dotted for dotted, (model, name) in leaf_fields().items() if affects_data(model.model_fields[name])}


def test_every_field_is_classified():
    unclassified, both = [], []
    for dotted, (model, name) in leaf_fields().items():
        is_marked, listed = affects_data(model.model_fields[name]), name in NON_DATA[model]
        if not is_marked and not listed:
            unclassified.append(dotted)
        if is_marked and listed:
            both.append(dotted)
    assert not unclassified, (
        f"mark {unclassified} with json_schema_extra={{'affects_data': True}} if they can change the prepared "
        "rows (tokens, labels, packing, dedup, split), else add them to NON_DATA with the reason"
    )
    assert not both, f"{both} are marked data-affecting and also listed as non-data"
    stale = {name for model, names in NON_DATA.items() for name in names if name not in model.model_fields}
    assert not stale, f"NON_DATA names fields that no longer exist: {stale}"


def test_every_marked_field_has_a_perturbation():
    assert marked() == set(PERTURB)


def _perturbed(settings: Settings, dotted: str, value: typing.Any) -> Settings:
    head, _, leaf = dotted.partition(".")
    if not leaf:
        return settings.model_copy(update={head: value})
    if head == "datasets":
        return settings.model_copy(update={"datasets": [settings.datasets[0].model_copy(update={leaf: value})]})
    return settings.model_copy(update={head: getattr(settings, head).model_copy(update={leaf: value})})


@pytest.mark.parametrize("dotted", sorted(PERTURB))
def test_changing_a_marked_field_changes_the_fingerprint(dotted, data_settings, write_chats, llama3_tokenizer):
    chats = write_chats(4)
    settings = data_settings([{"path": chats}])
    value = PERTURB[dotted]
    if value == "COPY":  # the same bytes at another path
        value = str(write_chats(4, name="copy.jsonl"))
    other = _perturbed(settings, dotted, value)
    assert other != settings
    assert cache.fingerprint(other, llama3_tokenizer, "") != cache.fingerprint(settings, llama3_tokenizer, "")


def test_changing_unmarked_fields_keeps_the_fingerprint(data_settings, write_chats, llama3_tokenizer):
    settings = data_settings([{"path": write_chats(4)}])
    other = settings.model_copy(
        update={"learning_rate": 0.1, "lora_r": 64, "pad_to_sequence_len": True, "output_dir": "elsewhere"}
    )
    assert cache.fingerprint(other, llama3_tokenizer, "") == cache.fingerprint(settings, llama3_tokenizer, "")


def rows(settings: Settings, tokenizer) -> dict[str, list]:
    """A fresh build's train and eval columns (the cache bypassed)."""
    result = prepare_data(settings, tokenizer, force=True, progress=False)
    out = {f"train.{name}": result.train[name] for name in result.train.column_names}
    if result.eval is not None:
        out.update({f"eval.{name}": result.eval[name] for name in result.eval.column_names})
    return out


# A sample of marked fields, each with a base recipe where the change shows in the tokens or labels.
SAMPLE = [
    ("sequence_len", {}, {"sequence_len": 48}),
    ("excess_length_strategy", {"sequence_len": 48}, {"sequence_len": 48, "excess_length_strategy": "truncate"}),
    ("train_on_inputs", {}, {"train_on_inputs": True}),
    ("seed", {"val_set_size": 0.25}, {"val_set_size": 0.25, "seed": 7}),
    ("val_set_size", {}, {"val_set_size": 0.25}),
    ("sample_packing", {}, {"sample_packing": True}),
    ("chat_template", {}, {"chat_template": "chatml"}),
    ("datasets.train_on_eos", {}, {"train_on_eos": "none"}),
    ("datasets.roles_to_train", {}, {"roles_to_train": ["user", "assistant"]}),
]


@pytest.mark.parametrize("dotted, before, after", SAMPLE, ids=[s[0] for s in SAMPLE])
def test_marked_fields_change_the_prepared_rows(dotted, before, after, data_settings, write_chats, llama3_tokenizer):
    assert dotted in marked()
    chats = write_chats(12)

    def build(keys):
        entry = {"path": chats, **{k: v for k, v in keys.items() if k in DatasetSettings.model_fields}}
        top = {k: v for k, v in keys.items() if k not in DatasetSettings.model_fields}
        return rows(data_settings([entry], **top), llama3_tokenizer)

    assert build(before) != build(after)


def test_non_data_fields_leave_the_prepared_rows_unchanged(data_settings, write_chats, llama3_tokenizer):
    chats = write_chats(12)
    base = rows(data_settings([{"path": chats}], val_set_size=0.25), llama3_tokenizer)
    other = data_settings(
        [{"path": chats}], val_set_size=0.25, learning_rate=0.1, pad_to_sequence_len=True, micro_batch_size=4,
        output_dir="elsewhere",
    )
    assert rows(other, llama3_tokenizer) == base


def test_the_key_reference_says_which_keys_rebuild_the_cache():
    from finetune.config.describe import DATA_NOTE, key_reference

    noted = {key.replace("[]", "") for key, _, _, meaning in key_reference() if meaning.endswith(DATA_NOTE)}
    assert noted == marked()
