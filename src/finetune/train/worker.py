"""One training process: `python -m finetune.train.worker RECIPE [--set K=V]... [--resume-from DIR]`.

`finetune train` runs this in-process for a single process, or N times under torchrun. Every process
loads the recipe file and overrides itself (nothing pickled crosses processes). With several processes:

- the process group is set up here (NCCL on GPUs, gloo on CPU) so data preparation can be coordinated:
  the first process of each machine (LOCAL_RANK 0) prepares the data cache, the others wait at a barrier
  (a gloo group with its own, long timeout: FINETUNE_DATA_TIMEOUT seconds, default 4 hours) and then
  load the cache;
- only global rank 0 prints notices and summaries and talks to W&B.

`main` is a process edge: it sets up the log channel (`finetune.log.configure`) with this process's rank.
"""

from __future__ import annotations

import argparse
import logging
import os
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Mapping, Sequence

from finetune.config import load_recipe
from finetune.config.deepspeed import resolve_deepspeed
from finetune.config.settings import Settings
from finetune.data.build import PreparedData, prepare_data
from finetune.errors import FinetuneError
from finetune.log import configure
from finetune.model.tokenizer import load_tokenizer
from finetune.train import resilience, tracking

if TYPE_CHECKING:
    from finetune.train.run import RunResult
    from transformers import PreTrainedTokenizerBase

logger = logging.getLogger(__name__)

DATA_TIMEOUT_S = 4 * 3600
COLLECTIVE_TIMEOUT_S = 1800  # transformers' default ddp_timeout


@dataclass(frozen=True)
class Ranks:
    rank: int = 0
    local_rank: int = 0
    world_size: int = 1

    @classmethod
    def from_env(cls, environ: Mapping[str, str]) -> "Ranks":
        return cls(
            rank=int(environ.get("RANK", "0")),
            local_rank=int(environ.get("LOCAL_RANK", "0")),
            world_size=int(environ.get("WORLD_SIZE", "1")),
        )

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m finetune.train.worker", description=__doc__.splitlines()[0])
    parser.add_argument("config", help="the recipe (YAML)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    parser.add_argument("--resume-from", default=None, metavar="CHECKPOINT_DIR")
    parser.add_argument("--force-preprocess", action="store_true")
    parser.add_argument("--under-finetune-launcher", action="store_true",
                        help="set by `finetune train` when it started torchrun itself: the launcher then reports a "
                             "stop signal's exit code, so the workers exit 0 (a non-zero code reads as a crash there)")
    parser.add_argument("--verbose", action="store_true", help="debug lines and third-party messages too")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    """Run one process; returns its exit code: 128 + signal number for an interrupted run (130/143), so
    a scheduler requeues it, except under finetune's own launcher, which reports the signal itself."""
    args = parse_args(argv)
    ranks = Ranks.from_env(os.environ)
    configure(rank=ranks.rank, verbose=args.verbose)
    try:
        run_worker(args.config, args.overrides, resume_from=Path(args.resume_from) if args.resume_from else None,
                   force_preprocess=args.force_preprocess, ranks=ranks)
    except resilience.TrainingInterrupted as exc:
        logger.warning("%s", exc)
        # Under finetune's own torchrun a non-zero code reads as a crash there: its launcher reports the signal.
        return 0 if args.under_finetune_launcher else exc.exit_code
    except FinetuneError as exc:
        logger.error("%s", exc)
        return exc.exit_code
    finally:
        _destroy_process_group()
    return 0


def run_worker(
    recipe_path: str | Path,
    overrides: Sequence[str],
    *,
    resume_from: Path | None,
    force_preprocess: bool = False,
    ranks: Ranks = Ranks(),
) -> RunResult:
    """Load the recipe, prepare data (main process first), train with tracking and signal handling."""
    settings = load_recipe(recipe_path, overrides).settings
    deepspeed, _ = resolve_deepspeed(settings)
    if deepspeed is not None:
        settings = settings.model_copy(update={"deepspeed": str(deepspeed)})
    output_dir = Path(settings.output_dir)
    if int(os.environ.get("TORCHELASTIC_RESTART_COUNT", "0") or 0):  # torchrun restarted us (--max-restarts)
        resume_from = resilience.latest_checkpoint(output_dir) or resume_from
    barrier = init_distributed(ranks)

    tokenizer = load_tokenizer(settings)
    prepared = prepare_first_on_each_machine(settings, tokenizer, ranks, barrier, force=force_preprocess)
    state = "reused (cache hit)" if prepared.from_cache else "built"
    logger.info("prepared data %s: %s", state, prepared.path)

    secrets = resilience.known_secrets(os.environ)
    tracker = None
    ws = tracking.wandb_settings(settings)
    if ws is not None:
        mode, notice = tracking.resolve_mode(ws, os.environ)
        if notice:
            logger.info("%s", notice)
        tracker = tracking.Tracker(ws, mode=mode, output_dir=output_dir, is_main=ranks.is_main)
        config = resilience.redact_config(settings.model_dump(mode="json"), secrets)
        config["world_size"] = ranks.world_size
        config["effective_batch"] = settings.effective_batch(ranks.world_size)
        tracker.start(config, data_summary=prepared.summary.to_dict(), resuming=resume_from is not None)

    # The trainers (TRL, peft, bitsandbytes) log as they are imported: only now, after `configure`, so those
    # lines meet the log channel's filters instead of Python's last-resort handler.
    from finetune.train.run import run_training

    flag = resilience.SignalFlag()
    callbacks = [resilience.stop_on_signal_callback(flag)]
    if tracker is not None:
        callbacks.append(tracker.callback())
    ok = False
    try:
        with resilience.catch_signals(flag), resilience.secrets_filtered(secrets):
            result = run_training(
                settings, prepared, tokenizer, output_dir=output_dir,
                resume=str(resume_from) if resume_from is not None else False,
                world_size=ranks.world_size, local_rank=ranks.local_rank, callbacks=callbacks, barrier=barrier,
            )
        ok = True
    finally:
        if tracker is not None:
            tracker.finish(outputs=output_dir, summary=result.summary if ok else None, ok=ok)
    logger.info("%s", format_result(result))
    return result


def format_result(result: RunResult) -> str:
    summary = result.summary or {}
    parts = [f"done: {result.global_step} steps"]
    if summary.get("train_loss") is not None:
        parts.append(f"train loss {summary['train_loss']:.4f}")
    if summary.get("eval_loss") is not None:
        parts.append(f"eval loss {summary['eval_loss']:.4f}")
    if summary.get("tokens_per_s"):
        parts.append(f"{summary['tokens_per_s']:.0f} tokens/s")
    best = summary.get("best_checkpoint")
    lowest = f"; lowest eval loss {best['eval_loss']:.4f} at step {best['step']}: {best['path']}" if best else ""
    return ", ".join(parts) + f"; outputs in {result.output_dir}" + lowest


def prepare_first_on_each_machine(settings: Settings, tokenizer: PreTrainedTokenizerBase, ranks: Ranks,
                                  barrier: Callable[[], None], *, force: bool) -> PreparedData:
    """LOCAL_RANK 0 prepares (or reuses) the cache; the others wait for it, then load the cache."""
    if ranks.local_rank == 0:
        prepared = prepare_data(settings, tokenizer, force=force, progress=ranks.is_main)
        barrier()
        return prepared
    barrier()
    return prepare_data(settings, tokenizer, force=False, progress=False)


def init_distributed(ranks: Ranks) -> Callable[[], None]:
    """Set up torch.distributed for several processes; returns the data barrier (a no-op for one process)."""
    if ranks.world_size == 1:
        return lambda: None
    import torch
    import torch.distributed as dist

    if not dist.is_initialized():
        backend = "gloo"
        if torch.cuda.is_available():
            torch.cuda.set_device(ranks.local_rank)
            backend = "nccl"
        dist.init_process_group(backend=backend, timeout=timedelta(seconds=COLLECTIVE_TIMEOUT_S))
    timeout = int(os.environ.get("FINETUNE_DATA_TIMEOUT", DATA_TIMEOUT_S))
    group = dist.new_group(backend="gloo", timeout=timedelta(seconds=timeout))

    def barrier() -> None:
        try:
            dist.barrier(group=group)
        except RuntimeError as exc:
            raise FinetuneError(
                f"rank {ranks.rank} waited {timeout} s for the data cache from the first process on this machine "
                f"(set FINETUNE_DATA_TIMEOUT to wait longer, or run `finetune preprocess` first): {exc}"
            ) from None

    return barrier


def _destroy_process_group() -> None:
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


if __name__ == "__main__":
    raise SystemExit(main())
