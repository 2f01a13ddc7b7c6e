"""Model loading: precision, quantization config, attention backend, special tokens, packed isolation."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from finetune.config import load_recipe_text
from finetune.errors import RecipeError
from finetune.model.load import attention_backend, load_model, quantization_config, resolve_precision

SPECIALS = 'special_tokens: {pad_token: "<|finetune_right_pad_id|>", eos_token: "<|eot_id|>"}\n'


def recipe(base: str | Path = "/nowhere", text: str = ""):
    return load_recipe_text(f"base_model: {base}\ndatasets: [{{path: x.jsonl}}]\n{text}").settings


def test_4bit_config_is_nf4_double_quant_with_matching_storage() -> None:
    import torch

    q = quantization_config(recipe(text="load_in_4bit: true\nadapter: qlora\nlora_target_linear: true\n"),
                            dtype=torch.bfloat16)
    assert q.load_in_4bit and not q.load_in_8bit
    assert q.bnb_4bit_quant_type == "nf4" and q.bnb_4bit_use_double_quant
    assert q.bnb_4bit_compute_dtype == torch.bfloat16 and q.bnb_4bit_quant_storage == torch.bfloat16
    q8 = quantization_config(recipe(text="load_in_8bit: true\nadapter: lora\nlora_target_linear: true\n"))
    assert q8.load_in_8bit and not q8.load_in_4bit
    assert quantization_config(recipe()) is None


@pytest.mark.parametrize(
    ("text", "bf16_ok", "expected"),
    [("", True, "bf16"), ("", False, "fp32"), ("bf16: false\n", True, "fp32"), ("bf16: false\nfp16: true\n", True, "fp16"),
     ("bf16: true\n", False, "bf16")],
)
def test_precision_resolution(text: str, bf16_ok: bool, expected: str) -> None:
    assert resolve_precision(recipe(text=text), bf16_ok=bf16_ok, tf32_ok=False, cpu=True).dtype == expected


def test_tf32_only_where_supported() -> None:
    assert not resolve_precision(recipe(text="tf32: true\n"), bf16_ok=True, tf32_ok=False, cpu=True).tf32
    assert resolve_precision(recipe(text="tf32: true\n"), bf16_ok=True, tf32_ok=True, cpu=False).tf32


def test_flash_attention_falls_back_to_sdpa_with_one_warning(caplog) -> None:
    import torch

    settings = recipe(text="attn_implementation: flash_attention_2\n")
    if torch.cuda.is_available():
        pytest.skip("a CUDA machine may have flash-attn")
    caplog.set_level(logging.INFO, logger="finetune")
    assert attention_backend(settings) == "sdpa"
    [record] = caplog.records
    assert record.levelno == logging.WARNING and "flash_attention_2" in record.getMessage()
    assert attention_backend(recipe()) == "sdpa"
    assert attention_backend(recipe(text="attn_implementation: eager\n")) == "eager"


def test_missing_model_names_the_recipe_line(llama3_tokenizer) -> None:
    settings = load_recipe_text("datasets: [{path: x.jsonl}]\nbase_model: ./no/such/model\n", file="r.yml").settings
    with pytest.raises(RecipeError, match=r"r\.yml:2"):
        load_model(settings, llama3_tokenizer)


def _tokenizer(settings):
    from finetune.model.tokenizer import load_tokenizer

    return load_tokenizer(settings)


def test_training_model_has_no_cache_and_trained_generation_ids(tiny_llama_dir: Path) -> None:
    settings = recipe(tiny_llama_dir, SPECIALS + "bf16: false\n")
    model = load_model(settings, _tokenizer(settings))
    assert model.config.use_cache is False
    assert model.generation_config.eos_token_id[0] == 128009 and 128001 in model.generation_config.eos_token_id
    assert model.generation_config.pad_token_id == 128004 and model.config.pad_token_id == 128004


def test_existing_tokens_make_modules_to_save_optional_with_its_size(tiny_llama_dir: Path, caplog) -> None:
    caplog.set_level(logging.INFO, logger="finetune")
    settings = recipe(tiny_llama_dir, SPECIALS + "adapter: lora\nlora_target_linear: true\nbf16: false\n"
                      "lora_modules_to_save: [embed_tokens, lm_head]\n")
    model = load_model(settings, _tokenizer(settings))
    assert model.get_input_embeddings().weight.shape[0] == 128256  # nothing resized
    size = 2 * 128256 * 64 * 4
    assert any("optional" in n and f"{size:,} bytes" in n for n in caplog.messages), caplog.messages
    caplog.clear()
    load_model(settings, _tokenizer(settings), training=False)  # chat/evaluate: nothing will be trained
    assert not any("optional" in n for n in caplog.messages), caplog.messages


def test_new_tokens_resize_and_require_modules_to_save(tiny_llama_dir: Path) -> None:
    new = "special_tokens: {pad_token: '<|my_pad|>', eos_token: '<|eot_id|>'}\nbf16: false\n"
    settings = recipe(tiny_llama_dir, new + "adapter: lora\nlora_target_linear: true\n")
    with pytest.raises(RecipeError, match="lora_modules_to_save: \\[embed_tokens, lm_head\\]"):
        load_model(settings, _tokenizer(settings))
    settings = recipe(tiny_llama_dir, new + "adapter: lora\nlora_target_linear: true\n"
                      "lora_modules_to_save: [embed_tokens, lm_head]\n")
    model = load_model(settings, _tokenizer(settings))
    assert model.get_input_embeddings().weight.shape[0] == 128257
    assert model.generation_config.pad_token_id == 128256


@pytest.mark.parametrize("attn", ["sdpa", "eager"])
def test_packed_samples_are_isolated_as_loaded(tiny_llama_dir: Path, attn: str) -> None:
    """Per-token losses of a packed row (position_ids restart, no attention mask) == each sample alone."""
    import torch
    import torch.nn.functional as F

    settings = recipe(tiny_llama_dir, SPECIALS + f"attn_implementation: {attn}\nbf16: false\n")
    model = load_model(settings, _tokenizer(settings)).eval()
    assert model.config._attn_implementation == attn
    generator = torch.Generator().manual_seed(0)
    samples = [torch.randint(0, 5000, (n,), generator=generator) for n in (9, 5, 7)]

    def token_losses(ids, **kw):
        logits = model(input_ids=ids[None], **kw).logits[0, :-1]
        return F.cross_entropy(logits.float(), ids[1:], reduction="none")

    packed = torch.cat(samples)
    positions = torch.cat([torch.arange(len(s)) for s in samples])[None]
    with torch.no_grad():
        together = token_losses(packed, position_ids=positions)
        alone, start = [], 0
        for s in samples:
            alone.append(token_losses(s))
        leaked = token_losses(packed, position_ids=positions, use_cache=True)  # the KV-cache trap
    start = 0
    for s, expected in zip(samples, alone):
        torch.testing.assert_close(together[start:start + len(s) - 1], expected, atol=1e-4, rtol=1e-4)
        start += len(s)
    assert not torch.allclose(leaked[9:13], alone[1], atol=1e-4)


@pytest.mark.parametrize("cuda, quantized, expected", [
    (True, False, "cuda"), (False, False, "cpu"), (True, True, None), (False, True, None)])
def test_inference_placement(cuda, quantized, expected):
    # An unquantized model goes to the GPU when there is one; a quantized one stays where bitsandbytes put it.
    from finetune.model.load import inference_device

    assert inference_device(cuda_available=cuda, quantized=quantized) == expected


# --- a 4-bit base trained on the CPU: evaluations must not change the training path (issue 21, items 9 and 10) ---


@pytest.fixture
def cpu_bf16_kernel(monkeypatch):
    """bitsandbytes as on a CPU with AVX512-BF16 (where its Linear4bit repacks weights for inference), on any CPU."""
    import bitsandbytes.nn.modules

    monkeypatch.setattr(bitsandbytes.nn.modules, "has_avx512bf16", lambda: True)


def _qlora_model(tiny_llama_dir: Path, *, dora: bool = False):
    from finetune.model.adapters import apply_adapter

    settings = recipe(tiny_llama_dir, SPECIALS + "adapter: qlora\nload_in_4bit: true\nlora_target_linear: true\n"
                      f"bf16: false\npeft_use_dora: {str(dora).lower()}\n")
    return apply_adapter(settings, load_model(settings, _tokenizer(settings)))


def _bytes(tensor):
    return tensor.detach().reshape(-1).contiguous().view(__import__("torch").uint8)


def _adapter_grads(model, ids):
    model.train()
    model.zero_grad()
    model(input_ids=ids, labels=ids).loss.backward()
    return {name: p.grad.clone() for name, p in model.named_parameters() if p.requires_grad}


@pytest.mark.parametrize("dora", [False, True])
def test_an_evaluation_leaves_the_4bit_training_path_untouched(tiny_llama_dir: Path, cpu_bf16_kernel, dora) -> None:
    import torch

    torch.manual_seed(0)
    model = _qlora_model(tiny_llama_dir, dora=dora)
    ids = torch.randint(100, 5000, (2, 12))
    before = {k: v.clone() for k, v in model.state_dict().items()}
    expected = _adapter_grads(model, ids)

    model.eval()
    with torch.no_grad():
        model(input_ids=ids)  # what an evaluation does
    after = model.state_dict()  # what a checkpoint saves: the 4-bit weights and quantization state as loaded
    assert after.keys() == before.keys()
    for name, value in before.items():  # bit for bit (4-bit weights stored as floats can hold NaN patterns)
        assert torch.equal(_bytes(after[name]), _bytes(value)), name
    got = _adapter_grads(model, ids)
    assert any(g.abs().max() > 0 for name, g in got.items() if "lora_B" in name)
    for name, grad in expected.items():
        assert torch.equal(got[name], grad), name


def test_gradients_through_a_4bit_layer_after_a_no_grad_forward_use_the_dequantized_weight(
        tiny_llama_dir: Path, cpu_bf16_kernel) -> None:
    import bitsandbytes.functional as bnbf
    import torch

    model = _qlora_model(tiny_llama_dir)
    layer = model.base_model.model.model.layers[0].mlp.down_proj.base_layer  # a bitsandbytes Linear4bit
    assert type(layer).__name__ == "Linear4bit"
    weight = bnbf.dequantize_4bit(layer.weight.data, layer.weight.quant_state)
    x = torch.randn(3, 5, layer.in_features, generator=torch.Generator().manual_seed(0))
    model.eval()
    with torch.no_grad():
        layer(x)
    model.train()
    ours = x.clone().requires_grad_(True)
    reference = x.clone().requires_grad_(True)
    upstream = torch.randn(3, 5, layer.out_features, generator=torch.Generator().manual_seed(1))
    (layer(ours) * upstream).sum().backward()
    (torch.nn.functional.linear(reference, weight) * upstream).sum().backward()
    torch.testing.assert_close(ours.grad, reference.grad, rtol=1e-5, atol=1e-6)
