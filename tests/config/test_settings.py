"""Settings: derived defaults computed in one place, and copies that do not point at lines they did not come from."""

from __future__ import annotations

from conftest import SEED_RECIPE
from finetune.config import load_recipe_text


def test_eval_batch_and_eval_packing_default_to_the_training_values() -> None:
    unset = SEED_RECIPE.replace("eval_sample_packing: false\n", "")
    assert unset != SEED_RECIPE
    settings = load_recipe_text(unset, ["micro_batch_size=3", "sample_packing=true"]).settings
    assert (settings.eval_batch, settings.packs_eval) == (3, True)
    settings = load_recipe_text(unset, ["micro_batch_size=3", "eval_batch_size=8", "sample_packing=true",
                                        "eval_sample_packing=false"]).settings
    assert (settings.eval_batch, settings.packs_eval) == (8, False)


def test_a_detached_copy_names_no_recipe_line() -> None:
    dataset = load_recipe_text(SEED_RECIPE).settings.datasets[0]
    assert dataset.where("path") == "<recipe>:7"  # the line of `- path:` in SEED_RECIPE
    copy = dataset.detached(path="other.jsonl")
    assert copy.path == "other.jsonl" and copy.type == dataset.type
    assert copy.where("path") == "<settings>"
    assert dataset.where("path") != "<settings>" and dataset.path != "other.jsonl"  # the original is untouched
