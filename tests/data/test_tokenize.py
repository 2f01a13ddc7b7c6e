"""Conversation tokenization + label masking (one render and one tokenizer call per batch)."""

from __future__ import annotations

import ast
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from finetune.data.templates import CHATML_JINJA, ChatTemplate, Rendered, render_llama3, resolve_template
from finetune.data.tokenize import (
    IGNORE_INDEX,
    encode_completions,
    encode_conversation,
    encode_conversations,
    labels_from_spans,
)
from finetune.errors import DataError, RecipeError

DIALOG = [
    {"role": "system", "content": "You are terse."},
    {"role": "user", "content": "Name a colour."},
    {"role": "assistant", "content": "Blue."},
    {"role": "user", "content": "Another one, with 123 digits?"},
    {"role": "assistant", "content": "123 greens 🎉"},
    {"role": "user", "content": "Last: write code."},
    {"role": "assistant", "content": "```py\nprint('hi')\n```"},
]
ASSISTANT = [m["content"] for m in DIALOG if m["role"] == "assistant"]
EOT = "<|eot_id|>"


def trained_runs(tokenizer: Any, input_ids: np.ndarray, labels: np.ndarray) -> list[str]:
    """Decode each maximal run of trained tokens (labels must equal the ids there)."""
    trained = labels != IGNORE_INDEX
    assert np.array_equal(labels[trained], input_ids[trained])
    runs, current = [], []
    for token, keep in zip(input_ids.tolist(), trained.tolist()):
        if keep:
            current.append(token)
        elif current:
            runs.append(current)
            current = []
    if current:
        runs.append(current)
    return [tokenizer.decode(run) for run in runs]


def encode(tokenizer: Any, messages: Any, name: str = "llama3", **kwargs: Any) -> tuple[np.ndarray, np.ndarray]:
    return encode_conversation(messages, template=resolve_template(name, None, tokenizer), tokenizer=tokenizer, **kwargs)


def test_seed_recipe_masking_token_by_token(llama3_tokenizer: Any) -> None:
    ids, labels = encode(llama3_tokenizer, DIALOG)
    text = resolve_template("llama3", None, llama3_tokenizer).render(DIALOG).text
    assert ids.tolist() == llama3_tokenizer(text, add_special_tokens=False).input_ids
    assert ids[0] == 128000 and labels[0] == IGNORE_INDEX
    assert trained_runs(llama3_tokenizer, ids, labels) == [content + EOT for content in ASSISTANT]
    # Every assistant header, including its "\n\n" token, is masked; each trained run
    # starts right after one.
    header = llama3_tokenizer("<|start_header_id|>assistant<|end_header_id|>\n\n", add_special_tokens=False).input_ids
    starts = [i for i in range(1, len(ids)) if labels[i] != IGNORE_INDEX and labels[i - 1] == IGNORE_INDEX]
    assert len(starts) == 3
    for start in starts:
        assert ids[start - len(header) : start].tolist() == header
        assert (labels[start - len(header) : start] == IGNORE_INDEX).all()


@pytest.mark.parametrize(
    "train_on_eos,expected",
    [
        ("turn", [c + EOT for c in ASSISTANT]),
        ("none", ASSISTANT),
        ("last", [ASSISTANT[0], ASSISTANT[1], ASSISTANT[2] + EOT]),
        ("all", [EOT, EOT, ASSISTANT[0] + EOT, EOT, ASSISTANT[1] + EOT, EOT, ASSISTANT[2] + EOT]),
    ],
)
def test_train_on_eos_variants(llama3_tokenizer: Any, train_on_eos: str, expected: list[str]) -> None:
    ids, labels = encode(llama3_tokenizer, DIALOG, train_on_eos=train_on_eos)
    assert trained_runs(llama3_tokenizer, ids, labels) == expected


def test_roles_to_train_user_and_assistant(llama3_tokenizer: Any) -> None:
    ids, labels = encode(llama3_tokenizer, DIALOG, roles_to_train=["user", "assistant"])
    expected = [m["content"] + EOT for m in DIALOG[1:]]
    assert trained_runs(llama3_tokenizer, ids, labels) == expected


def test_train_on_inputs_trains_everything(llama3_tokenizer: Any) -> None:
    ids, labels = encode(llama3_tokenizer, DIALOG, train_on_inputs=True)
    assert np.array_equal(ids, labels)


@pytest.mark.parametrize(
    "messages",
    [[{"role": "system", "content": "only a system prompt"}], [{"role": "user", "content": "hello?"}]],
)
def test_nothing_to_train(llama3_tokenizer: Any, messages: Any) -> None:
    ids, labels = encode(llama3_tokenizer, messages)
    assert len(ids) > 3 and (labels == IGNORE_INDEX).all()


def test_invalid_train_on_eos(llama3_tokenizer: Any) -> None:
    from pydantic import ValidationError

    from finetune.config.settings import DatasetSettings

    with pytest.raises(ValidationError, match="train_on_eos"):  # the settings own the check
        DatasetSettings(path="data.jsonl", train_on_eos="sometimes")
    with pytest.raises(RecipeError, match="list of roles"):
        encode(llama3_tokenizer, DIALOG, roles_to_train="assistant")


class CountingTokenizer:
    """Wraps a tokenizer, exposing only ``__call__`` and counting calls and texts."""

    def __init__(self, inner: Any) -> None:
        self.inner, self.calls, self.texts = inner, 0, 0
        self.is_fast = True

    def __call__(self, texts: list[str], **kwargs: Any) -> Any:
        self.calls += 1
        self.texts += len(texts)
        return self.inner(texts, **kwargs)


def counting_llama3(counter: list[int]) -> ChatTemplate:
    def renderer(messages: Any, add_generation_prompt: bool) -> Rendered:
        counter.append(len(messages))
        return render_llama3(messages, add_generation_prompt)

    return ChatTemplate("llama3", "unused", EOT, renderer)


def test_long_conversation_is_rendered_and_tokenized_once(llama3_tokenizer: Any) -> None:
    long = [{"role": "user" if i % 2 == 0 else "assistant", "content": f"turn {i} text"} for i in range(200)]
    renders: list[int] = []
    tokenizer = CountingTokenizer(llama3_tokenizer)
    ids, labels = encode_conversation(long, template=counting_llama3(renders), tokenizer=tokenizer)
    assert renders == [200] and (tokenizer.calls, tokenizer.texts) == (1, 1)
    assert trained_runs(llama3_tokenizer, ids, labels) == [f"turn {i} text{EOT}" for i in range(1, 200, 2)]
    # Same result as the Rust-backend route of the real tokenizer.
    direct = encode_conversation(long, template=resolve_template("llama3", None, llama3_tokenizer), tokenizer=llama3_tokenizer)
    assert np.array_equal(direct[0], ids) and np.array_equal(direct[1], labels)


def test_batches_call_the_tokenizer_once_per_batch(llama3_tokenizer: Any) -> None:
    conversations = [DIALOG[: 2 + i % 5] for i in range(25)]
    tokenizer = CountingTokenizer(llama3_tokenizer)
    renders: list[int] = []
    batched = encode_conversations(conversations, template=counting_llama3(renders), tokenizer=tokenizer, batch_size=10)
    assert (tokenizer.calls, tokenizer.texts, len(renders)) == (3, 25, 25)
    singles = [encode(llama3_tokenizer, c) for c in conversations]
    assert all(np.array_equal(a[0], b[0]) and np.array_equal(a[1], b[1]) for a, b in zip(batched, singles))


def test_chatml_masks(llama3_tokenizer: Any) -> None:
    ids, labels = encode(llama3_tokenizer, DIALOG, name="chatml")
    runs = trained_runs(llama3_tokenizer, ids, labels)
    # With the Llama 3 vocabulary "<|im_end|>\n" is plain text; the last token "|>\n" starts
    # inside the end-of-turn span, so it is trained whole.
    assert runs == [content + "<|im_end|>\n" for content in ASSISTANT]
    assert ids[0] != 128000


def test_tokenizer_default_and_custom_jinja_masks(tiny_llama_dir: Path, llama3_tokenizer: Any, tmp_path: Path) -> None:
    from transformers import AutoTokenizer

    reference = encode(llama3_tokenizer, DIALOG)
    tokenizer = AutoTokenizer.from_pretrained(tiny_llama_dir)
    tokenizer.chat_template = resolve_template("llama3", None, tokenizer).jinja_source
    path = tmp_path / "llama3.jinja"
    path.write_text(tokenizer.chat_template, encoding="utf-8")
    templates = [
        resolve_template("tokenizer_default", None, tokenizer, end_of_turn=EOT),
        resolve_template("jinja", tokenizer.chat_template, tokenizer, end_of_turn=EOT),
        resolve_template("jinja", str(path), tokenizer, end_of_turn=EOT),
    ]
    for template in templates:
        ids, labels = encode_conversation(DIALOG, template=template, tokenizer=tokenizer)
        assert np.array_equal(ids, reference[0]) and np.array_equal(labels, reference[1])


def test_custom_jinja_chatml_masks(llama3_tokenizer: Any) -> None:
    template = resolve_template("jinja", CHATML_JINJA, llama3_tokenizer, end_of_turn="<|im_end|>")
    ids, labels = encode_conversation(DIALOG, template=template, tokenizer=llama3_tokenizer)
    assert trained_runs(llama3_tokenizer, ids, labels) == [content + "<|im_end|>\n" for content in ASSISTANT]


def test_lowercasing_jinja_raises_data_error(llama3_tokenizer: Any) -> None:
    source = "{% for m in messages %}<{{ m['role'] }}>{{ m['content'] | lower }}{{ eos_token }}{% endfor %}"
    template = resolve_template("jinja", source, llama3_tokenizer)
    with pytest.raises(DataError, match="verbatim"):
        encode_conversation(DIALOG, template=template, tokenizer=llama3_tokenizer)


def test_labels_from_spans_uses_token_start() -> None:
    ids = np.array([10, 11, 12, 13, 14])
    starts = np.array([0, 3, 5, 9, 12])  # tokens cover [0,3) [3,5) [5,9) [9,12) [12,..)
    # Span [4, 10): token at 3 straddles the start (not trained); token at 9 runs past the end (trained).
    assert labels_from_spans(ids, starts, [(4, 10)]).tolist() == [-100, -100, 12, 13, -100]
    assert labels_from_spans(ids, starts, [(0, 1), (12, 13)]).tolist() == [10, -100, -100, -100, 14]
    assert labels_from_spans(ids, starts, []).tolist() == [-100] * 5


def test_completion_mode(llama3_tokenizer: Any) -> None:
    texts = ["Once upon a time 🐉", "line\nbreak 123"]
    for text, (ids, labels) in zip(texts, encode_completions(texts, tokenizer=llama3_tokenizer)):
        body = llama3_tokenizer(text, add_special_tokens=False).input_ids
        assert ids.tolist() == [128000, *body, 128001]
        assert np.array_equal(ids, labels)


def test_byte_length_route_equals_offset_mapping(llama3_tokenizer: Any) -> None:
    from finetune.data.tokenize import byte_level_token_lengths, tokenize_with_starts

    lengths = byte_level_token_lengths(llama3_tokenizer)
    assert lengths is not None and lengths[128009] == len("<|eot_id|>")
    texts = [
        resolve_template("llama3", None, llama3_tokenizer).render(DIALOG).text,
        "naïve café 👨‍👩‍👧 日本語 and \u00a0 spaces\n\n\tend",
        "plain ascii",
        "",
    ]
    fast = tokenize_with_starts(llama3_tokenizer, texts, lengths)
    slow = tokenize_with_starts(llama3_tokenizer, texts, None)
    for (ids_a, starts_a), (ids_b, starts_b) in zip(fast, slow):
        assert np.array_equal(ids_a, ids_b) and np.array_equal(starts_a, starts_b)
    # Lengths that do not add up fall back to the offset mapping instead of mislabelling.
    wrong = lengths.copy()
    wrong[:] = 1
    assert all(np.array_equal(a[1], b[1]) for a, b in zip(tokenize_with_starts(llama3_tokenizer, texts, wrong), slow))


SRC = Path(__file__).resolve().parents[2] / "src" / "finetune"


def test_ignore_index_is_defined_once() -> None:
    # The untrained-label value lives in finetune.data.tokenize; the collator, packer and loss import it.
    homes, literals = [], []
    for path in sorted(SRC.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Assign) and any(getattr(t, "id", None) == "IGNORE_INDEX" for t in node.targets):
                homes.append(path.relative_to(SRC).as_posix())
            elif isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.USub):
                if getattr(node.operand, "value", None) == 100:
                    literals.append(f"{path.relative_to(SRC).as_posix()}:{node.lineno}")
    assert homes == ["data/tokenize.py"]
    assert literals == [f"data/tokenize.py:{_line_of(SRC / 'data' / 'tokenize.py', 'IGNORE_INDEX = -100')}"]


def _line_of(path: Path, needle: str) -> int:
    return next(i for i, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1) if needle in line)
