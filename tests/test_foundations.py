"""Issue 12 "Sound foundations": answers that used to be wrong without a word."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from finetune.config import load_recipe_text
from finetune.errors import RecipeError
from finetune.plan import plan_memory

SRC = Path(__file__).resolve().parents[1] / "src" / "finetune"

RECIPE = """
base_model: NousResearch/Meta-Llama-3.1-8B
load_in_4bit: true
chat_template: llama3
datasets:
  - path: /path/to/training_data.json
    type: chat_template
output_dir: ./outputs/lora-out
sequence_len: 4096
adapter: qlora
lora_target_linear: true
micro_batch_size: 1
bf16: true
gradient_checkpointing: true
"""


def _settings(deepspeed: str):
    return load_recipe_text(RECIPE, [f"deepspeed={deepspeed}"]).settings


@pytest.mark.parametrize("deepspeed", ["/path/to/deepspeed_configs/zero3.json", "/nowhere/my_zero2.json"])
def test_plan_never_guesses_the_zero_stage_from_a_file_name(deepspeed: str) -> None:
    # zero3.json is refused by `train` (ZeRO-3 unsupported); a missing custom file is an error there too.
    # `plan` used to say "fits" with the stage read off the name.
    with pytest.raises(RecipeError, match="deepspeed"):
        plan_memory(_settings(deepspeed), world_size=2)


def test_plan_resolves_a_bundled_stand_in_like_train() -> None:
    plan = plan_memory(_settings("/path/to/deepspeed_configs/zero2.json"), world_size=2)
    assert plan.zero_stage == 2 and Path(plan.deepspeed).name == "zero2.json" and Path(plan.deepspeed).is_file()


def _imports(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(encoding="utf-8"))
    return {n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and n.module}


def test_plan_and_launch_do_not_import_each_other() -> None:
    # launch prints the plan (launch -> plan); plan must not reach back into launch (no circle).
    assert not {"finetune.train.launch", "finetune.train"} & _imports(SRC / "plan.py")
    assert not {"finetune.plan", "finetune.train.launch"} & _imports(SRC / "deepspeed_config.py")
