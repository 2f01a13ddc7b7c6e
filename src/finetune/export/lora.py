"""`finetune export recipe.yml --gguf f16 --adapter-only`: the LoRA adapter alone, as a llama.cpp GGUF adapter.

One base GGUF, many small adapters: llama.cpp takes it with `--lora FILE`, llama-cpp-python with `lora_path=`,
Ollama with an `ADAPTER` line under `FROM <the base>`. Facts from llama.cpp (`convert_lora_to_gguf.py` and
`llama-adapter.cpp`, read, not copied):
- `general.type = adapter`, `adapter.type = lora`, `adapter.lora.alpha` (float32); the architecture is the base's;
- each adapted weight `W` gives two tensors named after the base tensor, `<name>.lora_a` (PEFT's lora_A, r x in)
  and `<name>.lora_b` (lora_B, out x r); the update llama.cpp adds is `alpha / r * B @ A`;
- Q and K are stored in llama.cpp's interleaved RoPE row order, so lora_B's rows (the output rows) are permuted
  as the base weight's are; lora_A is not.

What a llama.cpp adapter cannot express is refused, naming the setting, rather than exported wrongly: DoRA (a
per-column magnitude), `lora_modules_to_save` and added tokens (whole tensors, not low-rank updates), LoRA on the
embeddings, and per-module rank or alpha patterns. rsLoRA scales by alpha / sqrt(r); the file stores the alpha
that gives that scale under llama.cpp's alpha / r. A QLoRA adapter was trained against the NF4-rounded base: it
applies to any base GGUF of the same model, whose rounding differs slightly from training's.
"""

from __future__ import annotations

import logging
import math
import re
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Optional

from finetune.config.settings import Settings
from finetune.errors import FinetuneError
from finetune.export.command import disk_full_error
from finetune.export.modelfile import modelfile_stops, modelfile_text
from finetune.export.gguf_llama import ExportError, check_architecture, convert_tensor, gguf_name, head_dim, tensor_type
from finetune.runs.atomic import DISK_FULL, atomic_path, write_text
from finetune.runs.layout import ADAPTER_CONFIG, ADAPTER_WEIGHTS, GGUF_DIR, MODEL_CONFIG, MODELFILE
from finetune.runs.read import base_model_dir, read_json, resolve_adapter_dir, stop_token_ids, verify_safetensors

if TYPE_CHECKING:
    import torch

logger = logging.getLogger(__name__)

ADAPTER_QUANTS = ("f32", "f16", "bf16", "q8_0")  # the types llama.cpp's own adapter converter writes
LORA_KEY = re.compile(r"base_model\.model\.(.+)\.lora_([AB])\.weight")


def export_lora_gguf(settings: Settings, quant: str, *, adapter_dir: str | Path | None = None,
                     base_gguf: str | Path | None = None) -> Path:
    """Write the run's adapter to `output_dir/gguf/<name>-lora-<quant>.gguf`; with `base_gguf`, also a Modelfile
    that stacks it on that base. Returns the adapter GGUF's path."""
    quant = quant.lower()
    if settings.adapter is None:
        raise ExportError(f"{settings.where('output_dir')}: --adapter-only needs a LoRA run; this recipe is a full "
                          "fine-tune (adapter is not set): export it without --adapter-only")
    if quant not in ADAPTER_QUANTS:
        raise ExportError(f"--gguf {quant} --adapter-only: adapters are written as {', '.join(ADAPTER_QUANTS)} "
                          "(llama.cpp applies them to a base of any quant type)")
    try:
        run_dir = resolve_adapter_dir(settings, adapter_dir)
    except FinetuneError as exc:
        raise ExportError(str(exc)) from None
    base_config = read_json(base_model_dir(settings) / MODEL_CONFIG)
    check_architecture(base_config, f"{settings.where('base_model')}: {settings.base_model}")
    tensors, alpha = read_lora(run_dir, base_config)

    out_dir = Path(settings.output_dir) / GGUF_DIR
    name = Path(settings.output_dir).resolve().name
    final = out_dir / f"{name}-lora-{quant}.gguf"
    out_dir.mkdir(parents=True, exist_ok=True)
    try:
        with atomic_path(final) as tmp:
            write_lora_gguf(tmp, tensors, base_config, alpha, name, quant)
        if base_gguf is not None:
            _write_modelfile(out_dir, final.name, Path(base_gguf), run_dir)
    except OSError as exc:
        if exc.errno in DISK_FULL:
            raise disk_full_error(out_dir, final.name) from None
        raise
    logger.info("wrote %s (%.1f MB): llama.cpp `--lora %s` on a GGUF of %s%s", final, final.stat().st_size / 1e6,
                final.name, settings.base_model,
                "" if base_gguf is not None else "; pass --base-gguf FILE for an Ollama Modelfile that stacks them")
    return final


def read_lora(run_dir: Path, base_config: dict) -> tuple[dict[str, tuple[torch.Tensor, torch.Tensor]], float]:
    """{HF weight key: (lora_A, lora_B)} in float32, and the alpha that gives PEFT's scale under llama.cpp's
    alpha / r; ExportError for anything a llama.cpp adapter cannot hold."""
    from safetensors.torch import load_file

    config = read_json(run_dir / ADAPTER_CONFIG)
    where = run_dir / ADAPTER_CONFIG
    if config.get("use_dora"):
        raise ExportError(f"{where}: a DoRA adapter (peft_use_dora) cannot be a llama.cpp LoRA adapter, which has "
                          "no magnitude vector; export the merged model instead (drop --adapter-only)")
    if config.get("modules_to_save"):
        raise ExportError(f"{where}: lora_modules_to_save {config['modules_to_save']} are whole tensors, not "
                          "low-rank updates, and a llama.cpp adapter cannot hold them; export the merged model "
                          "instead (drop --adapter-only)")
    if config.get("rank_pattern") or config.get("alpha_pattern"):
        raise ExportError(f"{where}: per-module rank_pattern/alpha_pattern; a llama.cpp adapter has one alpha")
    weights = run_dir / ADAPTER_WEIGHTS
    verify_safetensors(weights)
    pairs: dict[str, dict[str, Any]] = {}
    for key, value in load_file(str(weights)).items():
        match = LORA_KEY.fullmatch(key)
        if match is None:
            what = "LoRA on the embeddings" if "lora_embedding" in key else "a tensor that is not lora_A/lora_B"
            raise ExportError(f"{weights}: `{key}` is {what}, which a llama.cpp adapter cannot hold; export the "
                              "merged model instead (drop --adapter-only)")
        pairs.setdefault(f"{match.group(1)}.weight", {})[match.group(2)] = value.float()
    if not pairs:
        raise ExportError(f"{weights}: no LoRA tensors")
    incomplete = sorted(key for key, pair in pairs.items() if len(pair) != 2)
    if incomplete:
        raise ExportError(f"{weights}: {incomplete[0]} has only one of lora_A/lora_B; the file is damaged")
    tensors = {key: (pair["A"], pair["B"]) for key, pair in pairs.items()}
    rank, alpha = int(config["r"]), float(config["lora_alpha"])
    if config.get("use_rslora"):
        alpha *= math.sqrt(rank)  # llama.cpp scales by alpha / r; rsLoRA by alpha / sqrt(r)
    vocab = base_config["vocab_size"]
    for key, (a, b) in tensors.items():
        if a.shape[0] != rank or b.shape[1] != rank:
            raise ExportError(f"{weights}: {key} has rank {a.shape[0]}, the adapter's r is {rank}")
        if key == "lm_head.weight" and b.shape[0] != vocab:
            raise ExportError(f"{weights}: lm_head has {b.shape[0]} rows, the base {vocab}: the vocabulary was "
                              "resized, which a llama.cpp adapter cannot carry; export the merged model instead")
    return tensors, alpha


def write_lora_gguf(path: Path, tensors: dict[str, tuple[torch.Tensor, torch.Tensor]], base_config: dict, alpha: float, name: str,
                    quant: str, progress: Optional[Callable[[int, int], None]] = None) -> None:
    """Write `tensors` ({HF key: (lora_A, lora_B)}) as a llama.cpp LoRA adapter GGUF at `path`."""
    import gguf
    import numpy as np

    heads = base_config["num_attention_heads"]
    kv_heads = base_config.get("num_key_value_heads") or heads
    plan = []
    for key in sorted(tensors, key=_layer_order):
        target = gguf_name(key)
        if target is None:
            continue
        a, b = tensors[key]
        group = heads if target.endswith("attn_q.weight") else kv_heads if target.endswith("attn_k.weight") else 0
        plan += [(f"{target}.lora_a", a, 0), (f"{target}.lora_b", b, group and head_dim(base_config))]
    writer = gguf.GGUFWriter(str(path), "llama")
    writer.add_name(name)
    writer.add_type(gguf.GGUFType.ADAPTER)
    writer.add_string(gguf.Keys.Adapter.TYPE, "lora")
    writer.add_float32(gguf.Keys.Adapter.LORA_ALPHA, alpha)
    types = []
    for target, tensor, _ in plan:
        qtype = tensor_type(target, list(tensor.shape), quant)
        types.append(qtype)
        byte_shape = gguf.quant_shape_to_byte_shape(list(tensor.shape), qtype)
        writer.add_tensor_info(target, byte_shape, np.dtype(np.uint8), math.prod(byte_shape), raw_dtype=qtype)
    try:
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_ti_data_to_file()
        for done, ((target, tensor, group_rows), qtype) in enumerate(zip(plan, types), 1):
            writer.write_tensor_data(convert_tensor(tensor, list(tensor.shape), qtype, group_rows))
            if progress is not None:
                progress(done, len(plan))
    finally:
        writer.close()


def _layer_order(key: str) -> tuple[int, str]:
    match = re.match(r"model\.layers\.(\d+)\.", key)
    return (int(match.group(1)) if match else -1, key)


def _write_modelfile(out_dir: Path, adapter_name: str, base_gguf: Path, run_dir: Path) -> None:
    """A Modelfile: FROM the given base, ADAPTER beside it, the training template and stop tokens."""
    from transformers import AutoTokenizer

    if not base_gguf.is_file():
        raise ExportError(f"--base-gguf {base_gguf}: no such file (a GGUF of the base model, e.g. from "
                          "`finetune export` of the base or llama.cpp's convert_hf_to_gguf.py)")
    tokenizer = AutoTokenizer.from_pretrained(run_dir)
    stop = modelfile_stops(tokenizer, stop_token_ids(tokenizer, None, run_dir))
    template = tokenizer.chat_template if isinstance(tokenizer.chat_template, str) else None
    text = modelfile_text(str(base_gguf.resolve()), template, stop, adapter=f"./{adapter_name}")
    write_text(out_dir / MODELFILE, text)
