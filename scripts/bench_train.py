#!/usr/bin/env python
"""Training throughput on CPU: finetune's trainer vs a plain TRL SFTTrainer doing the same work.

The tiny Llama (real 128,256-token vocabulary, hidden 64, 2 layers), LoRA + DoRA r64 on every linear
layer, bf16 autocast where the CPU has it, gradient checkpointing, micro batch 1 x accumulation 2 of
packed 4096-token rows (about 60% of tokens trained, like assistant-only chat data). Every variant runs
in its own subprocess (so peak RSS is its own); the first optimizer step is warm-up and not timed.

Variants: finetune (the fused loss head of finetune.model.loss), finetune-trlhead (`loss_head: trl`, TRL's tiled
ChunkedLogProbFunction in our trainer), trl (plain TRL SFTTrainer), and their -qlora forms. `--hidden 512
--layers 4` gives the wider tiny model on which the transformer layers weigh more.

Usage: python scripts/bench_train.py [--steps 3] [--variants finetune,finetune-trlhead,trl,finetune-qlora,trl-qlora]
       [--hidden 64 --layers 2]
Prints a Markdown table (paste into docs/benchmarks.md).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

SEQ = 4096
TRAINED_FRACTION = 0.6


def samples(count: int, seed: int = 0) -> list[dict]:
    rng = random.Random(seed)
    out = []
    for _ in range(count):
        n = rng.randrange(200, 900)
        ids = [128000] + [rng.randrange(100, 120000) for _ in range(n - 1)]
        cut = int(n * (1 - TRAINED_FRACTION))
        out.append({"input_ids": ids, "labels": [-100] * cut + ids[cut:]})
    return out


def packed_rows(items: list[dict]) -> list[dict]:
    rows, current = [], {"input_ids": [], "labels": [], "position_ids": []}
    for item in items:
        if len(current["input_ids"]) + len(item["input_ids"]) > SEQ:
            rows.append(current)
            current = {"input_ids": [], "labels": [], "position_ids": []}
        current["input_ids"] += item["input_ids"]
        current["labels"] += item["labels"]
        current["position_ids"] += list(range(len(item["input_ids"])))
    return rows


def recipe_text(base: Path, out: Path, steps: int, qlora: bool, loss_head: str = "fused") -> str:
    quant = "load_in_4bit: true\nadapter: qlora\n" if qlora else "adapter: lora\n"
    return (
        f"base_model: {base}\nloss_head: {loss_head}\ndatasets: [{{path: x.jsonl}}]\n{quant}lora_r: 64\nlora_alpha: 32\n"
        "lora_target_linear: true\npeft_use_dora: true\nsample_packing: true\nsequence_len: 4096\n"
        "micro_batch_size: 1\ngradient_accumulation_steps: 2\noptimizer: adamw_torch\nlearning_rate: 0.0002\n"
        f"gradient_checkpointing: true\nbf16: auto\nmax_steps: {steps}\noutput_dir: {out}\n"
        'special_tokens: {pad_token: "<|finetune_right_pad_id|>", eos_token: "<|eot_id|>"}\n'
    )


def step_timer():
    from transformers import TrainerCallback

    class StepTimer(TrainerCallback):
        def __init__(self) -> None:
            self.times: list[float] = []
            self.last = 0.0

        def on_step_begin(self, args, state, control, **kwargs):  # noqa: ANN001
            self.last = time.perf_counter()

        def on_step_end(self, args, state, control, **kwargs):  # noqa: ANN001
            self.times.append(time.perf_counter() - self.last)

    return StepTimer()


def run_one(variant: str, base: Path, steps: int) -> dict:
    from types import SimpleNamespace

    from datasets import Dataset

    from finetune.config import load_recipe_text
    from finetune.model.tokenizer import load_tokenizer

    qlora = variant.endswith("qlora")
    items = samples(60)
    rows = packed_rows(items)[: 2 * steps]
    used = sum(len(r["input_ids"]) for r in rows)
    trained = sum(sum(1 for x in r["labels"][1:] if x != -100) for r in rows)
    out = Path(tempfile.mkdtemp(prefix=f"bench-{variant}-"))
    loss_head = "trl" if "trlhead" in variant else "fused"  # finetune-trlhead: our trainer, TRL's tiled head
    settings = load_recipe_text(recipe_text(base, out, steps, qlora, loss_head)).settings
    tokenizer = load_tokenizer(settings)
    timer = step_timer()
    if variant.startswith("finetune"):
        from finetune.train.run import run_training

        run_training(settings, SimpleNamespace(train=Dataset.from_list(rows), eval=None), tokenizer,
                     output_dir=out, callbacks=[timer])
    else:  # plain TRL: its own packing (BFD, padding-free), its own PEFT setup and fused loss
        from trl import SFTConfig, SFTTrainer

        from finetune.model.adapters import lora_config
        from finetune.model.load import load_model

        model = load_model(settings, tokenizer)
        flat = []
        for r in rows:  # unpack the very same samples so both trainers see identical tokens
            starts = [i for i, p in enumerate(r["position_ids"]) if p == 0] + [len(r["position_ids"])]
            flat += [{"input_ids": r["input_ids"][a:b], "labels": r["labels"][a:b]} for a, b in zip(starts, starts[1:])]
        config = SFTConfig(output_dir=str(out), max_steps=steps, per_device_train_batch_size=1,
                           gradient_accumulation_steps=2, learning_rate=2e-4, packing=True, max_length=SEQ,
                           bf16=settings.bf16 != False, use_cpu=True, gradient_checkpointing=True,  # noqa: E712
                           gradient_checkpointing_kwargs={"use_reentrant": False}, report_to="none",
                           save_strategy="no", logging_steps=1, disable_tqdm=True, optim="adamw_torch")
        trainer = SFTTrainer(model=model, args=config, train_dataset=Dataset.from_list(flat),
                             processing_class=tokenizer, peft_config=lora_config(settings, model), callbacks=[timer])
        trainer.train()
    timed = timer.times[1:] or timer.times
    step_s = statistics.median(timed)
    return {
        "variant": variant, "step_s": step_s, "tokens_per_step": used / steps, "trained_per_step": trained / steps,
        "tokens_per_s": used / steps / step_s, "trained_tokens_per_s": trained / steps / step_s,
        "peak_rss_gib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20, "steps_timed": len(timed),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--variants", default="finetune,finetune-trlhead,trl,finetune-qlora,trl-qlora")
    parser.add_argument("--hidden", type=int, default=64, help="tiny model hidden size")
    parser.add_argument("--layers", type=int, default=2, help="tiny model layers")
    parser.add_argument("--model-dir", type=Path, default=Path(tempfile.gettempdir()) / "finetune-bench-tiny")
    parser.add_argument("--one", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.one:
        print("RESULT " + json.dumps(run_one(args.one, args.model_dir, args.steps)), flush=True)
        return 0
    from finetune.testing.tiny_llama import build_tiny_llama

    if (args.hidden, args.layers) != (64, 2):
        args.model_dir = args.model_dir.with_name(f"{args.model_dir.name}-h{args.hidden}-l{args.layers}")
    build_tiny_llama(args.model_dir, hidden_size=args.hidden, layers=args.layers)
    results = []
    for variant in args.variants.split(","):
        proc = subprocess.run([sys.executable, __file__, "--one", variant, "--steps", str(args.steps),
                               "--model-dir", str(args.model_dir)], capture_output=True, text=True)
        line = next((l for l in proc.stdout.splitlines() if l.startswith("RESULT ")), None)
        if line is None:
            print(f"{variant}: failed\n{proc.stderr[-3000:]}", file=sys.stderr)
            continue
        results.append(json.loads(line[7:]))
        print(f"done: {variant}", file=sys.stderr, flush=True)
    print(f"model: hidden {args.hidden}, {args.layers} layers; {args.steps} steps; load average "
          f"{' '.join(f'{x:.2f}' for x in os.getloadavg())} at the end")
    print("| variant | s/step | tokens/step | trained/step | tokens/s | trained tokens/s | peak RSS GiB |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    for r in results:
        print(f"| {r['variant']} | {r['step_s']:.2f} | {r['tokens_per_step']:.0f} | {r['trained_per_step']:.0f} | "
              f"{r['tokens_per_s']:.0f} | {r['trained_tokens_per_s']:.0f} | {r['peak_rss_gib']:.2f} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
