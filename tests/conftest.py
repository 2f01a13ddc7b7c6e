"""Shared pytest fixtures (session-scoped, offline, CPU)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Tests marked `gpu` skip, with the reason, where no CUDA GPU is present (CI, laptops)."""
    gpu_items = [item for item in items if item.get_closest_marker("gpu")]
    if not gpu_items:
        return
    import torch

    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU (scripts/gpu_check.sh runs these on a GPU machine)")
    for item in gpu_items:
        item.add_marker(skip)


@pytest.fixture(scope="session")
def tiny_llama_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny random Llama 3.1-style model + real Llama 3 tokenizer, built once per session."""
    from finetune.testing.tiny_llama import build_tiny_llama

    return build_tiny_llama(tmp_path_factory.mktemp("tiny-llama"))


@pytest.fixture(scope="session")
def llama3_tokenizer(tiny_llama_dir: Path) -> Any:
    """The Llama 3 fast tokenizer of the tiny model (base style: BOS added, no pad, no chat template)."""
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(tiny_llama_dir)


@pytest.fixture(scope="session")
def meta_chat_format() -> Any:
    """Meta's reference Llama 3 dialog encoder (`llama_models.llama3.chat_format.ChatFormat`)."""
    from llama_models.llama3.chat_format import ChatFormat
    from llama_models.llama3.tokenizer import Tokenizer

    from finetune.testing.tiny_llama import meta_tokenizer_model_path

    return ChatFormat(Tokenizer(meta_tokenizer_model_path()))


# --- finished-run directories (merge and chat tests) -----------------------------------------------


@pytest.fixture(scope="session")
def make_adapter_run(tiny_llama_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Any:
    """Factory: a finished run's output_dir (peft adapter + tokenizer with template + recipe.yml) and its Settings.

    `make_adapter_run(dora=..., rslora=..., qlora=..., new_tokens=[...], base_dir=...)` -> (output_dir, settings).
    lora_B is random and the DoRA magnitude and modules_to_save copies perturbed, so the adapter is never a no-op.
    A QLoRA run is built on the bitsandbytes NF4 base in float32 (recipe `bf16: false`), as training would.
    """
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer, BitsAndBytesConfig

    from finetune.config import load_recipe
    from finetune.data.templates import LLAMA3_JINJA

    def build(*, dora: bool = False, rslora: bool = False, qlora: bool = False, new_tokens: tuple = (),
              base_dir: Path | None = None, seed: int = 0, eot_bias: float = 0.0) -> tuple[Path, Any]:
        base_dir = base_dir or tiny_llama_dir
        out = tmp_path_factory.mktemp("run")
        tokenizer = AutoTokenizer.from_pretrained(tiny_llama_dir)
        tokenizer.add_special_tokens({"eos_token": "<|eot_id|>", "pad_token": "<|finetune_right_pad_id|>"})
        if new_tokens:
            tokenizer.add_special_tokens({"additional_special_tokens": list(new_tokens)})
        tokenizer.chat_template = LLAMA3_JINJA
        kwargs: dict[str, Any] = {"dtype": torch.float32}
        if qlora:
            kwargs["quantization_config"] = BitsAndBytesConfig(
                load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
                bnb_4bit_compute_dtype=torch.float32, bnb_4bit_quant_storage=torch.float32)
            kwargs["device_map"] = {"": "cpu"}
        model = AutoModelForCausalLM.from_pretrained(base_dir, **kwargs)
        if new_tokens:
            model.resize_token_embeddings(len(tokenizer))
        saved = ["embed_tokens", "lm_head"] if new_tokens else None
        config = LoraConfig(r=8, lora_alpha=16, target_modules="all-linear", use_dora=dora, use_rslora=rslora,
                            modules_to_save=saved, task_type="CAUSAL_LM")
        peft_model = get_peft_model(model, config)
        generator = torch.Generator().manual_seed(seed)
        with torch.no_grad():
            for name, param in peft_model.named_parameters():
                noise = torch.randn(param.shape, generator=generator)
                if "lora_B" in name:
                    param.copy_(noise * 0.2)
                elif "lora_magnitude_vector" in name:
                    param.mul_(1 + 0.3 * noise.abs())
                elif "modules_to_save" in name:
                    param.add_(noise * 0.05)
                    if eot_bias and "lm_head" in name:
                        param[tokenizer.convert_tokens_to_ids("<|eot_id|>")] *= eot_bias
        peft_model.save_pretrained(out)
        tokenizer.save_pretrained(out)
        lines = [
            f"base_model: {base_dir}",
            f"adapter: {'qlora' if qlora else 'lora'}",
            f"load_in_4bit: {'true' if qlora else 'false'}",
            "bf16: false",
            "lora_r: 8",
            "lora_alpha: 16",
            "lora_target_linear: true",
            f"peft_use_dora: {'true' if dora else 'false'}",
            f"peft_use_rslora: {'true' if rslora else 'false'}",
            "chat_template: llama3",
            "special_tokens:",
            "  eos_token: <|eot_id|>",
            "  pad_token: <|finetune_right_pad_id|>",
        ]
        if new_tokens:
            lines += ["  additional_special_tokens:"] + [f"    - '{t}'" for t in new_tokens]
            lines += ["lora_modules_to_save: [embed_tokens, lm_head]"]
        lines += ["datasets:", "  - path: data.jsonl", f"output_dir: {out}"]
        (out / "recipe.yml").write_text("\n".join(lines) + "\n", encoding="utf-8")
        return out, load_recipe(out / "recipe.yml").settings

    return build


# --- data preparation (tests/data/test_build.py, test_cache.py, test_formats.py, ...) ----------------------

_WORDS = "alpha beta gamma delta model token batch data loss train python answer question river stone".split()


def chat_conversation(index: int, *, seed: int = 0) -> dict[str, Any]:
    """A small deterministic multi-turn conversation (sometimes with a system prompt)."""
    import random

    rng = random.Random(seed * 100_003 + index)

    def text(n: int) -> str:
        return " ".join(rng.choice(_WORDS) for _ in range(n)) + f" #{index}"

    messages = [{"role": "system", "content": text(5)}] if index % 3 == 0 else []
    for _ in range(1 + index % 3):
        messages.append({"role": "user", "content": text(rng.randint(3, 12))})
        messages.append({"role": "assistant", "content": text(rng.randint(4, 30))})
    return {"messages": messages}


@pytest.fixture
def make_conversation():
    """`chat_conversation(index, seed=0)` for tests that build their own rows."""
    return chat_conversation


@pytest.fixture
def write_chats(tmp_path: Path):
    """Factory: write conversations (default `chat_conversation(0..n-1)`) as JSONL; returns the path."""
    import json

    def write(n: int = 40, name: str = "chats.jsonl", rows: list | None = None, seed: int = 0) -> Path:
        rows = rows if rows is not None else [chat_conversation(i, seed=seed) for i in range(n)]
        path = tmp_path / name
        path.write_text("".join(json.dumps(row) + "\n" for row in rows), encoding="utf-8")
        return path

    return write


def near_copy(row: dict[str, Any], word: str = "indeed") -> dict[str, Any]:
    """The conversation with `word` appended to its last turn and its first turn upper-cased:
    not an exact duplicate, but word-shingle Jaccard >= 0.9 (case and punctuation are ignored)."""
    messages = [dict(message) for message in row["messages"]]
    messages[0]["content"] = messages[0]["content"].upper()
    messages[-1]["content"] += f" {word}"
    return {"messages": messages}


@pytest.fixture
def near_duplicate_rows() -> tuple[list[dict[str, Any]], dict[int, int]]:
    """12 distinct conversations, then near copies (not exact ones) of rows 4, 7 and 4 again, ending in
    "indeed", "indeed" and "too": (rows, {copy row: source row})."""
    rows = [chat_conversation(i) for i in range(1, 13)]
    copies = [near_copy(rows[4]), near_copy(rows[7]), near_copy(rows[4], "too")]
    return rows + copies, {12: 4, 13: 7, 14: 4}


@pytest.fixture
def data_settings(tmp_path: Path, tiny_llama_dir: Path):
    """Factory: `Settings` for the data pipeline, loaded from tmp_path/recipe.yml (errors name its lines).

    `datasets` is a list of dataset entries; other keyword arguments are top-level keys
    (defaults: llama3 template, sequence_len 512, cache under tmp_path/prepared).
    """
    import yaml

    from finetune.config import load_recipe

    def make(datasets: list[dict], **top: Any) -> Any:
        recipe = {
            "base_model": str(tiny_llama_dir),
            "chat_template": "llama3",
            "dataset_prepared_path": str(tmp_path / "prepared"),
            "sequence_len": 512,
            **top,
            "datasets": [{k: str(v) if isinstance(v, Path) else v for k, v in d.items()} for d in datasets],
        }
        path = tmp_path / "recipe.yml"
        path.write_text(yaml.safe_dump(recipe, sort_keys=False), encoding="utf-8")
        return load_recipe(path).settings

    return make


# --- training runs through `finetune train` (test_distributed.py, test_tracking.py, test_resilience.py) ---


@pytest.fixture(scope="session")
def torch_extensions_dir() -> Path:
    """Where DeepSpeed caches its JIT-compiled C++ ops (about a minute to build once; reused afterwards).

    FINETUNE_TEST_TORCH_EXTENSIONS overrides; default ~/.cache/finetune/torch_extensions (kept across runs).
    """
    import os

    path = Path(os.environ.get("FINETUNE_TEST_TORCH_EXTENSIONS", Path.home() / ".cache/finetune/torch_extensions"))
    path.mkdir(parents=True, exist_ok=True)
    return path


@pytest.fixture(scope="session")
def train_recipe(tiny_llama_dir: Path, tmp_path_factory: pytest.TempPathFactory):
    """Factory: a small QLoRA + DoRA recipe file for the tiny Llama on 64 short chats (fp32, unpacked).

    `train_recipe(name, **keys)` -> path of `<tmp>/<name>/recipe.yml`; keys override the defaults, output_dir
    is `<tmp>/<name>/out`. The data file and its prepared cache are shared by all recipes of the session.
    """
    import json

    import yaml

    shared = tmp_path_factory.mktemp("train-data")
    data = shared / "chats.jsonl"
    data.write_text("".join(json.dumps(chat_conversation(i)) + "\n" for i in range(64)), encoding="utf-8")

    def make(name: str, **keys: Any) -> Path:
        directory = tmp_path_factory.mktemp(name)
        recipe = {
            "base_model": str(tiny_llama_dir),
            "load_in_4bit": True,
            "adapter": "qlora",
            "peft_use_dora": True,
            "lora_r": 8,
            "lora_alpha": 16,
            "lora_dropout": 0.0,
            "lora_target_linear": True,
            "chat_template": "llama3",
            "datasets": [{"path": str(data), "type": "chat_template"}],
            "dataset_prepared_path": str(shared / "prepared"),
            "output_dir": str(directory / "out"),
            "sequence_len": 128,
            "micro_batch_size": 1,
            "gradient_accumulation_steps": 4,
            "max_steps": 4,
            "optimizer": "adamw_torch",
            "lr_scheduler": "constant",
            "learning_rate": 0.001,
            "bf16": False,
            "logging_steps": 1,
            "special_tokens": {"pad_token": "<|finetune_right_pad_id|>", "eos_token": "<|eot_id|>"},
            **keys,
        }
        path = directory / "recipe.yml"
        path.write_text(yaml.safe_dump(recipe, sort_keys=False), encoding="utf-8")
        return path

    return make


@pytest.fixture(scope="session")
def micro_llama_dir(tmp_path_factory: pytest.TempPathFactory, tiny_llama_dir: Path) -> Path:
    """An even smaller random Llama (hidden 32, one layer) with the Llama 3 tokenizer, for trainer tests."""
    import shutil

    import torch
    from transformers import LlamaForCausalLM

    from finetune.testing.tiny_llama import tiny_llama_config

    out = tmp_path_factory.mktemp("micro-llama")
    config = tiny_llama_config(hidden_size=32, layers=1)
    state = torch.random.get_rng_state()
    torch.manual_seed(1)
    try:
        LlamaForCausalLM(config).save_pretrained(out)
    finally:
        torch.random.set_rng_state(state)
    for name in ("tokenizer.json", "tokenizer_config.json"):
        shutil.copy(tiny_llama_dir / name, out / name)
    return out

SEED_RECIPE = """
base_model: NousResearch/Meta-Llama-3.1-8B
load_in_4bit: true
strict: false
chat_template: llama3
datasets:
  - path: /path/to/training_data.json
    type: chat_template
    message_field_role: role
    message_field_content: content
dataset_prepared_path: last_run_prepared
val_set_size: 0.005
output_dir: ./outputs/lora-out
sequence_len: 4096
sample_packing: true
eval_sample_packing: false
pad_to_sequence_len: true
adapter: qlora
lora_r: 64
lora_alpha: 32
lora_dropout: 0.05
lora_target_linear: true
lora_modules_to_save:
  - embed_tokens
  - lm_head
peft_use_dora: true
gradient_accumulation_steps: 2
micro_batch_size: 1
num_epochs: 4
optimizer: adamw_bnb_8bit
lr_scheduler: cosine
learning_rate: 0.0002
train_on_inputs: false
bf16: true
tf32: true
gradient_checkpointing: true
logging_steps: 1
flash_attention: true
warmup_ratio: 0.1
evals_per_epoch: 1
saves_per_epoch: 1
weight_decay: 0.0
deepspeed: /path/to/deepspeed_configs/zero2.json
special_tokens:
  pad_token: "<|finetune_right_pad_id|>"
  eos_token: "<|eot_id|>"
"""


def pair_rows(n: int, offset: int = 0) -> list[dict]:
    """Pairs with a clear preference: the chosen reply always says "yes", the rejected one "no"."""
    return [{"messages": [{"role": "user", "content": f"Is {i} a number?"}],
             "chosen": {"role": "assistant", "content": f"yes, {i} is"},
             "rejected": {"role": "assistant", "content": f"no, {i} is not"}} for i in range(offset, offset + n)]
