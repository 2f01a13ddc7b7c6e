"""DeepSpeed config resolution, shared by `finetune plan` and `finetune train`.

A recipe's `deepspeed:` path is used as is when it exists; a missing path whose file name is a bundled
config resolves to ours (with a notice); anything else is a RecipeError at the recipe line. What ZeRO-3 cannot
train (an 8-bit base) is refused here, before any process starts (see finetune.train.zero3).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import finetune
from finetune.config.settings import Settings
from finetune.errors import RecipeError

BUNDLED_DEEPSPEED = ("zero1.json", "zero2.json", "zero2_offload.json", "zero3.json", "zero3_offload.json")


def bundled_deepspeed_dir() -> Path:
    """The repository's `deepspeed_configs/` (editable install), else `<prefix>/share/finetune/deepspeed_configs`."""
    candidates = [
        Path(finetune.__file__).resolve().parents[2] / "deepspeed_configs",
        Path(sys.prefix) / "share" / "finetune" / "deepspeed_configs",
    ]
    for candidate in candidates:
        if candidate.is_dir():
            return candidate
    return candidates[0]


def resolve_deepspeed(settings: Settings, *, bundled: Path | None = None) -> tuple[Path | None, str | None]:
    """The DeepSpeed JSON to use and a notice when a bundled config stands in for a missing path.

    An existing path is used as is. A missing path whose file name is a bundled config (the Axolotl
    seed's `/path/to/deepspeed_configs/zero2.json`) resolves to ours, with a notice. Anything else is a
    RecipeError pointing at the recipe line.
    """
    if settings.deepspeed is None:
        return None, None
    given = Path(settings.deepspeed).expanduser()
    where = settings.where("deepspeed")
    if given.is_file():
        return _supported(given.resolve(), settings), None
    if given.exists():
        raise RecipeError(f"{where}: deepspeed `{settings.deepspeed}` is not a file; expected a DeepSpeed JSON config")
    directory = bundled or bundled_deepspeed_dir()
    if given.name in BUNDLED_DEEPSPEED and (directory / given.name).is_file():
        path = _supported((directory / given.name).resolve(), settings)
        return path, f"{where}: deepspeed `{settings.deepspeed}` does not exist; using the bundled {path}"
    known = ", ".join(BUNDLED_DEEPSPEED)
    raise RecipeError(f"{where}: deepspeed `{settings.deepspeed}`: no such file (bundled configs: {known})")


def zero_stage(path: Path | None) -> int:
    """The ZeRO stage of a resolved DeepSpeed config (0 without one)."""

    if path is None:
        return 0
    config = json.loads(Path(path).read_text(encoding="utf-8"))
    return int((config.get("zero_optimization") or {}).get("stage", 0)) if isinstance(config, dict) else 0


def _supported(path: Path, settings: Settings) -> Path:
    """Reject configs the trainer cannot honour, before any process starts."""

    where = settings.where("deepspeed")
    try:
        config = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise RecipeError(f"{where}: deepspeed `{path}` is not valid JSON ({exc})") from None
    stage = config.get("zero_optimization", {}).get("stage", 0) if isinstance(config, dict) else 0
    if stage == 3 and settings.load_in_8bit:
        raise RecipeError(
            f"{settings.where('load_in_8bit')}: ZeRO-3 ({path.name}) cannot partition an 8-bit base (bitsandbytes "
            "keeps its scales on the parameter object); use load_in_4bit: true, or zero2.json"
        )
    if stage == 3 and settings.rl is not None:
        raise RecipeError(
            f"{settings.where('rl')}: rl: {settings.rl} runs under ZeRO-2 or one process; ZeRO-3 ({path.name}) is "
            "not supported for preference tuning yet (its partitioned loading and reference pass are untested)"
        )
    return path
