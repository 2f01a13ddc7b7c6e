"""`finetune import whatsapp`: Android and iOS .txt exports built here, content checked."""

from __future__ import annotations

import json
from pathlib import Path

from finetune.cli import main

NNBSP = "\u202f"
ANDROID = """31/12/22, 21:40 - Messages and calls are end-to-end encrypted. No one outside of this chat can read them.
31/12/22, 21:41 - Alice: any plans
for tonight?
31/12/22, 21:42 - Alice: <Media omitted>
31/12/22, 21:43 - Me: staying in
with a film <This message was edited>
31/12/22, 21:44 - Alice: This message was deleted
31/12/22, 21:45 - Alice changed the group description
01/01/23, 09:00 - Alice: happy new year! mail me: a.b@example.com
01/01/23, 09:05 - Me: you too
"""
IOS = (f"[12/31/2022, 9:41:05{NNBSP}PM] Bob: \u200eMessages and calls are end-to-end encrypted.\n"
       f"[12/31/2022, 9:41:06{NNBSP}PM] Bob: \u200eimage omitted\n"
       f"[12/31/2022, 9:42:00{NNBSP}PM] Bob: what's up\n"
       f"[12/31/2022, 9:43:00{NNBSP}PM] Carol: hi all\n"
       f"[12/31/2022, 9:44:00{NNBSP}PM] Me: not much\n"
       f"[12/31/2022, 10:44:00{NNBSP}PM] Bob: \u200eCarol left\n")


def run(tmp_path: Path, *files: tuple[str, str], extra: tuple = ()) -> tuple[int, Path]:
    paths = []
    for name, text in files:
        (tmp_path / name).write_text(text, encoding="utf-8")
        paths.append(str(tmp_path / name))
    out = tmp_path / "out.jsonl"
    return main(["import", "whatsapp", *paths, "--me", "Me", "-o", str(out), *extra]), out


def rows(out: Path) -> list[list[dict]]:
    return [json.loads(line)["messages"] for line in out.read_text(encoding="utf-8").splitlines()]


def test_android_multiline_media_system_deleted_and_gap(tmp_path: Path, capsys) -> None:
    rc, out = run(tmp_path, ("chat.txt", ANDROID))
    assert rc == 0
    assert rows(out) == [
        [{"role": "user", "content": "any plans\nfor tonight?"},
         {"role": "assistant", "content": "staying in\nwith a film"}],
        [{"role": "user", "content": "happy new year! mail me: a.b@example.com"},
         {"role": "assistant", "content": "you too"}],
    ]
    text = out.read_text()
    for never in ("Media omitted", "deleted", "encrypted", "group description", "edited"):
        assert never not in text
    err = capsys.readouterr().err
    assert "dates read as dmy" in err and "media omitted" in err and "system line" in err


def test_ios_12h_mdy_group_speaker_names_and_several_files(tmp_path: Path, capsys) -> None:
    rc, out = run(tmp_path, ("a.txt", ANDROID), ("b.txt", IOS), extra=("--speaker-names", "--redact"))
    assert rc == 0
    got = rows(out)
    assert got[-1] == [{"role": "user", "content": "Bob: what's up\nCarol: hi all"},
                       {"role": "assistant", "content": "not much"}]
    assert got[1][0]["content"] == "Alice: happy new year! mail me: <email>"
    assert "image omitted" not in out.read_text() and "left" not in out.read_text()
    assert "b.txt: dates read as mdy" in capsys.readouterr().err


def test_forced_date_order_and_gap_option(tmp_path: Path) -> None:
    rc, out = run(tmp_path, ("chat.txt", ANDROID), extra=("--date-order", "dmy", "--gap", "30d"))
    assert rc == 0
    assert len(rows(out)) == 1  # no silence is longer than 30 days: one conversation
    rc, _ = run(tmp_path, ("chat.txt", ANDROID), extra=("--date-order", "mdy", "--overwrite"))
    assert rc == 2  # 31/12 is not a month-first date


def test_bad_inputs_exit_2(tmp_path: Path, capsys) -> None:
    assert run(tmp_path, ("x.txt", "just some notes\nnot a chat\n"))[0] == 2
    assert "not a WhatsApp chat export" in capsys.readouterr().err
    assert run(tmp_path, ("x.txt", ""))[0] == 2
    assert "empty" in capsys.readouterr().err
    (tmp_path / "bad.txt").write_bytes(b"31/12/22, 21:41 - Al\xe9: hi\n")
    out = tmp_path / "o.jsonl"
    assert main(["import", "whatsapp", str(tmp_path / "bad.txt"), "--me", "Me", "-o", str(out)]) == 2
    assert "not UTF-8" in capsys.readouterr().err
    assert main(["import", "whatsapp", str(tmp_path / "x.txt"), "--me", "Zed", "-o", str(out)]) == 2
    (tmp_path / "x.txt").write_text(ANDROID)
    assert main(["import", "whatsapp", str(tmp_path / "x.txt"), "--me", "Zed", "-o", str(out)]) == 2
    err = capsys.readouterr().err
    assert "never speaks" in err and "Alice (2)" in err and "Me (2)" in err
    assert not out.exists()


def test_imported_file_preprocesses_with_quickstart_recipe(tmp_path: Path, tiny_llama_dir: Path, capsys) -> None:
    chat = "".join(f"0{d}/01/23, 10:00 - Alice: question {d}?\n0{d}/01/23, 10:01 - Me: answer number {d}\n"
                   for d in range(1, 10))
    rc, out = run(tmp_path, ("chat.txt", chat))
    assert rc == 0 and len(rows(out)) == 9
    recipe = Path(__file__).parents[2] / "examples" / "quickstart.yml"
    assert main(["preprocess", str(recipe), "--show", "1", "--no-progress",
                 "--set", f"datasets.0.path={out}", "--set", f"base_model={tiny_llama_dir}",
                 "--set", f"dataset_prepared_path={tmp_path / 'prepared'}"]) == 0
    shown = capsys.readouterr().out
    assert "answer number" in shown
