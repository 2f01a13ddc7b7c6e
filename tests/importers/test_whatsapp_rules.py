"""WhatsApp import rules that need no language (issues #21 item 12, #22): group lines whose subject holds
`: `, `~ Name` senders, placeholders of a language the tables lack, captions, polls, locations, the chat's
label from the file name, and what the summary says."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from finetune.cli import main
from finetune.importers.conversations import ImportOptions, Stats
from finetune.importers.whatsapp import chat_label, read_whatsapp

NNBSP, LRM = "\u202f", "\u200e"


def read(tmp_path: Path, text: str, name: str = "chat.txt") -> tuple[list, Stats]:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    stats = Stats()
    return read_whatsapp(path, ImportOptions(me="Me"), None, stats), stats


def run(tmp_path: Path, text: str, name: str = "chat.txt", extra: tuple = ()) -> tuple[int, list[dict]]:
    path = tmp_path / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    out = tmp_path / "out.jsonl"
    rc = main(["import", "whatsapp", str(path), "--me", "Me", "-o", str(out), "--overwrite", *extra])
    rows = [json.loads(line) for line in out.read_text(encoding="utf-8").splitlines()] if rc == 0 else []
    return rc, rows


def test_group_subject_with_colon_is_a_system_line_not_a_sender(tmp_path: Path) -> None:
    """Issue #21 item 12: `Alice created group "Trip: 2023"` used to become sender `Alice created group "Trip`
    saying `2023"`. Quoted subjects and whole-line event templates make it a system line."""
    messages, stats = read(tmp_path, "\n".join([
        '31/12/22, 21:40 - Alice created group "Trip: 2023"',
        "31/12/22, 21:40 - Alice changed the subject from “Trip: 2023” to “Trip: 2024”",
        "31/12/22, 21:41 - Alice: who is in?",
        "31/12/22, 21:42 - Me: me: of course",  # `: ` inside a real message stays text
        "31/12/22, 21:43 - Bob: Alice left",  # a person saying something that reads like an event
        "31/12/22, 21:44 - Bob: one more",
    ]) + "\n")
    assert [(m.sender, m.text) for m in messages] == [("Alice", "who is in?"), ("Me", "me: of course"),
                                                       ("Bob", "Alice left"), ("Bob", "one more")]
    assert stats.dropped["system line"] == 2


def test_tilde_and_invisible_characters_are_cleaned_from_senders(tmp_path: Path) -> None:
    messages, _ = read(tmp_path, "\n".join([
        f"31/12/22, 21:41 - ~{NNBSP}Alice: hi",  # newer Android: a sender who is not in your contacts
        "31/12/22, 21:42 - ~\u00a0Alice: again",
        f"[31/12/22, 21:43:00] \u202a+49 151 23456789\u202c: from a number",
        "31/12/22, 21:44 - Me: hello",
    ]) + "\n")
    assert [m.sender for m in messages] == ["Alice", "Alice", "+49 151 23456789", "Me"]


def test_placeholder_of_a_language_without_tables_is_dropped_and_reported(tmp_path: Path, capsys) -> None:
    """Czech is not in the tables: `<Média vynechány>` (sent 3 times by 2 people) and the edit marker
    `<Zpráva byla upravena>` are WhatsApp's; a `<sigh>` sent once is a person's words and stays."""
    lines = ["23.03.22 13:31 - Jana: <Média vynechány>", "23.03.22 13:32 - Me: <Média vynechány>",
             "23.03.22 13:33 - Jana: <Média vynechány>", "23.03.22 13:34 - Jana: ahoj <Zpráva byla upravena>",
             "23.03.22 13:35 - Me: <sigh>", "23.03.22 13:36 - Jana: jak se máš <Zpráva byla upravena>",
             "23.03.22 13:37 - Me: dobře <Zpráva byla upravena>"]
    rc, rows = run(tmp_path, "\n".join(lines) + "\n")
    assert rc == 0
    assert [t["content"] for t in rows[0]["messages"]] == ["ahoj", "<sigh>", "jak se máš", "dobře"]
    err = capsys.readouterr().err
    assert "dropped: placeholder not in the tables" in err and "'<Média vynechány>': 3x, from 2 senders" in err
    assert "'<Zpráva byla upravena>': 3x, from 2 senders" in err


def test_captions_kept_file_names_and_media_dropped(tmp_path: Path) -> None:
    messages, stats = read(tmp_path, "\n".join([
        "31/12/22, 21:41 - Alice: <Media omitted>", "look at this view",  # a photo's caption (Android)
        "31/12/22, 21:42 - Alice: <Media omitted>", "Report 2022.pdf",  # a document's name, not words
        "31/12/22, 21:43 - Alice: IMG-20221231-WA0001.jpg (file attached)",  # media exported, no caption
        "31/12/22, 21:44 - Me: nice",
    ]) + "\n")
    assert [m.text for m in messages] == ["look at this view", "nice"]
    assert stats.dropped["media omitted"] == 2 and stats.dropped["attachment"] == 1
    assert stats.cleaned["caption kept, media dropped"] == 1


def test_polls_are_dropped_whole_in_any_language(tmp_path: Path) -> None:
    messages, stats = read(tmp_path, "\n".join([
        "20.08.24, 22:02 - Alice: POLL:", "Where do we eat?", "OPTION: tacos (1 vote)", "OPTION: pizza (3 votes)",
        "20.08.24, 22:03 - Alice: ANKETA:", "Kdy?", "MOŽNOST: pátek (2 hlasy)",  # Czech: no table, same shape
        "20.08.24, 22:04 - Me: tacos",
    ]) + "\n")
    assert [m.text for m in messages] == ["tacos"]
    assert stats.dropped["poll"] == 2


def test_shared_locations_are_dropped(tmp_path: Path) -> None:
    messages, stats = read(tmp_path, "\n".join([
        "27/03/22, 21:56 - Alice: location: https://maps.google.com/?q=51.5021456,-0.127397",
        "27/03/22, 21:57 - Alice: Pimlico Gardens", "London, United Kingdom",
        "https://foursquare.com/v/4e89af95e5fa82ad4c0aa03b",
        "27/03/22, 21:58 - Me: see https://maps.google.com/?q=1,2 for the place",  # a person's sentence
    ]) + "\n")
    assert [m.text for m in messages] == ["see https://maps.google.com/?q=1,2 for the place"]
    assert stats.dropped["location"] == 2


@pytest.mark.parametrize("name, label", [
    ("WhatsApp Chat with Alice.txt", "Alice"),
    ("WhatsApp-Chat mit Alice.txt", "Alice"),
    ("Chat de WhatsApp con Alice Smith.txt", "Alice Smith"),
    ("Conversa do WhatsApp com Alice (1).txt", "Alice"),
    ("Discussion WhatsApp avec Les amis.txt", "Les amis"),
    ("Чат WhatsApp с\u00a0контактом Алиса.txt", "Алиса"),
    ("Alice ile WhatsApp Sohbeti.txt", "Alice"),
    ("WhatsApp Chat - Trip 2023/_chat.txt", "Trip 2023"),  # iOS: the folder is named after the chat
    ("Alice/_chat.txt", "Alice"),
    ("notes.txt", None),
])
def test_chat_label_from_file_name(tmp_path: Path, name: str, label: str | None) -> None:
    assert chat_label(tmp_path / name) == label


def test_rows_carry_contact_and_summary_counts_replies_per_contact(tmp_path: Path, capsys) -> None:
    chat = "\n".join([f"0{d}/01/23, 10:00 - Alice: question {d}?\n0{d}/01/23, 10:01 - Me: my answer number {d}"
                      for d in range(1, 4)]) + "\n"
    (tmp_path / "WhatsApp Chat with Alice.txt").write_text(chat, encoding="utf-8")
    bob = chat.replace("Alice", "Bob")
    (tmp_path / "other.txt").write_text(bob[: bob.index("\n03/")], encoding="utf-8")
    out = tmp_path / "out.jsonl"
    assert main(["import", "whatsapp", str(tmp_path / "WhatsApp Chat with Alice.txt"), str(tmp_path / "other.txt"),
                 "--me", "Me", "-o", str(out), "--gap", "1h"]) == 0
    rows = [json.loads(line) for line in out.read_text(encoding="utf-8").splitlines()]
    assert [r["contact"] for r in rows] == ["Alice"] * 3 + ["Bob"] * 2  # other.txt: no name, so its sender
    assert all(re.fullmatch(r"2023-01-0[1-3]T\d\d:\d\d:00\+00:00", r["start"]) for r in rows)
    lines = capsys.readouterr().err.splitlines()
    assert next(line for line in lines if line.startswith("your replies kept")).split()[-1] == "5"
    assert next(line for line in lines if line.startswith("your words kept")).split()[-1] == "20"
    per_contact = [line.split() for line in lines if line.startswith("  Alice") or line.startswith("  Bob")]
    assert per_contact == [["Alice", "3", "replies", "12", "words"], ["Bob", "2", "replies", "8", "words"]]
    assert any(line.startswith("how much data: 5 conversations — below the 10 examples OpenAI") for line in lines)


def test_direction_marks_drop_ios_bodies_but_only_attachments_on_android(tmp_path: Path, capsys) -> None:
    """iOS starts what it writes with U+200E; on Android only attachment lines start so. A marked iOS body
    not in the tables is left out and listed in the summary, so a wrong guess is visible."""
    messages, stats = read(tmp_path, "\n".join([
        f"23.03.22 13:31 - Jana: {LRM}Alex.vcf (soubor byl přiložen)",  # Czech: no table, still an attachment
        f"23.03.22 13:32 - Jana: {LRM}שלום, מה נשמע?",  # a person's words that happen to start with a mark
        "23.03.22 13:33 - Me: ahoj",
    ]) + "\n")
    assert [m.text for m in messages] == ["שלום, מה נשמע?", "ahoj"]
    assert stats.dropped["attachment"] == 1
    rc, rows = run(tmp_path, "\n".join([
        f"[23.03.22 13:31:00] Jana: {LRM}Zprávy a hovory jsou opatřeny koncovým šifrováním.",
        "[23.03.22 13:32:00] Jana: ahoj", "[23.03.22 13:33:00] Me: nazdar",
    ]) + "\n", name="ios.txt")
    assert rc == 0 and [t["content"] for t in rows[0]["messages"]] == ["ahoj", "nazdar"]
    err = capsys.readouterr().err
    assert "dropped: marked by WhatsApp (not in the tables)" in err
    assert "'zprávy a hovory jsou opatřeny koncovým šifrováním': 1x, from 1 sender" in err
