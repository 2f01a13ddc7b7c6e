"""Every on-disk name of a run, and the one parser and formatter of checkpoint directory names.

A run directory (`output_dir`) holds, once training finished:

    adapter_config.json, adapter_model.safetensors   the LoRA/DoRA adapter (or config.json + model*.safetensors)
    tokenizer files, generation_config.json          the trained tokenizer with its chat template
    recipe.yml                                       the resolved recipe, secrets redacted
    run_summary.json                                 written last: its presence means the run finished
    loss.png                                         the loss curve
    checkpoint-<step>/                               per the save cadence; `.complete` written last when sealed
    merged/                                          `finetune merge`: the standalone model (+ merged_from.json)
    gguf/                                            `finetune export`: <name>-<quant>.gguf and a Modelfile
    report/                                          `finetune report`
    preferences.jsonl                                `finetune serve`: the preferences captured while chatting

Code elsewhere names these through the constants below, never by spelling them.
"""

from __future__ import annotations

from pathlib import Path

# --- the run directory ------------------------------------------------------------------------------
RUN_SUMMARY = "run_summary.json"  # written last: a finished run
RECIPE = "recipe.yml"
LOSS_PLOT = "loss.png"
MERGED_DIR = "merged"
MERGE_SOURCE = "merged_from.json"  # inside MERGED_DIR: what it was merged from (adapter, weights hash, dtype)
GGUF_DIR = "gguf"
MODELFILE = "Modelfile"
REPORT_DIR = "report"
PREFERENCES = "preferences.jsonl"

# --- a model or adapter directory (Hugging Face names) ---------------------------------------------
ADAPTER_CONFIG = "adapter_config.json"
ADAPTER_WEIGHTS = "adapter_model.safetensors"
MODEL_CONFIG = "config.json"
GENERATION_CONFIG = "generation_config.json"
TOKENIZER_CONFIG = "tokenizer_config.json"
SAFETENSORS_INDEX = "model.safetensors.index.json"

# --- checkpoints ------------------------------------------------------------------------------------
CHECKPOINT_PREFIX = "checkpoint-"
CHECKPOINT_GLOB = CHECKPOINT_PREFIX + "*"
COMPLETE_MARKER = ".complete"  # written last into a checkpoint, listing its files and their sizes
TRAINER_STATE = "trainer_state.json"
DEEPSPEED_LATEST = "latest"  # DeepSpeed's file naming its `global_stepN` state directory


def checkpoint_name(step: int) -> str:
    """The directory name of the checkpoint saved at optimizer step `step`."""
    return f"{CHECKPOINT_PREFIX}{int(step)}"


def checkpoint_dir(output_dir: str | Path, step: int) -> Path:
    return Path(output_dir) / checkpoint_name(step)


def checkpoint_step(name: str) -> int | None:
    """The step of a checkpoint directory name (`checkpoint-40` -> 40); None for any other name
    (`checkpoint-x`, `checkpoint-`, `checkpoint-40.tmp`, `old-checkpoint-40`)."""
    if not name.startswith(CHECKPOINT_PREFIX):
        return None
    tail = name[len(CHECKPOINT_PREFIX):]
    return int(tail) if tail.isascii() and tail.isdigit() else None


def checkpoint_dirs(output_dir: str | Path) -> list[Path]:
    """The checkpoint directories in `output_dir`, by step (not by name: 9 before 10); other names are ignored."""
    found = []
    for path in Path(output_dir).glob(CHECKPOINT_GLOB):
        step = checkpoint_step(path.name)
        if step is not None and path.is_dir():
            found.append((step, path))
    return [path for _, path in sorted(found)]
