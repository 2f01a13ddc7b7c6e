"""WhatsApp "Export chat" .txt files, Android (`31/12/22, 21:41 - Name: text`) and iOS
(`[31/12/2022, 21:41:05] Name: text`) styles, 12- or 24-hour clocks, day- or month-first dates."""

from __future__ import annotations

import re
from datetime import datetime
from pathlib import Path

from finetune.errors import DataError
from finetune.importers.conversations import ImportOptions, Message, Stats

_DATE = r"(?P<date>\d{1,4}[./-]\d{1,2}[./-]\d{1,4})"
_TIME = r"(?P<time>\d{1,2}[:.]\d{2}(?:[:.]\d{2})?)(?:[\s\u202f\u00a0]*(?P<ampm>[AaPp]\.?\s?[Mm]\.?))?"
ANDROID = re.compile(rf"^\u200e?{_DATE},?\s{_TIME}\s[-\u2013]\s(?P<rest>.*)$")
IOS = re.compile(rf"^\u200e?\[{_DATE},?\s{_TIME}\]\s(?P<rest>.*)$")

MEDIA = re.compile(r"^\u200e?(?:<Media omitted>|<attached: [^>]*>|(?:image|video|audio|sticker|GIF|document|"
                   r"Contact card) omitted|.* \(file attached\)|null)$", re.IGNORECASE)
DELETED = re.compile(r"^\u200e?(?:This message was deleted\.?|You deleted this message\.?|"
                     r"This message was deleted by admin.*)$", re.IGNORECASE)
SYSTEM_TEXT = re.compile(r"^\u200e?(?:Messages and calls are end-to-end encrypted|.*security code (?:changed|with)|"
                         r"Missed (?:voice|video) call|.*changed (?:the|this) group|.* created group|"
                         r".* (?:added|removed) |.* left$|.* joined using|You're now an admin|"
                         r"Waiting for this message|.*changed their phone number)", re.IGNORECASE)
EDITED = re.compile(r"\s*\u200e?<This message was edited>$")


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


def _date_order(path: Path, dates: list[str], forced: str | None, stats: Stats) -> str:
    if forced:
        return forced
    firsts = seconds = 0
    for date in dates:
        a, b, *_ = re.split(r"[./-]", date)
        if len(a) == 4:
            return "ymd"
        firsts = max(firsts, int(a))
        seconds = max(seconds, int(b))
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
    parts = [int(p) for p in re.split(r"[./-]", date)]
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
        pm = ampm.lower().startswith("p")
        hour = hour % 12 + (12 if pm else 0)
    try:
        return datetime(year, month, day, hour, minute, second).timestamp()
    except ValueError:
        raise DataError(f"{path}:{line_no}: impossible date {date} {time} as {order}; "
                        f"try --date-order {'mdy' if order == 'dmy' else 'dmy'}") from None


def read_whatsapp(path: Path, options: ImportOptions, date_order: str | None, stats: Stats) -> list[Message]:
    """The text messages of one exported chat, in file order; everything else dropped and counted."""
    text = _decode(path)
    raw: list[list] = []  # [line_no, match, text lines]
    for line_no, line in enumerate(text.splitlines(), 1):
        match = IOS.match(line) or ANDROID.match(line)
        if match:
            raw.append([line_no, match, [match["rest"]]])
        elif raw:
            raw[-1][2].append(line)
        elif line.strip():
            raise DataError(f"{path}:{line_no}: not a WhatsApp chat export (expected lines like "
                            f"'31/12/22, 21:41 - Name: text' or '[31/12/2022, 21:41:05] Name: text')")
    if not raw:
        raise DataError(f"{path}: the export is empty")
    order = _date_order(path, [m["date"] for _, m, _ in raw], date_order, stats)
    messages = []
    for line_no, match, lines in raw:
        stats.read += 1
        rest = "\n".join(lines)
        sender, sep, body = rest.partition(": ")
        if not sep or "\n" in sender:
            stats.drop("system line")
            continue
        sender = sender.strip("\u200e\u202a\u202c ~\u00a0")
        body = EDITED.sub("", body).strip()
        if SYSTEM_TEXT.match(body) and body.startswith("\u200e"):
            stats.drop("system line")
        elif MEDIA.match(body):
            stats.drop("media omitted")
        elif DELETED.match(body):
            stats.drop("deleted")
        elif not body:
            stats.drop("empty")
        else:
            time = _timestamp(path, line_no, match["date"], match["time"], match["ampm"], order)
            messages.append(Message(time, sender, sender, body.lstrip("\u200e")))
    return messages
