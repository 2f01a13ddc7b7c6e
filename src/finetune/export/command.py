"""`finetune export recipe.yml --gguf QUANT`: the trained run as one GGUF file for llama.cpp, Ollama and LM Studio.

1. The run is merged as `finetune merge` merges it (LoRA, DoRA, rsLoRA, modules_to_save; QLoRA into the
   NF4-round-tripped base) into a temporary safetensors folder next to the output, in float32 for `f32`, bfloat16
   for `bf16` and float16 otherwise; `output_dir/merged` is used as it is only when its `merged_from.json` says it is
   this adapter (path and weights hash) merged into this base in that dtype. A full
   fine-tune's output_dir is already a model.
2. `finetune.export.gguf_llama` writes the GGUF tensor by tensor (f32, f16, bf16, q8_0, q4_0; in q4_0 the output
   embedding is Q6_K, as llama.cpp's own quantizer stores it). The K-quants
   (q4_k_m, q5_k_m, q6_k) are llama.cpp's own quantizer, called as a library through llama-cpp-python, from an
   f16 GGUF that is then removed.
3. Everything is written under temporary names and renamed at the end: an error, a full disk or Ctrl-C leaves no
   partial `.gguf` (nor merge folder) behind. Beside the GGUF goes an Ollama `Modelfile`.

Output: `output_dir/gguf/<output_dir name>-<quant>.gguf` and `output_dir/gguf/Modelfile` (FROM the latest export).
"""

from __future__ import annotations

import errno
import logging
import os
import shutil
from pathlib import Path
from types import ModuleType
from typing import Callable, Optional

from finetune.config.settings import Settings
from finetune.errors import FinetuneError, MissingDependencyError
from finetune.export.gguf_llama import PYTHON_TYPES, ExportError, Vocab, check_architecture, read_vocab, write_gguf
# The one place export reads a finished run (its directory, base, merge, tokenizer's end-of-turn tokens) from.
from finetune.export.modelfile import modelfile_stops, modelfile_text
from finetune.export.merge import MergeDtype, merge_adapter, merge_record, read_merge_record
from finetune.model.load import compute_dtype
from finetune.runs.atomic import DISK_FULL, atomic_path, temp_path, write_text
from finetune.runs.layout import GGUF_DIR, MERGED_DIR, MODEL_CONFIG, MODELFILE
from finetune.runs.read import (END_OF_TURN_MARKERS, base_model_dir, read_json, resolve_adapter_dir, stop_token_ids,
                             verify_weights)

logger = logging.getLogger(__name__)

K_QUANTS = {"q4_k_m": "LLAMA_FTYPE_MOSTLY_Q4_K_M", "q5_k_m": "LLAMA_FTYPE_MOSTLY_Q5_K_M",
            "q6_k": "LLAMA_FTYPE_MOSTLY_Q6_K"}
QUANTS = (*PYTHON_TYPES, *K_QUANTS)
MERGE_DTYPES = {"f32": "fp32", "bf16": "bf16"}  # everything else is merged in fp16
LLAMA_CPP_HINT = "pip install 'finetune[gguf]' (llama-cpp-python builds llama.cpp from source, about 12 minutes)"


def export_gguf(settings: Settings, quant: str, *, adapter_dir: str | Path | None = None,
                on_tensor: Optional[Callable[[int, int], None]] = None) -> Path:
    """Export the finished run to `output_dir/gguf/<name>-<quant>.gguf` (+ Modelfile); returns the GGUF path.

    `on_tensor(done, total)` is called after each tensor is written (default: a progress notice per 10%).
    """
    quant = quant.lower()
    if quant not in QUANTS:
        raise ExportError(f"--gguf {quant}: unknown quant type; expected one of {', '.join(QUANTS)}")
    llama_cpp = _require_llama_cpp(quant) if quant in K_QUANTS else None
    _require_gguf()
    base_config = _read_config(base_model_dir(settings) if settings.adapter is not None else
                               _full_model_dir(settings, adapter_dir))
    check_architecture(base_config, f"{settings.where('base_model')}: {settings.base_model}")

    run_dir = _run_dir(settings, adapter_dir)
    out_dir = Path(settings.output_dir) / GGUF_DIR
    name = Path(settings.output_dir).resolve().name
    final = out_dir / f"{name}-{quant}.gguf"
    f16_tmp = temp_path(out_dir / f"{final.name}.f16")
    merge_tmp = temp_path(out_dir / MERGED_DIR)
    out_dir.mkdir(parents=True, exist_ok=True)
    try:
        with atomic_path(final) as tmp:
            model_dir = _merged_model(settings, run_dir, MERGE_DTYPES.get(quant, "fp16"), merge_tmp)
            vocab, stop_tokens, template = _vocab(model_dir, run_dir)
            progress = on_tensor or _progress_notice(final.name)
            if llama_cpp is None:
                write_gguf(tmp, model_dir, vocab, name, quant, progress)
            else:
                write_gguf(f16_tmp, model_dir, vocab, name, "f16", progress)
                shutil.rmtree(merge_tmp, ignore_errors=True)  # free the disk before quantizing
                _quantize(llama_cpp, f16_tmp, tmp, K_QUANTS[quant])
                f16_tmp.unlink()
        write_text(out_dir / MODELFILE, modelfile_text(f"./{final.name}", template, stop_tokens))
    except OSError as exc:
        if exc.errno in DISK_FULL:
            raise disk_full_error(out_dir, final.name) from None
        raise
    finally:
        f16_tmp.unlink(missing_ok=True)
        shutil.rmtree(merge_tmp, ignore_errors=True)
    logger.info("wrote %s (%.2f GB); `ollama create %s -f %s` makes it an Ollama model", final,
                final.stat().st_size / 1e9, name, out_dir / "Modelfile")
    return final


def disk_full_error(out_dir: Path, name: str) -> ExportError:
    return ExportError(f"no space left on the disk of {out_dir} while exporting {name} "
                       f"({shutil.disk_usage(out_dir).free / 1e9:.1f} GB free); free some space and retry")


# --- the pieces ---------------------------------------------------------------------------------------


def _run_dir(settings: Settings, adapter_dir: str | Path | None) -> Path:
    """The finished run: the adapter directory, or a full fine-tune's model directory; ExportError otherwise."""
    if settings.adapter is None:
        return _full_model_dir(settings, adapter_dir)
    try:
        return resolve_adapter_dir(settings, adapter_dir)
    except FinetuneError as exc:
        raise ExportError(str(exc)) from None


def _merged_model(settings: Settings, run_dir: Path, dtype: MergeDtype, merge_tmp: Path) -> Path:
    """A safetensors model folder to export: the full fine-tune; `output_dir/merged` when its record
    (`merge_record`: adapter path, adapter weights hash, base, dtype) says it is this adapter merged in this
    dtype; else a fresh merge into `merge_tmp`."""
    if settings.adapter is None:
        return run_dir
    merged = Path(settings.output_dir) / MERGED_DIR
    nf4_dtype = compute_dtype(settings) if settings.load_in_4bit else None
    wanted = merge_record(run_dir, settings.base_model, dtype, nf4_dtype)
    found = read_merge_record(merged)
    if found == wanted:
        verify_weights(merged)
        logger.info("using the merged model in %s (this adapter, %s)", merged, dtype)
        return merged
    if found is not None or merged.is_dir():
        logger.info("not using %s: it was merged from %s; merging %s again", merged,
                    _describe(found) if found else "an unrecorded adapter (an older finetune)", run_dir)
    return merge_adapter(settings, adapter_dir=run_dir, out_dir=merge_tmp, dtype=dtype)


def _describe(record: dict) -> str:
    return (f"{record.get('adapter')} (sha256 {str(record.get('adapter_sha256'))[:12]}, {record.get('dtype')}, "
            f"base {record.get('base_model')})")


def _full_model_dir(settings: Settings, adapter_dir: str | Path | None) -> Path:
    path = Path(adapter_dir if adapter_dir is not None else settings.output_dir)
    if not (path / MODEL_CONFIG).is_file():
        raise ExportError(f"no trained model in {path} (config.json missing): run `finetune train` first")
    verify_weights(path)  # a cut-short or missing shard is an error naming the file, not a traceback later
    return path


def _read_config(model_dir: Path) -> dict:
    path = Path(model_dir) / MODEL_CONFIG
    if not path.is_file():
        raise ExportError(f"{path} is missing")
    return read_json(path)


def _vocab(model_dir: Path, run_dir: Path) -> tuple[Vocab, list[str], Optional[str]]:
    """(the GGUF vocabulary, the stop token strings, the chat template) from the exported model's tokenizer."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    stop = stop_token_ids(tokenizer, None, run_dir)
    if not stop:
        raise ExportError(f"{model_dir}: the tokenizer has no end-of-turn token (eos); set special_tokens.eos_token")
    template = tokenizer.chat_template if isinstance(tokenizer.chat_template, str) else None
    vocab_ids = tokenizer.get_vocab()
    markers = [vocab_ids[m] for m in END_OF_TURN_MARKERS if template and m in template and m in vocab_ids]
    rows = _read_config(model_dir)["vocab_size"]
    vocab = read_vocab(tokenizer, model_dir, rows, eos=stop[0], eot=(markers or stop)[0])
    return vocab, modelfile_stops(tokenizer, stop), template


def _quantize(llama_cpp: ModuleType, source: Path, target: Path, ftype_name: str) -> None:
    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = getattr(llama_cpp, ftype_name)
    params.nthread = os.cpu_count() or 1
    logger.info("quantizing to %s with llama.cpp", ftype_name.removeprefix("LLAMA_FTYPE_MOSTLY_").lower())
    if llama_cpp.llama_model_quantize(str(source).encode(), str(target).encode(), params) != 0:
        free = shutil.disk_usage(target.parent).free
        if free < source.stat().st_size // 2:
            raise OSError(errno.ENOSPC, "llama.cpp's quantizer failed", str(target))
        raise FinetuneError(f"llama.cpp's quantizer failed on {source} (its log is above)")


def _progress_notice(label: str) -> Callable[[int, int], None]:
    def notice(done: int, total: int) -> None:
        if done == total or done * 10 // total != (done - 1) * 10 // total:
            logger.info("%s: %d/%d tensors written", label, done, total)

    return notice


def _require_gguf() -> None:
    import importlib.util

    if importlib.util.find_spec("gguf") is None:
        raise MissingDependencyError(f"finetune export needs llama.cpp's gguf package: {LLAMA_CPP_HINT}")


def _require_llama_cpp(quant: str) -> ModuleType:
    try:
        import llama_cpp
    except ImportError:
        raise MissingDependencyError(f"--gguf {quant} is quantized by llama.cpp through llama-cpp-python, which is "
                                     f"not installed: {LLAMA_CPP_HINT}; or export f16, bf16, q8_0 or q4_0, which "
                                     "need only the gguf package") from None
    return llama_cpp
