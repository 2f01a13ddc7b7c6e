"""Style features of a set of replies, and the style distance between two sets (0 = indistinguishable).

Features (each over all replies of one model, or of your real replies):

| feature | what it is |
|---|---|
| `words` | mean words per reply (a word: a run of letters, digits, `'` or `_`) |
| `chars` | mean characters per reply |
| `lowercase` | share of cased letters that are lowercase |
| `emoji` | emoji per reply |
| `punctuation` | punctuation marks per character |
| `exclamation` | share of replies with a `!` |
| `question` | share of replies with a `?` |
| `laughter` | share of replies with a laughter token (LAUGHTER: lol, haha, hehe, jaja, kkk, xaxa/хаха, 555, lmao, 😂, 🤣 ...) |
| `language` | share of replies per language (`language_of`: script, then stopwords for Latin script) |

Distance between your replies (`real`) and a model's, per feature, each in [0, 1]:
- `words`, `chars`: relative difference |a - b| / max(a, b);
- `emoji`, `punctuation`: relative difference with a floor, |a - b| / max(a, b, FLOOR) (a small absolute
  difference between two near-zero rates is not a large style difference);
- shares (`lowercase`, `exclamation`, `question`, `laughter`): absolute difference |a - b|;
- `language`: total variation distance between the two language distributions;
- `vocabulary`: Jensen-Shannon divergence (base 2) between the two word distributions (lowercased).

The style distance is the mean of these ten numbers: 0 when the two sets are indistinguishable by all of
them, 1 at most.
"""

from __future__ import annotations

import math
import re
import unicodedata
from collections import Counter
from typing import Sequence

WORD = re.compile(r"[\w']+", re.UNICODE)
LAUGHTER = re.compile(
    r"(?<!\w)(?:l+o+l+[lo]*|lmf?ao+|rofl|a?(?:ha){2,}h?|a?(?:he){2,}h?|(?:ja){2,}j?|(?:je){2,}j?|k{3,}|"
    r"(?:xa){2,}|(?:ха){2,}х?|(?:хе){2,}|5{3,}|w{3,}|jsj[sj]*|rs(?:rs)+)(?!\w)|[\U0001F602\U0001F923\U0001F606]",
    re.IGNORECASE,
)
FLOORS = {"emoji": 0.2, "punctuation": 0.02}
SHARES = ("lowercase", "exclamation", "question", "laughter")
SCALARS = ("words", "chars", "lowercase", "emoji", "punctuation", "exclamation", "question", "laughter")
COMPONENTS = (*SCALARS, "language", "vocabulary")

STOPWORDS = {
    "en": "the and you is are to of it that for not this have what with was but just",
    "es": "el la que de los las y es no por para con una pero qué como está",
    "pt": "o a que de os as e é não para com uma mas você está isso muito",
    "de": "der die das und ist nicht ich du ein eine zu mit auch was aber",
    "fr": "le la les et est pas je tu un une que de avec mais pour c'est",
    "it": "il la che di e è non per un una con ma sono anche come",
    "nl": "de het een en is niet ik je dat van op te met maar",
}
STOPWORD_SETS = {lang: set(words.split()) for lang, words in STOPWORDS.items()}
SCRIPTS = (("CYRILLIC", "ru"), ("ARABIC", "ar"), ("HEBREW", "he"), ("GREEK", "el"), ("THAI", "th"),
           ("DEVANAGARI", "hi"), ("HANGUL", "ko"), ("HIRAGANA", "ja"), ("KATAKANA", "ja"), ("CJK", "zh"))


def words(text: str) -> list[str]:
    return WORD.findall(text)


def is_emoji(char: str) -> bool:
    code = ord(char)
    return (0x1F300 <= code <= 0x1FAFF or 0x2600 <= code <= 0x27BF or 0x1F000 <= code <= 0x1F2FF
            or 0x1F900 <= code <= 0x1F9FF)


def language_of(text: str) -> str:
    """A cheap guess: the most common non-Latin script among the letters, else the language whose stopwords
    occur most (ties to `en`), else `other` (no letters, or Latin letters with no known stopword)."""
    scripts: Counter[str] = Counter()
    latin = 0
    for char in text:
        if not char.isalpha():
            continue
        name = unicodedata.name(char, "")
        for prefix, lang in SCRIPTS:
            if name.startswith(prefix):
                scripts[lang] += 1
                break
        else:
            latin += name.startswith("LATIN")
    if scripts and scripts.most_common(1)[0][1] >= latin:
        return scripts.most_common(1)[0][0]
    tokens = [w.lower() for w in words(text)]
    hits = {lang: sum(t in stop for t in tokens) for lang, stop in STOPWORD_SETS.items()}
    best = max(hits, key=lambda lang: (hits[lang], lang == "en"))
    return best if hits[best] else "other"


def laughs(text: str) -> bool:
    return LAUGHTER.search(text) is not None


def features(replies: Sequence[str]) -> dict[str, object]:
    """The feature values of `replies` (see the module doc); zeros for no replies."""
    n = max(len(replies), 1)
    chars = sum(len(r) for r in replies)
    letters = [c for r in replies for c in r if c.isalpha() and (c.islower() or c.isupper())]
    punctuation = sum(unicodedata.category(c).startswith("P") for r in replies for c in r)
    languages = Counter(language_of(r) for r in replies)
    return {
        "words": sum(len(words(r)) for r in replies) / n,
        "chars": chars / n,
        "lowercase": sum(c.islower() for c in letters) / len(letters) if letters else 0.0,
        "emoji": sum(is_emoji(c) for r in replies for c in r) / n,
        "punctuation": punctuation / chars if chars else 0.0,
        "exclamation": sum("!" in r for r in replies) / n,
        "question": sum("?" in r for r in replies) / n,
        "laughter": sum(laughs(r) for r in replies) / n,
        "language": {lang: count / n for lang, count in sorted(languages.items())},
    }


def jensen_shannon(a: Counter, b: Counter) -> float:
    """Jensen-Shannon divergence (base 2, in [0, 1]) between two count distributions; 0 when both are empty."""
    total_a, total_b = sum(a.values()), sum(b.values())
    if not total_a and not total_b:
        return 0.0
    if not total_a or not total_b:
        return 1.0
    value = 0.0
    for key in set(a) | set(b):
        p, q = a.get(key, 0) / total_a, b.get(key, 0) / total_b
        m = (p + q) / 2
        value += (p * math.log2(p / m) if p else 0.0) + (q * math.log2(q / m) if q else 0.0)
    return max(0.0, min(1.0, value / 2))


def vocabulary(replies: Sequence[str]) -> Counter:
    return Counter(w.lower() for r in replies for w in words(r))


def distances(real: Sequence[str], generated: Sequence[str]) -> dict[str, float]:
    """Per-feature distances in [0, 1] between your replies and a model's (module doc)."""
    a, b = features(real), features(generated)
    out: dict[str, float] = {}
    for name in SCALARS:
        x, y = float(a[name]), float(b[name])  # type: ignore[arg-type]
        if name in SHARES:
            out[name] = abs(x - y)
        else:
            scale = max(x, y, FLOORS.get(name, 0.0))
            out[name] = abs(x - y) / scale if scale else 0.0
    lang_a, lang_b = a["language"], b["language"]
    assert isinstance(lang_a, dict) and isinstance(lang_b, dict)
    out["language"] = sum(abs(lang_a.get(k, 0.0) - lang_b.get(k, 0.0)) for k in set(lang_a) | set(lang_b)) / 2
    out["vocabulary"] = jensen_shannon(vocabulary(real), vocabulary(generated))
    return {name: min(1.0, value) for name, value in out.items()}


def style_distance(parts: dict[str, float]) -> float:
    """The one score: the mean of the per-feature distances (0 = indistinguishable by these measures)."""
    return sum(parts[name] for name in COMPONENTS) / len(COMPONENTS)
