"""`finetune preprocess`: load the tokenizer, build (or reuse) the prepared-data cache, print its summary."""

from __future__ import annotations

from typing import TYPE_CHECKING

from finetune.config.settings import Settings

if TYPE_CHECKING:
    from finetune.data.build import PreparedData


def preprocess(settings: Settings, *, force: bool = False, show: int = 0, progress: bool = True) -> "PreparedData":
    """Tokenize, mask and pack the recipe's data into its cache (reused when it matches); print a summary.

    Prints the cache path, whether it was a cache hit, the summary table, and with `show`
    up to two example near-duplicate pairs (kept vs removed) and `show` prepared train rows
    with trained tokens marked.
    """
    from finetune.data.build import prepare_data
    from finetune.data.readers import check_dataset_paths
    from finetune.model.tokenizer import load_tokenizer

    check_dataset_paths(settings.datasets)
    tokenizer = load_tokenizer(settings)
    prepared = prepare_data(settings, tokenizer, force=force, progress=progress)
    state = "reused (cache hit)" if prepared.from_cache else "built"
    print(f"prepared data {state}: {prepared.path}")
    print(prepared.summary.format_table())
    if settings.rl is not None and settings.precompute_ref_log_probs:
        from finetune.train.reference import precompute_for_preprocess

        print(f"reference log-probs: {precompute_for_preprocess(settings, tokenizer, prepared, progress=progress)}")
    if show:
        from finetune.data.show import render_rows

        if prepared.summary.near_duplicate_examples:
            print()
            print(prepared.summary.format_near_duplicates())
        print()
        if settings.rl is not None:
            from finetune.data.show import render_pairs

            print(render_pairs(prepared.train, tokenizer, show))
        else:
            print(render_rows(prepared.train, tokenizer, show))
    return prepared
