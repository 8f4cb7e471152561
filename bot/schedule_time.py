"""Local times of day in IANA time zones: parsing, and the UTC instants they fall on (DST policy).

What a daily report needs: ``parse_time`` / ``parse_timezone`` validate what a user typed (an
:class:`~analysis.errors.InputError` saying what would be valid), :func:`local_occurrence` and
:func:`next_occurrence` turn a local time into UTC instants across DST changes, and
:func:`local_date_of` names the local calendar day of an instant.
"""

from __future__ import annotations

import difflib
import re
import zoneinfo
from datetime import date, datetime, time as dtime, timedelta, timezone as dt_timezone

from analysis.errors import InputError

__all__ = [
    "UTC",
    "TZ_HELP",
    "aware",
    "parse_time",
    "parse_timezone",
    "local_occurrence",
    "next_occurrence",
    "local_date_of",
]

UTC = dt_timezone.utc
TZ_HELP = "use an IANA name such as Europe/London, America/New_York or Asia/Singapore (full list: https://en.wikipedia.org/wiki/List_of_tz_database_time_zones)"


_TIME = re.compile(r"^\s*([0-9]{1,2}):([0-9]{2})\s*$", re.ASCII)


def parse_time(text: str) -> str:
    """``"9:30"`` / ``"09:30"`` -> ``"09:30"``; anything outside 00:00-23:59 is an InputError."""
    m = _TIME.match(str(text))
    if m and int(m.group(1)) <= 23 and int(m.group(2)) <= 59:
        return f"{int(m.group(1)):02d}:{m.group(2)}"
    raise InputError(f"invalid time {str(text)[:12]!r}; use 24-hour HH:MM from 00:00 to 23:59, e.g. 09:30 or 21:00")


_TZ_NAMES: dict[str, str] | None = None


def _tz_names() -> dict[str, str]:
    global _TZ_NAMES
    if _TZ_NAMES is None:
        names = {n for n in zoneinfo.available_timezones() if n not in ("Factory", "localtime", "posixrules")}
        _TZ_NAMES = {n.lower(): n for n in names}
    return _TZ_NAMES


def parse_timezone(text: str) -> str:
    """A valid IANA timezone name in its canonical spelling (case-insensitive input), else InputError."""
    raw = str(text).strip()
    names = _tz_names()
    hit = names.get(raw.lower()) if re.fullmatch(r"[A-Za-z0-9_+\-/]{1,64}", raw) else None
    if hit is None:
        close = difflib.get_close_matches(raw.lower(), list(names), n=3, cutoff=0.6)
        hint = f"did you mean {', '.join(names[c] for c in close)}? " if close else ""
        raise InputError(f"unknown timezone {raw[:40]!r}; {hint}{TZ_HELP}")
    return hit



def aware(now: datetime | None) -> datetime:
    """``now`` in UTC (None: the current time); a naive datetime is a ValueError (never guessed)."""
    if now is None:
        return datetime.now(UTC)
    if now.tzinfo is None:
        raise ValueError("datetimes passed to the store must be timezone-aware")
    return now.astimezone(UTC)


def local_occurrence(day: date, local_time: str, tz_name: str) -> datetime:
    """The UTC instant of ``local_time`` on local ``day`` in ``tz_name``.

    DST policy (PEP 495, ``fold=0``): a nonexistent local time (spring forward, e.g. 02:30 on the
    US change day) is read with the offset in force before the jump, so it lands the same amount
    *after* the jump (02:30 -> 03:30 local). An ambiguous local time (fall back, e.g. 01:30 on the
    US change day) means its first occurrence (still daylight time). Either way: one post that day.
    """
    hh, mm = (int(x) for x in local_time.split(":"))
    tz = zoneinfo.ZoneInfo(tz_name)
    return datetime.combine(day, dtime(hh, mm), tzinfo=tz).replace(fold=0).astimezone(UTC)


def next_occurrence(local_time: str, tz_name: str, after: datetime) -> datetime:
    """The first UTC instant strictly after ``after`` at which the local clock reads ``local_time``."""
    after = aware(after)
    day = after.astimezone(zoneinfo.ZoneInfo(tz_name)).date() - timedelta(days=1)
    for _ in range(4):
        at = local_occurrence(day, local_time, tz_name)
        if at > after:
            return at
        day += timedelta(days=1)
    raise AssertionError("no occurrence within three days")  # pragma: no cover


def local_date_of(at: datetime, tz_name: str) -> date:
    """The local calendar date of a UTC instant in ``tz_name``."""
    return at.astimezone(zoneinfo.ZoneInfo(tz_name)).date()
