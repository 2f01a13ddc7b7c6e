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
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, Sequence

from finetune.config.settings import Settings
from finetune.data.templates import resolve_template
from finetune.errors import DataError, FinetuneError, RecipeError
from finetune.model.tokenizer import eos_ids, load_tokenizer, require_local_or_cached
from finetune.runs.layout import (ADAPTER_CONFIG, ADAPTER_WEIGHTS, GENERATION_CONFIG, MODEL_CONFIG, SAFETENSORS_INDEX,
                                  TOKENIZER_CONFIG, checkpoint_dirs)

if TYPE_CHECKING:
    from transformers import GenerationConfig, PreTrainedTokenizerBase

logger = logging.getLogger(__name__)

TRAIN_HINT = "run `finetune train` first or pass --adapter DIR"
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


def resolve_adapter_dir(settings: Settings, adapter_dir: str | Path | None = None) -> Path:
    """The adapter directory (default: `output_dir`); FinetuneError with a hint when it holds no adapter."""
    path = Path(adapter_dir if adapter_dir is not None else settings.output_dir).expanduser()
    origin = "--adapter" if adapter_dir is not None else f"output_dir ({settings.where('output_dir')})"
    if not path.is_dir():
        raise FinetuneError(f"no adapter at {path} ({origin}): the directory does not exist; {TRAIN_HINT}")
    if not (path / ADAPTER_CONFIG).is_file():
        checkpoints = [p for p in checkpoint_dirs(path) if (p / ADAPTER_CONFIG).is_file()]
        latest = f"; the latest checkpoint is {checkpoints[-1]} (--adapter it)" if checkpoints else ""
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


def load_run_tokenizer(settings: Settings, run_dir: Path | None) -> PreTrainedTokenizerBase:
    """The tokenizer saved with the run (chat template, trained eos/pad); else the recipe's, with its template."""
    from transformers import AutoTokenizer

    if run_dir is not None and (Path(run_dir) / TOKENIZER_CONFIG).is_file():
        read_json(Path(run_dir) / TOKENIZER_CONFIG)
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
    config = read_json(adapter_dir / ADAPTER_CONFIG)
    if config.get("peft_type", "LORA") != "LORA":
        raise FinetuneError(f"{adapter_dir}: only LoRA/DoRA adapters are supported (peft_type {config['peft_type']})")
    verify_safetensors(adapter_dir / ADAPTER_WEIGHTS)
    return config


def verify_weights(run_dir: Path) -> None:
    """DataError naming the first missing or damaged weights file of an adapter or model directory."""
    run_dir = Path(run_dir)
    index = run_dir / SAFETENSORS_INDEX
    if index.is_file():
        shards = read_json(index).get("weight_map", {})
        for name in sorted(set(shards.values()) if isinstance(shards, dict) else ()):
            verify_safetensors(run_dir / name)
    files = sorted(run_dir.glob("*.safetensors"))
    if not files and not index.is_file() and not any(run_dir.glob("*.bin")):
        raise DataError(f"{run_dir} holds no weights (adapter_model.safetensors or model*.safetensors); {REPAIR_HINT}")
    for path in files:
        verify_safetensors(path)


def adapter_kind(run_dir: Path) -> AdapterKind:
    """`lora`/`dora` for an adapter directory, `full` for a fully fine-tuned model; FinetuneError otherwise."""
    if (run_dir / ADAPTER_CONFIG).is_file():
        return "dora" if read_adapter_config(run_dir).get("use_dora") else "lora"
    if (run_dir / MODEL_CONFIG).is_file():
        read_json(run_dir / MODEL_CONFIG)
        verify_weights(run_dir)
        return "full"
    raise FinetuneError(f"{run_dir} holds neither an adapter (adapter_config.json) nor a model (config.json); "
                        f"{TRAIN_HINT}")

def stop_token_ids(tokenizer: PreTrainedTokenizerBase, generation_config: GenerationConfig | None = None,
                   run_dir: Path | None = None) -> list[int]:
    """Ids that end an answer: the trained eos first, then saved/base generation eos ids, then the template's marker."""
    saved = None
    if run_dir is not None and (Path(run_dir) / GENERATION_CONFIG).is_file():
        saved = read_json(Path(run_dir) / GENERATION_CONFIG).get("eos_token_id")
    template = tokenizer.chat_template if isinstance(tokenizer.chat_template, str) else ""
    vocab = tokenizer.get_vocab()
    markers = [vocab[marker] for marker in END_OF_TURN_MARKERS if marker in template and marker in vocab]
    return eos_ids(tokenizer.eos_token_id, saved, getattr(generation_config, "eos_token_id", None), markers)


STOP_PROBE = "finetune stop probe"  # an assistant reply whose rendering shows what the template writes after it


def stop_strings(tokenizer: PreTrainedTokenizerBase, *, where: str | None = None) -> list[str]:
    """The strings at which a reply ends, for every path that generates (chat, evaluate, report, serve) and the
    Modelfile's `PARAMETER stop` lines: what the tokenizer's chat template writes right after an assistant
    reply (`<|eot_id|>`, `<|im_end|>`, ... from END_OF_TURN_MARKERS, or the eos token), then the eos token.

    Generation must stop when the generated TEXT contains one of them: with `chat_template: chatml` on a
    Llama 3 tokenizer, `<|im_end|>` is plain text split into several tokens, which no stop id can catch.
    Cut the reply there with `cut_at_stop`. When the template writes no end of turn at all nothing could stop a
    reply: FinetuneError, or RecipeError located at `where` (the recipe line of chat_template) when given, so a
    recipe check can refuse the recipe before training."""
    eos = tokenizer.eos_token if isinstance(tokenizer.eos_token, str) and tokenizer.eos_token else None
    candidates = [*END_OF_TURN_MARKERS, *([eos] if eos else [])]
    template = tokenizer.chat_template if isinstance(tokenizer.chat_template, str) else ""
    if not template:
        return [eos] if eos else []
    messages = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": STOP_PROBE}]
    try:
        rendered = tokenizer.apply_chat_template(messages, tokenize=False)
        after = rendered[rendered.rindex(STOP_PROBE) + len(STOP_PROBE):]
    except Exception:  # a template that refuses these roles, or rewrites the content: read its source instead
        after = template
    found = sorted((after.index(c), c) for c in dict.fromkeys(candidates) if c in after)
    if not found:
        message = (f"the chat template writes no end-of-turn marker after a reply (looked for "
                   f"{', '.join(candidates)}), so generation could never stop; set special_tokens.eos_token to the "
                   "string that ends a turn in your template")
        raise RecipeError(f"{where}: {message}") if where else FinetuneError(message)
    return list(dict.fromkeys([c for _, c in found] + ([eos] if eos else [])))


def cut_at_stop(text: str, stops: Sequence[str]) -> tuple[str, bool]:
    """(`text` up to the first stop string, whether one was found)."""
    cut = min((i for i in (text.find(s) for s in stops if s) if i >= 0), default=-1)
    return (text[:cut], True) if cut >= 0 else (text, False)
