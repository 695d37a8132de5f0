"""IMAP date and date-time syntax."""

from __future__ import annotations

import datetime as dt

import pytest

from mailserver.imap.dates import format_date, format_datetime, parse_date, parse_datetime
from mailserver.imap.errors import DateError


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("1-Feb-1994", dt.date(1994, 2, 1)),
        ("01-feb-1994", dt.date(1994, 2, 1)),
        ("31-DEC-2023", dt.date(2023, 12, 31)),
        ("29-Feb-2024", dt.date(2024, 2, 29)),
    ],
)
def test_parse_date(text: str, expected: dt.date) -> None:
    assert parse_date(text) == expected


@pytest.mark.parametrize(
    "text",
    [
        "",
        "1-Foo-1994",
        "32-Jan-2000",
        "29-Feb-2023",
        "1-Feb-94",
        "1 Feb 1994",
        "001-Feb-1994",
        "1-Feb-1994 ",
        "1-Février-1994",
        "0-Jan-2000",
    ],
)
def test_parse_date_rejects(text: str) -> None:
    with pytest.raises(DateError):
        parse_date(text)


def test_parse_datetime() -> None:
    value = parse_datetime("17-Jul-1996 02:44:25 -0700")
    assert value == dt.datetime(1996, 7, 17, 2, 44, 25, tzinfo=dt.timezone(-dt.timedelta(hours=7)))
    assert parse_datetime(" 1-Jan-2000 00:00:00 +0000").day == 1
    assert parse_datetime("1-Jan-2000 00:00:00 +0530").utcoffset() == dt.timedelta(hours=5, minutes=30)


@pytest.mark.parametrize(
    "text",
    [
        "17-Jul-1996 02:44:25",
        "17-Jul-1996 2:44:25 -0700",
        "17-Jul-1996 24:00:00 +0000",
        "17-Jul-1996 02:44:25 -0760",
        "17-Jul-1996 02:44:25 -2500",
        "17-Jul-1996T02:44:25 -0700",
        "31-Apr-2020 00:00:00 +0000",
    ],
)
def test_parse_datetime_rejects(text: str) -> None:
    with pytest.raises(DateError):
        parse_datetime(text)


def test_format_round_trip() -> None:
    value = dt.datetime(1996, 7, 17, 2, 44, 25, tzinfo=dt.timezone(-dt.timedelta(hours=7)))
    assert format_datetime(value) == "17-Jul-1996 02:44:25 -0700"
    assert parse_datetime(format_datetime(value)) == value
    odd = dt.datetime(2020, 1, 5, 23, 59, 59, tzinfo=dt.timezone(dt.timedelta(hours=5, minutes=45)))
    assert format_datetime(odd) == "05-Jan-2020 23:59:59 +0545"
    assert parse_datetime(format_datetime(odd)) == odd
    assert format_date(dt.date(1994, 2, 1)) == "1-Feb-1994"
    assert parse_date(format_date(dt.date(1994, 2, 1))) == dt.date(1994, 2, 1)
    with pytest.raises(DateError):
        format_datetime(dt.datetime(2020, 1, 1))
