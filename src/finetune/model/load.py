"""The base model: precision, quantization, attention backend and the one `from_pretrained`.

Precision policy (`compute_dtype`):
- `fp16: true` -> float16; `bf16: true` -> bfloat16 (a RecipeError on a CUDA GPU without bf16).
- `bf16: auto` -> bfloat16 where it runs natively: a CUDA GPU with bf16, or a CPU with AVX512-BF16 or AMX
  (oneDNN runs bf16 matmuls there at about twice the fp32 rate); float32 otherwise (an older CPU would emulate
  bf16 and be slower than fp32).
- `bf16: false` and no fp16 -> float32.
A frozen base is stored in the compute dtype; every trainable tensor (LoRA, DoRA magnitude, modules_to_save,
or the whole model when fine-tuning in full) is kept in float32 and autocast does the matmuls.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from finetune.config.settings import Settings
from finetune.errors import MissingDependencyError, RecipeError
from finetune.model.tokenizer import eos_ids, require_local_or_cached

if TYPE_CHECKING:
    import torch
    from peft import PeftModel
    from transformers import BitsAndBytesConfig, PreTrainedModel, PreTrainedTokenizerBase

# Modules that must be trained in full (and saved with the adapter) when special tokens grow the vocabulary.
EMBEDDING_MODULES = ("embed_tokens", "lm_head")

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Precision:
    """Resolved numeric settings: `dtype` is 'bf16' | 'fp16' | 'fp32'; `tf32` only where it can apply;
    `cpu` when no CUDA GPU is visible (the trainer must then be told to run on the CPU)."""

    dtype: str
    tf32: bool = False
    cpu: bool = False

    @property
    def torch_dtype(self) -> torch.dtype:
        import torch

        return {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}[self.dtype]


def bf16_supported() -> bool:
    """True when bfloat16 runs natively: CUDA with bf16, else a CPU with AVX512-BF16 or AMX."""
    import torch

    if torch.cuda.is_available():
        return torch.cuda.is_bf16_supported()
    cpu = getattr(torch, "cpu", None)
    checks = ("_is_avx512_bf16_supported", "_is_amx_tile_supported")
    return any(getattr(cpu, name, lambda: False)() for name in checks)


def tf32_supported() -> bool:
    """TF32 exists on CUDA GPUs of compute capability 8.0 (Ampere) and newer."""
    import torch

    return torch.cuda.is_available() and torch.cuda.get_device_capability()[0] >= 8


def resolve_precision(
    settings: Settings, *, bf16_ok: bool | None = None, tf32_ok: bool | None = None, cpu: bool | None = None
) -> Precision:
    """Settings + hardware -> Precision. Pass `bf16_ok`/`tf32_ok`/`cpu` to decide without probing the machine."""
    if cpu is None:
        import torch

        cpu = not torch.cuda.is_available()
    bf16_ok = bf16_supported() if bf16_ok is None else bf16_ok
    tf32_ok = tf32_supported() if tf32_ok is None else tf32_ok
    if settings.fp16:
        dtype = "fp16"
    elif settings.bf16 is True:
        if not bf16_ok:
            import torch

            if torch.cuda.is_available():
                raise RecipeError(f"{settings.where('bf16')}: this GPU has no bfloat16; set bf16: auto or fp16: true")
        dtype = "bf16"
    elif settings.bf16 == "auto":
        dtype = "bf16" if bf16_ok else "fp32"
    else:
        dtype = "fp32"
    return Precision(dtype=dtype, tf32=bool(settings.tf32 and tf32_ok), cpu=cpu)


def compute_dtype(settings: Settings, *, bf16_ok: bool | None = None) -> torch.dtype:
    """The torch dtype matmuls run in (see the module docstring)."""
    return resolve_precision(settings, bf16_ok=bf16_ok, tf32_ok=False, cpu=False).torch_dtype


def quantization_config(settings: Settings, *, dtype: torch.dtype | None = None) -> BitsAndBytesConfig | None:
    """BitsAndBytesConfig for `load_in_4bit` (NF4, double quant, compute = storage dtype) or `load_in_8bit`; else None."""
    if not (settings.load_in_4bit or settings.load_in_8bit):
        return None
    _require_bitsandbytes(settings.where("load_in_4bit" if settings.load_in_4bit else "load_in_8bit"))
    from transformers import BitsAndBytesConfig

    if settings.load_in_8bit:
        return BitsAndBytesConfig(load_in_8bit=True)
    dtype = compute_dtype(settings) if dtype is None else dtype
    return BitsAndBytesConfig(
        load_in_4bit=True,
        bnb_4bit_quant_type="nf4",
        bnb_4bit_use_double_quant=True,
        bnb_4bit_compute_dtype=dtype,
        bnb_4bit_quant_storage=dtype,
    )


def attention_backend(settings: Settings) -> str:
    """'eager' | 'sdpa' | 'flash_attention_2'; flash-attn falls back to sdpa (one warning) without flash-attn + CUDA."""
    wanted = settings.attn_implementation or "sdpa"
    if wanted != "flash_attention_2":
        return wanted
    import importlib.util

    import torch

    if importlib.util.find_spec("flash_attn") is not None and torch.cuda.is_available():
        return wanted
    why = "no CUDA GPU" if importlib.util.find_spec("flash_attn") is not None else "flash-attn is not installed"
    logger.warning(
        "%s: flash_attention_2 requested but %s; using sdpa (packed samples stay isolated through position_ids)",
        settings.where("attn_implementation"), why,
    )
    return "sdpa"


def load_model(
    settings: Settings, tokenizer: PreTrainedTokenizerBase, *, precision: Precision | None = None,
    training: bool = True, local_rank: int = 0,
) -> PreTrainedModel:
    """Load the base model for training: quantized if asked, cache off, embeddings sized to the tokenizer.

    `training=False` (chat, evaluate): the same model, without the notice about what training would save.

    Raises RecipeError (naming the recipe line) when the model cannot be found, or when new special tokens
    need `lora_modules_to_save: [embed_tokens, lm_head]` with an adapter.
    """
    from transformers import AutoModelForCausalLM

    precision = precision or resolve_precision(settings)
    dtype = precision.torch_dtype
    where = settings.where("base_model")
    require_local_or_cached(settings.base_model, where, "base_model")
    kwargs: dict[str, Any] = {
        "attn_implementation": attention_backend(settings),
        "trust_remote_code": settings.trust_remote_code,
        # Full fine-tuning keeps fp32 master weights; a frozen base lives in the compute dtype.
        "dtype": dtype if settings.adapter else _fp32(),
    }
    quant = quantization_config(settings, dtype=dtype)
    if quant is not None:
        kwargs["quantization_config"] = quant
        if not _zero3():  # ZeRO-3 refuses a device_map: loaded on the CPU, then partitioned (finetune.train.zero3)
            kwargs["device_map"] = _quantized_device_map(local_rank)
    how = "quantized to 4-bit" if settings.load_in_4bit else "quantized to 8-bit" if settings.load_in_8bit else \
        str(kwargs["dtype"]).removeprefix("torch.")
    logger.info("loading the base model %s (%s)", settings.base_model, how)
    try:
        model = AutoModelForCausalLM.from_pretrained(settings.base_model, **kwargs)
    except (OSError, ValueError) as exc:
        raise RecipeError(f"{where}: cannot load the model `{settings.base_model}`: {exc}") from None

    # The KV cache trap: with use_cache=True the forward builds a cache, and transformers then stops deriving
    # the per-sample (block-diagonal) mask from position_ids, so packed samples would attend to each other.
    model.config.use_cache = False
    if training:
        keep_4bit_training_layout(model)
    _fit_embeddings(settings, model, tokenizer, training)
    _set_generation_ids(model, tokenizer)
    return model


def keep_4bit_training_layout(model: Any) -> int:
    """Keep every bitsandbytes 4-bit weight in the layout training reads; returns how many layers were told.

    On a CPU with AVX512-BF16, bitsandbytes' `Linear4bit.forward` repacks its weight *in place* for a bf16 inference
    kernel the first time it runs in eval mode on an input without gradient (an evaluation): the weight becomes
    `[out, in/2]` uint8, the double-quantized absmax becomes a bf16 matrix, and `quant_state.packing_format_for_cpu`
    is set. It never packs back for training: `matmul_4bit` then sends every later forward, training ones too,
    through `bitsandbytes::gemv_4bit`, an op without an autograd formula (no gradient flows through the frozen base
    to the layers below, and its bf16 arithmetic differs from training's), and the inverse that saving runs re-quantizes
    the absmax (lossy), or fails under ZeRO-3, where the repacked tensor was a gathered partition. A model loaded for
    training therefore never takes that path (`support_avx512bf16_for_cpu`, read by that forward, is turned off);
    its evaluations compute exactly what training computes. Inference-only models (chat, evaluate) keep it.
    On CUDA the repacking never happens (it is CPU-only), so this changes nothing there.
    """
    told = 0
    for module in model.modules():
        if getattr(module, "support_avx512bf16_for_cpu", False):
            module.support_avx512bf16_for_cpu = False
            told += 1
    return told


def _fit_embeddings(settings: Settings, model: Any, tokenizer: Any, training: bool) -> None:
    rows = _full_shape(model.get_input_embeddings().weight)[0]
    wanted = len(tokenizer)
    saved = set(settings.lora_modules_to_save or ())
    if wanted > rows:
        if settings.load_in_4bit or settings.load_in_8bit:
            raise RecipeError(
                f"{settings.where('special_tokens')}: {wanted - rows} new special token(s) need larger embeddings, "
                "which a quantized base cannot grow; use tokens that already exist in the vocabulary"
            )
        model.resize_token_embeddings(wanted)
        logger.info("resized the embeddings from %d to %d rows for new special tokens", rows, wanted)
        missing = [name for name in EMBEDDING_MODULES if name not in saved]
        if settings.adapter and missing:
            key = "lora_modules_to_save" if settings.lora_modules_to_save else "special_tokens"
            raise RecipeError(
                f"{settings.where(key)}: special_tokens adds {wanted - rows} new token(s) whose embeddings must be "
                f"trained; add `lora_modules_to_save: [embed_tokens, lm_head]` (missing: {', '.join(missing)})"
            )
        return
    optional = [name for name in EMBEDDING_MODULES if name in saved]
    if training and settings.adapter and optional:
        size = sum(_module_numel(model, name) for name in optional) * 4  # trained and saved in fp32
        logger.info(
            f"{settings.where('lora_modules_to_save')}: every special token already exists in the vocabulary, so "
            f"`lora_modules_to_save: [{', '.join(optional)}]` is optional; it trains full copies and adds "
            f"{_human_bytes(size)} ({size:,} bytes) to the adapter"
        )


def _set_generation_ids(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase) -> None:
    """The trained end-of-turn token stops generation; the base's own EOS ids still do too."""
    eos, pad = tokenizer.eos_token_id, tokenizer.pad_token_id
    if eos is not None:
        model.config.eos_token_id = eos
        model.generation_config.eos_token_id = eos_ids(eos, model.generation_config.eos_token_id)
    if pad is not None:
        model.config.pad_token_id = pad
        model.generation_config.pad_token_id = pad


def _full_shape(param: torch.nn.Parameter) -> tuple[int, ...]:
    """A parameter's shape, also when DeepSpeed ZeRO-3 has partitioned it (its data is then empty; `ds_shape` is the
    full one)."""
    return tuple(getattr(param, "ds_shape", None) or param.shape)


def _module_numel(model: torch.nn.Module, name: str) -> int:
    """Parameters of the modules whose last name component is `name` (e.g. embed_tokens); full sizes under ZeRO-3."""
    return sum(
        getattr(p, "ds_numel", None) or p.numel()
        for module_name, module in model.named_modules()
        if module_name.split(".")[-1] == name
        for p in module.parameters(recurse=True)
    )


def _human_bytes(size: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if size < 1024 or unit == "GiB":
            return f"{size:.1f} {unit}" if unit != "B" else f"{int(size)} B"
        size /= 1024
    return f"{size:.1f} GiB"  # pragma: no cover


def _fp32() -> torch.dtype:
    import torch

    return torch.float32


def inference_device(cuda_available: bool, quantized: bool) -> str | None:
    """Where a model for inference (chat, evaluate, export checks) goes: None for a quantized model, which
    stays where bitsandbytes put it; else the GPU when there is one, else the CPU."""
    if quantized:
        return None
    return "cuda" if cuda_available else "cpu"


def place_for_inference(model: PeftModel | PreTrainedModel, *, quantized: bool) -> PeftModel | PreTrainedModel:
    """`model` moved to `inference_device` (the one placement rule for every inference path); a `quantized`
    base (Settings.quantized) stays where bitsandbytes put it."""
    import torch

    device = inference_device(torch.cuda.is_available(), quantized)
    return model if device is None else model.to(device)


def _quantized_device_map(local_rank: int) -> dict[str, int | str]:
    """bitsandbytes places weights at load time: this process's GPU (`local_rank`), else the CPU."""
    import torch

    if torch.cuda.is_available():
        return {"": local_rank}
    return {"": "cpu"}


def _zero3() -> bool:
    """Whether this process's trainer arguments ask for DeepSpeed ZeRO-3 (transformers' switch)."""
    from transformers.integrations import is_deepspeed_zero3_enabled

    return bool(is_deepspeed_zero3_enabled())


def _require_bitsandbytes(where: str) -> None:
    """MissingDependencyError at `where` (the recipe line asking for quantization) without bitsandbytes."""
    import importlib.util

    if importlib.util.find_spec("bitsandbytes") is None:
        raise MissingDependencyError(f"{where}: quantized loading needs bitsandbytes: pip install bitsandbytes")
