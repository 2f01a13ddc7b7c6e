"""Human-readable views of settings: derived values for `validate`, the key reference for `keys`."""

from __future__ import annotations

import importlib.util
import typing
from typing import Any

import yaml
from pydantic import BaseModel
from pydantic_core import PydanticUndefined

from finetune.config.settings import DatasetSettings, Settings, SpecialTokens, affects_data

DATA_NOTE = "(Changes the prepared data: a new value rebuilds the cache.)"


def derived_values(settings: Settings, world_size: int) -> list[tuple[str, str]]:
    """What the recipe implies, as (name, value) rows."""
    s = settings
    rows = [
        (
            "effective batch per optimizer step",
            f"{s.effective_batch(world_size)} rows = micro_batch_size {s.micro_batch_size} "
            f"x gradient_accumulation_steps {s.gradient_accumulation_steps} x {world_size} process(es)",
        ),
        ("sample packing", _packing(s)),
        ("attention backend", attention_plan(s)),
        ("precision", _precision(s)),
        ("base model", _base(s)),
        ("evaluation", _cadence(s.evals_per_epoch, s.eval_steps, "evaluate") if s.evals_enabled else "off"),
        ("checkpoints", _cadence(s.saves_per_epoch, s.save_steps, "save") + _limit(s.save_total_limit)),
        ("training length", f"{s.max_steps} optimizer steps" if s.max_steps else f"{s.num_epochs:g} epoch(s)"),
        ("warmup", _warmup(s)),
        ("validation split", _val(s.val_set_size, s.val_split)),
        ("weights & biases", _wandb(s)),
        ("deepspeed", s.deepspeed or "off"),
    ]
    if s.rl is not None:
        rows[1:1] = [("preference tuning", _preference(s)), ("reference model", reference_model(s))]
    return rows


def reference_model(s: Settings) -> str:
    """Which model scores the reference log-probs of the preference stage (the model the policy starts from)."""
    if s.adapter is None:
        start = f"{s.base_model} as loaded (full fine-tuning)"
    elif s.lora_model_dir:
        start = f"{s.base_model} + the adapter in {s.lora_model_dir} (where training continues from)"
    else:
        start = f"{s.base_model} with the adapter disabled"
    how = ("log-probs computed once before training and cached with the prepared data"
           if s.precompute_ref_log_probs else "a reference forward every step")
    return f"{start}; {how}; no second model copy"


def _preference(s: Settings) -> str:
    loss = s.loss_type
    smoothing = f", label smoothing {s.dpo_label_smoothing:g}" if s.dpo_label_smoothing else ""
    return f"rl: {s.rl} with TRL's DPOTrainer, loss {loss}, beta {s.rl_beta:g}{smoothing}"


def attention_plan(s: Settings) -> str:
    """The backend `train` will use; flash-attn needs the package here and a CUDA GPU at train time."""
    if s.attn_implementation == "flash_attention_2":
        if importlib.util.find_spec("flash_attn") is None:
            return "sdpa (flash_attention_2 requested, but flash-attn is not installed: pip install 'finetune[flash]')"
        return "flash_attention_2 on a CUDA GPU, else sdpa (packed samples stay isolated either way)"
    return s.attn_implementation or "sdpa"


def _packing(s: Settings) -> str:
    if not s.sample_packing:
        return f"off (one sample per row, up to {s.sequence_len} tokens)"
    evals = "packed" if s.packs_eval else "unpacked"
    pad = ", padded to sequence_len" if s.pad_to_sequence_len else ""
    return f"on: rows of up to {s.sequence_len} tokens{pad}; eval rows {evals}"


def _precision(s: Settings) -> str:
    quant = "4-bit NF4 (double quant)" if s.load_in_4bit else "8-bit" if s.load_in_8bit else "unquantized"
    compute = "fp16" if s.fp16 else "bf16" if s.bf16 is True else "bf16 if supported, else fp32" if s.bf16 == "auto" else "fp32"
    return f"{quant} base, {compute} compute" + (", tf32 matmuls" if s.tf32 else "")


def _base(s: Settings) -> str:
    if s.adapter is None:
        return f"{s.base_model} (full fine-tuning)"
    extras = [name for name, on in (("DoRA", s.peft_use_dora), ("rsLoRA", s.peft_use_rslora)) if on]
    targets = "all linear layers" if s.lora_target_linear else ", ".join(s.lora_target_modules or [])
    save = f"; full copies of {', '.join(s.lora_modules_to_save)}" if s.lora_modules_to_save else ""
    kind = "+".join(["QLoRA" if s.adapter == "qlora" else "LoRA", *extras])
    return f"{s.base_model} with {kind} r={s.lora_r} alpha={s.lora_alpha:g} on {targets}{save}"


def _cadence(per_epoch: int | None, steps: int | None, verb: str) -> str:
    if per_epoch is not None:
        return f"{verb} {per_epoch}x per epoch"
    if steps is not None:
        return f"{verb} every {steps} steps"
    return "at the end only" if verb == "save" else "off"


def _limit(limit: int | None) -> str:
    return f", keep the last {limit}" if limit else ""


def _warmup(s: Settings) -> str:
    if s.warmup_steps is not None:
        return f"{s.warmup_steps} steps"
    if s.warmup_ratio is not None:
        return f"{s.warmup_ratio:.0%} of steps"
    return "min(3% of steps, 100)"


def _val(size: float, split: str) -> str:
    if size == 0:
        return "none"
    how = {"random": "at random", "newest": "the newest", "contact": "whole contacts"}[split]
    return (f"{size:.2%} of conversations" if size < 1 else f"{int(size)} conversations") + f", {how}"


def _wandb(s: Settings) -> str:
    if not s.wandb_project:
        return "off"
    mode = s.wandb_mode or "online if an API key is configured, else offline"
    return f"project {s.wandb_project} ({mode})"


def resolved_yaml(settings: Settings) -> str:
    """All settings, defaults included, as YAML (what `validate` prints and `train` saves)."""
    data = settings.model_dump(mode="json")
    return yaml.safe_dump(data, sort_keys=False, allow_unicode=True, width=100)


# --- key reference ---------------------------------------------------------------------------


def key_reference() -> list[tuple[str, str, str, str]]:
    """Every recipe key as (key, type, default, meaning), nested blocks prefixed."""
    rows: list[tuple[str, str, str, str]] = []
    _collect(Settings, "", rows)
    return rows


def _collect(model: type[BaseModel], prefix: str, rows: list) -> None:
    for name, info in model.model_fields.items():
        annotation = info.annotation
        nested = section_model(annotation)
        meaning = (info.description or "") + (" " + DATA_NOTE if affects_data(info) else "")
        rows.append((prefix + name, _type_name(annotation), _default(info), meaning))
        if nested is not None:
            sub_prefix = f"{prefix}{name}[]." if nested is DatasetSettings else f"{prefix}{name}."
            _collect(nested, sub_prefix, rows)


def section_model(annotation: Any) -> type[BaseModel] | None:
    """The settings section a field holds (directly, optionally or as a list), else None."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    for arg in typing.get_args(annotation):
        found = section_model(arg)
        if found is not None:
            return found
    return None


def _type_name(annotation: Any) -> str:
    if annotation is DatasetSettings or annotation is SpecialTokens:
        return "mapping"
    origin = typing.get_origin(annotation)
    args = typing.get_args(annotation)
    if origin is typing.Literal:
        return " | ".join(str(a) for a in args)
    if origin in (typing.Union, getattr(__import__("types"), "UnionType", None)):
        parts = [_type_name(a) for a in args if a is not type(None)]
        return " | ".join(parts) + (" | null" if type(None) in args else "")
    if origin is list:
        return f"list of {_type_name(args[0])}" if args else "list"
    if origin is dict:
        return "mapping"
    return getattr(annotation, "__name__", str(annotation))


def _default(info: Any) -> str:
    if info.default is PydanticUndefined and info.default_factory is None:
        return "required"
    value = info.default_factory() if info.default_factory is not None else info.default
    if isinstance(value, BaseModel):
        return "{}"
    return yaml.safe_dump(value, default_flow_style=True).strip().removesuffix("\n...").removesuffix("...").strip()
