"""The arguments of `finetune import`, apart from the readers so that building the CLI's parser stays instant."""

from __future__ import annotations

import argparse


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("kind", choices=["telegram", "whatsapp", "discord", "messenger", "instagram"],
                   help="which app the export comes from")
    p.add_argument("exports", nargs="+", metavar="EXPORT",
                   help="Telegram result.json, or one or more WhatsApp .txt files, or DiscordChatExporter .json "
                        "files, or a Messenger/Instagram archive folder (unzipped Download your information, "
                        "JSON), thread folder or message_1.json")
    p.add_argument("--output", "-o", required=True, metavar="FILE.jsonl", help="rows {\"messages\": [...]} go here")
    p.add_argument("--me", default=None, metavar="NAME",
                   help="you: your display name or Telegram id (user1234); optional for a full Telegram export; "
                        "Discord: your name, display name or user id; Messenger/Instagram: your name, optional "
                        "(inferred: the participant of (nearly) every thread)")
    p.add_argument("--gap", default="6h", metavar="DURATION",
                   help="a silence longer than this starts a new conversation (90m, 6h, 2d; default 6h)")
    p.add_argument("--system", default=None, help="a system turn at the start of every row")
    p.add_argument("--min-turns", type=int, default=2, metavar="N",
                   help="drop conversations with fewer turns after trimming (default 2: one exchange)")
    p.add_argument("--speaker-names", action="store_true", help="prefix user turns with the sender's name (group chats)")
    p.add_argument("--redact", action="store_true",
                   help="replace emails, phone numbers, URLs and long digit runs with <email>, <phone>, <url>, <number>")
    p.add_argument("--redact-names", action="store_true", help="replace the other participants' names with <name>")
    p.add_argument("--date-order", choices=["dmy", "mdy"], default=None,
                   help="WhatsApp: day-first or month-first dates (default: inferred from the file)")
    p.add_argument("--thread", action="append", default=None, metavar="NAME",
                   help="Messenger/Instagram: import only this conversation (its title or folder name; repeatable)")
    p.add_argument("--overwrite", action="store_true", help="replace --output if it exists")
    p.add_argument("--no-progress", action="store_true", help="no progress lines")
