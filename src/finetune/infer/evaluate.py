"""`finetune evaluate`: eval loss and perplexity of the base and the fine-tuned model.

The loss is the mean negative log-likelihood per trained token (the same tokens and the same
masking as training), summed over the whole split before dividing — not a mean of batch means.
"""

from __future__ import annotations

import json
import logging
import math
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Sequence

from finetune.config.settings import Settings
from finetune.data.build import prepare_data
from finetune.data.collate import Collator, make_collator
from finetune.errors import FinetuneError
from finetune.infer.common import dataset_settings, trained_dir, trained_token_loss
from finetune.infer.evaluate_pairs import evaluate_pairs_main
from finetune.model.load import load_model, place_for_inference
from finetune.model.tokenizer import load_tokenizer

if TYPE_CHECKING:
    from datasets import Dataset
    from transformers import PreTrainedModel, PreTrainedTokenizerBase

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class EvalResult:
    model: str
    loss: float
    perplexity: float
    trained_tokens: int
    rows: int
    seconds: float


def evaluate_main(
    settings: Settings,
    *,
    adapter_dir: Path | None = None,
    dataset: str | None = None,
    output: Path | None = None,
    base: bool = True,
    batch_size: int | None = None,
    progress: bool = True,
) -> int:
    """Evaluate and print a table; write the results as JSON (default `output_dir/eval_results.json`)."""
    if settings.rl is not None:  # preference pairs: accuracy and reward margins (the reference is always scored)
        return evaluate_pairs_main(settings, adapter_dir=adapter_dir, dataset=dataset, output=output,
                                   batch_size=batch_size, progress=progress)
    adapter_dir = trained_dir(settings, adapter_dir)
    tokenizer = load_tokenizer(settings)
    rows_settings = dataset_settings(settings, dataset) if dataset else settings
    prepared = prepare_data(rows_settings, tokenizer, progress=progress)
    rows = prepared.train if dataset else prepared.eval
    if rows is None or len(rows) == 0:
        raise FinetuneError(
            f"{settings.where('val_set_size')}: no validation split to evaluate; set val_set_size or pass --dataset FILE"
        )
    results = evaluate_rows(settings, tokenizer, rows, adapter_dir=adapter_dir, base=base,
                            batch_size=batch_size or settings.eval_batch,
                            progress=progress)
    print(format_results(results))
    output = Path(output or Path(settings.output_dir) / "eval_results.json")
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text(json.dumps([asdict(r) for r in results], indent=2) + "\n", encoding="utf-8")
    print(f"wrote {output}")
    return 0


def evaluate_rows(
    settings: Settings,
    tokenizer: PreTrainedTokenizerBase,
    rows: Dataset,
    *,
    adapter_dir: Path,
    base: bool,
    batch_size: int,
    progress: bool = False,
) -> list[EvalResult]:
    """Fine-tuned (and optionally base) model results on prepared `rows`; `adapter_dir` as `trained_dir` gives it."""
    collate = make_collator(settings, tokenizer)
    model = place_for_inference(load_model(settings, tokenizer, training=False), quantized=settings.quantized).eval()
    results = []
    if not base:
        logger.info("base comparison skipped (--no-base): only the fine-tuned model is scored")
    if settings.adapter:
        from peft import PeftModel

        model = PeftModel.from_pretrained(model, str(adapter_dir)).eval()
        if base:
            with model.disable_adapter():
                results.append(_score(model, rows, collate, batch_size, "base", progress))
    else:  # full fine-tune: score the base first, then replace it by the trained model
        from transformers import AutoModelForCausalLM

        if base:
            results.append(_score(model, rows, collate, batch_size, "base", progress))
        dtype = model.dtype
        del model
        model = place_for_inference(AutoModelForCausalLM.from_pretrained(adapter_dir, dtype=dtype), quantized=settings.quantized).eval()
    results.append(_score(model, rows, collate, batch_size, "fine-tuned", progress))
    return results


def _score(model: PreTrainedModel, rows: Dataset, collate: Collator, batch_size: int, name: str, progress: bool) -> EvalResult:
    start = time.perf_counter()
    total_nll, total_count = trained_token_loss(model, rows, collate, batch_size, f"evaluating {name}", progress)
    loss = total_nll / max(total_count, 1)
    return EvalResult(name, loss, math.exp(min(loss, 700.0)), total_count, len(rows), time.perf_counter() - start)


def format_results(results: Sequence[EvalResult]) -> str:
    lines = [f"{'model':<12} {'eval loss':>10} {'perplexity':>12} {'trained tokens':>15} {'rows':>6}"]
    for r in results:
        lines.append(f"{r.model:<12} {r.loss:>10.4f} {r.perplexity:>12.2f} {r.trained_tokens:>15,} {r.rows:>6}")
    return "\n".join(lines)
