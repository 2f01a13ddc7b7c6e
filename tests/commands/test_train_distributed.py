"""`finetune train` as a user runs it (a subprocess): DeepSpeed ZeRO-2 on 2 CPU processes, kill -9 + resume, SIGTERM.

Same global batch across world sizes: the trainer shuffles rows with a seeded sampler whose permutation does
not depend on the world size, and accelerate deals *micro batches* round-robin to the processes (rank r gets
micro batches r, r + N, ...). With micro batch 1, 2 processes x accumulation 2 therefore see rows {0, 1, 2, 3}
of the permutation in their first optimizer step, exactly as 1 process x accumulation 4 does; the loss is
normalised by the trained tokens of the whole window across processes, so the gradients are equal too.
LoRA dropout is 0 in that comparison: dropout masks come from per-process RNG streams.
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

from launching import (assert_only_finetune_lines, assert_same_adapter, launch_env, read_adapter, run_output_dir,
                       step_losses, train_cli, wait_for)

pytestmark = pytest.mark.slow


def test_zero2_on_two_cpu_processes_matches_one_process(train_recipe, torch_extensions_dir):
    common = dict(max_steps=4, save_steps=4, val_set_size=4)
    single = train_recipe("single", gradient_accumulation_steps=4, **common)
    # The seed's path: missing on disk, so the bundled deepspeed_configs/zero2.json is used. Evaluating every 2 steps
    # must not change what is trained (issue 21, item 10): the 1-process run does not evaluate.
    double = train_recipe("zero2", gradient_accumulation_steps=2, deepspeed="/path/to/deepspeed_configs/zero2.json",
                          eval_steps=2, **common)
    env = launch_env(torch_extensions_dir)

    train_cli(single, env=env)
    done = train_cli(double, "--num-processes", "2", env=env)

    assert "using the bundled" in done.stderr and "zero2.json" in done.stderr
    assert "starting 2 processes" in done.stderr
    assert_only_finetune_lines(done)  # one clean stream from rank 0 (issue 21, item 11)
    assert "step 2: eval loss" in done.stderr
    one = step_losses(run_output_dir(single) / "checkpoint-4")
    two = step_losses(run_output_dir(double) / "checkpoint-4")
    assert len(one) == len(two) == 4
    assert two == pytest.approx(one, rel=1e-5, abs=1e-6)
    assert one[0] != one[-1]  # it did train
    assert_same_adapter(read_adapter(run_output_dir(single)), read_adapter(run_output_dir(double)), atol=1e-5)
    recipe_saved = (run_output_dir(double) / "recipe.yml").read_text()
    assert "deepspeed_configs/zero2.json" in recipe_saved and "/path/to/" not in recipe_saved


def test_two_machines_from_the_environment_alone_train_as_one_process_with_evaluations(train_recipe,
                                                                                      torch_extensions_dir):
    """Two "machines" on 127.0.0.1, each `finetune train` with only NNODES / NODE_RANK / MASTER_ADDR / MASTER_PORT
    set (as a SLURM script sets them), plain DDP over gloo, evaluating every 2 steps: the same adapter as one process
    without evaluations (issue 21: the cluster section, and item 10 on 2 processes); each machine's console holds
    only finetune's lines (item 11)."""
    common = dict(max_steps=4, save_steps=4)
    single = train_recipe("one-process", gradient_accumulation_steps=4, val_set_size=4, **common)  # no evaluations
    machines = train_recipe("two-machines", gradient_accumulation_steps=2, val_set_size=4, eval_steps=2, **common)
    env = launch_env(torch_extensions_dir)
    train_cli(single, env=env)
    cluster = dict(env, NNODES="2", MASTER_ADDR="127.0.0.1", MASTER_PORT=str(_free_port()))
    cmd = [sys.executable, "-m", "finetune", "train", str(machines)]
    processes = [subprocess.Popen(cmd, env=dict(cluster, NODE_RANK=str(node)), stdout=subprocess.PIPE,
                                  stderr=subprocess.PIPE, text=True) for node in (0, 1)]
    try:
        outputs = [process.communicate(timeout=600) for process in processes]
    finally:
        for process in processes:
            if process.poll() is None:
                process.kill()
    for process, (stdout, stderr) in zip(processes, outputs):
        assert process.returncode == 0, stderr[-5000:]
        assert_only_finetune_lines(subprocess.CompletedProcess(cmd, 0, stdout, stderr))
    assert "starting 2 processes (1 here)" in outputs[0][1] and "--node_rank=1" in outputs[1][1]
    assert "step 2: eval loss" in outputs[0][1] and "eval loss" not in outputs[1][1]  # rank 0 speaks
    one = step_losses(run_output_dir(single) / "checkpoint-4")
    two = step_losses(run_output_dir(machines) / "checkpoint-4")
    assert len(two) == 4 and two == pytest.approx(one, rel=1e-5, abs=1e-6)
    assert_same_adapter(read_adapter(run_output_dir(single)), read_adapter(run_output_dir(machines)), atol=1e-5)


def test_kill_9_then_rerun_resumes_to_the_same_adapter(train_recipe, torch_extensions_dir):
    # Dropout > 0: the same result needs the RNG state restored from the checkpoint, not only the weights.
    keys = dict(max_steps=8, save_steps=1, lora_dropout=0.2, gradient_accumulation_steps=2)
    reference = train_recipe("uninterrupted", **keys)
    killed = train_recipe("killed", **keys)
    env = launch_env(torch_extensions_dir)
    train_cli(reference, env=env)

    out = run_output_dir(killed)
    process = subprocess.Popen([sys.executable, "-m", "finetune", "train", str(killed)], env=env,
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    wait_for(lambda: (out / "checkpoint-3" / "trainer_state.json").is_file(), process, 300, "checkpoint-3")
    process.send_signal(signal.SIGKILL)
    process.communicate()
    assert process.returncode == -signal.SIGKILL
    assert not (out / "run_summary.json").exists(), "the run finished before it could be killed"

    done = train_cli(killed, env=env)
    assert "resuming from" in done.stderr
    assert json.loads((out / "run_summary.json").read_text())["steps"] == 8
    assert step_losses(out / "checkpoint-8")[-1] == pytest.approx(
        step_losses(run_output_dir(reference) / "checkpoint-8")[-1], rel=1e-5)
    assert_same_adapter(read_adapter(run_output_dir(reference)), read_adapter(out), atol=1e-6)


def test_sigterm_saves_a_checkpoint_and_exits_cleanly(train_recipe, torch_extensions_dir):
    recipe = train_recipe("sigterm", max_steps=200, gradient_accumulation_steps=1)  # no save cadence
    out = run_output_dir(recipe)
    process = subprocess.Popen([sys.executable, "-m", "finetune", "train", str(recipe)], env=launch_env(torch_extensions_dir),
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    # Training has started once the first progress line (step 10 of 200, not a terminal) shows on stderr.
    line = ""
    while "finetune: step " not in line:
        line = process.stderr.readline()
        if not line and process.poll() is not None:
            pytest.fail(f"training ended before its first step:\n{process.stderr.read()[-4000:]}")
    process.send_signal(signal.SIGTERM)
    stdout, stderr = process.communicate(timeout=120)

    assert process.returncode == 128 + signal.SIGTERM, stderr[-3000:]
    assert "Traceback" not in stderr
    assert "stopped by SIGTERM" in stderr and "Run the same command again to resume" in stderr
    checkpoints = list(out.glob("checkpoint-*"))
    assert len(checkpoints) == 1 and (checkpoints[0] / "trainer_state.json").is_file()
    step = json.loads((checkpoints[0] / "trainer_state.json").read_text())["global_step"]
    assert 1 <= step < 200
    assert not (out / "run_summary.json").exists()  # not a finished run: the next `finetune train` resumes


def test_a_cut_short_newest_checkpoint_is_skipped_on_resume(train_recipe, torch_extensions_dir):
    from finetune.runs.layout import COMPLETE_MARKER

    recipe = train_recipe("damaged", max_steps=3, save_steps=1, gradient_accumulation_steps=1)
    out = run_output_dir(recipe)
    env = launch_env(torch_extensions_dir)
    train_cli(recipe, env=env)
    assert all((out / f"checkpoint-{step}" / COMPLETE_MARKER).is_file() for step in (1, 2, 3))
    (out / "run_summary.json").unlink()  # as if the run had died after saving checkpoint-3
    adapter = out / "checkpoint-3" / "adapter_model.safetensors"
    adapter.write_bytes(adapter.read_bytes()[: adapter.stat().st_size // 2])

    done = train_cli(recipe, env=env)
    assert "Traceback" not in done.stderr
    assert "skipping damaged checkpoint" in done.stderr and "checkpoint-3" in done.stderr
    assert f"resuming from {out / 'checkpoint-2'}" in done.stderr
    assert json.loads((out / "run_summary.json").read_text())["steps"] == 3
    assert step_losses(out / "checkpoint-3")[-1] and (out / "checkpoint-3" / COMPLETE_MARKER).is_file()


def test_a_cut_deepspeed_optimizer_shard_is_skipped_on_resume(train_recipe, torch_extensions_dir):
    """ZeRO-2 on 2 processes: each rank writes its own optimizer shard under checkpoint-N/global_stepN/. The seal
    lists them all (rank 1's included) with their sizes; one cut in half makes the resume fall back a checkpoint
    instead of dying in torch.load on every rank."""
    from finetune.runs.checkpoints import sealed_files
    from finetune.runs.layout import COMPLETE_MARKER

    recipe = train_recipe("zero2-damaged", max_steps=3, save_steps=1, gradient_accumulation_steps=1,
                          deepspeed="/path/to/deepspeed_configs/zero2.json")
    out = run_output_dir(recipe)
    env = launch_env(torch_extensions_dir)
    train_cli(recipe, "--num-processes", "2", env=env)
    shards = sorted((out / "checkpoint-3").glob("global_step3/*optim_states.pt"))
    assert len(shards) == 2, sorted(p.name for p in (out / "checkpoint-3").rglob("*"))
    recorded = sealed_files(out / "checkpoint-3")
    assert all(recorded[str(p.relative_to(out / "checkpoint-3"))] == p.stat().st_size for p in shards)
    (out / "run_summary.json").unlink()  # as if the run had died after saving checkpoint-3
    shards[-1].write_bytes(shards[-1].read_bytes()[: shards[-1].stat().st_size // 2])

    done = train_cli(recipe, "--num-processes", "2", env=env)
    assert "Traceback" not in done.stderr and "Invalid argument" not in done.stderr
    assert "skipping damaged checkpoint" in done.stderr and shards[-1].name in done.stderr
    assert f"resuming from {out / 'checkpoint-2'}" in done.stderr
    assert json.loads((out / "run_summary.json").read_text())["steps"] == 3
    assert (out / "checkpoint-3" / COMPLETE_MARKER).is_file()


def _free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_sigterm_under_the_users_own_launcher_exits_143_on_every_rank(train_recipe, torch_extensions_dir):
    # As a SLURM script (or the user's own torchrun) starts it: one `finetune train` per rank, rank env set,
    # finetune's launcher not involved; the scheduler signals every process. Each must exit 143 so the job
    # reads as interrupted (and is requeued), not finished.
    recipe = train_recipe("own-launcher", max_steps=200, gradient_accumulation_steps=1)
    base = dict(launch_env(torch_extensions_dir), MASTER_ADDR="127.0.0.1", MASTER_PORT=str(_free_port()), WORLD_SIZE="2")
    processes = [
        subprocess.Popen([sys.executable, "-m", "finetune", "train", str(recipe)],
                         env=dict(base, RANK=str(rank), LOCAL_RANK=str(rank)),
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        for rank in (0, 1)
    ]
    try:
        line = ""
        while "finetune: step " not in line:  # rank 0's first progress line
            line = processes[0].stderr.readline()
            if not line and processes[0].poll() is not None:
                pytest.fail(f"training ended before its first step:\n{processes[0].stderr.read()[-4000:]}")
        for process in processes:
            process.send_signal(signal.SIGTERM)
        outputs = [process.communicate(timeout=180) for process in processes]
    finally:
        for process in processes:
            if process.poll() is None:
                process.kill()
    codes = [process.returncode for process in processes]
    assert codes == [128 + signal.SIGTERM] * 2, "\n".join(err[-3000:] for _, err in outputs)
    assert "stopped by SIGTERM" in outputs[0][1]
    assert list(run_output_dir(recipe).glob("checkpoint-*"))


def test_sigterm_to_the_workers_of_the_users_own_torchrun_fails_the_job(train_recipe, torch_extensions_dir):
    # The user's torchrun runs `finetune train` per rank; a scheduler or script signals the training processes.
    # They must not exit 0, or torchrun exits 0 too and the job reads as finished (and is not requeued).
    import psutil

    recipe = train_recipe("own-torchrun", max_steps=200, gradient_accumulation_steps=1)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", str(_free_port()),
           "-m", "finetune", "train", str(recipe)]
    process = subprocess.Popen(cmd, env=launch_env(torch_extensions_dir), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                               text=True)
    try:
        line = ""
        while "finetune: step " not in line:  # rank 0's first progress line
            line = process.stderr.readline()
            if not line and process.poll() is not None:
                pytest.fail(f"training ended before its first step:\n{process.stderr.read()[-4000:]}")
        workers = psutil.Process(process.pid).children()
        assert len(workers) == 2
        for worker in workers:
            worker.send_signal(signal.SIGTERM)
        _, stderr = process.communicate(timeout=180)
    finally:
        if process.poll() is None:
            process.kill()
    assert process.returncode != 0, stderr[-3000:]
    assert "stopped by SIGTERM" in stderr and "exitcode  : 143" in stderr
    assert list(run_output_dir(recipe).glob("checkpoint-*"))
