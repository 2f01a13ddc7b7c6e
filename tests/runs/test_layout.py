"""The one parser and formatter of checkpoint directory names."""

from __future__ import annotations

from pathlib import Path

import pytest

from finetune.runs.layout import checkpoint_dir, checkpoint_dirs, checkpoint_name, checkpoint_step


@pytest.mark.parametrize("step", [0, 7, 40, 12345])
def test_name_and_step_round_trip(step: int) -> None:
    assert checkpoint_step(checkpoint_name(step)) == step
    assert checkpoint_dir("out", step) == Path("out") / checkpoint_name(step)


@pytest.mark.parametrize("name", ["checkpoint-x", "checkpoint-", "checkpoint-40.tmp", "old-checkpoint-40",
                                  "checkpoint--3", "checkpoint-٣", "merged", "checkpoint-4-x"])
def test_other_names_are_not_checkpoints(name: str) -> None:
    assert checkpoint_step(name) is None


def test_checkpoint_dirs_are_by_step_and_skip_strangers(tmp_path: Path) -> None:
    for name in ("checkpoint-10", "checkpoint-9", "checkpoint-x", "checkpoint-3.tmp", "gguf"):
        (tmp_path / name).mkdir()
    (tmp_path / "checkpoint-11").write_text("a file, not a checkpoint")
    assert [p.name for p in checkpoint_dirs(tmp_path)] == ["checkpoint-9", "checkpoint-10"]
    assert checkpoint_dirs(tmp_path / "missing") == []


def test_the_final_save_does_not_crash_on_a_stray_checkpoint_directory(tmp_path: Path) -> None:
    """`train/run.py` listed checkpoints with `int(name.split("-")[-1])`: a `checkpoint-x` beside the run
    (a user's copy, a sync tool's temp dir) crashed the run at its very end."""
    import inspect

    from finetune.train import run

    for name in ("checkpoint-2", "checkpoint-x", "checkpoint-10"):
        (tmp_path / name).mkdir()
    source = inspect.getsource(run)
    assert 'split("-")' not in source
    assert [p.name for p in run.checkpoint_dirs(tmp_path)] == ["checkpoint-2", "checkpoint-10"]
