"""The model a run starts from: the base loaded for training with the recipe's adapter, seeded first.

`finetune.train.run.setup_model` adds what DeepSpeed ZeRO-3 needs around it; `finetune preprocess` loads it to
compute the reference log-probs of preference pairs (finetune.train.reference) without importing the trainers.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from finetune.config.settings import Settings
from finetune.model.adapters import apply_adapter
from finetune.model.load import Precision, load_model

if TYPE_CHECKING:
    from peft import PeftModel
    from transformers import PreTrainedModel, PreTrainedTokenizerBase


def trainable_model(settings: Settings, tokenizer: PreTrainedTokenizerBase, *, precision: Precision,
                    local_rank: int = 0) -> PeftModel | PreTrainedModel:
    """The base model (finetune.model.load) with the recipe's adapter, new or continued from `lora_model_dir`
    (finetune.model.adapters); every random number generator is seeded with `seed` first: a new adapter's
    initialisation is random."""
    from transformers import set_seed

    set_seed(settings.seed)
    model = load_model(settings, tokenizer, precision=precision, local_rank=local_rank)
    if settings.adapter:
        model = apply_adapter(settings, model)
    return model
