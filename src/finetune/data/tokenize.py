"""Conversations -> ``input_ids`` + ``labels`` in one render and one tokenization each.

Axolotl re-renders and re-tokenizes growing prefixes to find turn boundaries
(quadratic in the number of turns). Here each conversation is rendered once with
character spans (:mod:`finetune.data.templates`), a whole batch of rendered texts is
tokenized in one call to the Rust tokenizer (``add_special_tokens=False``, with
offsets), and labels are assigned by character spans with numpy.

Labelling rule: a token belongs to the span that contains its *first character*
(its start offset). So a token straddling the start of a trained span is trained
only if it starts at or after the span start, and a token that starts inside a
trained span but runs past its end is trained. With ``llama3`` every span boundary
is a special token or a pre-token boundary, so this is exact.

Seed-recipe semantics (Axolotl-compatible): BOS, system/user turns and every
header (including the ``\\n\\n`` token) get ``-100``; the content of every turn whose
role is in ``roles_to_train`` is trained, plus end-of-turn markers per
``train_on_eos``: ``turn`` (each trained turn's), ``all`` (every turn's), ``last``
(only the last trained turn's), ``none``. ``train_on_inputs=True`` trains every
token. Labels are the token ids themselves (no shift; the model shifts).

Speed: token start offsets are not taken from the tokenizer's offset mapping
(building millions of Python tuples dominated the run time) but recomputed from
each token's UTF-8 byte length (byte-level BPE is lossless), with a per-text check
that the lengths add up; otherwise the offset mapping is used.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from finetune.config.settings import TrainOnEos
from finetune.data.templates import ChatTemplate, Message, Rendered, Span
from finetune.errors import RecipeError

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

IGNORE_INDEX = -100  # the label of an untrained token; the one definition (data, collator, loss)
Example = tuple[np.ndarray, np.ndarray]


def trained_spans(
    rendered: Rendered,
    roles: Sequence[str],
    roles_to_train: Sequence[str] = ("assistant",),
    train_on_eos: TrainOnEos = "turn",
) -> list[Span]:
    """Sorted, non-empty character spans of ``rendered.text`` whose tokens are trained."""
    trained_turns = [i for i, role in enumerate(roles) if role in roles_to_train]
    spans = [rendered.content_spans[i] for i in trained_turns]
    if train_on_eos == "turn":
        eot_turns = trained_turns
    elif train_on_eos == "all":
        eot_turns = list(range(len(roles)))
    elif train_on_eos == "last":
        eot_turns = trained_turns[-1:]
    else:
        eot_turns = []
    spans.extend(span for i in eot_turns if (span := rendered.eot_spans[i]) is not None)
    return sorted(span for span in spans if span[1] > span[0])


def labels_from_spans(input_ids: np.ndarray, token_starts: np.ndarray, spans: Sequence[Span]) -> np.ndarray:
    """Labels: ``input_ids`` where a token's start offset lies in a span, else ``-100``.

    ``spans`` must be sorted and non-overlapping. Vectorised: one ``searchsorted``.
    """
    labels = np.full(len(input_ids), IGNORE_INDEX, dtype=np.int64)
    if not spans or len(input_ids) == 0:
        return labels
    bounds = np.asarray(spans, dtype=np.int64)
    index = np.searchsorted(bounds[:, 0], token_starts, side="right") - 1
    inside = (index >= 0) & (token_starts < bounds[np.maximum(index, 0), 1])
    labels[inside] = input_ids[inside]
    return labels


def _chunks(items: Sequence[Any], size: int) -> Iterator[Sequence[Any]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


def byte_level_token_lengths(tokenizer: PreTrainedTokenizerBase) -> np.ndarray | None:
    """UTF-8 byte length of every token id, or None unless the tokenizer is plain byte-level BPE.

    In byte-level BPE every character of a vocabulary string stands for one byte; added
    tokens are matched literally, so their length is their UTF-8 length. Requires no
    normalizer and no added token that strips whitespace or is normalized.
    """
    from tokenizers import decoders

    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is None or backend.normalizer is not None or not isinstance(backend.decoder, decoders.ByteLevel):
        return None
    lengths = np.zeros(backend.get_vocab_size(with_added_tokens=True), dtype=np.int64)
    for token, index in backend.get_vocab(with_added_tokens=False).items():
        lengths[index] = len(token)
    for index, added in backend.get_added_tokens_decoder().items():
        if added.lstrip or added.rstrip or added.normalized or added.single_word:
            return None
        lengths[index] = len(added.content.encode("utf-8"))
    return lengths


def _char_starts_from_bytes(text: str, ids: np.ndarray, lengths: np.ndarray) -> np.ndarray | None:
    """Start char offset of each token from token byte lengths; None if they do not add up."""
    token_bytes = lengths[ids]
    ends = np.cumsum(token_bytes)
    raw = text.encode("utf-8")
    if (ends[-1] if len(ends) else 0) != len(raw):
        return None
    starts = ends - token_bytes
    if len(raw) == len(text):  # ASCII: bytes are chars
        return starts
    lead = (np.frombuffer(raw, dtype=np.uint8) & 0xC0) != 0x80  # first byte of each char
    char_of_byte = np.cumsum(lead) - 1
    return char_of_byte[starts]


def _backend_usable(tokenizer: PreTrainedTokenizerBase) -> bool:
    backend = getattr(tokenizer, "backend_tokenizer", None)
    return backend is not None and backend.truncation is None and backend.padding is None


def tokenize_with_starts(
    tokenizer: PreTrainedTokenizerBase, texts: Sequence[str], lengths: np.ndarray | None = None
) -> list[Example]:
    """Tokenize ``texts`` in ONE tokenizer call: ``(ids, start char offsets)`` per text.

    Fast route: the Rust backend's ``encode_batch_fast`` (parallel, no offsets) and
    starts recomputed from ``lengths`` (:func:`byte_level_token_lengths`), checked per
    text to add up to its UTF-8 length. Otherwise ``encode_batch`` with offsets, or the
    tokenizer's ``__call__`` when the backend has truncation/padding configured.
    """
    if not texts:
        return []
    texts = list(texts)
    if _backend_usable(tokenizer):
        backend = tokenizer.backend_tokenizer
        if lengths is not None and hasattr(backend, "encode_batch_fast"):
            encodings = backend.encode_batch_fast(texts, add_special_tokens=False)
            ids_list = [np.array(enc.ids, dtype=np.int64) for enc in encodings]
            starts_list = [_char_starts_from_bytes(text, ids, lengths) for text, ids in zip(texts, ids_list)]
            if all(starts is not None for starts in starts_list):
                return list(zip(ids_list, starts_list))
        encodings = backend.encode_batch(texts, add_special_tokens=False)
        return [
            (np.array(enc.ids, dtype=np.int64), np.array(enc.offsets, dtype=np.int64).reshape(-1, 2)[:, 0])
            for enc in encodings
        ]
    if not getattr(tokenizer, "is_fast", True):
        raise RecipeError("chat tokenization needs a fast (Rust) tokenizer for character offsets")
    batch = tokenizer(texts, add_special_tokens=False, return_offsets_mapping=True)
    return [
        (np.array(ids, dtype=np.int64), np.array(offsets, dtype=np.int64).reshape(-1, 2)[:, 0])
        for ids, offsets in zip(batch["input_ids"], batch["offset_mapping"])
    ]


def tokenize_ids(tokenizer: PreTrainedTokenizerBase, texts: Sequence[str]) -> list[np.ndarray]:
    """Token ids (no special tokens added) of ``texts``, in one tokenizer call."""
    texts = list(texts)
    if not texts:
        return []
    if _backend_usable(tokenizer):
        backend = tokenizer.backend_tokenizer
        encode = getattr(backend, "encode_batch_fast", backend.encode_batch)
        return [np.array(enc.ids, dtype=np.int64) for enc in encode(texts, add_special_tokens=False)]
    return [np.array(ids, dtype=np.int64) for ids in tokenizer(texts, add_special_tokens=False)["input_ids"]]


def encode_conversations(
    conversations: Sequence[Sequence[Message]],
    *,
    template: ChatTemplate,
    tokenizer: PreTrainedTokenizerBase,
    roles_to_train: Sequence[str] = ("assistant",),
    train_on_eos: TrainOnEos = "turn",
    train_on_inputs: bool = False,
    batch_size: int = 1000,
    token_lengths: np.ndarray | None = None,
) -> list[Example]:
    """Encode conversations to ``(input_ids, labels)`` int64 arrays, one pair per conversation.

    ``token_lengths`` (from :func:`token_length_table`) saves rebuilding the table on every call.

    Each conversation is rendered once; each batch of ``batch_size`` texts is
    tokenized in one call. A conversation with nothing to train (e.g. user-only)
    gets all ``-100`` labels; dropping it is the caller's decision.
    """
    if isinstance(roles_to_train, str):
        raise RecipeError(f"roles_to_train must be a list of roles, got the string {roles_to_train!r}")
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    lengths = token_lengths if token_lengths is not None else token_length_table(tokenizer)
    out: list[Example] = []
    for chunk in _chunks(conversations, batch_size):
        rendered = template.render_batch(chunk)
        tokenized = tokenize_with_starts(tokenizer, [r.text for r in rendered], lengths)
        for messages, rend, (ids, starts) in zip(chunk, rendered, tokenized):
            if train_on_inputs:
                out.append((ids, ids.copy()))
                continue
            roles = [message["role"] for message in messages]
            spans = trained_spans(rend, roles, roles_to_train, train_on_eos)
            out.append((ids, labels_from_spans(ids, starts, spans)))
    return out


def token_length_table(tokenizer: PreTrainedTokenizerBase) -> np.ndarray | None:
    """Byte length of every token when the fast byte-level route applies, else None (use offsets)."""
    return byte_level_token_lengths(tokenizer) if _backend_usable(tokenizer) else None


def encode_conversation(messages: Sequence[Message], **kwargs: Any) -> Example:
    """Single-conversation convenience wrapper around :func:`encode_conversations`."""
    return encode_conversations([messages], **kwargs)[0]


def encode_completions(texts: Sequence[str], *, tokenizer: PreTrainedTokenizerBase, batch_size: int = 1000) -> list[Example]:
    """Completion mode: ``BOS + text + EOS`` (BOS only if the tokenizer has one), all tokens trained."""
    eos_id = getattr(tokenizer, "eos_token_id", None)
    if eos_id is None:
        raise RecipeError("completion mode needs a tokenizer with an eos_token")
    bos_id = getattr(tokenizer, "bos_token_id", None)
    head = np.array([bos_id] if bos_id is not None else [], dtype=np.int64)
    tail = np.array([eos_id], dtype=np.int64)
    out: list[Example] = []
    for chunk in _chunks(texts, batch_size):
        for ids in tokenize_ids(tokenizer, chunk):
            full = np.concatenate([head, ids, tail])
            out.append((full, full.copy()))
    return out
