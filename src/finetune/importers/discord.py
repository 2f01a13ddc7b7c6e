"""DiscordChatExporter JSON exports (`--format Json`): one channel or DM per file,
`{guild, channel, dateRange, exportedAt, messages: [...], messageCount}`.

The format is the one DiscordChatExporter's JsonMessageWriter writes: each message has `type`
("Default", "Reply", or a system kind such as "ChannelPinnedMessage", "GuildMemberJoin", "Call",
"RecipientAdd", "ThreadCreated"; an unknown kind is written as its number), `timestamp` (ISO 8601
with an offset), `content`, `author {id, name, discriminator, nickname, isBot, ...}`,
`attachments`, `embeds`, `stickers`, `reactions`, `mentions [{id, name, nickname, ...}]` and
`reference`. The `messages` array is streamed (jsonstream.py): one message object is decoded at a
time; a channel's text messages are kept (as small Message records) until the file ends.
"""

from __future__ import annotations

import re
import sys
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any, Callable

from finetune.errors import DataError
from finetune.importers.conversations import ImportOptions, Message, Stats, chat_rows
from finetune.data.jsonstream import JsonStream

TEXT_TYPES = ("Default", "Reply")
CALL_TYPES = ("Call",)
# <@123> and <@!123> (a nickname mention), <#123> a channel, <@&123> a role, <:name:123> and
# <a:name:123> custom emoji: what `--markdown false` exports leave in `content`.
_MENTION = re.compile(r"<@!?(\d+)>")
_CHANNEL = re.compile(r"<#\d+>")
_ROLE = re.compile(r"<@&\d+>")
_EMOJI = re.compile(r"<a?:(\w+):\d+>")
_ISO = re.compile(r"(?P<base>\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d)(?:\.(?P<fraction>\d+))?(?P<offset>[Zz]|[+-]\d\d:\d\d)?$")

NOT_AN_EXPORT = ("expected a DiscordChatExporter JSON export: an object with 'guild', 'channel' and 'messages' "
                 "(export with the JSON format: `--format Json` on the command line, 'JSON' in the app)")


@dataclass
class Channel:
    """One exported channel: its label and its text messages, in file order."""

    id: str = ""
    label: str = ""
    messages: list[Message] = field(default_factory=list)


@dataclass
class DiscordReader:
    """Reads DiscordChatExporter files one at a time. `--me` is matched against each author's name,
    nickname (display name), `name#discriminator` and id; every matching id counts as you."""

    options: ImportOptions
    stats: Stats
    me_ids: set[str] = field(default_factory=set)
    names: dict[str, str] = field(default_factory=dict)  # user id -> name shown (for mentions)
    checked: set[tuple[str, str]] = field(default_factory=set)
    media_with_text: int = 0

    def read(self, path: Path, progress: Callable[[int], None] | None = None,
             chunk_bytes: int = 1 << 22) -> Channel:
        stream = JsonStream(path, chunk_bytes=chunk_bytes, progress=progress)
        try:
            if stream.peek() != "{":
                raise DataError(f"{path}: not a Discord export: {NOT_AN_EXPORT}")
            channel = Channel()
            meta: dict[str, Any] = {}
            found = False
            for key in stream.items():
                if key == "messages":
                    found = True
                    for _ in stream.elements():
                        message = self.message(stream.value(), path)
                        if message is not None:
                            channel.messages.append(message)
                else:
                    meta[key] = stream.value()
        finally:
            stream.close()
        if not found or not isinstance(meta.get("channel"), dict):
            raise DataError(f"{path}: not a Discord export: {NOT_AN_EXPORT}; "
                            f"top-level keys: {', '.join(meta) or 'none'}")
        channel.id = str(meta["channel"].get("id", ""))
        channel.label = channel_label(meta.get("guild"), meta["channel"])
        return channel

    def message(self, obj: Any, path: Path) -> Message | None:
        """A text message, or None (counted by reason)."""
        stats = self.stats
        stats.read += 1
        if not isinstance(obj, dict):
            raise DataError(f"{path}: a message is not a JSON object: {NOT_AN_EXPORT}")
        kind = obj.get("type")
        author = obj.get("author")
        if not isinstance(author, dict):
            author = {}
        if kind not in TEXT_TYPES:
            stats.drop("call" if kind in CALL_TYPES else "system message (pin, join, thread...)")
            return None
        if author.get("isBot"):
            stats.drop("bot")
            return None
        content = obj.get("content")
        text = content.strip() if isinstance(content, str) else ""
        media = bool(obj.get("attachments") or obj.get("stickers"))
        if not text:
            if media:
                stats.drop("attachment or sticker")
            elif obj.get("embeds"):
                stats.drop("embed")
            else:
                stats.drop("empty")
            return None
        self.media_with_text += media
        for user in obj.get("mentions") or ():
            if isinstance(user, dict) and user.get("id") is not None:
                self.names[str(user["id"])] = str(user.get("nickname") or user.get("name") or "")
        if "<" in text:
            text = self.plain(text)
        time = parse_time(obj.get("timestamp"))
        if time is None:
            raise DataError(f"{path}: message {obj.get('id')}: unreadable timestamp {obj.get('timestamp')!r} "
                            f"(expected ISO 8601 such as 2023-01-15T10:30:00.123+00:00)")
        user_id = str(author.get("id") or "")
        name = str(author.get("name") or "")
        shown = str(author.get("nickname") or name or user_id)
        if user_id and user_id not in self.names:
            self.names[user_id] = shown
        if (user_id, shown) not in self.checked:  # once per author and name shown
            self.checked.add((user_id, shown))
            if self.options.me in (name, shown, user_id, f"{name}#{author.get('discriminator')}"):
                self.me_ids.add(user_id)
        message = Message(time, sys.intern(user_id), sys.intern(shown), text)  # one copy of each name
        stats.senders[shown if shown == name else f"{shown} ({name})"] += 1
        stats.me_spoke += user_id in self.me_ids
        return message

    def plain(self, text: str) -> str:
        """Raw mention markup as the Discord client shows it: @name, #channel, @role, :emoji:."""
        def mention(match: re.Match[str]) -> str:
            if self.options.redact_names:
                self.stats.redactions["name"] += 1
                return "@<name>"
            return "@" + (self.names.get(match.group(1)) or "Unknown")

        text = _MENTION.sub(mention, text)
        text = _ROLE.sub("@role", _CHANNEL.sub("#channel", text))
        return _EMOJI.sub(r":\1:", text)

    def notices(self) -> None:
        if len(self.me_ids) > 1:
            self.stats.notices.append(f"--me {self.options.me!r} matched {len(self.me_ids)} accounts "
                                      f"(ids {', '.join(sorted(self.me_ids))}); all count as you")
        if self.media_with_text:
            self.stats.notices.append(f"{self.media_with_text:,} message(s) kept their text without their "
                                      f"attachments or stickers")


def parse_time(value: Any) -> float | None:
    """Seconds since the epoch of DiscordChatExporter's ISO 8601 timestamps. .NET writes 0-7
    fraction digits and may end in Z, which `fromisoformat` before Python 3.11 rejects."""
    if not isinstance(value, str):
        return None
    try:
        return datetime.fromisoformat(value).timestamp()
    except ValueError:
        pass
    match = _ISO.match(value)
    if match is None:
        return None
    fraction = (match["fraction"] or "")[:6].ljust(6, "0")
    offset = "+00:00" if match["offset"] in ("Z", "z", None) else match["offset"]
    try:
        return datetime.fromisoformat(f"{match['base']}.{fraction}{offset}").timestamp()
    except ValueError:
        return None


def channel_label(guild: Any, channel: dict) -> str:
    """A DM's partner (DiscordChatExporter names a DM channel after its recipients), else
    `guild / #channel` (a thread: `guild / #parent / thread`)."""
    name = str(channel.get("name") or channel.get("id") or "")
    kind = str(channel.get("type") or "")
    if kind.startswith("Direct"):
        return name
    guild_name = str(guild.get("name") if isinstance(guild, dict) else "") or "Discord"
    if kind.endswith("Thread") and channel.get("category"):
        return f"{guild_name} / #{channel['category']} / {name}"
    return f"{guild_name} / #{name}"


def import_discord(paths: list[Path], options: ImportOptions, write: Callable[[dict], None], stats: Stats,
                   progress: Callable[[Path], Callable[[int], None] | None] | None = None) -> None:
    """Rows of every file, one channel at a time; consecutive files of one channel (an export split
    with `--partition`) are joined before conversations are cut."""
    reader = DiscordReader(options, stats)
    pending: Channel | None = None
    for path in paths:
        channel = reader.read(path, progress(path) if progress else None)
        if pending is not None and pending.id == channel.id:
            pending.messages += channel.messages
            continue
        if pending is not None:
            _rows(pending, options, reader.me_ids, write, stats)
        pending = channel
    if pending is not None:
        _rows(pending, options, reader.me_ids, write, stats)
    reader.notices()


def _rows(channel: Channel, options: ImportOptions, me_ids: set[str], write: Callable[[dict], None],
          stats: Stats) -> None:
    channel.messages.sort(key=lambda m: m.time)
    for row in chat_rows(channel.messages, options, me_ids, stats, contact=channel.label):
        write(row)
