"""Helpers the end-to-end command tests share: running `finetune train` as a user does and reading what it wrote."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest


def launch_env(torch_extensions_dir: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "LOCAL_RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT",
                                                           "NNODES", "NODE_RANK")}
    env.update(TORCH_EXTENSIONS_DIR=str(torch_extensions_dir), HF_HUB_OFFLINE="1", WANDB_MODE="disabled",
               PYTHONUNBUFFERED="1")
    return env


def train_cli(recipe: Path, *args: str, env: dict[str, str], timeout: float = 400) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "finetune", "train", str(recipe), *args]
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=timeout)
    assert done.returncode == 0, f"{cmd} failed ({done.returncode}):\n{done.stdout[-3000:]}\n{done.stderr[-5000:]}"
    return done


def run_output_dir(recipe: Path) -> Path:
    return recipe.parent / "out"


def step_losses(checkpoint: Path) -> list[float]:
    state = json.loads((checkpoint / "trainer_state.json").read_text())
    return [entry["loss"] for entry in state["log_history"] if "loss" in entry]


def read_adapter(output_dir: Path) -> dict:
    from safetensors.torch import load_file

    return load_file(str(output_dir / "adapter_model.safetensors"))


def assert_same_adapter(a: dict, b: dict, atol: float) -> None:
    import torch

    assert a.keys() == b.keys() and a
    for name in a:
        torch.testing.assert_close(a[name], b[name], rtol=0, atol=atol, msg=lambda m: f"{name}: {m}")


def wait_for(predicate, process: subprocess.Popen, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if process.poll() is not None:
            out, err = process.communicate()
            pytest.fail(f"training ended ({process.returncode}) before {what}:\n{out[-2000:]}\n{err[-4000:]}")
        if time.monotonic() > deadline:
            process.kill()
            pytest.fail(f"timed out waiting for {what}")
        time.sleep(0.05)


# finetune's own console lines (finetune.log's format, and the data preparation's progress lines): nothing else may
# reach the console of a run without --verbose, on any rank or machine.
FINETUNE_LINE = re.compile(r"(finetune: |warning: |error: |\[rank \d+\] error: |reading |tokenizing |writing \w+ rows: )")


def assert_only_finetune_lines(done: subprocess.CompletedProcess) -> None:
    foreign = [line for line in (done.stdout + done.stderr).splitlines() if line and not FINETUNE_LINE.match(line)]
    assert not foreign, "lines that are not finetune's own:\n" + "\n".join(foreign[:40])
