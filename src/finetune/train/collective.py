"""The one all-reduce of the training path: element-wise sum or max of a few numbers over all processes."""

from __future__ import annotations

from typing import TYPE_CHECKING, Literal

if TYPE_CHECKING:
    import torch


def all_reduce(values: list[int | float], device: torch.device | str, *,
               op: Literal["sum", "max"] = "sum") -> list[int | float]:
    """`values` (ints, or floats when any is a float) reduced over all processes; as given when not distributed."""
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return list(values)
    import torch

    if dist.get_backend() == "nccl":
        device = torch.device("cuda", torch.cuda.current_device())
    floats = any(isinstance(v, float) for v in values)
    tensor = torch.tensor(values, dtype=torch.float64 if floats else torch.long, device=device)
    dist.all_reduce(tensor, op=dist.ReduceOp.MAX if op == "max" else dist.ReduceOp.SUM)
    return [float(v) if floats else int(v) for v in tensor.tolist()]
