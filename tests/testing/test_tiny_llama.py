"""The tiny offline Llama 3.1-style model: loads, real tokenizer, deterministic weights."""

from __future__ import annotations

import hashlib
import importlib.util
import json
from pathlib import Path
from typing import Any

import pytest

from finetune.testing.tiny_llama import MARKER_FILE, build_tiny_llama, meta_tokenizer_model_path

VARIED_TEXTS = [
    "Hello world",
    "  leading spaces\n\n\n  trailing   ",
    "123456789 1,234.56 3.14159 2024-01-01",
    "def f(x):\n\treturn x**2  # comment\n",
    "héllo wörld café naïve Ünïcödé",
    "日本語のテキスト 中文 한국어",
    "emoji 🎉🚀👍🏽 family 👨‍👩‍👧",
    "I'm you're they'LL WE'VE it's",
    "\r\n\r\nwindows\r\n",
    "   ",
    "a\u00a0b\u2003c",
    "<html><body>!!!???...</body></html>",
    "x" * 500 + " " + "\t" * 40 + "y",
]


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_loads_with_auto_classes(tiny_llama_dir: Path) -> None:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(tiny_llama_dir)
    tokenizer = AutoTokenizer.from_pretrained(tiny_llama_dir)
    config = model.config
    assert model.__class__.__name__ == "LlamaForCausalLM"
    assert (config.vocab_size, config.hidden_size, config.num_hidden_layers) == (128256, 64, 2)
    assert (config.num_attention_heads, config.num_key_value_heads, config.intermediate_size) == (4, 2, 128)
    assert config.max_position_embeddings == 8192 and not config.tie_word_embeddings
    assert (config.bos_token_id, config.eos_token_id) == (128000, 128001)
    assert json.loads((tiny_llama_dir / "config.json").read_text())["rope_parameters"]["rope_theta"] == 500000.0
    batch = tokenizer(["a tiny forward pass"], return_tensors="pt")
    with torch.no_grad():
        logits = model(**batch).logits
    assert logits.shape == (1, batch["input_ids"].shape[1], 128256)
    assert torch.isfinite(logits).all()


def test_tokenizer_is_llama31_base_style(llama3_tokenizer: Any) -> None:
    tok = llama3_tokenizer
    assert tok("hi").input_ids[0] == 128000
    assert tok("hi", add_special_tokens=False).input_ids[0] != 128000
    assert (tok.bos_token, tok.eos_token, tok.bos_token_id, tok.eos_token_id) == (
        "<|begin_of_text|>",
        "<|end_of_text|>",
        128000,
        128001,
    )
    assert tok.pad_token is None and tok.chat_template is None
    assert len(tok) == 128256
    names = tok.convert_ids_to_tokens([128002, 128003, 128004, 128005, 128006, 128007, 128008, 128009, 128010, 128011, 128255])
    assert names == [
        "<|reserved_special_token_0|>",
        "<|reserved_special_token_1|>",
        "<|finetune_right_pad_id|>",
        "<|reserved_special_token_2|>",
        "<|start_header_id|>",
        "<|end_header_id|>",
        "<|eom_id|>",
        "<|eot_id|>",
        "<|python_tag|>",
        "<|reserved_special_token_3|>",
        "<|reserved_special_token_247|>",
    ]
    assert tok("<|eot_id|>", add_special_tokens=False).input_ids == [128009]


@pytest.mark.parametrize("text", VARIED_TEXTS)
def test_token_exact_against_meta_tiktoken(llama3_tokenizer: Any, text: str) -> None:
    from llama_models.llama3.tokenizer import Tokenizer

    meta = Tokenizer(meta_tokenizer_model_path())
    ids = llama3_tokenizer(text, add_special_tokens=False).input_ids
    assert ids == meta.encode(text, bos=False, eos=False)
    assert llama3_tokenizer.decode(ids) == text


def test_deterministic_and_skips_complete_builds(tiny_llama_dir: Path, tmp_path: Path) -> None:
    weights = tiny_llama_dir / "model.safetensors"
    again = build_tiny_llama(tmp_path / "again")
    assert sha256(again / "model.safetensors") == sha256(weights)
    assert json.loads((again / MARKER_FILE).read_text()) == json.loads((tiny_llama_dir / MARKER_FILE).read_text())
    mtime = weights.stat().st_mtime_ns
    assert build_tiny_llama(tiny_llama_dir) == tiny_llama_dir
    assert weights.stat().st_mtime_ns == mtime


def test_changed_parameters_rebuild(tmp_path: Path) -> None:
    out = build_tiny_llama(tmp_path / "m", hidden_size=32, layers=1, seed=1)
    first = json.loads((out / "config.json").read_text())
    assert (first["hidden_size"], first["num_hidden_layers"]) == (32, 1)
    build_tiny_llama(out, hidden_size=32, layers=2, seed=1)
    assert json.loads((out / "config.json").read_text())["num_hidden_layers"] == 2
    assert json.loads((out / MARKER_FILE).read_text())["layers"] == 2


def test_script_wraps_library(tiny_llama_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    script = Path(__file__).resolve().parents[2] / "scripts" / "make_tiny_llama.py"
    spec = importlib.util.spec_from_file_location("make_tiny_llama", script)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    assert module.build_tiny_llama is build_tiny_llama
    assert module.main([str(tiny_llama_dir)]) == 0
    assert capsys.readouterr().out.strip() == str(tiny_llama_dir)
