"""`finetune import telegram`: single-chat and full-account exports built here, content checked."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from finetune.cli import main

T0 = 1_700_000_000
HOUR = 3600


def msg(i: int, t: int, who: str, text, **extra) -> dict:
    ids = {"Me": "user1", "Alice": "user2", "Bob": "user3"}
    return {"id": i, "type": "message", "date": "2023-11-14T22:13:20", "date_unixtime": str(T0 + t),
            "from": who, "from_id": ids[who], "text": text, **extra}


def chat_messages() -> list[dict]:
    return [
        {"id": 1, "type": "service", "date_unixtime": str(T0), "actor": "Alice", "action": "create_group",
         "text": "SERVICE-LINE"},
        msg(2, 10, "Me", "i start, nobody asked"),  # leading own message: trimmed
        msg(3, 20, "Alice", "hey, seen any good films?"),
        msg(4, 30, "Alice", ["check ", {"type": "link", "text": "https://example.com/x"}, " out"]),
        msg(5, 40, "Me", "the grand budapest hotel", edited="2023-11-14T22:20:00"),
        msg(6, 50, "Me", "trust me"),
        msg(7, 60, "Alice", "", photo="photos/p.jpg"),  # no caption: nothing to keep
        msg(8, 70, "Alice", "", file="stickers/s.webp", media_type="sticker", sticker_emoji="x"),
        # A poll is dropped whole, even were its question in `text` (Telegram puts it in `poll`).
        msg(9, 80, "Alice", "POLL-QUESTION?", poll={"question": "POLL-QUESTION?", "answers": []}),
        msg(10, 90, "Alice", "unanswered at the end"),
        # 7 hours later: a new conversation
        msg(11, 90 + 7 * HOUR, "Alice", "mail me at alice@example.org or +44 20 7946 0958"),
        # A photo's caption is Alice's own words: kept as the message, the photo dropped.
        msg(13, 95 + 7 * HOUR, "Alice", [{"type": "bold", "text": "sunset"}, " from the roof"],
            photo="photos/q.jpg", width=800, height=600),
        msg(12, 100 + 7 * HOUR, "Me", "card 4111 1111 1111 1111, call 0612 345 678"),
    ]


def write(tmp_path: Path, data) -> Path:
    path = tmp_path / "result.json"
    path.write_text(json.dumps(data, ensure_ascii=False, indent=1), encoding="utf-8")
    return path


def rows(path: Path) -> list[list[dict]]:
    return [json.loads(line)["messages"] for line in path.read_text(encoding="utf-8").splitlines()]


def test_single_chat_roles_merge_trim_and_gap(tmp_path: Path, capsys) -> None:
    export = write(tmp_path, {"name": "Alice", "type": "personal_chat", "id": 2, "messages": chat_messages()})
    out = tmp_path / "out.jsonl"
    assert main(["import", "telegram", str(export), "--me", "Me", "-o", str(out)]) == 0
    first, second = rows(out)
    assert first == [
        {"role": "user", "content": "hey, seen any good films?\ncheck https://example.com/x out"},
        {"role": "assistant", "content": "the grand budapest hotel\ntrust me"},
    ]
    assert [t["role"] for t in second] == ["user", "assistant"]
    assert second[0]["content"] == "mail me at alice@example.org or +44 20 7946 0958\nsunset from the roof"
    text = out.read_text()
    for never in ("SERVICE-LINE", "POLL-QUESTION", "nobody asked", "unanswered at the end", "photos/"):
        assert never not in text
    summary = {line.rsplit(None, 1)[0].strip(): line.rsplit(None, 1)[1] for line in capsys.readouterr().err.splitlines()
               if line.startswith(("  dropped", "  cleaned"))}
    assert summary["dropped: poll"] == "1"
    assert summary["dropped: media or sticker without a caption"] == "2"
    assert summary["cleaned: caption kept, media dropped"] == "1"


def test_me_by_id_and_redaction(tmp_path: Path, capsys) -> None:
    export = write(tmp_path, {"name": "Alice", "type": "personal_chat", "id": 2, "messages": chat_messages()})
    out = tmp_path / "out.jsonl"
    assert main(["import", "telegram", str(export), "--me", "user1", "-o", str(out), "--redact",
                 "--redact-names", "--system", "you are me"]) == 0
    first, second = rows(out)
    assert first[0] == {"role": "system", "content": "you are me"}
    assert first[1]["content"] == "hey, seen any good films?\ncheck <url> out"
    assert second[1] == {"role": "user", "content": "mail me at <email> or <phone>\nsunset from the roof"}
    assert second[2] == {"role": "assistant", "content": "card <number>, call <phone>"}
    assert "example.org" not in out.read_text() and "4111" not in out.read_text()
    err = capsys.readouterr().err
    assert "redacted: email" in err and "redacted: phone" in err


def test_full_account_export_finds_me_and_speaker_names(tmp_path: Path) -> None:
    group = [msg(1, 0, "Alice", "who is coming?"), msg(2, 5, "Bob", "me!"), msg(3, 9, "Me", "count me in")]
    export = write(tmp_path, {
        "about": "Here is the data you requested.",
        "personal_information": {"user_id": 1, "first_name": "Me"},
        "contacts": {"about": "", "list": []},
        "chats": {"about": "", "list": [
            {"name": "Alice", "type": "personal_chat", "id": 2, "messages": chat_messages()[:6]},
            {"name": "Films", "type": "private_group", "id": 9, "messages": group},
            {"name": "Bob", "type": "personal_chat", "id": 3, "messages": [msg(1, 0, "Bob", "me never answers")]},
        ]},
    })
    out = tmp_path / "out.jsonl"
    assert main(["import", "telegram", str(export), "-o", str(out), "--speaker-names"]) == 0
    got = rows(out)
    assert len(got) == 2
    assert got[1] == [{"role": "user", "content": "Alice: who is coming?\nBob: me!"},
                      {"role": "assistant", "content": "count me in"}]
    assert "me never answers" not in out.read_text()
    assert [json.loads(line)["contact"] for line in out.read_text().splitlines()] == ["Alice", "Films"]


@pytest.mark.parametrize("content, expected", [
    ("[1, 2, 3]", "not a Telegram export"),
    ('{"about": "x", "contacts": {}}', "not a Telegram export"),
    ('{"name": "A", "messages": []}', "no text messages"),
    ('{"name": "A", "messages": [{"type": "message"', "invalid JSON"),
])
def test_bad_exports_exit_2(tmp_path: Path, capsys, content: str, expected: str) -> None:
    path = tmp_path / "result.json"
    path.write_text(content)
    assert main(["import", "telegram", str(path), "--me", "Me", "-o", str(tmp_path / "o.jsonl")]) == 2
    assert expected in capsys.readouterr().err
    assert not (tmp_path / "o.jsonl").exists()


def test_me_never_speaks_lists_senders_and_encoding(tmp_path: Path, capsys) -> None:
    export = write(tmp_path, {"name": "Alice", "messages": chat_messages()})
    assert main(["import", "telegram", str(export), "--me", "Nobody", "-o", str(tmp_path / "o.jsonl")]) == 2
    err = capsys.readouterr().err
    assert "never speaks" in err and "Alice (5), Me (4)" in err
    export.write_bytes(b'{"name": "\xff\xfe", "messages": []}')
    assert main(["import", "telegram", str(export), "--me", "Me", "-o", str(tmp_path / "o.jsonl")]) == 2
    assert "not UTF-8" in capsys.readouterr().err


def test_output_not_overwritten_and_stream_chunks(tmp_path: Path, capsys) -> None:
    from finetune.importers.conversations import ImportOptions, Stats
    from finetune.importers.telegram import import_telegram

    export = write(tmp_path, {"name": "Alice", "messages": chat_messages()})
    out = tmp_path / "out.jsonl"
    out.write_text("keep")
    assert main(["import", "telegram", str(export), "--me", "Me", "-o", str(out)]) == 2
    assert out.read_text() == "keep" and "--overwrite" in capsys.readouterr().err
    assert main(["import", "telegram", str(export), "--me", "Me", "-o", str(out), "--overwrite"]) == 0
    # Tiny chunks cut every value somewhere: the stream must give the same rows.
    stream_rows: list[dict] = []
    import_telegram(export, ImportOptions(me="Me"), stream_rows.append, Stats(), chunk_bytes=7)
    assert [r["messages"] for r in stream_rows] == rows(out)
