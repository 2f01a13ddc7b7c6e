"""Recipes: YAML -> frozen settings, with file:line errors and Axolotl-compatible spellings."""

from __future__ import annotations

from pathlib import Path

import pytest

from finetune.config import load_recipe, load_recipe_text
from finetune.config.describe import derived_values, key_reference, resolved_yaml
from finetune.config.settings import Settings
from finetune.errors import RecipeError

ROOT = Path(__file__).resolve().parents[2]
SEED = ROOT.parent / "shared" / "seeds" / "chat-like-me.yml"
SHIPPED = ROOT / "configs" / "llama31-8b-qlora-dora-zero2.yml"
MINIMAL = """\
base_model: some/model
datasets:
  - path: data.jsonl
    type: chat_template
"""


def seed_text() -> str:
    return (SEED if SEED.exists() else SHIPPED).read_text()


def error_of(text: str, overrides=()) -> str:
    with pytest.raises(RecipeError) as info:
        load_recipe_text(text, overrides, file="r.yml")
    return str(info.value)


def line_of(text: str, needle: str) -> int:
    return next(i for i, line in enumerate(text.splitlines(), 1) if needle in line)


@pytest.mark.parametrize("path", [SEED, SHIPPED], ids=["seed", "shipped"])
def test_seed_recipe_validates_as_written(path):
    if not path.exists():
        pytest.skip("shared seed not present")
    loaded = load_recipe(path)
    s = loaded.settings
    assert s.base_model == "NousResearch/Meta-Llama-3.1-8B"
    assert (s.adapter, s.lora_r, s.lora_alpha, s.peft_use_dora, s.load_in_4bit) == ("qlora", 64, 32, True, True)
    assert s.sample_packing and not s.packs_eval and s.pad_to_sequence_len
    assert s.special_tokens.pad_token == "<|finetune_right_pad_id|>"
    assert s.special_tokens.eos_token == "<|eot_id|>"
    assert s.effective_batch(world_size=2) == 4
    # Deprecated spellings are rewritten with a one-line notice naming the current spelling.
    assert s.attn_implementation == "flash_attention_2"
    assert s.datasets[0].message_property_mappings == {"role": "role", "content": "content"}
    notices = "\n".join(loaded.notices)
    assert "attn_implementation: flash_attention_2" in notices
    assert "message_property_mappings" in notices
    assert all("\n" not in notice for notice in loaded.notices)
    text = path.read_text()
    assert f"{path}:{line_of(text, 'flash_attention')}:" in notices


def test_settings_are_frozen():
    s = load_recipe_text(MINIMAL).settings
    with pytest.raises(Exception):
        s.lora_r = 3
    with pytest.raises(Exception):
        s.datasets[0].path = "other"


@pytest.mark.parametrize(
    "bad, key, expected",
    [
        ("lora_alfa: 32", "lora_alfa", "unknown key, did you mean `lora_alpha`?"),
        ("micro_batch_sise: 2", "micro_batch_sise", "did you mean `micro_batch_size`?"),
        ("sequence_len: 4k", "sequence_len", "valid integer"),
        ("micro_batch_size: 0", "micro_batch_size", "greater than 0"),
        ("gradient_accumulation_steps: -2", "gradient_accumulation_steps", "greater than 0"),
        ("optimizer: adamw_bnb_9bit", "optimizer", "adamw_bnb_8bit"),
        ("train_on_inputs: maybe", "train_on_inputs", "valid boolean"),
    ],
)
def test_bad_keys_and_values_name_the_line(bad, key, expected):
    text = MINIMAL + bad + "\n"
    message = error_of(text)
    assert f"r.yml:{line_of(text, key)}:" in message
    assert expected in message


def test_misspelled_nested_key_points_at_its_line():
    text = MINIMAL + "    field_mesages: conversations\n"
    message = error_of(text)
    assert f"r.yml:{line_of(text, 'field_mesages')}: datasets.0.field_mesages" in message
    assert "did you mean `field_messages`?" in message


def test_key_at_wrong_level_says_where_it_belongs():
    message = error_of(MINIMAL + "roles_to_train: [assistant]\n")
    assert "belongs under `datasets:`" in message


@pytest.mark.parametrize(
    "extra, key, expected",
    [
        ("adapter: qlora\nlora_target_linear: true", "adapter", "needs load_in_4bit"),
        ("load_in_4bit: true", "load_in_4bit", "set adapter: qlora"),
        ("warmup_steps: 10\nwarmup_ratio: 0.1", "warmup_steps", "not both"),
        ("saves_per_epoch: 1\nsave_steps: 10", "save_steps", "not both"),
        ("val_set_size: 0.1\nevals_per_epoch: 1\neval_steps: 10", "eval_steps", "not both"),
        ("evals_per_epoch: 2", "evals_per_epoch", "needs a validation split"),
        ("eval_steps: 5\nval_set_size: 0", "eval_steps", "needs a validation split"),
        ("adapter: lora", "adapter", "targets no module"),
        ("peft_use_dora: true", "peft_use_dora", "needs an adapter"),
        ("bf16: true\nfp16: true", "fp16", "exclusive"),
        ("val_set_size: 2.5", "val_set_size", "whole count"),
        ("early_stopping_patience: 2", "early_stopping_patience", "needs evaluations"),
        ("chat_template: jinja", "chat_template", "needs chat_template_jinja"),
        ("eval_sample_packing: true", "eval_sample_packing", "needs sample_packing"),
    ],
)
def test_contradictions_are_errors_with_lines(extra, key, expected):
    text = MINIMAL + extra + "\n"
    message = error_of(text)
    assert expected in message
    assert f"r.yml:{line_of(text, key + ':')}:" in message


def test_every_contradiction_is_reported_at_once_with_its_line():
    text = MINIMAL + "warmup_steps: 10\nwarmup_ratio: 0.1\nbf16: true\nfp16: true\nevals_per_epoch: 2\n"
    lines = error_of(text).splitlines()
    assert lines == [
        f"r.yml:{line_of(text, 'warmup_steps:')}: set warmup_steps or warmup_ratio, not both",
        f"r.yml:{line_of(text, 'evals_per_epoch:')}: evaluation needs a validation split; set val_set_size (e.g. 0.05)",
        f"r.yml:{line_of(text, 'fp16:')}: bf16 and fp16 are exclusive; keep one",
    ]


def test_contradictions_beyond_the_limit_are_counted():
    keys = ["peft_use_dora: true", "peft_use_rslora: true", "lora_model_dir: x", "lora_target_modules: [q]",
            "lora_modules_to_save: [lm_head]", "warmup_steps: 1", "warmup_ratio: 0.1", "save_steps: 1",
            "saves_per_epoch: 1", "bf16: true", "fp16: true", "load_in_4bit: true", "load_in_8bit: true"]
    lines = error_of(MINIMAL + "\n".join(keys) + "\n").splitlines()
    assert len(lines) == 11 and lines[-1] == "... and 1 more"


def test_duplicate_key_is_an_error():
    text = MINIMAL + "lora_r: 8\nlora_r: 16\n"
    assert f"r.yml:{line_of(text, 'lora_r: 16')}: `lora_r` is set twice" in error_of(text)


@pytest.mark.parametrize(
    "text, expected",
    [("", "empty"), ("- a\n- b\n", "mapping"), ("base_model: [unclosed\n", "invalid YAML"), ("a: !!python/object:os.system x\n", "r.yml")],
)
def test_malformed_yaml(text, expected):
    assert expected in error_of(text)


@pytest.mark.parametrize(
    "opened, what", [("lora_dropout: [0.05", "flow sequence"), ('wandb_name: "unclosed', "quoted scalar")]
)
def test_yaml_syntax_error_names_where_the_construct_started(opened, what):
    text = MINIMAL + "lora_r: 8\n" + opened + "\nlora_alpha: 16\nseed: 1\n"
    message = error_of(text)
    start = line_of(text, opened)
    assert f"{what} that starts at line {start};" in message
    assert message.startswith("r.yml:") and int(message.split(":")[1]) > start  # where the parser noticed


def test_missing_recipe_file(tmp_path):
    with pytest.raises(RecipeError, match="recipe file not found"):
        load_recipe(tmp_path / "nope.yml")


def test_overrides_dotted_paths_and_validation():
    s = load_recipe_text(MINIMAL, ["lora_r=16", "datasets.0.path=other.jsonl", "special_tokens.pad_token=<pad>"]).settings
    assert (s.lora_r, s.datasets[0].path, s.special_tokens.pad_token) == (16, "other.jsonl", "<pad>")
    assert s.datasets[0].where("path") == "--set datasets.0.path=other.jsonl"
    assert "--set lora_r=zero: lora_r: Input should be a valid integer" in error_of(MINIMAL, ["lora_r=zero"])
    assert "did you mean `lora_alpha`" in error_of(MINIMAL, ["lora_alfa=3"])
    assert "expected KEY=VALUE" in error_of(MINIMAL, ["lora_r"])


def test_where_points_at_recipe_lines():
    s = load_recipe_text(MINIMAL, file="r.yml").settings
    assert s.datasets[0].where("path") == "r.yml:3"
    assert s.where("base_model") == "r.yml:1"
    assert s.where("output_dir") == "r.yml"  # a default: only the file is known


def test_derived_values_and_resolved_yaml():
    s = load_recipe_text(seed_text()).settings
    rows = dict(derived_values(s, world_size=2))
    assert rows["effective batch per optimizer step"].startswith("4 rows")
    assert rows["sample packing"].startswith("on")
    assert "sdpa" in rows["attention backend"] or "flash_attention_2" in rows["attention backend"]
    assert rows["evaluation"] == "evaluate 1x per epoch"
    assert rows["checkpoints"] == "save 1x per epoch"
    again = load_recipe_text(resolved_yaml(s)).settings  # the resolved recipe is itself a valid recipe
    assert again.model_dump() == s.model_dump()


def test_every_field_is_documented_and_listed():
    rows = key_reference()
    keys = {row[0] for row in rows}
    assert {"base_model", "datasets[].path", "special_tokens.pad_token", "lora_alpha"} <= keys
    assert all(row[3] for row in rows), [row[0] for row in rows if not row[3]]
    assert dict((r[0], r[2]) for r in rows)["base_model"] == "required"
    assert dict((r[0], r[2]) for r in rows)["sequence_len"] == "2048"


def test_settings_can_be_built_in_python():
    s = Settings(base_model="m", datasets=[{"path": "d.jsonl"}], adapter="lora", lora_target_linear=True)
    assert s.datasets[0].role_map["gpt"] == "assistant"
    assert s.datasets[0].where("path") == "<settings>"


def test_recipe_reference_page_is_current():
    from finetune.config.reference import reference_markdown

    page = ROOT / "docs" / "recipe-reference.md"
    assert page.read_text(encoding="utf-8") == reference_markdown(), "run: python scripts/gen_recipe_reference.py"


def test_loss_head_defaults_to_fused_and_rejects_unknown_values_with_the_line():
    assert load_recipe_text(MINIMAL).settings.loss_head == "fused"
    text = MINIMAL + "loss_head: fast\n"
    message = error_of(text)
    assert f"r.yml:{line_of(text, 'loss_head')}" in message and "fused" in message and "trl" in message
