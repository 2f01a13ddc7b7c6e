"""Speed and peak memory of `finetune import telegram` on a synthetic full-account export.

    python scripts/bench_import.py --mb 100

Builds a Telegram-shaped result.json of about --mb MB (several chats, entity lists, media,
service messages, non-ASCII text), imports it, and prints MB/s and peak RSS.
"""

from __future__ import annotations

import argparse
import json
import random
import resource
import sys
import tempfile
import time
from pathlib import Path

from finetune.importers.conversations import AtomicJsonl, ImportOptions, Stats
from finetune.importers.telegram import import_telegram


def build(path: Path, mb: int, seed: int = 0) -> None:
    rng = random.Random(seed)
    words = "hello film tonight ok lol привет кино сегодня 👍 thanks maybe tomorrow".split()
    with path.open("w", encoding="utf-8") as f:
        f.write('{"about": "bench", "personal_information": {"user_id": 1}, "chats": {"list": [')
        t, chat, size = 1_600_000_000, 0, 0
        while size < mb * 1_000_000:
            msgs = []
            for i in range(5000):
                t += rng.choice([30, 60, 600, 30000])
                who = rng.random() < 0.5
                m = {"id": i, "type": "message", "date": "2020-09-13T12:26:40", "date_unixtime": str(t),
                     "from": "Me" if who else "Friend", "from_id": "user1" if who else "user2",
                     "text": " ".join(rng.choices(words, k=rng.randint(1, 25))),
                     "text_entities": [{"type": "plain", "text": "x"}]}
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


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--mb", type=int, default=100)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        export = Path(tmp) / "result.json"
        build(export, args.mb)
        size = export.stat().st_size
        base_rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        out = AtomicJsonl(Path(tmp) / "out.jsonl", overwrite=True)
        stats = Stats()
        start = time.perf_counter()
        import_telegram(export, ImportOptions(me=None), out.write, stats)
        out.commit()
        seconds = time.perf_counter() - start
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    print("| export | messages | rows | seconds | MB/s | peak RSS (MiB) | RSS before import (MiB) |")
    print("|---|---|---|---|---|---|---|")
    print(f"| {size / 1e6:.0f} MB | {stats.read:,} | {stats.conversations:,} | {seconds:.1f} | "
          f"{size / 1e6 / seconds:.0f} | {peak / 1024:.0f} | {base_rss / 1024:.0f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
