"""`finetune report recipe.yml`: every checkpoint measured on your held-out chats.

For the base, each selected checkpoint and the final adapter (finetune.report.models), on the held-out
conversations (finetune.report.heldout):
- held-out loss: the trained-token loss on the held-out assistant turns, as `finetune evaluate` computes it
  (summed over the split, then divided by the trained-token count);
- generated replies to each held-out context (finetune.infer.generate; cached, finetune.report.cache);
- style features and the style distance to your real replies (finetune.report.style);
- replay rate (finetune.report.replay) and leaked strings (finetune.report.leaks);
- the recommended model (finetune.report.recommend), printed and at the top of the page.

Writes `report.json` and a self-contained `index.html` (finetune.report.html) into `output_dir/report/`
(or `--out DIR`).
"""

from __future__ import annotations

import json
import logging
import sys
import time
from pathlib import Path
from typing import Any, Sequence

from finetune.config.settings import Settings
from finetune.data.collate import make_collator
from finetune.errors import FinetuneError
from finetune.infer.common import trained_token_loss
from finetune.infer.generate import Generated, GenerationSettings, generate
from finetune.model.tokenizer import load_tokenizer
from finetune.report import html, style
from finetune.report.cache import GenerationCache, prompt_key
from finetune.report.heldout import HeldOut, Training, choose
from finetune.report.leaks import leaked
from finetune.report.models import Target, loaded_models, select_targets, target_hash
from finetune.report.recommend import Scored, recommend
from finetune.report.replay import replays
from finetune.runs.atomic import write_text
from finetune.runs.layout import REPORT_DIR
from finetune.runs.read import load_run_tokenizer, stop_strings, stop_token_ids

logger = logging.getLogger(__name__)



def report_main(
    settings: Settings,
    *,
    adapter_dir: str | Path | None = None,
    checkpoints: str = "all",
    max_conversations: int = 40,
    out: str | Path | None = None,
    dataset: str | None = None,
    generation: GenerationSettings = GenerationSettings(),
    progress: bool = True,
    stdout: Any = None,
) -> int:
    """Score every target, write report.json and index.html, print the recommendation; the exit code."""
    printer = stdout or sys.stdout
    generation.check()
    if max_conversations <= 0:
        raise FinetuneError(f"--max-conversations {max_conversations}: must be positive")
    run_dir = Path(adapter_dir if adapter_dir is not None else settings.output_dir).expanduser()
    targets = select_targets(settings, run_dir, checkpoints)
    out_dir = Path(out) if out is not None else run_dir / REPORT_DIR
    tokenizer = load_tokenizer(settings)
    run_tokenizer = load_run_tokenizer(settings, run_dir)
    strings = stop_strings(run_tokenizer)
    held, training = choose(settings, tokenizer, dataset=dataset, max_conversations=max_conversations,
                            stop_strings=strings, progress=progress)
    if not held.samples:
        raise FinetuneError("the held-out conversations hold no reply of yours to compare with")
    real = [s.real for s in held.samples]
    prompts = [s.context for s in held.samples]
    models = []
    replies_by_model: dict[str, list[str]] = {}
    with loaded_models(settings, tokenizer, targets) as use:
        for target in targets:
            with use(target) as model:
                stop = stop_token_ids(run_tokenizer, model.generation_config, run_dir)
                loss = heldout_loss(model, settings, tokenizer, held.loss_rows, target.name, progress)
                replies = generate_cached(model, run_tokenizer, held, generation, stop, strings,
                                          GenerationCache(out_dir / "generations", target_hash(settings, target)),
                                          target.name, progress)
            replies_by_model[target.name] = replies
            models.append(score_model(target, loss, real, replies, prompts, training))
    chosen = recommend([Scored(m["name"], m["step"], m["heldout_loss"], m["style_distance"], m["replay_rate"],
                               sum(leak["count"] for leak in m["leaked"])) for m in models])
    report = {
        "heldout": {"how": held.how, "conversations": held.conversations, "replies": len(held.samples),
                    "training_conversations": training.conversations,
                    "generation": {"temperature": generation.temperature, "top_p": generation.top_p,
                                   "max_new_tokens": generation.max_new_tokens, "stop_strings": strings}},
        "real": {"features": style.features(real)},
        "models": models,
        "recommended": chosen,
        "samples": [{"conversation": s.conversation, "context": s.context, "real": s.real,
                     "replies": {name: replies[i] for name, replies in replies_by_model.items()}}
                    for i, s in enumerate(held.samples)],
    }
    write_text(out_dir / "report.json", json.dumps(report, indent=2, ensure_ascii=False) + "\n")
    write_text(out_dir / "index.html", html.render(report))
    print(format_table(models), file=printer)
    print(f"recommended: {chosen['name']} ({chosen['reason']})", file=printer)
    print(f"wrote {out_dir / 'report.json'} and {out_dir / 'index.html'}", file=printer)
    return 0


def heldout_loss(model: Any, settings: Settings, tokenizer: Any, rows: Any, name: str, progress: bool) -> float:
    """Mean NLL per trained token over `rows`, summed over all rows first (`finetune evaluate`'s figure, by the
    same loop)."""
    nll, count = trained_token_loss(model, rows, make_collator(settings, tokenizer), settings.eval_batch,
                                    f"held-out loss of {name}", progress)
    return nll / max(count, 1)


def generate_cached(model: Any, tokenizer: Any, held: HeldOut, generation: GenerationSettings, stop: Sequence[int],
                    strings: Sequence[str], cache: GenerationCache, name: str, progress: bool) -> list[str]:
    """Replies to every held-out prompt: from the cache, else generated in batches (and cached)."""
    fingerprint = {"temperature": generation.temperature, "top_p": generation.top_p,
                   "max_new_tokens": generation.max_new_tokens, "stop_ids": sorted(stop), "stop_strings": list(strings)}
    keys = [prompt_key(s.prompt_ids, fingerprint) for s in held.samples]
    replies: list[Generated | None] = [cache.get(k) for k in keys]
    todo = [i for i, reply in enumerate(replies) if reply is None]
    cached = len(keys) - len(todo)
    started, tokens = time.perf_counter(), 0
    done = 0

    def show(indices: list[int], batch: list[Generated]) -> None:
        nonlocal done, tokens
        done += len(indices)
        tokens += sum(r.new_tokens for r in batch)
        cache.put({keys[todo[i]]: reply for i, reply in zip(indices, batch)})
        if progress:
            rate = tokens / max(time.perf_counter() - started, 1e-9)
            print(f"\rgenerating {name}: {cached + done}/{len(keys)} replies ({cached} cached, {rate:.0f} tokens/s)",
                  end="", file=sys.stderr, flush=True)

    if todo:
        new = generate(model, tokenizer, [held.samples[i].prompt_ids for i in todo], generation, stop_ids=stop,
                       stop_strings=strings, on_batch=show)
        for i, reply in zip(todo, new):
            replies[i] = reply
        if progress:
            print(file=sys.stderr)
    elif progress:
        print(f"generating {name}: all {len(keys)} replies cached", file=sys.stderr)
    return [reply.text if reply is not None else "" for reply in replies]


def score_model(target: Target, loss: float, real: list[str], replies: list[str], prompts: list[str],
                training: Training) -> dict[str, Any]:
    """One entry of report.json's `models`."""
    parts = style.distances(real, replies)
    repeated = replays(training.replies, replies)
    return {
        "name": target.name,
        "step": target.step,
        "heldout_loss": loss,
        "style_distance": style.style_distance(parts),
        "style": parts,
        "replay_rate": len(repeated) / max(len(replies), 1),
        "replays": [{"reply": replies[i], "training_reply": hit} for i, hit in repeated],
        "leaked": leaked(training.secrets, replies, prompts),
        "features": style.features(replies),
    }


def format_table(models: list[dict[str, Any]]) -> str:
    lines = [f"{'model':<16} {'step':>6} {'held-out loss':>14} {'style dist.':>12} {'replay':>7} {'leaked':>7}"]
    for m in models:
        leaks = sum(leak["count"] for leak in m["leaked"])
        lines.append(f"{m['name']:<16} {m['step']:>6} {m['heldout_loss']:>14.4f} {m['style_distance']:>12.3f} "
                     f"{m['replay_rate']:>7.0%} {leaks:>7}")
    return "\n".join(lines)
