"""Training progress: the line, its cadence, rank 0 only; the overfitting warning; the best checkpoint."""

from __future__ import annotations

import io
import logging
from pathlib import Path
from types import SimpleNamespace

import pytest

from finetune.train.progress import (best_checkpoint, best_checkpoint_entry, format_duration, format_progress,
                                     line_every, overfitting, progress_callback)
from finetune.train.worker import format_result


def test_progress_line_reads_step_times_loss_and_speed() -> None:
    line = format_progress(120, 500, elapsed_s=192, remaining_s=608.4, loss=1.23456, tokens_per_s=5230.4,
                           bar_width=20)
    assert line == ("step 120/500 [####................] 24% | 3:12 elapsed, 10:08 left | loss 1.2346 | "
                    "5,230 tokens/s")
    assert format_progress(0, 10, elapsed_s=0, remaining_s=None, loss=None, tokens_per_s=None) == (
        "step 0/10 0% | 0:00 elapsed, ? left | loss ? | ? tokens/s")
    assert format_progress(10, 10, elapsed_s=1, remaining_s=0, loss=0.5, tokens_per_s=1,
                           bar_width=4).startswith("step 10/10 [####] 100%")


def test_durations() -> None:
    assert [format_duration(s) for s in (0, 59.6, 61, 3599, 3600, 90061)] == [
        "0:00", "1:00", "1:01", "59:59", "1:00:00", "25:01:01"]


def test_about_twenty_lines_per_run_never_more_than_one_per_ten_steps() -> None:
    assert [line_every(n) for n in (1, 50, 200, 201, 1000, 10_000)] == [10, 10, 10, 11, 50, 500]


def test_overfitting_needs_two_rises_in_a_row_while_train_loss_falls() -> None:
    train = [(s, 3.0 - s / 100) for s in range(1, 301)]  # falls throughout
    rising = [(100, 1.0), (200, 1.1), (300, 1.2)]
    found = overfitting(rising, train)
    assert found is not None and found.step == 300 and found.eval_losses == (1.0, 1.1, 1.2)
    early, late = found.train_losses
    assert early == pytest.approx(3.0 - 50.5 / 100) and late == pytest.approx(3.0 - 250.5 / 100)
    assert overfitting(rising[:2], train) is None  # one rise only
    assert overfitting([(100, 1.0), (200, 1.1), (300, 1.05)], train) is None  # fell back
    assert overfitting([(100, 1.0), (200, 1.0), (300, 1.2)], train) is None  # a flat step is no rise
    flat_train = [(s, 2.0) for s in range(1, 301)]
    assert overfitting(rising, flat_train) is None  # both rising: not overfitting, something else
    # only the last three evaluations count
    assert overfitting([(50, 0.5), *rising], train) is not None
    assert overfitting([*rising, (400, 1.1)], train) is None


def test_overfitting_with_sparse_train_logs_uses_the_last_loss_before() -> None:
    train = [(1, 3.0), (150, 2.0)]  # logging_steps larger than the eval interval: no loss in (200, 300]
    assert overfitting([(100, 1.0), (200, 1.1), (300, 1.2)], train) is not None


def test_best_checkpoint_is_the_lowest_eval_loss_among_saved_steps() -> None:
    evals = [(10, 2.0), (20, 1.5), (30, 1.7), (40, 1.9)]
    assert best_checkpoint(evals, [10, 20, 30, 40]) == (20, 1.5)
    assert best_checkpoint(evals, [10, 30, 40]) == (30, 1.7)  # checkpoint-20 was rotated away
    assert best_checkpoint(evals, [15]) is None
    assert best_checkpoint([], [10]) is None


def test_best_checkpoint_entry_names_the_directory_or_the_final_output(tmp_path: Path) -> None:
    history = [{"step": 10, "loss": 2.5}, {"step": 10, "eval_loss": 2.0}, {"step": 20, "eval_loss": 1.5},
               {"step": 25, "eval_loss": 1.4}]
    checkpoints = [tmp_path / "checkpoint-10", tmp_path / "checkpoint-20"]
    assert best_checkpoint_entry(history[:3], checkpoints, tmp_path, final_step=25) == {
        "step": 20, "eval_loss": 1.5, "path": str(tmp_path / "checkpoint-20")}
    assert best_checkpoint_entry(history, checkpoints, tmp_path, final_step=25) == {
        "step": 25, "eval_loss": 1.4, "path": str(tmp_path)}
    assert best_checkpoint_entry(history[:1], checkpoints, tmp_path, final_step=25) is None


def test_final_line_names_the_best_checkpoint() -> None:
    summary = {"train_loss": 1.0, "eval_loss": 1.6, "best_checkpoint": {"step": 20, "eval_loss": 1.5,
                                                                        "path": "out/checkpoint-20"}}
    line = format_result(SimpleNamespace(summary=summary, global_step=40, output_dir="out"))
    assert line.endswith("outputs in out; lowest eval loss 1.5000 at step 20: out/checkpoint-20")
    assert "lowest" not in format_result(SimpleNamespace(summary={"train_loss": 1.0}, global_step=4,
                                                         output_dir="out"))


# --- the callback, driven with a fake trainer state ---------------------------------------------


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def _drive(callback, clock: Clock, *, total: int, rank0: bool = True, losses: dict[int, float] | None = None):
    args = SimpleNamespace(world_size=2)
    state = SimpleNamespace(global_step=0, max_steps=total, is_world_process_zero=rank0, log_history=[])
    callback.on_train_begin(args, state, None)
    for step in range(1, total + 1):
        clock.now += 2.0
        state.global_step = step
        if losses and step in losses:
            callback.on_log(args, state, None, logs={"loss": losses[step]})
        callback.on_step_end(args, state, None)
    callback.on_train_end(args, state, None)
    return args, state


def test_terminal_gets_one_line_redrawn_in_place() -> None:
    stream, clock = Terminal(), Clock()
    callback = progress_callback(lambda: 500, stream=stream, clock=clock)
    _drive(callback, clock, total=4, losses={1: 2.0, 3: 1.5})
    frames = stream.getvalue().split("\r\033[K")
    assert frames[0] == "" and len(frames) == 5  # one redraw per step (2 s apart), nothing else
    assert frames[1] == ("step 1/4 [#####...............] 25% | 0:02 elapsed, 0:06 left | loss 2.0000 | "
                         "500 tokens/s")  # 500 tokens on this process x 2 processes / 2 s
    assert frames[4] == ("step 4/4 [####################] 100% | 0:08 elapsed, 0:00 left | loss 1.5000 | "
                         "125 tokens/s\n")


def test_terminal_redraws_at_most_twice_a_second_but_always_the_last_step() -> None:
    stream, clock = Terminal(), Clock()
    callback = progress_callback(lambda: 0, stream=stream, clock=clock)
    args = SimpleNamespace(world_size=1)
    state = SimpleNamespace(global_step=0, max_steps=100, is_world_process_zero=True, log_history=[])
    callback.on_train_begin(args, state, None)
    for step in range(1, 101):
        clock.now += 0.004  # 0.4 s in all
        state.global_step = step
        callback.on_step_end(args, state, None)
    frames = stream.getvalue().split("\r\033[K")[1:]
    assert len(frames) == 2 and frames[0].startswith("step 1/100") and frames[1].startswith("step 100/100")


def test_not_a_terminal_logs_a_line_every_n_steps(caplog) -> None:
    caplog.set_level(logging.INFO, logger="finetune")
    stream, clock = io.StringIO(), Clock()
    callback = progress_callback(lambda: 0, stream=stream, clock=clock)
    _drive(callback, clock, total=25)
    assert stream.getvalue() == ""
    assert [m.split(" |")[0] for m in caplog.messages] == ["step 10/25 40%", "step 20/25 80%", "step 25/25 100%"]


def test_other_ranks_show_nothing(caplog) -> None:
    caplog.set_level(logging.DEBUG, logger="finetune")
    for stream in (Terminal(), io.StringIO()):
        clock = Clock()
        _drive(progress_callback(lambda: 0, stream=stream, clock=clock), clock, total=20, rank0=False)
        assert stream.getvalue() == ""
    assert caplog.messages == []


def test_callback_warns_once_when_eval_loss_rises_twice_while_train_falls(caplog) -> None:
    caplog.set_level(logging.INFO, logger="finetune")
    callback = progress_callback(lambda: 0, stream=io.StringIO(), clock=Clock())
    args = SimpleNamespace(world_size=1)
    state = SimpleNamespace(global_step=0, max_steps=50, is_world_process_zero=True, log_history=[])
    for step, train, evaluated in [(10, 2.0, 1.0), (20, 1.8, 1.1), (30, 1.6, 1.2), (40, 1.4, 1.3)]:
        state.global_step = step
        state.log_history += [{"step": step, "loss": train}, {"step": step, "eval_loss": evaluated}]
        callback.on_evaluate(args, state, None, metrics={"eval_loss": evaluated})
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and warnings[0].startswith("step 30: eval loss rose at two evaluations in a row "
                                                         "(1.0000 -> 1.1000 -> 1.2000) while train loss fell "
                                                         "(2.0000 -> 1.6000)")
    assert "step 10: eval loss 1.0000" in caplog.messages
