"""`finetune import discord`: DiscordChatExporter JSON exports (a DM and a guild channel) built here in the
shape its JsonMessageWriter writes, content checked."""

from __future__ import annotations

import json
import re
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest

from finetune.cli import main

T0 = datetime(2023, 11, 14, 22, 13, 20, 123000, tzinfo=timezone(timedelta(hours=1)))
HOUR = 3600


def user(uid: str, name: str, nickname: str | None = None, bot: bool = False) -> dict:
    return {"id": uid, "name": name, "discriminator": "0000", "nickname": nickname or name, "color": None,
            "isBot": bot, "roles": [], "avatarUrl": f"https://cdn.discordapp.com/avatars/{uid}/a.png"}


ME = user("111", "mrsmith", "Smithy")
ALICE = user("222", "alice_w", "Alice")
BOBBY = user("333", "bob", "Bobby")
CAROL = user("444", "carol")
BOT = user("999", "FilmBot", bot=True)


def msg(mid: int, seconds: float, author: dict, content: str, kind: str = "Default", **extra) -> dict:
    message = {
        "id": str(1_000_000 + mid), "type": kind,
        "timestamp": (T0 + timedelta(seconds=seconds)).isoformat(timespec="milliseconds"),
        "timestampEdited": None, "callEndedTimestamp": None, "isPinned": False, "content": content,
        "author": author, "attachments": [], "embeds": [], "stickers": [], "reactions": [], "mentions": [],
    }
    message.update(extra)
    return message


ATTACHMENT = [{"id": "5", "url": "https://cdn.discordapp.com/attachments/1/5/trailer.png", "fileName": "trailer.png",
               "fileSizeBytes": 123456}]
STICKER = [{"id": "7", "name": "wave", "format": "Png", "sourceUrl": "https://media.discordapp.net/stickers/7.png"}]


def dm_messages() -> list[dict]:
    return [
        msg(1, 0, ALICE, "hey! seen the new trailer?"),
        msg(2, 10, ME, "not yet, link?"),
        msg(3, 20, ALICE, "", attachments=ATTACHMENT),  # attachment only: dropped
        msg(4, 30, ALICE, "here it is, ask <@!333> too", mentions=[BOBBY]),
        msg(5, 40, ME, "ok watching now 😀", "Reply",
            reference={"messageId": "1000004", "channelId": "42", "guildId": None}),
        msg(6, 50, ALICE, "look at this frame", attachments=ATTACHMENT),  # text kept, attachment dropped
        msg(7, 55, ALICE, "Pinned a message.", "ChannelPinnedMessage"),
        msg(8, 60, ME, "Started a call that lasted 5 minutes.", "Call"),
        msg(9, 65, BOT, "BOT-SPAM new releases today"),
        msg(10, 70, ME, "great trailer"),
        msg(11, 70 + 7 * HOUR, ALICE, "morning! mail me at alice@example.org"),
        msg(12, 80 + 7 * HOUR, ME, "morning ☀️ café at 9?"),
    ]


def guild_messages() -> list[dict]:
    return [
        msg(20, 0, CAROL, "Joined the server.", "GuildMemberJoin"),
        msg(21, 5, CAROL, "anyone watching tonight?"),
        msg(22, 9, ME, "yes <@444>, <#55> at 8 <:popcorn:777>", mentions=[CAROL]),
        msg(23, 12, CAROL, "", stickers=STICKER),
        msg(24, 15, CAROL, "Tonight", "ThreadCreated"),
    ]


def export(path: Path, channel: dict, messages: list[dict], guild: dict | None = None) -> Path:
    data = {
        "guild": guild or {"id": "0", "name": "Direct Messages", "iconUrl": "https://cdn.discordapp.com/embed/0.png"},
        "channel": channel,
        "dateRange": {"after": None, "before": None},
        "exportedAt": "2024-01-01T00:00:00.000+00:00",
        "messages": messages,
        "messageCount": len(messages),
    }
    path.write_text(json.dumps(data, ensure_ascii=False, indent=2), encoding="utf-8")
    return path


def dm(path: Path, messages: list[dict] | None = None) -> Path:
    channel = {"id": "42", "type": "DirectTextChat", "categoryId": None, "category": None, "name": "Alice",
               "topic": None}
    return export(path, channel, dm_messages() if messages is None else messages)


def guild(path: Path) -> Path:
    channel = {"id": "55", "type": "GuildTextChat", "categoryId": "50", "category": "Text Channels",
               "name": "general", "topic": "films"}
    return export(path, channel, guild_messages(), {"id": "77", "name": "Film Club", "iconUrl": None})


def read_rows(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


def test_dm_and_guild_channel(tmp_path: Path, capsys) -> None:
    out = tmp_path / "out.jsonl"
    files = [str(dm(tmp_path / "Direct Messages - Alice [42].json")), str(guild(tmp_path / "Film Club - general.json"))]
    assert main(["import", "discord", *files, "--me", "mrsmith", "-o", str(out)]) == 0
    rows = read_rows(out)
    assert len(rows) == 3  # the DM splits at the 7-hour silence; the channel is one conversation
    first, second, third = (r["messages"] for r in rows)
    assert first == [
        {"role": "user", "content": "hey! seen the new trailer?"},
        {"role": "assistant", "content": "not yet, link?"},
        {"role": "user", "content": "here it is, ask @Bobby too"},
        {"role": "assistant", "content": "ok watching now 😀"},
        {"role": "user", "content": "look at this frame"},
        {"role": "assistant", "content": "great trailer"},
    ]
    assert second == [{"role": "user", "content": "morning! mail me at alice@example.org"},
                      {"role": "assistant", "content": "morning ☀️ café at 9?"}]
    assert third == [{"role": "user", "content": "anyone watching tonight?"},
                     {"role": "assistant", "content": "yes @carol, #channel at 8 :popcorn:"}]
    assert [r["contact"] for r in rows] == ["Alice", "Alice", "Film Club / #general"]
    assert rows[0]["start"] == "2023-11-14T21:13:20+00:00"
    text = out.read_text(encoding="utf-8")
    for never in ("Pinned a message", "Started a call", "BOT-SPAM", "Joined the server", "<@", "trailer.png",
                  "Tonight"):
        assert never not in text
    err = capsys.readouterr().err
    for reason in ("dropped: bot", "dropped: call", "dropped: attachment or sticker",
                   "dropped: system message (pin, join, thread...)"):
        assert reason in err
    assert re.search(r"messages read +17\n", err)
    assert "1 message(s) kept their text without their attachments" in err


def test_me_by_id_or_nickname_partitions_and_redaction(tmp_path: Path) -> None:
    path = dm(tmp_path / "dm.json")
    by_name, by_id, by_nick = (tmp_path / f"{n}.jsonl" for n in ("name", "id", "nick"))
    assert main(["import", "discord", str(path), "--me", "mrsmith", "-o", str(by_name)]) == 0
    assert main(["import", "discord", str(path), "--me", "111", "-o", str(by_id)]) == 0
    assert main(["import", "discord", str(path), "--me", "Smithy", "-o", str(by_nick)]) == 0
    assert read_rows(by_id) == read_rows(by_name) == read_rows(by_nick)
    # An export split with --partition: consecutive files of one channel are one history.
    messages = dm_messages()
    parts = [dm(tmp_path / "part1.json", messages[:4]), dm(tmp_path / "part2.json", messages[4:])]
    split = tmp_path / "split.jsonl"
    assert main(["import", "discord", *map(str, parts), "--me", "111", "-o", str(split)]) == 0
    assert [r["messages"] for r in read_rows(split)] == [r["messages"] for r in read_rows(by_id)]
    redacted = tmp_path / "redacted.jsonl"
    assert main(["import", "discord", str(path), "--me", "111", "-o", str(redacted), "--redact", "--redact-names",
                 "--system", "be me"]) == 0
    rows = read_rows(redacted)
    assert rows[0]["messages"][0] == {"role": "system", "content": "be me"}
    assert rows[0]["messages"][3]["content"] == "here it is, ask @<name> too"
    assert rows[1]["messages"][1]["content"] == "morning! mail me at <email>"
    assert rows[0]["contact"].startswith("contact-") and "Alice" not in redacted.read_text(encoding="utf-8")


def test_stream_in_tiny_chunks_reads_the_same(tmp_path: Path) -> None:
    from finetune.importers.conversations import ImportOptions, Stats
    from finetune.importers.discord import DiscordReader

    path = dm(tmp_path / "dm.json")
    whole = DiscordReader(ImportOptions(me="111"), Stats()).read(path)
    chunked = DiscordReader(ImportOptions(me="111"), Stats()).read(path, chunk_bytes=7)
    assert chunked.messages == whole.messages and len(whole.messages) == 8
    assert whole.label == "Alice"


def test_me_never_speaks_lists_senders(tmp_path: Path, capsys) -> None:
    path = dm(tmp_path / "dm.json")
    assert main(["import", "discord", str(path), "--me", "nobody", "-o", str(tmp_path / "o.jsonl")]) == 2
    err = capsys.readouterr().err
    assert "never speaks" in err and "Smithy (mrsmith) (4)" in err and "Alice (alice_w) (4)" in err
    assert main(["import", "discord", str(path), "-o", str(tmp_path / "o.jsonl")]) == 2
    assert "pass --me" in capsys.readouterr().err
    assert not (tmp_path / "o.jsonl").exists()


@pytest.mark.parametrize("content, expected", [
    ("[1, 2, 3]", "not a Discord export"),
    ('{"about": "Here is the data you requested.", "chats": {"list": []}}', "top-level keys: about, chats"),
    ("<!DOCTYPE html><html><head><title>Alice</title>", "export with the JSON format"),
    ('AuthorID,Author,Date,Content,Attachments,Reactions\n"1","a","2020","hi","",""', "not a Discord export"),
    ('{"guild": {}, "channel": {"id": "1"}, "messages": [{"type": "Default"', "invalid JSON"),
    ('{"guild": {}, "channel": {"id": "1"}, "messages": [{"type": "Default", "content": "hi", "timestamp": "x"}]}',
     "unreadable timestamp"),
])
def test_not_an_export_exit_2(tmp_path: Path, capsys, content: str, expected: str) -> None:
    path = tmp_path / "export.json"
    path.write_text(content, encoding="utf-8")
    assert main(["import", "discord", str(path), "--me", "me", "-o", str(tmp_path / "o.jsonl")]) == 2
    err = capsys.readouterr().err
    assert expected in err and str(path) in err
    assert not (tmp_path / "o.jsonl").exists()


@pytest.mark.parametrize("guild_, channel, label", [
    ({"id": "0", "name": "Direct Messages"}, {"id": "1", "type": "DirectTextChat", "name": "Alice"}, "Alice"),
    ({"id": "0", "name": "Direct Messages"}, {"id": "1", "type": "DirectGroupTextChat", "name": "Alice, Bob"},
     "Alice, Bob"),
    ({"id": "7", "name": "Film Club"}, {"id": "2", "type": "GuildTextChat", "category": "Text", "name": "general"},
     "Film Club / #general"),
    ({"id": "7", "name": "Film Club"}, {"id": "3", "type": "GuildPublicThread", "category": "general",
                                        "name": "Friday"}, "Film Club / #general / Friday"),
])
def test_contact_labels(guild_: dict, channel: dict, label: str) -> None:
    from finetune.importers.discord import channel_label

    assert channel_label(guild_, channel) == label


def test_timestamps_as_dotnet_writes_them() -> None:
    from finetune.importers.discord import parse_time

    base = parse_time("2023-01-15T10:30:00+00:00")
    assert base == 1673778600.0
    assert parse_time("2023-01-15T12:30:00.1234567+02:00") == pytest.approx(base + 0.123456)
    assert parse_time("2023-01-15T10:30:00.12Z") == pytest.approx(base + 0.12)
    assert parse_time("15/01/2023 10:30") is None and parse_time(None) is None
