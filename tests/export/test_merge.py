"""`finetune merge`: the merged model computes what base + adapter computed, written shard by shard."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

torch = pytest.importorskip("torch")

from finetune.errors import FinetuneError, RecipeError  # noqa: E402
from finetune.export.merge import MergeMonitor, _nf4_round_trip, merge_adapter  # noqa: E402
from finetune.config.sizes import parse_size  # noqa: E402



def _ids(run_dir: Path) -> Any:
    # The rendered llama3 turn, ids from the real tokenizer, plus the new token of the resized-vocabulary run.
    ids = [128000, 128006, 882, 128007, 271, 4438, 1690, 14535, 706, 264, 35454, 30, 128009, 128256]
    vocab = json.loads((run_dir / "tokenizer.json").read_text())["added_tokens"]
    return torch.tensor([ids if any(t["id"] == 128256 for t in vocab) else ids[:-1]])


def _peft_logits(run_dir: Path, base_dir: Path, *, qlora: bool = False) -> tuple[Any, Any]:
    """(logits of base + adapter, unmerged, in float32; logits of the base alone) as peft computes them.

    The 4-bit model runs in train mode (every dropout is 0): that is the path training took. In eval mode on a
    CPU with AVX512-BF16, bitsandbytes repacks the weights for a fast inference kernel with absmax rounded to
    bf16, which is not what the adapter was trained against.
    """
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer, BitsAndBytesConfig

    kwargs: dict[str, Any] = {"dtype": torch.float32}
    if qlora:
        kwargs["quantization_config"] = BitsAndBytesConfig(
            load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
            bnb_4bit_compute_dtype=torch.float32, bnb_4bit_quant_storage=torch.float32)
        kwargs["device_map"] = {"": "cpu"}
    base = AutoModelForCausalLM.from_pretrained(base_dir, **kwargs)
    rows = len(AutoTokenizer.from_pretrained(run_dir))
    if rows > base.get_input_embeddings().weight.shape[0]:
        base.resize_token_embeddings(rows)
    ids = _ids(run_dir)
    with torch.no_grad():
        plain = base.train(qlora)(ids).logits.clone()
        model = PeftModel.from_pretrained(base, run_dir).train(qlora)
        return model(ids).logits, plain


def _merged_logits(merged_dir: Path, run_dir: Path, round_to: Any = None) -> Any:
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(merged_dir, dtype=torch.float32).eval()
    if round_to is not None:  # round the weights only (model.to would also round the RoPE buffer)
        for param in model.parameters():
            param.data = param.data.to(round_to).to(torch.float32)
    with torch.no_grad():
        return model(_ids(run_dir)).logits


def _err(a: Any, b: Any) -> float:
    return (a - b).abs().max().item()


@pytest.mark.parametrize("kind", ["lora", "dora", "rslora"])
def test_merge_matches_unmerged_peft(kind: str, make_adapter_run: Any, tiny_llama_dir: Path, tmp_path: Path) -> None:
    run, settings = make_adapter_run(dora=kind == "dora", rslora=kind == "rslora")
    expected, plain = _peft_logits(run, tiny_llama_dir)
    assert _err(expected, plain) > 0.05  # the adapter changes the model

    exact = merge_adapter(settings, out_dir=tmp_path / "fp32", dtype="fp32")
    assert _err(_merged_logits(exact, run), expected) < 1e-4  # same formula as peft, to float32 rounding

    merged = merge_adapter(settings, dtype="bf16")
    assert merged == run / "merged"
    assert json.loads((merged / "config.json").read_text())["dtype"] == "bfloat16"
    got = _merged_logits(merged, run)
    assert _err(got, _merged_logits(exact, run, round_to=torch.bfloat16)) < 1e-5  # = the exact merge, rounded
    assert _err(got, expected) < _err(expected, plain) / 5  # bf16 rounding is small next to the adapter

def test_rslora_scales_by_alpha_over_sqrt_r(make_adapter_run: Any, tmp_path: Path) -> None:
    # The same factors merged with the plain alpha/r scale must give another model: rsLoRA is not ignored.
    run, settings = make_adapter_run(rslora=True, seed=3)
    config = json.loads((run / "adapter_config.json").read_text())
    assert config["use_rslora"] is True
    rs = merge_adapter(settings, out_dir=tmp_path / "rs", dtype="fp32")
    config["use_rslora"] = False
    (run / "adapter_config.json").write_text(json.dumps(config))
    plain = merge_adapter(settings, out_dir=tmp_path / "plain", dtype="fp32")
    assert _err(_merged_logits(rs, run), _merged_logits(plain, run)) > 0.05


def test_qlora_dora_merges_into_the_dequantized_base(make_adapter_run: Any, tiny_llama_dir: Path,
                                                     tmp_path: Path) -> None:
    # Reference: the bitsandbytes 4-bit model + adapter, exactly as trained (float32 compute on CPU).
    # Our NF4 round trip reproduces its weights bit for bit, so the merge matches it to fp32 rounding,
    # while merging into the original (never quantized) weights would not.
    run, settings = make_adapter_run(dora=True, qlora=True)
    expected, _ = _peft_logits(run, tiny_llama_dir, qlora=True)
    merged = merge_adapter(settings, out_dir=tmp_path / "q", dtype="fp32")
    error = _err(_merged_logits(merged, run), expected)
    assert error < 1e-4

    unquantized = settings.model_copy(update={"load_in_4bit": False, "adapter": "lora"})
    naive = merge_adapter(unquantized, out_dir=tmp_path / "naive", dtype="fp32")
    assert _err(_merged_logits(naive, run), expected) > 100 * max(error, 1e-6)

    fp16 = merge_adapter(settings, out_dir=tmp_path / "fp16", dtype="fp16")
    assert _err(_merged_logits(fp16, run), _merged_logits(merged, run, round_to=torch.float16)) < 1e-5


def test_nf4_round_trip_is_what_load_in_4bit_computes_with(tiny_llama_dir: Path) -> None:
    import bitsandbytes.functional as bnbf
    from safetensors import safe_open
    from transformers import AutoModelForCausalLM, BitsAndBytesConfig

    dtype = torch.bfloat16
    quant = BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
                               bnb_4bit_compute_dtype=dtype, bnb_4bit_quant_storage=dtype)
    model = AutoModelForCausalLM.from_pretrained(tiny_llama_dir, quantization_config=quant, dtype=dtype,
                                                 device_map={"": "cpu"})
    weight = model.model.layers[1].mlp.down_proj.weight
    trained_against = bnbf.dequantize_4bit(weight.data, weight.quant_state).float()
    with safe_open(str(tiny_llama_dir / "model.safetensors"), framework="pt") as f:
        original = f.get_tensor("model.layers.1.mlp.down_proj.weight")
    assert torch.equal(_nf4_round_trip(original, dtype), trained_against)
    assert not torch.equal(original, trained_against)


def test_resized_embeddings_from_modules_to_save(make_adapter_run: Any, tiny_llama_dir: Path, tmp_path: Path) -> None:
    run, settings = make_adapter_run(new_tokens=("<|tool_call|>",))
    expected, _ = _peft_logits(run, tiny_llama_dir)
    assert expected.shape[-1] == 128257
    merged = merge_adapter(settings, out_dir=tmp_path / "m", dtype="fp32")
    assert json.loads((merged / "config.json").read_text())["vocab_size"] == 128257
    assert _err(_merged_logits(merged, run), expected) < 1e-4


def test_shards_index_generation_config_and_tokenizer(make_adapter_run: Any, tmp_path: Path) -> None:
    from safetensors import safe_open
    from transformers import AutoTokenizer, GenerationConfig

    from finetune.data.templates import LLAMA3_JINJA

    run, settings = make_adapter_run()
    limit = 3_000_000  # the two 128256 x 64 bf16 embeddings (16.4 MB each) exceed it: one shard each
    merged = merge_adapter(settings, out_dir=tmp_path / "m", max_shard_size=limit)
    index = json.loads((merged / "model.safetensors.index.json").read_text())
    shards = sorted(set(index["weight_map"].values()))
    assert len(shards) >= 3
    assert shards == sorted(p.name for p in merged.glob("model-*.safetensors"))
    total = 0
    for name in shards:
        with safe_open(str(merged / name), framework="pt") as f:
            keys = list(f.keys())
            assert {k for k, v in index["weight_map"].items() if v == name} == set(keys)
            sizes = [f.get_slice(k).get_shape() for k in keys]
            nbytes = sum(2 * torch.Size(s).numel() for s in sizes)
            assert nbytes <= limit or len(keys) == 1
            total += nbytes
            assert all(f.get_slice(k).get_dtype() == "BF16" for k in keys)
    assert total == index["metadata"]["total_size"]
    with safe_open(str(Path(settings.base_model) / "model.safetensors"), framework="pt") as f:
        assert set(index["weight_map"]) == set(f.keys())

    generation = GenerationConfig.from_pretrained(merged)
    assert generation.eos_token_id == [128009, 128001]  # trained <|eot_id|> first, the base's eos kept
    assert generation.pad_token_id == 128004
    config = json.loads((merged / "config.json").read_text())
    assert "quantization_config" not in config and config["pad_token_id"] == 128004
    tokenizer = AutoTokenizer.from_pretrained(merged)
    assert tokenizer.chat_template == LLAMA3_JINJA
    assert tokenizer.eos_token == "<|eot_id|>" and tokenizer.pad_token == "<|finetune_right_pad_id|>"


def test_merge_holds_a_few_tensors_at_a_time(make_adapter_run: Any, tmp_path: Path) -> None:
    # A small-vocabulary model with many layers, so the whole model is far bigger than any one tensor.
    from transformers import LlamaConfig, LlamaForCausalLM

    base = tmp_path / "base"
    config = LlamaConfig(vocab_size=512, hidden_size=32, intermediate_size=256, num_hidden_layers=12,
                         num_attention_heads=4, num_key_value_heads=2, tie_word_embeddings=False)
    torch.manual_seed(0)
    LlamaForCausalLM(config).save_pretrained(base)
    # Every linear layer carries DoRA, so each layer tensor takes the longest merge path.
    run, settings = make_adapter_run(dora=True, base_dir=base)
    monitor = MergeMonitor()
    merge_adapter(settings, out_dir=tmp_path / "m", dtype="bf16", monitor=monitor)
    from safetensors import safe_open

    with safe_open(str(base / "model.safetensors"), framework="pt") as f:
        shapes = {k: f.get_slice(k).get_shape() for k in f.keys()}
    largest = max(torch.Size(s).numel() for s in shapes.values()) * 4
    whole = sum(torch.Size(s).numel() for s in shapes.values()) * 4
    assert monitor.read == monitor.written == len(shapes)
    assert monitor.live == 0
    assert monitor.peak <= 6  # base tensor, its fp32 working copy, A, B, magnitude, the cast output
    assert monitor.peak_bytes <= 2.5 * largest
    assert monitor.peak_bytes < whole / 3


def test_missing_adapter_points_at_train(make_adapter_run: Any, tmp_path: Path) -> None:
    _, settings = make_adapter_run()
    with pytest.raises(FinetuneError, match="finetune train.*--adapter"):
        merge_adapter(settings, adapter_dir=tmp_path / "nowhere")
    (tmp_path / "empty").mkdir()
    with pytest.raises(FinetuneError, match="adapter_config.json is missing"):
        merge_adapter(settings, adapter_dir=tmp_path / "empty")


def test_missing_base_names_the_recipe_line(make_adapter_run: Any, tmp_path: Path) -> None:
    from finetune.config import load_recipe

    run, _ = make_adapter_run()
    recipe = tmp_path / "r.yml"
    text = (run / "recipe.yml").read_text().splitlines()
    text[0] = f"base_model: {tmp_path / 'no-such-model'}"
    recipe.write_text("\n".join(text) + "\n")
    settings = load_recipe(recipe).settings
    with pytest.raises(RecipeError, match=rf"{recipe}:1: .*no such directory"):
        merge_adapter(settings, adapter_dir=run)


def test_parse_size() -> None:
    assert parse_size("2GB") == 2_000_000_000
    assert parse_size("1GiB") == 1024**3
    assert parse_size("500MB") == 500_000_000
    assert parse_size(1234) == 1234
    with pytest.raises(FinetuneError):
        parse_size("lots")
