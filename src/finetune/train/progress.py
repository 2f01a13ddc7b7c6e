"""What a run says while it trains, from global rank 0 only (the other ranks stay silent).

- On a terminal (stderr is a tty): one line rewritten in place, at most every `REDRAW_S` seconds and at
  the last step: `step 120/500 [#####...............] 24% | 3:12 elapsed, 10:08 left | loss 1.2345 |
  5,230 tokens/s`.
- Otherwise (a log file, CI, SLURM): the same line without the bar, as a notice every `line_every(total)`
  steps, that is every max(10, ceil(total / 20)) steps: about 20 lines per run, never more than one per
  10 steps; and at the last step.
- Each evaluation is a notice; when eval loss has risen at two evaluations in a row while train loss fell,
  a warning says the model is overfitting (`overfitting`). The end names the lowest-eval-loss checkpoint
  (`best_checkpoint`, also in run_summary.json).

Speeds count this process's non-padding tokens times the number of processes (no collective per step);
the remaining time extrapolates the mean step time since this process started training (or resumed).
"""

from __future__ import annotations

import logging
import math
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Mapping, Sequence, TextIO

if TYPE_CHECKING:
    from transformers import TrainerCallback

logger = logging.getLogger(__name__)

REDRAW_S = 0.5
LINES_PER_RUN = 20
MIN_LINE_STEPS = 10
BAR_WIDTH = 20


def line_every(total_steps: int) -> int:
    """Steps between two progress lines when stderr is not a terminal (see the module docstring)."""
    return max(MIN_LINE_STEPS, math.ceil(total_steps / LINES_PER_RUN))


def format_duration(seconds: float) -> str:
    """`M:SS`, or `H:MM:SS` from an hour on."""
    whole = int(max(seconds, 0) + 0.5)
    hours, rest = divmod(whole, 3600)
    minutes, secs = divmod(rest, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}" if hours else f"{minutes}:{secs:02d}"


def format_progress(step: int, total: int, *, elapsed_s: float, remaining_s: float | None,
                    loss: float | None, tokens_per_s: float | None, bar_width: int = 0) -> str:
    """One progress line (pure); `bar_width` 0 leaves the bar out. Unknown values read `?`."""
    fraction = min(step / total, 1.0) if total > 0 else 0.0
    parts = [f"step {step}/{total}"]
    if bar_width > 0:
        filled = int(fraction * bar_width)
        parts.append(f"[{'#' * filled}{'.' * (bar_width - filled)}]")
    parts.append(f"{100 * fraction:.0f}%")
    left = format_duration(remaining_s) if remaining_s is not None else "?"
    fields = [f"{format_duration(elapsed_s)} elapsed, {left} left",
              f"loss {loss:.4f}" if loss is not None else "loss ?",
              f"{tokens_per_s:,.0f} tokens/s" if tokens_per_s is not None else "? tokens/s"]
    return " ".join(parts) + " | " + " | ".join(fields)


@dataclass(frozen=True)
class Overfitting:
    """Eval loss rose at the last two evaluations while train loss fell over the same span."""

    step: int
    eval_losses: tuple[float, float, float]
    train_losses: tuple[float, float]  # mean train loss logged up to the first and the last of the three


def overfitting(evals: Sequence[tuple[int, float]], train: Sequence[tuple[int, float]]) -> Overfitting | None:
    """Looks at the last three evaluations `(step, eval_loss)` and the logged train losses `(step, loss)`.

    Train loss "falls" when its mean over the interval ending at the last evaluation is below its mean over
    the interval ending at the first of the three (an interval: the steps after the evaluation before it).
    """
    if len(evals) < 3:
        return None
    (s0, e0), (s1, e1), (s2, e2) = evals[-3:]
    if not (e0 < e1 < e2):
        return None
    start = evals[-4][0] if len(evals) > 3 else -1
    early, late = _mean_train(train, start, s0), _mean_train(train, s1, s2)
    if early is None or late is None or not late < early:
        return None
    return Overfitting(step=s2, eval_losses=(e0, e1, e2), train_losses=(early, late))


def _mean_train(train: Sequence[tuple[int, float]], after: int, upto: int) -> float | None:
    window = [loss for step, loss in train if after < step <= upto and math.isfinite(loss)]
    if window:
        return sum(window) / len(window)
    earlier = [loss for step, loss in train if step <= upto and math.isfinite(loss)]
    return earlier[-1] if earlier else None


def best_checkpoint(evals: Sequence[tuple[int, float]], saved_steps: Sequence[int]) -> tuple[int, float] | None:
    """`(step, eval_loss)` of the saved step with the lowest eval loss; None when no saved step was evaluated."""
    saved = set(saved_steps)
    scored = [(loss, step) for step, loss in evals if step in saved and math.isfinite(loss)]
    if not scored:
        return None
    loss, step = min(scored)
    return step, loss


def history_losses(log_history: Sequence[Mapping[str, Any]]) -> tuple[list[tuple[int, float]], list[tuple[int, float]]]:
    """`(train, evals)` as `(step, loss)` lists from the trainer's log history."""
    train = [(int(e["step"]), float(e["loss"])) for e in log_history if "loss" in e]
    evals = [(int(e["step"]), float(e["eval_loss"])) for e in log_history if "eval_loss" in e]
    return train, evals


def progress_callback(count_tokens: Callable[[], int], *, stream: TextIO | None = None,
                      clock: Callable[[], float] = time.monotonic) -> TrainerCallback:
    """A TrainerCallback showing progress (see the module docstring). `count_tokens`: this process's tokens so far;
    `stream`: where the terminal line goes (default: sys.stderr at each draw)."""
    from transformers import TrainerCallback

    class ProgressCallback(TrainerCallback):
        def __init__(self) -> None:
            self.started = 0.0
            self.first_step = 0
            self.last_draw = -math.inf
            self.loss: float | None = None
            self.drawn = False
            self.warned = False

        def _stream(self) -> TextIO:
            return stream if stream is not None else sys.stderr

        def _terminal(self) -> bool:
            return bool(getattr(self._stream(), "isatty", lambda: False)())

        def on_train_begin(self, args, state, control, **kwargs):  # noqa: ANN001
            self.started, self.first_step = clock(), state.global_step

        def on_log(self, args, state, control, logs=None, **kwargs):  # noqa: ANN001
            if logs and "loss" in logs:
                self.loss = float(logs["loss"])

        def on_step_end(self, args, state, control, **kwargs):  # noqa: ANN001
            if not state.is_world_process_zero:
                return
            step, total, now = state.global_step, state.max_steps, clock()
            last = step >= total
            if self._terminal():
                if last or now - self.last_draw >= REDRAW_S:
                    self.last_draw = now
                    self._stream().write("\r\033[K" + self.line(args, step, total, now, BAR_WIDTH))
                    self._stream().flush()
                    self.drawn = True
            elif last or step % line_every(total) == 0:
                logger.info("%s", self.line(args, step, total, now, 0))

        def line(self, args, step: int, total: int, now: float, bar_width: int) -> str:  # noqa: ANN001
            elapsed = now - self.started
            done = step - self.first_step
            remaining = elapsed / done * (total - step) if done > 0 else None
            tokens = count_tokens() * max(getattr(args, "world_size", 1), 1)
            rate = tokens / elapsed if elapsed > 0 and tokens else None
            return format_progress(step, total, elapsed_s=elapsed, remaining_s=remaining, loss=self.loss,
                                   tokens_per_s=rate, bar_width=bar_width)

        def on_evaluate(self, args, state, control, metrics=None, **kwargs):  # noqa: ANN001
            if not state.is_world_process_zero or not metrics or "eval_loss" not in metrics:
                return
            logger.info("step %d: eval loss %.4f", state.global_step, metrics["eval_loss"])
            train, evals = history_losses(state.log_history)  # the trainer logs the metrics before this event
            found = overfitting(evals, train)
            if found is not None and not self.warned:
                self.warned = True
                e0, e1, e2 = found.eval_losses
                logger.warning(
                    "step %d: eval loss rose at two evaluations in a row (%.4f -> %.4f -> %.4f) while train loss "
                    "fell (%.4f -> %.4f): the model is overfitting; an earlier checkpoint may be better "
                    "(fewer epochs, more data or early_stopping_patience help)",
                    found.step, e0, e1, e2, *found.train_losses)

        def on_train_end(self, args, state, control, **kwargs):  # noqa: ANN001
            if self.drawn:
                self._stream().write("\n")
                self._stream().flush()
                self.drawn = False

    return ProgressCallback()


def best_checkpoint_entry(log_history: Sequence[Mapping[str, Any]], checkpoints: Sequence[Path], output_dir: Path,
                          *, final_step: int) -> dict[str, Any] | None:
    """run_summary.json's `best_checkpoint`: the kept checkpoint (or the final output, at `final_step`) with the
    lowest eval loss, as {"step", "eval_loss", "path"}; None when no kept one was evaluated."""
    by_step = {int(path.name.rsplit("-", 1)[-1]): path for path in checkpoints}
    _, evals = history_losses(log_history)
    best = best_checkpoint(evals, [*by_step, final_step])
    if best is None:
        return None
    step, loss = best
    return {"step": step, "eval_loss": loss, "path": str(by_step.get(step, output_dir))}
