"""The run's pieces that differ by stage, and the stage a recipe selects."""

from __future__ import annotations

import pytest

from finetune.config import load_recipe_text
from finetune.train.dpo import DPOStage
from finetune.train.run import SFTStage, stage_for


@pytest.mark.parametrize("rl, stage", [(None, SFTStage), ("dpo", DPOStage), ("ipo", DPOStage)])
def test_the_recipe_rl_key_selects_the_stage(rl, stage) -> None:
    assert type(stage_for(rl)) is stage


def test_a_recipe_selects_the_stage_it_trains() -> None:
    base = "base_model: /x\ndatasets: [{path: x.jsonl, type: chat_template.default}]\n"
    assert isinstance(stage_for(load_recipe_text(base + "rl: dpo\n").settings.rl), DPOStage)
    sft = "base_model: /x\ndatasets: [{path: x.jsonl}]\n"
    assert isinstance(stage_for(load_recipe_text(sft).settings.rl), SFTStage)


def test_only_preference_tuning_adds_summary_entries() -> None:
    history = [
        {"step": 1, "loss": 0.7, "rewards/margins": 0.1, "rewards/accuracies": 0.5},
        {"step": 2, "loss": 0.6, "rewards/margins": 0.3, "rewards/accuracies": 0.75},
        {"step": 2, "eval_loss": 0.65, "eval_rewards/margins": 0.2},
    ]
    assert SFTStage().summary(history) == {}
    assert DPOStage().summary(history) == {"rewards/margins": 0.3, "rewards/accuracies": 0.75,
                                           "eval_rewards/margins": 0.2}


def test_each_stage_says_what_an_empty_split_lacks() -> None:
    assert "is empty" in SFTStage().nothing_to_train and "no pairs" in DPOStage().nothing_to_train


def test_a_template_that_never_ends_a_turn_is_refused_at_its_line(llama3_tokenizer) -> None:
    from finetune.data.templates import CHATML_JINJA
    from finetune.errors import RecipeError
    from finetune.train.run import check_end_of_turn

    endless = "{% for m in messages %}{{ m['role'] }}: {{ m['content'] }}\n{% endfor %}assistant: "
    with pytest.raises(RecipeError, match="recipe.yml:7"):
        check_end_of_turn(llama3_tokenizer, endless, "recipe.yml:7")
    check_end_of_turn(llama3_tokenizer, CHATML_JINJA, "recipe.yml:7")  # <|im_end|> is text here, and stops
    assert llama3_tokenizer.chat_template is None  # the shared tokenizer is left as it was
