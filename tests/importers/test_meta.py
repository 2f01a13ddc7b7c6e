"""`finetune import messenger|instagram`: Meta "Download your information" JSON archives built here in
their real shape (mojibake strings, threads split newest first over message_N.json), content checked."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from finetune.cli import main

T0 = 1_700_000_000_000  # ms
S = 1000
HOUR = 3600 * S
ME = "Zoë Dupont"
ALICE = "Alice Martin"
BOB = "Bob Lefèvre"


def moji(value):
    """Meta's encoding: every UTF-8 byte written as one latin-1 character (then \\u00XX-escaped)."""
    if isinstance(value, str):
        return value.encode("utf-8").decode("latin-1")
    if isinstance(value, list):
        return [moji(v) for v in value]
    if isinstance(value, dict):
        return {k: moji(v) for k, v in value.items()}
    return value


def m(t: int, sender: str, content: str | None = None, **extra) -> dict:
    message = {"sender_name": sender, "timestamp_ms": T0 + t}
    if content is not None:
        message["content"] = content
    message.update(extra)
    message.setdefault("is_geoblocked_for_viewer", False)
    return message


def alice_thread() -> list[dict]:
    """Oldest first, as written in the test; the files hold them newest first."""
    return [
        m(0, ALICE, "Salut Zoë ! Ça va ?"),
        m(10 * S, ME, "Très bien, et toi ? 😊"),
        m(20 * S, ALICE, photos=[{"uri": "your_facebook_activity/messages/inbox/alicemartin_123/photos/1.jpg",
                                  "creation_timestamp": 1_700_000_020}]),
        m(25 * S, ALICE, "UNSENT-SECRET", is_unsent=True),
        m(30 * S, ALICE, "https://youtu.be/xyz", type="Share", share={"link": "https://youtu.be/xyz"}),
        m(35 * S, ALICE, "Alice Martin reacted ❤ to your message "),
        m(40 * S, ME, "The call ended.", type="Call", call_duration=120),
        m(50 * S, ALICE, "On se voit au café demain ?", reactions=[{"reaction": "👍", "actor": ME}]),
        m(60 * S, ME, "Oui ! À 10h ☕"),
        m(8 * HOUR, ALICE, "Tu as oublié ton écharpe"),
        m(8 * HOUR + 10 * S, ME, "Zut ! Je passe ce soir"),
    ]


def group_thread() -> list[dict]:
    return [
        m(0, BOB, "Bob Lefèvre named the group Film night 🎬."),
        m(5 * S, BOB, "Qui vient vendredi ?"),
        m(6 * S, ALICE, "Moi !"),
        m(7 * S, ALICE, "regardez l'affiche", photos=[{"uri": "messages/inbox/filmnight_456/photos/2.jpg",
                                                       "creation_timestamp": 1_700_000_007}]),  # text kept
        m(9 * S, ME, "Moi aussi, j'apporte le pop-corn 🍿"),
        m(12 * S, BOB, "", sticker={"uri": "messages/stickers_used/1.png"}),
        m(20 * S, ALICE, "Alice Martin left the group.", type="Unsubscribe", users=[{"name": ALICE}]),
    ]


def write_thread(inbox: Path, folder: str, title: str, participants: list[str], messages: list[dict],
                 per_file: int = 100) -> Path:
    """message_1.json holds the newest `per_file` messages, message_2.json the ones before..."""
    thread = inbox / folder
    thread.mkdir(parents=True)
    (thread / "photos").mkdir()
    (thread / "photos" / "1.jpg").write_bytes(b"\xff\xd8")
    newest_first = list(reversed(messages))
    for n, start in enumerate(range(0, len(newest_first), per_file), 1):
        data = {"participants": [{"name": p} for p in participants],
                "messages": newest_first[start:start + per_file], "title": title, "is_still_participant": True,
                "thread_path": f"inbox/{folder}", "magic_words": []}
        (thread / f"message_{n}.json").write_text(json.dumps(moji(data), indent=2), encoding="ascii")
    return thread


def messenger_archive(root: Path) -> Path:
    inbox = root / "your_facebook_activity" / "messages" / "inbox"
    write_thread(inbox, "alicemartin_123", ALICE, [ALICE, ME], alice_thread(), per_file=6)
    write_thread(inbox, "filmnight_456", "Film night 🎬", [BOB, ALICE, ME], group_thread())
    write_thread(inbox, "maman_789", "Maman", ["Maman", ME], [m(0, "Maman", "Bisous"), m(S, ME, "Bisous maman ❤️")])
    (root / "your_facebook_activity" / "messages" / "autofill_information.json").write_text("{}")
    return root


def read_rows(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


def test_messenger_archive(tmp_path: Path, capsys) -> None:
    root = messenger_archive(tmp_path / "facebook-zoe")
    assert '\\u00c3\\u0087a va' in (root / "your_facebook_activity/messages/inbox/alicemartin_123/message_2.json"
                                   ).read_text()  # the fixture really is mojibake
    out = tmp_path / "out.jsonl"
    assert main(["import", "messenger", str(root), "-o", str(out), "--speaker-names"]) == 0
    rows = read_rows(out)
    assert len(rows) == 4  # Alice: two conversations (8 h silence); the group; Maman
    by_contact = {}
    for row in rows:
        by_contact.setdefault(row["contact"], []).append(row["messages"])
    assert by_contact[ALICE] == [
        [{"role": "user", "content": f"{ALICE}: Salut Zoë ! Ça va ?"},
         {"role": "assistant", "content": "Très bien, et toi ? 😊"},
         {"role": "user", "content": f"{ALICE}: On se voit au café demain ?"},
         {"role": "assistant", "content": "Oui ! À 10h ☕"}],
        [{"role": "user", "content": f"{ALICE}: Tu as oublié ton écharpe"},
         {"role": "assistant", "content": "Zut ! Je passe ce soir"}],
    ]
    assert by_contact["Film night 🎬"] == [[
        {"role": "user", "content": f"{BOB}: Qui vient vendredi ?\n{ALICE}: Moi !\n{ALICE}: regardez l'affiche"},
        {"role": "assistant", "content": "Moi aussi, j'apporte le pop-corn 🍿"}]]
    assert by_contact["Maman"] == [[{"role": "user", "content": "Maman: Bisous"},
                                    {"role": "assistant", "content": "Bisous maman ❤️"}]]
    text = out.read_text(encoding="utf-8")
    for never in ("UNSENT-SECRET", "youtu.be", "reacted", "call ended", "named the group", "left the group", "Ã",
                  "stickers_used", ".jpg"):
        assert never not in text
    err = capsys.readouterr().err
    assert f"--me inferred: '{ME}'" in err
    for reason in ("unsent", "call", "share (link, post, reel)", "photo, video, audio, gif or file", "sticker",
                   "system text (reactions, group changes, calls...)", "system message (joins, leaves...)"):
        assert f"dropped: {reason} " in err
    assert "1 reaction(s) ignored" in err and "1 message(s) kept their text without their photo" in err


def test_thread_selection_single_folder_and_file(tmp_path: Path, capsys) -> None:
    root = messenger_archive(tmp_path / "fb")
    out = tmp_path / "out.jsonl"
    assert main(["import", "messenger", str(root), "--thread", "film night 🎬", "--thread", "maman_789",
                 "-o", str(out)]) == 0
    assert sorted(r["contact"] for r in read_rows(out)) == ["Film night 🎬", "Maman"]
    thread = root / "your_facebook_activity/messages/inbox/alicemartin_123"
    for source in (thread, thread / "message_1.json"):
        assert main(["import", "messenger", str(source), "--me", ME, "-o", str(out), "--overwrite",
                     "--min-turns", "1"]) == 0
        rows = read_rows(out)
        assert rows and all(r["contact"] == ALICE for r in rows)
    # One file holds only the newest messages: the thread folder holds the whole history.
    assert main(["import", "messenger", str(thread), "--me", ME, "-o", str(out), "--overwrite"]) == 0
    assert len(read_rows(out)) == 2
    assert main(["import", "messenger", str(thread), "-o", str(tmp_path / "x.jsonl")]) == 2
    assert "cannot tell who you are" in capsys.readouterr().err
    assert main(["import", "messenger", str(root), "--thread", "Nobody", "-o", str(tmp_path / "x.jsonl")]) == 2
    err = capsys.readouterr().err
    assert "--thread Nobody: no such thread" in err and "Film night 🎬" in err
    assert not (tmp_path / "x.jsonl").exists()


def test_instagram_layout_and_redaction(tmp_path: Path, capsys) -> None:
    inbox = tmp_path / "instagram-zoe" / "your_instagram_activity" / "messages" / "inbox"
    write_thread(inbox, "camille_42", "Camille", ["Camille", ME], [
        m(0, "Camille", "Liked a message"),
        m(S, "Camille", "Camille sent an attachment.",
          share={"link": "https://www.instagram.com/reel/abc/", "original_content_owner": "cinema.club"}),
        m(2 * S, "Camille", "tu as vu ce reel 😂 écris-moi à camille@example.fr"),
        m(3 * S, ME, "Reacted 😂 to your message "),
        m(4 * S, ME, "trop drôle Camille !"),
    ])
    write_thread(inbox, "dan_7", "Dan", ["Dan", ME], [m(0, "Dan", "yo"), m(S, ME, "hey Dan")])
    out = tmp_path / "out.jsonl"
    assert main(["import", "instagram", str(tmp_path / "instagram-zoe"), "-o", str(out)]) == 0
    rows = read_rows(out)
    assert [r["messages"] for r in rows] == [
        [{"role": "user", "content": "tu as vu ce reel 😂 écris-moi à camille@example.fr"},
         {"role": "assistant", "content": "trop drôle Camille !"}],
        [{"role": "user", "content": "yo"}, {"role": "assistant", "content": "hey Dan"}],
    ]
    assert main(["import", "instagram", str(tmp_path / "instagram-zoe"), "-o", str(out), "--overwrite",
                 "--redact", "--redact-names"]) == 0
    first = read_rows(out)[0]
    assert first["messages"][0]["content"] == "tu as vu ce reel 😂 écris-moi à <email>"
    assert first["messages"][1]["content"] == "trop drôle <name> !"
    assert first["contact"].startswith("contact-")


def test_me_never_speaks_lists_senders(tmp_path: Path, capsys) -> None:
    root = messenger_archive(tmp_path / "fb")
    assert main(["import", "messenger", str(root), "--me", "Zoe Dupont", "-o", str(tmp_path / "o.jsonl")]) == 2
    err = capsys.readouterr().err
    assert "--me 'Zoe Dupont' never speaks" in err and f"{ME} (5)" in err and f"{ALICE} (5)" in err


def test_fix_text() -> None:
    from finetune.importers.meta import fix_text

    assert fix_text(moji("Ça va ? 😊 ❤️")) == "Ça va ? 😊 ❤️"
    assert fix_text("déjà") == "déjà"  # not mojibake: a lone é is not a UTF-8 sequence
    assert fix_text("5 €") == "5 €"  # a character above U+00FF: already text
    assert fix_text("plain") == "plain"


@pytest.mark.parametrize("name, content, expected", [
    ("message_1.json", '{"profile_v2": {"name": {"full_name": "Zo\\u00c3\\u00ab"}}}', "not a message file"),
    ("message_1.json", '{"name": "Alice", "type": "personal_chat", "id": 2, "messages": [',
     "invalid JSON at line 1"),
    ("message_1.json", '[{"sender_name": "a"}]', "not a message file"),
    ("result.json", '{"name": "Alice", "type": "personal_chat", "messages": {"id": 1}}', "not a message file"),
])
def test_not_an_export_exit_2(tmp_path: Path, capsys, name: str, content: str, expected: str) -> None:
    path = tmp_path / name
    path.write_text(content, encoding="utf-8")
    assert main(["import", "messenger", str(path), "--me", ME, "-o", str(tmp_path / "o.jsonl")]) == 2
    err = capsys.readouterr().err
    assert expected in err and str(path) in err and "Download your information" in err
    # Without --me the participants are read first: the same file is named, the same format expected.
    assert main(["import", "messenger", str(path), "-o", str(tmp_path / "o.jsonl")]) == 2
    err = capsys.readouterr().err
    assert str(path) in err and "Download your information" in err
    assert not (tmp_path / "o.jsonl").exists()


def test_folder_without_messages_exit_2(tmp_path: Path, capsys) -> None:
    (tmp_path / "takeout" / "your_facebook_activity" / "posts").mkdir(parents=True)
    assert main(["import", "instagram", str(tmp_path / "takeout"), "-o", str(tmp_path / "o.jsonl")]) == 2
    err = capsys.readouterr().err
    assert "no message_1.json found" in err and "your_instagram_activity/messages/inbox" in err


@pytest.mark.parametrize("text, system", [
    ("Alice Martin reacted ❤ to your message ", True),
    ("Reacted 😂 to your message ", True),
    ("Liked a message", True),
    ("You sent an attachment.", True),
    ("Jean-Pierre de la Fontaine left the group.", True),
    ("Bob set the nickname for Alice Martin to Ali.", True),
    ("You missed a call from Bob.", True),
    ("You are now connected on Messenger", True),
    ("so at the party after the movie she waved at me", False),
    ("when everyone at the office party finally left the group.", False),
    ("ok\nBob left the group.", False),
    ("I called him yesterday", False),
])
def test_system_texts(text: str, system: bool) -> None:
    from finetune.importers.meta import is_system_text

    assert is_system_text(text) is system


def test_older_archive_listing_only_the_others_asks_for_me(tmp_path: Path, capsys) -> None:
    inbox = tmp_path / "old" / "messages" / "inbox"  # older layout, no your_facebook_activity/
    write_thread(inbox, "alice_1", ALICE, [ALICE], alice_thread())
    write_thread(inbox, "film_2", "Film night 🎬", [BOB, ALICE], group_thread())
    write_thread(inbox, "maman_3", "Maman", ["Maman"], [m(0, "Maman", "Bisous"), m(S, ME, "Bisous maman ❤️")])
    out = tmp_path / "out.jsonl"
    assert main(["import", "messenger", str(tmp_path / "old"), "-o", str(out)]) == 2
    assert f"cannot tell who you are from 3 thread(s) (participants in the most threads: {ALICE} (2)" in \
        capsys.readouterr().err
    assert main(["import", "messenger", str(tmp_path / "old"), "--me", ME, "-o", str(out)]) == 0
    assert len(read_rows(out)) == 4
