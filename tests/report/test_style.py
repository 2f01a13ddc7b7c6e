"""Style features on hand-made replies, and the distance they combine into."""

from __future__ import annotations

import pytest

from finetune.report.style import COMPONENTS, distances, features, jensen_shannon, language_of, laughs, style_distance


def test_features_of_hand_made_replies():
    replies = ["haha ok 😂", "Are you coming?", "WOW!!", "sure, see you at 8."]
    f = features(replies)
    assert f["words"] == pytest.approx((2 + 3 + 1 + 5) / 4)  # haha ok | Are you coming | WOW | sure see you at 8
    assert f["chars"] == pytest.approx(sum(map(len, replies)) / 4)
    letters = "hahaokAreyoucomingWOWsureseeyouat"
    assert f["lowercase"] == pytest.approx(sum(c.islower() for c in letters) / len(letters))
    assert f["emoji"] == pytest.approx(1 / 4)
    assert f["punctuation"] == pytest.approx(5 / sum(map(len, replies)))  # ? ! ! , .
    assert f["exclamation"] == pytest.approx(1 / 4)
    assert f["question"] == pytest.approx(1 / 4)
    assert f["laughter"] == pytest.approx(1 / 4)
    assert f["language"] == {"en": 0.5, "other": 0.5}  # "Are you coming?", "sure, see you": you; the rest no stopword


@pytest.mark.parametrize("text", ["lol", "LOOOL that", "hahaha", "jajaja", "kkkkk", "хахаха", "555", "lmao", "😂",
                                  "ahahah no", "jejeje"])
def test_laughter_tokens(text):
    assert laughs(text)


@pytest.mark.parametrize("text", ["hello", "lola", "the 55 bus", "kk", "ha", "Johannes"])
def test_not_laughter(text):
    assert not laughs(text)


@pytest.mark.parametrize("text,lang", [("I think that is fine", "en"), ("no sé, pero está bien para mí", "es"),
                                       ("привет, как дела", "ru"), ("ich bin nicht da und du", "de"),
                                       ("😂😂", "other"), ("こんにちは", "ja")])
def test_language_heuristic(text, lang):
    assert language_of(text) == lang


def test_identical_sets_are_at_distance_zero_and_different_ones_are_not():
    mine = ["lol yeah", "omg no way!!", "haha see u at 8", "sure 😂"]
    parts = distances(mine, list(reversed(mine)))
    assert set(parts) == set(COMPONENTS)
    assert style_distance(parts) == 0.0
    formal = ["I would be delighted to attend the meeting.", "Please find the requested document attached.",
              "Thank you for your message; I shall reply tomorrow.", "Certainly. The answer is forty-two."]
    far = distances(mine, formal)
    assert far["laughter"] == pytest.approx(0.75)  # lol, haha, 😂 vs none
    assert far["vocabulary"] == pytest.approx(1.0)  # no word in common
    assert 0.3 < style_distance(far) <= 1.0
    closer = distances(mine, ["lol no", "haha yeah!!", "ok see u 😂", "omg sure"])
    assert style_distance(closer) < style_distance(far)


def test_jensen_shannon():
    from collections import Counter

    assert jensen_shannon(Counter("aab"), Counter("aab")) == 0.0
    assert jensen_shannon(Counter("aa"), Counter("bb")) == pytest.approx(1.0)
    assert jensen_shannon(Counter("ab"), Counter("ac")) == pytest.approx(0.5)
