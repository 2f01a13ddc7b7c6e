"""A Llama checkpoint folder (safetensors + tokenizer) written as one GGUF file, tensor by tensor.

Facts from llama.cpp (its gguf-py package and `convert_hf_to_gguf.py`'s LlamaModel, read, not copied):
- tensor names `token_embd`, `output_norm`, `output`, `blk.N.attn_{q,k,v,output}`, `blk.N.ffn_{gate,up,down}`,
  `blk.N.attn_norm`, `blk.N.ffn_norm`; `rotary_emb.inv_freq` is dropped (llama.cpp recomputes it);
- one-dimensional tensors and norms stay float32; a row that does not fill whole quant blocks falls back to F16;
- Q and K rows go from Hugging Face's half-split RoPE layout to the interleaved one llama.cpp rotates: each head's
  rows viewed as (2, head_dim/2) and transposed (K with the key/value head count);
- Llama 3.1 scaling (`rope_type: llama3`) is a float32 `rope_freqs` tensor of per-frequency divisors: 1 above the
  high-frequency wavelength, `factor` below the low one, smoothly interpolated between;
- the tokenizer is byte-level BPE: `tokenizer.ggml.model = gpt2`, `pre = llama-bpe` (recognised by the hash of the
  ids of llama.cpp's check text), tokens in id order, types (control for special or `<|...|>` added tokens,
  user-defined for other added tokens, unused for padding ids), merges.

Streaming: every tensor's name, shape and type go into the header first, then each tensor is read from the
safetensors files a block of rows at a time, converted into a preallocated output buffer, written and dropped.
Each tensor is read through its own safetensors mapping, closed after it, so the input pages it touched leave
the process's memory with it. Peak memory is about one output tensor (the embeddings: 1 GiB in f16 for
Llama 3 8B) plus one block of float32 rows, whatever the model size.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass
from hashlib import sha256
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Optional

from finetune.errors import FinetuneError
from finetune.export.safetensors_stream import weight_files

if TYPE_CHECKING:
    import numpy as np
    import torch
    from gguf import GGMLQuantizationType, GGUFWriter
    from transformers import PreTrainedTokenizerBase

SUPPORTED_ARCHITECTURES = ("LlamaForCausalLM",)
LAYER_NAMES = {
    "self_attn.q_proj.weight": "attn_q.weight", "self_attn.k_proj.weight": "attn_k.weight",
    "self_attn.v_proj.weight": "attn_v.weight", "self_attn.o_proj.weight": "attn_output.weight",
    "mlp.gate_proj.weight": "ffn_gate.weight", "mlp.up_proj.weight": "ffn_up.weight",
    "mlp.down_proj.weight": "ffn_down.weight", "input_layernorm.weight": "attn_norm.weight",
    "post_attention_layernorm.weight": "ffn_norm.weight",
}
TOP_NAMES = {"model.embed_tokens.weight": "token_embd.weight", "model.norm.weight": "output_norm.weight",
             "lm_head.weight": "output.weight"}
# Types the gguf package writes itself: quant name -> (GGMLQuantizationType, LlamaFileType) names.
PYTHON_TYPES = {"f32": ("F32", "ALL_F32"), "f16": ("F16", "MOSTLY_F16"), "bf16": ("BF16", "MOSTLY_BF16"),
                "q8_0": ("Q8_0", "MOSTLY_Q8_0"), "q4_0": ("Q4_0", "MOSTLY_Q4_0")}
# llama.cpp's pre-tokenizer check text and the sha256 of str(ids) that Meta-Llama-3-8B's tokenizer gives for it
# (`get_vocab_base_pre` in convert_hf_to_gguf.py): the same hash means the same pre-tokenizer as `llama-bpe`.
CHECK_TEXT = (
    "\n \n\n \n\n\n \t \t\t \t\n  \n   \n    \n     \n🚀 (normal) 😶\u200d🌫️ (multiple emojis concatenated) ✅ 🦙🦙 "
    "3 33 333 3333 33333 333333 3333333 33333333 3.3 3..3 3...3 កាន់តែពិសេសអាច😁 ?我想在apple工作1314151天～ "
    "------======= нещо на Български ''''''```````\"\"\"\"......!!!!!!?????? I've been 'told he's there, 'RE you sure? "
    "'M not sure I'll make it, 'D you like some tea? We'Ve a'lL"
)
LLAMA_BPE_HASH = "0ef9807a4087ebef797fc749390439009c3b9eda9ad1a097abbe738f486c01e5"
ROW_BLOCK_BYTES = 64 << 20  # float32 rows converted at once


class ExportError(FinetuneError):
    """Bad input to `finetune export` (no run, unknown quant, an architecture llama.cpp cannot take, full disk)."""

    exit_code = 2


@dataclass(frozen=True)
class Vocab:
    """What llama.cpp needs to tokenize exactly as training did."""

    tokens: list[str]
    types: list[int]
    merges: list[str]
    bos: Optional[int]
    eos: int  # the trained end of turn: llama-cpp-python's chat stop token
    eot: int  # the template's end-of-turn marker
    pad: Optional[int]
    add_bos: bool
    chat_template: Optional[str]


# --- the model's shape --------------------------------------------------------------------------------


def rope_parameters(config: dict) -> dict:
    """rope_theta plus the scaling keys: transformers 5's `rope_parameters`, or 4.x's `rope_theta`/`rope_scaling`."""
    params = config.get("rope_parameters")
    if params is None:
        params = {**(config.get("rope_scaling") or {}), "rope_theta": config.get("rope_theta", 10000.0)}
    return {**params, "rope_type": params.get("rope_type", params.get("type", "default"))}


def check_architecture(config: dict, where: str) -> None:
    architectures = config.get("architectures") or []
    supported = bool(architectures) and set(architectures) <= set(SUPPORTED_ARCHITECTURES)
    if config.get("model_type") != "llama" or not supported:
        raise ExportError(f"{where}: architecture {architectures or config.get('model_type')} cannot be exported "
                          f"to GGUF by finetune (supported: {', '.join(SUPPORTED_ARCHITECTURES)})")
    rope_type = rope_parameters(config)["rope_type"]
    if rope_type not in ("default", "llama3"):
        raise ExportError(f"{where}: rope type {rope_type!r} is not supported by the GGUF export (default, llama3)")
    if config.get("attention_bias") or config.get("mlp_bias"):
        raise ExportError(f"{where}: Llama checkpoints with attention or MLP biases are not supported")


def head_dim(config: dict) -> int:
    return config.get("head_dim") or config["hidden_size"] // config["num_attention_heads"]


def llama3_rope_factors(config: dict) -> Optional[list[float]]:
    """The `rope_freqs` divisors of Llama 3.1 rope scaling (transformers' `_compute_llama3_parameters`)."""
    params = rope_parameters(config)
    if params["rope_type"] != "llama3":
        return None
    dim, base = head_dim(config), float(params["rope_theta"])
    factor = float(params.get("factor", 8.0))
    low, high = float(params.get("low_freq_factor", 1.0)), float(params.get("high_freq_factor", 4.0))
    old_context = float(params.get("original_max_position_embeddings", 8192))
    factors = []
    for i in range(0, dim, 2):
        wavelength = 2 * math.pi * base ** (i / dim)
        if wavelength < old_context / high:
            factors.append(1.0)
        elif wavelength > old_context / low:
            factors.append(factor)
        else:
            smooth = (old_context / wavelength - low) / (high - low)
            factors.append(1.0 / ((1 - smooth) / factor + smooth))
    return factors


def gguf_name(key: str) -> Optional[str]:
    """The GGUF tensor name of a Hugging Face Llama key; None for keys llama.cpp recomputes (rotary inv_freq)."""
    if key in TOP_NAMES:
        return TOP_NAMES[key]
    match = re.fullmatch(r"model\.layers\.(\d+)\.(.+)", key)
    if match and match.group(2) in LAYER_NAMES:
        return f"blk.{match.group(1)}.{LAYER_NAMES[match.group(2)]}"
    if key.endswith("rotary_emb.inv_freq"):
        return None
    raise ExportError(f"tensor `{key}` has no llama.cpp equivalent: only plain Llama checkpoints can be exported")


def permute_rows(weight: torch.Tensor, heads: int) -> torch.Tensor:
    """Q/K rows (numpy or torch) from Hugging Face's half-split RoPE layout to llama.cpp's interleaved one."""
    rows = weight.shape[0]
    if rows % (2 * heads):
        raise ExportError(f"cannot permute a {tuple(weight.shape)} attention weight for {heads} heads")
    return weight.reshape(heads, 2, rows // heads // 2, *weight.shape[1:]).swapaxes(1, 2).reshape(weight.shape)


# --- the tokenizer --------------------------------------------------------------------------------------


def read_vocab(tokenizer: PreTrainedTokenizerBase, model_dir: Path, vocab_size: int, eos: int, eot: int) -> Vocab:
    """The tokenizer as llama.cpp's BPE vocabulary; ExportError unless it pre-tokenizes like Llama 3."""
    from gguf import TokenType

    path = model_dir / "tokenizer.json"
    data = json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {"model": {"type": "none"}}
    if data["model"]["type"] != "BPE":
        raise ExportError(f"{path}: a {data['model']['type']} tokenizer; only byte-level BPE (Llama 3) tokenizers "
                          "can be exported")
    digest = sha256(str(tokenizer.encode(CHECK_TEXT)).encode()).hexdigest()
    if digest != LLAMA_BPE_HASH:
        raise ExportError(f"{path}: the tokenizer does not pre-tokenize like Llama 3 (llama.cpp's check hash "
                          f"{digest[:12]}..., expected {LLAMA_BPE_HASH[:12]}...); only Llama 3 tokenizers are exported")
    by_id = {i: token for token, i in tokenizer.get_vocab().items()}
    if max(by_id) >= vocab_size:
        raise ExportError(f"{model_dir}: the tokenizer has id {max(by_id)} but the embeddings only {vocab_size} rows")
    added = tokenizer.added_tokens_decoder
    tokens, types = [], []
    for i in range(vocab_size):
        token = by_id.get(i)
        if token is None:
            tokens.append(f"[PAD{i}]")
            types.append(TokenType.UNUSED)
            continue
        if i in added:
            if not added[i].normalized:  # llama.cpp takes added tokens as pre-normalized
                token = tokenizer.decode(tokenizer.encode(token, add_special_tokens=False))
            special = added[i].special or (token.startswith("<|") and token.endswith("|>"))
            types.append(TokenType.CONTROL if special else TokenType.USER_DEFINED)
        else:
            types.append(TokenType.NORMAL)
        tokens.append(token)
    merges = [m if isinstance(m, str) else " ".join(m) for m in data["model"].get("merges", [])]
    template = tokenizer.chat_template if isinstance(tokenizer.chat_template, str) else None
    return Vocab(tokens=tokens, types=types, merges=merges, bos=tokenizer.bos_token_id, eos=eos, eot=eot,
                 pad=tokenizer.pad_token_id,
                 add_bos=_adds_bos(tokenizer, template), chat_template=template)


def _adds_bos(tokenizer: PreTrainedTokenizerBase, template: Optional[str]) -> bool:
    """Whether prompts start with BOS: as the chat template renders them (training tokenized its output with no
    extra special tokens), else as the tokenizer encodes. llama.cpp adds it (and drops a rendered one) when true."""
    if tokenizer.bos_token_id is None:
        return False
    if template:
        rendered = tokenizer.apply_chat_template([{"role": "user", "content": "hi"}], tokenize=False,
                                                 add_generation_prompt=True)
        return rendered.startswith(tokenizer.bos_token)
    return tokenizer.encode("a")[:1] == [tokenizer.bos_token_id]


# --- writing --------------------------------------------------------------------------------------------


def tensor_type(name: str, shape: list[int], quant: str, *, tied: bool = False) -> GGMLQuantizationType:
    """The GGML type a tensor is stored in: 1-D and norms float32; rows that do not fill quant blocks float16.

    The output embedding (`output.weight`, or `token_embd.weight` when `tied`: llama.cpp then uses it as the
    output) follows llama.cpp's quantizer (`llama_tensor_get_type`): in a quantized file other than Q8_0 it is
    Q6_K, or Q8_0 when its rows do not fill Q6_K's 256-value blocks (F16 when not even Q8_0's 32)."""
    from gguf import GGML_QUANT_SIZES, GGMLQuantizationType

    if len(shape) == 1 or name.endswith("_norm.weight") or quant == "f32":
        return GGMLQuantizationType.F32
    qtype = GGMLQuantizationType[PYTHON_TYPES[quant][0]]
    output = name == "output.weight" or (tied and name == "token_embd.weight")
    if output and quant not in ("f16", "bf16", "q8_0"):
        for promoted in (GGMLQuantizationType.Q6_K, GGMLQuantizationType.Q8_0):
            if shape[-1] % GGML_QUANT_SIZES[promoted][0] == 0:
                return promoted
        return GGMLQuantizationType.F16
    return GGMLQuantizationType.F16 if shape[-1] % GGML_QUANT_SIZES[qtype][0] else qtype


def quantize_q6_k(rows: np.ndarray) -> np.ndarray:
    """float32 rows (each a multiple of 256 long) as GGML Q6_K blocks, laid out as llama.cpp's `block_q6_K`:
    128 bytes of low 4 bits, 64 of high 2 bits, 16 int8 sub-block scales, the float16 super-block scale.

    Each 16-value sub-block's scale maps its largest-magnitude value to -32 (6-bit signed range -32..31); the
    16 scales are stored as int8 of one float16 scale per 256 values. llama.cpp's reference also searches a few
    nearby scales for the least squared error; this is the plain rounding (same format, error within a scale step).
    gguf's Python package reads Q6_K but cannot write it."""
    import numpy as np

    x = np.asarray(rows, dtype=np.float32).reshape(-1, 256)
    sub = x.reshape(-1, 16, 16)
    pick = np.abs(sub).argmax(axis=2)[..., None]
    scales = np.take_along_axis(sub, pick, axis=2)[..., 0] / -32.0  # (blocks, 16), signed
    big = np.take_along_axis(scales, np.abs(scales).argmax(axis=1)[:, None], axis=1)[:, 0]
    with np.errstate(divide="ignore", invalid="ignore"):
        iscale = np.where(big != 0, -128.0 / big, 0.0)
    d = np.where(big != 0, 1.0 / np.where(iscale != 0, iscale, 1.0), 0.0).astype(np.float16)
    sc = np.clip(np.rint(iscale[:, None] * scales), -128, 127).astype(np.int8)
    step = d.astype(np.float32)[:, None] * sc.astype(np.float32)  # (blocks, 16)
    with np.errstate(divide="ignore", invalid="ignore"):
        q = np.where(step[..., None] != 0, np.rint(sub / step[..., None]), 0.0)
    q = (np.clip(q, -32, 31) + 32).astype(np.uint8).reshape(-1, 2, 4, 32)  # (blocks, half, quarter, l)
    ql = np.concatenate([(q[:, :, 0] & 0xF) | ((q[:, :, 2] & 0xF) << 4),
                         (q[:, :, 1] & 0xF) | ((q[:, :, 3] & 0xF) << 4)], axis=2).reshape(-1, 128)
    qh = ((q[:, :, 0] >> 4) | ((q[:, :, 1] >> 4) << 2) | ((q[:, :, 2] >> 4) << 4)
          | ((q[:, :, 3] >> 4) << 6)).reshape(-1, 64)
    blocks = np.concatenate([ql, qh, sc.view(np.uint8), d.view(np.uint8).reshape(-1, 2)], axis=1)
    shape = np.shape(rows)
    return blocks.reshape(*shape[:-1], shape[-1] // 256 * 210)


def write_gguf(path: Path, model_dir: Path, vocab: Vocab, name: str, quant: str,
               progress: Callable[[int, int], None] = lambda done, total: None) -> None:
    """Write `model_dir` (a Llama safetensors folder) to `path` in `quant`; the caller owns the final name."""
    import gguf
    import numpy as np
    from safetensors import safe_open

    config = json.loads((model_dir / "config.json").read_text(encoding="utf-8"))
    check_architecture(config, str(model_dir / "config.json"))
    files = weight_files(model_dir) or {}
    shapes = {}
    for file in sorted(set(files.values())):
        with safe_open(str(file), framework="pt") as handle:
            shapes.update({key: list(handle.get_slice(key).get_shape()) for key in handle.keys()})
    plan = [(gname, key) for key in files if (gname := gguf_name(key)) is not None]
    factors = llama3_rope_factors(config)
    if factors is not None:
        plan.insert(0, ("rope_freqs.weight", ""))
        shapes[""] = [len(factors)]
    writer = gguf.GGUFWriter(str(path), "llama")
    _write_metadata(writer, config, vocab, name, int(gguf.LlamaFileType[PYTHON_TYPES[quant][1]]))
    types = {}
    for gname, key in plan:
        qtype = types[gname] = tensor_type(gname, shapes[key], quant, tied="output.weight" not in dict(plan))
        byte_shape = gguf.quant_shape_to_byte_shape(shapes[key], qtype)
        writer.add_tensor_info(gname, byte_shape, np.dtype(np.uint8), math.prod(byte_shape), raw_dtype=qtype)
    try:
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_ti_data_to_file()
        heads = config["num_attention_heads"]
        kv_heads = config.get("num_key_value_heads") or heads
        for done, (gname, key) in enumerate(plan, 1):
            if not key:
                out = np.asarray(factors, dtype=np.float32)
            else:
                group = heads if gname.endswith("attn_q.weight") else kv_heads if gname.endswith("attn_k.weight") else 0
                # A mapping per tensor: the pages it read leave the process with it, not at the end of the file.
                with safe_open(str(files[key]), framework="pt") as handle:
                    out = convert_tensor(handle.get_slice(key), shapes[key], types[gname], group and head_dim(config))
            writer.write_tensor_data(out)
            del out
            progress(done, len(plan))
    finally:
        writer.close()


def _write_metadata(writer: GGUFWriter, config: dict, vocab: Vocab, name: str, file_type: int) -> None:
    import gguf

    writer.add_name(name)
    writer.add_type(gguf.GGUFType.MODEL)
    writer.add_vocab_size(len(vocab.tokens))
    writer.add_context_length(config["max_position_embeddings"])
    writer.add_embedding_length(config["hidden_size"])
    writer.add_block_count(config["num_hidden_layers"])
    writer.add_feed_forward_length(config["intermediate_size"])
    writer.add_head_count(config["num_attention_heads"])
    writer.add_head_count_kv(config.get("num_key_value_heads") or config["num_attention_heads"])
    writer.add_rope_dimension_count(head_dim(config))
    writer.add_key_length(head_dim(config))
    writer.add_value_length(head_dim(config))
    writer.add_rope_freq_base(float(rope_parameters(config)["rope_theta"]))
    writer.add_layer_norm_rms_eps(float(config["rms_norm_eps"]))
    writer.add_file_type(file_type)
    writer.add_quantization_version(gguf.GGML_QUANT_VERSION)
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre("llama-bpe")
    writer.add_token_list(vocab.tokens)
    writer.add_token_types(vocab.types)
    writer.add_token_merges(vocab.merges)
    if vocab.bos is not None:
        writer.add_bos_token_id(vocab.bos)
    writer.add_eos_token_id(vocab.eos)
    writer.add_eot_token_id(vocab.eot)
    if vocab.pad is not None:
        writer.add_pad_token_id(vocab.pad)
    writer.add_add_bos_token(vocab.add_bos)
    writer.add_add_eos_token(False)
    if vocab.chat_template:
        writer.add_chat_template(vocab.chat_template)


def convert_tensor(piece: Any, shape: list[int], qtype: GGMLQuantizationType, group_rows: int) -> np.ndarray:
    """One tensor in its GGML type, converted a block of rows at a time (Q/K permuted per head of `group_rows`)."""
    import gguf
    import numpy as np
    import torch

    out = np.empty(gguf.quant_shape_to_byte_shape(shape, qtype), dtype=np.uint8)
    rows = shape[0] if len(shape) > 1 else 1
    step = max(1, ROW_BLOCK_BYTES // (4 * max(1, math.prod(shape[1:]))))
    if group_rows:
        step = max(group_rows, step // group_rows * group_rows)
    out_rows = out.reshape(rows, -1)
    for start in range(0, rows, step):
        block = piece[start:start + step] if len(shape) > 1 else piece[:]
        block = block.to(torch.float32)
        if group_rows:
            block = permute_rows(block, block.shape[0] // group_rows)
        array = block.reshape(-1, *shape[1:]).numpy() if len(shape) > 1 else block.numpy()
        if qtype == gguf.GGMLQuantizationType.F32:
            encoded = array.view(np.uint8)
        elif qtype == gguf.GGMLQuantizationType.F16:
            encoded = array.astype(np.float16).view(np.uint8)
        elif qtype == gguf.GGMLQuantizationType.BF16:
            encoded = block.to(torch.bfloat16).view(torch.int16).numpy().view(np.uint8)
        elif qtype == gguf.GGMLQuantizationType.Q6_K:
            encoded = quantize_q6_k(array)
        else:
            encoded = gguf.quants.quantize(array, qtype)
        out_rows[start:start + block.shape[0]] = encoded.reshape(block.shape[0] if len(shape) > 1 else 1, -1)
        del block, array, encoded
    return out
