"""Chat templates: Jinja sources (saved into the tokenizer) plus span-aware renderers.

A :class:`ChatTemplate` turns a conversation (``[{"role": ..., "content": ...}, ...]``)
into one string and reports, for every message, the character span of its content
and of the end-of-turn marker that closes it. The tokenizer module uses those spans
to build labels from a single tokenization of the whole conversation.

Built-in templates:

* ``llama3`` -- exactly Axolotl's ``llama3`` template: ``<|begin_of_text|>`` once,
  then per message ``<|start_header_id|>ROLE<|end_header_id|>\\n\\n`` + content with
  surrounding whitespace trimmed + ``<|eot_id|>``. No default system prompt, no
  "Cutting Knowledge Date" preamble; roles are written as given (``tool`` stays
  ``tool``; Meta's encoder would write ``ipython``). BOS is the literal Llama 3 BOS
  string, since the template only makes sense with Llama 3 special tokens.
* ``chatml`` -- ``<|im_start|>ROLE\\ncontent<|im_end|>\\n`` per message, content
  untouched, and, like Axolotl's ``chatml``, no BOS at all.
* ``tokenizer_default`` -- the tokenizer's own ``chat_template``.
* ``jinja`` -- a custom Jinja template given inline or as a file path.

``llama3`` and ``chatml`` have a pure-Python renderer producing the same text as
their Jinja source (tested). Jinja-only templates are rendered once per
conversation; each content is then located by a forward search from a cursor
(as-is first, then whitespace-stripped), which is linear in the text length.
"""

from __future__ import annotations

import typing
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from finetune.config.settings import ChatTemplateName
from finetune.errors import DataError, RecipeError

Message = Mapping[str, str]
Span = tuple[int, int]
Renderer = Callable[[Sequence[Message], bool], "Rendered"]


LLAMA3_BOS = "<|begin_of_text|>"
LLAMA3_EOT = "<|eot_id|>"
CHATML_EOT = "<|im_end|>"

# Axolotl's llama3 template with the Llama 3 BOS string written out.
LLAMA3_JINJA = (
    "{% for message in messages %}"
    "{% if loop.index0 == 0 %}{{ '<|begin_of_text|>' }}{% endif %}"
    "{{ '<|start_header_id|>' + message['role'] + '<|end_header_id|>\n\n' + message['content'] | trim + '<|eot_id|>' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|start_header_id|>assistant<|end_header_id|>\n\n' }}{% endif %}"
)

CHATML_JINJA = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)


@dataclass(frozen=True)
class Rendered:
    """A rendered conversation.

    ``content_spans[i]`` is the ``[start, end)`` character span of message ``i``'s
    content in ``text``; ``eot_spans[i]`` the span of the end-of-turn marker closing
    message ``i`` (``None`` when the template writes none there).
    """

    text: str
    content_spans: tuple[Span, ...]
    eot_spans: tuple[Span | None, ...]


@dataclass(frozen=True)
class ChatTemplate:
    """A named chat template: its Jinja source and a span-aware renderer."""

    name: str
    jinja_source: str
    end_of_turn: str | None
    renderer: Renderer | None = field(default=None, repr=False, compare=False)
    tokenizer: Any = field(default=None, repr=False, compare=False)

    def render(self, messages: Sequence[Message], add_generation_prompt: bool = False) -> Rendered:
        """Render one conversation (validated) with content and end-of-turn spans."""
        return self.render_batch([messages], add_generation_prompt)[0]

    def render_batch(
        self, conversations: Sequence[Sequence[Message]], add_generation_prompt: bool = False
    ) -> list[Rendered]:
        """Render many conversations; Jinja templates are rendered in one call."""
        for index, messages in enumerate(conversations):
            validate_messages(messages, index)
        if self.renderer is not None:
            return [self.renderer(messages, add_generation_prompt) for messages in conversations]
        texts = render_jinja_batch(self.jinja_source, conversations, self.tokenizer, add_generation_prompt)
        return [
            locate_spans(text, messages, self.end_of_turn, self.name)
            for text, messages in zip(texts, conversations)
        ]


def validate_messages(messages: Sequence[Message], index: int = 0) -> None:
    """Raise DataError unless every message has string ``role`` and ``content``."""
    for turn, message in enumerate(messages):
        if not isinstance(message, Mapping):
            raise DataError(f"conversation {index}, message {turn}: expected a mapping, got {type(message).__name__}")
        role, content = message.get("role"), message.get("content")
        if not isinstance(role, str) or not isinstance(content, str):
            raise DataError(
                f"conversation {index}, message {turn}: expected string 'role' and 'content', "
                f"got role={role!r}, content of type {type(content).__name__}"
            )


def render_llama3(messages: Sequence[Message], add_generation_prompt: bool = False) -> Rendered:
    """Pure-Python twin of :data:`LLAMA3_JINJA`, with spans."""
    parts: list[str] = []
    content_spans: list[Span] = []
    eot_spans: list[Span | None] = []
    pos = 0
    for index, message in enumerate(messages):
        head = (LLAMA3_BOS if index == 0 else "") + f"<|start_header_id|>{message['role']}<|end_header_id|>\n\n"
        content = message["content"].strip()
        start = pos + len(head)
        end = start + len(content)
        content_spans.append((start, end))
        eot_spans.append((end, end + len(LLAMA3_EOT)))
        parts.extend((head, content, LLAMA3_EOT))
        pos = end + len(LLAMA3_EOT)
    if add_generation_prompt:
        parts.append("<|start_header_id|>assistant<|end_header_id|>\n\n")
    return Rendered("".join(parts), tuple(content_spans), tuple(eot_spans))


def render_chatml(messages: Sequence[Message], add_generation_prompt: bool = False) -> Rendered:
    """Pure-Python twin of :data:`CHATML_JINJA`, with spans (the eot span excludes the ``\\n``)."""
    parts: list[str] = []
    content_spans: list[Span] = []
    eot_spans: list[Span | None] = []
    pos = 0
    for message in messages:
        head = f"<|im_start|>{message['role']}\n"
        content = message["content"]
        start = pos + len(head)
        end = start + len(content)
        content_spans.append((start, end))
        eot_spans.append((end, end + len(CHATML_EOT)))
        parts.extend((head, content, CHATML_EOT, "\n"))
        pos = end + len(CHATML_EOT) + 1
    if add_generation_prompt:
        parts.append("<|im_start|>assistant\n")
    return Rendered("".join(parts), tuple(content_spans), tuple(eot_spans))


def render_jinja_batch(
    source: str, conversations: Sequence[Sequence[Message]], tokenizer: Any, add_generation_prompt: bool
) -> list[str]:
    """Render conversations with a Jinja chat template through ``tokenizer.apply_chat_template``."""
    if tokenizer is None:
        raise RecipeError("a Jinja chat template needs a tokenizer to render (bos_token, eos_token, ...)")
    if not conversations:
        return []
    try:
        texts = tokenizer.apply_chat_template(
            [list(map(dict, messages)) for messages in conversations],
            chat_template=source,
            tokenize=False,
            add_generation_prompt=add_generation_prompt,
        )
    except Exception as exc:  # jinja2 errors, raise_exception(...) in the template
        raise DataError(f"the chat template failed to render a conversation: {type(exc).__name__}: {exc}") from exc
    return [texts] if isinstance(texts, str) else list(texts)


def locate_spans(text: str, messages: Sequence[Message], end_of_turn: str | None, name: str = "jinja") -> Rendered:
    """Find each message's content (as-is, then stripped) and its end-of-turn marker in ``text``.

    Searches forward from a cursor, so the whole conversation costs one pass over
    ``text``. The end-of-turn span of message ``i`` is the first ``end_of_turn`` after
    its content and before message ``i+1``'s content. Raises DataError when a content
    cannot be found (the template transforms content in an unsupported way).

    Heuristic limits: a content that also occurs in the template text between the
    cursor and the real content (e.g. content ``"a"`` and an ``assistant`` header) is
    located too early; a leading/trailing whitespace that the template trimmed can
    match template whitespace, widening the span by whitespace only.
    """
    content_spans: list[Span] = []
    cursor = 0
    for turn, message in enumerate(messages):
        content = message["content"]
        start = text.find(content, cursor)
        if start < 0:
            content = content.strip()
            start = text.find(content, cursor)
        if start < 0:
            raise DataError(
                f"chat template {name!r}: cannot find the content of message {turn} (role {message['role']!r}) "
                f"in the rendered text; the template must copy message contents verbatim (it may trim "
                f"whitespace). Content starts with {message['content'][:60]!r}"
            )
        content_spans.append((start, start + len(content)))
        cursor = start + len(content)
    eot_spans: list[Span | None] = []
    for turn, (_, end) in enumerate(content_spans):
        limit = content_spans[turn + 1][0] if turn + 1 < len(content_spans) else len(text)
        found = text.find(end_of_turn, end, limit) if end_of_turn else -1
        eot_spans.append((found, found + len(end_of_turn)) if found >= 0 and end_of_turn else None)
    return Rendered(text, tuple(content_spans), tuple(eot_spans))


def load_jinja(jinja: str) -> str:
    """Inline Jinja (contains ``{%`` or ``{{``) is returned as-is; anything else is read as a file path."""
    if "{%" in jinja or "{{" in jinja:
        return jinja
    path = Path(jinja).expanduser()
    if not path.is_file():
        raise RecipeError(
            f"chat_template_jinja: {jinja!r} is neither inline Jinja (no '{{%' or '{{{{') nor an existing file"
        )
    source = path.read_text(encoding="utf-8")
    if "{%" not in source and "{{" not in source:
        raise RecipeError(f"chat_template_jinja: {path} does not look like a Jinja template (no '{{%' or '{{{{')")
    return source


def check_jinja_syntax(source: str, origin: str) -> None:
    """Raise RecipeError (with the line) when ``source`` is not valid Jinja."""
    import jinja2

    try:
        jinja2.Environment(extensions=["jinja2.ext.loopcontrols"]).parse(source)
    except jinja2.TemplateSyntaxError as exc:
        raise RecipeError(f"{origin}: invalid Jinja at line {exc.lineno}: {exc.message}") from exc


def resolve_template(
    name: ChatTemplateName, jinja: str | None = None, tokenizer: Any = None, *, end_of_turn: str | None = None
) -> ChatTemplate:
    """Build the :class:`ChatTemplate` called ``name`` (one of the recipe's `ChatTemplateName`s).

    ``jinja`` (inline source or a file path) is required for ``name="jinja"`` and
    rejected otherwise. ``end_of_turn`` overrides the marker whose span is reported
    for Jinja templates (default: the tokenizer's EOS token string).
    """
    if jinja is not None and name != "jinja":
        raise RecipeError(f"chat_template_jinja is set but chat_template is {name!r}; set chat_template: jinja")
    if name == "llama3":
        return ChatTemplate("llama3", LLAMA3_JINJA, end_of_turn or LLAMA3_EOT, render_llama3, tokenizer)
    if name == "chatml":
        return ChatTemplate("chatml", CHATML_JINJA, end_of_turn or CHATML_EOT, render_chatml, tokenizer)
    if name == "tokenizer_default":
        source = getattr(tokenizer, "chat_template", None) if tokenizer is not None else None
        if not isinstance(source, str) or not source:
            raise RecipeError(
                "chat_template: tokenizer_default, but the tokenizer has no chat_template "
                "(base models usually have none); use llama3, chatml or jinja instead"
            )
    elif name == "jinja":
        if not jinja:
            raise RecipeError("chat_template: jinja needs chat_template_jinja (inline Jinja or a file path)")
        source = load_jinja(jinja)
    else:
        raise RecipeError(f"unknown chat_template {name!r}; expected one of {', '.join(typing.get_args(ChatTemplateName))}")
    check_jinja_syntax(source, f"chat_template {name!r}")
    if tokenizer is None:
        raise RecipeError(f"chat_template {name!r} needs the tokenizer to render")
    eot = end_of_turn or getattr(tokenizer, "eos_token", None)
    return ChatTemplate(name, source, eot, None, tokenizer)
