"""WhatsApp "Export chat" .txt files, Android (`31/12/22, 21:41 - Name: text`) and iOS
(`[31/12/2022, 21:41:05] Name: text`) styles, 12- or 24-hour clocks, day- or month-first dates, any language.

What WhatsApp writes itself (media placeholders, deleted notices, group events, polls...) is recognised two
ways: by the per-language tables in whatsapp_locales.py, and by rules that need no language:

- a line with no `Name: ` part is a system line; so is one whose "name" holds a double quote, or which a
  group-event template matches only when read whole (`Alice created group "Trip: 2023"`);
- iOS starts media lines with U+200E (U+200F in right-to-left languages) before the `[`, and starts every
  body it writes itself (media, deleted, system notices attributed to the chat's name) with one: such an
  iOS body is not the person's words (those not in the tables are listed in the summary, so a wrong guess
  shows); Android starts attachment lines `IMG-1.jpg (file attached)` with one;
- a shared location (a maps.google.com or foursquare.com link WhatsApp writes) is not the person's words;
- a short `<...>` body (Android placeholders) or a trailing `<...>` marker sent many times by several
  people is reported as an unknown placeholder and left out, so a language the tables lack is visible.

A media message's caption (the lines after the placeholder or attachment line) is the sender's own words
and is kept, unless it is just a file name (documents carry their name as caption).

An export is read twice, a message at a time, so memory does not follow its size: `survey` learns what
needs the whole file (the dates' order, how often each `Name` starts a line, the unknown placeholders, who
has a message kept), then `messages` yields the text messages, which `import_whatsapp` feeds to chat_rows.
"""

from __future__ import annotations

import functools
import re
from collections import Counter, defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable, Iterator

from finetune.errors import DataError
from finetune.importers.conversations import ImportOptions, Message, Stats, chat_rows, is_me
from finetune.importers.textlines import read_lines
from finetune.importers.whatsapp_dates import Clock, DateOrder
from finetune.importers.whatsapp_locales import LOCALES

MARKS = "\u200e\u200f\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069\ufeff"
_M = f"[{MARKS}]*"
_DATE = rf"(?P<date>\d{{1,4}}{_M}[./-]{_M}\d{{1,2}}{_M}[./-]{_M}\d{{1,4}})"
_TIME = (rf"(?P<time>\d{{1,2}}[:.]\d{{2}}(?:[:.]\d{{2}})?)"
         rf"(?:[\s\u202f\u00a0]*(?P<ampm>[AaPp]\.?\s?[Mm]\.?|\u0635|\u0645))?")  # Arabic: sabahan / masa'an
ANDROID = re.compile(rf"^{_M}{_DATE}{_M}[,\u060c]?\s{_TIME}{_M}\s[-\u2013]\s(?P<rest>.*)$")
IOS = re.compile(rf"^(?P<lead>{_M})\[{_M}{_DATE}{_M}[,\u060c]?\s{_TIME}{_M}\]\s(?P<rest>.*)$")
IOS_TIME_FIRST = re.compile(rf"^(?P<lead>{_M})\[{_M}{_TIME}{_M},\s{_DATE}{_M}\]\s(?P<rest>.*)$")  # Vietnamese

_NORMAL = str.maketrans({**{c: None for c in MARKS}, **{c: '"' for c in "\u201c\u201d\u201e\u201f\u00ab\u00bb"},
                         **{c: " " for c in "\u00a0\u202f\u2009\u2007"}})
_ODD = re.compile("[" + "".join(map(chr, _NORMAL)) + "]")
_MARK = re.compile(f"[{MARKS}]")
_MARK_SET = frozenset(MARKS)
_MARK_CHARS = tuple(MARKS)
_QUOTE = re.compile('["\u201c\u201d\u201e\u201f\u00ab\u00bb]')
_SENDER_STRIP, _BLANK, _MARKS_SPACE = MARKS + " ~\u00a0\u202f", MARKS + " \t", MARKS + " "
_FILE_NAME = re.compile(r"^\S[^\n]{0,150}\.[A-Za-z][A-Za-z0-9]{1,4}$")
_ANGLE = re.compile(r"^<[^<>\n]{1,60}>$")
_TRAILING_ANGLE = re.compile(rf"\s[{MARKS}]*(<[^<>\n]{{1,60}}>)$")
_ANDROID_FILE = re.compile(r"^\S[^\n]{0,150}\.[a-z0-9]{2,5} \([^()]+\)$")  # on normal(): lower case
_OPTION_LINE = re.compile(r"^\S+: .+ \(\d+ [^()]+\)$")
# A shared location, any language: `location: https://maps.google.com/?q=51.5,-0.1`, or a place whose last line
# is its Foursquare page. WhatsApp writes these; the person only tapped "share location".
_LOCATION = re.compile(r"^[^\n]{0,40}?:? ?https://maps\.google\.com/\?q=-?[\d.]+,-?[\d.]+$"
                       r"|(?:^|\n)https://foursquare\.com/v/\S+$|^[^\n]{0,120}: https://foursquare\.com/v/\S+$")
UNKNOWN_MIN_COUNT, UNKNOWN_MIN_SENDERS = 3, 2  # a `<...>` this frequent, from this many people, is WhatsApp's


def _plain(text: str) -> str:
    """`text` without direction marks, with plain quotes and spaces (str.translate is slow: only when needed)."""
    return text if text.isascii() or not _ODD.search(text) else text.translate(_NORMAL)


def normal(text: str) -> str:
    """Case, direction marks, quote and space kinds, and a final full stop do not matter when matching."""
    text = _plain(text)
    if not text.isprintable() or "  " in text or text[:1] == " " or text[-1:] == " ":  # else split() is a no-op
        text = " ".join(text.split())
    return text.replace(".>", ">").rstrip(".").strip().casefold()


def _template(template: str) -> str:
    return "".join(".+?" if part == "{}" else re.escape(part) for part in re.split(r"(\{\})", normal(template)))


@dataclass(frozen=True)
class Tables:
    """All languages' strings, normalised and compiled once."""

    exact: dict[str, str]  # normal(body) -> kind of drop
    notices: tuple[str, ...]
    notice_starts: frozenset[str]  # their first characters: most bodies are ruled out by one set lookup
    events: re.Pattern[str]
    edited: frozenset[str]
    android_attached: re.Pattern[str]
    ios_attached: re.Pattern[str]
    poll_headers: frozenset[str]
    poll_options: frozenset[str]
    chat_files: tuple[re.Pattern[str], ...]

    @classmethod
    def build(cls) -> Tables:
        exact: dict[str, str] = {}
        kinds = {"media": "media omitted", "view_once": "view once", "deleted": "deleted", "calls": "missed call"}
        for table in LOCALES.values():
            for key, kind in kinds.items():
                exact.update((normal(s), kind) for s in table[key])
        every = {key: [s for t in LOCALES.values() for s in t[key]] for key in next(iter(LOCALES.values()))}
        events = "|".join(sorted({_template(t) for t in every["events"]}, key=len, reverse=True))
        attached = "|".join(sorted({re.escape(normal(w)) for w in every["attached"]}, key=len, reverse=True))
        files = sorted(every["chat_file"], key=len, reverse=True)
        notices = tuple(sorted({normal(s) for s in every["notices"]}))
        assert all(notices), "an empty notice would match every body"
        return cls(
            exact=exact, notices=notices, notice_starts=frozenset(n[0] for n in notices),
            events=re.compile(rf"^(?:{events})(?:\.? .*)?$"), edited=frozenset(normal(s) for s in every["edited"]),
            android_attached=re.compile(rf"^.+ \((?:{attached})\)$"),
            ios_attached=re.compile(rf"<\s?(?:{attached})\s?:\s?.+>$|<.+ eklendi>$"),
            poll_headers=frozenset(normal(p[0]) for t in LOCALES.values() if (p := t["poll"])),
            poll_options=frozenset(normal(p[1]) for t in LOCALES.values() if (p := t["poll"])),
            chat_files=tuple(re.compile(re.escape(f).replace(r"\{\}", "(?P<name>.+)"), re.IGNORECASE)
                             for f in files))


@functools.cache
def tables() -> Tables:
    """The language tables, compiled on first use (importing this module stays cheap)."""
    return Tables.build()


def chat_label(path: Path) -> str | None:
    """The chat's name from the export's file name (`WhatsApp Chat with Alice.txt`, `Chat de WhatsApp con
    Alice.txt`, iOS `_chat.txt` in a folder `WhatsApp Chat - Alice`), or None when the name says nothing."""
    stem = path.stem
    from_folder = stem.lower() == "_chat"
    if from_folder:
        stem = path.resolve().parent.name
    stem = re.sub(r"\s*\(\d+\)$", "", " ".join(stem.translate(_NORMAL).split()))
    for candidate in (stem, stem.replace("_", " ")):
        for pattern in tables().chat_files:
            match = pattern.fullmatch(candidate)
            if match and match["name"].strip():
                return match["name"].strip()
    return (stem or None) if from_folder else None


def _split_sender(rest: str) -> tuple[str, str] | None:
    """`Name: body` -> (name, body); iOS bodies that WhatsApp writes start with a mark, so `: <mark>` is
    preferred as the split (a group name `Trip: 2023` then stays whole)."""
    sender, sep, body = rest.partition(": ")
    if not sep:
        return None
    if not body.startswith(_MARK_CHARS):
        at = body.find(": ")
        while at >= 0:
            if body[at + 2:at + 3] in _MARK_SET:
                return rest[:len(sender) + 2 + at], body[at + 2:]
            at = body.find(": ", at + 1)
    return sender, body


def _is_event(rest: str, body: str) -> bool:
    """The whole line reads as a group event while its `body` part alone does not: `Alice created group
    "Trip: 2023"` is an event; `Bob: Alice left` is Bob saying something."""
    return bool(tables().events.match(normal(rest))) and not tables().events.match(normal(body))


def _is_poll(lines: list[str]) -> bool:
    """`POLL:`, the question, `OPTION: tacos (1 vote)` lines: by the tables' header or option words, or in any
    language by its shape (a lone `WORD:` in upper case or a caseless script, then only option lines)."""
    stripped = [line.translate(_NORMAL).strip() for line in lines]
    if len(lines) < 2 or not stripped[0].endswith(":"):
        return False
    word = stripped[0][:-1]
    if normal(word) in tables().poll_headers:
        return True
    options = stripped[2:]
    if not options or not all(_OPTION_LINE.match(line) for line in options):
        return False
    known = all(normal(line.split(":", 1)[0]) in tables().poll_options for line in options)
    return known or (word.isalpha() and not any(c.islower() for c in word))


def _caption(lines: list[str], stats: Stats) -> str | None:
    """The words sent with a media message (the lines after it), unless they are only a file name."""
    text = "\n".join(lines).strip().strip(MARKS).strip()
    if not text or ("\n" not in text and _FILE_NAME.match(text)):
        return None
    stats.cleaned["caption kept, media dropped"] += 1
    return text


def classify(lines: list[str], ios: bool, marked_line: bool, stats: Stats) -> tuple[str | None, str | None]:
    """(kind of drop or None, the text to keep or None) for one message's body lines; `ios`: the line has the
    iOS layout, `marked_line`: iOS marked it (before the `[`) as a media line."""
    first = lines[0]
    key = normal(first)
    if not (first if len(lines) == 1 else "".join(lines)).strip(_BLANK):
        return "empty", None
    if marked_line and not (key.endswith(":") and _is_poll(lines)):  # iOS marks media lines before the `[`
        return tables().exact.get(key, "media omitted"), _caption(lines[1:], stats)
    kind = tables().exact.get(key)
    if kind is None and not first.isascii() and _MARK.search(first, 1):  # iOS `report.pdf <LRM>document omitted`
        tail = _MARK.split(first)[-1]
        kind = "media omitted" if tables().exact.get(normal(tail)) == "media omitted" else None
    if kind == "media omitted":
        return kind, _caption(lines[1:], stats)
    if kind is not None:
        return kind, None
    if key.endswith((")", ">")) and (tables().android_attached.match(key) or tables().ios_attached.search(key)):
        return "attachment", _caption(lines[1:], stats)
    if key.endswith(":") and _is_poll(lines):
        return "poll", None
    if "https://" in lines[-1] and _LOCATION.search("\n".join(lines).translate(_NORMAL).strip()):
        return "location", None
    if key[:1] in tables().notice_starts and key.startswith(tables().notices):
        return "system line", None
    if first[:1] in _MARK_SET:
        if ios:  # iOS writes it, the person did not; listed in the summary, so a wrong guess shows
            return ("system line" if tables().events.match(key) else "marked by WhatsApp (not in the tables)"), None
        if _ANDROID_FILE.match(key):  # Android: `<LRM>IMG-1.jpg (soubor byl přiložen)`, any language
            return "attachment", _caption(lines[1:], stats)
    text = "\n".join(lines).strip().lstrip(MARKS)
    if text.rstrip(_MARKS_SPACE).endswith(">"):
        tail = _TRAILING_ANGLE.search(text.rstrip(_MARKS_SPACE))
        if tail and normal(tail.group(1)) in tables().edited:
            stats.cleaned["edited marker removed"] += 1
            text = text.rstrip(_MARKS_SPACE)[:tail.start()].rstrip(_MARKS_SPACE)
    return None, text


def _entries(path: Path, progress: Callable[[int], None] | None) -> Iterator[tuple[int, re.Match[str], list[str]]]:
    """Each message as (line number, its first line's match, its lines: the first one's text after the time,
    then the lines up to the next message), in file order; one message is held at a time."""
    lines = read_lines(path, progress=progress,
                       what="; WhatsApp exports are UTF-8 — re-export the chat or convert the file with iconv")
    entry = None
    for line_no, line in enumerate(lines, 1):
        match = ANDROID.match(line) or IOS.match(line) or IOS_TIME_FIRST.match(line)  # a digit or a `[` first
        if match:
            if entry is not None:
                yield entry
            entry = (line_no, match, [match["rest"]])
        elif entry is not None:
            entry[2].append(line)
        elif line.strip():
            for _ in lines:  # bytes that are not UTF-8 anywhere in the file are the error to report
                pass
            raise DataError(f"{path}:{line_no}: not a WhatsApp chat export (expected lines like "
                            f"'31/12/22, 21:41 - Name: text' or '[31/12/2022, 21:41:05] Name: text')")
    if entry is None:
        raise DataError(f"{path}: the export is empty")
    yield entry


def _lead(match: re.Match[str]) -> str | None:
    """iOS: the marks before the `[` ("" when none); Android: None."""
    return None if match.re is ANDROID else match["lead"]


def _candidates(body: str) -> Iterator[str]:
    """A whole `<...>` body, and a trailing ` <...>` marker: what may be WhatsApp's in a language the tables
    lack."""
    if _ANGLE.match(body):
        yield body
    tail = _TRAILING_ANGLE.search(body)
    if tail:
        yield tail.group(1)


@dataclass(frozen=True)
class Survey:
    """What the first pass over an export learns, which the second needs before its first message."""

    order: str  # of the dates' fields: dmy, mdy or ymd
    seen: Counter  # the `Name` part of messages' first lines -> messages (a rare one may be an event's words)
    unknown: frozenset[str]  # `<...>` bodies and markers several people send many times: WhatsApp's
    senders: frozenset[str]  # who has a message kept


def survey(path: Path, date_order: str | None, stats: Stats,
           progress: Callable[[int], None] | None = None) -> Survey:
    """The first pass: every date, every `Name`, and the classification of only the messages that hold a `>`
    (a `<...>` may be an unknown placeholder) or are the first ones of a sender (until one is kept)."""
    dates, seen = DateOrder(), Counter()
    angles: Counter = Counter()  # (candidate, sender, the Name whose rarity makes it an event, or None)
    senders: set[str] = set()  # who surely has a message kept
    maybe: defaultdict[str, set] = defaultdict(set)  # sender -> {(Name as above or None, <...> body or None)}
    scratch = Stats()  # classify counts what it cleans: the second pass counts it
    for _, match, lines in _entries(path, progress):
        dates.add(match["date"])
        parts = _split_sender(lines[0])
        if parts is None:
            continue
        seen[parts[0]] += 1
        sender = parts[0].strip(_SENDER_STRIP)
        if (sender in senders and ">" not in (lines[0] if len(lines) == 1 else "\n".join(lines))
                or _QUOTE.search(parts[0])):
            continue
        lead = _lead(match)
        _, body = classify([parts[1], *lines[1:]], lead is not None, bool(lead), scratch)
        if not body:
            continue
        # kept unless its Name ends up rare and it reads as an event (a slow match: only while it is rare)
        event = parts[0] if seen[parts[0]] <= 2 and not lead and _is_event(lines[0], parts[1]) else None
        for candidate in _candidates(body):
            angles[candidate, sender, event] += 1
        whole = body if _ANGLE.match(body) else None
        if event is None and whole is None:
            senders.add(sender)
            maybe.pop(sender, None)
        elif sender not in senders:
            maybe[sender].add((event, whole))
    order = dates.order(path, date_order, stats)
    counts: defaultdict[str, Counter] = defaultdict(Counter)
    for (candidate, sender, event), n in angles.items():
        if event is None or seen[event] > 2:
            counts[candidate][sender] += n
    unknown = frozenset(c for c, who in counts.items()
                        if sum(who.values()) >= UNKNOWN_MIN_COUNT and len(who) >= UNKNOWN_MIN_SENDERS)
    senders.update(sender for sender, ways in maybe.items()
                   if any((event is None or seen[event] > 2) and whole not in unknown for event, whole in ways))
    return Survey(order, seen, unknown, frozenset(senders))


def messages(path: Path, found: Survey, stats: Stats,
             progress: Callable[[int], None] | None = None) -> Iterator[Message]:
    """The second pass: the text messages, in file order; everything else dropped and counted in `stats`.
    Whole `<...>` bodies and trailing `<...>` markers of `found.unknown` are dropped or stripped, and listed in
    the summary."""
    clock, seen, unknown = Clock(path, found.order), found.seen, found.unknown
    placeholders: defaultdict[str, Counter] = defaultdict(Counter)  # listed after the marked ones, as before
    for line_no, match, lines in _entries(path, progress):
        stats.read += 1
        parts = _split_sender(lines[0])
        lead = _lead(match)
        if (parts is None or _QUOTE.search(parts[0])
                or (seen[parts[0]] <= 2 and not lead and _is_event(lines[0], parts[1]))):
            stats.drop("system line")
            continue
        sender = parts[0].strip(_SENDER_STRIP)
        kind, body = classify([parts[1], *lines[1:]], lead is not None, bool(lead), stats)
        if kind is not None:
            stats.drop(kind)
            if kind.startswith("marked"):
                stats.unknown[normal(parts[1])[:60]][sender] += 1
        if not body:
            continue
        if unknown:
            if body in unknown:
                stats.drop("placeholder not in the tables")
                placeholders[body][sender] += 1
                continue
            tail = _TRAILING_ANGLE.search(body)
            if tail and tail.group(1) in unknown:
                stats.cleaned["marker not in the tables removed"] += 1
                placeholders[tail.group(1)][sender] += 1
                body = body[:tail.start()].rstrip()
        yield Message(clock(line_no, match["date"], match["time"], match["ampm"]), sender, sender, body)
    for text, who in placeholders.items():
        stats.unknown[text].update(who)


def read_whatsapp(path: Path, options: ImportOptions, date_order: str | None, stats: Stats) -> list[Message]:
    """The text messages of one exported chat, in file order; everything else dropped and counted."""
    return list(messages(path, survey(path, date_order, stats), stats))


def import_whatsapp(paths: list[Path], options: ImportOptions, date_order: str | None,
                    write: Callable[[dict], None], stats: Stats,
                    progress: Callable[[Path], Callable[[int], None] | None] | None = None) -> None:
    """Each export -> rows, in two passes over the file: the survey, then its messages straight into chat_rows
    (which holds one conversation at a time). `progress(path)`: a callback of the bytes read in both passes
    (twice the file's size in all)."""
    for path in paths:
        report = progress(path) if progress else None
        size = path.stat().st_size
        found = survey(path, date_order, stats, report)
        second = None if report is None else lambda done: report(size + done)
        others = set(found.senders - {options.me})
        for row in chat_rows(_counted(messages(path, found, stats, second), options, stats), options, set(), stats,
                             contact=chat_label(path), others=others):
            write(row)


def _counted(messages: Iterable[Message], options: ImportOptions, stats: Stats) -> Iterator[Message]:
    """`messages`, each counted in `stats` (who is seen; whether --me speaks) as it passes."""
    for m in messages:
        stats.senders[m.sender] += 1
        stats.me_spoke += is_me(options, set(), m)
        yield m
