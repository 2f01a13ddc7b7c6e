"""Which model to use: the documented rule.

The trained models (checkpoints and the final adapter) are taken in step order. A trained model is
ELIGIBLE when neither its replay rate nor its number of leaked strings (the sum of the counts) rises above
those of the last eligible model before it; the first trained model is always eligible. (A model that
parrots or leaks more than the last good one has started memorising, and so has a later one that
merely keeps that level; the base is not the yardstick, since any model trained on your chats repeats
some of them.)

Recommended: the eligible model with the lowest held-out loss; a tie goes to the lower style distance,
then to the earlier step. With no trained model in the report, the base is recommended. The reason
names the rule's numbers and which lower-loss models it passed over.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence


@dataclass(frozen=True)
class Scored:
    """What the rule reads of one model."""

    name: str
    step: int
    heldout_loss: float
    style_distance: float
    replay_rate: float
    leaks: int


def recommend(models: Sequence[Scored]) -> dict[str, str]:
    """{"name", "reason"} by the rule in the module doc."""
    trained = sorted((m for m in models if m.name != "base"), key=lambda m: m.step)
    if not trained:
        base = next((m for m in models if m.name == "base"), None)
        if base is None:
            return {"name": "", "reason": "no model was scored"}
        return {"name": "base", "reason": "no trained checkpoint or adapter was found; only the base was scored"}
    eligible: list[Scored] = []
    passed: list[tuple[Scored, str]] = []
    for model in trained:
        last = eligible[-1] if eligible else None
        if last is not None and model.replay_rate > last.replay_rate:
            passed.append((model, f"{model.name} replays more than {last.name} "
                                  f"({model.replay_rate:.0%} > {last.replay_rate:.0%})"))
        elif last is not None and model.leaks > last.leaks:
            passed.append((model, f"{model.name} leaks more than {last.name} ({model.leaks} > {last.leaks})"))
        else:
            eligible.append(model)
    best = min(eligible, key=lambda m: (m.heldout_loss, m.style_distance, m.step))
    reason = (f"lowest held-out loss ({best.heldout_loss:.4f}) among the {len(eligible)} trained model(s) whose "
              f"replay rate and leaks do not rise above the last such one's; style distance {best.style_distance:.3f}, "
              f"replay rate {best.replay_rate:.0%}, {best.leaks} leaked string(s)")
    lower = [why for model, why in passed if model.heldout_loss < best.heldout_loss]
    if lower:
        reason += "; passed over despite a lower loss: " + "; ".join(lower)
    return {"name": best.name, "reason": reason}
