"""Model shapes for `finetune plan`: the dimensions of a Llama-style decoder, from config.json alone; and the
facts about the models finetune knows that need no weights (the Llama 3.1 special tokens, the NF4 block sizes).

No torch import (`finetune.plan.estimate` relies on it): shapes come from the model's local `config.json` (or the Hugging
Face cache), else from built-in Llama 3.1 8B / 70B shapes for the well-known hub names.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from finetune.errors import RecipeError


@dataclass(frozen=True)
class ModelShapes:
    """The dimensions of a Llama-style decoder (the same field names as its config.json)."""

    name: str
    vocab_size: int
    hidden_size: int
    intermediate_size: int
    num_hidden_layers: int
    num_attention_heads: int
    num_key_value_heads: int
    head_dim: int
    tie_word_embeddings: bool = False
    source: str = "built-in"

    def linears(self) -> dict[str, tuple[int, int]]:
        """Per-layer linear layers: name -> (in_features, out_features)."""
        h, q, kv, i = self.hidden_size, self.num_attention_heads * self.head_dim, self.num_key_value_heads * self.head_dim, self.intermediate_size
        return {"q_proj": (h, q), "k_proj": (h, kv), "v_proj": (h, kv), "o_proj": (q, h),
                "gate_proj": (h, i), "up_proj": (h, i), "down_proj": (i, h)}

    @property
    def embedding_params(self) -> int:
        return self.vocab_size * self.hidden_size

    @property
    def layer_linear_params(self) -> int:
        return sum(i * o for i, o in self.linears().values())

    @property
    def total_params(self) -> int:
        heads = 1 if self.tie_word_embeddings else 2
        norms = (2 * self.num_hidden_layers + 1) * self.hidden_size
        return heads * self.embedding_params + self.num_hidden_layers * self.layer_linear_params + norms


NF4_BLOCK = 64  # bitsandbytes' blocksize for load_in_4bit (Params4bit's default): one absmax per 64 weights
NF4_BLOCK2 = 256  # double quantization: one fp32 constant per 256 absmax blocks
LLAMA31_BASE_TOKENS = 128000  # ids below the special tokens


def _llama31_special_tokens() -> tuple[str, ...]:
    named = (
        "<|begin_of_text|>",
        "<|end_of_text|>",
        "<|reserved_special_token_0|>",
        "<|reserved_special_token_1|>",
        "<|finetune_right_pad_id|>",
        "<|reserved_special_token_2|>",
        "<|start_header_id|>",
        "<|end_header_id|>",
        "<|eom_id|>",  # end of message
        "<|eot_id|>",  # end of turn
        "<|python_tag|>",
    )
    return named + tuple(f"<|reserved_special_token_{3 + i}|>" for i in range(256 - len(named)))


# The 256 special tokens of Llama 3.1, in id order (128000..128255). Llama 3.1 names 128005 and 128011
# `<|reserved_special_token_2|>` and `_3`; newer `llama-models` releases renamed them `<|step_id|>` and `<|image|>`
# (Llama 3.2 vision). We follow the Llama 3.1 base checkpoints on the hub.
LLAMA31_SPECIAL_TOKENS = _llama31_special_tokens()


def _llama31(name: str, hidden: int, inter: int, layers: int, heads: int) -> ModelShapes:
    return ModelShapes(name, LLAMA31_BASE_TOKENS + len(LLAMA31_SPECIAL_TOKENS), hidden, inter, layers, heads, 8, hidden // heads, False, "built-in Llama 3.1 shapes")


_BUILTIN = {"8B": _llama31("Llama-3.1-8B", 4096, 14336, 32, 32), "70B": _llama31("Llama-3.1-70B", 8192, 28672, 80, 64)}
BUILTIN_NAMES = {
    f"{org}/{prefix}Llama-3.1-{size}{suffix}": size
    for org in ("meta-llama", "NousResearch", "unsloth")
    for prefix in ("", "Meta-")
    for size in ("8B", "70B")
    for suffix in ("", "-Instruct")
}


def shapes_from_config(config: dict[str, Any], name: str, source: str) -> ModelShapes:
    """ModelShapes from a config.json dict (a `text_config` inside, as in multimodal configs, wins)."""
    c = config.get("text_config") or config
    try:
        heads = int(c["num_attention_heads"])
        hidden = int(c["hidden_size"])
        return ModelShapes(
            name=name, vocab_size=int(c["vocab_size"]), hidden_size=hidden, intermediate_size=int(c["intermediate_size"]),
            num_hidden_layers=int(c["num_hidden_layers"]), num_attention_heads=heads,
            num_key_value_heads=int(c.get("num_key_value_heads") or heads),
            head_dim=int(c.get("head_dim") or hidden // heads),
            tie_word_embeddings=bool(config.get("tie_word_embeddings", c.get("tie_word_embeddings", False))), source=source)
    except (KeyError, TypeError, ValueError) as exc:
        raise RecipeError(f"{source}: not a Llama-style decoder config (missing or bad {exc}); finetune plan "
                          "needs vocab_size, hidden_size, intermediate_size, num_hidden_layers, num_attention_heads") from None


def model_shapes(base_model: str, where: str = "base_model") -> ModelShapes:
    """Shapes from `base_model`: a local directory's config.json, the HF cache, or built-in Llama 3.1 names."""
    path = Path(base_model).expanduser()
    if (path / "config.json").is_file():
        config = path / "config.json"
    else:
        config = None
        if not path.exists() and base_model.count("/") == 1:
            try:
                from huggingface_hub import try_to_load_from_cache

                cached = try_to_load_from_cache(base_model, "config.json")
                config = Path(cached) if isinstance(cached, str) else None
            except ImportError:  # pragma: no cover - huggingface_hub ships with transformers
                pass
    if config is not None:
        return shapes_from_config(json.loads(config.read_text(encoding="utf-8")), base_model, str(config))
    if base_model in BUILTIN_NAMES:
        return replace(_BUILTIN[BUILTIN_NAMES[base_model]], name=base_model)
    raise RecipeError(f"{where}: no config.json for `{base_model}` (not a local model directory, not in the Hugging Face "
                      "cache, not a built-in Llama 3.1 8B/70B name); point base_model at a local model directory, "
                      "or download its config.json first")
