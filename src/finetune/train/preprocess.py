"""`finetune preprocess`: load the tokenizer, build (or reuse) the prepared-data cache, print its summary."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from finetune.config.settings import Settings
from finetune.data.build import PreparedData, prepare_data
from finetune.data.collate import pad_token_id
from finetune.data.readers import check_dataset_paths
from finetune.data.show import render_pairs, render_rows
from finetune.model.load import resolve_precision
from finetune.model.tokenizer import load_tokenizer
from finetune.model.trainable import trainable_model
from finetune.train.reference import cached_reference, reference_dir, with_reference

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase


def preprocess(settings: Settings, *, force: bool = False, show: int = 0, progress: bool = True) -> PreparedData:
    """Tokenize, mask and pack the recipe's data into its cache (reused when it matches); print a summary.

    Prints the cache path, whether it was a cache hit, the summary table, and with `show`
    up to two example near-duplicate pairs (kept vs removed) and `show` prepared train rows
    with trained tokens marked.
    """
    check_dataset_paths(settings.datasets)
    tokenizer = load_tokenizer(settings)
    prepared = prepare_data(settings, tokenizer, force=force, progress=progress)
    state = "reused (cache hit)" if prepared.from_cache else "built"
    print(f"prepared data {state}: {prepared.path}")
    print(prepared.summary.format_table())
    render = render_rows
    if settings.rl is not None:  # preference pairs: shown as pairs, with their reference log-probs prepared too
        render = render_pairs
        if settings.precompute_ref_log_probs:
            print(f"reference log-probs: {precompute_reference(settings, tokenizer, prepared, progress=progress)}")
    if show:
        if prepared.summary.near_duplicate_examples:
            print()
            print(prepared.summary.format_near_duplicates())
        print()
        print(render(prepared.train, tokenizer, show))
    return prepared


def precompute_reference(settings: Settings, tokenizer: PreTrainedTokenizerBase, prepared: PreparedData, *,
                         progress: bool = True) -> Path:
    """Load the model as training starts from (finetune.model.trainable) and fill the reference cache
    (finetune.train.reference); a no-op read when it is already there. Returns the cache directory."""
    precision = resolve_precision(settings)
    directory = reference_dir(settings, prepared, precision)
    if cached_reference(directory, prepared):
        return directory  # no model load
    model = trainable_model(settings, tokenizer, precision=precision)
    *_, directory = with_reference(settings, prepared, model, pad_id=pad_token_id(tokenizer), precision=precision,
                                   progress=progress)
    return directory
