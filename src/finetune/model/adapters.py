"""LoRA / QLoRA / DoRA: settings -> LoraConfig (pure), and putting the adapter on a loaded base."""

from __future__ import annotations

import contextlib
import logging
from pathlib import Path
from typing import TYPE_CHECKING, Iterator

from finetune.config.contradictions import head_lora_message
from finetune.config.settings import Settings
from finetune.errors import MissingDependencyError, RecipeError

if TYPE_CHECKING:
    import torch
    from peft import LoraConfig, PeftModel
    from transformers import PreTrainedModel

logger = logging.getLogger(__name__)


def is_linear(module: torch.nn.Module) -> bool:
    """nn.Linear and the bitsandbytes Linear4bit / Linear8bitLt (both subclass nn.Linear; checked by name too)."""
    import torch

    if isinstance(module, torch.nn.Linear):
        return True
    return type(module).__name__ in ("Linear4bit", "Linear8bitLt")


def target_modules(settings: Settings, model: PreTrainedModel) -> list[str]:
    """Leaf names to adapt: with `lora_target_linear` every linear layer except the LM head, plus `lora_target_modules`.

    Sorted and de-duplicated, e.g. Llama: down_proj, gate_proj, k_proj, o_proj, q_proj, up_proj, v_proj.
    """
    names: set[str] = set()
    head = model.get_output_embeddings()
    head_names = {name.split(".")[-1] for name, module in model.named_modules() if module is head and name}
    if settings.lora_target_linear:
        for name, module in model.named_modules():
            if not name or module is head or not is_linear(module):
                continue
            leaf = name.split(".")[-1]
            if leaf not in head_names:
                names.add(leaf)
    for requested in settings.lora_target_modules or ():  # the recipe check knows lm_head; this, any model's name
        if requested.split(".")[-1] in head_names:
            raise RecipeError(f"{settings.where('lora_target_modules')}: {head_lora_message(requested)}")
    names.update(settings.lora_target_modules or ())
    if not names:
        raise RecipeError(f"{settings.where('lora_target_linear')}: the adapter found no linear layer to target")
    return sorted(names)


def lora_config(settings: Settings, model: PreTrainedModel) -> LoraConfig:
    """The peft LoraConfig a recipe describes (targets discovered on `model`)."""
    from peft import LoraConfig

    return LoraConfig(
        task_type="CAUSAL_LM",
        r=settings.lora_r,
        lora_alpha=settings.lora_alpha,
        lora_dropout=settings.lora_dropout,
        target_modules=target_modules(settings, model),
        modules_to_save=list(settings.lora_modules_to_save) if settings.lora_modules_to_save else None,
        use_dora=settings.peft_use_dora,
        use_rslora=settings.peft_use_rslora,
        bias="none",
    )


def prepare_quantized_base(model: PreTrainedModel) -> None:
    """The useful part of peft's `prepare_model_for_kbit_training`, without its waste.

    peft casts *every* non-4-bit parameter to fp32, including embed_tokens and lm_head (2 x 1 GiB more for
    Llama 3 8B, frozen). Here: freeze everything and upcast only the normalisation weights (tiny) for stable
    statistics. Input gradients are not needed: checkpointing is non-reentrant.
    """
    import torch

    for param in model.parameters():
        param.requires_grad_(False)
    for name, module in model.named_modules():
        if "norm" in type(module).__name__.lower() or name.split(".")[-1].endswith("norm"):
            for param in module.parameters(recurse=False):
                if param.dtype in (torch.float16, torch.bfloat16):
                    param.data = param.data.float()


def apply_adapter(settings: Settings, model: PreTrainedModel) -> PeftModel:
    """Wrap `model` in a trainable PeftModel (new, or continued from `lora_model_dir`); report parameter counts."""
    try:
        from peft import PeftModel, get_peft_model
    except ImportError as exc:  # pragma: no cover - peft is a hard dependency
        raise MissingDependencyError("adapters need peft: pip install peft") from exc

    if settings.load_in_4bit or settings.load_in_8bit:
        prepare_quantized_base(model)
    if settings.lora_model_dir:
        path = Path(settings.lora_model_dir).expanduser()
        if not (path / "adapter_config.json").is_file():
            raise RecipeError(f"{settings.where('lora_model_dir')}: no adapter_config.json in `{path}`")
        peft_model = PeftModel.from_pretrained(model, str(path), is_trainable=True)
        logger.info("continuing from the adapter in %s (its own r/alpha/targets apply)", path)
    else:
        peft_model = get_peft_model(model, lora_config(settings, model))
    trainable_to_fp32(peft_model)
    trainable, total = peft_model.get_nb_trainable_parameters()
    logger.info(f"trainable parameters: {trainable:,} of {total:,} ({100 * trainable / max(total, 1):.3f}%)")
    return peft_model


def trainable_to_fp32(model: torch.nn.Module) -> int:
    """Keep every trainable tensor in float32 (optimizer updates below bf16 resolution would be lost); returns how many moved."""
    import torch

    moved = 0
    for param in model.parameters():
        if param.requires_grad and param.dtype in (torch.float16, torch.bfloat16):
            param.data = param.data.float()
            moved += 1
    return moved


@contextlib.contextmanager
def keep_trainable_values(model: torch.nn.Module) -> Iterator[None]:
    """Put every trainable tensor back as it was (values and dtype) after the block: TRL's SFTTrainer and DPOTrainer cast the
    trainable parameters of a quantized model to bf16 (a CPU copy of them is held meanwhile)."""
    kept = {name: p.detach().to("cpu", copy=True) for name, p in model.named_parameters() if p.requires_grad}
    yield
    for name, param in model.named_parameters():
        if name in kept and param.dtype != kept[name].dtype:
            param.data = kept[name].to(param.device)
