"""Privacy redaction: emails, URLs, phone numbers, long digit runs, other people's names."""

from __future__ import annotations

import re
from collections import Counter

# Order matters: an email or URL may contain digits, a phone number is a digit run.
_PATTERNS: list[tuple[str, re.Pattern[str]]] = [
    ("email", re.compile(r"[\w.+-]+@[\w-]+(?:\.[\w-]+)+")),
    ("url", re.compile(r"(?:https?://|www\.)[^\s<>\"]+", re.IGNORECASE)),
    # IBAN (two letters, two check digits, 11-30 alphanumerics, optionally grouped by 4).
    ("number", re.compile(r"\b[A-Z]{2}\d{2}(?: ?[A-Z0-9]{4}){2,7}(?: ?[A-Z0-9]{1,4})?\b")),
    # International: +country then 7+ more digits with spaces, dots, dashes or brackets.
    ("phone", re.compile(r"\+\d{1,3}(?:[\s.-]?\(?\d+\)?){2,6}(?=\b)")),
    # National: a trunk 0 (e.g. 0612 345 678, 030 1234567) or North American (555) 123-4567.
    ("phone", re.compile(r"(?<![\w+])(?:0\d{1,4}[\s./-]?\d{2,4}[\s./-]?\d{2,4}(?:[\s.-]?\d{2,4})?"
                         r"|\(\d{3}\)\s?\d{3}[\s.-]\d{4}|\d{3}[.-]\d{3}[.-]\d{4})(?!\w)")),
    # Cards and other long digit runs (9+ digits, optionally grouped by spaces or dashes).
    ("number", re.compile(r"(?<!\w)\d(?:[ -]?\d){8,}(?!\w)")),
]
PLACEHOLDERS = {"email": "<email>", "url": "<url>", "phone": "<phone>", "number": "<number>"}
# Dates and times are not phone numbers: 01.12.2022, 05/06/1990, 31-12-22, 2022-12-01, 21:41, 21:41:05.
_DATE_OR_TIME = re.compile(r"(?<![\w+])(?:(\d{1,2})([./-])(\d{1,2})\2(?:\d{4}|\d{2})|\d{4}-\d{1,2}-\d{1,2}"
                           r"|\d{1,2}:\d{2}(?::\d{2})?)(?!\w)")


def _phone_digits_ok(text: str) -> bool:
    return sum(c.isdigit() for c in text) >= 8


def _dates_and_times(text: str) -> list[tuple[int, int]]:
    """Spans of dates (day and month within range, either order) and clock times, left as they are."""
    spans = []
    for match in _DATE_OR_TIME.finditer(text):
        if match.group(1) is not None:
            a, b = int(match.group(1)), int(match.group(3))
            if not (1 <= a <= 31 and 1 <= b <= 31 and min(a, b) <= 12):
                continue
        spans.append(match.span())
    return spans


def redact(text: str, counts: Counter) -> str:
    """Replace emails, URLs, phone numbers and long digit runs with placeholders; count each. Dates and times
    stay as they are."""
    kept = _dates_and_times(text)
    if kept:
        pieces, last = [], 0
        for start, end in kept:
            pieces += [_redact_piece(text[last:start], counts), text[start:end]]
            last = end
        return "".join(pieces) + _redact_piece(text[last:], counts)
    return _redact_piece(text, counts)


def _redact_piece(text: str, counts: Counter) -> str:
    for kind, pattern in _PATTERNS:
        def sub(match: re.Match[str], kind: str = kind) -> str:
            if kind == "phone" and not _phone_digits_ok(match.group(0)):
                return match.group(0)
            counts[kind] += 1
            return PLACEHOLDERS[kind]

        text = pattern.sub(sub, text)
    return text


def name_pattern(names: set[str]) -> re.Pattern[str] | None:
    """A pattern matching other participants' full names and each of their words of 3+ letters, as names:
    case-sensitive, as written (participant "Will Parker" is "Will" and "Parker", never the verb "will"),
    and only as whole words."""
    words: set[str] = set()
    for name in names:
        name = name.strip()
        if not name:
            continue
        words.add(name)
        words.update(w for w in re.split(r"\s+", name) if len(w) >= 3)
    if not words:
        return None
    alternatives = "|".join(re.escape(w) for w in sorted(words, key=len, reverse=True))
    return re.compile(rf"(?<!\w)(?:{alternatives})(?!\w)")


def redact_names(text: str, pattern: re.Pattern[str] | None, counts: Counter) -> str:
    if pattern is None:
        return text
    text, n = pattern.subn("<name>", text)
    counts["name"] += n
    return text
