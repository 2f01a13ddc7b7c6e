"""WhatsApp's dates and times: whether an export writes them day-first or month-first (from all its dates),
and a message's local date and time as seconds since the epoch."""

from __future__ import annotations

import re
from datetime import datetime
from pathlib import Path

from finetune.errors import DataError
from finetune.importers.conversations import Stats

_FIELD = re.compile(r"\d+")  # a date's three fields (direction marks may stand around its separators)
_TIME_SPLIT = re.compile(r"[:.]")


def _date_parts(date: str) -> list[int]:
    return [int(p) for p in _FIELD.findall(date)]


class DateOrder:
    """Day-first or month-first: the largest first and second fields of every date, seen one at a time."""

    def __init__(self) -> None:
        self.ymd, self.firsts, self.seconds, self.last = False, 0, 0, ""

    def add(self, date: str) -> None:
        if date == self.last or self.ymd:  # messages come in runs of the same date
            return
        self.last = date
        if len(_FIELD.search(date).group()) == 4:
            self.ymd = True
            return
        a, b, *_ = _date_parts(date)
        self.firsts, self.seconds = max(self.firsts, a), max(self.seconds, b)

    def order(self, path: Path, forced: str | None, stats: Stats) -> str:
        if forced:
            return forced
        if self.ymd:
            return "ymd"
        firsts, seconds = self.firsts, self.seconds
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


class Clock:
    """A message's local date and time -> seconds since the epoch, as `datetime(...).timestamp()` gives them.
    Converting local time is the slow part: a day whose UTC offset is the same at its start and its end (no
    daylight-saving change) is converted once, and its messages add their time of day."""

    def __init__(self, path: Path, order: str):
        self.path, self.order = path, order
        self.days: dict[str, tuple[int, int, int, float | None]] = {}  # date -> year, month, day, midnight
        self.times: dict[tuple, tuple[int, int, int, int | None]] = {}  # -> hour, minute, second, of the day

    def __call__(self, line_no: int, date: str, time: str, ampm: str | None) -> float:
        day = self.days.get(date)
        if day is None:
            if len(self.days) > 10_000:
                self.days.clear()
            day = self.days[date] = self._day(date)
        of_day = self.times.get((time, ampm))
        if of_day is None:
            if len(self.times) > 200_000:
                self.times.clear()
            of_day = self.times[time, ampm] = self._time(time, ampm)
        year, month, dom, midnight = day
        hour, minute, second, seconds = of_day
        if midnight is not None and seconds is not None:
            return midnight + seconds
        try:
            return datetime(year, month, dom, hour, minute, second).timestamp()
        except ValueError:
            raise DataError(f"{self.path}:{line_no}: impossible date {date} {time} as {self.order}; "
                            f"try --date-order {'mdy' if self.order == 'dmy' else 'dmy'}") from None

    @staticmethod
    def _time(time: str, ampm: str | None) -> tuple[int, int, int, int | None]:
        clock = [int(p) for p in _TIME_SPLIT.split(time)]
        hour, minute, second = clock[0], clock[1], clock[2] if len(clock) > 2 else 0
        if ampm:
            pm = ampm.lower().startswith("p") or ampm == "\u0645"
            hour = hour % 12 + (12 if pm else 0)
        valid = hour < 24 and minute < 60 and second < 60
        return hour, minute, second, hour * 3600 + minute * 60 + second if valid else None

    def _day(self, date: str) -> tuple[int, int, int, float | None]:
        parts = _date_parts(date)
        if self.order == "ymd":
            year, month, day = parts
        elif self.order == "mdy":
            month, day, year = parts
        else:
            day, month, year = parts
        if year < 100:
            year += 2000
        try:
            midnight = datetime(year, month, day).timestamp()
            steady = datetime(year, month, day, 23, 59, 59).timestamp() - midnight == 86399
        except ValueError:  # an impossible date: said with the message's time when one is kept
            return year, month, day, None
        return year, month, day, midnight if steady else None
