#!/usr/bin/env python
"""Export time, peak memory and file size of `finetune export --gguf` per quant type, on an 8B-shaped model.

Usage: python scripts/bench_export.py [--layers 2] [--quants f16,q8_0,...] [--workdir DIR] [--keep]

Writes a synthetic model with Llama 3.1 8B's exact shapes (hidden 4096, MLP 14336, 32 query and 8 key/value
heads, the 128,256-token vocabulary with untied embeddings, Llama 3.1 rope scaling) but only `--layers`
decoder layers, so it fits a small machine: random bfloat16 weights (std 0.02) in one safetensors shard per
layer, Meta's real Llama 3 tokenizer with the llama3 chat template. It is exported as a full fine-tune's
output_dir (the merge step is `finetune merge`'s, streamed the same way, and is not timed here). Each quant runs
`finetune export` in a fresh subprocess; its peak RSS is that process's own ru_maxrss (os.wait4), which includes
llama.cpp's quantizer for the K-quants since it runs in-process. (Linux starts a child's ru_maxrss at its parent's
RSS at fork time, so the model is built in another subprocess and this parent imports nothing heavy.)
Prints a Markdown table, with the size of a 32-layer file extrapolated from the per-layer bytes.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

QUANTS = ("f32", "f16", "bf16", "q8_0", "q4_0", "q4_k_m", "q5_k_m", "q6_k")
SHAPE = {"hidden_size": 4096, "intermediate_size": 14336, "num_attention_heads": 32, "num_key_value_heads": 8,
         "vocab_size": 128256}
FULL_LAYERS = 32


def build_model(out: Path, layers: int) -> int:
    """The synthetic model in `out`; returns its parameter count."""
    import torch
    from safetensors.torch import save_file
    from transformers import AutoTokenizer, LlamaConfig

    from finetune.data.templates import LLAMA3_JINJA
    from finetune.export.safetensors_stream import write_index
    from finetune.testing.tiny_llama import build_tiny_llama

    out.mkdir(parents=True, exist_ok=True)
    config = LlamaConfig(**SHAPE, num_hidden_layers=layers, max_position_embeddings=131072, rms_norm_eps=1e-5,
                         tie_word_embeddings=False, bos_token_id=128000, eos_token_id=128009,
                         rope_parameters={"rope_type": "llama3", "rope_theta": 500000.0, "factor": 8.0,
                                          "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                                          "original_max_position_embeddings": 8192})
    config.architectures = ["LlamaForCausalLM"]
    config.dtype = "bfloat16"
    config.save_pretrained(out)
    tokenizer = AutoTokenizer.from_pretrained(build_tiny_llama(out.parent / "tiny-llama"))
    tokenizer.add_special_tokens({"eos_token": "<|eot_id|>", "pad_token": "<|finetune_right_pad_id|>"})
    tokenizer.chat_template = LLAMA3_JINJA
    tokenizer.save_pretrained(out)

    hidden, mlp, vocab = SHAPE["hidden_size"], SHAPE["intermediate_size"], SHAPE["vocab_size"]
    kv = hidden // SHAPE["num_attention_heads"] * SHAPE["num_key_value_heads"]
    generator = torch.Generator().manual_seed(0)

    def weight(*shape: int) -> torch.Tensor:
        if len(shape) == 1:
            return torch.ones(shape, dtype=torch.bfloat16)
        return (torch.randn(shape, generator=generator) * 0.02).to(torch.bfloat16)

    groups = {"embed.safetensors": {"model.embed_tokens.weight": (vocab, hidden)},
              "head.safetensors": {"lm_head.weight": (vocab, hidden), "model.norm.weight": (hidden,)}}
    for i in range(layers):
        prefix = f"model.layers.{i}."
        groups[f"layer-{i:02d}.safetensors"] = {
            prefix + "self_attn.q_proj.weight": (hidden, hidden), prefix + "self_attn.k_proj.weight": (kv, hidden),
            prefix + "self_attn.v_proj.weight": (kv, hidden), prefix + "self_attn.o_proj.weight": (hidden, hidden),
            prefix + "mlp.gate_proj.weight": (mlp, hidden), prefix + "mlp.up_proj.weight": (mlp, hidden),
            prefix + "mlp.down_proj.weight": (hidden, mlp), prefix + "input_layernorm.weight": (hidden,),
            prefix + "post_attention_layernorm.weight": (hidden,)}
    weight_map, total, params = {}, 0, 0
    for file, shapes in groups.items():
        tensors = {key: weight(*shape) for key, shape in shapes.items()}
        save_file(tensors, str(out / file), metadata={"format": "pt"})
        for key, tensor in tensors.items():
            weight_map[key] = file
            total += tensor.numel() * 2
            params += tensor.numel()
        del tensors
    write_index(out, weight_map, total)
    (out / "recipe.yml").write_text(
        f"base_model: {out}\nchat_template: llama3\nbf16: true\ndatasets:\n  - path: data.jsonl\noutput_dir: {out}\n"
        "special_tokens:\n  eos_token: <|eot_id|>\n  pad_token: <|finetune_right_pad_id|>\n", encoding="utf-8")
    return params


def run_export(model: Path, quant: str) -> tuple[float, int, str]:
    """(seconds, peak RSS bytes, stderr tail) of `finetune export` in a fresh process."""
    command = [sys.executable, "-m", "finetune", "export", str(model / "recipe.yml"), "--gguf", quant]
    start = time.perf_counter()
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    stderr = process.stderr.read()
    _, status, usage = os.wait4(process.pid, 0)
    seconds = time.perf_counter() - start
    process.returncode = os.waitstatus_to_exitcode(status)
    if process.returncode != 0:
        raise SystemExit(f"finetune export --gguf {quant} failed ({process.returncode}):\n{stderr[-3000:]}")
    return seconds, usage.ru_maxrss * 1024, stderr


def baseline_rss() -> int:
    """Peak RSS of a process that only imports what export imports (torch, transformers, gguf)."""
    code = "import torch, transformers, gguf, numpy, safetensors; from transformers import AutoTokenizer"
    process = subprocess.Popen([sys.executable, "-c", code])
    _, _, usage = os.wait4(process.pid, 0)
    return usage.ru_maxrss * 1024


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--layers", type=int, default=2, help="decoder layers of 8B shape (8B has 32)")
    parser.add_argument("--quants", default=",".join(QUANTS), help="comma-separated quant types")
    parser.add_argument("--workdir", type=Path, default=None, help="where to build the model (default: a temp dir)")
    parser.add_argument("--keep", action="store_true", help="keep the work directory")
    parser.add_argument("--build-only", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    work = args.workdir or Path(tempfile.mkdtemp(prefix="bench-export-"))
    model = work / "model"
    if args.build_only:
        print(build_model(model, args.layers))
        return 0
    try:
        start = time.perf_counter()
        build = [sys.executable, __file__, "--build-only", "--layers", str(args.layers), "--workdir", str(work)]
        params = int(subprocess.run(build, check=True, capture_output=True, text=True).stdout.split()[-1])
        model_bytes = sum(p.stat().st_size for p in model.glob("*.safetensors"))
        print(f"synthetic model: {args.layers} layers of Llama 3.1 8B shape, {params / 1e9:.2f} B parameters, "
              f"{model_bytes / 2**30:.2f} GiB bf16 (built in {time.perf_counter() - start:.0f} s); "
              f"import-only baseline RSS {baseline_rss() / 2**30:.2f} GiB; {os.cpu_count()} CPUs", flush=True)
        layer_params = params - 2 * SHAPE["vocab_size"] * SHAPE["hidden_size"] - SHAPE["hidden_size"]
        print("\n| quant | export s | peak RSS GiB | file GiB | GiB per layer | 32-layer (8B) file GiB, extrapolated |")
        print("|---|---|---|---|---|---|")
        sizes: dict[str, int] = {}
        for quant in args.quants.split(","):
            seconds, rss, _ = run_export(model, quant)
            path = model / "gguf" / f"{model.name}-{quant}.gguf"
            sizes[quant] = path.stat().st_size
            per_layer = _layer_bytes(path, args.layers)
            full = sizes[quant] + (FULL_LAYERS - args.layers) * per_layer
            print(f"| {quant} | {seconds:.0f} | {rss / 2**30:.2f} | {sizes[quant] / 2**30:.2f} | "
                  f"{per_layer / 2**30:.3f} | {full / 2**30:.2f} |", flush=True)
            path.unlink()
        print(f"\n(per-layer parameters: {layer_params / args.layers / 1e6:.0f} M; "
              f"8B total {(params + (FULL_LAYERS - args.layers) * layer_params / args.layers) / 1e9:.2f} B)")
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)
    return 0


def _layer_bytes(path: Path, layers: int) -> float:
    """The bytes of one decoder layer's tensors in the GGUF (read from its tensor table)."""
    from gguf import GGUFReader

    reader = GGUFReader(str(path))
    return sum(int(t.n_bytes) for t in reader.tensors if t.name.startswith("blk.")) / layers


if __name__ == "__main__":
    sys.exit(main())
