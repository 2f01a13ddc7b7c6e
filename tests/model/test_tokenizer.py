"""Loading the recipe's tokenizer and applying `special_tokens`."""

from __future__ import annotations

import pytest

from finetune.config import load_recipe_text
from finetune.config.settings import SpecialTokens
from finetune.errors import RecipeError
from finetune.model.tokenizer import apply_special_tokens, load_tokenizer


def recipe(base: str, extra: str = "") -> str:
    return f"base_model: {base}\ndatasets:\n  - path: d.jsonl\n{extra}"


def test_seed_special_tokens_exist_in_llama31(tiny_llama_dir):
    text = recipe(str(tiny_llama_dir), 'special_tokens:\n  pad_token: "<|finetune_right_pad_id|>"\n  eos_token: "<|eot_id|>"\n')
    tokenizer = load_tokenizer(load_recipe_text(text).settings)
    assert (tokenizer.pad_token_id, tokenizer.eos_token_id) == (128004, 128009)
    assert len(tokenizer) == 128256  # nothing new was added


def test_new_tokens_are_reported(llama3_tokenizer):
    import copy

    tokenizer = copy.deepcopy(llama3_tokenizer)
    report = apply_special_tokens(
        tokenizer, SpecialTokens(pad_token="<|finetune_right_pad_id|>", additional_special_tokens=["<|new_one|>"])
    )
    assert report.new_tokens == ["<|new_one|>"]
    assert report.assigned == {"pad_token": "<|finetune_right_pad_id|>"}
    assert tokenizer.convert_tokens_to_ids("<|new_one|>") == 128256


def test_missing_local_model_names_the_recipe_line(tmp_path):
    settings = load_recipe_text(recipe(str(tmp_path / "nope")), file="r.yml").settings
    with pytest.raises(RecipeError, match=r"r.yml:1: base_model .*no such directory"):
        load_tokenizer(settings)


def test_file_instead_of_directory(tmp_path):
    path = tmp_path / "model.bin"
    path.write_bytes(b"x")
    with pytest.raises(RecipeError, match="is a file"):
        load_tokenizer(load_recipe_text(recipe(str(path)), file="r.yml").settings)


def test_hub_id_not_cached_offline(monkeypatch, tmp_path):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path))
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
    settings = load_recipe_text(recipe("NousResearch/not-downloaded-model"), file="r.yml").settings
    with pytest.raises(RecipeError, match=r"r.yml:1: .*not in the Hugging Face cache"):
        load_tokenizer(settings)
