"""`--redact` and `--redact-names` (issue #21 item 4): dates and times stay, phones, emails, URLs and IBANs go;
names match as names (case-sensitive, whole words), not as the English words they resemble."""

from __future__ import annotations

from collections import Counter

import pytest

from finetune.importers.redact import name_pattern, redact, redact_names


@pytest.mark.parametrize("text", [
    "see you on 01.12.2022", "born 05/06/1990", "due 2022-12-01", "at 21:41", "at 21:41:05",
    "31-12-22 works", "on 01.12.2022 at 21:41 sharp", "2022-12-01 21:41:05",
])
def test_dates_and_times_stay(text: str) -> None:
    counts: Counter = Counter()
    assert redact(text, counts) == text
    assert not counts


@pytest.mark.parametrize("text, expected, kind", [
    ("call +49 151 23456789", "call <phone>", "phone"),
    ("call (555) 123-4567 now", "call <phone> now", "phone"),
    ("call 0151 23456789", "call <phone>", "phone"),
    ("on 01.12.2022 call 0151 23456789", "on 01.12.2022 call <phone>", "phone"),
    ("mail a.b@example.com", "mail <email>", "email"),
    ("see https://example.com/x?a=1", "see <url>", "url"),
    ("IBAN DE89 3704 0044 0532 0130 00", "IBAN <number>", "number"),
    ("card 4111 1111 1111 1111", "card <number>", "number"),
])
def test_contact_details_are_redacted(text: str, expected: str, kind: str) -> None:
    counts: Counter = Counter()
    assert redact(text, counts) == expected
    assert counts[kind] == 1


def test_names_match_as_written_not_as_words() -> None:
    pattern = name_pattern({"Will Parker", "May"})
    counts: Counter = Counter()
    out = redact_names("I will call you in May, may I? Will Parker said Parker would. will-o-wisp", pattern, counts)
    # "May" the month cannot be told from May the person; lower-case "will" and "may" are words, not names.
    assert out == "I will call you in <name>, may I? <name> said <name> would. will-o-wisp"
    assert counts["name"] == 3


def test_name_parts_need_whole_words() -> None:
    pattern = name_pattern({"Ann Lee"})
    assert redact_names("Annette and Ann met Leela and Lee", pattern, Counter()) == "Annette and <name> met Leela and <name>"
