"""Process count, torchrun command lines and DeepSpeed config resolution (pure; no process is started)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

from finetune.config import load_recipe_text
from finetune.errors import FinetuneError, RecipeError
from finetune.config.deepspeed import BUNDLED_DEEPSPEED, bundled_deepspeed_dir, resolve_deepspeed
from finetune.train.launch import (
    decide_num_processes,
    in_launched_process,
    launcher_env,
    make_topology,
    topology_from_env,
    torchrun_command,
    worker_args,
)

SEED = Path("/work/shared/seeds/chat-like-me.yml")


def _settings(deepspeed: str | None):
    text = "base_model: x\ndatasets:\n  - path: d.jsonl\n"
    if deepspeed is not None:
        text += f"deepspeed: {deepspeed}\n"
    return load_recipe_text(text, file="recipe.yml").settings


@pytest.mark.parametrize(
    ("requested", "gpus", "expected"),
    [(None, 0, 1), (None, 1, 1), (None, 4, 4), (2, 0, 2), (1, 8, 1), (3, 8, 3)],
)
def test_process_count(requested, gpus, expected):
    assert decide_num_processes(requested, gpus) == expected


def test_process_count_must_be_positive():
    with pytest.raises(FinetuneError, match="at least 1"):
        decide_num_processes(0, 2)


def test_launched_process_detection():
    assert not in_launched_process({"PATH": "/bin"})
    assert in_launched_process({"LOCAL_RANK": "0"})
    assert in_launched_process({"WORLD_SIZE": "2"})


def test_single_machine_command_is_standalone():
    cmd = torchrun_command(make_topology(2), ["r.yml", "--set", "lora_r=4"], python="/py")
    assert cmd == ["/py", "-m", "torch.distributed.run", "--nproc_per_node=2", "--standalone",
                   "-m", "finetune.train.worker", "r.yml", "--set", "lora_r=4"]


def test_multi_node_command_passes_rendezvous_flags():
    topology = make_topology(4, nnodes=2, node_rank=1, master_addr="10.0.0.1", master_port=29555)
    cmd = torchrun_command(topology, ["r.yml"])
    assert cmd[0] == sys.executable and "--standalone" not in cmd
    assert cmd[3:8] == ["--nproc_per_node=4", "--nnodes=2", "--node_rank=1", "--master_addr=10.0.0.1",
                        "--master_port=29555"]
    assert topology.world_size == 8
    assert cmd[-3:] == ["-m", "finetune.train.worker", "r.yml"]


def test_single_machine_with_a_port_uses_it():
    cmd = torchrun_command(make_topology(2, master_port=30000), ["r.yml"])
    assert "--master_port=30000" in cmd and "--master_addr=127.0.0.1" in cmd and "--standalone" not in cmd


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        (dict(nnodes=2, node_rank=0), "--master-addr"),
        (dict(nnodes=2, node_rank=2, master_addr="h"), "--node-rank"),
        (dict(nnodes=0), "--nnodes"),
        (dict(master_port=70000), "--master-port"),
    ],
)
def test_bad_topology_is_refused(kwargs, message):
    with pytest.raises(FinetuneError, match=message):
        make_topology(2, **kwargs)


CLUSTER_ENV = {"NNODES": "2", "NODE_RANK": "1", "MASTER_ADDR": "10.0.0.1", "MASTER_PORT": "29555"}


def test_machines_come_from_the_environment_a_cluster_sets():
    # SLURM (examples/slurm/train.sbatch), SkyPilot and Kubernetes set these per machine; no flag needed
    from_env = make_topology(4, **topology_from_env(CLUSTER_ENV))
    from_flags = make_topology(4, nnodes=2, node_rank=1, master_addr="10.0.0.1", master_port=29555)
    assert from_env == from_flags
    assert torchrun_command(from_env, ["r.yml"]) == torchrun_command(from_flags, ["r.yml"])


def test_flags_win_over_the_environment_and_nothing_set_is_one_machine():
    machines = topology_from_env(CLUSTER_ENV, nnodes=3, node_rank=2, master_addr="h", master_port=1234)
    assert machines == {"nnodes": 3, "node_rank": 2, "master_addr": "h", "master_port": 1234}
    assert topology_from_env({"PATH": "/bin", "NNODES": ""}) == {
        "nnodes": 1, "node_rank": 0, "master_addr": None, "master_port": None}
    assert torchrun_command(make_topology(2, **topology_from_env({})), ["r.yml"])[4] == "--standalone"


def test_a_bad_environment_variable_is_named():
    with pytest.raises(FinetuneError, match=r"NODE_RANK='node1' in the environment is not a number \(it stands for --node-rank\)"):
        topology_from_env(dict(CLUSTER_ENV, NODE_RANK="node1"))
    with pytest.raises(FinetuneError, match=r"--master-addr \(or MASTER_ADDR\)"):
        make_topology(1, **topology_from_env({"NNODES": "2"}))


def test_c10d_rendezvous_and_elastic_restarts(monkeypatch):
    monkeypatch.setenv("SLURM_JOB_ID", "4242")
    topology = make_topology(8, nnodes=4, rdzv_endpoint="head-node:29400", max_restarts=3)
    cmd = torchrun_command(topology, ["r.yml"], python="/py")
    assert cmd == ["/py", "-m", "torch.distributed.run", "--nproc_per_node=8", "--nnodes=4", "--rdzv_backend=c10d",
                   "--rdzv_endpoint=head-node:29400", "--rdzv_id=4242", "--max_restarts=3",
                   "-m", "finetune.train.worker", "r.yml"]
    # restarts need torchrun even for a single process
    assert make_topology(1, max_restarts=1).needs_launcher and not make_topology(1).needs_launcher
    with pytest.raises(FinetuneError, match="--rdzv-endpoint must be HOST:PORT"):
        make_topology(1, nnodes=2, rdzv_endpoint="head-node")
    with pytest.raises(FinetuneError, match="--max-restarts"):
        make_topology(1, max_restarts=-1)


def test_torchrun_gets_the_thread_count_it_would_choose_without_its_banner():
    assert launcher_env({"PATH": "/bin"}, 2)["OMP_NUM_THREADS"] == "1"
    assert launcher_env({"OMP_NUM_THREADS": "8"}, 2)["OMP_NUM_THREADS"] == "8"
    assert "OMP_NUM_THREADS" not in launcher_env({}, 1)


def test_worker_args_round_trip_through_the_worker_parser():
    from finetune.train.worker import parse_args

    args = worker_args("r.yml", ["a=1", "b.0.c=x y"], resume_from=Path("out/checkpoint-3"), force_preprocess=True)
    parsed = parse_args(args)
    assert parsed.config == "r.yml" and parsed.overrides == ["a=1", "b.0.c=x y"]
    assert parsed.resume_from == "out/checkpoint-3" and parsed.force_preprocess
    assert parse_args(worker_args("r.yml", [], resume_from=None)).resume_from is None
    assert not parsed.under_finetune_launcher  # run directly (own torchrun, SLURM): the worker reports signals
    assert parse_args(["r.yml", "--under-finetune-launcher"]).under_finetune_launcher


# --- DeepSpeed configs --------------------------------------------------------------------------


def test_no_deepspeed():
    assert resolve_deepspeed(_settings(None)) == (None, None)


def test_existing_deepspeed_path_is_used_as_is(tmp_path):
    config = tmp_path / "mine.json"
    config.write_text("{}")
    assert resolve_deepspeed(_settings(str(config))) == (config.resolve(), None)


def test_seed_placeholder_path_resolves_to_the_bundled_config():
    if SEED.is_file():
        from finetune.config import load_recipe

        settings = load_recipe(SEED).settings
    else:
        settings = _settings("/path/to/deepspeed_configs/zero2.json")
    path, notice = resolve_deepspeed(settings)
    assert path == (bundled_deepspeed_dir() / "zero2.json").resolve() and path.is_file()
    assert "/path/to/deepspeed_configs/zero2.json" in notice and "bundled" in notice


def test_unknown_missing_deepspeed_path_names_the_recipe_line():
    with pytest.raises(RecipeError, match=r"recipe.yml:4: deepspeed `/nope/zero9.json`: no such file"):
        resolve_deepspeed(_settings("/nope/zero9.json"))


def test_bundled_directory_falls_back_to_an_explicit_one(tmp_path):
    (tmp_path / "zero3.json").write_text("{}")
    path, _ = resolve_deepspeed(_settings("/elsewhere/zero3.json"), bundled=tmp_path)
    assert path == (tmp_path / "zero3.json").resolve()


@pytest.mark.parametrize("name", BUNDLED_DEEPSPEED)
def test_bundled_configs_leave_batch_and_precision_to_the_trainer(name):
    config = json.loads((bundled_deepspeed_dir() / name).read_text())
    for key in ("train_batch_size", "train_micro_batch_size_per_gpu", "gradient_accumulation_steps", "gradient_clipping"):
        assert config[key] == "auto"
    assert config["bf16"]["enabled"] == "auto" and config["fp16"]["enabled"] == "auto"
    stage = config["zero_optimization"]["stage"]
    assert stage == int(name[4])
    offload = "offload_optimizer" in config["zero_optimization"]
    assert offload == name.endswith("_offload.json")  # plain zero2 keeps the optimizer on the GPU


def test_zero3_is_accepted_and_resolves_to_the_bundled_config():
    from finetune.config import load_recipe_text

    for name in ("zero3.json", "zero3_offload.json"):
        settings = load_recipe_text(
            f"base_model: m\ndatasets:\n  - path: d.jsonl\ndeepspeed: /path/to/deepspeed_configs/{name}\n", file="r.yml"
        ).settings
        path, notice = resolve_deepspeed(settings)
        assert path == (bundled_deepspeed_dir() / name).resolve() and "bundled" in notice


def test_the_slurm_example_sets_what_finetune_reads_and_preprocesses_once():
    import re
    import subprocess

    from finetune.train.launch import TOPOLOGY_ENV

    script = Path(__file__).parents[2] / "examples" / "slurm" / "train.sbatch"
    assert subprocess.run(["bash", "-n", str(script)], capture_output=True).returncode == 0
    text = script.read_text()
    for _, variable in TOPOLOGY_ENV:
        assert re.search(rf"\b{variable}=", text), variable
    preprocess, train = text.index("finetune preprocess"), text.index("finetune train \"$0\"")
    assert preprocess < train and "srun --nodes=1 --ntasks=1 finetune preprocess" in text
