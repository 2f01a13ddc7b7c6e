"""What `finetune plan` prints: the estimate of finetune.plan.estimate as a table, its verdict and the fitting suggestions."""

from __future__ import annotations

from pathlib import Path

from finetune.config.settings import Settings
from finetune.plan.estimate import GIB, MemoryPlan, plan_memory
from finetune.config.sizes import parse_size


def _gib(size: int) -> str:
    return f"{size / GIB:6.2f}"


def format_plan(plan: MemoryPlan) -> str:
    """The estimate as a table, with the verdict and (when it does not fit) the suggestions."""
    zero = f"ZeRO-{plan.zero_stage} ({Path(plan.deepspeed).name})" if plan.zero_stage else (
        "DDP" if plan.world_size > 1 else "no DeepSpeed")
    lines = [f"memory plan per GPU: {plan.shapes.name} ({plan.shapes.total_params / 1e9:.2f} B params, "
             f"{plan.shapes.source}), {plan.world_size} process(es), {zero}",
             f"{'phase':<8} {'item':<52} {'GiB':>6}  note"]
    for item in plan.items:
        lines.append(f"{item.phase:<8} {item.name:<52} {_gib(item.bytes)}  {item.note}")
    peak, budget = plan.peak_bytes, plan.gpu_memory_bytes
    lines.append(f"{'':<8} {'peak = always + max(fwd/bwd + max(layer, loss), step)':<52} {_gib(peak)}")
    verdict = (f"fits in {budget / GIB:.1f} GiB ({(budget - peak) / GIB:.1f} GiB to spare)" if plan.fits
               else f"does NOT fit in {budget / GIB:.1f} GiB ({(peak - budget) / GIB:.1f} GiB over)")
    lines.append(f"verdict: {verdict}; an estimate (+-15%), not a guarantee")
    for item in plan.host_items:
        lines.append(f"{'host' if item.phase == 'host' else 'host ' + item.phase:<8} {item.name:<52} "
                     f"{_gib(item.bytes)}  {item.note}")
    if plan.host_items:
        lines.append(f"{'':<8} {'host RAM needed on the machine (max of load, training)':<52} {_gib(plan.host_bytes)}")
    lines += [f"note: {note}" for note in plan.notes]
    if plan.suggestions:
        lines.append("to make it fit (cheapest first):")
        for number, sug in enumerate(plan.suggestions, 1):
            mark = "fits" if sug.fits else "still over"
            lines.append(f"  {number}. {sug.change}: {sug.peak_bytes / GIB:.1f} GiB alone ({mark}), "
                         f"{sug.cumulative_bytes / GIB:.1f} GiB with the above")
        first = next((i for i, sug in enumerate(plan.suggestions) if sug.cumulative_fits), None)
        if first is not None:
            sug = plan.suggestions[first]
            host = f", {sug.cumulative_host_bytes / GIB:.1f} GiB host RAM" if sug.cumulative_host_bytes else ""
            lines.append(f"a fitting setup: changes 1-{first + 1} together ({sug.cumulative_bytes / GIB:.1f} GiB per "
                         f"GPU{host})")
        else:
            lines.append("no fitting setup among these changes: more GPUs, or GPUs with more memory")
    return "\n".join(lines)


def plan_main(settings: Settings, *, world_size: int, gpu_memory: str | int = 24 * GIB) -> int:
    """`finetune plan`: print the table; exit code 0 when it fits, 1 when it does not."""
    plan = plan_memory(settings, world_size=world_size, gpu_memory_bytes=parse_size(gpu_memory, bare_unit=GIB, what="--gpu-memory"))
    print(format_plan(plan))
    return 0 if plan.fits else 1

