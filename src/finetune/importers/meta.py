"""Meta "Download your information" exports in JSON: Facebook Messenger and Instagram messages.

Layout: `messages/inbox/<thread>/message_1.json` (also `archived_threads/`, `e2ee_cutover/`,
`message_requests/`...), under `your_facebook_activity/` or `your_instagram_activity/` in newer
archives, at the top in older ones. Each file is `{participants: [{name}], messages: [...], title,
thread_path, ...}`, a thread's messages newest first across its files (message_1.json newest).
Every string is UTF-8 whose bytes were written as latin-1 escapes (`\\u00c3\\u00a9` for é): it is
repaired here.

Memory: one file (~10,000 messages) is decoded at a time, and one thread's text messages are held
until its rows are written (they must be put oldest first), so memory is bounded by the largest
thread, never the archive.
"""

from __future__ import annotations

import json
import os
import re
from collections import Counter
from dataclasses import replace
from pathlib import Path
from typing import Any, Callable

from finetune.errors import DataError
from finetune.importers.conversations import ImportOptions, Message, Stats, chat_rows, check_me_spoke
from finetune.data.jsonstream import JsonStream

MESSAGE_FILE = re.compile(r"message_(\d+)\.json")
MEDIA_DIRS = {"photos", "videos", "audio", "gifs", "files", "stickers_used", "media"}
MEDIA_KEYS = ("photos", "videos", "audio_files", "gifs", "files")
NOT_AN_EXPORT = ("expected a Messenger/Instagram message file: a JSON object with 'participants' and "
                 "'messages' (Download your information, format JSON, Messages)")

# Texts Meta writes as if someone said them (English archives; other languages pass as text): the
# strings public parsers of these archives filter (e.g. "X reacted ❤ to your message", "You sent an
# attachment.", "X named the group ...", "X left the group.", Instagram's "Liked a message"). A name
# is 1-6 words and a system text is one line, so a real message that merely mentions a group or a
# call is not caught.
_N = r"\S+(?: \S+){0,5}"
_SYSTEM = [
    rf"(?:{_N} )?[Rr]eacted .{{1,16}} to (?:your|a|their|his|her) message ?",
    r"Liked a message",
    rf"{_N} sent an attachment\.",
    rf"{_N} sent a (?:photo|video|GIF|sticker|voice message|link|live location|location)\.",
    rf"{_N} (?:named the group|changed the group name to) .+",
    rf"{_N} (?:changed|removed) the group photo\.",
    rf"{_N} created the group\.?",
    rf"{_N} (?:left|joined) the group\.",
    rf"{_N} (?:added|removed) {_N} (?:to|from) the group\.",
    rf"{_N} (?:added|removed) {_N} as (?:a )?group admin\.",
    rf"{_N} set (?:the|your|his|her|their) (?:own )?nickname(?: for {_N})? to .+",
    rf"{_N} cleared (?:the|your|his|her|their) (?:own )?nickname.*",
    rf"{_N} set the (?:emoji|quick reaction) to .+",
    rf"{_N} changed the (?:chat )?theme.*",
    rf"{_N} (?:pinned|unpinned) a message\.",
    rf"{_N} (?:started|joined) (?:a|an audio|a video|the|the video) (?:call|chat)\.",
    r"The (?:video )?(?:call|chat) ended\.",
    rf"You missed a (?:video )?(?:call|chat) from {_N}",
    rf"{_N} missed your (?:video )?(?:call|chat)\.",
    rf"You called {_N}\.",
    rf"{_N} created a poll: .+",
    rf"{_N} voted for .+ in the poll.*",
    r"This poll is no longer available\.",
    r"You are now connected on Messenger\.?",
    r"You can now message and call each other.*",
    rf"Say hi to your new Facebook friend,? {_N}",
    rf"You(?:'re| are) now friends with {_N}",
    rf"{_N} waved at (?:you|{_N})!?",
    rf"{_N} mentioned you in (?:their|his|her) story\.?",
]
SYSTEM_TEXT = re.compile("|".join(f"(?:{p})" for p in _SYSTEM))
# Every pattern above holds one of these: a cheap test before the regex, which most texts skip.
_SYSTEM_WORDS = re.compile("eacted|Liked a message|sent a|group|nickname|set the|theme|pinned|call|chat|poll|"
                           "connected on|Say hi|now friends|waved|story")
# Keys of a message that is text only (no media, share, sticker or call).
PLAIN_KEYS = frozenset({"sender_name", "timestamp_ms", "content", "type", "is_unsent", "reactions",
                        "is_geoblocked_for_viewer", "is_taken_down", "bumped_message_metadata",
                        "is_unsent_image_by_messenger_kid_parent"})


def is_system_text(text: str) -> bool:
    """A text Meta wrote about the chat (a reaction, a group change, a call) rather than a message."""
    return _SYSTEM_WORDS.search(text) is not None and SYSTEM_TEXT.fullmatch(text) is not None


def fix_text(text: str) -> str:
    """Undo Meta's mojibake: each UTF-8 byte was written as one character U+0000-U+00FF. A string
    that is not such a byte sequence (a real é, a character above U+00FF) is returned unchanged."""
    if text.isascii():
        return text
    try:
        return text.encode("latin-1").decode("utf-8")
    except (UnicodeEncodeError, UnicodeDecodeError):
        return text


def _number(path: Path) -> int:
    match = MESSAGE_FILE.fullmatch(path.name)
    return int(match.group(1)) if match else 0


def find_threads(roots: list[Path], kind: str) -> dict[str, list[Path]]:
    """Thread folder name -> its message_N.json files, from archive folders, thread folders or
    single files. Files of one thread found in several roots (an archive in parts) are merged."""
    threads: dict[str, list[Path]] = {}
    seen: set[Path] = set()
    for root in roots:
        if root.is_file():
            found = [root]
        elif root.is_dir():
            found = []
            for folder, subfolders, names in os.walk(root):
                subfolders[:] = sorted(d for d in subfolders if d not in MEDIA_DIRS)
                found += [Path(folder) / n for n in sorted(names) if MESSAGE_FILE.fullmatch(n)]
            if not found:
                activity = "your_instagram_activity" if kind == "instagram" else "your_facebook_activity"
                raise DataError(f"{root}: no message_1.json found under it; expected an unzipped {kind} archive "
                                f"({activity}/messages/inbox/<thread>/message_1.json), a thread folder or a "
                                f"message_1.json file")
        else:
            raise DataError(f"{root}: no such file or folder")
        for path in found:
            if path.resolve() not in seen:
                seen.add(path.resolve())
                threads.setdefault(path.parent.name, []).append(path)
    return dict(sorted(threads.items()))


def _load(path: Path) -> dict:
    try:
        data = json.loads(path.read_bytes())
    except UnicodeDecodeError:
        raise DataError(f"{path}: not UTF-8 text; {NOT_AN_EXPORT}") from None
    except json.JSONDecodeError as exc:
        raise DataError(f"{path}: invalid JSON at line {exc.lineno} ({exc.msg}); {NOT_AN_EXPORT}") from None
    if not isinstance(data, dict) or not isinstance(data.get("messages"), list):
        raise DataError(f"{path}: not a message file: {NOT_AN_EXPORT}")
    return data


def _names(participants: Any) -> list[str]:
    """[{"name": ...}] (older archives: plain strings), repaired."""
    names = []
    for p in participants if isinstance(participants, list) else ():
        name = p.get("name") if isinstance(p, dict) else p
        if isinstance(name, str) and name:
            names.append(fix_text(name))
    return names


def participants_of(path: Path) -> list[str]:
    """The participants of a message file, read from its head (they come before the messages)."""
    stream = JsonStream(path, chunk_bytes=1 << 16)
    try:
        if stream.peek() != "{":
            raise DataError(f"{path}: not a message file: {NOT_AN_EXPORT}")
        for key in stream.items():
            value = stream.value()
            if key == "participants":
                return _names(value)
        raise DataError(f"{path}: not a message file (no 'participants'): {NOT_AN_EXPORT}")
    except DataError as exc:
        raise DataError(f"{exc}" if NOT_AN_EXPORT in str(exc) else f"{exc}; {NOT_AN_EXPORT}") from None
    finally:
        stream.close()


def infer_me(threads: dict[str, list[Path]]) -> tuple[str, str]:
    """You: the participant of (nearly) every thread, alone at the top, and how that was found. Not
    required in every thread: a group you left no longer lists you. Older archives list only the
    others: then no one is in 3/4 of the threads and `--me` is asked for rather than guessed."""
    counts: Counter = Counter()
    for files in threads.values():
        counts.update(set(participants_of(min(files, key=_number))))
    ranked = counts.most_common(3)
    shown = ", ".join(f"{name} ({n})" for name, n in ranked) or "none"
    if (len(threads) < 2 or not ranked or ranked[0][1] < 0.75 * len(threads)
            or (len(ranked) > 1 and ranked[1][1] == ranked[0][1])):
        raise DataError(f"cannot tell who you are from {len(threads)} thread(s) (participants in the most threads: "
                        f"{shown}); pass --me 'Your Name' as it appears in the export")
    name, n = ranked[0]
    return name, f"--me inferred: {name!r} (a participant in {n} of {len(threads)} threads; pass --me to override)"


def _selected(wanted: list[str], title: str, folder: str) -> bool:
    if not wanted:
        return True
    keys = {title.casefold(), folder.casefold(), re.sub(r"_\d+$", "", folder).casefold()}
    return any(w.casefold() in keys for w in wanted)


class MetaReader:
    """Turns one thread's message objects into text messages, counting what it drops."""

    def __init__(self, stats: Stats):
        self.stats = stats
        self.kept_without_media = 0
        self.reactions = 0
        self.senders: dict[str, str] = {}  # as written -> repaired (one copy of each name)

    def message(self, obj: Any, path: Path) -> Message | None:
        stats = self.stats
        stats.read += 1
        if not isinstance(obj, dict):
            stats.drop("not a message object")
            return None
        plain = obj.keys() <= PLAIN_KEYS  # the common case: no media, share or call to look for
        if obj.get("is_unsent"):
            stats.drop("unsent")
            return None
        if "reactions" in obj and isinstance(obj["reactions"], list):
            self.reactions += len(obj["reactions"])
        kind = obj.get("type", "Generic")
        if kind == "Call" or (not plain and "call_duration" in obj):
            stats.drop("call")
            return None
        if kind != "Generic" and kind != "Share":
            stats.drop("system message (joins, leaves...)")
            return None
        content = obj.get("content")
        text = fix_text(content).strip() if isinstance(content, str) else ""
        system = is_system_text(text)
        media = share = None
        if not plain:
            share = obj.get("share")
            media = next((key for key in MEDIA_KEYS if obj.get(key)), None)
            media = media or ("sticker" if obj.get("sticker") else None)
        if media or share:
            link = share.get("link") if isinstance(share, dict) else None
            if not text or system or text == link:
                stats.drop("sticker" if media == "sticker" else "photo, video, audio, gif or file" if media
                           else "share (link, post, reel)")
                return None
            self.kept_without_media += 1
        elif system:
            stats.drop("system text (reactions, group changes, calls...)")
            return None
        if not text:
            stats.drop("empty")
            return None
        try:
            time = float(obj["timestamp_ms"]) / 1000
        except (KeyError, TypeError, ValueError):
            raise DataError(f"{path}: a message without a readable timestamp_ms: {str(obj)[:200]}") from None
        raw = obj.get("sender_name")
        sender = self.senders.get(raw) if isinstance(raw, str) else None
        if sender is None:
            sender = fix_text(raw) if isinstance(raw, str) and raw else "(unknown)"
            if isinstance(raw, str):
                self.senders[raw] = sender
        return Message(time, sender, sender, text)


def import_meta(threads: dict[str, list[Path]], options: ImportOptions, wanted: list[str],
                write: Callable[[dict], None], stats: Stats,
                progress: Callable[[int], None] | None = None) -> str:
    """Rows of every selected thread (`wanted`: titles or folder names; empty: all), one thread at a
    time. Returns who `--me` is (given, or inferred from the participants)."""
    if options.me is None:
        me, how = infer_me(threads)
        stats.notices.append(how)
        options = replace(options, me=me)
    reader = MetaReader(stats)
    titles: list[str] = []
    done_bytes = 0
    for folder, files in threads.items():
        messages: list[Message] = []
        overlap = len({_number(f) for f in files}) < len(files)  # the same message_N.json from two parts
        seen: set[tuple[float, str, str]] = set()
        title = None
        for path in sorted(files, key=_number, reverse=True):  # oldest file first
            data = _load(path)
            done_bytes += path.stat().st_size
            if title is None:
                title = fix_text(data.get("title") or "") or ", ".join(_names(data.get("participants"))) or folder
                titles.append(title)
                if not _selected(wanted, title, folder):
                    break
            batch = []
            for obj in reversed(data["messages"]):  # newest first within a file
                message = reader.message(obj, path)
                if message is None:
                    continue
                if overlap:
                    if (message.time, message.sender, message.text) in seen:
                        stats.drop("duplicate (in two files)")
                        continue
                    seen.add((message.time, message.sender, message.text))
                batch.append(message)
            messages += batch
            del data
            if progress is not None:
                progress(done_bytes)
        if not messages:
            continue
        messages.sort(key=lambda m: m.time)  # stable: equal times keep file order
        senders = Counter(m.sender for m in messages)
        stats.senders.update(senders)
        stats.me_spoke += senders[options.me]
        for row in chat_rows(messages, options, set(), stats, contact=title):
            write(row)
    if wanted and not any(_selected(wanted, t, f) for t, f in zip(titles, threads)):
        raise DataError(f"--thread {', '.join(wanted)}: no such thread; threads: {', '.join(sorted(titles)[:30])}")
    if reader.kept_without_media:
        stats.notices.append(f"{reader.kept_without_media:,} message(s) kept their text without their photo, "
                             f"file or link preview")
    if reader.reactions:
        stats.notices.append(f"{reader.reactions:,} reaction(s) ignored (they are not messages)")
    check_me_spoke(stats, options.me)
    return options.me
