#!/usr/bin/env python
"""Preference-tuning step time and peak memory on CPU: finetune's DPO (cached / live reference) vs plain TRL.

The tiny Llama (real 128,256-token vocabulary; `--hidden/--layers` widen it), LoRA r16 on every linear layer,
micro batch 2 x accumulation 2 of chat pairs (a ~130-token prompt, two ~65-token replies) rendered with the
llama3 template. Every variant runs in its own subprocess (peak RSS is its own); the first optimizer step is
warm-up and not timed. One-off setup (finetune: data preparation + reference log-probs; TRL: its tokenizing
and, with precompute, its reference pass and model hash) is reported separately from the step time.

Variants:
- finetune: `finetune train`'s DPO path, reference log-probs precomputed and cached (no reference forward);
- finetune-live: the same with `precompute_ref_log_probs: false` (a reference forward every step, adapter off);
- trl: a plain TRL DPOTrainer script on the same pairs as conversations (peft_config, reference = adapter off);
- trl-precompute: the same with TRL's `precompute_ref_log_probs=True`.
Neither path loads a second model: both get the reference from the one model with its adapter disabled.

Usage: python scripts/bench_dpo.py [--steps 3] [--variants finetune,finetune-live,trl,trl-precompute]
       [--hidden 64 --layers 2]
       python scripts/bench_dpo.py --interleaved 6 [--fp32]   (one process, variants in turn: same load for all)
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

WORDS = ("the river stone model token batch data loss train python answer question coffee pizza bike jazz "
         "record weekend music movie colour dinner party ride sunday morning code chaos").split()
MICRO, ACCUMULATION = 2, 2
PROMPT_WORDS, REPLY_WORDS = 120, 60  # about 130 and 65 tokens


def text(rng: random.Random, n: int) -> str:
    return " ".join(rng.choice(WORDS) for _ in range(n))


def pair_rows(count: int, seed: int = 0) -> list[dict]:
    rng = random.Random(seed)
    return [{"messages": [{"role": "user", "content": text(rng, PROMPT_WORDS)}],
             "chosen": {"role": "assistant", "content": text(rng, REPLY_WORDS)},
             "rejected": {"role": "assistant", "content": text(rng, REPLY_WORDS)}} for _ in range(count)]


def recipe_text(base: Path, data: Path, out: Path, steps: int, precompute: bool) -> str:
    return (
        f"base_model: {base}\nrl: dpo\nrl_beta: 0.1\nprecompute_ref_log_probs: {str(precompute).lower()}\n"
        f"datasets: [{{path: {data}, type: chat_template.default}}]\nchat_template: llama3\n"
        f"dataset_prepared_path: {out}/prepared\nadapter: lora\nlora_r: 16\nlora_alpha: 32\nlora_target_linear: true\n"
        f"sequence_len: 1024\nmicro_batch_size: {MICRO}\ngradient_accumulation_steps: {ACCUMULATION}\n"
        f"optimizer: adamw_torch\nlearning_rate: 0.0001\nbf16: auto\nmax_steps: {steps}\noutput_dir: {out}/run\n"
        'special_tokens: {pad_token: "<|finetune_right_pad_id|>", eos_token: "<|eot_id|>"}\n'
    )


def step_timer():
    from transformers import TrainerCallback

    class StepTimer(TrainerCallback):
        def __init__(self) -> None:
            self.times: list[float] = []
            self.last = 0.0
            self.began = 0.0

        def on_train_begin(self, args, state, control, **kwargs):  # noqa: ANN001
            self.began = time.perf_counter()

        def on_step_begin(self, args, state, control, **kwargs):  # noqa: ANN001
            self.last = time.perf_counter()

        def on_step_end(self, args, state, control, **kwargs):  # noqa: ANN001
            self.times.append(time.perf_counter() - self.last)

    return StepTimer()


def run_one(variant: str, base: Path, steps: int) -> dict:
    started = time.perf_counter()
    work = Path(tempfile.mkdtemp(prefix=f"bench-dpo-{variant}-"))
    rows = pair_rows(MICRO * ACCUMULATION * steps)
    data = work / "pairs.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    from finetune.config import load_recipe_text
    from finetune.model.tokenizer import load_tokenizer

    settings = load_recipe_text(recipe_text(base, data, work, steps, precompute=variant == "finetune")).settings
    tokenizer = load_tokenizer(settings)
    timer = step_timer()
    if variant.startswith("finetune"):
        from finetune.data.build import prepare_data
        from finetune.train.run import run_training

        prepared = prepare_data(settings, tokenizer, progress=False)
        run_training(settings, prepared, tokenizer, callbacks=[timer])
    else:  # plain TRL: conversations in, its own tokenizing, PEFT setup and reference handling
        from datasets import Dataset
        from trl import DPOConfig, DPOTrainer

        from finetune.data.templates import LLAMA3_JINJA
        from finetune.model.adapters import lora_config
        from finetune.model.load import load_model

        tokenizer.chat_template = LLAMA3_JINJA
        model = load_model(settings, tokenizer)
        conversations = [{"prompt": r["messages"], "chosen": [r["chosen"]], "rejected": [r["rejected"]]} for r in rows]
        config = DPOConfig(output_dir=str(work / "trl"), max_steps=steps, per_device_train_batch_size=MICRO,
                           gradient_accumulation_steps=ACCUMULATION, learning_rate=1e-4, beta=0.1, max_length=1024,
                           bf16=settings.bf16 != False, use_cpu=True, gradient_checkpointing=False,  # noqa: E712
                           report_to="none", save_strategy="no", logging_steps=1, disable_tqdm=True,
                           optim="adamw_torch", precompute_ref_log_probs=variant == "trl-precompute")
        trainer = DPOTrainer(model=model, args=config, train_dataset=Dataset.from_list(conversations),
                             processing_class=tokenizer, peft_config=lora_config(settings, model), callbacks=[timer])
        trainer.train()
    timed = timer.times[1:] or timer.times
    step_s = statistics.median(timed)
    return {"variant": variant, "step_s": step_s, "setup_s": timer.began - started, "steps_timed": len(timed),
            "peak_rss_gib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20}


def interleaved(base: Path, rounds: int, bf16: bool) -> list[dict]:
    """All variants built in one process, one micro-batch step each in turn for `rounds` rounds, so every variant
    sees the same machine load (the first round is warm-up); micro-step times only."""
    from datasets import Dataset
    from trl import DPOConfig, DPOTrainer

    from finetune.config import load_recipe_text
    from finetune.data.build import prepare_data
    from finetune.data.collate import pad_token_id
    from finetune.data.templates import LLAMA3_JINJA
    from finetune.model.adapters import lora_config
    from finetune.model.load import load_model
    from finetune.model.tokenizer import load_tokenizer
    from finetune.train.dpo import DPOStage
    from finetune.train.reference import with_reference
    from finetune.train.run import setup_model, trainer_arguments
    from finetune.train.trainer import TokenCounter

    work = Path(tempfile.mkdtemp(prefix="bench-dpo-interleaved-"))
    rows = pair_rows(MICRO)
    data = work / "pairs.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    trainers = {}
    for variant in ("finetune", "finetune-live", "trl"):
        text = recipe_text(base, data, work, 1, precompute=variant == "finetune").replace("bf16: auto",
                                                                                          f"bf16: {str(bf16).lower()}")
        settings = load_recipe_text(text).settings
        tokenizer = load_tokenizer(settings)
        if variant == "trl":
            tokenizer.chat_template = LLAMA3_JINJA
            model = load_model(settings, tokenizer)
            conversations = [{"prompt": r["messages"], "chosen": [r["chosen"]], "rejected": [r["rejected"]]} for r in rows]
            config = DPOConfig(output_dir=str(work / "trl"), max_steps=1, per_device_train_batch_size=MICRO, bf16=bf16,
                               use_cpu=True, gradient_checkpointing=False, report_to="none", disable_tqdm=True,
                               max_length=1024)
            trainer = DPOTrainer(model=model, args=config, train_dataset=Dataset.from_list(conversations),
                                 processing_class=tokenizer, peft_config=lora_config(settings, model))
        else:
            prepared = prepare_data(settings, tokenizer, progress=False)
            model, precision = setup_model(settings, tokenizer)
            train = prepared.train
            if variant == "finetune":
                train, _, _ = with_reference(settings, prepared, model, pad_id=pad_token_id(tokenizer),
                                             precision=precision, progress=False)
            stage = DPOStage()
            args = trainer_arguments(stage, settings, len(train), precision=precision, world_size=1,
                                     output_dir=work / variant)
            trainer = stage.trainer(settings, model, tokenizer, train, None, args=args, counter=TokenCounter(),
                                    callbacks=[])
        trainer.create_optimizer_and_scheduler(num_training_steps=rounds)
        trainer.current_gradient_accumulation_steps = 1
        trainer.model.train()
        batch = trainer._prepare_inputs(trainer.data_collator([trainer.train_dataset[i] for i in range(MICRO)]))
        trainers[variant] = (trainer, batch)
    times: dict[str, list[float]] = {name: [] for name in trainers}
    for _ in range(rounds):
        for name, (trainer, batch) in trainers.items():
            start = time.perf_counter()
            trainer.training_step(trainer.model, batch)
            times[name].append(time.perf_counter() - start)
    return [{"variant": name, "step_s": statistics.median(values[1:]), "all": values} for name, values in times.items()]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--variants", default="finetune,finetune-live,trl,trl-precompute")
    parser.add_argument("--hidden", type=int, default=64, help="tiny model hidden size")
    parser.add_argument("--layers", type=int, default=2, help="tiny model layers")
    parser.add_argument("--model-dir", type=Path, default=Path(tempfile.gettempdir()) / "finetune-bench-tiny")
    parser.add_argument("--one", help=argparse.SUPPRESS)
    parser.add_argument("--interleaved", type=int, default=0, metavar="ROUNDS",
                        help="instead: finetune, finetune-live and trl in one process, one micro-batch step each in "
                             "turn for ROUNDS rounds (same machine load for all; forward + backward only)")
    parser.add_argument("--fp32", action="store_true", help="with --interleaved: bf16 off")
    args = parser.parse_args(argv)
    if args.one:
        print("RESULT " + json.dumps(run_one(args.one, args.model_dir, args.steps)), flush=True)
        return 0
    from finetune.testing.tiny_llama import build_tiny_llama

    if (args.hidden, args.layers) != (64, 2):
        args.model_dir = args.model_dir.with_name(f"{args.model_dir.name}-h{args.hidden}-l{args.layers}")
    build_tiny_llama(args.model_dir, hidden_size=args.hidden, layers=args.layers)
    if args.interleaved:
        rows = interleaved(args.model_dir, args.interleaved, bf16=not args.fp32)
        trl = next(r["step_s"] for r in rows if r["variant"] == "trl")
        print(f"model: hidden {args.hidden}, {args.layers} layers; micro batch of {MICRO} pairs, "
              f"{'fp32' if args.fp32 else 'bf16 autocast'}; {args.interleaved} rounds (first not counted); "
              f"load average {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
        print("| variant | s/micro-step (median) | vs trl | every round s |")
        print("|---|---:|---:|---|")
        for r in rows:
            print(f"| {r['variant']} | {r['step_s']:.2f} | {trl / r['step_s']:.2f}x | "
                  f"{', '.join(f'{x:.2f}' for x in r['all'])} |")
        return 0
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
    trl = next((r["step_s"] for r in results if r["variant"] == "trl"), None)
    print(f"model: hidden {args.hidden}, {args.layers} layers; {args.steps} steps of {MICRO}x{ACCUMULATION} pairs; "
          f"load average {' '.join(f'{x:.2f}' for x in os.getloadavg())} at the end")
    print("| variant | s/step | vs trl | one-off setup s | peak RSS GiB |")
    print("|---|---:|---:|---:|---:|")
    for r in results:
        speed = f"{trl / r['step_s']:.2f}x" if trl else "-"
        print(f"| {r['variant']} | {r['step_s']:.2f} | {speed} | {r['setup_s']:.1f} | {r['peak_rss_gib']:.2f} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
