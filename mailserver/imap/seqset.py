"""IMAP sequence sets (RFC 3501 9 ``sequence-set``, RFC 5182 ``$``).

A ``SequenceSet`` keeps the ranges as written, with ``None`` for ``*``; nothing is
materialised until ``resolve`` is given the largest value (message count or largest UID),
so ``1:4294967295`` costs two integers.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass

from .errors import SequenceSetError

MAX_NUMBER = 4294967295  # nz-number is a 32-bit unsigned value
STAR = None

_NUMBER = re.compile(r"[1-9][0-9]{0,9}")

Bound = int | None  # None = "*"


def _bound(text: str) -> Bound:
    if text == "*":
        return STAR
    if not _NUMBER.fullmatch(text):
        if text.startswith("0") and text.isascii() and text.isdigit():
            raise SequenceSetError(f"sequence numbers start at 1, not {text!r}")
        raise SequenceSetError(f"invalid sequence number {text[:20]!r}")
    value = int(text)
    if value > MAX_NUMBER:
        raise SequenceSetError(f"sequence number {text} exceeds {MAX_NUMBER}")
    return value


@dataclass(frozen=True, slots=True)
class SequenceSet:
    """``ranges``: (first, last) pairs as written; a single number ``n`` is ``(n, n)``.
    ``saved``: the set is ``$`` (RFC 5182 SEARCHRES), resolved by the server from state."""

    ranges: tuple[tuple[Bound, Bound], ...] = ()
    saved: bool = False

    @classmethod
    def parse(cls, text: str | bytes) -> SequenceSet:
        if isinstance(text, bytes):
            try:
                text = text.decode("ascii")
            except UnicodeDecodeError as exc:
                raise SequenceSetError("8-bit octets in a sequence set") from exc
        if text == "$":
            return cls((), saved=True)
        if not text:
            raise SequenceSetError("empty sequence set")
        ranges: list[tuple[Bound, Bound]] = []
        for element in text.split(","):
            if not element:
                raise SequenceSetError("empty element in sequence set")
            first, sep, last = element.partition(":")
            a = _bound(first)
            b = _bound(last) if sep else a
            ranges.append((a, b))
        return cls(tuple(ranges))

    @classmethod
    def from_numbers(cls, numbers: Iterable[int], *, sort: bool = True) -> SequenceSet:
        """A compact set of the given numbers. ``sort=False`` keeps their order (COPYUID
        pairs source and destination UIDs by position) and only merges ascending runs."""
        values = sorted(set(numbers)) if sort else list(numbers)
        ranges: list[tuple[Bound, Bound]] = []
        for v in values:
            if not 1 <= v <= MAX_NUMBER:
                raise SequenceSetError(f"{v} is not a valid sequence number")
            if ranges:
                lo, hi = ranges[-1]
                assert lo is not None and hi is not None
                if v == hi + 1:
                    ranges[-1] = (lo, v)
                    continue
            ranges.append((v, v))
        if not ranges:
            raise SequenceSetError("a sequence set needs at least one number")
        return cls(tuple(ranges))

    def __str__(self) -> str:
        if self.saved:
            return "$"

        def b(x: Bound) -> str:
            return "*" if x is None else str(x)

        return ",".join(b(lo) if lo == hi else f"{b(lo)}:{b(hi)}" for lo, hi in self.ranges)

    @property
    def uses_star(self) -> bool:
        return any(lo is None or hi is None for lo, hi in self.ranges)

    def resolve(self, largest: int, *, clamp: bool = False) -> list[tuple[int, int]]:
        """Sorted, merged, inclusive (lo, hi) ranges with ``*`` = ``largest``.

        ``n:m`` equals ``m:n``. With ``largest == 0`` (empty mailbox) ranges that use ``*``
        are empty. ``clamp`` cuts everything to ``1..largest`` (sequence numbers);
        without it, UID sets keep values above the largest UID (they match nothing).
        ``$`` cannot be resolved here: the server keeps the saved result."""
        if self.saved:
            raise SequenceSetError("'$' refers to a saved search result; resolve it from state")
        spans: list[tuple[int, int]] = []
        for a, b in self.ranges:
            if (a is None or b is None) and largest <= 0:
                continue
            x = largest if a is None else a
            y = largest if b is None else b
            lo, hi = min(x, y), max(x, y)
            if clamp:
                hi = min(hi, largest)
                if lo > hi:
                    continue
            spans.append((lo, hi))
        spans.sort()
        merged: list[tuple[int, int]] = []
        for lo, hi in spans:
            if merged and lo <= merged[-1][1] + 1:
                if hi > merged[-1][1]:
                    merged[-1] = (merged[-1][0], hi)
            else:
                merged.append((lo, hi))
        return merged

    def contains(self, number: int, largest: int) -> bool:
        for a, b in self.ranges:
            if (a is None or b is None) and largest <= 0:
                continue
            x = largest if a is None else a
            y = largest if b is None else b
            if min(x, y) <= number <= max(x, y):
                return True
        return False

    def iter(self, largest: int, *, clamp: bool = False) -> Iterator[int]:
        """Ascending, without duplicates, lazily."""
        for lo, hi in self.resolve(largest, clamp=clamp):
            yield from range(lo, hi + 1)

    def count(self, largest: int, *, clamp: bool = False) -> int:
        return sum(hi - lo + 1 for lo, hi in self.resolve(largest, clamp=clamp))
