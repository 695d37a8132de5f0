"""SORT (RFC 5256 3, RFC 5957) and the input of THREAD, from header blocks.

``MessageFields.parse`` reads, in one pass over a message's header block, every field SORT
and THREAD look at, and turns them into comparison keys (:mod:`.sortkeys`). ``sort``
orders messages by a list of ``(key, reversed)`` criteria; messages equal on every
criterion keep mailbox order (RFC 5256 3: the sequence number decides last), which the
stable sorts below give for free. ``esort_response`` writes the ESEARCH form of the
result (RFC 5267 3.2, RFC 9394 PARTIAL), where the numbers keep the sort order.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TypeVar

from . import format as fmt
from .mailthreads import ThreadInput, thread_input
from .mime import first_values
from .sortkeys import BaseSubject, base_subject, display_name, first_mailbox, sent_date

# The header fields each criterion reads; "THREAD" stands for what THREAD needs.
_NEEDS: dict[str, tuple[str, ...]] = {
    "ARRIVAL": (), "SIZE": (), "DATE": ("date",), "SUBJECT": ("subject",),
    "FROM": ("from",), "TO": ("to",), "CC": ("cc",), "DISPLAYFROM": ("from",), "DISPLAYTO": ("to",),
    "THREAD": ("subject", "date", "message-id", "references", "in-reply-to"),
}
ALL_CRITERIA = frozenset(_NEEDS)
_NO_SUBJECT = BaseSubject("", False)


def _text(value: bytes | None) -> str | None:
    return None if value is None else value.decode("utf-8", "replace")


@dataclass(frozen=True, slots=True)
class MessageFields:
    """One message's SORT keys and THREAD references (all casemapped where compared).
    Only the keys of the criteria asked for are computed; the others stay empty."""

    seq: int
    uid: int
    size: int
    arrival: int  # INTERNALDATE, whole seconds
    date: int = 0  # sent date (RFC 5256 2.2)
    subject: BaseSubject = _NO_SUBJECT
    from_: str = ""
    to: str = ""
    cc: str = ""
    display_from: str = ""
    display_to: str = ""
    message_id: str | None = None
    references: str | None = None
    in_reply_to: str | None = None

    @classmethod
    def parse(cls, seq: int, uid: int, size: int, internal_date: float, header: bytes,
              criteria: frozenset[str] = ALL_CRITERIA) -> MessageFields:
        """The keys of ``criteria`` (sort key names, and "THREAD") from a header block."""
        names = tuple(dict.fromkeys(n for c in criteria for n in _NEEDS[c]))
        f = first_values(header, names) if names else {}
        want = criteria.__contains__
        threading = want("THREAD")
        return cls(
            seq, uid, size, int(internal_date),
            date=sent_date(_text(f.get(b"date")), internal_date) if want("DATE") or threading else 0,
            subject=base_subject(_text(f.get(b"subject"))) if want("SUBJECT") or threading else _NO_SUBJECT,
            from_=first_mailbox(f.get(b"from")) if want("FROM") else "",
            to=first_mailbox(f.get(b"to")) if want("TO") else "",
            cc=first_mailbox(f.get(b"cc")) if want("CC") else "",
            display_from=display_name(f.get(b"from")) if want("DISPLAYFROM") else "",
            display_to=display_name(f.get(b"to")) if want("DISPLAYTO") else "",
            message_id=_text(f.get(b"message-id")) if threading else None,
            references=_text(f.get(b"references")) if threading else None,
            in_reply_to=_text(f.get(b"in-reply-to")) if threading else None,
        )

    def thread_input(self, uid: bool) -> ThreadInput:
        return thread_input(self.uid if uid else self.seq, self.date, self.subject,
                            self.message_id, self.references, self.in_reply_to)


# ------------------------------------------------------------ keys kept in the FETCH cache
#
# A criterion's key of one message never changes (message files never do), so it is kept
# in the folder's FETCH cache (``fields`` table, cache key ``SORT<version>:<criterion>``)
# and a later SORT reads small values instead of header blocks and parsing them again.
# Bump KEY_VERSION whenever a key's computation changes (sortkeys.py, or the encodings
# below): keys under the old prefix are then never read again.
KEY_VERSION = 2
STORED = frozenset({"DATE", "SUBJECT", "FROM", "TO", "CC", "DISPLAYFROM", "DISPLAYTO", "THREAD"})

#: One message's value for one criterion, as ``order`` compares it: an int (ARRIVAL, DATE,
#: SIZE) or the UTF-8 of a casemapped key (UTF-8 byte order is code point order, so the
#: bytes compare as the text would, without decoding them).
KeyValue = int | bytes


def cache_key(criterion: str) -> str:
    return f"SORT{KEY_VERSION}:{criterion}"


def encode_key(criterion: str, m: MessageFields) -> bytes:
    """The stored form of ``m``'s key for ``criterion`` (one of STORED). THREAD keeps the
    message IDs already parsed (RFC 5256 3: References, else In-Reply-To's first)."""
    if criterion == "DATE":
        return b"%d" % m.date
    if criterion == "SUBJECT":
        return (b"R" if m.subject.reply_or_forward else b"-") + _utf8(m.subject.text)
    if criterion == "THREAD":
        t = m.thread_input(False)
        return json.dumps([t.date, t.subject.reply_or_forward, t.subject.text, t.message_id,
                           list(t.references)], ensure_ascii=False).encode("utf-8", "surrogatepass")
    return _utf8(str(_KEY[criterion](m)))


#: Criteria whose keys are computed together from one read of a header block: a DATE
#: sort also keeps SUBJECT's key and the other way round (webmail offers both; a key costs
#: ~2 us more on top of reading and scanning the block, against ~25 us alone later).
COMPANIONS: dict[str, frozenset[str]] = {"DATE": frozenset({"SUBJECT"}), "SUBJECT": frozenset({"DATE"})}


def encode_keys(header: bytes, internal_date: float, criteria: Sequence[str]) -> list[tuple[bytes, object]]:
    """For each of ``criteria`` (of STORED), from a header block: ``encode_key``'s stored
    form and what it decodes to (``key_value``, or ``thread_fields_of`` for THREAD). DATE,
    SUBJECT and THREAD straight from their fields, without a ``MessageFields``."""
    if not _DIRECT.issuperset(criteria):
        m = MessageFields.parse(0, 0, 0, internal_date, header, frozenset(criteria))
        out: list[tuple[bytes, object]] = []
        for c in criteria:
            stored = encode_key(c, m)
            out.append((stored, thread_fields_of(stored) if c == "THREAD" else key_value(c, stored)))
        return out
    threading = "THREAD" in criteria
    names = _NEEDS["THREAD"] if threading else tuple(_NEEDS[c][0] for c in criteria)
    f = first_values(header, names)
    date = sent_date(_text(f.get(b"date")), internal_date) if threading or "DATE" in criteria else 0
    subject = (base_subject(_text(f.get(b"subject"))) if threading or "SUBJECT" in criteria
               else _NO_SUBJECT)
    out = []
    for c in criteria:
        if c == "DATE":
            out.append((b"%d" % date, date))
        elif c == "SUBJECT":
            text = _utf8(subject.text)
            out.append(((b"R" if subject.reply_or_forward else b"-") + text, text))
        else:
            t = thread_input(0, date, subject, _text(f.get(b"message-id")), _text(f.get(b"references")),
                             _text(f.get(b"in-reply-to")))
            stored = json.dumps([t.date, t.subject.reply_or_forward, t.subject.text, t.message_id,
                                 list(t.references)], ensure_ascii=False).encode("utf-8", "surrogatepass")
            out.append((stored, (t.date, t.subject, t.message_id, t.references)))
    return out


_DIRECT = frozenset({"DATE", "SUBJECT", "THREAD"})


def _utf8(text: str) -> bytes:
    return text.encode("utf-8", "surrogatepass")  # never fails, whatever a decoder left


def key_value(criterion: str, stored: bytes) -> KeyValue:
    """The comparable value of a stored key (not THREAD). ValueError when ``stored`` is not
    something ``encode_key`` writes (a damaged row)."""
    if criterion == "DATE":
        return int(stored)
    if criterion == "SUBJECT":
        if stored[:1] not in (b"R", b"-"):
            raise ValueError("not a stored subject key")
        return stored[1:]
    return stored


#: A message's THREAD input without its number: (date, subject, message ID, references).
ThreadFields = tuple[int, BaseSubject, str | None, tuple[str, ...]]


def thread_fields_of(stored: bytes) -> ThreadFields:
    """The ``ThreadFields`` of a stored THREAD key. ValueError when it is not ours."""
    date, reply, text, msgid, refs = json.loads(stored)
    if not (isinstance(date, int) and isinstance(text, str) and isinstance(refs, list)
            and (msgid is None or isinstance(msgid, str))):
        raise ValueError("not a stored THREAD key")
    return date, BaseSubject(text, bool(reply)), msgid, tuple(map(str, refs))


def thread_input_of(number: int, stored: bytes) -> ThreadInput:
    """The ``ThreadInput`` of a stored THREAD key. ValueError when it is not ours."""
    return ThreadInput(number, *thread_fields_of(stored))


def order(count: int, columns: Sequence[tuple[Sequence[KeyValue], bool]]) -> list[int]:
    """Positions 0..count-1 ordered by ``columns`` ((values, reversed), most significant
    first); equal ones keep their order (the mailbox's: RFC 5256 3)."""
    positions = list(range(count))
    for values, reverse in reversed(columns):
        positions.sort(key=values.__getitem__, reverse=reverse)  # stable, even reversed
    return positions


_KEY: dict[str, Callable[[MessageFields], int | str]] = {
    "ARRIVAL": lambda m: m.arrival,
    "CC": lambda m: m.cc,
    "DATE": lambda m: m.date,
    "FROM": lambda m: m.from_,
    "SIZE": lambda m: m.size,
    "SUBJECT": lambda m: m.subject.text,
    "TO": lambda m: m.to,
    "DISPLAYFROM": lambda m: m.display_from,
    "DISPLAYTO": lambda m: m.display_to,
}

_M = TypeVar("_M", bound=MessageFields)


def sort(messages: Sequence[_M], criteria: Sequence[tuple[str, bool]]) -> list[_M]:
    """``messages`` (in mailbox order) ordered by ``criteria``, most significant first."""
    out = list(messages)
    # Stable sorts from the least significant criterion up; Python keeps equal elements
    # in their order even with reverse=True, so ties stay in mailbox order.
    for name, reverse in reversed(criteria):
        out.sort(key=_KEY[name], reverse=reverse)
    return out


def _partial(numbers: list[int], rng: tuple[int, int]) -> list[int]:
    """RFC 9394 3.1: positions ``low:high`` of the result (1-based), or counted from its
    end when negative (``-1:-10``: the last ten, still in result order)."""
    low, high = rng
    n = len(numbers)
    if low < 0:
        first, last = n + high + 1, n + low + 1  # -1:-10 -> n-9 .. n
    else:
        first, last = low, high
    first = max(first, 1)
    return numbers[first - 1:max(last, 0)]


def esort_response(tag: str, uid: bool, numbers: list[int], returns: tuple[str, ...],
                   partial: tuple[int, int] | None) -> bytes:
    """``* ESEARCH`` for ``SORT RETURN (...)`` (RFC 5267 3.2): MIN and MAX are the first
    and last message in sort order, ALL the numbers in sort order (runs of consecutive
    ascending numbers as ranges, never reordered)."""
    opts = returns or ("ALL",)
    out = b"* ESEARCH (TAG " + fmt.quoted(tag) + b")"
    if uid:
        out += b" UID"
    if numbers:
        if "MIN" in opts:
            out += b" MIN %d" % numbers[0]
        if "MAX" in opts:
            out += b" MAX %d" % numbers[-1]
        if "ALL" in opts:
            out += b" ALL " + _ordered_set(numbers)
    if "COUNT" in opts:
        out += b" COUNT %d" % len(numbers)
    if "PARTIAL" in opts and partial is not None:
        low, high = partial
        part = _partial(numbers, partial)
        rng = b"%d:%d" % (low, high) if low > 0 else b"-%d:-%d" % (-low, -high)
        out += b" PARTIAL (" + rng + b" " + (_ordered_set(part) if part else b"NIL") + b")"
    return out + b"\r\n"


def _ordered_set(numbers: list[int]) -> bytes:
    """A sequence-set that keeps the order of ``numbers``: ascending runs as ranges."""
    parts: list[str] = []
    i = 0
    while i < len(numbers):
        j = i
        while j + 1 < len(numbers) and numbers[j + 1] == numbers[j] + 1:
            j += 1
        parts.append(str(numbers[i]) if i == j else f"{numbers[i]}:{numbers[j]}")
        i = j + 1
    return ",".join(parts).encode()


def sort_response(numbers: list[int]) -> bytes:
    """``* SORT n n n`` (RFC 5256 4)."""
    return b"* SORT" + b"".join(b" %d" % n for n in numbers) + b"\r\n"


__all__ = ["ALL_CRITERIA", "COMPANIONS", "STORED", "KeyValue", "MessageFields", "ThreadFields", "cache_key",
           "encode_key", "encode_keys", "esort_response", "key_value", "order", "sort", "sort_response",
           "thread_fields_of", "thread_input_of"]
