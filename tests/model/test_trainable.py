"""The model a run starts from: the base with the recipe's adapter, seeded."""

from __future__ import annotations

from pathlib import Path

from finetune.config import load_recipe_text
from finetune.model.load import Precision
from finetune.model.tokenizer import load_tokenizer
from finetune.model.trainable import trainable_model

SPECIALS = 'special_tokens: {pad_token: "<|finetune_right_pad_id|>", eos_token: "<|eot_id|>"}\nbf16: false\n'


def _adapter(settings, tokenizer):
    model = trainable_model(settings, tokenizer, precision=Precision("fp32", cpu=True))
    return {name: p.detach().clone() for name, p in model.named_parameters() if p.requires_grad}


def test_a_new_adapter_is_initialised_from_the_recipe_seed(micro_llama_dir: Path) -> None:
    import torch

    def recipe(seed: int):
        return load_recipe_text(f"base_model: {micro_llama_dir}\ndatasets: [{{path: x.jsonl}}]\n{SPECIALS}"
                                f"adapter: lora\nlora_target_linear: true\nlora_r: 4\nseed: {seed}\n").settings

    settings = recipe(7)
    tokenizer = load_tokenizer(settings)
    torch.manual_seed(123)  # whatever the generator held before, the recipe's seed decides
    first = _adapter(settings, tokenizer)
    torch.rand(5)
    again = _adapter(settings, tokenizer)
    other = _adapter(recipe(8), tokenizer)
    assert first and all(".lora_" in name for name in first)
    assert all(torch.equal(first[name], again[name]) for name in first)
    assert any(not torch.equal(first[name], other[name]) for name in first if "lora_A" in name)
