"""Cross-field contradictions of a recipe: each as (the key to point at, what is wrong and what to do).

Imports run one way: settings imports this module; the `Settings` type is named here for type checking
only. `Settings._check` reports all of them at once; the recipe loader gives each its YAML line. A key may be a
recipe path tuple, e.g. ("datasets", 0, "type").
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from finetune.config.settings import Settings

# Output-head module names (Llama-class and most causal LMs: lm_head; GPT-NeoX: embed_out).
OUTPUT_HEADS = ("lm_head", "embed_out")


def contradictions(s: Settings) -> list[tuple[str, str]]:
    """Cross-field problems as (key to point at, message); empty when the recipe is coherent."""
    out: list[tuple[str, str]] = []
    if s.adapter == "qlora" and not s.load_in_4bit:
        out.append(("adapter", "adapter: qlora needs load_in_4bit: true"))
    if s.load_in_4bit and s.adapter is None:
        out.append(("load_in_4bit", "a 4-bit base cannot be trained in full; set adapter: qlora"))
    if s.load_in_8bit and s.adapter is None:
        out.append(("load_in_8bit", "an 8-bit base cannot be trained in full; set adapter: lora"))
    if s.load_in_4bit and s.load_in_8bit:
        out.append(("load_in_8bit", "load_in_4bit and load_in_8bit are exclusive; keep one"))
    if s.adapter == "lora" and s.load_in_4bit:
        out.append(("adapter", "LoRA on a 4-bit base is QLoRA; write adapter: qlora"))
    if s.warmup_steps is not None and s.warmup_ratio is not None:
        out.append(("warmup_steps", "set warmup_steps or warmup_ratio, not both"))
    if s.save_steps is not None and s.saves_per_epoch is not None:
        out.append(("save_steps", "set save_steps or saves_per_epoch, not both"))
    if s.eval_steps is not None and s.evals_per_epoch is not None:
        out.append(("eval_steps", "set eval_steps or evals_per_epoch, not both"))
    if s.evals_enabled and s.val_set_size == 0:
        key = "evals_per_epoch" if s.evals_per_epoch is not None else "eval_steps"
        out.append((key, "evaluation needs a validation split; set val_set_size (e.g. 0.05)"))
    if s.early_stopping_patience is not None and not s.evals_enabled:
        out.append(("early_stopping_patience", "early stopping needs evaluations; set evals_per_epoch or eval_steps"))
    if s.val_set_size >= 1 and s.val_set_size != int(s.val_set_size):
        out.append(("val_set_size", "val_set_size is a fraction below 1 or a whole count of conversations"))
    if s.val_split != "random" and s.val_set_size == 0:
        out.append(("val_split", f"val_split: {s.val_split} chooses the validation conversations; set "
                                 "val_set_size too (a fraction such as 0.05, or a count such as 200)"))
    if s.val_split != "random" and s.rl is not None:
        out.append(("val_split", f"val_split: {s.val_split} applies to conversations; preference pairs "
                                 f"(rl: {s.rl}) are held out at random: remove val_split"))
    if s.bf16 is True and s.fp16:
        out.append(("fp16", "bf16 and fp16 are exclusive; keep one"))
    if s.eval_sample_packing and not s.sample_packing:
        out.append(("eval_sample_packing", "eval_sample_packing needs sample_packing: true"))
    if s.adapter is None:
        for key in ("peft_use_dora", "peft_use_rslora"):
            if getattr(s, key):
                out.append((key, f"{key} needs an adapter (adapter: lora or qlora)"))
        for key in ("lora_modules_to_save", "lora_model_dir", "lora_target_modules"):
            if getattr(s, key):
                out.append((key, f"{key} needs an adapter (adapter: lora or qlora)"))
    elif not s.lora_target_linear and not s.lora_target_modules:
        out.append(("adapter", "the adapter targets no module; set lora_target_linear: true or lora_target_modules"))
    for index, name in enumerate(s.lora_target_modules or ()):
        if s.adapter is not None and name.split(".")[-1] in OUTPUT_HEADS:
            out.append((("lora_target_modules", index), head_lora_message(name)))
    if s.chat_template == "jinja" and not s.chat_template_jinja:
        out.append(("chat_template", "chat_template: jinja needs chat_template_jinja (inline or a file path)"))
    if s.dedup != "near":
        for key in ("dedup_threshold", "dedup_ngram"):
            if getattr(s, key) != type(s).model_fields[key].default:  # a resolved recipe lists defaults
                out.append((key, f"{key} is used only with dedup: near"))
    if s.chat_template_jinja and s.chat_template != "jinja":
        out.append(("chat_template_jinja", "chat_template_jinja is used only with chat_template: jinja"))
    out.extend(rl_contradictions(s))
    return out


def head_lora_message(name: str) -> str:
    """Why LoRA on the output head is refused, and what trains the head instead."""
    return (f"LoRA on the output head `{name}` is not supported (TRL refuses it, and the trained-token loss reads the "
            f"head's weight directly); remove it here, and to train the head list it in "
            f"`lora_modules_to_save: [{name.split('.')[-1]}]` (a full trained copy, saved with the adapter)")


def rl_contradictions(s: Settings) -> list[tuple[str | tuple, str]]:
    """Preference-tuning problems (a key may be a recipe path tuple, e.g. ("datasets", 0, "type"))."""
    out: list[tuple[str | tuple, str]] = []
    pairs = [i for i, d in enumerate(s.datasets) if d.is_pairs]
    if s.rl is None:
        for index in pairs:
            out.append(((("datasets", index, "type")),
                        f"type: {s.datasets[index].type} is preference data; set `rl: dpo` to tune on pairs"))
        defaults = type(s).model_fields
        for key in ("rl_beta", "dpo_loss_type", "dpo_label_smoothing", "precompute_ref_log_probs",
                    "rl_adapter_ref_model"):
            if getattr(s, key) != defaults[key].default:
                out.append((key, f"{key} is used only with rl: dpo or ipo"))
        return out
    if not pairs:
        out.append(("rl", f"rl: {s.rl} needs a preference dataset (datasets[].type: chat_template.default, "
                          "chat_template.argilla_chat, llama3.intel or chatml.intel)"))
    for index, dataset in enumerate(s.datasets):
        if not dataset.is_pairs and pairs:
            out.append((("datasets", index, "type"),
                        f"type: {dataset.type} is SFT data; with rl: {s.rl} every dataset must be preference pairs"))
    if s.sample_packing:
        out.append(("sample_packing", f"sample_packing does not apply to rl: {s.rl} (pairs are never packed)"))
    if s.train_on_inputs:
        out.append(("train_on_inputs", f"rl: {s.rl} scores only the replies; remove train_on_inputs"))
    if s.rl == "ipo" and s.dpo_loss_type != "sigmoid":
        out.append(("dpo_loss_type", "rl: ipo is the ipo loss; write rl: dpo with dpo_loss_type, or drop it"))
    loss = "ipo" if s.rl == "ipo" else s.dpo_loss_type
    if loss == "exo_pair" and s.dpo_label_smoothing == 0:
        out.append(("dpo_label_smoothing", "dpo_loss_type: exo_pair needs dpo_label_smoothing above 0 (e.g. 0.001)"))
    if s.rl_adapter_ref_model:
        out.append(("rl_adapter_ref_model", "finetune never loads a second model as the reference; remove "
                                            "rl_adapter_ref_model (the adapter-disabled model is the reference)"))
    if s.adapter is None and not s.precompute_ref_log_probs:
        out.append(("precompute_ref_log_probs", f"full fine-tuning with rl: {s.rl} keeps no reference model; "
                                                "set precompute_ref_log_probs: true or use an adapter"))
    for index in pairs:
        name = s.datasets[index].type.split(".")[0]
        if name in ("llama3", "chatml") and s.chat_template in ("llama3", "chatml") and s.chat_template != name:
            out.append((("datasets", index, "type"),
                        f"type: {s.datasets[index].type} names the {name} template but chat_template is "
                        f"{s.chat_template}; use {s.chat_template}.intel or chat_template: {name}"))
    return out
