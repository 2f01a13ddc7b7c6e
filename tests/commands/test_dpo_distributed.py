"""`finetune train` on a DPO recipe as a user runs it: ZeRO-2 on 2 CPU processes == 1 process; kill -9 + rerun ==
uninterrupted, and the rerun reuses the cached reference log-probs.

Same global batch across world sizes as for SFT (tests/commands/test_train_distributed.py): micro batch 1, 1 process x
accumulation 4 and 2 processes x accumulation 2 see the same 4 pairs per optimizer step; the DPO loss is a
mean over pairs divided by the accumulation steps, and gradients are averaged over processes, so they match.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from conftest import pair_rows

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def dpo_train_recipe(micro_llama_dir: Path, tmp_path_factory: pytest.TempPathFactory):
    shared = tmp_path_factory.mktemp("dpo-data")
    data = shared / "pairs.jsonl"
    data.write_text("".join(json.dumps(row) + "\n" for row in pair_rows(32)), encoding="utf-8")

    def make(name: str, cache: str, **keys) -> Path:
        directory = tmp_path_factory.mktemp(name)
        recipe = {
            "base_model": str(micro_llama_dir), "rl": "dpo", "adapter": "lora", "lora_r": 4, "lora_alpha": 8,
            "lora_target_linear": True, "chat_template": "llama3", "bf16": False,
            "datasets": [{"path": str(data), "type": "chat_template.default"}],
            "dataset_prepared_path": str(shared / cache), "output_dir": str(directory / "out"),
            "micro_batch_size": 1, "optimizer": "adamw_torch", "lr_scheduler": "constant", "warmup_steps": 0,
            "learning_rate": 0.01, "logging_steps": 1,
            "special_tokens": {"pad_token": "<|finetune_right_pad_id|>", "eos_token": "<|eot_id|>"}, **keys,
        }
        path = directory / "recipe.yml"
        path.write_text(yaml.safe_dump(recipe, sort_keys=False), encoding="utf-8")
        return path

    return make


def _env(torch_extensions_dir: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "LOCAL_RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")}
    env.update(TORCH_EXTENSIONS_DIR=str(torch_extensions_dir), HF_HUB_OFFLINE="1", WANDB_MODE="disabled",
               PYTHONUNBUFFERED="1")
    return env


def _train(recipe: Path, *args: str, env: dict[str, str]) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "finetune", "train", str(recipe), *args]
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=400)
    assert done.returncode == 0, f"{cmd} failed ({done.returncode}):\n{done.stdout[-3000:]}\n{done.stderr[-5000:]}"
    return done


def _losses(checkpoint: Path) -> list[float]:
    state = json.loads((checkpoint / "trainer_state.json").read_text())
    return [entry["loss"] for entry in state["log_history"] if "loss" in entry]


def _assert_same_adapter(a: Path, b: Path, atol: float) -> None:
    import torch
    from safetensors.torch import load_file

    left, right = load_file(str(a / "adapter_model.safetensors")), load_file(str(b / "adapter_model.safetensors"))
    assert left.keys() == right.keys() and left
    for name in left:
        torch.testing.assert_close(left[name], right[name], rtol=0, atol=atol, msg=lambda m: f"{name}: {m}")


def test_dpo_zero2_on_two_cpu_processes_matches_one_process(dpo_train_recipe, torch_extensions_dir):
    single = dpo_train_recipe("dpo-single", "zero", gradient_accumulation_steps=4, max_steps=3, save_steps=3)
    double = dpo_train_recipe("dpo-zero2", "zero", gradient_accumulation_steps=2, max_steps=3, save_steps=3,
                              deepspeed="zero2.json")
    env = _env(torch_extensions_dir)
    first = _train(single, env=env)
    done = _train(double, "--num-processes", "2", env=env)
    assert "starting 2 processes" in done.stderr
    assert "computing reference log-probs" in first.stderr
    assert "computing reference log-probs" not in done.stderr  # the cache serves every world size
    one, two = _losses(single.parent / "out" / "checkpoint-3"), _losses(double.parent / "out" / "checkpoint-3")
    assert len(one) == len(two) == 3 and one[0] != one[-1]
    assert two == pytest.approx(one, rel=1e-5, abs=1e-6)
    _assert_same_adapter(single.parent / "out", double.parent / "out", atol=1e-5)


def test_dpo_kill_9_then_rerun_resumes_to_the_same_adapter_without_recomputing_the_reference(
        dpo_train_recipe, torch_extensions_dir):
    keys = dict(max_steps=6, save_steps=1, gradient_accumulation_steps=2)
    reference = dpo_train_recipe("dpo-uninterrupted", "resume", **keys)
    killed = dpo_train_recipe("dpo-killed", "resume", **keys)
    env = _env(torch_extensions_dir)
    assert "computing reference log-probs" in _train(reference, env=env).stderr
    out = killed.parent / "out"
    process = subprocess.Popen([sys.executable, "-m", "finetune", "train", str(killed)], env=env,
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 300
    while not (out / "checkpoint-3" / "trainer_state.json").is_file():
        assert process.poll() is None, process.communicate()[1][-4000:]
        assert time.monotonic() < deadline, "timed out waiting for checkpoint-3"
        time.sleep(0.05)
    process.send_signal(signal.SIGKILL)
    process.communicate()
    assert not (out / "run_summary.json").exists(), "the run finished before it could be killed"

    done = _train(killed, env=env)
    assert "resuming from" in done.stderr
    assert "computing reference log-probs" not in done.stderr  # cached by the first runs
    assert json.loads((out / "run_summary.json").read_text())["steps"] == 6
    assert _losses(out / "checkpoint-6") == pytest.approx(_losses(reference.parent / "out" / "checkpoint-6"), rel=1e-5)
    _assert_same_adapter(reference.parent / "out", out, atol=1e-6)
