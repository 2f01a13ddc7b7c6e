#!/usr/bin/env python
"""Benchmark `finetune preprocess` on a deterministic synthetic multi-turn chat corpus.

Usage: python scripts/bench_preprocess.py [--conversations 5000] [--workdir DIR] [--keep]

Writes ~5,000 conversations (~3.7 M Llama 3 tokens; multi-turn, a system prompt in
about a third, some longer than 4,096 tokens) as JSONL, a recipe like the seed one
(llama3 template, sequence_len 4096, packing), and a tiny Llama model directory for
the real Llama 3 tokenizer. Then runs `finetune preprocess` twice as a subprocess
(cold: empty cache; warm: cache hit), measuring wall time and peak memory of the
whole process tree (sampled from /proc, and the largest child's ru_maxrss), and
prints a Markdown table.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

SYLLABLES = (
    "ka ri to na mi se lo pu de fa ve in on an er es al or ti ra ne co ma li ta pe so du be ge "
    "ho ju ke mo nu pa qui sa ta vi wo xe yo za tion ment ness able ly ing ed"
).split()
COMMON = (
    "the of and to in is that it for on with as was at by be this are from or have an they which "
    "you one we all can there their has more if will would about when what so no out up into do "
    "model data train loss token batch python function value error file line code run memory"
).split()


def make_words(rng: random.Random, count: int) -> list[str]:
    words = set(COMMON)
    while len(words) < count:
        words.add("".join(rng.choice(SYLLABLES) for _ in range(rng.choice((1, 2, 2, 3, 3, 4)))))
    return sorted(words)


def sentence(rng: random.Random, words: list[str]) -> str:
    n = max(3, int(rng.gauss(14, 6)))
    picked = [rng.choice(COMMON) if rng.random() < 0.45 else rng.choice(words) for _ in range(n)]
    if rng.random() < 0.1:
        picked.insert(rng.randrange(len(picked)), str(rng.randrange(10_000)))
    text = " ".join(picked)
    return text[0].upper() + text[1:] + rng.choice(".....?!")


def message(rng: random.Random, words: list[str], mean_sentences: float) -> str:
    paragraphs = []
    remaining = max(1, int(rng.lognormvariate(0, 0.8) * mean_sentences))
    while remaining > 0:
        take = min(remaining, rng.randint(2, 6))
        paragraphs.append(" ".join(sentence(rng, words) for _ in range(take)))
        remaining -= take
    if rng.random() < 0.15:
        code = "\n".join(f"    {rng.choice(words)} = {rng.choice(words)}({rng.randrange(100)})" for _ in range(rng.randint(2, 12)))
        paragraphs.insert(rng.randrange(len(paragraphs) + 1), f"```python\ndef {rng.choice(words)}():\n{code}\n```")
    return "\n\n".join(paragraphs)


def conversation(rng: random.Random, words: list[str]) -> dict:
    messages = []
    if rng.random() < 0.35:
        messages.append({"role": "system", "content": message(rng, words, 2)})
    long = rng.random() < 0.03  # a few conversations longer than 4096 tokens
    turns = rng.randint(8, 14) if long else min(1 + int(rng.expovariate(0.55)), 10)
    for _ in range(turns):
        messages.append({"role": "user", "content": message(rng, words, 2.2)})
        messages.append({"role": "assistant", "content": message(rng, words, 8 if long else 4.6)})
    return {"messages": messages}


def write_corpus(path: Path, count: int, seed: int) -> None:
    rng = random.Random(seed)
    words = make_words(rng, 3000)
    with open(path, "w", encoding="utf-8") as handle:
        for _ in range(count):
            handle.write(json.dumps(conversation(rng, words), ensure_ascii=False) + "\n")


RECIPE = """\
base_model: {model}
chat_template: llama3
datasets:
  - path: {data}
    type: chat_template
dataset_prepared_path: {prepared}
val_set_size: 0.005
sequence_len: 4096
sample_packing: true
eval_sample_packing: false
pad_to_sequence_len: true
train_on_inputs: false
special_tokens:
  pad_token: "<|finetune_right_pad_id|>"
  eos_token: "<|eot_id|>"
"""


def tree_rss(root: int) -> int:
    """Resident bytes of `root` and all its descendants (from /proc)."""
    children: dict[int, list[int]] = {}
    rss: dict[int, int] = {}
    page = os.sysconf("SC_PAGE_SIZE")
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as handle:
                fields = handle.read().rsplit(")", 1)[1].split()
            rss[int(entry)] = int(fields[21]) * page
            children.setdefault(int(fields[1]), []).append(int(entry))
        except (OSError, IndexError, ValueError):
            continue
    total, stack = 0, [root]
    while stack:
        pid = stack.pop()
        total += rss.get(pid, 0)
        stack.extend(children.get(pid, []))
    return total


def cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def run(command: list[str]) -> tuple[float, float, int, str]:
    """(wall seconds, CPU seconds, peak tree RSS bytes, stdout) of one command."""
    cpu_before = cpu_seconds()
    started = time.perf_counter()
    proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    peak = 0
    while proc.poll() is None:
        peak = max(peak, tree_rss(proc.pid))
        time.sleep(0.02)
    wall = time.perf_counter() - started
    out, err = proc.communicate()
    if proc.returncode != 0:
        sys.exit(f"command failed ({proc.returncode}): {' '.join(command)}\n{out}\n{err}")
    return wall, cpu_seconds() - cpu_before, peak, out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--conversations", type=int, default=5000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--workdir", type=Path, default=None, help="default: a fresh temp dir")
    parser.add_argument("--keep", action="store_true", help="keep the work dir")
    args = parser.parse_args(argv)

    from finetune.testing.tiny_llama import build_tiny_llama

    work = args.workdir or Path(tempfile.mkdtemp(prefix="bench-preprocess-"))
    work.mkdir(parents=True, exist_ok=True)
    model = build_tiny_llama(work / "tiny-llama")
    data = work / "chats.jsonl"
    write_corpus(data, args.conversations, args.seed)
    prepared = work / "prepared"
    shutil.rmtree(prepared, ignore_errors=True)
    recipe = work / "recipe.yml"
    recipe.write_text(RECIPE.format(model=model, data=data, prepared=prepared), encoding="utf-8")

    finetune = shutil.which("finetune") or str(Path(sys.executable).parent / "finetune")
    command = [finetune, "preprocess", str(recipe), "--no-progress"]
    load_before = os.getloadavg()[0]
    cold_wall, cold_cpu, cold_peak, cold_out = run(command)
    warm_wall, warm_cpu, warm_peak, warm_out = run(command)
    largest_child = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss * 1024
    summary = json.loads(next(prepared.glob("*/summary.json")).read_text())
    if "cache hit" not in warm_out:
        print("warning: the second run did not report a cache hit", file=sys.stderr)

    tokens = summary["tokens"] + summary["eval_tokens"]
    read = sum(summary["read"].values())
    gib = 1024**3
    print(f"data: {data} ({data.stat().st_size / 1e6:.1f} MB), {read:,} conversations, {tokens:,} tokens kept")
    print(f"dropped: {summary['dropped']}; packing efficiency {summary['packing_efficiency']:.4f} "
          f"({summary['train_rows']:,} rows of 4096)")
    print(f"largest single process (ru_maxrss): {largest_child / gib:.2f} GiB; "
          f"load average before: {load_before:.1f} (other processes compete for the CPUs when > 0.5)")
    print(f"prepare_data alone (after imports and tokenizer load): {summary['seconds']:.2f} s\n")
    print("| run | wall (s) | CPU user+sys (s) | tokens/s (wall) | peak RSS, process tree (GiB) |")
    print("|---|---:|---:|---:|---:|")
    print(f"| cold (build) | {cold_wall:.2f} | {cold_cpu:.2f} | {tokens / cold_wall:,.0f} | {cold_peak / gib:.2f} |")
    print(f"| warm (cache hit) | {warm_wall:.2f} | {warm_cpu:.2f} | - | {warm_peak / gib:.2f} |")
    if not args.keep and args.workdir is None:
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
