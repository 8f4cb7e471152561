"""bot.schedule_time: local times of day in IANA zones, across DST gaps and overlaps."""

from __future__ import annotations

from datetime import date, datetime, timedelta, timezone

import pytest

from analysis.errors import InputError
from bot.schedule_time import aware, local_date_of, local_occurrence, next_occurrence, parse_time, parse_timezone

UTC = timezone.utc


def z(text: str) -> datetime:
    return datetime.fromisoformat(text).replace(tzinfo=UTC)


@pytest.mark.parametrize("day,local,tz,want", [
    # ordinary days: the local clock time, at the offset of that day
    (date(2026, 1, 15), "09:30", "Europe/London", "2026-01-15T09:30"),
    (date(2026, 7, 15), "09:30", "Europe/London", "2026-07-15T08:30"),
    (date(2026, 7, 15), "09:30", "Asia/Kolkata", "2026-07-15T04:00"),  # +05:30, no DST
    # spring forward (a gap): a local time that does not exist lands as far after the jump
    (date(2026, 3, 8), "02:30", "America/New_York", "2026-03-08T07:30"),  # = 03:30 EDT
    (date(2026, 3, 29), "01:00", "Europe/London", "2026-03-29T01:00"),  # the first missing minute = 02:00 BST
    (date(2026, 3, 29), "01:59", "Europe/London", "2026-03-29T01:59"),
    (date(2026, 10, 4), "02:15", "Australia/Sydney", "2026-10-03T16:15"),  # = 03:15 AEDT
    # fall back (an overlap): an ambiguous local time is its first occurrence (still summer time)
    (date(2026, 11, 1), "01:30", "America/New_York", "2026-11-01T05:30"),  # 01:30 EDT, not EST (06:30Z)
    (date(2026, 10, 25), "01:00", "Europe/London", "2026-10-25T00:00"),  # 01:00 BST
    (date(2026, 4, 5), "02:30", "Australia/Sydney", "2026-04-04T15:30"),  # 02:30 AEDT
    # the minutes just outside a gap or overlap are unambiguous
    (date(2026, 3, 29), "02:00", "Europe/London", "2026-03-29T01:00"),
    (date(2026, 10, 25), "02:00", "Europe/London", "2026-10-25T02:00"),
])
def test_local_occurrence_dst_policy(day, local, tz, want):
    assert local_occurrence(day, local, tz) == z(want)


def test_next_occurrence_is_strictly_after_and_once_per_local_day():
    # from just before to just after 09:30 local: today, then tomorrow
    assert next_occurrence("09:30", "Europe/London", z("2026-06-01T08:29")) == z("2026-06-01T08:30")
    assert next_occurrence("09:30", "Europe/London", z("2026-06-01T08:30")) == z("2026-06-02T08:30")
    # walking through the New York overlap posts 01:30 once that day (not again an hour later)
    at = z("2026-10-31T12:00")
    seen = []
    for _ in range(3):
        at = next_occurrence("01:30", "America/New_York", at)
        seen.append(at)
    assert seen == [z("2026-11-01T05:30"), z("2026-11-02T06:30"), z("2026-11-03T06:30")]
    # and through the gap: 02:30 on the change day still happens (at 03:30 EDT), once
    at = z("2026-03-07T12:00")
    assert next_occurrence("02:30", "America/New_York", at) == z("2026-03-08T07:30")
    assert next_occurrence("02:30", "America/New_York", z("2026-03-08T07:30")) == z("2026-03-09T06:30")


def test_next_occurrence_across_the_date_line_and_from_another_offset():
    # Auckland is ahead of UTC: 07:00 local on 2 June is 19:00Z on 1 June
    assert next_occurrence("07:00", "Pacific/Auckland", z("2026-06-01T18:00")) == z("2026-06-01T19:00")
    tokyo = datetime(2026, 6, 2, 3, 0, tzinfo=timezone(timedelta(hours=9)))  # = 2026-06-01T18:00Z
    assert next_occurrence("07:00", "Pacific/Auckland", tokyo) == z("2026-06-01T19:00")


def test_next_occurrence_refuses_a_naive_datetime():
    with pytest.raises(ValueError, match="timezone-aware"):
        next_occurrence("09:30", "UTC", datetime(2026, 6, 1, 8, 0))
    with pytest.raises(ValueError, match="timezone-aware"):
        aware(datetime(2026, 6, 1))
    assert aware(None).tzinfo is UTC


def test_local_date_of_names_the_local_calendar_day():
    assert local_date_of(z("2026-06-01T23:30"), "Asia/Tokyo") == date(2026, 6, 2)
    assert local_date_of(z("2026-06-01T03:30"), "America/New_York") == date(2026, 5, 31)
    assert local_date_of(z("2026-11-01T05:30"), "America/New_York") == date(2026, 11, 1)


def test_parsers_live_here_and_refuse_clearly():
    assert parse_time("7:05") == "07:05"
    assert parse_timezone("asia/ho_chi_minh") == "Asia/Ho_Chi_Minh"
    with pytest.raises(InputError, match="HH:MM"):
        parse_time("25:00")
    with pytest.raises(InputError, match="unknown timezone"):
        parse_timezone("Mars/Olympus")


def test_the_store_reexports_the_same_functions():
    import bot.schedule_time as st
    import bot.store as store

    for name in ("parse_time", "parse_timezone", "local_occurrence", "next_occurrence", "local_date_of"):
        assert getattr(store, name) is getattr(st, name)
