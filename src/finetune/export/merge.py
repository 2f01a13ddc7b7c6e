"""`finetune merge`: fold a trained LoRA/DoRA adapter into its base, tensor by tensor, into sharded safetensors.

The merge never builds the model. It streams the base checkpoint one tensor at a time
(`safetensors.safe_open`), applies the adapter to that tensor in float32, casts it to the
output dtype and writes it straight into the shard file (our own streaming safetensors
writer, `finetune.export.safetensors_stream`: the header is planned from the shapes first, so no
shard is ever assembled in memory). Peak memory is about one base tensor in float32 plus its
LoRA factors, whatever the model size: merging an 8B model needs a few GiB, not 32.

Per tensor (peft's own formulas, `peft/tuners/lora/layer.py` and `dora.py`):
- LoRA:  W' = W + s * B @ A, with s = alpha / r, or alpha / sqrt(r) with rsLoRA (alpha from
  `alpha_pattern` where it matches; r is read from the tensor shapes, so `rank_pattern` works).
- DoRA:  W' = m * (W + s B A) / ||W + s B A||, the norm taken per output row (dim=1), as
  peft's `DoraLinearLayer.get_weight_norm`.
- `modules_to_save` copies (saved under the base's own key) replace the base tensor; they may
  have more rows than the base (embeddings resized for new tokens): `vocab_size` follows.
- Tied embeddings that the adapter changes are untied (`lm_head.weight` is written).

QLoRA (`load_in_4bit`): the adapter was trained against the NF4-quantized base, not the
original weights. So every weight that transformers quantizes at load time (each nn.Linear
except the output embedding and the config's skip list) is first put through the same NF4
round trip: cast to the training compute dtype, `bitsandbytes.functional.quantize_4bit`
(nf4, blocksize 64, double quantization) then `dequantize_4bit`; the LoRA/DoRA delta is
applied to those de-quantized weights. This is bit-identical to the weights the 4-bit
model computed with during training, and needs no GPU.
"""

from __future__ import annotations

import json
import logging
import math
import re
import shutil
import weakref
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Literal, Optional

from finetune.config.settings import Settings
from finetune.errors import FinetuneError, MissingDependencyError, RecipeError
from finetune.model.load import compute_dtype
from finetune.model.shapes import NF4_BLOCK
from finetune.model.tokenizer import eos_ids
from finetune.runs.atomic import atomic_path
from finetune.runs.layout import ADAPTER_WEIGHTS, GENERATION_CONFIG, MERGE_SOURCE, MERGED_DIR, MODEL_CONFIG
from finetune.runs.read import base_model_dir, load_run_tokenizer, read_adapter_config, read_json, resolve_adapter_dir
from finetune.export.safetensors_stream import (FLOAT_CODES, INDEX_FILE, st_code, weight_files, write_index,
                                         write_sharded)
from finetune.config.sizes import parse_size

if TYPE_CHECKING:
    import torch
    from transformers import PreTrainedModel, PreTrainedTokenizerBase

logger = logging.getLogger(__name__)

ADAPTER_PREFIX = "base_model.model."
MergeDtype = Literal["bf16", "fp16", "fp32"]


@dataclass
class MergeMonitor:
    """Counts the tensors the merge holds at once (read from disk, or made and not yet written).

    Each tensor is registered when it is made and released when Python frees it (a weakref
    finalizer), so `peak` and `peak_bytes` are exact counts, not timing-dependent measurements.
    """

    live: int = 0
    live_bytes: int = 0
    peak: int = 0
    peak_bytes: int = 0
    read: int = 0
    written: int = 0

    def hold(self, tensor: torch.Tensor) -> torch.Tensor:
        size = tensor.numel() * tensor.element_size()
        self.live += 1
        self.live_bytes += size
        self.peak = max(self.peak, self.live)
        self.peak_bytes = max(self.peak_bytes, self.live_bytes)
        weakref.finalize(tensor, self._release, size)
        return tensor

    def _release(self, size: int) -> None:
        self.live -= 1
        self.live_bytes -= size


@dataclass
class _Lora:
    """The adapter tensors of one adapted module (adapter keys)."""

    A: Optional[str] = None
    B: Optional[str] = None
    magnitude: Optional[str] = None
    embedding: bool = False


@dataclass
class _Plan:
    sources: dict[str, tuple[str, str]] = field(default_factory=dict)  # out key -> ("base"|"adapter", key)
    shapes: dict[str, list[int]] = field(default_factory=dict)
    codes: dict[str, str] = field(default_factory=dict)  # out key -> safetensors dtype code
    loras: dict[str, _Lora] = field(default_factory=dict)  # module path -> its factors
    quantized: set[str] = field(default_factory=set)
    conv1d: set[str] = field(default_factory=set)  # weights stored (in, out): GPT-2 style Conv1D
    vocab_size: Optional[int] = None
    untied: bool = False


# --- the merge ----------------------------------------------------------------------------------


def merge_adapter(
    settings: Settings,
    *,
    adapter_dir: str | Path | None = None,
    out_dir: str | Path | None = None,
    dtype: MergeDtype = "bf16",
    max_shard_size: int | str = "2GB",
    quant_dtype: torch.dtype | None = None,
    monitor: MergeMonitor | None = None,
) -> Path:
    """Merge the run's adapter into the base and write a standalone model to `out_dir` (default `output_dir/merged`).

    Writes sharded safetensors (`model.safetensors.index.json` + shards of at most `max_shard_size`
    bytes, one tensor never split), config.json, generation_config.json (eos = the trained end-of-turn
    id then the base's eos ids; pad = the trained pad), and the run's tokenizer with its chat template.
    For QLoRA the adapter is merged into the de-quantized NF4 base, i.e. what it was trained against
    (see the module docstring); `quant_dtype` is the dtype the 4-bit base was loaded in during
    training (default: the recipe's compute dtype on this machine). `dtype="fp32"` exists for checks.
    """
    import torch
    from safetensors import safe_open

    if settings.adapter is None:
        raise FinetuneError(
            f"{settings.where('adapter')}: nothing to merge: the recipe trains the full model (adapter unset); "
            f"{settings.output_dir} already holds a complete model"
        )
    out_torch = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}.get(dtype)
    if out_torch is None:
        raise FinetuneError(f"--dtype {dtype}: expected bf16 or fp16")
    shard_bytes = parse_size(max_shard_size, what="--max-shard-size")
    adapter_dir = resolve_adapter_dir(settings, adapter_dir)
    out_dir = Path(out_dir) if out_dir is not None else Path(settings.output_dir) / MERGED_DIR
    base_dir = base_model_dir(settings)
    adapter_config = read_adapter_config(adapter_dir)
    tokenizer = load_run_tokenizer(settings, adapter_dir)
    base_config = read_json(base_dir / MODEL_CONFIG)
    base_files = _base_weight_files(base_dir, settings)
    monitor = monitor or MergeMonitor()
    if settings.load_in_4bit:
        _require_bitsandbytes(settings)
        if quant_dtype is None:
            quant_dtype = compute_dtype(settings)

    logger.info("merging the adapter from %s into %s (%s), writing %s", adapter_dir, base_dir, dtype, out_dir)
    _check_replaceable(out_dir)
    record = merge_record(adapter_dir, settings.base_model, dtype, quant_dtype if settings.load_in_4bit else None)
    with atomic_path(out_dir) as tmp:
        shutil.rmtree(tmp, ignore_errors=True)  # left by a killed merge of this pid
        tmp.mkdir(parents=True)
        with ExitStack() as stack:
            handles: dict[Path, Any] = {}

            def base_file(key: str) -> Any:
                path = base_files[key]
                if path not in handles:
                    handles[path] = stack.enter_context(safe_open(str(path), framework="pt"))
                return handles[path]

            adapter = stack.enter_context(safe_open(str(adapter_dir / ADAPTER_WEIGHTS), framework="pt"))
            plan = _plan(settings, base_config, base_files, base_file, adapter, adapter_config)
            out_codes = {k: (st_code(out_torch) if c in FLOAT_CODES else c) for k, c in plan.codes.items()}

            def produce(key: str) -> Any:
                kind, name = plan.sources[key]
                tensor = monitor.hold(base_file(name).get_tensor(name) if kind == "base" else adapter.get_tensor(name))
                monitor.read += 1
                merged = _merge_tensor(key, tensor, kind, plan, adapter, adapter_config, quant_dtype, monitor)
                del tensor
                if merged.is_floating_point():
                    merged = monitor.hold(merged.to(out_torch).contiguous())
                return merged

            def written(key: str) -> None:
                monitor.written += 1

            weight_map, total, shard_count = write_sharded(tmp, list(plan.sources), plan.shapes, out_codes,
                                                           produce, shard_bytes, written)
        write_index(tmp, weight_map, total)
        _write_configs(tmp, base_dir, base_config, plan, tokenizer, dtype)
        tokenizer.save_pretrained(tmp)
        for code in base_dir.glob("*.py"):  # custom modelling code (trust_remote_code)
            shutil.copy2(code, tmp / code.name)
        (tmp / MERGE_SOURCE).write_text(json.dumps(record, indent=2) + "\n", encoding="utf-8")
    kind = "DoRA" if adapter_config.get("use_dora") else "LoRA"
    logger.info(f"merged the {kind} adapter from {adapter_dir} into {out_dir} ({len(weight_map)} tensors, "
                f"{shard_count} shard(s), {total / 1e9:.2f} GB, {dtype})")
    return out_dir


def _plan(settings: Settings, base_config: dict, base_files: dict, base_file: Callable, adapter: Any,
          adapter_config: dict) -> _Plan:
    plan = _Plan()
    for key in base_files:
        piece = base_file(key).get_slice(key)
        plan.sources[key] = ("base", key)
        plan.shapes[key] = list(piece.get_shape())
        plan.codes[key] = piece.get_dtype()
    replacements: dict[str, str] = {}
    for key in adapter.keys():
        if not key.startswith(ADAPTER_PREFIX):
            raise FinetuneError(f"unexpected adapter tensor `{key}` (expected the `{ADAPTER_PREFIX}` prefix)")
        name = key[len(ADAPTER_PREFIX):]
        for suffix, slot in ((".lora_A.weight", "A"), (".lora_B.weight", "B"), (".lora_magnitude_vector", "magnitude"),
                             (".lora_magnitude_vector.weight", "magnitude"), (".lora_embedding_A", "A"),
                             (".lora_embedding_B", "B")):
            if name.endswith(suffix):
                lora = plan.loras.setdefault(name[: -len(suffix)], _Lora())
                setattr(lora, slot, key)
                lora.embedding = lora.embedding or "lora_embedding" in suffix
                break
        else:
            if "lora_" in name or "token_adapter" in name:
                raise FinetuneError(f"adapter tensor `{key}` is of a kind finetune cannot merge yet")
            # A modules_to_save copy: `X.weight`; with resized embeddings peft also saves `X.modules_to_save.weight`
            # (the same trained copy, which wins) and `X.original_module.weight` (unused).
            if ".modules_to_save." in name:
                replacements[name.replace(".modules_to_save.", ".")] = key
            elif ".original_module." not in name:
                replacements.setdefault(name, key)
    meta = _meta_model(settings)
    in_key, out_key = _embedding_keys(meta)
    tied = in_key in base_files and out_key is not None and out_key not in base_files
    touched = set(replacements) | {f"{m}.weight" for m in plan.loras}
    if tied and touched & {in_key, out_key}:
        plan.untied = True  # peft trained them apart: the output embedding kept the original weights
        plan.sources[out_key], plan.shapes[out_key], plan.codes[out_key] = (
            ("base", in_key), plan.shapes[in_key], plan.codes[in_key])
    for name, key in replacements.items():
        if name not in plan.sources:
            raise FinetuneError(f"adapter tensor `{key}` replaces `{name}`, which the base model does not have")
        shape = list(adapter.get_slice(key).get_shape())
        if shape != plan.shapes[name]:
            if name not in (in_key, out_key) or shape[1:] != plan.shapes[name][1:]:
                raise FinetuneError(f"adapter tensor `{key}` has shape {shape}; the base's `{name}` is "
                                    f"{plan.shapes[name]}")
            plan.vocab_size = max(plan.vocab_size or 0, shape[0])
        plan.sources[name], plan.shapes[name] = ("adapter", key), shape
        plan.codes[name] = adapter.get_slice(key).get_dtype()
    for module, lora in plan.loras.items():
        if lora.A is None or lora.B is None:
            raise FinetuneError(f"adapter module `{module}` lacks its lora_A or lora_B tensor")
        if lora.embedding and lora.magnitude:
            raise FinetuneError(f"adapter module `{module}`: DoRA on embeddings cannot be merged yet")
        if f"{module}.weight" not in plan.sources:
            raise FinetuneError(f"the adapter adapts `{module}`, which the base model does not have "
                                f"(was it trained on another base than {settings.base_model}?)")
    plan.conv1d = _conv1d_keys(meta)
    if settings.load_in_4bit:
        plan.quantized = _quantized_keys(meta, base_config) & set(base_files)
    return plan


def _merge_tensor(key: str, tensor: torch.Tensor, kind: str, plan: _Plan, adapter: Any, adapter_config: dict,
                  quant_dtype: torch.dtype | None, monitor: MergeMonitor) -> torch.Tensor:
    """One output tensor in float32 when it changes; the tensor as read otherwise."""
    import torch

    module = key[: -len(".weight")] if key.endswith(".weight") else None
    lora = plan.loras.get(module) if module else None
    quantized = kind == "base" and key in plan.quantized and plan.sources[key][1] == key
    if lora is None and not quantized:
        return tensor
    fan_in_fan_out = key in plan.conv1d
    weight = monitor.hold(tensor.to(torch.float32, copy=True))
    if fan_in_fan_out:  # Conv1D stores (in, out); work on (out, in) like peft and bitsandbytes
        weight = weight.T
    if quantized:
        weight = monitor.hold(_nf4_round_trip(weight, quant_dtype))
    if lora is not None:
        a = monitor.hold(adapter.get_tensor(lora.A).to(torch.float32))
        b = monitor.hold(adapter.get_tensor(lora.B).to(torch.float32))
        scale = _scaling(module, a.shape[0], adapter_config)
        delta = (b @ a).T if lora.embedding else b @ a
        weight.add_(delta, alpha=scale)
        del a, b, delta
        if lora.magnitude is not None:
            magnitude = monitor.hold(adapter.get_tensor(lora.magnitude).to(torch.float32))
            weight.mul_((magnitude / torch.linalg.norm(weight, dim=1)).view(-1, 1))
    return weight.T if fan_in_fan_out else weight


def _nf4_round_trip(weight: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """What `load_in_4bit` turns `weight` into: cast, NF4 with double quant (blocksize 64), de-quantized."""
    import bitsandbytes.functional as bnbf
    import torch

    source = weight.to(dtype).contiguous()
    packed, state = bnbf.quantize_4bit(source, blocksize=NF4_BLOCK, compress_statistics=True,
                                       quant_type="nf4", quant_storage=dtype)
    return bnbf.dequantize_4bit(packed, state).to(torch.float32)


def _scaling(module: str, rank: int, adapter_config: dict) -> float:
    alpha = float(adapter_config.get("lora_alpha", 8))
    for pattern, value in (adapter_config.get("alpha_pattern") or {}).items():
        if pattern == module or re.match(rf"(.*\.)?({pattern})$", module):
            alpha = float(value)
            break
    return alpha / math.sqrt(rank) if adapter_config.get("use_rslora") else alpha / rank


def _embedding_keys(model: PreTrainedModel) -> tuple[Optional[str], Optional[str]]:
    """Checkpoint keys of the input and output embeddings of the meta-device model."""
    names = {id(m): n for n, m in model.named_modules()}
    out = model.get_output_embeddings()
    in_name = names.get(id(model.get_input_embeddings()))
    out_name = names.get(id(out)) if out is not None else None
    return (f"{in_name}.weight" if in_name else None), (f"{out_name}.weight" if out_name else None)


def _conv1d_keys(model: PreTrainedModel) -> set[str]:
    from transformers.pytorch_utils import Conv1D

    return {f"{name}.weight" for name, module in model.named_modules() if isinstance(module, Conv1D)}


def _quantized_keys(model: PreTrainedModel, base_config: dict) -> set[str]:
    """The weights `load_in_4bit` quantizes: every nn.Linear (or Conv1D) except transformers' skip list."""
    import torch
    from transformers.pytorch_utils import Conv1D
    from transformers.quantizers.base import HfQuantizer
    from transformers.quantizers.quantizers_utils import should_convert_module

    skip = (base_config.get("quantization_config") or {}).get("llm_int8_skip_modules")
    skipped = HfQuantizer.get_modules_to_not_convert(model, skip, getattr(model, "_keep_in_fp32_modules", None))
    return {
        f"{name}.weight"
        for name, module in model.named_modules()
        if (type(module) is torch.nn.Linear or isinstance(module, Conv1D)) and should_convert_module(name, skipped)
    }


def _meta_model(settings: Settings) -> PreTrainedModel:
    """The base architecture on the meta device (no memory): module types and embedding names."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    config = AutoConfig.from_pretrained(base_model_dir(settings), trust_remote_code=settings.trust_remote_code)
    with torch.device("meta"):
        return AutoModelForCausalLM.from_config(config, trust_remote_code=settings.trust_remote_code)


# --- writing ----------------------------------------------------------------------------------------


def _base_weight_files(base_dir: Path, settings: Settings) -> dict[str, Path]:
    files = weight_files(base_dir)
    if files is None:
        raise RecipeError(f"{settings.where('base_model')}: {base_dir} holds no safetensors weights "
                          "(model.safetensors or model.safetensors.index.json); merge reads safetensors only")
    return files


def _write_configs(out: Path, base_dir: Path, base_config: dict, plan: _Plan, tokenizer: PreTrainedTokenizerBase, dtype: str) -> None:
    config = {k: v for k, v in base_config.items() if k != "quantization_config"}
    name = {"bf16": "bfloat16", "fp16": "float16", "fp32": "float32"}[dtype]
    config["dtype"] = name
    if "torch_dtype" in config:
        config["torch_dtype"] = name
    if plan.vocab_size is not None:
        config["vocab_size"] = plan.vocab_size
    if plan.untied:
        config["tie_word_embeddings"] = False
    eos, pad = tokenizer.eos_token_id, tokenizer.pad_token_id
    generation_path = base_dir / GENERATION_CONFIG
    generation = read_json(generation_path) if generation_path.is_file() else {
        key: base_config[key] for key in ("bos_token_id", "eos_token_id") if base_config.get(key) is not None}
    if eos is not None:
        config["eos_token_id"] = eos
        generation["eos_token_id"] = eos_ids(eos, generation.get("eos_token_id", base_config.get("eos_token_id")))
    if pad is not None:
        config["pad_token_id"] = generation["pad_token_id"] = pad
    (out / MODEL_CONFIG).write_text(json.dumps(config, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    (out / GENERATION_CONFIG).write_text(json.dumps(generation, indent=2, sort_keys=True) + "\n",
                                                encoding="utf-8")


def _check_replaceable(out_dir: Path) -> None:
    if out_dir.exists():
        if not out_dir.is_dir() or (any(out_dir.iterdir()) and not (out_dir / INDEX_FILE).is_file()):
            raise FinetuneError(f"{out_dir} exists and is not a merged model; remove it or pass --out DIR")


# --- what a merged folder was merged from ------------------------------------------------------------


def merge_record(adapter_dir: Path, base_model: str, dtype: str, nf4_dtype: torch.dtype | None = None) -> dict[str, Any]:
    """What a merge of `adapter_dir` into `base_model` in `dtype` is made of: the adapter's path and the sha256
    of its weights file, the base, the dtype, and for QLoRA the dtype of the NF4 round trip. Written into the
    merged folder as MERGE_SOURCE; a merged folder is reused only when its record equals the one wanted."""
    import hashlib

    digest = hashlib.sha256()
    with open(Path(adapter_dir) / ADAPTER_WEIGHTS, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 24), b""):
            digest.update(block)
    return {"adapter": str(Path(adapter_dir).resolve()), "adapter_sha256": digest.hexdigest(),
            "base_model": str(base_model), "dtype": dtype,
            "nf4_dtype": None if nf4_dtype is None else str(nf4_dtype).removeprefix("torch.")}


def read_merge_record(merged_dir: Path) -> dict[str, Any] | None:
    """The MERGE_SOURCE record of a merged folder; None when it has none (merged by an older finetune) or it
    cannot be read."""
    try:
        return json.loads((Path(merged_dir) / MERGE_SOURCE).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return None


def _require_bitsandbytes(settings: Settings) -> None:
    import importlib.util

    if importlib.util.find_spec("bitsandbytes") is None:
        raise MissingDependencyError(f"{settings.where('load_in_4bit')}: merging a QLoRA adapter needs bitsandbytes "
                                     "(for the NF4 round trip): pip install bitsandbytes")
