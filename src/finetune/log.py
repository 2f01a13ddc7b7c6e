"""The one log channel: every module logs to `logging.getLogger(__name__)` (all names under "finetune").

The process edges (`finetune.cli.main`, and `finetune.train.worker.main` inside torchrun) call `configure`
once, before anything heavy is imported. What it sets up, on stderr:

- `finetune: message` for notices (INFO), `warning: message` for warnings; DEBUG lines only with --verbose;
- only global rank 0 prints (the edge passes the rank in); errors of other ranks print as `[rank N] error: ...`;
- third-party lines no user can act on are dropped (`NOISY_LOGS`, `NOISY_WARNINGS`); --verbose keeps them.
  A filter is attached to the exact logger that emits the line (logger filters do not apply to records
  propagated from children), so it is in place even when the library creates its logger at import.

Without `configure` (finetune used as a library) the stdlib defaults apply: warnings reach stderr, notices
stay silent unless the application configures "finetune".
"""

from __future__ import annotations

import logging
import os
import re
import sys
import warnings

ROOT = "finetune"

# (logger name, message pattern): lines dropped unless --verbose.
NOISY_LOGS: tuple[tuple[str, str], ...] = (
    # printed at `import deepspeed` on a machine without CUDA; nothing to do about it
    ("DeepSpeed", r"Setting accelerator to CPU"),
    # bitsandbytes' optional CPU 4-bit kernel from the `kernels` hub package; the fallback works
    ("bitsandbytes.backends.cpu.ops", r"Failed to load CPU gemm_4bit_forward from kernels-community"),
)
# (category, message pattern): Python warnings dropped unless --verbose.
NOISY_WARNINGS: tuple[tuple[type[Warning], str], ...] = (
    # TRL reads transformers' deprecated property; not the user's code
    (FutureWarning, r"`is_gradient_checkpointing` is deprecated"),
)

# Environment defaults for libraries that read them when first imported (`configure` runs before that):
# transformers' and the hub's per-file bars ("Loading weights", "Writing model shards") repeat what
# finetune's own notices say and turn into one garbled line in a log file. A value the user set wins.
QUIET_ENV: dict[str, str] = {"HF_HUB_DISABLE_PROGRESS_BARS": "1"}


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
    return logger
