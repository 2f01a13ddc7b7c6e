"""The one log channel: every module logs to `logging.getLogger(__name__)` (all names under "finetune").

The process edges (`finetune.cli.main`, and `finetune.train.worker.main` inside torchrun) call `configure`
once, before anything heavy is imported. What it sets up, on stderr:

- `finetune: message` for notices (INFO), `warning: message` for warnings; DEBUG lines only with --verbose;
- only global rank 0 prints (the edge passes the rank in); errors of other ranks print as `[rank N] error: ...`.
  On other ranks, unless --verbose, nothing else reaches the console: Python warnings are ignored, third-party
  loggers pass only errors (`logging.disable`) and `sys.stdout` (third-party `print`s; finetune prints nothing
  there) goes to /dev/null. Every launch path ends in `configure` with its rank: `finetune train` in one process,
  torchrun's workers (`finetune.train.worker`), and `finetune train` started per rank by the user's own torchrun,
  SLURM or Kubernetes (the CLI reads RANK);
- third-party lines no user can act on are dropped (`NOISY_LOGS`, `NOISY_WARNINGS`); --verbose keeps them.
  A filter is attached to the exact logger that emits the line (logger filters do not apply to records
  propagated from children), so it is in place even when the library creates its logger at import.

Without `configure` (finetune used as a library) the stdlib defaults apply: warnings reach stderr, notices
stay silent unless the application configures "finetune".
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import sys
import warnings
from typing import Iterator

ROOT = "finetune"

# (logger name, message pattern): lines dropped unless --verbose.
NOISY_LOGS: tuple[tuple[str, str], ...] = (
    # printed at `import deepspeed` on a machine without CUDA; nothing to do about it
    ("DeepSpeed", r"Setting accelerator to CPU"),
    # bitsandbytes' optional CPU 4-bit kernel from the `kernels` hub package; the fallback works
    ("bitsandbytes.backends.cpu.ops", r"Failed to load CPU gemm_4bit_forward from kernels-community"),
    # the same optional kernel, looked up offline (HF_HUB_OFFLINE): nothing is loaded, nothing to act on
    ("kernels._internals.hf_hub", r"Skipping publisher trust check"),
    # TRL under ZeRO-3 + PEFT switches checkpointing to reentrant itself (finetune asks for non-reentrant elsewhere)
    ("trl.trainer.sft_trainer", r"You are using PEFT with DeepSpeed ZeRO-3 and gradient checkpointing"),
    ("trl.trainer.dpo_trainer", r"You are using PEFT with DeepSpeed ZeRO-3 and gradient checkpointing"),
    # accelerate under DeepSpeed: the DeepSpeed value it keeps is the recipe's gradient_accumulation_steps
    ("accelerate.accelerator", r"Gradient accumulation steps mismatch"),
)
# (category, message pattern): Python warnings dropped unless --verbose.
NOISY_WARNINGS: tuple[tuple[type[Warning], str], ...] = (
    # TRL reads transformers' deprecated property; not the user's code
    (FutureWarning, r"`is_gradient_checkpointing` is deprecated"),
    # DeepSpeed's collectives call torch's renamed ones, once per call site (dozens of lines under ZeRO-3)
    (FutureWarning, r"`torch.distributed.all_gather_into_tensor` is deprecated"),
    (FutureWarning, r"`torch.distributed.reduce_scatter_tensor` is deprecated"),
    # accelerate on CPU processes picks a thread count itself and says so (one process per machine)
    (UserWarning, r"OMP_NUM_THREADS/MKL_NUM_THREADS unset"),
)

# Environment defaults for libraries that read them when first imported (`configure` runs before that):
# transformers' and the hub's per-file bars ("Loading weights", "Writing model shards") repeat what
# finetune's own notices say and turn into one garbled line in a log file. A value the user set wins.
# W&B's own console lines (finetune.train.tracking also starts it with silent=True) say what finetune says.
QUIET_ENV: dict[str, str] = {"HF_HUB_DISABLE_PROGRESS_BARS": "1", "WANDB_SILENT": "true"}


class _StderrHandler(logging.Handler):
    """Writes to the current `sys.stderr` (looked up per record, so redirection and pytest capture work).
    On a terminal it first clears the line, so a notice never lands inside a progress line."""

    def emit(self, record: logging.LogRecord) -> None:
        try:
            stream = sys.stderr
            clear = "\r\033[K" if getattr(stream, "isatty", lambda: False)() else ""
            stream.write(f"{clear}{self.format(record)}\n")
            stream.flush()
        except Exception:  # noqa: BLE001 - logging's own contract: report, never raise
            self.handleError(record)


class _Format(logging.Formatter):
    def __init__(self, rank: int) -> None:
        super().__init__()
        self.rank = rank

    def format(self, record: logging.LogRecord) -> str:
        message = record.getMessage()
        if record.exc_info:
            message += "\n" + self.formatException(record.exc_info)
        if record.levelno >= logging.ERROR:
            return f"[rank {self.rank}] error: {message}" if self.rank else f"error: {message}"
        if record.levelno >= logging.WARNING:
            return f"warning: {message}"
        return f"finetune: {message}"


class RankFilter(logging.Filter):
    """Passes everything on global rank 0; on other ranks only errors."""

    def __init__(self, rank: int) -> None:
        super().__init__()
        self.rank = rank

    def filter(self, record: logging.LogRecord) -> bool:
        return self.rank == 0 or record.levelno >= logging.ERROR


class DropMatching(logging.Filter):
    """Drops records whose message matches `pattern`."""

    def __init__(self, pattern: str) -> None:
        super().__init__()
        self.pattern = re.compile(pattern)

    def filter(self, record: logging.LogRecord) -> bool:
        return not self.pattern.search(record.getMessage())


def configure(*, rank: int = 0, verbose: bool = False) -> logging.Logger:
    """Set up the "finetune" logger and the noise filters for this process (calling it again replaces both)."""
    logger = logging.getLogger(ROOT)
    for handler in [h for h in logger.handlers if isinstance(h, _StderrHandler)]:
        logger.removeHandler(handler)
    handler = _StderrHandler()
    handler.setFormatter(_Format(rank))
    handler.addFilter(RankFilter(rank))
    logger.addHandler(handler)
    logger.setLevel(logging.DEBUG if verbose else logging.INFO)

    for name, pattern in NOISY_LOGS:
        noisy = logging.getLogger(name)
        for old in [f for f in noisy.filters if isinstance(f, DropMatching)]:
            noisy.removeFilter(old)
        if not verbose:
            noisy.addFilter(DropMatching(pattern))
    for category, pattern in NOISY_WARNINGS:
        warnings.filterwarnings("default" if verbose else "ignore", message=pattern, category=category)
    if not verbose:
        for key, value in QUIET_ENV.items():
            os.environ.setdefault(key, value)  # the process edge: inherited by torchrun's workers too
    quiet_other_rank = rank != 0 and not verbose
    logging.disable(logging.WARNING if quiet_other_rank else logging.NOTSET)  # errors still pass
    if quiet_other_rank:
        warnings.simplefilter("ignore")
        sys.stdout = open(os.devnull, "w", encoding="utf-8")  # noqa: SIM115 - for the life of the process
    return logger


def is_quiet() -> bool:
    """Whether `configure` set this process up without --verbose (False where finetune is used as a library)."""
    logger = logging.getLogger(ROOT)
    return any(isinstance(h, _StderrHandler) for h in logger.handlers) and not logger.isEnabledFor(logging.DEBUG)


@contextlib.contextmanager
def quiet_stdout() -> Iterator[None]:
    """Drop what the block prints to stdout, unless --verbose: for libraries that `print` at import or setup
    (transformers' "[INFO] Running in WANDB offline mode", DeepSpeed's "... built successfully")."""
    if not is_quiet():
        yield
        return
    with open(os.devnull, "w", encoding="utf-8") as sink, contextlib.redirect_stdout(sink):
        yield
