"""Chat templates: Jinja == Python renderers, llama3 token-exact against Meta, spans, errors."""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

import pytest

from finetune.data.templates import (
    CHATML_JINJA,
    LLAMA3_JINJA,
    locate_spans,
    resolve_template,
)
from finetune.errors import DataError, RecipeError

TRICKY_CONTENTS = [
    "123 apples",
    "!wow",
    "...ok",
    "'quoted'",
    "I'm sure it's fine, they'LL see",
    "Ünïcödé àccents, café, naïve",
    "emoji 🎉🚀👍🏽 and family 👨‍👩‍👧",
    "中文内容，日本語のテキスト、한국어",
    "```python\ndef f(x):\n    return x ** 2  # square\n```",
    "line one\nline two\n\n\nline five",
    "tabs\tand   spaces   inside",
    "3.14159, 1,000,000 and 42%",
    "(parenthesised) [bracketed] {braced}",
    "\u00a0non-breaking start",
]


def random_dialog(rng: random.Random, turns: int, system: bool) -> list[dict[str, str]]:
    """A dialog alternating user/assistant with random tricky contents and whitespace."""
    pads = ["", " ", "\n", "  \n ", "\t"]
    messages = [{"role": "system", "content": rng.choice(pads) + rng.choice(TRICKY_CONTENTS)}] if system else []
    for turn in range(turns):
        content = rng.choice(pads) + rng.choice(TRICKY_CONTENTS) + rng.choice(pads)
        messages.append({"role": "user" if turn % 2 == 0 else "assistant", "content": content})
    return messages


def dialogs(count: int = 40) -> list[list[dict[str, str]]]:
    rng = random.Random(1234)
    return [random_dialog(rng, rng.randint(1, 7), rng.random() < 0.5) for _ in range(count)]


@pytest.mark.parametrize("name,source", [("llama3", LLAMA3_JINJA), ("chatml", CHATML_JINJA)])
@pytest.mark.parametrize("generation", [False, True])
def test_python_renderer_equals_jinja_source(llama3_tokenizer: Any, name: str, source: str, generation: bool) -> None:
    template = resolve_template(name, None, llama3_tokenizer)
    assert template.jinja_source == source
    for messages in dialogs():
        expected = llama3_tokenizer.apply_chat_template(
            messages, chat_template=source, tokenize=False, add_generation_prompt=generation
        )
        assert template.render(messages, add_generation_prompt=generation).text == expected


def test_llama3_layout_and_spans(llama3_tokenizer: Any) -> None:
    messages = [
        {"role": "system", "content": "  Be brief. "},
        {"role": "user", "content": "Hi\n"},
        {"role": "assistant", "content": "Hello!"},
    ]
    rendered = resolve_template("llama3", None, llama3_tokenizer).render(messages)
    assert rendered.text == (
        "<|begin_of_text|><|start_header_id|>system<|end_header_id|>\n\nBe brief.<|eot_id|>"
        "<|start_header_id|>user<|end_header_id|>\n\nHi<|eot_id|>"
        "<|start_header_id|>assistant<|end_header_id|>\n\nHello!<|eot_id|>"
    )
    assert [rendered.text[a:b] for a, b in rendered.content_spans] == ["Be brief.", "Hi", "Hello!"]
    assert [rendered.text[a:b] for a, b in rendered.eot_spans] == ["<|eot_id|>"] * 3
    assert rendered.text.count("<|begin_of_text|>") == 1
    assert "Cutting Knowledge" not in rendered.text


def test_chatml_layout_has_no_bos(llama3_tokenizer: Any) -> None:
    messages = [{"role": "user", "content": " hi "}, {"role": "assistant", "content": "yo"}]
    rendered = resolve_template("chatml", None, llama3_tokenizer).render(messages, add_generation_prompt=True)
    assert rendered.text == (
        "<|im_start|>user\n hi <|im_end|>\n<|im_start|>assistant\nyo<|im_end|>\n<|im_start|>assistant\n"
    )
    assert [rendered.text[a:b] for a, b in rendered.content_spans] == [" hi ", "yo"]
    assert [rendered.text[a:b] for a, b in rendered.eot_spans] == ["<|im_end|>"] * 2


def meta_messages(messages: list[dict[str, str]]) -> list[Any]:
    """Our dicts as Meta RawMessages (assistant turns end with <|eot_id|>: stop_reason end_of_turn)."""
    from llama_models.datatypes import RawMessage, StopReason

    return [
        RawMessage(
            role=m["role"],
            content=m["content"],
            stop_reason=StopReason.end_of_turn if m["role"] == "assistant" else None,
        )
        for m in messages
    ]


META_CASES = [
    [{"role": "user", "content": "Hello there"}, {"role": "assistant", "content": "Hi! How can I help?"}],
    [
        {"role": "system", "content": "You are a helpful assistant."},
        {"role": "user", "content": "123 apples"},
        {"role": "assistant", "content": "!wow"},
        {"role": "user", "content": "...ok"},
        {"role": "assistant", "content": "'quoted'"},
    ],
    [
        {"role": "user", "content": "Ünïcödé àccents 🎉🚀 中文 日本語"},
        {"role": "assistant", "content": "```python\ndef f(x):\n    return x ** 2\n```\nDone."},
        {"role": "user", "content": "line one\nline two\n\n\nline five"},
        {"role": "assistant", "content": "3.14159, 1,000,000 and 42%"},
    ],
    [{"role": "system", "content": "sys only"}],
]


@pytest.mark.parametrize("messages", META_CASES + dialogs(15))
def test_llama3_token_exact_against_meta(llama3_tokenizer: Any, meta_chat_format: Any, messages: Any) -> None:
    # Meta's encoder does not trim content; the template does, so compare on trimmed contents.
    trimmed = [{"role": m["role"], "content": m["content"].strip()} for m in messages]
    # encode_dialog_prompt always appends an assistant header for generation.
    expected = meta_chat_format.encode_dialog_prompt(meta_messages(trimmed)).tokens
    for variant in (messages, trimmed):
        text = resolve_template("llama3", None, llama3_tokenizer).render(variant, add_generation_prompt=True).text
        assert llama3_tokenizer(text, add_special_tokens=False).input_ids == expected


def test_locate_spans_matches_python_renderer(llama3_tokenizer: Any) -> None:
    python = resolve_template("llama3", None, llama3_tokenizer)
    jinja = resolve_template("jinja", LLAMA3_JINJA, llama3_tokenizer, end_of_turn="<|eot_id|>")
    assert jinja.renderer is None
    for messages in dialogs():
        located, exact = jinja.render(messages), python.render(messages)
        assert (located.text, located.eot_spans) == (exact.text, exact.eot_spans)
        # Content is searched as-is first: a leading "\n" that the template trimmed can match
        # the header's "\n\n", so a located span may include extra whitespace, never other text.
        for (a, b), (c, d) in zip(located.content_spans, exact.content_spans):
            assert a <= c and b == d and located.text[a:c].strip() == ""


def test_locate_spans_eot_only_before_next_content() -> None:
    text = "A: hi\nB: yo</s>"
    rendered = locate_spans(text, [{"role": "a", "content": "hi"}, {"role": "b", "content": "yo"}], "</s>")
    assert rendered.eot_spans[0] is None
    assert rendered.eot_spans[1] == (text.index("</s>"), len(text))


def test_tokenizer_default(tiny_llama_dir: Path, llama3_tokenizer: Any) -> None:
    from transformers import AutoTokenizer

    with pytest.raises(RecipeError, match="no chat_template"):
        resolve_template("tokenizer_default", None, llama3_tokenizer)
    tokenizer = AutoTokenizer.from_pretrained(tiny_llama_dir)
    tokenizer.chat_template = CHATML_JINJA
    template = resolve_template("tokenizer_default", None, tokenizer, end_of_turn="<|im_end|>")
    messages = [{"role": "user", "content": "What is 2+2?"}, {"role": "assistant", "content": "4."}]
    assert template.render(messages) == resolve_template("chatml", None, tokenizer).render(messages)


def test_custom_jinja_inline_and_file(tmp_path: Path, llama3_tokenizer: Any) -> None:
    source = "{% for m in messages %}[{{ m['role'] }}] {{ m['content'] }}{{ eos_token }}\n{% endfor %}"
    path = tmp_path / "template.jinja"
    path.write_text(source, encoding="utf-8")
    messages = [{"role": "user", "content": "question?"}, {"role": "assistant", "content": "answer."}]
    for jinja in (source, str(path)):
        template = resolve_template("jinja", jinja, llama3_tokenizer)
        assert template.jinja_source == source
        rendered = template.render(messages)
        assert rendered.text == "[user] question?<|end_of_text|>\n[assistant] answer.<|end_of_text|>\n"
        assert [rendered.text[a:b] for a, b in rendered.content_spans] == ["question?", "answer."]
        assert [rendered.text[a:b] for a, b in rendered.eot_spans] == ["<|end_of_text|>"] * 2


def test_content_transforming_template_raises(llama3_tokenizer: Any) -> None:
    template = resolve_template("jinja", "{% for m in messages %}{{ m['content'] | lower }}{% endfor %}", llama3_tokenizer)
    with pytest.raises(DataError, match="cannot find the content of message 0"):
        template.render([{"role": "user", "content": "Hello World"}])


@pytest.mark.parametrize(
    "name,jinja,match",
    [
        ("nope", None, "unknown chat_template"),
        ("jinja", None, "needs chat_template_jinja"),
        ("llama3", "{{ x }}", "set chat_template: jinja"),
        ("jinja", "/does/not/exist.jinja", "neither inline Jinja"),
        ("jinja", "{% for m in messages %}", "invalid Jinja at line 1"),
    ],
)
def test_recipe_errors(llama3_tokenizer: Any, name: str, jinja: str | None, match: str) -> None:
    with pytest.raises(RecipeError, match=match):
        resolve_template(name, jinja, llama3_tokenizer)


def test_bad_messages_raise_data_error(llama3_tokenizer: Any) -> None:
    template = resolve_template("llama3", None, llama3_tokenizer)
    with pytest.raises(DataError, match="message 1"):
        template.render([{"role": "user", "content": "ok"}, {"role": "assistant", "content": None}])
