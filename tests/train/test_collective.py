"""finetune.train.collective.all_reduce: the one reduction, on one process and over two gloo processes."""

from __future__ import annotations

from pathlib import Path

import torch

from finetune.train.collective import all_reduce


def test_without_torch_distributed_values_are_returned_as_given():
    assert all_reduce([3, 4], "cpu") == [3, 4]
    assert all_reduce([1.5], "cpu", op="max") == [1.5]


def _worker(rank: int, init: str, out: str) -> None:
    import json

    import torch.distributed as dist

    dist.init_process_group("gloo", init_method=init, rank=rank, world_size=2)
    try:
        result = {
            "sum": all_reduce([rank + 1, 10 * rank], "cpu"),
            "float": all_reduce([0.5 * (rank + 1)], "cpu"),
            "max": all_reduce([2 if rank == 0 else 15], "cpu", op="max"),
        }
    finally:
        dist.destroy_process_group()
    Path(out, f"{rank}.json").write_text(json.dumps(result), encoding="utf-8")


def test_two_processes_sum_and_max(tmp_path):
    import json

    init = f"file://{tmp_path / 'rendezvous'}"
    torch.multiprocessing.spawn(_worker, args=(init, str(tmp_path)), nprocs=2, join=True)
    for rank in (0, 1):
        result = json.loads((tmp_path / f"{rank}.json").read_text(encoding="utf-8"))
        assert result == {"sum": [3, 10], "float": [1.5], "max": [15]}
        assert isinstance(result["sum"][0], int)
