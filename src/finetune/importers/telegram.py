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


def to_message(obj: Any, stats: Stats, path: Path | str = "") -> Message | None:
    """A text message, or None (counted by reason) for service messages, polls, forwards, media without a
    caption, empties. A photo, video or file sent with a caption keeps the caption (the sender's own words)
    as the message; the media itself is dropped."""
    stats.read += 1
    if not isinstance(obj, dict) or obj.get("type") != "message":
        stats.drop("service message")
        return None
    if "poll" in obj:
        stats.drop("poll")
        return None
    if "forwarded_from" in obj:
        stats.drop("forwarded")
        return None
    text = flatten_text(obj.get("text")).strip()
    media = any(key in obj for key in MEDIA_KEYS)
    if media and (not text or "sticker_emoji" in obj):
        stats.drop("media or sticker without a caption")
        return None
    if not text:
        stats.drop("empty")
        return None
    if media:
        stats.cleaned["caption kept, media dropped"] += 1
    return Message(_time(obj, path), str(obj.get("from_id") or ""), str(obj.get("from") or obj.get("from_id") or ""),
                   text)


def _time(obj: dict, path: Path | str) -> float:
    """Seconds since the epoch from `date_unixtime` (or the ISO `date` of older exports); DataError naming the
    file and the message otherwise."""
    where = f"{path}: message {obj.get('id')}"
    if "date_unixtime" in obj:
        try:
            return float(obj["date_unixtime"])
        except (TypeError, ValueError):
            raise DataError(f"{where}: date_unixtime {obj['date_unixtime']!r} is not a number of seconds; "
                            f"re-export the chat from Telegram Desktop (Machine-readable JSON)") from None
    try:
        return datetime.fromisoformat(str(obj.get("date"))).timestamp()
    except ValueError:
        raise DataError(f"{where}: unreadable date {obj.get('date')!r} (expected ISO 8601 such as "
                        f"2023-11-14T22:13:20)") from None


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
                _chat(stream, options, me_ids, write, stats, path, meta.get("name"))
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
                        name = None
                        for chat_key in stream.items():
                            if chat_key == "messages":
                                _chat(stream, options, me_ids, write, stats, path, name)
                            elif chat_key == "name":
                                name = stream.value()
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
          stats: Stats, path: Path, name: Any) -> None:
    """One chat's messages -> rows; `name` (the chat's `name` key, read before its messages) labels them."""
    messages: list[Message] = []
    for _ in stream.elements():
        message = to_message(stream.value(), stats, path)
        if message is None:
            continue
        messages.append(message)
        stats.senders[message.sender] += 1
        if is_me(options, me_ids, message):
            stats.me_spoke += 1
    messages.sort(key=lambda m: m.time)
    contact = name if isinstance(name, str) and name.strip() else None
    for row in chat_rows(messages, options, me_ids, stats, contact=contact):
        write(row)
