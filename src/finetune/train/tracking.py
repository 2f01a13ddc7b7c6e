"""Weights & Biases for a run: one explicit `wandb.init` on the main process, no WANDB_* environment soup.

- `wandb_settings(settings)` picks the recipe's `wandb_*` keys (None when `wandb_project` is unset).
- `resolve_mode`: `wandb_mode` when set; else online with an API key (WANDB_API_KEY, or a netrc entry for
  the W&B host), otherwise offline with a notice saying how to upload later (`wandb sync DIR`).
- `Tracker.start` logs the resolved recipe (secrets redacted) as the run config and the data summary
  (packing efficiency, token counts) as `data/*`; its `callback()` logs, per logging step, the trainer's
  loss, learning rate, grad norm and eval loss, plus tokens/s and trained tokens/s over all processes.
  `wandb_watch` -> wandb.watch; `wandb_log_model: checkpoint` uploads each checkpoint, `end` the outputs.
- A resumed run (same output_dir) continues the same online W&B run (its id is kept in output_dir).
"""

from __future__ import annotations

import logging
import netrc
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Mapping
from urllib.parse import urlparse

from finetune.config.settings import Settings
from finetune.errors import MissingDependencyError
from finetune.runs.layout import checkpoint_dir
from finetune.train.collective import all_reduce

if TYPE_CHECKING:
    import torch
    from transformers import TrainerCallback

logger = logging.getLogger(__name__)

DEFAULT_HOST = "api.wandb.ai"
RUN_ID_FILE = "wandb_run_id"
COUNTERS = ("num_tokens", "num_trained_tokens")  # cumulative per-process counters the trainer logs


@dataclass(frozen=True)
class WandbSettings:
    project: str
    entity: str | None = None
    name: str | None = None
    watch: str | None = None
    log_model: str | None = None
    mode: str | None = None


def wandb_settings(settings: Settings) -> WandbSettings | None:
    """The recipe's W&B block; None when `wandb_project` is unset (W&B off)."""
    if not settings.wandb_project:
        return None
    return WandbSettings(
        project=settings.wandb_project,
        entity=settings.wandb_entity,
        name=settings.wandb_name,
        watch=settings.wandb_watch,
        log_model=settings.wandb_log_model,
        mode=settings.wandb_mode,
    )


def has_api_key(environ: Mapping[str, str], netrc_path: Path | None = None) -> bool:
    """WANDB_API_KEY is set, or the netrc file (NETRC or ~/.netrc) has an entry for the W&B host."""
    if environ.get("WANDB_API_KEY"):
        return True
    host = urlparse(environ.get("WANDB_BASE_URL", f"https://{DEFAULT_HOST}")).hostname or DEFAULT_HOST
    path = netrc_path or Path(environ.get("NETRC") or Path(environ.get("HOME", "~")).expanduser() / ".netrc")
    try:
        entry = netrc.netrc(str(path)).authenticators(host)
    except (OSError, netrc.NetrcParseError):
        return False
    return bool(entry and entry[2])


def resolve_mode(ws: WandbSettings, environ: Mapping[str, str], netrc_path: Path | None = None) -> tuple[str, str | None]:
    """(mode, notice): the recipe's wandb_mode, else WANDB_MODE, else online with a key, else offline."""
    if ws.mode:
        return ws.mode, None
    if environ.get("WANDB_MODE") in ("online", "offline", "disabled"):
        return environ["WANDB_MODE"], None
    if has_api_key(environ, netrc_path):
        return "online", None
    return "offline", "W&B: no API key configured (WANDB_API_KEY or `wandb login`); logging offline"


def metrics_from_logs(logs: Mapping[str, Any]) -> dict[str, float]:
    """Trainer log entry -> W&B metrics: eval_* -> eval/*, the rest -> train/* (numbers only, counters left out)."""
    out: dict[str, float] = {}
    for key, value in logs.items():
        if key in COUNTERS or isinstance(value, bool) or not isinstance(value, (int, float)):
            continue
        if key.startswith("eval_"):
            out[f"eval/{key[5:]}"] = float(value)
        else:
            out[f"train/{key}"] = float(value)
    return out


def rates(previous: tuple[float, float, float] | None, now: tuple[float, float, float]) -> dict[str, float]:
    """tokens/s and trained tokens/s between two (seconds, tokens, trained tokens) readings; a counter < 0 is unknown."""
    if previous is None or now[0] <= previous[0]:
        return {}
    elapsed = now[0] - previous[0]
    out = {}
    if now[1] >= 0 and previous[1] >= 0:
        out["train/tokens_per_s"] = (now[1] - previous[1]) / elapsed
    if now[2] >= 0 and previous[2] >= 0:
        out["train/trained_tokens_per_s"] = (now[2] - previous[2]) / elapsed
    return out


def _import_wandb() -> Any:
    try:
        import wandb
    except ImportError as exc:  # pragma: no cover - wandb is a dependency
        raise MissingDependencyError("wandb_project is set but wandb is not installed: pip install wandb") from exc
    return wandb


class Tracker:
    """One W&B run. Only the main process talks to W&B; every process must add `callback()` (it sums
    token counters across processes at each log step)."""

    def __init__(self, ws: WandbSettings, *, mode: str, output_dir: Path, is_main: bool) -> None:
        self.ws, self.mode, self.output_dir, self.is_main = ws, mode, Path(output_dir), is_main
        self.run: Any = None

    def start(self, config: Mapping[str, Any], *, data_summary: Mapping[str, Any] | None = None,
              resuming: bool = False) -> None:
        if not self.is_main or self.mode == "disabled":
            return
        wandb = _import_wandb()
        self.output_dir.mkdir(parents=True, exist_ok=True)
        id_file = self.output_dir / RUN_ID_FILE
        run_id = id_file.read_text().strip() if resuming and self.mode == "online" and id_file.is_file() else None
        self.run = wandb.init(
            project=self.ws.project,
            entity=self.ws.entity,
            name=self.ws.name,
            mode=self.mode,
            dir=str(self.output_dir),
            config=dict(config),
            id=run_id,
            resume="allow" if run_id else None,
            settings=wandb.Settings(console="off", silent=True),
        )
        id_file.write_text(self.run.id + "\n")
        if data_summary:
            numbers = {f"data/{k}": v for k, v in data_summary.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}
            self.run.summary.update(numbers)
            self.run.config.update({"data": dict(data_summary)}, allow_val_change=True)
        if self.mode == "offline":
            logger.info("W&B: logging offline to %s", self.run.settings.sync_dir)

    def callback(self) -> TrainerCallback:
        from transformers import TrainerCallback

        tracker = self

        class WandbTracking(TrainerCallback):
            def __init__(self) -> None:
                self.last: tuple[float, float, float] | None = None

            def on_train_begin(self, args, state, control, model=None, **kwargs):  # noqa: ANN001
                watch = tracker.ws.watch
                if tracker.run is not None and model is not None and watch not in (None, "false"):
                    tracker.run.watch(model, log=watch, log_freq=max(1, args.logging_steps))

            def on_log(self, args, state, control, logs=None, **kwargs):  # noqa: ANN001
                logs = logs or {}
                counts = _sum_over_processes([float(logs.get(key, -1.0)) for key in COUNTERS], args.device)
                now = (time.perf_counter(), *counts)
                metrics = metrics_from_logs(logs)
                if counts[0] >= 0:
                    metrics.update(rates(self.last, now))
                    metrics["train/tokens"] = counts[0]
                    self.last = now
                if counts[1] >= 0:
                    metrics["train/trained_tokens"] = counts[1]
                if tracker.run is not None and metrics:
                    tracker.run.log(metrics, step=state.global_step)

            def on_save(self, args, state, control, **kwargs):  # noqa: ANN001
                if tracker.run is not None and tracker.ws.log_model == "checkpoint":
                    checkpoint = checkpoint_dir(args.output_dir, state.global_step)
                    if checkpoint.is_dir():
                        tracker.log_artifact(checkpoint, checkpoint.name)

        return WandbTracking()

    def log_artifact(self, directory: Path, alias: str) -> None:
        wandb = _import_wandb()
        artifact = wandb.Artifact(name=f"model-{self.run.id}", type="model")
        for path in sorted(Path(directory).iterdir()):
            if path.is_file():
                artifact.add_file(str(path))
        self.run.log_artifact(artifact, aliases=[alias, "latest"])

    def finish(self, *, outputs: Path | None = None, summary: Mapping[str, Any] | None = None, ok: bool = True) -> None:
        """Upload the outputs (`wandb_log_model: end`), write the run summary, close the run; say where offline logs are."""
        if self.run is None:
            return
        try:
            if summary:
                self.run.summary.update({k: v for k, v in summary.items() if isinstance(v, (int, float, str))})
            if ok and outputs is not None and self.ws.log_model == "end":
                self.log_artifact(outputs, "final")
        finally:
            sync_dir = self.run.settings.sync_dir
            self.run.finish(exit_code=0 if ok else 1)
            self.run = None
            if self.mode == "offline":
                logger.info("W&B: offline run saved; upload it with `wandb sync %s`", sync_dir)


def _sum_over_processes(values: list[float], device: torch.device | str) -> list[float]:
    """Element-wise sum over processes; a value < 0 (unknown) on any process stays unknown (-1)."""
    n = len(values)
    totals = all_reduce([max(v, 0.0) for v in values] + [1.0 if v < 0 else 0.0 for v in values], device)
    return [-1.0 if totals[n + i] > 0 else totals[i] for i in range(n)]

