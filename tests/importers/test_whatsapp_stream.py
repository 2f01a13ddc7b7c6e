"""WhatsApp exports are read in two streaming passes (issue #22): the rows are those of the whole chat read at
once, and memory does not follow the export's size."""

from __future__ import annotations

import json
import tracemalloc
from pathlib import Path

import pytest

from finetune.cli import main
from finetune.importers.conversations import ImportOptions, Stats, chat_rows, is_me
from finetune.importers.whatsapp import import_whatsapp, read_whatsapp

LRM = "\u200e"
# Every rule that needs the whole file: the `Name` count that makes `Bob: Alice left` words and not an event
# (Bob has more than 2 messages) while `Alice changed the group description` stays an event; a `<...>`
# placeholder and an edit marker of a language without tables (3 times, 3 senders; `<sigh>` once stays);
# a sender whose only message is media (not a participant for the label or the pseudonyms: Aaron would be
# `Person 1`); dates day-first from line 9 on.
CHAT = "\n".join([
    "01/02/23, 10:00 - Alice: hi <Zpráva byla upravena>",
    "01/02/23, 10:01 - Bob: Alice left",
    "01/02/23, 10:02 - Me: hello <Zpráva byla upravena>",
    "01/02/23, 10:03 - Aaron: <Media omitted>",
    "01/02/23, 10:04 - Alice changed the group description",
    "01/02/23, 10:05 - Bob: <Média vynechány>",
    "01/02/23, 10:06 - Me: <sigh>",
    "01/02/23, 10:07 - Alice: <Média vynechány>",
    "13/02/23, 09:00 - Bob: again <Zpráva byla upravena>",
    "13/02/23, 09:01 - Me: <Média vynechány>",
    "13/02/23, 09:02 - Bob: how are you",
    "13/02/23, 09:03 - Me: fine, Bob", "and you Alice?",
    "13/02/23, 09:04 - Alice: IMG-1.jpg (file attached)", "a caption",
]) + "\n"


@pytest.mark.parametrize("redact_names, speaker_names", [(False, False), (True, True)])
def test_streamed_rows_and_stats_equal_the_whole_chat_read_at_once(tmp_path: Path, redact_names: bool,
                                                                  speaker_names: bool) -> None:
    path = tmp_path / "chat.txt"  # a name that says nothing: the label comes from the senders
    path.write_text(CHAT, encoding="utf-8")
    options = ImportOptions(me="Me", redact_names=redact_names, speaker_names=speaker_names)
    whole = Stats()
    messages = read_whatsapp(path, options, None, whole)
    for m in messages:
        whole.senders[m.sender] += 1
        whole.me_spoke += is_me(options, set(), m)
    expected = list(chat_rows(messages, options, set(), whole))
    streamed, rows = Stats(), []
    import_whatsapp([path], options, None, rows.append, streamed)
    assert rows == expected
    assert vars(streamed) == vars(whole)
    assert [m.sender for m in messages].count("Aaron") == 0
    assert whole.dropped["placeholder not in the tables"] == 3 and whole.cleaned["marker not in the tables removed"] == 3
    assert len(rows) == 2 and rows[0]["contact"] == (rows[1]["contact"] if redact_names else "Alice, Bob")
    assert rows[0]["messages"][0]["content"] == ("Person 1: hi\nPerson 2: <name> left" if speaker_names
                                                 else "hi\nAlice left")


def _export(path: Path, conversations: int) -> None:
    """A day-first Android export of `conversations` exchanges 7 hours apart, ~500 bytes a message."""
    words = "film tonight привет кино 👍 café déjà vu maybe tomorrow ".split()
    text = " ".join(words * 8)
    with path.open("w", encoding="utf-8") as f:
        for i in range(conversations):
            hours = i * 7
            day, hour = 1 + hours // 24 % 28, hours % 24
            month, year = 1 + hours // (24 * 28) % 12, 20 + hours // (24 * 28 * 12)
            stamp = f"{day:02d}/{month:02d}/{year}, {hour:02d}"
            f.write(f"{stamp}:00 - Alice: question {i} {text}\n{stamp}:01 - Alice: <Media omitted>\n"
                    f"{stamp}:02 - Me: answer {i} {text}\nsecond line {LRM}{text}\n")


def test_memory_does_not_follow_the_export_size(tmp_path: Path) -> None:
    """A ~24 MB export is imported with a peak of Python allocations below its size (~15 MiB: a chunk of the
    file, its lines, one conversation); the reader that held every line's match and message peaked at ~320 MiB."""
    path = tmp_path / "WhatsApp Chat with Alice.txt"
    _export(path, 13_000)
    size = path.stat().st_size
    assert size > 18_000_000
    out = tmp_path / "out.jsonl"
    tracemalloc.start()
    try:
        assert main(["import", "whatsapp", str(path), "--me", "Me", "-o", str(out), "--no-progress"]) == 0
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    with out.open(encoding="utf-8") as f:
        count = sum(1 for _ in f)
        assert count == 13_000
    first = json.loads(out.read_text(encoding="utf-8").split("\n", 1)[0])
    assert first["contact"] == "Alice" and first["messages"][1]["content"].startswith("answer 0 ")
    assert peak < 32 * 2**20, f"peak {peak / 2**20:.0f} MiB of Python allocations for a {size / 1e6:.0f} MB export"
