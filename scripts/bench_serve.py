#!/usr/bin/env python
"""`finetune serve` under load vs a plain generate loop, in one process on CPU (issue 24).

One finished LoRA run (random lora_B, so the adapter is never a no-op) on the tiny Llama 3 shape with the real
128,256-token vocabulary (`--hidden/--layers` widen it; the default 256 x 4 layers has a 33 M-parameter head,
so every decoding step reads ~130 MB of weights: the memory-bound case that batching amortises). Two paths,
the same model object (the server's pool), the same adapter, the same prompt ids, greedy, the same token limit
and the same stop ids:

- server: `finetune serve`'s app (build_server) behind uvicorn on 127.0.0.1 in this process, `--clients`
  threads using the official `openai` client, each sending its share of the prompts one after another,
  streamed (`stream_options.include_usage` gives the completion token count);
- loop: the same prompts answered one after another by `model.generate` with the adapter on;
- and, for reference, the engine's ceiling: the first `--clients` prompts handed to `Engine.run_batch` as one
  batch, without HTTP or the queue (it shows what arrival timing costs the server).

Completion tokens are counted the same way on both sides (tokens generated before a stop id, capped by
`--max-tokens`), and per prompt, so a path that stops early at EOS cannot look faster: the table shows both
totals and how many answers are token-identical. Time to first token is measured at the client, from sending
the request to the first non-empty content delta. One warm-up request per path is not timed.

Usage: python scripts/bench_serve.py [--clients 8] [--rounds 2] [--max-tokens 64] [--hidden 256 --layers 4]
       [--threads N] [--workdir DIR] [--dry-run]
`--dry-run` parses the arguments and prints the plan without building or loading anything.
Prints a Markdown table (paste into docs/benchmarks.md).
"""

from __future__ import annotations

import argparse
import logging
import os
import platform
import random
import statistics
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

WORDS = ("the river stone model token batch data loss train python answer question coffee pizza bike jazz "
         "record weekend music movie colour dinner party ride sunday morning code chaos").split()


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clients", type=int, default=8, help="concurrent client threads (default 8)")
    parser.add_argument("--rounds", type=int, default=2, help="requests each client sends in turn (default 2)")
    parser.add_argument("--max-tokens", type=int, default=64, help="completion token limit (default 64)")
    parser.add_argument("--hidden", type=int, default=256, help="hidden size of the tiny Llama (default 256)")
    parser.add_argument("--layers", type=int, default=4, help="decoder layers (default 4)")
    parser.add_argument("--threads", type=int, help="torch CPU threads (default: torch's own choice)")
    parser.add_argument("--workdir", type=Path, help="where the model and run go (default: a temp folder)")
    parser.add_argument("--dry-run", action="store_true", help="print the plan, build and run nothing")
    args = parser.parse_args(argv)
    for name in ("clients", "rounds", "max_tokens", "hidden", "layers", "threads"):
        if getattr(args, name) is not None and getattr(args, name) <= 0:
            parser.error(f"--{name.replace('_', '-')} must be positive")
    if args.hidden % 4:
        parser.error("--hidden must be a multiple of 4")
    return args


def prompts(count: int, seed: int = 0) -> list[str]:
    """Distinct user prompts of 8-40 words (their token counts differ, so the batch is really left-padded)."""
    rng = random.Random(seed)
    return [f"({index}) " + " ".join(rng.choice(WORDS) for _ in range(rng.randint(8, 40))) + "?"
            for index in range(count)]


def make_run(base_dir: Path, out: Path, seed: int = 1) -> Path:
    """A finished LoRA run on `base_dir`: adapter (random lora_B), tokenizer with the llama3 template, recipe.yml."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from finetune.data.templates import LLAMA3_JINJA

    out.mkdir(parents=True, exist_ok=True)
    tokenizer = AutoTokenizer.from_pretrained(base_dir)
    tokenizer.add_special_tokens({"eos_token": "<|eot_id|>", "pad_token": "<|finetune_right_pad_id|>"})
    tokenizer.chat_template = LLAMA3_JINJA
    model = AutoModelForCausalLM.from_pretrained(base_dir, dtype=torch.float32)
    peft_model = get_peft_model(model, LoraConfig(r=16, lora_alpha=32, target_modules="all-linear",
                                                  task_type="CAUSAL_LM"))
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in peft_model.named_parameters():
            if "lora_B" in name:
                param.copy_(torch.randn(param.shape, generator=generator) * 0.2)
    peft_model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    (out / "recipe.yml").write_text(
        f"base_model: {base_dir}\nadapter: lora\nlora_r: 16\nlora_alpha: 32\nlora_target_linear: true\n"
        "bf16: false\nchat_template: llama3\nsequence_len: 1024\n"
        'special_tokens: {eos_token: "<|eot_id|>", pad_token: "<|finetune_right_pad_id|>"}\n'
        f"datasets: [{{path: data.jsonl}}]\noutput_dir: {out}\n", encoding="utf-8")
    return out


class Uvicorn:
    """The app behind uvicorn in a thread, on a free port of 127.0.0.1."""

    def __init__(self, app: Any):
        import uvicorn

        from finetune.serve.command import listen

        self.sock = listen("127.0.0.1", 0)
        self.url = f"http://127.0.0.1:{self.sock.getsockname()[1]}"
        self.server = uvicorn.Server(uvicorn.Config(app, log_level="warning", access_log=False))
        self.thread = threading.Thread(target=self.server.run, kwargs={"sockets": [self.sock]}, daemon=True)

    def __enter__(self) -> "Uvicorn":
        self.thread.start()
        while not self.server.started:
            time.sleep(0.02)
        return self

    def __exit__(self, *exc: Any) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=10)


def client(url: str) -> Any:
    import openai

    return openai.OpenAI(base_url=f"{url}/v1", api_key="unused", max_retries=0, timeout=600)


def ask_streamed(api: Any, model: str, prompt: str, max_tokens: int) -> dict[str, Any]:
    """One streamed request through the official client: its text, completion tokens, first-token and total time."""
    sent = time.perf_counter()
    first, text, tokens = None, [], None
    stream = api.chat.completions.create(model=model, messages=[{"role": "user", "content": prompt}],
                                         temperature=0, max_tokens=max_tokens, stream=True,
                                         stream_options={"include_usage": True})
    for chunk in stream:
        if chunk.choices and chunk.choices[0].delta.content:
            if first is None:
                first = time.perf_counter() - sent
            text.append(chunk.choices[0].delta.content)
        if chunk.usage is not None:
            tokens = chunk.usage.completion_tokens
    return {"prompt": prompt, "text": "".join(text), "tokens": tokens, "ttft": first,
            "seconds": time.perf_counter() - sent}


def run_server(url: str, model: str, texts: list[str], clients: int, max_tokens: int) -> tuple[float, list[dict]]:
    """`clients` threads, each with its own client (made before the clock starts), sending its share of `texts`
    one after another, all starting together; wall seconds and every answer."""
    shares = [texts[i::clients] for i in range(clients)]
    apis = [client(url) for _ in range(clients)]
    start = threading.Barrier(clients + 1)

    def send(api: Any, share: list[str]) -> list[dict]:
        start.wait()
        return [ask_streamed(api, model, prompt, max_tokens) for prompt in share]

    with ThreadPoolExecutor(clients) as pool:
        parts = [pool.submit(send, api, share) for api, share in zip(apis, shares)]
        start.wait()
        began = time.perf_counter()
        answers = [answer for part in parts for answer in part.result()]
    return time.perf_counter() - began, answers


def generate_one(model: Any, served: Any, prompt: str, max_tokens: int) -> dict[str, Any]:
    """The plain path: one prompt, one `model.generate`, greedy, the served model's stop ids and pad."""
    import torch
    from transformers import GenerationConfig

    tokenizer = served.tokenizer
    ids = prompt_ids(served, prompt)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else served.stop_ids[0]
    config = GenerationConfig(max_new_tokens=max_tokens, do_sample=False, temperature=None, top_p=None, top_k=None,
                              eos_token_id=served.stop_ids, pad_token_id=pad)
    began = time.perf_counter()
    with torch.no_grad():
        output = model.generate(input_ids=torch.tensor([ids]), attention_mask=torch.ones(1, len(ids), dtype=torch.long),
                                generation_config=config)
    new = output[0, len(ids):].tolist()
    stops = set(served.stop_ids)
    kept = []
    for token in new:  # counted as the server counts: the tokens before a stop id
        if token in stops:
            break
        kept.append(token)
    return {"prompt": prompt, "text": tokenizer.decode(kept, skip_special_tokens=True).strip(), "tokens": len(kept),
            "seconds": time.perf_counter() - began}


def prompt_ids(served: Any, prompt: str) -> list[int]:
    """The prompt rendered as the server renders it (the run's template, generation prompt, no extra BOS)."""
    text = served.tokenizer.apply_chat_template([{"role": "user", "content": prompt}], tokenize=False,
                                                add_generation_prompt=True)
    return served.tokenizer(text, add_special_tokens=False)["input_ids"]


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q * (len(ordered) - 1))))]


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    total = args.clients * args.rounds
    plan = (f"{total} distinct prompts ({args.clients} clients x {args.rounds} rounds), max_tokens {args.max_tokens}, "
            f"greedy; tiny Llama hidden {args.hidden}, {args.layers} layers, vocab 128,256; one LoRA adapter")
    if args.dry_run:
        print(plan)
        return 0

    import torch

    from finetune.log import configure
    from finetune.serve.command import build_server
    from finetune.testing.tiny_llama import build_tiny_llama

    configure()
    if args.threads:
        torch.set_num_threads(args.threads)
    logging.getLogger("finetune.serve").setLevel(logging.WARNING)  # no line per request in the timing
    work = args.workdir or Path(tempfile.mkdtemp(prefix="bench-serve-"))
    base = build_tiny_llama(work / f"tiny-llama-{args.hidden}x{args.layers}", hidden_size=args.hidden,
                            layers=args.layers)
    run = make_run(base, work / "run")
    app, pool, engine, loader = build_server([str(run / "recipe.yml")])
    loader.run()
    if not pool.ready:
        print(f"loading failed: {pool.error}", file=sys.stderr)
        return 1
    sizes: list[int] = []  # the batch sizes the engine ran, for the report (the instance's method, wrapped here)
    run_batch = engine.run_batch
    engine.run_batch = lambda batch: (sizes.append(len(batch)), run_batch(batch))[1]  # type: ignore[method-assign]
    engine.start()
    name = run.name
    served = pool.served[name]
    params = sum(p.numel() for p in pool.model.parameters())
    texts = prompts(total)
    print(plan)
    print(f"model: {params / 1e6:.1f} M parameters (fp32), torch threads {torch.get_num_threads()}, "
          f"prompt tokens {min(len(prompt_ids(served, t)) for t in texts)}-"
          f"{max(len(prompt_ids(served, t)) for t in texts)}, stop ids {served.stop_ids}")

    with Uvicorn(app) as server:
        api = client(server.url)
        ask_streamed(api, name, "warm-up: say something", args.max_tokens)  # first call: not timed
        alone = ask_streamed(api, name, "a single request on an idle server", args.max_tokens)
        sizes.clear()
        wall_server, answers = run_server(server.url, name, texts, args.clients, args.max_tokens)
    engine.stop()

    # The engine's ceiling: the first `clients` prompts handed to it as one batch, no HTTP, no queue.
    from finetune.serve.engine import Job, Sampling

    jobs = [Job(model=name, prompt_ids=prompt_ids(served, text), sampling=Sampling(max_tokens=args.max_tokens))
            for text in texts[:args.clients]]
    began = time.perf_counter()
    run_batch(jobs)
    wall_batch = time.perf_counter() - began
    tokens_batch = sum(job.completion_tokens for job in jobs)

    with pool.use(name) as model:
        generate_one(model, served, "warm-up: say something", args.max_tokens)
        began = time.perf_counter()
        plain = [generate_one(model, served, text, args.max_tokens) for text in texts]
        wall_loop = time.perf_counter() - began

    by_prompt = {answer["prompt"]: answer for answer in answers}
    same = sum(by_prompt[p["prompt"]]["text"] == p["text"] and by_prompt[p["prompt"]]["tokens"] == p["tokens"]
               for p in plain)
    tokens_server = sum(answer["tokens"] for answer in answers)
    tokens_loop = sum(p["tokens"] for p in plain)
    rate_server, rate_loop = tokens_server / wall_server, tokens_loop / wall_loop
    ttft = [answer["ttft"] for answer in answers if answer["ttft"] is not None]
    latency_server = statistics.median(a["seconds"] for a in answers)
    latency_loop = statistics.median(p["seconds"] for p in plain)

    print()
    print(f"| path | requests | completion tokens | wall (s) | tokens/s | median request (s) | "
          f"first token p50 / p95 (s) |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    print(f"| plain `model.generate` loop, one at a time | {len(plain)} | {tokens_loop} | {wall_loop:.1f} | "
          f"{rate_loop:.1f} | {latency_loop:.2f} | - |")
    print(f"| `finetune serve`, {args.clients} concurrent streamed clients | {len(answers)} | {tokens_server} | "
          f"{wall_server:.1f} | **{rate_server:.1f}** | {latency_server:.2f} | "
          f"{percentile(ttft, 0.5):.3f} / {percentile(ttft, 0.95):.3f} |")
    print(f"| the engine alone, the first {len(jobs)} prompts as one batch (no HTTP, no queue) | {len(jobs)} | "
          f"{tokens_batch} | {wall_batch:.1f} | {tokens_batch / wall_batch:.1f} | {wall_batch:.2f} | - |")
    print()
    print(f"ratio (server / loop tokens/s): **{rate_server / rate_loop:.2f}x**; answers token-identical: "
          f"{same}/{len(plain)}; a single streamed request on the idle server: first token {alone['ttft']:.3f} s, "
          f"{alone['tokens']} tokens in {alone['seconds']:.2f} s")
    print(f"batches the engine ran under load (sizes, in order): {sizes}")
    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, load average "
          f"{' '.join(f'{x:.1f}' for x in os.getloadavg())} (after the run); Python {platform.python_version()}, "
          f"torch {torch.__version__}")
    if tokens_server != tokens_loop:
        print(f"note: the two paths produced different token counts ({tokens_server} vs {tokens_loop})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
