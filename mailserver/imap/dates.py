"""IMAP dates: ``date`` for SEARCH (``1-Feb-1994``) and ``date-time`` for APPEND and
INTERNALDATE (``17-Jul-1996 02:44:25 -0700``), RFC 3501 9."""

from __future__ import annotations

import datetime as _dt
import re

from .errors import DateError

MONTHS = ("Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec")
_MONTH_NUMBER = {m.upper(): i + 1 for i, m in enumerate(MONTHS)}

_DATE = re.compile(r"([0-9]{1,2})-([A-Za-z]{3})-([0-9]{4})")
# date-day-fixed is (SP DIGIT) / 2DIGIT; a bare single digit is accepted too (clients send it).
_DATE_TIME = re.compile(
    r"( [0-9]|[0-9]{1,2})-([A-Za-z]{3})-([0-9]{4}) "
    r"([0-9]{2}):([0-9]{2}):([0-9]{2}) ([+-])([0-9]{2})([0-9]{2})"
)


def _month(name: str) -> int:
    try:
        return _MONTH_NUMBER[name.upper()]
    except KeyError:
        raise DateError(f"unknown month {name!r}") from None


def parse_date(text: str) -> _dt.date:
    """``date-text`` (no quotes): ``1-Feb-1994``, month case-insensitive."""
    m = _DATE.fullmatch(text)
    if not m:
        raise DateError(f"invalid date {text[:40]!r} (expected e.g. 1-Feb-1994)")
    try:
        return _dt.date(int(m.group(3)), _month(m.group(2)), int(m.group(1)))
    except ValueError as exc:
        raise DateError(f"invalid date {text!r}: {exc}") from None


def parse_datetime(text: str) -> _dt.datetime:
    """``date-time`` without the quotes -> an aware datetime."""
    m = _DATE_TIME.fullmatch(text)
    if not m:
        raise DateError(f"invalid date-time {text[:40]!r} (expected e.g. 17-Jul-1996 02:44:25 -0700)")
    day, mon, year, hh, mm, ss, sign, zh, zm = m.groups()
    if int(zm) > 59 or int(zh) > 23:
        raise DateError(f"invalid time zone {sign}{zh}{zm}")
    offset = _dt.timedelta(hours=int(zh), minutes=int(zm))
    tz = _dt.timezone(-offset if sign == "-" else offset)
    try:
        return _dt.datetime(int(year), _month(mon), int(day.strip()), int(hh), int(mm), int(ss), tzinfo=tz)
    except ValueError as exc:
        raise DateError(f"invalid date-time {text!r}: {exc}") from None


def format_datetime(value: _dt.datetime) -> str:
    """An aware datetime -> ``date-time`` text without quotes (``17-Jul-1996 02:44:25 -0700``).
    Naive datetimes are refused: INTERNALDATE always carries a zone."""
    off = value.utcoffset()
    if off is None:
        raise DateError("naive datetime: INTERNALDATE needs a time zone")
    minutes = int(off.total_seconds()) // 60
    sign = "-" if minutes < 0 else "+"
    minutes = abs(minutes)
    return (f"{value.day:02d}-{MONTHS[value.month - 1]}-{value.year:04d} "
            f"{value.hour:02d}:{value.minute:02d}:{value.second:02d} "
            f"{sign}{minutes // 60:02d}{minutes % 60:02d}")


def format_date(value: _dt.date) -> str:
    return f"{value.day}-{MONTHS[value.month - 1]}-{value.year:04d}"
