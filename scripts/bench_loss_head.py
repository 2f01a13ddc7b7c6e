"""The loss head alone: fused (finetune.model.loss) vs TRL's tiled function, a row-chunk sweep, and bf16 vs fp32 products.

Forward + backward of the trained-token NLL over N rows against a [V, H] head, as in scripts/bench_train.py
(2,300 trained rows, 128,256-column vocabulary, hidden 64, bf16 weights). Prints a markdown table.

    python scripts/bench_loss_head.py [--rows 2300] [--vocab 128256] [--hidden 64] [--no-trl]
"""

from __future__ import annotations

import argparse
import os
import time

import torch

from finetune.model.loss import fused_nll, trained_token_nll


def timed(fn, repeats: int = 2) -> float:
    fn()  # warm-up
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - start)
    return best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=2300)
    parser.add_argument("--vocab", type=int, default=128256)
    parser.add_argument("--hidden", type=int, default=64)
    parser.add_argument("--no-trl", action="store_true", help="skip TRL's tiled function (slow on CPU)")
    args = parser.parse_args()
    torch.manual_seed(0)
    weight = (torch.randn(args.vocab, args.hidden) * 0.02).to(torch.bfloat16)
    hidden = torch.randn(args.rows, args.hidden, dtype=torch.bfloat16)
    targets = torch.randint(0, args.vocab, (args.rows,))
    head = torch.nn.Linear(args.hidden, args.vocab, bias=False, dtype=torch.bfloat16)
    head.weight.data.copy_(weight)
    head.weight.requires_grad_(False)
    labels = torch.cat([torch.full((1,), -100), targets]).unsqueeze(0)

    def run(loss_head: str) -> None:
        h = hidden.unsqueeze(0).clone().requires_grad_(True)
        nll, _ = trained_token_nll(torch.cat([h, h[:, :1]], 1), labels, head, object(), loss_head=loss_head)
        nll.backward()

    rows = [("fused (default chunk)", timed(lambda: run("fused")))]
    if not args.no_trl:
        rows.append(("trl tiled", timed(lambda: run("trl"), repeats=1)))
    for chunk in (16, 32, 64, 128):
        def sweep(chunk: int = chunk) -> None:
            h = hidden.clone().requires_grad_(True)
            fused_nll(h, weight, None, targets, row_chunk=chunk)[0].backward()

        rows.append((f"fused, {chunk} rows per chunk", timed(sweep)))
    a = torch.randn(64, args.vocab)
    b = torch.randn(args.vocab, args.hidden)
    for dtype in (torch.bfloat16, torch.float32):
        x, y = a.to(dtype), b.to(dtype)
        rows.append((f"[64, V] @ [V, H] product, {str(dtype).removeprefix('torch.')}", timed(lambda: x @ y)))
    print(f"rows {args.rows}, vocab {args.vocab}, hidden {args.hidden}; load average {os.getloadavg()[0]:.2f}")
    print("| case | seconds |\n|---|---:|")
    for name, seconds in rows:
        print(f"| {name} | {seconds:.3f} |")


if __name__ == "__main__":
    main()
