"""Build a tiny, offline, deterministic Llama 3.1-style model directory.

The tokenizer is Meta's real Llama 3 BPE (shipped inside the ``llama-models``
package as a tiktoken file), converted to a Hugging Face fast tokenizer that
behaves like the hub ``Meta-Llama-3.1-8B`` base tokenizer: same pre-tokenizer
regex, same 256 special-token names, BOS added automatically, no pad token and
no chat template. The model is a randomly initialised ``LlamaForCausalLM`` with
the real vocabulary size but a handful of tiny layers, so that every code path
(tokenization, masking, LoRA, saving) runs on a laptop CPU in seconds.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from finetune.errors import MissingDependencyError
from finetune.model.shapes import LLAMA31_BASE_TOKENS, LLAMA31_SPECIAL_TOKENS
from finetune.runs.atomic import write_text

MARKER_FILE = "finetune_tiny.json"
BUILD_VERSION = 1

NUM_BASE_TOKENS = LLAMA31_BASE_TOKENS
NUM_SPECIAL_TOKENS = len(LLAMA31_SPECIAL_TOKENS)
BOS_TOKEN, EOS_TOKEN = LLAMA31_SPECIAL_TOKENS[:2]
BOS_ID, EOS_ID = NUM_BASE_TOKENS, NUM_BASE_TOKENS + 1

# The exact Llama 3 pre-tokenizer regex (llama_models/llama3/tokenizer.py).
LLAMA3_PATTERN = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}"
    r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)

_MODEL_FILES = ("config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json")


def meta_tokenizer_model_path() -> Path:
    """Path of Meta's Llama 3 ``tokenizer.model`` inside the installed ``llama-models``."""
    try:
        import llama_models
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise MissingDependencyError(
            "the tiny Llama model needs Meta's tokenizer from `llama-models`: pip install 'finetune[tiny]'"
        ) from exc
    path = Path(llama_models.__file__).parent / "llama3" / "tokenizer.model"
    if not path.is_file():
        raise MissingDependencyError(f"{path} is missing; reinstall `llama-models`")
    return path


def _meta_bpe_converter_class() -> type:
    """``TikTokenConverter`` reading the BPE file with Meta's own loader.

    tiktoken's loader would also copy the file into a shared temp cache keyed by path only.
    """
    from llama_models.tokenizer_utils import load_bpe_file
    from transformers.convert_slow_tokenizer import TikTokenConverter

    class MetaBpeConverter(TikTokenConverter):
        @staticmethod
        def load_tiktoken_bpe(tiktoken_url: str) -> dict[bytes, int]:
            return load_bpe_file(Path(tiktoken_url))

    return MetaBpeConverter


def build_llama3_fast_tokenizer(model_path: Path | None = None) -> Any:
    """Convert Meta's tiktoken Llama 3 BPE into a ``PreTrainedTokenizerFast`` (base-model style)."""
    from tokenizers import processors
    from transformers import PreTrainedTokenizerFast

    path = model_path or meta_tokenizer_model_path()
    specials = list(LLAMA31_SPECIAL_TOKENS)
    backend = _meta_bpe_converter_class()(
        vocab_file=str(path), pattern=LLAMA3_PATTERN, extra_special_tokens=specials
    ).converted()
    if backend.get_vocab_size() != NUM_BASE_TOKENS + NUM_SPECIAL_TOKENS:
        raise ValueError(f"unexpected Llama 3 vocabulary size {backend.get_vocab_size()} from {path}")
    # Same post-processor as the hub Llama 3.1 tokenizer.json: byte-level offsets, then BOS.
    backend.post_processor = processors.Sequence(
        [
            processors.ByteLevel(add_prefix_space=True, trim_offsets=False, use_regex=True),
            processors.TemplateProcessing(
                single=f"{BOS_TOKEN} $A",
                pair=f"{BOS_TOKEN} $A {BOS_TOKEN}:1 $B:1",
                special_tokens=[(BOS_TOKEN, BOS_ID)],
            ),
        ]
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=backend,
        bos_token=BOS_TOKEN,
        eos_token=EOS_TOKEN,
        model_max_length=131072,
        clean_up_tokenization_spaces=False,
        model_input_names=["input_ids", "attention_mask"],
    )


def tiny_llama_config(*, hidden_size: int = 64, layers: int = 2) -> Any:
    """A ``LlamaConfig`` with the real Llama 3 vocabulary and tiny dimensions."""
    from transformers import LlamaConfig

    return LlamaConfig(
        vocab_size=NUM_BASE_TOKENS + NUM_SPECIAL_TOKENS,
        hidden_size=hidden_size,
        intermediate_size=2 * hidden_size,
        num_hidden_layers=layers,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=8192,
        rope_theta=500000.0,
        rms_norm_eps=1e-5,
        tie_word_embeddings=False,
        bos_token_id=BOS_ID,
        eos_token_id=EOS_ID,
    )


def _build_params(hidden_size: int, layers: int, seed: int) -> dict[str, int]:
    return {"version": BUILD_VERSION, "hidden_size": hidden_size, "layers": layers, "seed": seed}


def is_complete_build(out_dir: Path, params: dict[str, int]) -> bool:
    """True when ``out_dir`` holds every model file and a marker with exactly ``params``."""
    marker = out_dir / MARKER_FILE
    if not marker.is_file() or not all((out_dir / name).is_file() for name in _MODEL_FILES):
        return False
    try:
        return json.loads(marker.read_text(encoding="utf-8")) == params
    except (OSError, ValueError):
        return False


def build_tiny_llama(out_dir: Path, *, hidden_size: int = 64, layers: int = 2, seed: int = 0) -> Path:
    """Write a tiny random-weight Llama 3.1-style model and its tokenizer into ``out_dir``.

    Deterministic: the same arguments give byte-identical ``model.safetensors``.
    Skips all work when ``out_dir`` already holds a complete build with the same
    parameters (recorded in ``finetune_tiny.json``, written last). Returns ``out_dir``.
    """
    import torch
    from transformers import LlamaForCausalLM

    if hidden_size % 4 != 0 or hidden_size <= 0 or layers <= 0:
        raise ValueError(f"hidden_size must be a positive multiple of 4 and layers positive, got {hidden_size}, {layers}")
    out_dir = Path(out_dir)
    params = _build_params(hidden_size, layers, seed)
    if is_complete_build(out_dir, params):
        return out_dir
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / MARKER_FILE).unlink(missing_ok=True)

    tokenizer = build_llama3_fast_tokenizer()
    config = tiny_llama_config(hidden_size=hidden_size, layers=layers)
    generator_state = torch.random.get_rng_state()
    try:
        torch.manual_seed(seed)
        model = LlamaForCausalLM(config)
    finally:
        torch.random.set_rng_state(generator_state)
    model.generation_config.pad_token_id = None
    model.save_pretrained(out_dir, safe_serialization=True)
    tokenizer.save_pretrained(out_dir)

    write_text(out_dir / MARKER_FILE, json.dumps(params, indent=2, sort_keys=True) + "\n")
    return out_dir
