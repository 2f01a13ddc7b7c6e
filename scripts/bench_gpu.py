"""GPU benchmark of the seed recipe: trained tokens/s and peak memory, next to `finetune plan`'s estimate.

    python scripts/bench_gpu.py [--steps 20] [--workdir /tmp/bench_gpu] [--json out.json]
    python scripts/bench_gpu.py --dry-run        # tiny shapes on CPU: the same code path, nothing measured on a GPU

Builds Llama-3.1-8B-shaped random weights locally (nothing is downloaded: config.json + one safetensors shard per
layer, written tensor by tensor so host RAM stays low; Meta's Llama 3 tokenizer from `llama-models`), synthetic
chats, then runs, each in a fresh process (clean CUDA peak counters):
  1. finetune, the seed recipe: NF4 QLoRA + DoRA r64 on all linears, packed 4096-token rows, gradient
     checkpointing, bf16, adamw_bnb_8bit, micro batch 1 x accumulation 2 (no modules_to_save, one GPU);
  2. the same as LoRA (no DoRA);
  3. a plain TRL SFTTrainer + peft script with the same settings (its own packing and full-vocabulary loss);
  4. run 1 under torch.cuda.set_per_process_memory_fraction emulating a 24 GB card.
Without a CUDA GPU (and without --dry-run) it prints "no CUDA GPU: nothing measured" and exits 0.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import subprocess
import sys
import time
from pathlib import Path

GIB = 1024**3
FULL = {"hidden_size": 4096, "intermediate_size": 14336, "num_hidden_layers": 32, "num_attention_heads": 32,
        "num_key_value_heads": 8}
TINY = {"hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2, "num_attention_heads": 4,
        "num_key_value_heads": 2}
VARIANTS = ("finetune-qdora", "finetune-qlora", "plain-trl-qdora", "finetune-qdora-24GB")


def build_model_dir(out: Path, dims: dict) -> Path:
    """A random-weight Llama 3.1-style model with these dimensions, written layer by layer (bf16)."""
    import torch
    from safetensors.torch import save_file
    from transformers import LlamaConfig

    from finetune.testing.tiny_llama import build_llama3_fast_tokenizer

    if (out / "model.safetensors.index.json").is_file():
        return out
    out.mkdir(parents=True, exist_ok=True)
    config = LlamaConfig(vocab_size=128256, max_position_embeddings=131072, rope_theta=500000.0, rms_norm_eps=1e-5,
                         tie_word_embeddings=False, bos_token_id=128000, eos_token_id=128001, dtype="bfloat16", **dims)
    h, i = config.hidden_size, config.intermediate_size
    kv = config.num_key_value_heads * (h // config.num_attention_heads)
    device = "cuda" if torch.cuda.is_available() else "cpu"  # 8B random values: seconds on a GPU, minutes on CPU
    generator = torch.Generator(device=device).manual_seed(0)

    def rand(*shape: int) -> torch.Tensor:
        return (torch.randn(*shape, generator=generator, device=device) * 0.02).to(torch.bfloat16).cpu()

    index: dict[str, str] = {}
    shards = [("embed", {"model.embed_tokens.weight": rand(config.vocab_size, h), "model.norm.weight": torch.ones(h, dtype=torch.bfloat16)}),
              ("head", {"lm_head.weight": rand(config.vocab_size, h)})]
    for name, tensors in shards:
        save_file(tensors, str(out / f"{name}.safetensors"), metadata={"format": "pt"})
        index.update({key: f"{name}.safetensors" for key in tensors})
    del shards
    for layer in range(config.num_hidden_layers):
        p = f"model.layers.{layer}."
        tensors = {p + "self_attn.q_proj.weight": rand(h, h), p + "self_attn.k_proj.weight": rand(kv, h),
                   p + "self_attn.v_proj.weight": rand(kv, h), p + "self_attn.o_proj.weight": rand(h, h),
                   p + "mlp.gate_proj.weight": rand(i, h), p + "mlp.up_proj.weight": rand(i, h),
                   p + "mlp.down_proj.weight": rand(h, i), p + "input_layernorm.weight": torch.ones(h, dtype=torch.bfloat16),
                   p + "post_attention_layernorm.weight": torch.ones(h, dtype=torch.bfloat16)}
        save_file(tensors, str(out / f"layer{layer}.safetensors"), metadata={"format": "pt"})
        index.update({key: f"layer{layer}.safetensors" for key in tensors})
    config.save_pretrained(out)
    build_llama3_fast_tokenizer().save_pretrained(out)
    (out / "model.safetensors.index.json").write_text(json.dumps({"metadata": {}, "weight_map": index}, indent=1))
    return out


def write_chats(path: Path, conversations: int) -> Path:
    rng = random.Random(0)
    words = "alpha beta gamma delta model token batch data loss train python answer question river stone".split()
    with path.open("w") as handle:
        for _ in range(conversations):
            messages = []
            for _ in range(rng.randint(1, 4)):
                messages.append({"role": "user", "content": " ".join(rng.choices(words, k=rng.randint(5, 60)))})
                messages.append({"role": "assistant", "content": " ".join(rng.choices(words, k=rng.randint(10, 200)))})
            handle.write(json.dumps({"messages": messages}) + "\n")
    return path


def recipe(model_dir: Path, data: Path, work: Path, *, seq: int, steps: int, dora: bool, cpu: bool) -> dict:
    """The seed recipe (chat-like-me.yml) on the local model, one process, a fixed number of steps."""
    return {"base_model": str(model_dir), "load_in_4bit": True, "adapter": "qlora", "chat_template": "llama3",
            "datasets": [{"path": str(data), "type": "chat_template"}], "dataset_prepared_path": str(work / "prepared"),
            "output_dir": str(work / "out"), "sequence_len": seq, "sample_packing": True, "pad_to_sequence_len": True,
            "lora_r": 64, "lora_alpha": 32, "lora_dropout": 0.05, "lora_target_linear": True, "peft_use_dora": dora,
            "gradient_accumulation_steps": 2, "micro_batch_size": 1, "max_steps": steps, "optimizer": "adamw_bnb_8bit",
            "learning_rate": 2e-4, "bf16": True, "tf32": not cpu, "gradient_checkpointing": True,
            "attn_implementation": "flash_attention_2" if not cpu else "sdpa", "warmup_ratio": 0.1,
            "special_tokens": {"pad_token": "<|finetune_right_pad_id|>", "eos_token": "<|eot_id|>"}}


def peak_memory() -> dict:
    import torch

    if torch.cuda.is_available():
        return {"max_allocated": torch.cuda.max_memory_allocated(), "max_reserved": torch.cuda.max_memory_reserved()}
    import resource

    return {"max_rss": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024}


def estimate(settings, loss_head: str) -> dict:  # noqa: ANN001
    from finetune.plan.estimate import CUDA_CONTEXT, plan_memory

    plan = plan_memory(settings, world_size=1, gpu_memory_bytes=24 * GIB, loss_head=loss_head)
    allocated = plan.peak_bytes - CUDA_CONTEXT - plan.get("allocator fragmentation")
    return {"estimate_peak": plan.peak_bytes, "estimate_allocated": allocated}


def run_variant(variant: str, work: Path, model_dir: Path, data: Path, *, seq: int, steps: int, cpu: bool) -> dict:
    """One benchmark run in this process; returns its measurements."""
    import torch
    import yaml

    from finetune.config import load_recipe_text

    if variant.endswith("24GB") and torch.cuda.is_available():
        total = torch.cuda.get_device_properties(0).total_memory
        torch.cuda.set_per_process_memory_fraction(min(1.0, 24e9 / total))
    run_dir = work / variant
    settings = load_recipe_text(yaml.safe_dump(recipe(model_dir, data, run_dir, seq=seq, steps=steps,
                                                      dora="qdora" in variant, cpu=cpu))).settings
    result = {"variant": variant, "steps": steps, "sequence_len": seq}
    started = time.perf_counter()
    try:
        if variant.startswith("plain-trl"):
            result.update(plain_trl(settings, data, run_dir))
            result.update(estimate(settings, "full"))
        else:
            from finetune.data.build import prepare_data
            from finetune.model.tokenizer import load_tokenizer
            from finetune.train.run import run_training

            tokenizer = load_tokenizer(settings)
            prepared = prepare_data(settings, tokenizer, progress=False)
            summary = run_training(settings, prepared, tokenizer, output_dir=run_dir / "out").summary
            result.update(tokens_per_s=summary["tokens_per_s"], trained_tokens_per_s=summary["trained_tokens_per_s"],
                          final_loss=summary["train_loss"])
            result.update(estimate(settings, "chunked"))
        result["ok"] = True
    except torch.cuda.OutOfMemoryError as exc:  # the 24 GB emulation may legitimately fail
        result.update(ok=False, error=f"out of memory: {str(exc).splitlines()[0]}")
    result["wall_s"] = time.perf_counter() - started
    result.update(peak_memory())
    return result


def plain_trl(settings, data: Path, run_dir: Path) -> dict:  # noqa: ANN001
    """A plain TRL + peft script with the recipe's settings (what a user would write without finetune)."""
    import torch
    from datasets import load_dataset
    from peft import LoraConfig, prepare_model_for_kbit_training
    from transformers import AutoModelForCausalLM, AutoTokenizer, BitsAndBytesConfig
    from trl import SFTConfig, SFTTrainer

    from finetune.data.templates import LLAMA3_JINJA

    cuda = torch.cuda.is_available()
    tokenizer = AutoTokenizer.from_pretrained(settings.base_model)
    tokenizer.add_special_tokens({"pad_token": "<|finetune_right_pad_id|>", "eos_token": "<|eot_id|>"})
    tokenizer.chat_template = LLAMA3_JINJA
    quant = BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
                               bnb_4bit_compute_dtype=torch.bfloat16, bnb_4bit_quant_storage=torch.bfloat16)
    model = AutoModelForCausalLM.from_pretrained(
        settings.base_model, quantization_config=quant, dtype=torch.bfloat16, device_map={"": 0 if cuda else "cpu"},
        attn_implementation=settings.attn_implementation or "sdpa")
    model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=True)
    peft_config = LoraConfig(r=settings.lora_r, lora_alpha=settings.lora_alpha, lora_dropout=settings.lora_dropout,
                             target_modules="all-linear", use_dora=settings.peft_use_dora, task_type="CAUSAL_LM")
    args = SFTConfig(output_dir=str(run_dir / "plain"), max_steps=settings.max_steps, per_device_train_batch_size=1,
                     gradient_accumulation_steps=settings.gradient_accumulation_steps, learning_rate=settings.learning_rate,
                     optim=settings.optimizer, bf16=True, gradient_checkpointing=True, packing=True,
                     max_length=settings.sequence_len, assistant_only_loss=False, logging_steps=1, report_to="none",
                     save_strategy="no", use_cpu=not cuda, disable_tqdm=True)
    trainer = SFTTrainer(model=model, args=args, train_dataset=load_dataset("json", data_files=str(data), split="train"),
                         processing_class=tokenizer, peft_config=peft_config)
    started = time.perf_counter()
    trainer.train()
    wall = time.perf_counter() - started
    tokens = max((e.get("num_tokens", 0) for e in trainer.state.log_history), default=0)
    losses = [e["loss"] for e in trainer.state.log_history if "loss" in e]
    return {"tokens_per_s": tokens / wall if wall else None, "final_loss": losses[-1] if losses else None}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dry-run", action="store_true", help="tiny shapes on CPU (tests the code path)")
    parser.add_argument("--steps", type=int, default=None, help="optimizer steps per run (default 20; dry run 2)")
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/bench_gpu"))
    parser.add_argument("--variants", default=",".join(VARIANTS), help=f"comma-separated subset of {','.join(VARIANTS)}")
    parser.add_argument("--json", type=Path, default=None, help="also write the results here")
    parser.add_argument("--_run", default=None, help=argparse.SUPPRESS)  # internal: one variant in this process
    args = parser.parse_args(argv)
    import torch

    cuda = torch.cuda.is_available()
    if not cuda and not args.dry_run:
        print("no CUDA GPU: nothing measured (use --dry-run for a tiny CPU run of the same code path)")
        return 0
    cpu = not cuda or args.dry_run
    dims, seq, steps = (TINY, 256, args.steps or 2) if args.dry_run else (FULL, 4096, args.steps or 20)
    work = args.workdir
    model_dir = build_model_dir(work / ("tiny-model" if args.dry_run else "llama31-8b-random"), dims)
    data = work / "chats.jsonl"
    if not data.is_file():
        work.mkdir(parents=True, exist_ok=True)
        write_chats(data, 40 if args.dry_run else 200 * steps)
    if args._run:
        print("RESULT " + json.dumps(run_variant(args._run, work, model_dir, data, seq=seq, steps=steps, cpu=cpu)))
        return 0
    results = []
    for variant in args.variants.split(","):
        cmd = [sys.executable, __file__, "--_run", variant, "--workdir", str(work), "--steps", str(steps)]
        cmd += ["--dry-run"] if args.dry_run else []
        proc = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "WANDB_MODE": "disabled"})
        lines = [line[7:] for line in proc.stdout.splitlines() if line.startswith("RESULT ")]
        result = json.loads(lines[-1]) if lines else {"variant": variant, "ok": False,
                                                      "error": (proc.stderr.strip().splitlines() or ["?"])[-1]}
        results.append(result)
        print(format_result(result), flush=True)
    if args.json:
        args.json.write_text(json.dumps(results, indent=2) + "\n")
    return 0 if all(r.get("ok") for r in results) else 1


def format_result(r: dict) -> str:
    def gib(key: str) -> str:
        return f"{r[key] / GIB:.2f} GiB" if r.get(key) is not None else "-"

    if not r.get("ok"):
        return f"{r['variant']:<22} FAILED: {r.get('error')}"
    peak = f"max_allocated {gib('max_allocated')}, reserved {gib('max_reserved')}" if "max_allocated" in r else f"max RSS {gib('max_rss')}"
    return (f"{r['variant']:<22} {r.get('tokens_per_s') or 0:8.0f} tokens/s  {peak}  "
            f"plan: {gib('estimate_allocated')} allocated, {gib('estimate_peak')} with context+fragmentation")


if __name__ == "__main__":
    raise SystemExit(main())
