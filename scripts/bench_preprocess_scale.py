#!/usr/bin/env python
"""Benchmark `finetune preprocess` as the corpus grows: wall time, tokens/s and peak memory per size.

Usage: python scripts/bench_preprocess_scale.py [--sizes 5000 50000 500000] [--workdir DIR]
       [--shard-size N] [--workers N]

For every size, writes that many synthetic multi-turn chats with the generator of
scripts/bench_preprocess.py (same seed, same distribution; kept in the work dir and reused by
later runs), a recipe like the seed one (llama3 template, sequence_len 4096, packing, val 0.5%),
and runs `finetune preprocess --force` as a subprocess, sampling the resident memory (RSS) of the
whole process tree (tokenizer workers included) every 20 ms, and its proportional set size (PSS:
pages the forked workers share with the main process counted once) every 0.2 s. Prints a Markdown
table.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from bench_preprocess import RECIPE, cpu_seconds, tree_rss, write_corpus  # noqa: E402

GIB = 1024**3


def tree_pss(root: int) -> int:
    """Proportional set size of `root` and its descendants: pages shared by forked workers counted once."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as handle:
                    children.setdefault(int(handle.read().rsplit(")", 1)[1].split()[1]), []).append(int(entry))
            except (OSError, IndexError, ValueError):
                continue
    total, stack = 0, [root]
    while stack:
        pid = stack.pop()
        stack.extend(children.get(pid, []))
        try:
            with open(f"/proc/{pid}/smaps_rollup") as handle:
                total += sum(int(line.split()[1]) * 1024 for line in handle if line.startswith("Pss:"))
        except OSError:
            continue
    return total


def measure(command: list[str]) -> tuple[float, float, int, int, str]:
    """(wall seconds, CPU seconds, peak tree RSS bytes, peak tree PSS bytes, stdout) of one command."""
    cpu_before = cpu_seconds()
    started = time.perf_counter()
    proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    peak = peak_pss = samples = 0
    while proc.poll() is None:
        peak = max(peak, tree_rss(proc.pid))
        if samples % 10 == 0:  # smaps_rollup costs more to read: every 0.2 s
            peak_pss = max(peak_pss, tree_pss(proc.pid))
        samples += 1
        time.sleep(0.02)
    wall = time.perf_counter() - started
    out, err = proc.communicate()
    if proc.returncode != 0:
        sys.exit(f"command failed ({proc.returncode}): {' '.join(command)}\n{out}\n{err}")
    return wall, cpu_seconds() - cpu_before, peak, peak_pss, out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[5000, 50000, 500000])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--workdir", type=Path, default=None, help="default: a fresh temp dir (removed after)")
    parser.add_argument("--shard-size", type=int, default=None, help="preprocess_shard_size (default: the setting's)")
    parser.add_argument("--workers", type=int, default=None, help="preprocess_workers (default: the setting's)")
    args = parser.parse_args(argv)

    from finetune.testing.tiny_llama import build_tiny_llama

    work = args.workdir or Path(tempfile.mkdtemp(prefix="bench-scale-"))
    work.mkdir(parents=True, exist_ok=True)
    model = work / "tiny-llama"
    if not (model / "config.json").is_file():
        build_tiny_llama(model)
    finetune = shutil.which("finetune") or str(Path(sys.executable).parent / "finetune")
    print(f"machine: {os.cpu_count()} CPUs; load average before: {os.getloadavg()[0]:.1f}")
    rows = []
    for size in args.sizes:
        data = work / f"chats-{size}.jsonl"
        if not data.is_file():
            started = time.perf_counter()
            write_corpus(data.with_suffix(".tmp"), size, args.seed)
            data.with_suffix(".tmp").rename(data)
            print(f"wrote {data} ({data.stat().st_size / 1e6:,.0f} MB) in {time.perf_counter() - started:.0f} s")
        prepared = work / f"prepared-{size}"
        shutil.rmtree(prepared, ignore_errors=True)
        recipe = work / f"recipe-{size}.yml"
        extra = ""
        if args.shard_size:
            extra += f"preprocess_shard_size: {args.shard_size}\n"
        if args.workers is not None:
            extra += f"preprocess_workers: {args.workers}\n"
        recipe.write_text(RECIPE.format(model=model, data=data, prepared=prepared) + extra, encoding="utf-8")
        wall, cpu, peak, pss, _ = measure([finetune, "preprocess", str(recipe), "--no-progress", "--force"])
        summary = json.loads(next(prepared.glob("*/summary.json")).read_text())
        shutil.rmtree(prepared, ignore_errors=True)
        tokenized = summary.get("tokenized_tokens", 0)
        rows.append(
            f"| {size:,} | {data.stat().st_size / 1e6:,.0f} | {tokenized / 1e6:,.1f} | "
            f"{(summary['tokens'] + summary['eval_tokens']) / 1e6:,.1f} | {wall:,.1f} | {cpu:,.1f} | {summary['seconds']:,.1f} | "
            f"{tokenized / wall:,.0f} | {peak / GIB:.2f} | {pss / GIB:.2f} | {summary['packing_efficiency']:.4f} |"
        )
        print(rows[-1], flush=True)
    print()
    print("| conversations | JSONL (MB) | tokenized (M) | kept (M) | wall (s) | CPU user+sys (s) | prepare_data (s) "
          "| tokens/s (wall) "
          "| peak RSS, process tree (GiB) | peak PSS, process tree (GiB) | packing efficiency @4096 |")
    print("|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    print("\n".join(rows))
    if args.workdir is None:
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
