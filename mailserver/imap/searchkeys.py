"""SEARCH criteria (RFC 3501 6.4.4 / 9 ``search-key``, RFC 7162 MODSEQ) parsed into an AST.

The AST is normalised for an evaluator: flag keys become ``FlagKey(flag, present)``,
address/subject keys become ``HeaderKey``, ``NEW`` is ``AndKey(Recent, not Seen)``,
``OLD`` is ``FlagKey("\\\\Recent", False)``. A list of keys is an ``AndKey``.
"""

from __future__ import annotations

import datetime as _dt
from dataclasses import dataclass
from typing import Literal

from .dates import parse_date
from .errors import DateError, IMAPParseError, SequenceSetError
from .lexer import MAX_NUMBER64, Reader, decode_text
from .seqset import SequenceSet

MAX_DEPTH = 32  # nesting of (), NOT and OR
# Criteria in one SEARCH: each is evaluated per message, so 100k criteria (what fits in
# imap.max_command_size) on a 100k-message folder would be 10^10 steps of one command.
MAX_KEYS = 1000


@dataclass(frozen=True, slots=True)
class AllKey:
    pass


@dataclass(frozen=True, slots=True)
class FlagKey:
    flag: str  # system flags in canonical case (\Seen), keywords as sent
    present: bool


@dataclass(frozen=True, slots=True)
class HeaderKey:
    field: str  # upper-case header name: FROM, TO, CC, BCC, SUBJECT or any HEADER field
    value: str  # substring; "" matches every message that has the field


@dataclass(frozen=True, slots=True)
class TextKey:
    where: Literal["BODY", "TEXT"]  # BODY: body only; TEXT: header and body
    value: str


@dataclass(frozen=True, slots=True)
class DateKey:
    which: Literal["INTERNAL", "SENT"]  # INTERNALDATE or the Date: header
    op: Literal["BEFORE", "ON", "SINCE"]
    date: _dt.date


@dataclass(frozen=True, slots=True)
class SizeKey:
    op: Literal["LARGER", "SMALLER"]
    size: int


@dataclass(frozen=True, slots=True)
class SequenceKey:
    set: SequenceSet
    uid: bool  # UID <set> vs a bare message-number set


@dataclass(frozen=True, slots=True)
class ModSeqKey:
    modseq: int  # messages with MODSEQ >= this
    entry: tuple[str, str] | None = None  # ("/flags/\\draft", "all"|"priv"|"shared")


@dataclass(frozen=True, slots=True)
class NotKey:
    key: SearchKey


@dataclass(frozen=True, slots=True)
class OrKey:
    left: SearchKey
    right: SearchKey


@dataclass(frozen=True, slots=True)
class AndKey:
    keys: tuple[SearchKey, ...]


SearchKey = (AllKey | FlagKey | HeaderKey | TextKey | DateKey | SizeKey | SequenceKey | ModSeqKey | NotKey
             | OrKey | AndKey)

_FLAG_KEYS = {
    "ANSWERED": ("\\Answered", True), "UNANSWERED": ("\\Answered", False),
    "DELETED": ("\\Deleted", True), "UNDELETED": ("\\Deleted", False),
    "DRAFT": ("\\Draft", True), "UNDRAFT": ("\\Draft", False),
    "FLAGGED": ("\\Flagged", True), "UNFLAGGED": ("\\Flagged", False),
    "SEEN": ("\\Seen", True), "UNSEEN": ("\\Seen", False),
    "RECENT": ("\\Recent", True), "OLD": ("\\Recent", False),
}
_HEADER_KEYS = {"BCC", "CC", "FROM", "SUBJECT", "TO"}
_DATE_KEYS: dict[str, tuple[Literal["INTERNAL", "SENT"], Literal["BEFORE", "ON", "SINCE"]]] = {
    "BEFORE": ("INTERNAL", "BEFORE"), "ON": ("INTERNAL", "ON"), "SINCE": ("INTERNAL", "SINCE"),
    "SENTBEFORE": ("SENT", "BEFORE"), "SENTON": ("SENT", "ON"), "SENTSINCE": ("SENT", "SINCE"),
}
_SEQ_CHARS = frozenset(b"0123456789*:,$")
SEQ_START = frozenset(b"0123456789*$")


def read_sequence_set(r: Reader) -> SequenceSet:
    raw = r.take(_SEQ_CHARS, "a sequence set")
    try:
        return SequenceSet.parse(raw)
    except SequenceSetError as exc:
        raise r.error(f"bad sequence set: {exc}") from None


def read_date(r: Reader) -> _dt.date:
    if r.peek() == 0x22:
        raw = r.quoted()
    else:
        raw = r.take(frozenset(b"0123456789-ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"), "a date")
    try:
        return parse_date(raw.decode("ascii", "replace"))
    except DateError as exc:
        raise r.error(str(exc)) from None


def read_flag_keyword(r: Reader) -> str:
    return r.atom()


def _read_modseq(r: Reader) -> ModSeqKey:
    entry: tuple[str, str] | None = None
    if r.peek() == 0x22:
        name = decode_text(r.quoted(), r.tag, "entry name")
        if not name.lower().startswith("/flags/"):
            raise r.error("MODSEQ entry name must be \"/flags/<flag>\"")
        r.sp()
        kind = r.atom().lower()
        if kind not in ("priv", "shared", "all"):
            raise r.error("MODSEQ entry type must be priv, shared or all")
        entry = (name, kind)
        r.sp()
    return ModSeqKey(r.number(MAX_NUMBER64, what="mod-sequence"), entry)


def read_search_key(r: Reader, depth: int = 0) -> SearchKey:
    if depth > MAX_DEPTH:
        raise r.error("search criteria nested too deeply")
    c = r.peek()
    if c is None:
        raise r.error("missing search key")
    if c == 0x28:  # "("
        r.pos += 1
        keys = [read_search_key(r, depth + 1)]
        while not r.try_char(b")"):
            r.sp()
            keys.append(read_search_key(r, depth + 1))
        return keys[0] if len(keys) == 1 else AndKey(tuple(keys))
    if c in SEQ_START:
        return SequenceKey(read_sequence_set(r), uid=False)
    name = r.atom().upper()
    if name == "ALL":
        return AllKey()
    if name in _FLAG_KEYS:
        flag, present = _FLAG_KEYS[name]
        return FlagKey(flag, present)
    if name == "NEW":
        return AndKey((FlagKey("\\Recent", True), FlagKey("\\Seen", False)))
    r.sp()
    if name in _HEADER_KEYS:
        return HeaderKey(name, r.astring_text())
    if name in ("BODY", "TEXT"):
        return TextKey("BODY" if name == "BODY" else "TEXT", r.astring_text())
    if name in _DATE_KEYS:
        which, op = _DATE_KEYS[name]
        return DateKey(which, op, read_date(r))
    if name == "HEADER":
        field = r.astring_text("header name")
        if not field or any(not (33 <= ord(ch) <= 126) or ch == ":" for ch in field):
            raise r.error("invalid header field name")
        r.sp()
        return HeaderKey(field.upper(), r.astring_text())
    if name in ("KEYWORD", "UNKEYWORD"):
        return FlagKey(read_flag_keyword(r), name == "KEYWORD")
    if name in ("LARGER", "SMALLER"):
        return SizeKey("LARGER" if name == "LARGER" else "SMALLER", r.number(MAX_NUMBER64, what="size"))
    if name == "UID":
        return SequenceKey(read_sequence_set(r), uid=True)
    if name == "NOT":
        return NotKey(read_search_key(r, depth + 1))
    if name == "OR":
        left = read_search_key(r, depth + 1)
        r.sp()
        return OrKey(left, read_search_key(r, depth + 1))
    if name == "MODSEQ":
        return _read_modseq(r)
    raise r.error(f"unknown search key {name[:30]}")


def read_search_program(r: Reader) -> SearchKey:
    """``search-key *(SP search-key)`` up to the end of the command -> one key."""
    keys = [read_search_key(r)]
    while not r.at_end():
        r.sp()
        keys.append(read_search_key(r))
    program = keys[0] if len(keys) == 1 else AndKey(tuple(keys))
    if _count_keys(program) > MAX_KEYS:
        raise r.error(f"more than {MAX_KEYS} search criteria")
    return program


def _count_keys(key: SearchKey) -> int:
    if isinstance(key, NotKey):
        return 1 + _count_keys(key.key)
    if isinstance(key, OrKey):
        return 1 + _count_keys(key.left) + _count_keys(key.right)
    if isinstance(key, AndKey):
        return sum(_count_keys(k) for k in key.keys)
    return 1


def uses_modseq(key: SearchKey) -> bool:
    """True if MODSEQ appears anywhere (the SEARCH response then carries ``(MODSEQ n)``)."""
    if isinstance(key, ModSeqKey):
        return True
    if isinstance(key, NotKey):
        return uses_modseq(key.key)
    if isinstance(key, OrKey):
        return uses_modseq(key.left) or uses_modseq(key.right)
    if isinstance(key, AndKey):
        return any(uses_modseq(k) for k in key.keys)
    return False


__all__ = [
    "AllKey", "AndKey", "DateKey", "FlagKey", "HeaderKey", "IMAPParseError", "ModSeqKey", "NotKey",
    "OrKey", "SearchKey", "SequenceKey", "SizeKey", "TextKey", "read_search_key", "read_search_program",
    "read_sequence_set", "uses_modseq",
]
