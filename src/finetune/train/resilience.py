"""Runs that survive being stopped: resume, no silent overwrite, checkpoint on SIGINT/SIGTERM, no leaked secrets.

- `plan_output_dir`: run again on an output_dir with checkpoints -> resume from the latest whole one (verified
  by `finetune.runs.checkpoints.verify_checkpoint`; a damaged one is skipped with a warning naming it), or
  `--no-resume` starts over and removes them; a finished run (run_summary.json) is kept unless `--overwrite`.
- `seal_checkpoints_callback`: each checkpoint sealed (its files and sizes recorded) once every process saved.
- `catch_signals` + `stop_on_signal_callback`: the first SIGINT/SIGTERM asks the trainer to save a
  checkpoint at the end of the current optimizer step and stop; `TrainingInterrupted` then carries the
  checkpoint out of the run (so no final adapter or run_summary.json is written and the next run resumes).
  Handlers are installed only inside the `with` block and the previous ones restored.
- `redact_config` / `SecretFilter`: W&B and Hugging Face tokens never reach saved recipes, W&B or logs.
"""

from __future__ import annotations

import logging
import re
import shutil
import signal
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterator, Mapping, Sequence

from finetune.errors import DataError, FinetuneError
from finetune.runs.checkpoints import is_sealed, seal_checkpoint, verify_checkpoint
from finetune.runs.layout import (COMPLETE_MARKER, RUN_SUMMARY, TRAINER_STATE, checkpoint_dir, checkpoint_dirs,
                                  checkpoint_step)
from finetune.train.collective import all_reduce

if TYPE_CHECKING:
    from transformers import TrainerCallback

logger = logging.getLogger(__name__)

FINISHED_MARKERS = (RUN_SUMMARY,)
SECRET_ENV = ("WANDB_API_KEY", "HF_TOKEN", "HUGGING_FACE_HUB_TOKEN", "HUGGINGFACE_HUB_TOKEN", "HF_API_TOKEN")
REDACTED = "<redacted>"
DUPLICATE_SIGNAL_S = 1.0  # torchrun forwards a terminal's SIGINT that the workers already got


# --- output_dir: resume / overwrite ------------------------------------------------------------


def checkpoints(output_dir: Path) -> list[Path]:
    """Whole checkpoint directories by step (`finetune.runs.checkpoints.verify_checkpoint`: every file the
    seal recorded at its size, DeepSpeed's shards included, every archive and weights file whole). Damaged ones
    are left out with a warning naming them. Once a checkpoint of the run is sealed, the run seals every
    checkpoint, so a later one without its marker was cut off while saving and is left out too; checkpoints
    of older runs (none sealed) are verified file by file."""
    found, sealed_before = [], False
    for path in checkpoint_dirs(output_dir):
        if _whole(path, marker_required=sealed_before):
            found.append(path)
        sealed_before = sealed_before or is_sealed(path)
    return found


def _whole(checkpoint: Path, *, marker_required: bool) -> bool:
    if not (checkpoint / TRAINER_STATE).is_file():
        return False  # killed before the Trainer wrote its state (it does so last): not a checkpoint yet
    if marker_required and not is_sealed(checkpoint):
        logger.warning("skipping checkpoint %s: it has no %s marker while earlier checkpoints of this run do "
                       "(the save was cut off)", checkpoint, COMPLETE_MARKER)
        return False
    try:
        verify_checkpoint(checkpoint)
    except DataError as exc:
        logger.warning("skipping damaged checkpoint %s: %s", checkpoint, exc)
        return False
    return True


def latest_checkpoint(output_dir: Path) -> Path | None:
    found = checkpoints(output_dir)
    return found[-1] if found else None


def finished_marker(output_dir: Path) -> Path | None:
    """The file saying output_dir holds a finished run, or None."""
    for name in FINISHED_MARKERS:
        if (Path(output_dir) / name).is_file():
            return Path(output_dir) / name
    return None


@dataclass(frozen=True)
class OutputPlan:
    """What `finetune train` does with output_dir: resume from a checkpoint (or start fresh), and why."""

    resume_from: Path | None
    messages: list[str] = field(default_factory=list)
    remove: list[Path] = field(default_factory=list)


def decide_output_dir(output_dir: Path, *, resume: bool, overwrite: bool) -> OutputPlan:
    """Pure decision over output_dir's contents (nothing is changed); see `plan_output_dir`."""
    output_dir = Path(output_dir)
    stale = checkpoint_dirs(output_dir)
    marker = finished_marker(output_dir)
    if marker is not None:
        if not overwrite:
            raise FinetuneError(
                f"{output_dir} already holds a finished run ({marker.name}); pass --overwrite to train again "
                "into it, or set another output_dir (e.g. --set output_dir=...)"
            )
        return OutputPlan(None, [f"--overwrite: replacing the finished run in {output_dir}"], [*stale, marker])
    latest = latest_checkpoint(output_dir)
    if latest is None:
        if stale:  # only incomplete checkpoints, e.g. killed while saving the first one
            return OutputPlan(None, [f"ignoring incomplete checkpoints in {output_dir}; starting from step 0"], stale)
        return OutputPlan(None)
    if not resume:
        return OutputPlan(None, [f"--no-resume: removing {len(stale)} checkpoint(s) in {output_dir}; starting over"], stale)
    step = checkpoint_step(latest.name)
    newer = [p for p in stale if checkpoint_step(p.name) > step]  # damaged or half-written
    return OutputPlan(
        latest,
        [f"resuming from {latest} (step {step}); pass --no-resume to start over"]
        + [f"removing {p.name}: incomplete or damaged, saved again when training reaches it" for p in newer],
        newer,
    )


def plan_output_dir(output_dir: Path, *, resume: bool, overwrite: bool, clean: bool = True) -> OutputPlan:
    """`decide_output_dir`, then (with `clean`) remove what it marked stale: checkpoints of a run being
    started over, and the finished marker of a run being overwritten. Only one process should clean."""
    plan = decide_output_dir(output_dir, resume=resume, overwrite=overwrite)
    if clean:
        for path in plan.remove:
            if path.is_dir():
                shutil.rmtree(path)
            else:
                path.unlink(missing_ok=True)
    return plan


def seal_checkpoints_callback() -> TrainerCallback:
    """TrainerCallback sealing each checkpoint (`finetune.runs.checkpoints.seal_checkpoint`) right after the
    Trainer saved it. Every process waits for the others to finish writing their files (RNG state, DeepSpeed
    shards) before the main process seals, so the marker records each file whole. Put it before any callback
    whose on_save may raise (the signal stop does), so the marker comes first."""
    from transformers import TrainerCallback

    class SealCheckpoints(TrainerCallback):
        def on_save(self, args, state, control, **kwargs):  # noqa: ANN001
            _barrier()
            checkpoint = checkpoint_dir(args.output_dir, state.global_step)
            if state.is_world_process_zero and checkpoint.is_dir():
                seal_checkpoint(checkpoint)
            return control

    return SealCheckpoints()


def _barrier() -> None:
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        dist.barrier()


# --- signals -----------------------------------------------------------------------------------


class TrainingInterrupted(FinetuneError):
    """SIGINT/SIGTERM stopped training after a checkpoint was saved; running again resumes from it."""

    def __init__(self, signum: int, checkpoint: Path | None, step: int) -> None:
        self.signum, self.checkpoint, self.step = signum, checkpoint, step
        name = signal.Signals(signum).name
        where = f"checkpoint saved to {checkpoint}" if checkpoint else "no checkpoint could be saved"
        super().__init__(f"stopped by {name} at step {step}; {where}. Run the same command again to resume.")
        self.exit_code = 128 + signum


@dataclass
class SignalFlag:
    """The first stop signal received (set by the handler, read by the callback)."""

    signum: int | None = None
    received_at: float = 0.0

    def handle(self, signum: int, frame: object) -> None:
        now = time.monotonic()
        if self.signum is None:
            self.signum, self.received_at = signum, now
            logger.warning("%s received: saving a checkpoint at the end of this step, then stopping "
                           "(send it again to stop at once)", signal.Signals(signum).name)
        elif now - self.received_at > DUPLICATE_SIGNAL_S:
            raise KeyboardInterrupt


@contextmanager
def catch_signals(flag: SignalFlag, signals: Sequence[int] = (signal.SIGINT, signal.SIGTERM)) -> Iterator[SignalFlag]:
    """Route `signals` to `flag` inside the block (main thread only); the previous handlers come back after."""
    import threading

    if threading.current_thread() is not threading.main_thread():
        yield flag
        return
    previous = {sig: signal.signal(sig, flag.handle) for sig in signals}
    try:
        yield flag
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def stop_on_signal_callback(flag: SignalFlag) -> TrainerCallback:
    """TrainerCallback: once `flag` is set (on any process), save a checkpoint at the step's end, then raise
    TrainingInterrupted. With several processes the flag is agreed on by all-reduce so all save together."""
    from transformers import TrainerCallback

    class StopOnSignal(TrainerCallback):
        def on_step_end(self, args, state, control, **kwargs):  # noqa: ANN001
            signum = all_reduce([flag.signum or 0], args.device, op="max")[0]
            if signum:
                flag.signum = flag.signum or signum
                control.should_save = True
                control.should_training_stop = True
            return control

        def on_save(self, args, state, control, **kwargs):  # noqa: ANN001
            if flag.signum:
                checkpoint = checkpoint_dir(args.output_dir, state.global_step)
                raise TrainingInterrupted(flag.signum, checkpoint if checkpoint.is_dir() else None, state.global_step)

    return StopOnSignal()


# --- secrets -----------------------------------------------------------------------------------


def known_secrets(environ: Mapping[str, str]) -> list[str]:
    """Token values set in the environment (W&B, Hugging Face), longest first."""
    values = {environ[name] for name in SECRET_ENV if len(environ.get(name, "")) >= 8}
    return sorted(values, key=len, reverse=True)


def scrub(text: str, secrets: Sequence[str]) -> str:
    for secret in secrets:
        text = text.replace(secret, REDACTED)
    return text


_SECRET_KEY = re.compile(r"(api_key|apikey|secret|password|(^|_)(hf|hub|wandb|auth|access)_token)$", re.I)
_SECRET_VALUE = re.compile(r"^(hf_[A-Za-z0-9]{20,}|[0-9a-f]{40}|[A-Za-z0-9_-]{0,20}-?v1-[A-Za-z0-9_-]{20,})$")


def redact_config(data: Any, secrets: Sequence[str] = (), key: str = "") -> Any:
    """A recipe dict with the values of secret-looking keys (api_key, hf_token...) and token-looking strings
    replaced by <redacted>, and every known secret value (`known_secrets`) removed from the other strings."""
    if isinstance(data, dict):
        return {k: redact_config(v, secrets, str(k)) for k, v in data.items()}
    if isinstance(data, list):
        return [redact_config(v, secrets, key) for v in data]
    if isinstance(data, str):
        if _SECRET_KEY.search(key) or _SECRET_VALUE.match(data):
            return REDACTED
        return scrub(data, secrets)
    return data


class SecretFilter(logging.Filter):
    """Rewrites log records so known secret values never reach a handler."""

    def __init__(self, secrets: Sequence[str]) -> None:
        super().__init__()
        self.secrets = list(secrets)

    def filter(self, record: logging.LogRecord) -> bool:
        if self.secrets:
            message = record.getMessage()
            cleaned = scrub(message, self.secrets)
            if cleaned != message:
                record.msg, record.args = cleaned, None
        return True


@contextmanager
def secrets_filtered(secrets: Sequence[str], logger_names: Sequence[str] = ("", "transformers", "finetune")) -> Iterator[None]:
    """Install a SecretFilter on the handlers of `logger_names` for the block."""
    if not secrets:
        yield
        return
    secret_filter = SecretFilter(secrets)
    handlers = {h for name in logger_names for h in logging.getLogger(name).handlers}
    for handler in handlers:
        handler.addFilter(secret_filter)
    try:
        yield
    finally:
        for handler in handlers:
            handler.removeFilter(secret_filter)
