"""The one reader of a finished run: where its adapter or model is, its tokenizer, eos list, adapter kind.

`finetune chat`, `evaluate`, `merge` and `export` read a run directory (`output_dir`, or the
`--adapter DIR` given) only through this module. Every file is read through `read_json`, so
a damaged run gives a DataError (exit 2) naming the file, never a traceback; weights files are
checked with `verify_safetensors` (whole header, size matching it) before anything loads them.
"""

from __future__ import annotations

import json
import logging
import struct
import zipfile
from pathlib import Path
from typing import Any, Literal

from finetune.config.settings import Settings
from finetune.data.templates import resolve_template
from finetune.errors import DataError, FinetuneError, RecipeError
from finetune.model.tokenizer import eos_ids, load_tokenizer, require_local_or_cached

logger = logging.getLogger(__name__)

TRAIN_HINT = "run `finetune train` first or pass --adapter DIR"
COMPLETE_MARKER = ".complete"  # written last into a checkpoint, after its files were fsynced
REPAIR_HINT = "train again, restore the file, or pass --adapter DIR of an intact checkpoint"
END_OF_TURN_MARKERS = ("<|eot_id|>", "<|im_end|>", "<|end|>", "<end_of_turn>", "<|eom_id|>")
AdapterKind = Literal["lora", "dora", "full"]


def read_json(path: Path) -> dict[str, Any]:
    """A JSON object from a run file; DataError naming the file when it is unreadable or not an object."""
    try:
        value = json.loads(Path(path).read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise DataError(f"{path} is missing; {TRAIN_HINT}") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise DataError(f"{path} is damaged ({exc}); {REPAIR_HINT}") from None
    if not isinstance(value, dict):
        raise DataError(f"{path} is damaged: expected a JSON object, found {type(value).__name__}; {REPAIR_HINT}")
    return value


def verify_safetensors(path: Path) -> None:
    """DataError naming `path` unless it is a whole safetensors file: an 8-byte little-endian header length,
    a JSON header, and tensor data ending exactly at the end of the file (a cut-short copy fails here)."""
    path = Path(path)
    try:
        size = path.stat().st_size
        with path.open("rb") as handle:
            head = handle.read(8)
            header_len = struct.unpack("<Q", head)[0] if len(head) == 8 else -1
            if not 0 < header_len <= size - 8:
                raise DataError(f"{path} is damaged: {size} bytes, too short for its safetensors header; "
                                f"{REPAIR_HINT}")
            header = json.loads(handle.read(header_len))
    except FileNotFoundError:
        raise DataError(f"{path} is missing; {TRAIN_HINT}") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise DataError(f"{path} is damaged: unreadable safetensors header ({exc}); {REPAIR_HINT}") from None
    ends = [info.get("data_offsets", [0, 0])[1] for key, info in header.items()
            if key != "__metadata__" and isinstance(info, dict)] if isinstance(header, dict) else None
    if ends is None or not all(isinstance(end, int) for end in ends):
        raise DataError(f"{path} is damaged: its safetensors header is not a table of tensors; {REPAIR_HINT}")
    expected = 8 + header_len + max(ends, default=0)
    if expected != size:
        raise DataError(f"{path} is damaged: {size} bytes, its header says {expected} (cut short by a crash, "
                        f"a full disk or a partial copy?); {REPAIR_HINT}")


def checkpoint_step(name: str) -> int:
    """The step of a `checkpoint-N` directory name; -1 for any other name."""
    tail = name.rpartition("-")[2]
    return int(tail) if tail.isdigit() else -1


def resolve_adapter_dir(settings: Settings, adapter_dir: str | Path | None = None) -> Path:
    """The adapter directory (default: `output_dir`); FinetuneError with a hint when it holds no adapter."""
    path = Path(adapter_dir if adapter_dir is not None else settings.output_dir).expanduser()
    origin = "--adapter" if adapter_dir is not None else f"output_dir ({settings.where('output_dir')})"
    if not path.is_dir():
        raise FinetuneError(f"no adapter at {path} ({origin}): the directory does not exist; {TRAIN_HINT}")
    if not (path / "adapter_config.json").is_file():
        checkpoints = sorted(path.glob("checkpoint-*/adapter_config.json"), key=lambda p: checkpoint_step(p.parent.name))
        latest = f"; the latest checkpoint is {checkpoints[-1].parent} (--adapter it)" if checkpoints else ""
        raise FinetuneError(f"no adapter in {path} ({origin}): adapter_config.json is missing{latest}; {TRAIN_HINT}")
    return path


def base_model_dir(settings: Settings) -> Path:
    """The local directory of `base_model` (a path, or a hub id already in the cache); RecipeError otherwise."""
    where = settings.where("base_model")
    require_local_or_cached(settings.base_model, where, "base_model")
    path = Path(settings.base_model).expanduser()
    if path.is_dir():
        return path
    try:
        from huggingface_hub import snapshot_download

        return Path(snapshot_download(settings.base_model, local_files_only=True))
    except Exception as exc:  # LocalEntryNotFoundError, HFValidationError, ...
        raise RecipeError(
            f"{where}: base_model `{settings.base_model}` is not a local directory nor in the Hugging Face cache "
            f"({type(exc).__name__}); download it first or point base_model at a local directory"
        ) from None


def load_run_tokenizer(settings: Settings, run_dir: Path | None) -> Any:
    """The tokenizer saved with the run (chat template, trained eos/pad); else the recipe's, with its template."""
    from transformers import AutoTokenizer

    if run_dir is not None and (Path(run_dir) / "tokenizer_config.json").is_file():
        read_json(Path(run_dir) / "tokenizer_config.json")
        try:
            return AutoTokenizer.from_pretrained(run_dir)
        except Exception as exc:  # a missing/damaged tokenizer.json, vocab or merges file
            raise DataError(f"{run_dir}: the saved tokenizer cannot be loaded ({type(exc).__name__}: {exc}); "
                            "restore its tokenizer files (tokenizer.json, tokenizer_config.json) or train again") from None
    tokenizer = load_tokenizer(settings)
    template = resolve_template(settings.chat_template, settings.chat_template_jinja, tokenizer)
    tokenizer.chat_template = template.jinja_source
    if run_dir is not None:
        logger.info("%s holds no tokenizer; using the recipe's tokenizer and chat template", run_dir)
    return tokenizer


def read_adapter_config(adapter_dir: Path) -> dict[str, Any]:
    """The LoRA/DoRA adapter config; FinetuneError for another peft type, DataError for a damaged file."""
    config = read_json(adapter_dir / "adapter_config.json")
    if config.get("peft_type", "LORA") != "LORA":
        raise FinetuneError(f"{adapter_dir}: only LoRA/DoRA adapters are supported (peft_type {config['peft_type']})")
    verify_safetensors(adapter_dir / "adapter_model.safetensors")
    return config


def verify_weights(run_dir: Path) -> None:
    """DataError naming the first missing or damaged weights file of an adapter or model directory."""
    run_dir = Path(run_dir)
    index = run_dir / "model.safetensors.index.json"
    if index.is_file():
        shards = read_json(index).get("weight_map", {})
        for name in sorted(set(shards.values()) if isinstance(shards, dict) else ()):
            verify_safetensors(run_dir / name)
    files = sorted(run_dir.glob("*.safetensors"))
    if not files and not index.is_file() and not any(run_dir.glob("*.bin")):
        raise DataError(f"{run_dir} holds no weights (adapter_model.safetensors or model*.safetensors); {REPAIR_HINT}")
    for path in files:
        verify_safetensors(path)


def verify_checkpoint(checkpoint: Path) -> None:
    """DataError naming what is missing or damaged in a `checkpoint-N` directory: its trainer state,
    its adapter/model config, every weights file and its optimizer/scheduler/RNG archives. A checkpoint from before the `.complete` marker
    (COMPLETE_MARKER) is accepted when all of that verifies; the marker is an extra guarantee."""
    checkpoint = Path(checkpoint)
    read_json(checkpoint / "trainer_state.json")
    for name in ("adapter_config.json", "config.json"):
        if (checkpoint / name).is_file():
            read_json(checkpoint / name)
    for path in sorted([*checkpoint.glob("*.pt"), *checkpoint.glob("*.pth")]):  # optimizer, scheduler, RNG state
        if not zipfile.is_zipfile(path):  # torch.save writes a zip archive; a cut-short one lacks its end record
            raise DataError(f"{path} is damaged: not a whole torch.save archive (cut short?); {REPAIR_HINT}")
    weights = any(checkpoint.glob("*.safetensors")) or (checkpoint / "model.safetensors.index.json").is_file()
    if not weights and _deepspeed_state(checkpoint):
        return  # ZeRO-3 without stage3_gather_16bit_weights_on_model_save: the weights are in DeepSpeed's state
    verify_weights(checkpoint)


def _deepspeed_state(checkpoint: Path) -> bool:
    """Whether `checkpoint` holds DeepSpeed's own state: a `latest` file naming a non-empty `global_step*` dir."""
    try:
        tag = (checkpoint / "latest").read_text(encoding="utf-8").strip()
    except (OSError, UnicodeDecodeError):
        return False
    return bool(tag) and (checkpoint / tag).is_dir() and any((checkpoint / tag).iterdir())


def adapter_kind(run_dir: Path) -> AdapterKind:
    """`lora`/`dora` for an adapter directory, `full` for a fully fine-tuned model; FinetuneError otherwise."""
    if (run_dir / "adapter_config.json").is_file():
        return "dora" if read_adapter_config(run_dir).get("use_dora") else "lora"
    if (run_dir / "config.json").is_file():
        read_json(run_dir / "config.json")
        verify_weights(run_dir)
        return "full"
    raise FinetuneError(f"{run_dir} holds neither an adapter (adapter_config.json) nor a model (config.json); "
                        f"{TRAIN_HINT}")




def stop_token_ids(tokenizer: Any, generation_config: Any = None, run_dir: Path | None = None) -> list[int]:
    """Ids that end an answer: the trained eos first, then saved/base generation eos ids, then the template's marker."""
    saved = None
    if run_dir is not None and (Path(run_dir) / "generation_config.json").is_file():
        saved = read_json(Path(run_dir) / "generation_config.json").get("eos_token_id")
    template = tokenizer.chat_template if isinstance(tokenizer.chat_template, str) else ""
    vocab = tokenizer.get_vocab()
    markers = [vocab[marker] for marker in END_OF_TURN_MARKERS if marker in template and marker in vocab]
    return eos_ids(tokenizer.eos_token_id, saved, getattr(generation_config, "eos_token_id", None), markers)
