"""What `finetune serve` answers with: one base in memory, every run (and checkpoint) a named PEFT adapter on it.

The base is loaded once, exactly as `finetune chat` loads it (4-bit when the recipe says so, on the GPU when
there is one); each run's adapter is attached under its own name and switched per request, and `base` is the
model with every adapter off. Each model keeps its run's saved tokenizer (chat template), stop ids and stop
strings, so an answer here is formatted and ended exactly as `finetune chat` formats and ends it.
"""

from __future__ import annotations

import logging
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Iterator

from finetune.config.load import load_recipe
from finetune.config.settings import Settings
from finetune.errors import DataError, FinetuneError
from finetune.model.load import load_model, place_for_inference
from finetune.runs.layout import RECIPE, checkpoint_dirs
from finetune.runs.read import (load_run_tokenizer, read_adapter_config, resolve_adapter_dir, stop_strings,
                                stop_token_ids)

if TYPE_CHECKING:
    from transformers import PreTrainedModel, PreTrainedTokenizerBase

logger = logging.getLogger(__name__)

BASE = "base"

@dataclass(frozen=True)
class RunSource:
    """One run to serve: its settings (from a recipe, or the recipe.yml a run folder holds) and its folder."""

    settings: Settings
    run_dir: Path

    @property
    def name(self) -> str:
        return self.run_dir.name


@dataclass
class Served:
    """One model name of the API: the adapter to switch on (None: the base) and how its answers are made."""

    name: str
    adapter: str | None
    tokenizer: PreTrainedTokenizerBase
    stop_ids: list[int]
    stop_strings: list[str]
    sequence_len: int
    run_dir: Path | None
    created: int = field(default_factory=lambda: int(time.time()))


def resolve_sources(paths: list[str], overrides: list[str] | None = None) -> list[RunSource]:
    """Each argument is a recipe (its output_dir is the run) or a run folder (its saved recipe.yml); FinetuneError
    naming the argument otherwise."""
    sources = []
    for text in paths:
        path = Path(text).expanduser()
        if path.is_dir():
            recipe = path / RECIPE
            if not recipe.is_file():
                raise DataError(f"{path}: a run folder holds {RECIPE} (written by `finetune train`); "
                                    "pass the recipe instead")
            settings = load_recipe(recipe, overrides or []).settings
            sources.append(RunSource(settings, path))
        elif path.is_file():
            settings = load_recipe(path, overrides or []).settings
            sources.append(RunSource(settings, resolve_adapter_dir(settings)))
        else:
            raise DataError(f"{path}: no such recipe or run folder")
    names = [source.name for source in sources]
    if len(set(names)) != len(names):
        raise DataError(f"two runs share a folder name ({', '.join(names)}); their models would share a name")
    first = sources[0].settings
    for source in sources[1:]:
        s = source.settings
        if (s.base_model, s.load_in_4bit, s.load_in_8bit) != (first.base_model, first.load_in_4bit, first.load_in_8bit):
            raise DataError(f"{source.run_dir}: its base ({s.base_model}, 4-bit {s.load_in_4bit}) differs from "
                                f"{sources[0].run_dir}'s ({first.base_model}, 4-bit {first.load_in_4bit}); "
                                "serve runs of one base together")
    return sources


class ModelPool:
    """The loaded base with every adapter attached; `use(name)` switches to one for the duration of a batch.

    Only one batch runs at a time (the engine's single worker), so switching never races a generation.
    """

    def __init__(self) -> None:
        self.model: PreTrainedModel | None = None
        self.served: dict[str, Served] = {}
        self.ready = False
        self.error: str | None = None

    def load(self, sources: list[RunSource], *, checkpoints: bool = False,
             progress: Callable[[str], None] = logger.info) -> None:
        """Load the base once, then attach each run's adapter (and, with `checkpoints`, each checkpoint's)."""
        from peft import PeftModel

        first = sources[0]
        for source in sources:
            if source.settings.adapter is None:
                raise DataError(f"{source.run_dir}: a full fine-tune has no adapter to attach to a shared base; "
                                    "serve adapter runs (lora/qlora), or export the full model (`finetune export`)")
        adapters = [(source, source.name, source.run_dir) for source in sources]
        if checkpoints:
            adapters += [(source, f"{source.name}/{path.name}", path)
                         for source in sources for path in checkpoint_dirs(source.run_dir)]
        total = len(adapters) + 1
        progress(f"loading the base {first.settings.base_model} (1/{total})")
        tokenizer = load_run_tokenizer(first.settings, first.run_dir)
        base = place_for_inference(load_model(first.settings, tokenizer, training=False), quantized=first.settings.quantized)
        model = None
        for index, (source, name, path) in enumerate(adapters):
            progress(f"attaching {name} ({index + 2}/{total})")
            read_adapter_config(path)  # config and weights whole, else a DataError naming the file
            run_tokenizer = load_run_tokenizer(source.settings, path)
            if len(run_tokenizer) != len(tokenizer):
                raise DataError(f"{path}: its tokenizer has {len(run_tokenizer)} tokens, the base "
                                    f"{len(tokenizer)}; runs with new tokens cannot share one base")
            adapter = f"a{index}"  # peft adapter names become module keys: no dots or slashes
            if model is None:
                model = PeftModel.from_pretrained(base, path, adapter_name=adapter)
            else:
                model.load_adapter(path, adapter_name=adapter)
            self.served[name] = self._served(name, adapter, run_tokenizer, model, source.settings, path)
        model.eval()
        model.config.use_cache = True  # training switched the KV cache off
        base_entry = self._served(BASE, None, tokenizer, model, first.settings, first.run_dir)
        self.served = {BASE: base_entry, **self.served}
        self.model = model
        self.ready = True

    @staticmethod
    def _served(name: str, adapter: str | None, tokenizer: PreTrainedTokenizerBase, model: PreTrainedModel,
                settings: Settings, run_dir: Path) -> Served:
        if not isinstance(getattr(tokenizer, "chat_template", None), str) or not tokenizer.chat_template:
            raise FinetuneError(f"the tokenizer in {run_dir} has no chat template; set chat_template in the recipe")
        return Served(name=name, adapter=adapter, tokenizer=tokenizer,
                      stop_ids=stop_token_ids(tokenizer, model.generation_config, run_dir),
                      stop_strings=stop_strings(tokenizer, where=settings.where("chat_template")), sequence_len=settings.sequence_len, run_dir=run_dir)

    @contextmanager
    def use(self, name: str) -> Iterator[PreTrainedModel]:
        """The model with `name`'s adapter on (every adapter off for `base`)."""
        served = self.served[name]
        if served.adapter is None:
            with self.model.disable_adapter():
                yield self.model
        else:
            self.model.set_adapter(served.adapter)
            yield self.model
