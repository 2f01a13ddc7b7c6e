"""`finetune evaluate` on a preference recipe (`rl:`): how often each model prefers the chosen reply.

For each validation pair (or each pair of `--dataset FILE`) and each model, the log-prob margin is
log p(chosen | prompt) - log p(rejected | prompt), summed over the reply tokens exactly as training
scores them (finetune.model.loss.sequence_log_probs). Reported per model:

- preference accuracy: the share of pairs with a positive margin;
- mean log-prob margin;
- for the tuned model, DPO's implicit reward against the reference, rl_beta x (its margin - the
  reference's margin): reward accuracy (share above 0) and mean reward margin, the numbers DPOTrainer
  logs as rewards/accuracies and rewards/margins. The reference's own reward margin is 0 by definition.

The reference is the model the run started from (finetune.config.describe.reference_model): the base
(the adapter disabled), or base + the `lora_model_dir` adapter when the run continued an SFT adapter.
"""

from __future__ import annotations

import json
import logging
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Sequence

import numpy as np

from finetune.config.settings import Settings
from finetune.data.build import prepare_data
from finetune.data.collate import pad_token_id
from finetune.errors import FinetuneError
from finetune.infer.common import dataset_settings, trained_dir
from finetune.model.load import load_model, place_for_inference
from finetune.model.loss import sequence_log_probs
from finetune.model.tokenizer import load_tokenizer

if TYPE_CHECKING:
    from datasets import Dataset
    from transformers import PreTrainedTokenizerBase

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class PairResult:
    model: str
    preference_accuracy: float
    mean_logp_margin: float
    reward_accuracy: float | None
    mean_reward_margin: float | None
    pairs: int


def evaluate_pairs_main(settings: Settings, *, adapter_dir: Path | None, dataset: str | None, output: Path | None,
                        batch_size: int | None, progress: bool = True) -> int:
    """Score the reference and the tuned model on the pairs; print a table and write JSON."""
    run_dir = trained_dir(settings, adapter_dir)
    tokenizer = load_tokenizer(settings)
    prepared = prepare_data(dataset_settings(settings, dataset) if dataset else settings, tokenizer,
                            progress=progress)
    rows = prepared.train if dataset else prepared.eval
    if rows is None or len(rows) == 0:
        raise FinetuneError(
            f"{settings.where('val_set_size')}: no validation pairs to evaluate; set val_set_size or pass --dataset FILE"
        )
    margins = pair_margins(settings, tokenizer, rows, run_dir=run_dir,
                           batch_size=batch_size or settings.eval_batch)
    results = summarize_pairs(margins, beta=settings.rl_beta)
    print(format_pair_results(results))
    output = Path(output or Path(settings.output_dir) / "eval_results.json")
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text(json.dumps([asdict(r) for r in results], indent=2) + "\n", encoding="utf-8")
    print(f"wrote {output}")
    return 0


def pair_margins(settings: Settings, tokenizer: PreTrainedTokenizerBase, rows: Dataset, *, run_dir: Path, batch_size: int
                 ) -> dict[str, np.ndarray]:
    """{"reference": [pairs, 2], "fine-tuned": [pairs, 2]} summed reply log-probs (chosen, rejected)."""
    pad_id = pad_token_id(tokenizer)
    model = place_for_inference(load_model(settings, tokenizer, training=False), quantized=settings.quantized).eval()

    def score(m: Any, fresh: bool = False) -> np.ndarray:
        return sequence_log_probs(m, rows, pad_id=pad_id, batch_size=batch_size, fresh_adapter=fresh)

    if settings.adapter is None:  # full fine-tune: the base, then the trained model in its place
        from transformers import AutoModelForCausalLM

        reference, dtype = score(model), model.dtype
        del model
        tuned = place_for_inference(AutoModelForCausalLM.from_pretrained(run_dir, dtype=dtype), quantized=settings.quantized).eval()
        return {"reference": reference, "fine-tuned": score(tuned)}
    from peft import PeftModel

    model = PeftModel.from_pretrained(model, str(run_dir)).eval()
    if settings.lora_model_dir:  # the SFT adapter the run continued from, as a second (small) adapter
        model.load_adapter(str(Path(settings.lora_model_dir).expanduser()), adapter_name="reference")
        model.set_adapter("reference")
        reference = score(model)
        model.set_adapter("default")
    else:
        reference = score(model, fresh=True)
    return {"reference": reference, "fine-tuned": score(model)}


def summarize_pairs(margins: dict[str, np.ndarray], *, beta: float) -> list[PairResult]:
    """The table rows from per-pair log-probs (pure)."""
    reference = margins["reference"][:, 0] - margins["reference"][:, 1]
    out = []
    for name, logps in margins.items():
        margin = logps[:, 0] - logps[:, 1]
        reward = beta * (margin - reference) if name != "reference" else None
        out.append(PairResult(
            model=name,
            preference_accuracy=float(np.mean(margin > 0)),
            mean_logp_margin=float(np.mean(margin)),
            reward_accuracy=None if reward is None else float(np.mean(reward > 0)),
            mean_reward_margin=None if reward is None else float(np.mean(reward)),
            pairs=len(margin),
        ))
    return out


def format_pair_results(results: Sequence[PairResult]) -> str:
    lines = [f"{'model':<12} {'pref. acc.':>10} {'logp margin':>12} {'reward acc.':>12} {'reward margin':>14} "
             f"{'pairs':>6}"]
    for r in results:
        acc = "-" if r.reward_accuracy is None else f"{r.reward_accuracy:.1%}"
        margin = "-" if r.mean_reward_margin is None else f"{r.mean_reward_margin:.4f}"
        lines.append(f"{r.model:<12} {r.preference_accuracy:>10.1%} {r.mean_logp_margin:>12.4f} {acc:>12} "
                     f"{margin:>14} {r.pairs:>6}")
    return "\n".join(lines)
