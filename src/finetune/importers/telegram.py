"""Telegram Desktop exports ("Export chat history", JSON): one chat's result.json
(`{name, type, id, messages}`) or a full-account export (`personal_information`, `chats.list[]`).

The file is walked as a stream (see finetune.data.jsonstream): each message object is decoded on its own and
each chat's text messages are turned into rows before the next chat is read.
"""

from __future__ import annotations

from datetime import datetime
from pathlib import Path
from typing import Any, Callable

from finetune.errors import DataError
from finetune.importers.conversations import ImportOptions, Message, Stats, chat_rows, is_me
from finetune.data.jsonstream import JsonStream

MEDIA_KEYS = ("photo", "file", "media_type", "poll", "sticker_emoji", "location_information",
              "contact_information", "game_information", "invoice_information")


def flatten_text(text: Any) -> str:
    """Telegram `text`: a string, or a list of strings and entity objects ({"type", "text"})."""
    if isinstance(text, str):
        return text
    if isinstance(text, list):
        return "".join(part if isinstance(part, str) else str(part.get("text", "")) if isinstance(part, dict) else ""
                       for part in text)
    return ""


def to_message(obj: Any, stats: Stats) -> Message | None:
    """A text message, or None (counted by reason) for service messages, media, forwards, empties."""
    stats.read += 1
    if not isinstance(obj, dict) or obj.get("type") != "message":
        stats.drop("service message")
        return None
    if any(key in obj for key in MEDIA_KEYS):
        stats.drop("media, sticker or poll")
        return None
    if "forwarded_from" in obj:
        stats.drop("forwarded")
        return None
    text = flatten_text(obj.get("text")).strip()
    if not text:
        stats.drop("empty")
        return None
    if "date_unixtime" in obj:
        time = float(obj["date_unixtime"])
    else:
        try:
            time = datetime.fromisoformat(str(obj.get("date"))).timestamp()
        except ValueError:
            raise DataError(f"message {obj.get('id')}: unreadable date {obj.get('date')!r}") from None
    sender_id = str(obj.get("from_id") or "")
    return Message(time, sender_id, str(obj.get("from") or sender_id), text)


def import_telegram(path: Path, options: ImportOptions, write: Callable[[dict], None], stats: Stats,
                    progress: Callable[[int], None] | None = None, chunk_bytes: int = 1 << 22) -> None:
    stream = JsonStream(path, chunk_bytes=chunk_bytes, progress=progress)
    try:
        if stream.peek() != "{":
            raise DataError(f"{path}: not a Telegram export (expected a JSON object: the result.json "
                            f"that Telegram Desktop writes with format 'Machine-readable JSON')")
        me_ids: set[str] = set()
        if options.me:
            me_ids.add(options.me)
        found = False
        meta: dict[str, Any] = {}
        for key in stream.items():
            if key == "messages":
                found = True
                _chat(stream, options, me_ids, write, stats)
            elif key == "personal_information":
                info = stream.value()
                if isinstance(info, dict) and info.get("user_id") is not None:
                    me_ids.add(f"user{info['user_id']}")
            elif key in ("chats", "left_chats"):
                found = True
                for sub in stream.items():
                    if sub != "list":
                        stream.value()
                        continue
                    for _ in stream.elements():
                        for chat_key in stream.items():
                            if chat_key == "messages":
                                _chat(stream, options, me_ids, write, stats)
                            else:
                                stream.value()
            else:
                meta[key] = stream.value()
        if not found:
            raise DataError(f"{path}: not a Telegram export: no 'messages' (single chat) and no "
                            f"'chats' (full export); top-level keys: {', '.join(meta) or 'none'}")
        if not me_ids:
            raise DataError(f"{path}: a single-chat export does not say who you are; pass --me NAME or --me user<ID>")
    finally:
        stream.close()


def _chat(stream: JsonStream, options: ImportOptions, me_ids: set[str], write: Callable[[dict], None],
          stats: Stats) -> None:
    messages: list[Message] = []
    for _ in stream.elements():
        message = to_message(stream.value(), stats)
        if message is None:
            continue
        messages.append(message)
        stats.senders[message.sender] += 1
        if is_me(options, me_ids, message):
            stats.me_spoke += 1
    messages.sort(key=lambda m: m.time)
    for row in chat_rows(messages, options, me_ids, stats):
        write(row)
