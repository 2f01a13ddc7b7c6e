"""Replay (long shared word spans, whole replies) and leaks (private strings also in the training data)."""

from __future__ import annotations

from finetune.report.leaks import TrainingSecrets, candidates, contact_names, leaked, speaker_names
from finetune.report.replay import TrainingReplies, replays

TRAINING = ["I have no class on Thursday afternoon so we can meet then",
            "call me on +44 7700 900123 whenever",
            "sure thing, see you soon",
            "ok"]


def test_replay_is_a_long_shared_span_or_a_whole_reply():
    index = TrainingReplies.of(TRAINING)
    replies = [
        "Well, I have no class on Thursday afternoon so we can go",  # 11 shared words in a row
        "no class on thursday",  # 4 words: not a whole training reply, no 8-word span
        "Sure thing: see you soon!",  # a whole training reply of 5 words, punctuation and case aside
        "ok",  # a whole training reply, but of one word: an everyday phrase
        "we can meet then",
    ]
    assert replays(index, replies) == [(0, TRAINING[0]), (2, TRAINING[2])]


def test_private_looking_strings():
    text = ("mail anna.k@example.org or see https://example.org/x, IBAN DE89 3704 0044 0532 0130 00, "
            "phone +44 7700 900123, order 12345678, year 2024")
    kinds = dict((t, k) for k, t in candidates(text))
    assert kinds["anna.k@example.org"] == "email"
    assert kinds["https://example.org/x"] == "url"
    assert kinds["DE89 3704 0044 0532 0130 00"] == "iban"
    assert kinds["+44 7700 900123"] == "phone"
    assert kinds["12345678"] in ("phone", "number")
    assert "2024" not in kinds


def test_names_from_contacts_and_speaker_prefixes():
    assert contact_names("Anna, Bob Stone") == {"Anna", "Bob Stone"}
    assert contact_names(None) == set()
    assert speaker_names("Anna: are you in?\nBob Stone: me too\nnot a name: x") == {"Anna", "Bob Stone"}


def test_leaked_strings_occur_in_training_and_not_in_the_prompt():
    secrets = TrainingSecrets.of(TRAINING, names={"Anna", "Bob"})
    replies = ["my number is +44 7700 900123", "it's 447700900123", "try +1 555 0100 9999",
               "Anna says hi", "Anna is here", "call 447700900123"]
    prompts = ["what's your number?", "number?", "number?", "hi", "is Anna there?", "is it 44 7700 900123?"]
    found = leaked(secrets, replies, prompts)
    assert found == [{"text": "+44 7700 900123", "kind": "phone", "count": 2},  # both spellings of one number
                     {"text": "Anna", "kind": "name", "count": 1}]
    # not leaked: a number the training data never had; Anna named in the prompt; the number in the prompt
