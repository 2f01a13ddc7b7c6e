"""Speed and peak memory of `finetune import` for every reader, on synthetic exports in each real format.

    python scripts/bench_import.py --mb 100
    python scripts/bench_import.py --mb 20 --readers discord,messenger

Builds an export of about --mb MB per reader (Telegram full-account result.json, WhatsApp Android .txt,
DiscordChatExporter JSON, Messenger and Instagram "Download your information" folders: several chats,
media, system messages, non-ASCII text, Meta's mojibake), then imports each in its own process
(`finetune import ...`, so peak RSS is that reader's alone) and prints a table: MB/s and peak RSS.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import random
import re
import resource
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path

WORDS = "hello film tonight ok lol привет кино сегодня 👍 thanks maybe tomorrow café déjà vu".split()
READERS = ["telegram", "whatsapp", "discord", "messenger", "instagram"]


def _text(rng: random.Random) -> str:
    return " ".join(rng.choices(WORDS, k=rng.randint(1, 25)))


def _times(rng: random.Random, start: float = 1_600_000_000):
    t = start
    while True:
        t += rng.choice([30, 60, 600, 30000])
        yield t


def build_telegram(path: Path, mb: int, rng: random.Random) -> None:
    clock = _times(rng)
    with path.open("w", encoding="utf-8") as f:
        f.write('{"about": "bench", "personal_information": {"user_id": 1}, "chats": {"list": [')
        chat, size = 0, 0
        while size < mb * 1_000_000:
            msgs = []
            for i in range(5000):
                t = int(next(clock))
                who = rng.random() < 0.5
                m = {"id": i, "type": "message", "date": "2020-09-13T12:26:40", "date_unixtime": str(t),
                     "from": "Me" if who else "Friend", "from_id": "user1" if who else "user2",
                     "text": _text(rng), "text_entities": [{"type": "plain", "text": "x"}]}
                if rng.random() < 0.1:
                    m["text"] = ["see ", {"type": "link", "text": "https://t.me/x"}, " now"]
                if rng.random() < 0.05:
                    m["photo"] = "photos/p.jpg"
                if rng.random() < 0.02:
                    m = {"id": i, "type": "service", "date_unixtime": str(t), "action": "pin_message"}
                msgs.append(m)
            text = json.dumps({"name": f"chat {chat}", "type": "personal_chat", "id": chat, "messages": msgs},
                              ensure_ascii=False, indent=1)
            f.write(("," if chat else "") + text)
            size += len(text.encode())
            chat += 1
        f.write("]}}")


def build_whatsapp(path: Path, mb: int, rng: random.Random) -> None:
    clock = _times(rng)
    with path.open("w", encoding="utf-8") as f:
        f.write("12/01/20, 09:00 - Messages and calls are end-to-end encrypted. No one outside of this chat, "
                "not even WhatsApp, can read or listen to them. Tap to learn more.\n")
        size = 0
        while size < mb * 1_000_000:
            d = datetime.fromtimestamp(next(clock))
            body = rng.choice(["<Media omitted>", _text(rng)]) if rng.random() < 0.05 else _text(rng)
            if rng.random() < 0.03:
                body += "\n" + _text(rng)
            line = f"{d:%d/%m/%y, %H:%M} - {'Me' if rng.random() < 0.5 else 'Friend'}: {body}\n"
            f.write(line)
            size += len(line.encode())


def _discord_user(uid: str, name: str) -> dict:
    return {"id": uid, "name": name, "discriminator": "0000", "nickname": name.title(), "color": "#1ABC9C",
            "isBot": False, "roles": [{"id": "9", "name": "Members", "color": None, "position": 1}],
            "avatarUrl": f"https://cdn.discordapp.com/avatars/{uid}/0123456789abcdef0123456789abcdef.png?size=512"}


def build_discord(path: Path, mb: int, rng: random.Random) -> None:
    users = [_discord_user(str(10**17 + i), n) for i, n in enumerate(["me", "friend", "another", "someone"])]
    clock = _times(rng)
    with path.open("w", encoding="utf-8") as f:
        f.write(json.dumps({"guild": {"id": "0", "name": "Direct Messages", "iconUrl": "x"},
                            "channel": {"id": "42", "type": "DirectGroupTextChat", "categoryId": None, "category": None,
                                        "name": "bench", "topic": None},
                            "dateRange": {"after": None, "before": None},
                            "exportedAt": "2024-01-01T00:00:00.000+00:00"}, indent=2, ensure_ascii=False)[:-2])
        f.write(',\n  "messages": [\n')
        size, i = 0, 0
        while size < mb * 1_000_000:
            t = datetime.fromtimestamp(next(clock), timezone(timedelta(hours=1)))
            author = rng.choice(users)
            m = {"id": str(10**18 + i), "type": "Default", "timestamp": t.isoformat(timespec="milliseconds"),
                 "timestampEdited": None, "callEndedTimestamp": None, "isPinned": False, "content": _text(rng),
                 "author": author, "attachments": [], "embeds": [], "stickers": [], "reactions": [], "mentions": []}
            r = rng.random()
            if r < 0.05:
                m["attachments"] = [{"id": "1", "url": "https://cdn.discordapp.com/attachments/1/2/a.png",
                                     "fileName": "a.png", "fileSizeBytes": 12345}]
                m["content"] = "" if r < 0.03 else m["content"]
            elif r < 0.08:
                m["content"] = f"<@{users[1]['id']}> {m['content']}"
                m["mentions"] = [users[1]]
            elif r < 0.1:
                m["type"] = "Reply"
                m["reference"] = {"messageId": str(10**18 + i - 1), "channelId": "42", "guildId": None}
            elif r < 0.11:
                m["type"], m["content"] = "ChannelPinnedMessage", "Pinned a message."
            if rng.random() < 0.05:
                m["reactions"] = [{"emoji": {"id": "", "name": "👍", "code": "thumbsup", "isAnimated": False,
                                             "imageUrl": "https://cdn.jsdelivr.net/gh/twitter/twemoji/1f44d.svg"},
                                   "count": 1, "users": [users[0]]}]
            text = ("" if i == 0 else ",\n") + "\n".join("    " + line for line in
                                                           json.dumps(m, indent=2, ensure_ascii=False).splitlines())
            f.write(text)
            size += len(text.encode())
            i += 1
        f.write(f'\n  ],\n  "messageCount": {i}\n}}\n')


def build_meta(root: Path, mb: int, rng: random.Random, instagram: bool) -> None:
    inbox = root / ("your_instagram_activity" if instagram else "your_facebook_activity") / "messages" / "inbox"
    me = "Zoë Dupont"
    size, thread = 0, 0
    while size < mb * 1_000_000:
        other = f"Friend Lefèvre {thread}"
        folder = inbox / f"friend{thread}_{10**9 + thread}"
        folder.mkdir(parents=True)
        clock = _times(rng, 1_600_000_000 + thread)
        messages = []
        for _ in range(min(30_000, mb * 1000)):
            m: dict = {"sender_name": rng.choice([me, other]), "timestamp_ms": int(next(clock) * 1000),
                       "content": _text(rng), "is_geoblocked_for_viewer": False}
            r = rng.random()
            if r < 0.03:
                del m["content"]
                m["photos"] = [{"uri": f"{folder}/photos/1.jpg", "creation_timestamp": 1_600_000_000}]
            elif r < 0.05:
                m["content"] = f"{m['sender_name']} sent an attachment." if instagram else "Liked a message"
                m["share"] = {"link": "https://www.instagram.com/reel/abc/"}
            elif r < 0.06:
                m["reactions"] = [{"reaction": "❤", "actor": other}]
            if not instagram:
                m["type"] = "Generic"
                m["is_unsent"] = False
            messages.append(m)
        messages.reverse()  # newest first
        for n, start in enumerate(range(0, len(messages), 10_000), 1):
            data = {"participants": [{"name": other}, {"name": me}], "messages": messages[start:start + 10_000],
                    "title": other, "is_still_participant": True, "thread_path": f"inbox/{folder.name}",
                    "magic_words": []}
            text = json.dumps(data, ensure_ascii=False, indent=2).encode("utf-8").decode("latin-1")
            path = folder / f"message_{n}.json"
            path.write_text(json.dumps(json.loads(text), indent=2), encoding="ascii")  # \u00XX escapes, as Meta
            size += path.stat().st_size
        thread += 1


def build(kind: str, tmp: Path, mb: int) -> tuple[Path, list[str]]:
    """The export and the arguments `finetune import KIND` needs for it."""
    rng = random.Random(0)
    if kind == "telegram":
        build_telegram(path := tmp / "result.json", mb, rng)
        return path, []
    if kind == "whatsapp":
        build_whatsapp(path := tmp / "WhatsApp Chat with Friend.txt", mb, rng)
        return path, ["--me", "Me"]
    if kind == "discord":
        build_discord(path := tmp / "Direct Messages - bench [42].json", mb, rng)
        return path, ["--me", "me"]
    build_meta(path := tmp / kind, mb, rng, instagram=kind == "instagram")
    return path, []


def size_of(path: Path) -> int:
    return path.stat().st_size if path.is_file() else sum(p.stat().st_size for p in path.rglob("*.json"))


def peak_rss_kib() -> int:
    """This process's peak RSS. /proc's VmHWM starts again at exec; ru_maxrss keeps the forking parent's."""
    try:
        status = Path("/proc/self/status").read_text()
        return int(re.search(r"VmHWM:\s+(\d+) kB", status).group(1))
    except (OSError, AttributeError):
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss


def child(kind: str, export: str, extra: list[str]) -> int:
    """One import in this process; prints a JSON line of what it measured."""
    from finetune.cli import main

    base = peak_rss_kib()
    err = io.StringIO()
    with tempfile.TemporaryDirectory() as tmp, contextlib.redirect_stderr(err):
        start, cpu = time.perf_counter(), time.process_time()
        rc = main(["import", kind, export, *extra, "-o", str(Path(tmp) / "out.jsonl"), "--no-progress"])
        seconds, cpu = time.perf_counter() - start, time.process_time() - cpu
    summary = err.getvalue()
    if rc != 0:
        print(summary, file=sys.stderr)
        return rc
    numbers = {key: int(re.search(rf"{key} +([\d,]+)", summary).group(1).replace(",", ""))
               for key in ("messages read", "conversations written")}
    print(json.dumps({"seconds": seconds, "cpu": cpu, "peak_kib": peak_rss_kib(),
                      "base_kib": base, **numbers}))
    return 0


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--mb", type=int, default=100, help="size of each synthetic export (default 100)")
    parser.add_argument("--readers", default=",".join(READERS), help=f"comma-separated (default {','.join(READERS)})")
    parser.add_argument("--child", nargs=argparse.REMAINDER, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        return child(args.child[0], args.child[1], args.child[2:])
    print("| reader | export | messages | rows | seconds | CPU s | MB/s (wall) | MB/s (CPU) | peak RSS (MiB) | "
          "RSS before import (MiB) |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for kind in args.readers.split(","):
        with tempfile.TemporaryDirectory() as tmp:
            export, extra = build(kind, Path(tmp), args.mb)
            size = size_of(export)
            run = subprocess.run([sys.executable, __file__, "--child", kind, str(export), *extra],
                                 capture_output=True, text=True)
        if run.returncode != 0:
            print(f"| {kind} | failed: {run.stderr.strip()[-300:]} |")
            continue
        r = json.loads(run.stdout.strip().splitlines()[-1])
        print(f"| {kind} | {size / 1e6:.0f} MB | {r['messages read']:,} | {r['conversations written']:,} | "
              f"{r['seconds']:.1f} | {r['cpu']:.1f} | {size / 1e6 / r['seconds']:.0f} | {size / 1e6 / r['cpu']:.0f} | "
              f"{r['peak_kib'] / 1024:.0f} | "
              f"{r['base_kib'] / 1024:.0f} |", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
