"""DDP step time with and without `find_unused_parameters` (2 gloo CPU processes, the tiny QLoRA+DoRA model).

transformers' default for a PeftModel is `find_unused_parameters=True`: after every forward DDP walks the autograd
graph for parameters that took no part. finetune passes `ddp_find_unused_parameters: False` (finetune.train.args):
every trainable parameter is used each step. This times forward + trained-token loss + backward (the gradient
all-reduce included) per micro batch, both ways, on the same model and rows. Prints a markdown table.

    python scripts/bench_ddp_find_unused.py [--steps 20] [--seq 128] [--hidden 64] [--layers 2]
"""

from __future__ import annotations

import argparse
import os
import socket
import statistics
import tempfile
import time
from pathlib import Path

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from finetune.config import load_recipe_text
from finetune.model.adapters import apply_adapter
from finetune.model.load import load_model
from finetune.model.loss import trained_token_nll
from finetune.model.tokenizer import load_tokenizer
from finetune.testing.tiny_llama import build_tiny_llama

RECIPE = ("base_model: {base}\ndatasets: [{{path: x.jsonl}}]\nadapter: qlora\nload_in_4bit: true\npeft_use_dora: true\n"
          "lora_target_linear: true\nlora_r: 8\nlora_alpha: 16\nbf16: false\n"
          'special_tokens: {{pad_token: "<|finetune_right_pad_id|>", eos_token: "<|eot_id|>"}}\n')


def step_times(rank: int, base: str, find_unused: bool, steps: int, seq: int) -> list[float]:
    settings = load_recipe_text(RECIPE.format(base=base)).settings
    torch.manual_seed(0)
    model = apply_adapter(settings, load_model(settings, load_tokenizer(settings)))
    ddp = torch.nn.parallel.DistributedDataParallel(model, find_unused_parameters=find_unused)
    generator = torch.Generator().manual_seed(rank)
    times = []
    for _ in range(steps + 2):  # two warm-up steps
        ids = torch.randint(100, 5000, (1, seq), generator=generator)
        start = time.perf_counter()
        out = ddp(input_ids=ids, use_cache=False, output_hidden_states=True, logits_to_keep=1)
        nll, count = trained_token_nll(out.hidden_states[-1], ids, model.get_output_embeddings(), model.config)
        (nll / count).backward()
        times.append(time.perf_counter() - start)
        model.zero_grad(set_to_none=True)
    return times[2:]


def worker(rank: int, port: int, base: str, steps: int, seq: int, results: dict) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=2)
    try:
        for find_unused in (True, False, True, False):  # interleaved: a busy machine slows both alike
            times = step_times(rank, base, find_unused, steps, seq)
            if rank == 0:
                results[find_unused] = results.get(find_unused, []) + times  # a manager dict: assign
    finally:
        dist.destroy_process_group()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--seq", type=int, default=128)
    parser.add_argument("--hidden", type=int, default=64)
    parser.add_argument("--layers", type=int, default=2)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp, socket.socket() as sock:
        base = build_tiny_llama(Path(tmp), hidden_size=args.hidden, layers=args.layers)
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
        sock.close()
        results = mp.Manager().dict()
        mp.spawn(worker, args=(port, str(base), args.steps, args.seq, results), nprocs=2)
    print(f"2 gloo processes, tiny QLoRA+DoRA (hidden {args.hidden}, {args.layers} layers), sequence {args.seq}\n")
    print("| find_unused_parameters | median step (ms) | mean step (ms) | steps |")
    print("|---|---|---|---|")
    for flag in (True, False):
        times = results[flag]
        print(f"| {flag} | {1000 * statistics.median(times):.1f} | {1000 * statistics.mean(times):.1f} | {len(times)} |")


if __name__ == "__main__":
    main()
