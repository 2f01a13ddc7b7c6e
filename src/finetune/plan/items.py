"""What the memory plan is made of, shared by the estimate (finetune.plan.estimate) and its ZeRO-3 part
(finetune.plan.zero3): byte units, one line of the plan, the DeepSpeed ZeRO settings it reads, and the byte counts
of a quantized weight and of optimizer state."""

from __future__ import annotations

import math
from dataclasses import dataclass

from finetune.model.shapes import NF4_BLOCK, NF4_BLOCK2

GIB, MIB = 1024**3, 1024**2
BNB_8BIT_MIN_SIZE = 4096  # bnb optimizers keep 32-bit states for tensors smaller than this (min_8bit_size)
DS_DEFAULT_BUCKET = 500_000_000  # DeepSpeed's default reduce_bucket_size (elements)
EIGHT_BIT_OPTIMIZERS = ("adamw_bnb_8bit", "adamw_8bit", "paged_adamw_8bit")


@dataclass(frozen=True)
class Item:
    """One line of the estimate. phase: 'always' (resident), 'fwd/bwd' (kept from forward to backward), then
    transients that never overlap: 'layer' (one layer's recompute + backward), 'loss' (the loss head), 'step'."""

    name: str
    bytes: int
    phase: str = "always"
    note: str = ""


@dataclass(frozen=True)
class ZeroConfig:
    stage: int = 0
    path: str | None = None
    overlap_comm: bool = False
    contiguous_gradients: bool = True
    reduce_bucket_size: int = DS_DEFAULT_BUCKET
    offload_optimizer: bool = False
    note: str = ""
    # ZeRO-3 only (DeepSpeed's defaults; transformers fills "auto" from the hidden size)
    offload_param: bool = False
    prefetch_bucket_size: int = 50_000_000
    persistence_threshold: int = 100_000
    max_live_parameters: int = 1_000_000_000


def nf4_bytes(numel: int) -> int:
    """Bytes of one NF4 weight of `numel` elements: packed 4-bit values, uint8 absmax per block, fp32 double-quant
    constants and the per-tensor code tables."""
    blocks = math.ceil(numel / NF4_BLOCK)
    return math.ceil(numel / 2) + blocks + 4 * math.ceil(blocks / NF4_BLOCK2) + 4 * (16 + 256 + 1)


def optimizer_bytes(optimizer: str, tensors: list[int], *, ds: bool) -> tuple[int, str]:
    """Optimizer-state bytes for these trainable tensors (DeepSpeed hands the optimizer one flat fp32 partition)."""
    flat = [sum(tensors)] if ds else tensors
    if optimizer in EIGHT_BIT_OPTIMIZERS:
        total = sum(2 * t + 2 * 4 * math.ceil(t / 256) if t >= BNB_8BIT_MIN_SIZE else 8 * t for t in flat)
        return total, "2 x uint8 + fp32 absmax/256" + (" (paged: may spill to CPU)" if "paged" in optimizer else "")
    if optimizer in ("adamw_torch", "adamw_torch_fused", "paged_adamw_32bit"):
        return 8 * sum(flat), "2 x fp32" + (" (paged: may spill to CPU)" if "paged" in optimizer else "")
    if optimizer == "adafactor":
        return 4 * sum(flat), "factored second moment (upper bound)"
    return 0, "no state"
