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
"""

from __future__ import annotations

import re
from collections import Counter, defaultdict
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

from finetune.errors import DataError
from finetune.importers.conversations import ImportOptions, Message, Stats
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
_MARK = re.compile(f"[{MARKS}]")
_MARK_CHARS = tuple(MARKS)
_QUOTES = set('"\u201c\u201d\u201e\u201f\u00ab\u00bb')
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


def normal(text: str) -> str:
    """Case, direction marks, quote and space kinds, and a final full stop do not matter when matching."""
    text = " ".join(text.translate(_NORMAL).split()).replace(".>", ">").rstrip(".").strip()
    return text.casefold()


def _template(template: str) -> str:
    return "".join(".+?" if part == "{}" else re.escape(part) for part in re.split(r"(\{\})", normal(template)))


@dataclass(frozen=True)
class Tables:
    """All languages' strings, normalised and compiled once."""

    exact: dict[str, str]  # normal(body) -> kind of drop
    notices: tuple[str, ...]
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
        return cls(
            exact=exact, notices=tuple(sorted({normal(s) for s in every["notices"]})),
            events=re.compile(rf"^(?:{events})(?:\.? .*)?$"), edited=frozenset(normal(s) for s in every["edited"]),
            android_attached=re.compile(rf"^.+ \((?:{attached})\)$"),
            ios_attached=re.compile(rf"<\s?(?:{attached})\s?:\s?.+>$|<.+ eklendi>$"),
            poll_headers=frozenset(normal(p[0]) for t in LOCALES.values() if (p := t["poll"])),
            poll_options=frozenset(normal(p[1]) for t in LOCALES.values() if (p := t["poll"])),
            chat_files=tuple(re.compile(re.escape(f).replace(r"\{\}", "(?P<name>.+)"), re.IGNORECASE)
                             for f in files))


TABLES = Tables.build()


def _decode(path: Path) -> str:
    data = path.read_bytes()
    if data.startswith((b"\xff\xfe", b"\xfe\xff")):
        encoding = "utf-16"
    else:
        encoding = "utf-8-sig"
    try:
        return data.decode(encoding)
    except UnicodeDecodeError as exc:
        raise DataError(f"{path}: not UTF-8 text (byte {exc.start}); WhatsApp exports are UTF-8 — "
                        f"re-export the chat or convert the file with iconv") from None


_DATE_SPLIT = re.compile(r"[./-]")


def _date_parts(date: str) -> list[int]:
    return [int(p) for p in _DATE_SPLIT.split(date.translate(_NORMAL))]


def _date_order(path: Path, dates: list[str], forced: str | None, stats: Stats) -> str:
    if forced:
        return forced
    firsts = seconds = 0
    for date in dates:
        if len(_DATE_SPLIT.split(date.translate(_NORMAL), 1)[0]) == 4:
            return "ymd"
        a, b, *_ = _date_parts(date)
        firsts = max(firsts, a)
        seconds = max(seconds, b)
    if firsts > 12 and seconds <= 12:
        order, why = "dmy", f"a first field reaches {firsts}"
    elif seconds > 12 and firsts <= 12:
        order, why = "mdy", f"a second field reaches {seconds}"
    elif firsts > 12 and seconds > 12:
        raise DataError(f"{path}: dates are neither consistently day-first nor month-first; "
                        f"pass --date-order dmy|mdy")
    else:
        order, why = "dmy", "no date tells day from month; pass --date-order mdy if that is wrong"
    stats.notices.append(f"{path.name}: dates read as {order} ({why})")
    return order


def _timestamp(path: Path, line_no: int, date: str, time: str, ampm: str | None, order: str) -> float:
    parts = _date_parts(date)
    if order == "ymd":
        year, month, day = parts
    elif order == "mdy":
        month, day, year = parts
    else:
        day, month, year = parts
    if year < 100:
        year += 2000
    clock = [int(p) for p in re.split(r"[:.]", time)]
    hour, minute, second = clock[0], clock[1], clock[2] if len(clock) > 2 else 0
    if ampm:
        pm = ampm.lower().startswith("p") or ampm == "\u0645"
        hour = hour % 12 + (12 if pm else 0)
    try:
        return datetime(year, month, day, hour, minute, second).timestamp()
    except ValueError:
        raise DataError(f"{path}:{line_no}: impossible date {date} {time} as {order}; "
                        f"try --date-order {'mdy' if order == 'dmy' else 'dmy'}") from None


def chat_label(path: Path) -> str | None:
    """The chat's name from the export's file name (`WhatsApp Chat with Alice.txt`, `Chat de WhatsApp con
    Alice.txt`, iOS `_chat.txt` in a folder `WhatsApp Chat - Alice`), or None when the name says nothing."""
    stem = path.stem
    from_folder = stem.lower() == "_chat"
    if from_folder:
        stem = path.resolve().parent.name
    stem = re.sub(r"\s*\(\d+\)$", "", " ".join(stem.translate(_NORMAL).split()))
    for candidate in (stem, stem.replace("_", " ")):
        for pattern in TABLES.chat_files:
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
        marked = re.search(f": (?=[{MARKS}])", rest)
        if marked:
            sender, body = rest[:marked.start()], rest[marked.end():]
    return sender, body


def _is_event(rest: str, body: str) -> bool:
    """The whole line reads as a group event while its `body` part alone does not: `Alice created group
    "Trip: 2023"` is an event; `Bob: Alice left` is Bob saying something."""
    return bool(TABLES.events.match(normal(rest))) and not TABLES.events.match(normal(body))


def _is_poll(lines: list[str]) -> bool:
    """`POLL:`, the question, `OPTION: tacos (1 vote)` lines: by the tables' header or option words, or in any
    language by its shape (a lone `WORD:` in upper case or a caseless script, then only option lines)."""
    stripped = [line.translate(_NORMAL).strip() for line in lines]
    if len(lines) < 2 or not stripped[0].endswith(":"):
        return False
    word = stripped[0][:-1]
    if normal(word) in TABLES.poll_headers:
        return True
    options = stripped[2:]
    if not options or not all(_OPTION_LINE.match(line) for line in options):
        return False
    known = all(normal(line.split(":", 1)[0]) in TABLES.poll_options for line in options)
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
    if not "".join(lines).strip(MARKS + " \t"):
        return "empty", None
    if marked_line and not (key.endswith(":") and _is_poll(lines)):  # iOS marks media lines before the `[`
        return TABLES.exact.get(key, "media omitted"), _caption(lines[1:], stats)
    kind = TABLES.exact.get(key)
    if kind is None and _MARK.search(first, 1):  # iOS `report.pdf <LRM>document omitted`
        tail = _MARK.split(first)[-1]
        kind = "media omitted" if TABLES.exact.get(normal(tail)) == "media omitted" else None
    if kind == "media omitted":
        return kind, _caption(lines[1:], stats)
    if kind is not None:
        return kind, None
    if key.endswith((")", ">")) and (TABLES.android_attached.match(key) or TABLES.ios_attached.search(key)):
        return "attachment", _caption(lines[1:], stats)
    if key.endswith(":") and _is_poll(lines):
        return "poll", None
    if "https://" in lines[-1] and _LOCATION.search("\n".join(lines).translate(_NORMAL).strip()):
        return "location", None
    if key.startswith(TABLES.notices):
        return "system line", None
    if first.startswith(_MARK_CHARS):
        if ios:  # iOS writes it, the person did not; listed in the summary, so a wrong guess shows
            return ("system line" if TABLES.events.match(key) else "marked by WhatsApp (not in the tables)"), None
        if _ANDROID_FILE.match(key):  # Android: `<LRM>IMG-1.jpg (soubor byl přiložen)`, any language
            return "attachment", _caption(lines[1:], stats)
    text = "\n".join(lines).strip().lstrip(MARKS)
    if text.rstrip(MARKS + " ").endswith(">"):
        tail = _TRAILING_ANGLE.search(text.rstrip(MARKS + " "))
        if tail and normal(tail.group(1)) in TABLES.edited:
            stats.cleaned["edited marker removed"] += 1
            text = text.rstrip(MARKS + " ")[:tail.start()].rstrip(MARKS + " ")
    return None, text


def read_whatsapp(path: Path, options: ImportOptions, date_order: str | None, stats: Stats) -> list[Message]:
    """The text messages of one exported chat, in file order; everything else dropped and counted."""
    text = _decode(path)
    raw: list[tuple[int, re.Match[str], list[str]]] = []
    for line_no, line in enumerate(text.splitlines(), 1):
        match = IOS.match(line) or ANDROID.match(line) or IOS_TIME_FIRST.match(line)
        if match:
            raw.append((line_no, match, [match["rest"]]))
        elif raw:
            raw[-1][2].append(line)
        elif line.strip():
            raise DataError(f"{path}:{line_no}: not a WhatsApp chat export (expected lines like "
                            f"'31/12/22, 21:41 - Name: text' or '[31/12/2022, 21:41:05] Name: text')")
    if not raw:
        raise DataError(f"{path}: the export is empty")
    order = _date_order(path, [m["date"] for _, m, _ in raw], date_order, stats)
    split = [_split_sender(lines[0]) for _, _, lines in raw]
    seen = Counter(s[0] for s in split if s)
    kept: list[tuple[int, re.Match[str], str, str]] = []
    for (line_no, match, lines), parts in zip(raw, split):
        stats.read += 1
        if (parts is None or _QUOTES & set(parts[0])
                or (seen[parts[0]] <= 2 and not match.groupdict().get("lead") and _is_event(lines[0], parts[1]))):
            stats.drop("system line")
            continue
        sender = parts[0].strip(MARKS + " ~\u00a0\u202f")
        ios = "lead" in match.groupdict()
        kind, body = classify([parts[1], *lines[1:]], ios, bool(ios and match["lead"]), stats)
        if kind is not None:
            stats.drop(kind)
            if kind.startswith("marked"):
                stats.unknown[normal(parts[1])[:60]][sender] += 1
        if body:
            kept.append((line_no, match, sender, body))
    messages = []
    times: dict[tuple, float] = {}  # messages share minutes; converting local time is the slow part
    for line_no, match, sender, body in _without_unknown_placeholders(kept, stats):
        when = (match["date"], match["time"], match["ampm"])
        if when not in times:
            times[when] = _timestamp(path, line_no, *when, order)
        messages.append(Message(times[when], sender, sender, body))
    return messages


def _without_unknown_placeholders(kept: list[tuple[int, re.Match[str], str, str]],
                                  stats: Stats) -> list[tuple[int, re.Match[str], str, str]]:
    """Whole `<...>` bodies and trailing `<...>` markers that several people send many times are WhatsApp's
    (a language the tables lack): drop or strip them, and list them in the summary."""
    senders: defaultdict[str, Counter] = defaultdict(Counter)
    for _, _, sender, body in kept:
        whole = body if _ANGLE.match(body) else None
        tail = _TRAILING_ANGLE.search(body)
        for candidate in (whole, tail.group(1) if tail else None):
            if candidate:
                senders[candidate][sender] += 1
    unknown = {c for c, who in senders.items()
               if sum(who.values()) >= UNKNOWN_MIN_COUNT and len(who) >= UNKNOWN_MIN_SENDERS}
    if not unknown:
        return kept
    result = []
    for line_no, match, sender, body in kept:
        if body in unknown:
            stats.drop("placeholder not in the tables")
            stats.unknown[body][sender] += 1
            continue
        tail = _TRAILING_ANGLE.search(body)
        if tail and tail.group(1) in unknown:
            stats.cleaned["marker not in the tables removed"] += 1
            stats.unknown[tail.group(1)][sender] += 1
            body = body[:tail.start()].rstrip()
        result.append((line_no, match, sender, body))
    return result
