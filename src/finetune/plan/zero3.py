"""`finetune plan` under DeepSpeed ZeRO-3: what each GPU and the host hold when parameters are partitioned too.

No torch import (as finetune.plan.estimate). What finetune's ZeRO-3 path does (finetune.train.zero3) and DeepSpeed 0.19 allocates:

- every parameter with more than `stage3_param_persistence_threshold` elements (transformers' "auto": 10 x hidden)
  is split across the processes; smaller ones (norms, DoRA magnitudes of narrow layers) stay whole on every GPU.
- NF4 weights are stored in the compute dtype (`bnb_4bit_quant_storage`), so their packed bytes are partitioned like
  any tensor; their quantization constants (absmax per 64 weights, double-quant tables) are not parameters and stay
  whole on every GPU.
- trainable tensors: the engine's bf16 copy, the fp32 master weights, the gradients and the optimizer states are all
  partitioned (master weights, optimizer states and fp32 gradients move to CPU RAM with `offload_optimizer`).
- transients: a module's parameters are all-gathered for its forward (and again for its backward): one decoder layer
  at a time plus up to `stage3_prefetch_bucket_size` elements prefetched for the next one; the loss gathers the whole
  lm_head (finetune.train.zero3.TrainedTokenLoss).
- `offload_param`: the partitions of the parameters live in pinned CPU RAM and are copied in for each gather.
- host RAM: the offloaded partitions and optimizer state (every process of the machine), and at load time a quantized
  base loaded whole by every process on the CPU (transformers' ZeRO-3 loading partitions only non-quantized models
  as it reads them; finetune partitions a quantized one right after).
"""

from __future__ import annotations

import math
from finetune.config.settings import Settings
from finetune.model.shapes import ModelShapes
from finetune.plan.items import GIB, Item, ZeroConfig, nf4_bytes, optimizer_bytes


def zero3_items(s: Settings, sh: ModelShapes, zero: ZeroConfig, n: int, a: int, half: bool,
                tensors: list[int]) -> tuple[list[Item], list[Item], list[str]]:
    """(GPU items, host-RAM items, notes) for the parameters, gradients and optimizer of a ZeRO-3 run on `n` processes.

    `a`: bytes of the compute dtype; `half`: bf16/fp16 training (the engine then holds trainable parameters in it);
    `tensors`: numel of every trainable tensor (LoRA A/B, DoRA magnitudes, modules_to_save copies or the whole model).
    """
    gpu: list[Item] = []
    host: list[Item] = []
    notes: list[str] = []
    L, H, V = sh.num_hidden_layers, sh.hidden_size, sh.vocab_size
    keep = zero.persistence_threshold
    where = "CPU RAM (offload_param)" if zero.offload_param else f"/ {n} processes"

    # -- frozen base: (partitioned bytes, whole-on-every-GPU bytes) --------------------------------------------------
    quantized = s.adapter and (s.load_in_4bit or s.load_in_8bit)
    linears = [i * o for i, o in sh.linears().values()]
    split = whole = 0
    layer_gather = 0  # one decoder layer's partitioned bytes, as gathered
    if s.adapter:
        for numel in linears:
            stored = math.ceil(numel / 2) if s.load_in_4bit else numel * a
            constants = nf4_bytes(numel) - math.ceil(numel / 2) if s.load_in_4bit else 0
            big = (stored // a if s.load_in_4bit else numel) > keep  # elements of the stored tensor
            split += L * stored if big else 0
            whole += L * (constants + (0 if big else stored))
            layer_gather += stored if big else 0
        heads = 1 if sh.tie_word_embeddings else 2
        split += heads * V * H * a
        norm_bytes = a if half else (4 if quantized else a)
        whole += (2 * L + 1) * H * norm_bytes if H <= keep else 0
        split += (2 * L + 1) * H * norm_bytes if H > keep else 0
        gpu.append(Item("base weights (ZeRO-3 partition)", 0 if zero.offload_param else split // n,
                        note=f"{split / GIB:.2f} GiB {where}" + (", NF4 packed in the compute dtype" if s.load_in_4bit else "")))
        gpu.append(Item("base weights kept whole on every GPU", whole,
                        note="NF4 absmax/double-quant constants + small params (< persistence threshold)"
                        if s.load_in_4bit else "params under stage3_param_persistence_threshold"))
        if zero.offload_param:
            host.append(Item("offloaded base partitions (all processes)", split, "host", "pinned"))
        if quantized:
            host.append(Item("loading: the 4-bit base whole in every process", n * (split + whole), "load",
                             "transformers loads a quantized model unpartitioned; partitioned right after"))

    # -- trainable tensors ------------------------------------------------------------------------------------------
    trainable = sum(tensors)
    p = 2 if half else 4
    big = sum(t for t in tensors if t > keep)
    small = trainable - big
    gpu.append(Item(f"trainable params ({'bf16' if half else 'fp32'} in the engine, ZeRO-3 partition)",
                    (0 if zero.offload_param else math.ceil(big / n) * p) + small * p,
                    note=f"{where}; {small:,} elements under the persistence threshold stay whole"))
    if zero.offload_param:
        host.append(Item("offloaded trainable partitions (all processes)", big * p, "host", "pinned"))
    if not s.adapter:
        layer_gather = sh.layer_linear_params * p
    else:
        layer_gather += _per_layer_trainable(tensors, L, V * H, keep) * p
    master = math.ceil(trainable / n) * 4
    g = 2 if half else 4
    opt, opt_note = optimizer_bytes(s.optimizer, tensors, ds=True)
    if zero.offload_optimizer:
        host.append(Item("fp32 master weights + gradients (offload_optimizer)", trainable * 8 if half else trainable * 4,
                         "host", "all processes"))
        host.append(Item(f"optimizer states ({s.optimizer}, offload_optimizer)", opt, "host", opt_note))
        gpu.append(Item("gradient partition (before the copy to CPU)", math.ceil(trainable / n) * g, note=f"/ {n}"))
    else:
        if half:
            gpu.append(Item("DeepSpeed fp32 master weights (partition)", master, note=f"4 B x trainable / {n}"))
        gpu.append(Item("gradients (partition, ZeRO-3)", math.ceil(trainable / n) * g, note=f"/ {n} processes"))
        gpu.append(Item(f"optimizer states ({s.optimizer})", math.ceil(opt / n), note=opt_note + f", / {n} processes"))
        if half:
            gpu.append(Item("fp32 gradient partition at step", master, "step", "DeepSpeed"))
        if s.optimizer == "adamw_torch":
            gpu.append(Item("optimizer step temporaries", master, "step", "foreach AdamW: sqrt(exp_avg_sq) copy"))
    if zero.contiguous_gradients:
        buckets = 2 if zero.overlap_comm else 1
        gpu.append(Item("DeepSpeed gradient buckets", buckets * zero.reduce_bucket_size * g,
                        note=f"{buckets} x reduce_bucket_size {zero.reduce_bucket_size:,} elements"))

    # -- gathered transients ------------------------------------------------------------------------------------------
    storage = a if s.load_in_4bit or s.adapter else p  # bytes per element of a gathered tensor
    prefetch = min(zero.prefetch_bucket_size * storage, layer_gather, zero.max_live_parameters * storage)
    gpu.append(Item("ZeRO-3 gathered layer + prefetch", layer_gather + prefetch, "layer",
                    f"one decoder layer all-gathered, + {zero.prefetch_bucket_size:,}-element prefetch bucket"))
    head_trained = not s.adapter or "lm_head" in (s.lora_modules_to_save or ())
    gpu.append(Item("ZeRO-3 gathered lm_head (loss)", V * H * (p if head_trained else a), "loss",
                    "the trained-token loss gathers the whole head, forward and backward"))
    if zero.offload_param or zero.offload_optimizer:
        notes.append("CPU offload: each step copies the parameter partitions in (offload_param) and runs the optimizer "
                     "on the CPU (offload_optimizer); expect several times slower steps than without offload")
    return gpu, host, notes


def _per_layer_trainable(tensors: list[int], layers: int, head_numel: int, keep: int) -> int:
    """Partitioned trainable elements of one decoder layer (LoRA/DoRA tensors come L at a time; embedding-sized
    modules_to_save copies are not per layer)."""
    per_layer = sum(t for t in tensors if keep < t < head_numel)
    return per_layer // max(layers, 1)
