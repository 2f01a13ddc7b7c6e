"""`finetune COMMAND recipe.yml`: argument parsing, exit codes, and errors turned into messages.

Only the standard library and finetune's own light modules (errors, log, requirements) are imported at
module level, so `finetune --help` stays instant: the recipe loader (pydantic) and each command package are
imported when that command runs. Every command reports a problem by raising a `FinetuneError`; `main`, the
process edge, turns it into `error: ...` on stderr and its exit code (2 bad input, 1 environment). `main` also
sets up the log channel (`finetune.log.configure`: notices on stderr from rank 0, third-party noise dropped
unless --verbose) before any command imports a library.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path
from typing import Callable, Sequence

from finetune.errors import FinetuneError, UsageError
from finetune.log import configure
from finetune.requirements import check_installed

EXIT_OK, EXIT_FAILED, EXIT_BAD_INPUT, EXIT_INTERRUPTED = 0, 1, 2, 130

logger = logging.getLogger(__name__)


def main(argv: Sequence[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return EXIT_BAD_INPUT
    command: Callable[[argparse.Namespace], int] = args.run
    configure(rank=int(os.environ.get("RANK", "0")), verbose=args.verbose)

    try:
        return command(args)
    except FinetuneError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="finetune",
        description="Fine-tune LLMs from a YAML recipe (Axolotl-compatible keys).",
    )
    parser.add_argument("--verbose", action="store_true",
                        help="also print debug lines and the third-party messages finetune hides")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    def command(name: str, run: Callable, help: str, recipe: bool = True) -> argparse.ArgumentParser:
        p = sub.add_parser(name, help=help, description=help)
        p.set_defaults(run=run)
        if recipe:
            p.add_argument("config", help="the recipe (YAML)")
            p.add_argument(
                "--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                help="override a recipe key (dotted for nested keys: datasets.0.path=x.jsonl); repeatable",
            )
        return p

    p = command("validate", _validate, "check a recipe and print the resolved settings and derived values")
    p.add_argument("--num-processes", type=int, default=None, metavar="N",
                   help="world size to assume for the effective batch (default: WORLD_SIZE or 1)")
    p.add_argument("--quiet", action="store_true", help="print only problems")

    command("keys", _keys, "list every recipe key with its type, default and meaning", recipe=False)

    p = command("preprocess", _preprocess, "tokenize, mask and pack the data into the cache that train reuses")
    p.add_argument("--force", action="store_true", help="rebuild even when a matching cache exists")
    p.add_argument("--show", type=int, default=0, metavar="N",
                   help="print N prepared rows with trained tokens marked")
    p.add_argument("--no-progress", action="store_true", help="no progress lines")

    p = command("chat", _chat, "talk to the trained model (base + adapter) with its saved chat template")
    p.add_argument("--adapter", default=None, metavar="DIR", help="adapter directory (default: output_dir)")
    p.add_argument("--prompt", default=None, help="answer this one prompt and exit")
    p.add_argument("--file", default=None, metavar="JSONL",
                   help='rows {"prompt": ...} or {"messages": [...]}; answers written as JSONL')
    p.add_argument("--output", default=None, metavar="FILE", help="write the --file answers here (default: stdout)")
    p.add_argument("--base-only", action="store_true", help="answer with the base model alone, to compare")
    p.add_argument("--system", default=None, help="system prompt")
    p.add_argument("--temperature", type=float, default=0.7, help="sampling temperature; 0 = greedy")
    p.add_argument("--top-p", type=float, default=0.9, help="nucleus sampling threshold")
    p.add_argument("--max-new-tokens", type=int, default=512, help="longest answer in tokens")
    p.add_argument("--seed", type=int, default=None, help="sampling seed")

    p = command("merge", _merge, "merge the adapter into the base: a standalone model in sharded safetensors")
    p.add_argument("--adapter", default=None, metavar="DIR", help="adapter directory (default: output_dir)")
    p.add_argument("--out", default=None, metavar="DIR", help="where to write the model (default: output_dir/merged)")
    p.add_argument("--dtype", choices=["bf16", "fp16"], default="bf16", help="dtype of the merged weights")
    p.add_argument("--max-shard-size", default="2GB", metavar="SIZE", help="largest shard file (2GB, 500MB, 1GiB)")

    p = command("export", _export, "write the trained model as GGUF for llama.cpp, Ollama and LM Studio")
    p.add_argument("--gguf", required=True, metavar="QUANT",
                   help="f32, f16, bf16, q8_0, q4_0, or (with llama-cpp-python) q4_k_m, q5_k_m, q6_k")
    p.add_argument("--adapter", default=None, metavar="DIR", help="adapter directory (default: output_dir)")
    p.add_argument("--adapter-only", action="store_true",
                   help="write only the LoRA adapter as a llama.cpp GGUF adapter (f32, f16, bf16, q8_0), "
                        "to use with `--lora` on a base GGUF or an Ollama ADAPTER line")
    p.add_argument("--base-gguf", default=None, metavar="FILE",
                   help="with --adapter-only: the base model's GGUF, for a Modelfile that stacks the adapter on it")

    p = command("evaluate", _evaluate, "eval loss and perplexity of the base and the fine-tuned model")
    p.add_argument("--adapter", default=None, metavar="DIR", help="adapter directory (default: output_dir)")
    p.add_argument("--dataset", default=None, metavar="FILE",
                   help="evaluate on this file (formatted like the recipe's first dataset) instead of the validation split")
    p.add_argument("--output", default=None, metavar="FILE", help="JSON results (default: output_dir/eval_results.json)")
    p.add_argument("--no-base", action="store_true", help="skip the base model")
    p.add_argument("--batch-size", type=int, default=None, metavar="N", help="rows per forward pass")

    p = command("report", _report, "score the base and every checkpoint on held-out chats: loss, style, replay, leaks")
    p.add_argument("--adapter", default=None, metavar="DIR", help="run directory (default: output_dir)")
    p.add_argument("--checkpoints", default="all", metavar="all|last|STEP,...", help="checkpoints to score (default all)")
    p.add_argument("--max-conversations", type=int, default=40, metavar="N", help="held-out conversations to use")
    p.add_argument("--out", default=None, metavar="DIR", help="where to write the report (default: output_dir/report)")
    p.add_argument("--dataset", default=None, metavar="FILE",
                   help="held-out conversations from this file (formatted like the recipe's first dataset)")
    p.add_argument("--temperature", type=float, default=0.0, help="sampling temperature; 0 = greedy (default)")
    p.add_argument("--max-new-tokens", type=int, default=64, help="longest generated reply in tokens")
    p.add_argument("--batch-size", type=int, default=8, metavar="N", help="prompts generated together")
    p.add_argument("--no-progress", action="store_true", help="no progress lines")

    p = command("plan", _plan, "estimate per-GPU peak memory for the recipe and say whether it fits")
    p.add_argument("--gpu-memory", default="24GiB", metavar="SIZE",
                   help="memory per GPU: 24GiB, 80GB, 24000MiB (a bare number means GiB; default 24GiB)")
    p.add_argument("--num-processes", type=int, default=None, metavar="N",
                   help="GPUs/processes to plan for (default: WORLD_SIZE or 1)")

    from finetune.importers.arguments import add_arguments as import_arguments

    p = command("import", _import,
                "turn a chat export (Telegram, WhatsApp, Discord, Messenger, Instagram) into chat_template JSONL rows",
                recipe=False)
    import_arguments(p)

    p = command("serve", _serve, "serve runs through an OpenAI-compatible API and a web page (chat, compare, "
                "blind test)", recipe=False)
    p.add_argument("runs", nargs="+", metavar="RECIPE_OR_RUN",
                   help="recipes (their output_dir) or run folders; all of one base, loaded once")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a recipe key of every recipe named; repeatable")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1: this machine only)")
    p.add_argument("--port", type=int, default=8000, help="port (default 8000; 0 picks a free one)")
    p.add_argument("--api-key", default=None, metavar="KEY", help="require `Authorization: Bearer KEY` on /v1")
    p.add_argument("--checkpoints", action="store_true", help="also serve every checkpoint of each run")
    p.add_argument("--heldout", default=None, metavar="JSONL",
                   help='conversations ({"messages": [...]}) whose last reply of yours the blind test compares against')

    p = command("train", _train, "fine-tune the model the recipe describes")
    p.add_argument("--num-processes", type=int, default=None, metavar="N",
                   help="processes to start (default: one per visible GPU, else 1; on CPU N gloo processes)")
    p.add_argument("--no-resume", action="store_true", help="start over even if output_dir holds checkpoints")
    p.add_argument("--overwrite", action="store_true", help="allow replacing a finished run in output_dir")
    p.add_argument("--force-preprocess", action="store_true", help="rebuild the data cache first")
    multi = p.add_argument_group("several machines (passed to torchrun; an absent flag reads the variable in [])")
    multi.add_argument("--nnodes", type=int, default=None, help="number of machines [NNODES] (default 1)")
    multi.add_argument("--node-rank", type=int, default=None, help="this machine's rank [NODE_RANK] (default 0)")
    multi.add_argument("--master-addr", default=None, help="address of the rank-0 machine [MASTER_ADDR]")
    multi.add_argument("--master-port", type=int, default=None, help="port on the rank-0 machine [MASTER_PORT]")
    multi.add_argument("--rdzv-endpoint", default=None, metavar="HOST:PORT",
                       help="c10d rendezvous instead of a fixed rank-0 machine (ranks assigned as machines join)")
    multi.add_argument("--max-restarts", type=int, default=0, metavar="N",
                       help="restart all processes up to N times after a failure, resuming from the latest checkpoint")
    return parser


# --- commands ----------------------------------------------------------------------------------


def _load(args: argparse.Namespace):
    from finetune.config import load_recipe

    loaded = load_recipe(args.config, args.overrides)
    for notice in loaded.notices:
        logger.warning("%s", notice)
    return loaded


def _validate(args: argparse.Namespace) -> int:
    from finetune.config.describe import derived_values, resolved_yaml

    loaded = _load(args)
    check_installed()
    if args.quiet:
        return EXIT_OK
    world = _world_size(args)
    print(f"# {args.config}: valid\n")
    print(resolved_yaml(loaded.settings))
    print("# derived")
    rows = derived_values(loaded.settings, world)
    width = max(len(name) for name, _ in rows)
    for name, value in rows:
        print(f"{name:<{width}}  {value}")
    if args.num_processes is None and "WORLD_SIZE" not in os.environ:
        print("\n(assuming 1 process; pass --num-processes N for N GPUs)")
    return EXIT_OK


def _keys(args: argparse.Namespace) -> int:
    from finetune.config.describe import key_reference

    for key, type_, default, meaning in key_reference():
        print(f"{key}: {type_} = {default}\n    {meaning}")
    return EXIT_OK


def _preprocess(args: argparse.Namespace) -> int:
    from finetune.train.preprocess import preprocess

    if args.show < 0:
        raise UsageError("--show takes a count of rows, 0 or more")
    loaded = _load(args)
    preprocess(loaded.settings, force=args.force, show=args.show, progress=not args.no_progress)
    return EXIT_OK


def _world_size(args: argparse.Namespace) -> int:
    world = args.num_processes or int(os.environ.get("WORLD_SIZE", "1"))
    if world < 1:
        raise UsageError("--num-processes must be at least 1")
    return world


def _chat(args: argparse.Namespace) -> int:
    from finetune.infer.chat import chat_main

    return chat_main(
        _load(args).settings,
        adapter_dir=args.adapter,
        prompt=args.prompt,
        file=args.file,
        output=args.output,
        base_only=args.base_only,
        temperature=args.temperature,
        top_p=args.top_p,
        max_new_tokens=args.max_new_tokens,
        seed=args.seed,
        system=args.system,
    )


def _merge(args: argparse.Namespace) -> int:
    from finetune.export.merge import merge_adapter

    out = merge_adapter(
        _load(args).settings,
        adapter_dir=args.adapter,
        out_dir=args.out,
        dtype=args.dtype,
        max_shard_size=args.max_shard_size,
    )
    print(f"merged model: {out}")
    return EXIT_OK


def _export(args: argparse.Namespace) -> int:
    from finetune.export.command import export_gguf
    from finetune.export.lora import export_lora_gguf

    if args.base_gguf is not None and not args.adapter_only:
        raise UsageError("--base-gguf goes with --adapter-only (a full export is its own base)")
    settings = _load(args).settings
    if args.adapter_only:
        path = export_lora_gguf(settings, args.gguf, adapter_dir=args.adapter, base_gguf=args.base_gguf)
    else:
        path = export_gguf(settings, args.gguf, adapter_dir=args.adapter)
    print(f"gguf: {path}")
    return EXIT_OK


def _evaluate(args: argparse.Namespace) -> int:
    from finetune.infer.evaluate import evaluate_main

    loaded = _load(args)
    return evaluate_main(
        loaded.settings,
        adapter_dir=Path(args.adapter) if args.adapter else None,
        dataset=args.dataset,
        output=Path(args.output) if args.output else None,
        base=not args.no_base,
        batch_size=args.batch_size,
    )


def _report(args: argparse.Namespace) -> int:
    from finetune.infer.generate import GenerationSettings
    from finetune.report.command import report_main

    generation = GenerationSettings(temperature=args.temperature, top_p=1.0, max_new_tokens=args.max_new_tokens,
                                    batch_size=args.batch_size)
    return report_main(_load(args).settings, adapter_dir=args.adapter, checkpoints=args.checkpoints,
                       max_conversations=args.max_conversations, out=args.out, dataset=args.dataset,
                       generation=generation, progress=not args.no_progress)


def _import(args: argparse.Namespace) -> int:
    from finetune.importers.command import run

    return run(args)


def _plan(args: argparse.Namespace) -> int:
    from finetune.plan.command import plan_main

    loaded = _load(args)
    return plan_main(loaded.settings, world_size=_world_size(args), gpu_memory=args.gpu_memory)


def _serve(args: argparse.Namespace) -> int:
    from finetune.serve.command import serve_main

    return serve_main(args.runs, overrides=args.overrides, host=args.host, port=args.port, api_key=args.api_key,
                      checkpoints=args.checkpoints, heldout=args.heldout)


def _train(args: argparse.Namespace) -> int:
    from finetune.train.launch import main_train

    _load(args)  # validate (and show notices) before any process starts
    check_installed()
    return main_train(
        args.config,
        args.overrides,
        num_processes=args.num_processes,
        resume=not args.no_resume,
        overwrite=args.overwrite,
        force_preprocess=args.force_preprocess,
        nnodes=args.nnodes,
        node_rank=args.node_rank,
        master_addr=args.master_addr,
        master_port=args.master_port,
        rdzv_endpoint=args.rdzv_endpoint,
        max_restarts=args.max_restarts,
        verbose=args.verbose,
    )


if __name__ == "__main__":
    raise SystemExit(main())
