"""Near-duplicate conversations (MinHash + LSH through `rensa`) and filler assistant turns.

Near-duplicates (`dedup: near`). The text compared is every non-system turn of a conversation,
one `role: content` line each (a completion sample is one `text: content` line; line breaks inside a
turn become spaces; system turns are left out, since a system prompt shared by every row would make
short conversations look alike and every pair an LSH candidate). It is lower-cased and cut into tokens:

* words (runs of letters, digits and their combining marks);
* every emoji or other symbol, one token per grapheme (`🎉🎉` is two tokens, `👍🏽` and `🇩🇪` one each),
  so a reply that is only emoji is compared by its emoji;
* a run of punctuation standing alone between spaces (`:)`, `?`, `...`); punctuation attached to a
  word (`job?`, `Hello,`) is ignored, as are spacing and invisible format characters;
* each turn starts with a marker token for its role (`<user>`, `<assistant>`), which no content can
  produce (a token of the text is a word, one grapheme, or a punctuation run), so neither the role
  names nor a turn boundary can match words of a message.

Its shingles are the distinct runs of `dedup_ngram` tokens (the whole text when it is shorter).
Conversations are visited in
dataset order, before the shuffle. LSH proposes earlier *kept* conversations with similar
MinHash signatures; a candidate counts only when the exact Jaccard similarity of the two
shingle sets is at least `dedup_threshold`, and the conversation is then removed, so the
first of each group of copies is the one kept and nothing below the threshold is ever
removed. The MinHash permutations are seeded with the recipe's `seed`: the same data and
settings give the same removals on every run. Why rensa: docs/benchmarks.md.

Filler (`min_assistant_chars`): an assistant turn whose stripped text is shorter than N
characters is removed together with the user/tool turns just before it (the exchange it
answers), so the roles still alternate and no turn is left answering nothing.
"""

from __future__ import annotations

import logging
from collections.abc import MutableMapping
from dataclasses import dataclass

import regex

from finetune.data.formats import ROLES, Sample
from finetune.errors import MissingDependencyError

logger = logging.getLogger(__name__)

NUM_PERM = 128  # MinHash permutations per signature
TOKEN = regex.compile(
    r"(?<!\S)\p{P}+(?!\S)"  # punctuation standing alone: ":)", "?", "..."
    r"|[\w\p{M}]+"  # a word, with its combining marks
    r"|(?![\s\p{P}\p{C}])\X"  # one emoji or other symbol (a whole grapheme cluster)
)
COMPLETION = "text"  # the role name of a completion sample's line
MARKED = frozenset((*ROLES, COMPLETION))


@dataclass(frozen=True)
class NearDuplicate:
    """A removed conversation, the earlier kept one it matched (indices in the order given), and their Jaccard."""

    kept: int
    removed: int
    similarity: float


def conversation_text(sample: Sample) -> str:
    """The text compared for near-duplicates: the non-system turns, `role: content` per line (line
    breaks inside a turn become spaces); a completion sample is one `text: content` line."""
    if isinstance(sample, str):
        return f"{COMPLETION}: {_one_line(sample)}"
    return "\n".join(
        f"{message['role']}: {_one_line(message['content'])}" for message in sample if message["role"] != "system"
    )


def _one_line(content: str) -> str:
    return content.replace("\n", " ")


def tokens(text: str) -> list[str]:
    """The tokens of a text (see the module doc): a `<role>` marker opening each `role: ` line, then the
    words, symbols and standalone punctuation runs of the lower-cased content. A line without a role
    prefix is content only."""
    out: list[str] = []
    for line in text.split("\n"):
        role, colon, content = line.partition(": ")
        if colon and role in MARKED:
            out.append(f"<{role}>")
        else:
            content = line
        out += TOKEN.findall(content.lower())
    return out


def shingles(text: str, ngram: int) -> set[str]:
    """Distinct token n-grams of the text (the whole text when shorter than ngram tokens). Tokens hold no
    whitespace, so joining them with spaces is unambiguous."""
    words = tokens(text)
    if len(words) <= ngram:
        return {" ".join(words)}
    return set(map(" ".join, zip(*(words[i:] for i in range(ngram)))))


def jaccard(left: set[str], right: set[str]) -> float:
    """Exact Jaccard similarity of two shingle sets."""
    union = len(left | right)
    return len(left & right) / union if union else 1.0


def bands_for(threshold: float, num_perm: int = NUM_PERM) -> int:
    """LSH bands b (rows r = num_perm / b) whose S-curve midpoint (1/b)^(1/r) lies just below the
    threshold: recall first, since every candidate is then checked exactly."""
    options = [b for b in range(1, num_perm + 1) if num_perm % b == 0]
    below = [b for b in options if (1 / b) ** (b / num_perm) <= threshold - 0.05]
    return min(below) if below else num_perm


def near_duplicates(samples: list[Sample], *, threshold: float, ngram: int, seed: int) -> list[NearDuplicate]:
    """Every sample to remove (in order), each with the earlier kept one it duplicates."""
    finder = NearDuplicateFinder(threshold=threshold, ngram=ngram, seed=seed, kept_texts={})
    found = [pair for sample in samples if (pair := finder.check(sample)) is not None]
    logger.info("near-duplicates: %d of %d conversations removed", len(found), len(samples))
    return found


class NearDuplicateFinder:
    """The near-duplicate rule one conversation at a time, in dataset order (see the module doc).

    `check` numbers the conversations it sees 0, 1, 2...; it returns the match for a duplicate (which
    is not remembered) and None for a kept one, whose MinHash signature joins the LSH index and whose
    text goes into `kept_texts` (any mapping: a dict, or an on-disk store when the corpus is large),
    read back only to compute the exact Jaccard similarity of an LSH candidate.
    """

    def __init__(self, *, threshold: float, ngram: int, seed: int, kept_texts: MutableMapping[int, str]) -> None:
        try:
            from rensa import RMinHash, RMinHashLSH
        except ImportError:  # pragma: no cover - a main dependency
            raise MissingDependencyError("dedup: near needs rensa: pip install 'rensa>=0.5,<0.6'") from None
        self._minhash = RMinHash
        self.lsh = RMinHashLSH(threshold=threshold, num_perm=NUM_PERM, num_bands=bands_for(threshold))
        self.threshold, self.ngram, self.seed = threshold, ngram, seed
        self.kept_texts = kept_texts
        self.seen = 0

    def check(self, sample: Sample) -> NearDuplicate | None:
        index, self.seen = self.seen, self.seen + 1
        text = conversation_text(sample)
        tokens = shingles(text, self.ngram)
        signature = self._minhash(num_perm=NUM_PERM, seed=self.seed)
        signature.update(list(tokens))  # a minimum: order-free
        best, match = 0.0, -1
        for candidate in sorted(self.lsh.query(signature)):
            similarity = jaccard(tokens, shingles(self.kept_texts[candidate], self.ngram))
            if similarity > best:
                best, match = similarity, candidate
        if best >= self.threshold:
            return NearDuplicate(kept=match, removed=index, similarity=round(best, 4))
        self.kept_texts[index] = text
        self.lsh.insert(index, signature)
        return None


def excerpts(kept: str, removed: str, chars: int) -> tuple[str, str]:
    """Both texts on one line each (turns joined by " ⏎ "), at most `chars` long, starting shortly
    before their first difference when that lies beyond the cut (marked by a leading "…")."""
    texts = [" ⏎ ".join(text.splitlines()) for text in (kept, removed)]
    same = next((i for i, (a, b) in enumerate(zip(*texts)) if a != b), min(map(len, texts)))
    start = same - 40 if same > chars - 40 else 0
    cuts = [("…" if start else "") + text[start:] for text in texts]
    left, right = (cut if len(cut) <= chars else cut[: chars - 1] + "…" for cut in cuts)
    return left, right


def drop_filler_turns(sample: Sample, min_chars: int) -> tuple[Sample, int]:
    """The sample without assistant turns shorter than min_chars (stripped) and the user/tool turns
    they answer; and how many assistant turns were removed. Completion samples are unchanged."""
    if isinstance(sample, str) or min_chars <= 0:
        return sample, 0
    out: list = []
    pending: list = []
    removed = 0
    for message in sample:
        if message["role"] == "assistant":
            if len(message["content"].strip()) < min_chars:
                removed += 1
            else:
                out += pending + [message]
            pending = []
        elif message["role"] == "system" and not out and not pending:
            out.append(message)
        else:
            pending.append(message)
    return out + pending, removed


def has_assistant(sample: Sample) -> bool:
    """Whether a chat sample has an assistant turn left (a completion sample counts as one)."""
    return isinstance(sample, str) or any(message["role"] == "assistant" for message in sample)
