"""`finetune train`: how many processes, how they are started, and which DeepSpeed config they use.

Flow of `main_train` (the CLI calls it once per machine):

1. load the recipe (errors surface before any process starts) and resolve its `deepspeed` path;
2. decide what to do with `output_dir` once, here (`resilience.plan_output_dir`): resume from the latest
   checkpoint, start over, or refuse to overwrite a finished run;
3. decide the process count: `--num-processes N`, else one per visible CUDA GPU, else 1;
4. one process on one machine: run the worker in this process. Otherwise re-launch through torchrun
   (`python -m torch.distributed.run ... -m finetune.train.worker ...`); each worker loads the recipe file
   and overrides again, so no pickled settings cross process boundaries. On CPU the workers talk over gloo.

Inside a launched process (LOCAL_RANK / WORLD_SIZE set, e.g. by your own torchrun or SLURM script)
`main_train` never re-launches: it runs the worker directly.

Several machines, as clusters start them (`topology_from_env`): each machine runs `finetune train` once; the
flags `--nnodes --node-rank --master-addr --master-port` win, and where one is absent the environment variable
SLURM, SkyPilot or Kubernetes scripts set is read instead (NNODES, NODE_RANK, MASTER_ADDR, MASTER_PORT; see
examples/slurm/train.sbatch). `--rdzv-endpoint HOST:PORT` uses torchrun's c10d rendezvous instead (machines get
their ranks as they join; no node rank needed), and `--max-restarts N` lets torchrun restart the whole group N times
after a failure (elastic; the restarted workers resume from the latest checkpoint).
"""

from __future__ import annotations

import logging
import os
import shlex
import signal
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping, Sequence

from finetune.config import load_recipe
from finetune.config.deepspeed import resolve_deepspeed, zero_stage
from finetune.config.settings import Settings
from finetune.data.readers import check_dataset_paths
from finetune.errors import FinetuneError
from finetune.plan.command import format_plan
from finetune.plan.estimate import plan_memory
from finetune.train import resilience

logger = logging.getLogger(__name__)

DEFAULT_MASTER_PORT = 29500
DEFAULT_RDZV_ID = "finetune"
# The environment a cluster script sets for each machine, read where the flag is absent: (flag, variable).
TOPOLOGY_ENV = (("--nnodes", "NNODES"), ("--node-rank", "NODE_RANK"), ("--master-addr", "MASTER_ADDR"),
                ("--master-port", "MASTER_PORT"))


@dataclass(frozen=True)
class Topology:
    """Where this launch sits: processes per machine, machines, this machine's rank, the rendezvous point."""

    nproc_per_node: int = 1
    nnodes: int = 1
    node_rank: int = 0
    master_addr: str | None = None
    master_port: int | None = None
    rdzv_endpoint: str | None = None  # HOST:PORT of torchrun's c10d rendezvous (instead of a static master)
    max_restarts: int = 0

    @property
    def world_size(self) -> int:
        return self.nproc_per_node * self.nnodes

    @property
    def needs_launcher(self) -> bool:
        return self.world_size > 1 or self.rdzv_endpoint is not None or self.max_restarts > 0


def visible_cuda_devices() -> int:
    """CUDA GPUs this process can see (honours CUDA_VISIBLE_DEVICES); 0 without CUDA."""
    import torch

    return torch.cuda.device_count() if torch.cuda.is_available() else 0


def decide_num_processes(requested: int | None, cuda_devices: int) -> int:
    """`requested` when given (>= 1), else one per visible CUDA GPU, else 1 (CPU)."""
    if requested is not None:
        if requested < 1:
            raise FinetuneError(f"--num-processes must be at least 1 (got {requested})")
        return requested
    return max(cuda_devices, 1)


def in_launched_process(environ: Mapping[str, str]) -> bool:
    """True inside a process started by torchrun / deepspeed / accelerate / SLURM scripts (rank env set)."""
    return "LOCAL_RANK" in environ or "WORLD_SIZE" in environ


def make_topology(
    nproc_per_node: int,
    *,
    nnodes: int = 1,
    node_rank: int = 0,
    master_addr: str | None = None,
    master_port: int | None = None,
    rdzv_endpoint: str | None = None,
    max_restarts: int = 0,
) -> Topology:
    """A checked Topology; several machines need `master_addr` (the rank-0 machine, reachable from all) or a
    rendezvous endpoint."""
    if nnodes < 1:
        raise FinetuneError(f"--nnodes must be at least 1 (got {nnodes})")
    if not 0 <= node_rank < nnodes:
        raise FinetuneError(f"--node-rank must be in 0..{nnodes - 1} (got {node_rank})")
    if rdzv_endpoint is not None:
        host, _, port = rdzv_endpoint.rpartition(":")
        if not host or not port.isdigit() or not 0 < int(port) < 65536:
            raise FinetuneError(f"--rdzv-endpoint must be HOST:PORT (got {rdzv_endpoint!r})")
    elif nnodes > 1 and not master_addr:
        raise FinetuneError("several machines (--nnodes > 1) need --master-addr (or MASTER_ADDR): the address of the "
                            "node-rank-0 machine; or --rdzv-endpoint HOST:PORT")
    if master_port is not None and not 0 < master_port < 65536:
        raise FinetuneError(f"--master-port must be a TCP port (got {master_port})")
    if max_restarts < 0:
        raise FinetuneError(f"--max-restarts must be 0 or more (got {max_restarts})")
    return Topology(nproc_per_node, nnodes, node_rank, master_addr, master_port, rdzv_endpoint, max_restarts)


def topology_from_env(
    environ: Mapping[str, str],
    *,
    nnodes: int | None = None,
    node_rank: int | None = None,
    master_addr: str | None = None,
    master_port: int | None = None,
) -> dict[str, object]:
    """`make_topology`'s machine keywords: each flag given (not None), else its environment variable
    (`TOPOLOGY_ENV`), else the one-machine default. A variable that is not a number is an error naming it."""
    given = {"--nnodes": nnodes, "--node-rank": node_rank, "--master-addr": master_addr, "--master-port": master_port}
    values: dict[str, object] = {}
    for flag, variable in TOPOLOGY_ENV:
        value: object = given[flag]
        if value is None and environ.get(variable, "").strip():
            raw = environ[variable].strip()
            if flag == "--master-addr":
                value = raw
            elif raw.isdigit():
                value = int(raw)
            else:
                raise FinetuneError(f"{variable}={raw!r} in the environment is not a number (it stands for {flag})")
        values[flag.removeprefix("--").replace("-", "_")] = value
    values["nnodes"] = values["nnodes"] if values["nnodes"] is not None else 1
    values["node_rank"] = values["node_rank"] if values["node_rank"] is not None else 0
    return values


def worker_args(
    recipe_path: str | Path,
    overrides: Sequence[str],
    *,
    resume_from: Path | None,
    force_preprocess: bool = False,
    verbose: bool = False,
) -> list[str]:
    """The worker's command-line arguments (see `finetune.train.worker.parse_args`)."""
    args = [str(recipe_path)]
    for override in overrides:
        args += ["--set", override]
    if resume_from is not None:
        args += ["--resume-from", str(resume_from)]
    if force_preprocess:
        args.append("--force-preprocess")
    if verbose:
        args.append("--verbose")
    return args


def torchrun_command(topology: Topology, args: Sequence[str], *, python: str | None = None) -> list[str]:
    """`python -m torch.distributed.run ... -m finetune.train.worker ARGS` for this machine.

    One machine: `--standalone` (a free local rendezvous port, nothing to configure) unless a master port
    is given. Several: static rendezvous at master_addr:master_port with --node-rank, or c10d rendezvous at
    the endpoint (its id: the SLURM job id when there is one, so two jobs on one endpoint never meet).
    """
    cmd = [python or sys.executable, "-m", "torch.distributed.run", f"--nproc_per_node={topology.nproc_per_node}"]
    if topology.rdzv_endpoint is not None:
        rdzv_id = os.environ.get("SLURM_JOB_ID") or DEFAULT_RDZV_ID
        cmd += [f"--nnodes={topology.nnodes}", "--rdzv_backend=c10d", f"--rdzv_endpoint={topology.rdzv_endpoint}",
                f"--rdzv_id={rdzv_id}"]
    elif topology.nnodes == 1 and topology.master_addr is None and topology.master_port is None:
        cmd.append("--standalone")
    else:
        cmd += [f"--nnodes={topology.nnodes}", f"--node_rank={topology.node_rank}"]
        cmd.append(f"--master_addr={topology.master_addr or '127.0.0.1'}")
        cmd.append(f"--master_port={topology.master_port or DEFAULT_MASTER_PORT}")
    if topology.max_restarts:
        cmd.append(f"--max_restarts={topology.max_restarts}")
    return cmd + ["-m", "finetune.train.worker", *args]


def launcher_env(environ: Mapping[str, str], nproc_per_node: int) -> dict[str, str]:
    """torchrun's environment: OMP_NUM_THREADS=1 for several processes per machine unless set, as torchrun itself
    would choose, without its banner about choosing it."""
    env = dict(environ)
    if nproc_per_node > 1:
        env.setdefault("OMP_NUM_THREADS", "1")
    return env


# --- entry point for the CLI ---------------------------------------------------------------------


def main_train(
    recipe_path: str | Path,
    overrides: Sequence[str] = (),
    *,
    num_processes: int | None = None,
    resume: bool = True,
    overwrite: bool = False,
    force_preprocess: bool = False,
    nnodes: int | None = None,
    node_rank: int | None = None,
    master_addr: str | None = None,
    master_port: int | None = None,
    rdzv_endpoint: str | None = None,
    max_restarts: int = 0,
    verbose: bool = False,
) -> int:
    """`finetune train`: plan output_dir, then run the worker here or under torchrun. Returns an exit code.

    Exit codes: 0 done; 128 + signal number when SIGINT/SIGTERM stopped it after saving a checkpoint
    (run again to resume); otherwise the failing worker's code. FinetuneError propagates to the CLI.
    """
    from finetune.train import worker  # pulls torch and TRL: only where this process trains itself (lazy, see docs)

    settings = load_recipe(recipe_path, overrides).settings
    launched = in_launched_process(os.environ)
    machines = topology_from_env(os.environ, nnodes=nnodes, node_rank=node_rank, master_addr=master_addr,
                                 master_port=master_port) if not launched else {}
    check_dataset_paths(settings.datasets)  # fail before starting anything
    ds_path, ds_notice = resolve_deepspeed(settings)  # workers resolve again
    plan = resilience.plan_output_dir(
        Path(settings.output_dir), resume=resume, overwrite=overwrite,
        clean=not launched or os.environ.get("RANK", "0") == "0",  # one process deletes stale checkpoints
    )
    for line in filter(None, (ds_notice, *plan.messages)):
        logger.info("%s", line)

    args = worker_args(recipe_path, overrides, resume_from=plan.resume_from, force_preprocess=force_preprocess,
                       verbose=verbose)
    if launched:
        return worker.main(args)
    gpus = visible_cuda_devices()
    if zero_stage(ds_path) == 3:
        from finetune.train.zero3 import check_zero3  # imports torch: only for a ZeRO-3 recipe (lazy, see docs)

        check_zero3(settings, cpu=not gpus)  # before any process starts
    nproc = decide_num_processes(num_processes, gpus)
    topology = make_topology(nproc, **machines, rdzv_endpoint=rdzv_endpoint, max_restarts=max_restarts)
    if gpus:
        print_memory_plan(settings, world_size=topology.world_size)
    if not topology.needs_launcher:
        return worker.main(args)
    cmd = torchrun_command(topology, [*args, "--under-finetune-launcher"])  # run_launcher reports signals
    logger.info("starting %d processes (%d here): %s", topology.world_size, nproc, shlex.join(cmd))
    return run_launcher(cmd, launcher_env(os.environ, nproc))


def print_memory_plan(settings: Settings, *, world_size: int) -> None:
    """`finetune plan`'s table for this GPU's memory, before anything loads (skipped when shapes are unknown)."""
    import torch

    try:
        memory = torch.cuda.get_device_properties(0).total_memory
        estimate = plan_memory(settings, world_size=world_size, gpu_memory_bytes=memory)
    except FinetuneError as exc:
        logger.info("no memory plan: %s", exc)
        return
    logger.info("memory plan for this GPU:\n%s", format_plan(estimate))


def run_launcher(cmd: Sequence[str], env: Mapping[str, str] | None = None) -> int:
    """Run torchrun and wait. SIGTERM is forwarded to it (torchrun passes it on to the workers, which save
    a checkpoint); SIGINT from a terminal already reaches the whole process group, so it is ignored here.
    Returns 128 + signal number after a signal, else torchrun's exit code."""
    received: list[int] = []
    process = subprocess.Popen(list(cmd), env=dict(env) if env is not None else None)

    def forward(signum: int, frame: object) -> None:
        received.append(signum)
        if signum == signal.SIGTERM and process.poll() is None:
            process.send_signal(signum)

    previous = {sig: signal.signal(sig, forward) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        code = process.wait()
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    return 128 + received[0] if received else code
