"""LoRA configuration and adapter application."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from finetune.config import load_recipe_text
from finetune.model.adapters import apply_adapter, lora_config, target_modules

LLAMA_LINEARS = ["down_proj", "gate_proj", "k_proj", "o_proj", "q_proj", "up_proj", "v_proj"]
SPECIALS = 'special_tokens: {pad_token: "<|finetune_right_pad_id|>", eos_token: "<|eot_id|>"}\nbf16: false\n'


def recipe(base, text: str):
    return load_recipe_text(f"base_model: {base}\ndatasets: [{{path: x.jsonl}}]\n{SPECIALS}{text}").settings


@pytest.fixture(scope="module")
def small_model():
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=300, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, tie_word_embeddings=False)
    return LlamaForCausalLM(config)


def test_target_linear_finds_every_linear_but_the_lm_head(small_model) -> None:
    settings = recipe("/x", "adapter: lora\nlora_target_linear: true\n")
    assert target_modules(settings, small_model) == LLAMA_LINEARS
    both = recipe("/x", "adapter: lora\nlora_target_linear: true\nlora_target_modules: [extra_proj]\n")
    assert target_modules(both, small_model) == sorted(LLAMA_LINEARS + ["extra_proj"])
    only = recipe("/x", "adapter: lora\nlora_target_modules: [q_proj, v_proj]\n")
    assert target_modules(only, small_model) == ["q_proj", "v_proj"]


@pytest.mark.parametrize("listed", ["[q_proj, lm_head]", "\n  - q_proj\n  - lm_head"])
def test_lora_on_the_lm_head_is_refused_at_its_line_naming_modules_to_save(listed: str) -> None:
    """Issue 21, item 2: TRL refuses a LoRA on lm_head with a traceback, and the trained-token loss would read the head's
    weight without the LoRA delta; the recipe is refused where it names the head, with the way to train it."""
    from finetune.errors import RecipeError

    text = (f"base_model: /x\ndatasets: [{{path: x.jsonl}}]\nadapter: lora\nlora_target_linear: true\n"
            f"lora_target_modules: {listed}\n")
    with pytest.raises(RecipeError) as caught:
        load_recipe_text(text, file="r.yml")
    line = next(i for i, row in enumerate(text.splitlines(), 1) if "lm_head" in row)
    assert f"r.yml:{line}: LoRA on the output head `lm_head` is not supported" in str(caught.value)
    assert "`lora_modules_to_save: [lm_head]`" in str(caught.value)


def test_any_models_output_head_is_refused_as_a_lora_target_and_never_picked_by_target_linear() -> None:
    import torch

    from finetune.errors import RecipeError

    class Model(torch.nn.Module):  # a head under a name the recipe check cannot know
        def __init__(self) -> None:
            super().__init__()
            self.proj = torch.nn.Linear(4, 4)
            self.output = torch.nn.Linear(4, 9)

        def get_output_embeddings(self):
            return self.output

    assert target_modules(recipe("/x", "adapter: lora\nlora_target_linear: true\n"), Model()) == ["proj"]
    with pytest.raises(RecipeError, match=r"`lora_modules_to_save: \[output\]`"):
        target_modules(recipe("/x", "adapter: lora\nlora_target_modules: [proj, output]\n"), Model())


def test_lora_config_carries_rank_scaling_dora_and_rslora(small_model) -> None:
    settings = recipe("/x", "adapter: lora\nlora_target_linear: true\nlora_r: 64\nlora_alpha: 32\n"
                      "lora_dropout: 0.05\npeft_use_dora: true\npeft_use_rslora: true\n"
                      "lora_modules_to_save: [embed_tokens, lm_head]\n")
    config = lora_config(settings, small_model)
    assert (config.r, config.lora_alpha, config.lora_dropout) == (64, 32, 0.05)
    assert config.use_dora and config.use_rslora and config.task_type == "CAUSAL_LM"
    assert sorted(config.target_modules) == LLAMA_LINEARS
    assert config.modules_to_save == ["embed_tokens", "lm_head"]
    plain = lora_config(recipe("/x", "adapter: lora\nlora_target_linear: true\n"), small_model)
    assert not plain.use_dora and not plain.use_rslora and plain.modules_to_save is None


def test_qlora_on_4bit_targets_bnb_layers_and_does_not_upcast_frozen_embeddings(tiny_llama_dir: Path, caplog) -> None:
    import torch

    from finetune.model.load import load_model
    from finetune.model.tokenizer import load_tokenizer

    settings = load_recipe_text(
        f"base_model: {tiny_llama_dir}\ndatasets: [{{path: x.jsonl}}]\nload_in_4bit: true\nadapter: qlora\n"
        "lora_target_linear: true\npeft_use_dora: true\nbf16: true\n").settings
    caplog.set_level(logging.INFO, logger="finetune")
    model = load_model(settings, load_tokenizer(settings))
    assert type(model.model.layers[0].self_attn.q_proj).__name__ == "Linear4bit"
    assert target_modules(settings, model) == LLAMA_LINEARS
    peft_model = apply_adapter(settings, model)
    base = peft_model.get_base_model()
    assert base.lm_head.weight.dtype == torch.bfloat16 and not base.lm_head.weight.requires_grad
    assert base.model.embed_tokens.weight.dtype == torch.bfloat16
    assert base.model.norm.weight.dtype == torch.float32
    trainable = {n: p for n, p in peft_model.named_parameters() if p.requires_grad}
    assert trainable and all(p.dtype == torch.float32 for p in trainable.values())
    assert any("lora_magnitude_vector" in n for n in trainable)  # DoRA is really on
    assert not any("lm_head" in n for n in trainable)
    assert any(n.startswith("trainable parameters:") for n in caplog.messages)


def test_lora_model_dir_continues_trainable(tiny_llama_dir: Path, tmp_path: Path) -> None:
    import torch

    from finetune.model.load import load_model
    from finetune.model.tokenizer import load_tokenizer

    first = recipe(tiny_llama_dir, "adapter: lora\nlora_target_modules: [q_proj, v_proj]\nlora_r: 4\n")
    tokenizer = load_tokenizer(first)
    peft_model = apply_adapter(first, load_model(first, tokenizer))
    with torch.no_grad():
        for name, param in peft_model.named_parameters():
            if "lora_B" in name:
                param.fill_(0.5)
    peft_model.save_pretrained(tmp_path / "adapter")
    again = recipe(tiny_llama_dir, f"adapter: lora\nlora_target_linear: true\nlora_model_dir: {tmp_path / 'adapter'}\n")
    resumed = apply_adapter(again, load_model(again, tokenizer))
    b = [p for n, p in resumed.named_parameters() if "lora_B" in n]
    assert b and all(p.requires_grad and torch.all(p == 0.5) for p in b)
