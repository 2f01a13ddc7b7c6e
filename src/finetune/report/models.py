"""The models a report scores, loaded once per base.

Targets: the base, the selected checkpoint directories of the run (`--checkpoints all`, `last`, or
`STEP,STEP,...`) and the final adapter (or model) in the run directory itself.

Adapter runs (LoRA, DoRA, QLoRA): the base is loaded ONCE, as training loaded it (4-bit where the recipe
says so), and every checkpoint is attached to it as a named PEFT adapter (`load_adapter`); scoring a
model is `set_adapter(name)`, the base is scored with the adapters disabled. Full fine-tunes: each
checkpoint is a whole model, loaded in turn (the previous one freed first), as `evaluate` loads it.

Each target has a weights fingerprint (`weights_hash`) that keys the generation cache: the sha256 of its
adapter/model weights files, and for the base the sha256 of config.json and, per weights file, its name,
size and first and last MiB (hashing a whole 16 GB base on every run would cost more than it saves).
"""

from __future__ import annotations

import hashlib
import logging
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

from finetune.config.settings import Settings
from finetune.errors import FinetuneError
from finetune.model.load import load_model, place_for_inference
from finetune.runs.layout import ADAPTER_CONFIG, MODEL_CONFIG, RUN_SUMMARY, checkpoint_dirs, checkpoint_name, checkpoint_step
from finetune.runs.read import adapter_kind, base_model_dir, read_json

logger = logging.getLogger(__name__)

MIB = 1 << 20


@dataclass(frozen=True)
class Target:
    name: str  # "base", a checkpoint directory's name, "final"
    step: int
    path: Path | None  # None for the base


def select_targets(settings: Settings, run_dir: Path, checkpoints: str) -> list[Target]:
    """The base, the selected checkpoints and the final adapter/model, in step order."""
    full = settings.adapter is None
    marker = MODEL_CONFIG if full else ADAPTER_CONFIG
    found = [p for p in checkpoint_dirs(run_dir) if (p / marker).is_file()]
    if checkpoints == "all":
        chosen = found
    elif checkpoints == "last":
        chosen = found[-1:]
    else:
        try:
            steps = [int(s) for s in checkpoints.split(",") if s.strip()]
        except ValueError:
            raise FinetuneError(f"--checkpoints {checkpoints}: expected all, last, or steps like 100,200") from None
        by_step = {checkpoint_step(p.name): p for p in found}
        missing = [s for s in steps if s not in by_step]
        if missing:
            have = ", ".join(str(s) for s in by_step) or "none"
            raise FinetuneError(f"--checkpoints: no {checkpoint_name(missing[0])} in {run_dir} (steps present: {have})")
        chosen = [by_step[s] for s in sorted(set(steps))]
    targets = [Target("base", 0, None)]
    targets += [Target(p.name, checkpoint_step(p.name), p) for p in chosen]
    if (run_dir / marker).is_file():
        adapter_kind(run_dir)  # whole, else a DataError naming the file
        targets.append(Target("final", _final_step(run_dir, found), run_dir))
    if len(targets) == 1:
        raise FinetuneError(f"no trained adapter or checkpoint in {run_dir}; run `finetune train` first or pass --adapter DIR")
    return targets


def _final_step(run_dir: Path, checkpoints: Sequence[Path]) -> int:
    summary = run_dir / RUN_SUMMARY
    if summary.is_file():
        steps = read_json(summary).get("steps")
        if isinstance(steps, int):
            return steps
    return max((checkpoint_step(p.name) for p in checkpoints), default=0) + 1


def _file_hash(path: Path, partial: bool) -> str:
    digest = hashlib.sha256()
    size = path.stat().st_size
    digest.update(f"{path.name}:{size}".encode())
    with path.open("rb") as handle:
        if partial and size > 2 * MIB:
            digest.update(handle.read(MIB))
            handle.seek(size - MIB)
            digest.update(handle.read(MIB))
        else:
            for block in iter(lambda: handle.read(16 * MIB), b""):
                digest.update(block)
    return digest.hexdigest()


def weights_hash(directory: Path, *, partial: bool = False) -> str:
    """The fingerprint of a directory's weights (module doc)."""
    digest = hashlib.sha256()
    files = sorted([*directory.glob("*.safetensors"), *directory.glob("*.bin"), *directory.glob("config.json"),
                    *directory.glob("adapter_config.json")])
    for path in files:
        digest.update(_file_hash(path, partial and path.suffix != ".json").encode())
    return digest.hexdigest()


def target_hash(settings: Settings, target: Target) -> str:
    if target.path is None:
        return weights_hash(base_model_dir(settings), partial=True)
    return weights_hash(target.path)


@contextmanager
def loaded_models(settings: Settings, tokenizer: Any, targets: Sequence[Target]) -> Iterator[Callable[[Target], Any]]:
    """`use(target)`: a context manager giving the model as that target (module doc). Targets come in order,
    the base first."""
    base = place_for_inference(load_model(settings, tokenizer, training=False), quantized=settings.quantized).eval()
    base.config.use_cache = True  # loading switched the KV cache off (a training setting)
    if settings.adapter is None:
        holder = {"model": base}

        @contextmanager
        def use_full(target: Target) -> Iterator[Any]:
            from transformers import AutoModelForCausalLM

            if target.path is not None:
                dtype = holder["model"].dtype
                holder.clear()  # free the previous model before loading the next
                model = place_for_inference(AutoModelForCausalLM.from_pretrained(target.path, dtype=dtype), quantized=settings.quantized)
                model.config.use_cache = True
                holder["model"] = model.eval()
            yield holder["model"]

        yield use_full
        return
    from peft import PeftModel

    adapters = [t for t in targets if t.path is not None]
    model = PeftModel.from_pretrained(base, str(adapters[0].path), adapter_name=adapters[0].name)
    for target in adapters[1:]:
        model.load_adapter(str(target.path), adapter_name=target.name)
    model.eval()

    @contextmanager
    def use_adapter(target: Target) -> Iterator[Any]:
        if target.path is None:
            with model.disable_adapter():
                yield model
        else:
            model.set_adapter(target.name)
            yield model

    yield use_adapter
