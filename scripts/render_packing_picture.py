"""Draw one packed, masked row as a picture: docs/img/packed_row.png.

Two short conversations go through the real pipeline pieces (llama3 template, one-pass masking,
packing) with Meta's Llama 3 tokenizer; every token is a box: green = trained, grey = masked;
a new colour band marks each sample, with its position_ids restarting at 0.
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path


from finetune.data.pack import Ragged, pack
from finetune.data.templates import resolve_template
from finetune.data.tokenize import IGNORE_INDEX, encode_conversations
from finetune.testing.tiny_llama import build_tiny_llama

CONVERSATIONS = [
    [
        {"role": "system", "content": "You are Marco."},
        {"role": "user", "content": "how are you?"},
        {"role": "assistant", "content": "all good, coffee first."},
        {"role": "user", "content": "weekend?"},
        {"role": "assistant", "content": "bike on saturday."},
    ],
    [
        {"role": "user", "content": "favourite food?"},
        {"role": "assistant", "content": "pizza, obviously."},
    ],
]


def main(out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from transformers import AutoTokenizer

    with tempfile.TemporaryDirectory() as tmp:
        tokenizer = AutoTokenizer.from_pretrained(build_tiny_llama(Path(tmp) / "tiny"))
    template = resolve_template("llama3", None, tokenizer)
    pairs = encode_conversations(CONVERSATIONS, template=template, tokenizer=tokenizer)
    for ids, labels in pairs:
        labels[0] = IGNORE_INDEX  # as the pipeline stores it: a sample's first label is never predicted
    total = sum(len(ids) for ids, _ in pairs)
    packed = pack(Ragged.from_arrays([p[0] for p in pairs]), Ragged.from_arrays([p[1] for p in pairs]), total, seed=0)
    ids, labels, positions = packed.input_ids[0], packed.labels[0], packed.position_ids[0]

    per_line = 16
    lines = (len(ids) + per_line - 1) // per_line
    fig, ax = plt.subplots(figsize=(16, 0.9 * lines + 1.2))
    sample = -1
    band = ["#4c72b0", "#dd8452"]
    for i, (token, label, pos) in enumerate(zip(ids, labels, positions)):
        sample += int(pos == 0)
        x, y = i % per_line, -(i // per_line)
        trained = label != IGNORE_INDEX
        ax.add_patch(plt.Rectangle((x, y), 0.96, 0.8, color="#55a868" if trained else "#d0d0d0"))
        ax.add_patch(plt.Rectangle((x, y + 0.8), 0.96, 0.12, color=band[sample % 2]))
        text = tokenizer.decode([int(token)]).replace("\n", "\\n")
        ax.text(x + 0.48, y + 0.45, text[:14], ha="center", va="center", fontsize=7)
        ax.text(x + 0.05, y + 0.05, str(int(pos)), fontsize=5, color="#333333")
    ax.set_xlim(0, per_line)
    ax.set_ylim(-lines + 1, 1.1)
    ax.axis("off")
    ax.set_title(
        "one packed row: green = trained (label = token), grey = masked (-100); "
        "top band = sample (blue, orange); small number = position_id",
        fontsize=10,
    )
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=110, bbox_inches="tight")
    print(f"wrote {out}: {len(ids)} tokens, {int((labels != IGNORE_INDEX).sum())} trained")


if __name__ == "__main__":
    main(Path(sys.argv[1]) if len(sys.argv) > 1 else Path(__file__).resolve().parents[1] / "docs" / "img" / "packed_row.png")
