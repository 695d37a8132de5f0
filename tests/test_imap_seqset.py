"""Sequence sets: parsing, resolution against the largest value, compaction."""

from __future__ import annotations

import pytest

from mailserver.imap.errors import SequenceSetError
from mailserver.imap.seqset import SequenceSet


@pytest.mark.parametrize(
    ("text", "ranges"),
    [
        ("1", ((1, 1),)),
        ("1:*", ((1, None),)),
        ("*", ((None, None),)),
        ("*:4", ((None, 4),)),
        ("3,5:7,9:*", ((3, 3), (5, 7), (9, None))),
        ("7:5", ((7, 5),)),
        ("4294967295", ((4294967295, 4294967295),)),
        ("1:4294967295", ((1, 4294967295),)),
    ],
)
def test_parse(text: str, ranges: tuple) -> None:
    s = SequenceSet.parse(text)
    assert s.ranges == ranges
    assert str(s) == text
    assert SequenceSet.parse(text.encode()) == s


def test_saved_result() -> None:
    s = SequenceSet.parse("$")
    assert s.saved and str(s) == "$"
    with pytest.raises(SequenceSetError):
        s.resolve(10)


@pytest.mark.parametrize(
    "text",
    [
        "",
        "0",
        "0:5",
        "1:0",
        "1:",
        ":1",
        "*:x",
        "x",
        "1,,2",
        "1,",
        ",1",
        "01",
        "1:2:3",
        "4294967296",
        "99999999999999999999999",
        "1:*:2",
        "$,1",
        "1,$",
        "-1",
        "1 2",
        "\u0661",  # ARABIC-INDIC DIGIT ONE: str.isdigit() would accept it
        "**",
        "1:**",
    ],
)
def test_parse_rejects(text: str) -> None:
    with pytest.raises(SequenceSetError):
        SequenceSet.parse(text)


@pytest.mark.parametrize(
    ("text", "largest", "expected"),
    [
        ("1:*", 5, [(1, 5)]),
        ("1:*", 0, []),
        ("*", 0, []),
        ("*", 7, [(7, 7)]),
        ("3,5:7,9:*", 12, [(3, 3), (5, 7), (9, 12)]),
        ("9:*", 4, [(4, 9)]),  # n:* always includes the largest (RFC 3501 6.4.8)
        ("7:5", 10, [(5, 7)]),
        ("1,2,3,4", 10, [(1, 4)]),
        ("5:9,1:6", 10, [(1, 9)]),
        ("1:3,5", 10, [(1, 3), (5, 5)]),
        ("1:4294967295", 3, [(1, 4294967295)]),
    ],
)
def test_resolve(text: str, largest: int, expected: list) -> None:
    assert SequenceSet.parse(text).resolve(largest) == expected


def test_resolve_clamped_for_sequence_numbers() -> None:
    s = SequenceSet.parse("2:4294967295,8")
    assert s.resolve(5, clamp=True) == [(2, 5)]
    assert s.count(5, clamp=True) == 4
    assert list(s.iter(5, clamp=True)) == [2, 3, 4, 5]


def test_huge_ranges_are_not_materialised() -> None:
    s = SequenceSet.parse("1:4294967295")
    assert s.count(4294967295) == 4294967295
    assert s.contains(4000000000, 10)
    assert not s.contains(0, 10)
    it = s.iter(4294967295)
    assert [next(it) for _ in range(3)] == [1, 2, 3]


@pytest.mark.parametrize(
    ("text", "largest", "n", "inside"),
    [
        ("1:*", 5, 5, True),
        ("1:*", 5, 6, False),
        ("*", 0, 0, False),
        ("3,5:7", 9, 6, True),
        ("3,5:7", 9, 4, False),
        ("*:3", 10, 8, True),
    ],
)
def test_contains(text: str, largest: int, n: int, inside: bool) -> None:
    assert SequenceSet.parse(text).contains(n, largest) is inside


def test_from_numbers() -> None:
    assert str(SequenceSet.from_numbers([5, 1, 2, 3, 9, 10, 3])) == "1:3,5,9:10"
    assert str(SequenceSet.from_numbers([7, 3, 4], sort=False)) == "7,3:4"
    with pytest.raises(SequenceSetError):
        SequenceSet.from_numbers([])
    with pytest.raises(SequenceSetError):
        SequenceSet.from_numbers([0])


def test_uses_star() -> None:
    assert SequenceSet.parse("1:*").uses_star
    assert not SequenceSet.parse("1:5").uses_star
