"""Evaluate a parsed SEARCH program (:mod:`.search`) against the messages of a mailbox.

RFC 3501 6.4.4 and RFC 7162 ``MODSEQ``; sans-I/O: the caller supplies the per-message
metadata as :class:`Candidate` objects and, only when the program needs it, the raw
header block or the whole message.

* :func:`content_needed` says what beyond the metadata a program reads: ``"none"``,
  ``"header"`` (``HeaderKey``, ``SENT*``) or ``"full"`` (``BODY``/``TEXT``).
* :class:`SearchContext` is the per-SEARCH state. It compiles each key once into a
  closure (cached by key object), so sequence sets are resolved once per SEARCH, not once
  per message.
* :func:`matches` evaluates one message; :func:`search` filters many, evaluating the
  keys that need no content first and loading content lazily, at most once per message
  and only for messages the cheap keys do not already decide.

Semantics chosen:

* Flags, system flags and keywords alike, match case-insensitively (RFC 3501 says flags
  are case-insensitive; Dovecot and Thunderbird treat keywords so). ``\\Recent`` comes
  from ``Candidate.recent``, never from ``Candidate.flags``.
* Strings (header values, body text and the needle) are compared after NFKC + casefold,
  with every run of whitespace taken as one space, so a needle matches across folded
  lines and across different spacing.
* Header values are unfolded; both the raw value and the value with RFC 2047
  encoded-words decoded are tried; 8-bit header bytes are read as UTF-8 (SMTPUTF8).
  ``HEADER <field> ""`` matches every message that has the field.
* ``BODY``/``TEXT`` read the decoded text of the text parts (Content-Transfer-Encoding
  and charset undone; HTML also with tags stripped and entities decoded), plus the header
  blocks of nested parts (attachment names, forwarded messages). Parts of binary media
  types (image, audio, video, application, font, model) are not searched; a base64 text
  part that does not decode is searched as written too. A message the ``email`` package
  cannot take apart is searched as its raw body decoded as UTF-8: evaluation never raises
  for a malformed message.
* Dates ``BEFORE``/``ON``/``SINCE`` use the day of INTERNALDATE in ``SearchContext.tz``
  (server local time by default). ``SENT*`` use the day of the first ``Date:`` header as
  written, in the header's own zone. When ``Date:`` is missing or unparseable, the day of
  INTERNALDATE stands in for it (RFC 5256 defines the sent date so for SORT, which keeps
  SEARCH and SORT consistent; Dovecot instead takes 1-Jan-1970 for such messages).
* Message-number sets are clamped to ``1..max_seq``; UID sets keep numbers above
  ``max_uid`` (they match nothing) and ``n:*`` with ``max_uid < n`` still includes
  ``max_uid`` (``n:*`` is ``*:n``). In an empty mailbox (``max_* == 0``) ``*`` matches
  nothing. ``$`` (RFC 5182) matches the UIDs given as ``SearchContext(saved=...)``.
"""

from __future__ import annotations

import base64
import binascii
import bisect
import codecs
import datetime as _dt
import email
import email.errors
import email.policy
import email.utils
import html
import math
import re
import unicodedata
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Literal

from .search import (
    AllKey,
    AndKey,
    DateKey,
    FlagKey,
    HeaderKey,
    ModSeqKey,
    NotKey,
    OrKey,
    SearchKey,
    SequenceKey,
    SizeKey,
    TextKey,
)

ContentNeed = Literal["none", "header", "full"]
_NEEDS: tuple[ContentNeed, ...] = ("none", "header", "full")

_SMALL_SET = 1024  # sequence sets with at most this many numbers become a frozenset
_FLAG_MEMO_MAX = 65536  # distinct flag sets remembered per flag key


@dataclass(slots=True)
class Candidate:
    """What the index knows about one message; all SEARCH needs besides content."""

    seq: int
    uid: int
    flags: frozenset[str]  # system flags in canonical case and keywords as stored; no \Recent
    recent: bool
    size: int  # RFC822.SIZE
    internal_date: float  # epoch seconds
    modseq: int


# ------------------------------------------------------------------ content needed


def _rank(key: SearchKey) -> int:
    if isinstance(key, TextKey):
        return 2
    if isinstance(key, HeaderKey):
        return 1
    if isinstance(key, DateKey):
        return 1 if key.which == "SENT" else 0
    if isinstance(key, NotKey):
        return _rank(key.key)
    if isinstance(key, OrKey):
        return max(_rank(key.left), _rank(key.right))
    if isinstance(key, AndKey):
        return max((_rank(k) for k in key.keys), default=0)
    return 0


def content_needed(key: SearchKey) -> ContentNeed:
    """What evaluating ``key`` reads beyond a :class:`Candidate`: ``"header"`` for header
    and ``SENT*`` keys, ``"full"`` for ``BODY``/``TEXT``; the maximum over the tree."""
    return _NEEDS[_rank(key)]


# ------------------------------------------------------------------ text helpers

def normalize(text: str) -> str:
    """The form a haystack is compared in: NFKC, casefolded, each run of white space one
    space, none at either end."""
    text = unicodedata.normalize("NFKC", unicodedata.normalize("NFKC", text).casefold())
    return " ".join(text.split())  # far faster than re.sub(r"\s+", " ", ...) on big bodies


def normalize_needle(text: str) -> str:
    """A search string in the form of :func:`normalize`, except that white space at either
    end is kept (as one space): ``" foo"`` still means foo after white space."""
    core = normalize(text)
    if text[:1].isspace():
        core = " " + core if core else " "
    if text[-1:].isspace() and core != " ":
        core += " "
    return core


_CHARSET_ALIASES = {
    # Labels mail uses for the superset that is really meant (as browsers do).
    "iso8859-1": "cp1252",
    "gb2312": "gb18030",
    "gbk": "gb18030",
    "ks_c_5601-1987": "cp949",
    "euc-kr": "cp949",
    "iso-8859-8-i": "iso8859-8",
    "shift_jis": "cp932",
    "x-sjis": "cp932",
    "windows-874": "cp874",
    "tis-620": "cp874",
}


def decode_bytes(data: bytes, charset: str | None) -> str:
    """Bytes in a declared charset -> text, never raising. A missing, ASCII or unknown
    charset is read as UTF-8 if the bytes are valid UTF-8, else as Latin-1."""
    label = (charset or "").strip().strip('"').lower()
    if label:
        label = _CHARSET_ALIASES.get(label, label)
        try:
            name = codecs.lookup(label).name
        except (LookupError, ValueError):
            name = ""
        name = _CHARSET_ALIASES.get(name, name)
        if name and name not in ("ascii", "utf-8"):
            try:
                return data.decode(name, "replace")
            except Exception:  # non-text codecs (base64, rot13) and codec bugs: use the fallback
                pass
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        return data.decode("latin-1")


_ENCODED_WORD = re.compile(r"=\?([^?\s]+)\?([bBqQ])\?([^?\r\n]*)\?=")
_Q_HEX = re.compile(rb"=([0-9A-Fa-f]{2})")
_B64_JUNK = re.compile(r"[^A-Za-z0-9+/]")


def _word_bytes(encoding: str, text: str) -> bytes | None:
    if encoding in "qQ":
        raw = text.replace("_", " ").encode("utf-8")
        return _Q_HEX.sub(lambda m: bytes((int(m.group(1), 16),)), raw)
    text = _B64_JUNK.sub("", text)
    if len(text) % 4 == 1:
        text = text[:-1]
    try:
        return base64.b64decode(text + "=" * (-len(text) % 4))
    except (binascii.Error, ValueError):
        return None


def decode_encoded_words(text: str) -> str:
    """Decode RFC 2047 encoded-words anywhere in ``text``, tolerantly: whitespace between
    adjacent encoded-words is dropped, adjacent words in one charset are joined before
    decoding (a UTF-8 character may be split across two), an undecodable word is left
    as written."""
    if "=?" not in text:
        return text
    out: list[str] = []
    pending = bytearray()
    pending_charset: str | None = None
    pos = 0
    after_word = False
    for m in _ENCODED_WORD.finditer(text):
        between = text[pos : m.start()]
        data = _word_bytes(m.group(2), m.group(3))
        if not (after_word and (not between or between.isspace())) or data is None:
            if pending_charset is not None:
                out.append(decode_bytes(bytes(pending), pending_charset))
                pending, pending_charset = bytearray(), None
            out.append(between)
        pos = m.end()
        if data is None:
            out.append(m.group(0))
            after_word = False
            continue
        charset = m.group(1).split("*", 1)[0].lower()  # RFC 2231 language suffix
        if pending_charset is not None and charset != pending_charset:
            out.append(decode_bytes(bytes(pending), pending_charset))
            pending = bytearray()
        pending_charset = charset
        pending += data
        after_word = True
    if pending_charset is not None:
        out.append(decode_bytes(bytes(pending), pending_charset))
    out.append(text[pos:])
    return "".join(out)


_BLANK_LINE = re.compile(rb"\n\r?\n")


def split_message(message: bytes) -> tuple[bytes, bytes]:
    """(header block including the empty line, body). Without an empty line it is all
    header."""
    if message.startswith((b"\r\n", b"\n")):
        cut = 2 if message.startswith(b"\r\n") else 1
        return message[:cut], message[cut:]
    m = _BLANK_LINE.search(message)
    if m is None:
        return message, b""
    return message[: m.end()], message[m.end() :]


def parse_header_fields(header: bytes) -> dict[str, list[str]]:
    """Lower-case field name -> unfolded raw values, in order. Bytes are read as UTF-8
    (invalid sequences replaced); lines that are not fields (an mbox ``From`` line) are
    skipped; ``Name :`` (obsolete white space before the colon) is accepted."""
    fields: dict[str, list[str]] = {}
    current: list[str] | None = None
    values: list[str] | None = None
    for line in header.decode("utf-8", "replace").split("\n"):
        line = line.rstrip("\r")
        if not line:
            break
        if line[0] in " \t":
            if current is not None:
                current.append(line)
            continue
        if current is not None and values is not None:
            values.append("".join(current).strip())
            current = None
        name, colon, value = line.partition(":")
        name = name.rstrip(" \t")
        if not colon or not name or any(ch.isspace() for ch in name):
            continue
        values = fields.setdefault(name.lower(), [])
        current = [value]
    if current is not None and values is not None:
        values.append("".join(current).strip())
    return fields


_TAG = re.compile(r"<[^<>]*>")  # [^<>]: linear even for "<<<<..." (no quadratic backtracking)


def _html_text(text: str) -> str:
    return html.unescape(_TAG.sub(" ", text))


def _unsurrogate(text: str) -> str:
    return text.encode("utf-8", "surrogateescape").decode("utf-8", "replace")


_BINARY_TYPES = frozenset({"image", "audio", "video", "application", "font", "model"})
_B64_DEFECTS = (
    email.errors.InvalidBase64CharactersDefect,
    email.errors.InvalidBase64PaddingDefect,
    email.errors.InvalidBase64LengthDefect,
)


def body_text(message: bytes) -> str:
    """The searchable text of the body (not normalised; parts joined with NUL, which no
    needle contains). Raises whatever the ``email`` package raises on a hopeless message;
    :class:`MessageContent` falls back to the raw bytes then."""
    msg = email.message_from_bytes(message, policy=email.policy.compat32)
    pieces: list[str] = []
    for i, part in enumerate(msg.walk()):
        if i:  # headers of nested parts: file names, forwarded messages
            block = "\n".join(f"{k}: {v}" for k, v in part.items())
            block = _unsurrogate(block)
            pieces.append(block)
            decoded = decode_encoded_words(block)
            if decoded != block:
                pieces.append(decoded)
        if part.is_multipart():
            continue
        # Binary media types are skipped; everything else is text: text/*, "multipart" or
        # "message" leaves (a broken boundary, message/global) and unparseable types
        # (RFC 2045 5.2: those are text/plain).
        if part.get_content_maintype() in _BINARY_TYPES:
            continue
        raw = part.get_payload()
        if not isinstance(raw, str):
            continue
        try:
            payload = part.get_payload(decode=True)
        except Exception:
            payload = None
        if not isinstance(payload, bytes) or any(isinstance(d, _B64_DEFECTS) for d in part.defects):
            # undecodable: search the transfer-encoded text as it is (too)
            pieces.append(_unsurrogate(raw))
        if not isinstance(payload, bytes):
            continue
        try:
            charset = part.get_content_charset(None)
        except Exception:
            charset = None
        text = decode_bytes(payload, charset)
        pieces.append(text)
        if part.get_content_subtype() == "html":
            pieces.append(_html_text(text))
    return "\0".join(pieces)


_MONTHS = {m: i for i, m in enumerate(
    ("jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep", "oct", "nov", "dec"), 1)}
_LOOSE_DATE = re.compile(r"\b([0-9]{1,2})[\s-]+([A-Za-z]{3})[A-Za-z]*\.?[\s-]+([0-9]{4})\b")
_ISO_DATE = re.compile(r"\b([0-9]{4})-([0-9]{2})-([0-9]{2})\b")


def parse_sent_date(value: str) -> _dt.date | None:
    """The day of a ``Date:`` value as written (in its own zone), or None. Beyond RFC 5322
    (and what ``email.utils`` accepts) a bare ``1 Jan 2024`` or ``2024-01-01`` is read."""
    try:
        parsed = email.utils.parsedate_tz(value)
        if parsed is not None:
            return _dt.date(parsed[0], parsed[1], parsed[2])
    except Exception:
        pass
    try:
        if m := _LOOSE_DATE.search(value):
            month = _MONTHS.get(m.group(2).lower())
            if month is not None:
                return _dt.date(int(m.group(3)), month, int(m.group(1)))
        if m := _ISO_DATE.search(value):
            return _dt.date(int(m.group(1)), int(m.group(2)), int(m.group(3)))
    except ValueError:
        pass
    return None


# ------------------------------------------------------------------ per-message content


class MessageContent:
    """The content of one message for one evaluation, decoded lazily and at most once,
    so that several header or text keys (``OR BODY a BODY b``) share the work.

    ``loader`` (used by :func:`search`) is called on first use and returns
    ``(header, message)``; ``(None, None)`` means the message is gone and reads as empty.
    Content that is needed but was not supplied raises ``ValueError`` (a caller bug)."""

    __slots__ = ("_body", "_fields", "_header", "_header_text", "_loader", "_message", "_norm", "_sent")

    def __init__(
        self,
        header: bytes | None = None,
        message: bytes | None = None,
        loader: Callable[[], tuple[bytes | None, bytes | None]] | None = None,
    ) -> None:
        self._header = header
        self._message = message
        self._loader = loader
        self._fields: dict[str, list[str]] | None = None
        self._norm: dict[str, list[str]] = {}
        self._header_text: str | None = None
        self._body: str | None = None
        self._sent: tuple[_dt.date | None] | None = None

    def _load(self) -> None:
        loader, self._loader = self._loader, None
        if loader is not None:
            header, message = loader()
            if header is None and message is None:
                header = message = b""
            self._header, self._message = header, message

    def header(self) -> bytes:
        if self._loader is not None:
            self._load()
        if self._header is None:
            if self._message is None:
                raise ValueError("this SEARCH program needs the message header (header= or message=)")
            self._header = split_message(self._message)[0]
        return self._header

    def message(self) -> bytes:
        if self._loader is not None:
            self._load()
        if self._message is None:
            raise ValueError("this SEARCH program needs the whole message (message=)")
        return self._message

    def fields(self) -> dict[str, list[str]]:
        if self._fields is None:
            self._fields = parse_header_fields(self.header())
        return self._fields

    def field_values(self, name: str) -> list[str] | None:
        """Normalised values of a field (lower-case name): each raw value and, if it has
        encoded-words, its decoded form. None if the message lacks the field."""
        values = self._norm.get(name)
        if values is None:
            raw = self.fields().get(name)
            if not raw:
                return None
            values = []
            for value in raw:
                values.append(normalize(value))
                decoded = decode_encoded_words(value)
                if decoded != value:
                    values.append(normalize(decoded))
            self._norm[name] = values
        return values

    def header_text(self) -> str:
        if self._header_text is None:
            raw = self.header().decode("utf-8", "replace")
            decoded = decode_encoded_words(raw)
            text = raw if decoded == raw else f"{raw}\0{decoded}"
            self._header_text = normalize(text)
        return self._header_text

    def body_text(self) -> str:
        if self._body is None:
            message = self.message()
            try:
                text = body_text(message)
            except Exception:
                text = split_message(message)[1].decode("utf-8", "replace")
            self._body = normalize(text)
        return self._body

    def sent_date(self) -> _dt.date | None:
        if self._sent is None:
            dates = self.fields().get("date")
            self._sent = (parse_sent_date(dates[0]) if dates else None,)
        return self._sent[0]


# ------------------------------------------------------------------ compiled keys

Evaluator = Callable[[Candidate, MessageContent | None], bool]


def _true(c: Candidate, m: MessageContent | None) -> bool:
    return True


def _false(c: Candidate, m: MessageContent | None) -> bool:
    return False


class SearchContext:
    """Per-SEARCH state: what ``*`` and ``$`` stand for, the zone of INTERNALDATE days,
    and the compiled form of each key (cached by key object, so use one context per
    SEARCH: ``max_seq``/``max_uid`` are baked into compiled sequence sets).

    ``max_uid`` is the largest UID in the mailbox (not UIDNEXT - 1); ``saved`` the UIDs of
    the saved result ``$`` refers to (RFC 5182; None: no saved result, ``$`` is empty)."""

    def __init__(
        self,
        *,
        max_seq: int,
        max_uid: int,
        tz: _dt.tzinfo | None = None,
        saved: Iterable[int] | None = None,
    ) -> None:
        self.max_seq = max(0, max_seq)
        self.max_uid = max(0, max_uid)
        self.tz = tz
        self.saved: frozenset[int] = frozenset(saved or ())
        self._compiled: dict[int, tuple[SearchKey, Evaluator, int]] = {}

    # -- dates

    def day_of(self, timestamp: float) -> _dt.date:
        """The day of an epoch time in ``tz`` (local time if None)."""
        try:
            return _dt.datetime.fromtimestamp(timestamp, self.tz).date()
        except (OverflowError, OSError, ValueError):
            return _dt.date.min if timestamp < 0 else _dt.date.max

    def day_start(self, day: _dt.date) -> float:
        """The first instant of ``day`` in ``tz`` as epoch seconds (+-inf beyond range)."""
        try:
            start = _dt.datetime.combine(day, _dt.time())
            if self.tz is not None:
                start = start.replace(tzinfo=self.tz)
            return start.timestamp()
        except (OverflowError, OSError, ValueError):
            return -math.inf if day.year < 1970 else math.inf

    def _next_day_start(self, day: _dt.date) -> float:
        if day == _dt.date.max:
            return math.inf
        return self.day_start(day + _dt.timedelta(days=1))

    # -- compilation

    def evaluator(self, key: SearchKey) -> Evaluator:
        """``key`` compiled into ``f(candidate, content) -> bool``; compiled once per key
        object. ``content`` may be None when ``content_needed(key) == "none"``."""
        return self._compile(key)[0]

    def _compile(self, key: SearchKey) -> tuple[Evaluator, int]:
        hit = self._compiled.get(id(key))
        if hit is not None and hit[0] is key:
            return hit[1], hit[2]
        fn, rank = self._build(key)
        self._compiled[id(key)] = (key, fn, rank)  # holding key keeps its id unique
        return fn, rank

    def _build(self, key: SearchKey) -> tuple[Evaluator, int]:
        if isinstance(key, AllKey):
            return _true, 0
        if isinstance(key, FlagKey):
            return _flag(key), 0
        if isinstance(key, SequenceKey):
            return self._sequence(key), 0
        if isinstance(key, SizeKey):
            n = key.size
            if key.op == "LARGER":
                return (lambda c, m: c.size > n), 0
            return (lambda c, m: c.size < n), 0
        if isinstance(key, ModSeqKey):
            v = key.modseq
            return (lambda c, m: c.modseq >= v), 0
        if isinstance(key, DateKey):
            return self._date(key)
        if isinstance(key, HeaderKey):
            return _header(key), 1
        if isinstance(key, TextKey):
            return _text(key), 2
        if isinstance(key, NotKey):
            inner, rank = self._compile(key.key)
            if inner is _true:
                return _false, 0
            if inner is _false:
                return _true, 0
            return (lambda c, m: not inner(c, m)), rank
        if isinstance(key, OrKey):
            (a, ra), (b, rb) = sorted((self._compile(key.left), self._compile(key.right)), key=_by_rank)
            if a is _true or b is _true:
                return _true, 0
            if a is _false:
                return b, rb
            if b is _false:
                return a, ra
            return (lambda c, m: a(c, m) or b(c, m)), rb
        if isinstance(key, AndKey):
            return self._and(key)
        raise TypeError(f"not a search key: {key!r}")

    def _and(self, key: AndKey) -> tuple[Evaluator, int]:
        parts: list[tuple[Evaluator, int]] = []
        stack = list(reversed(key.keys))
        while stack:  # flatten nested ANDs so all their cheap keys go first
            k = stack.pop()
            if isinstance(k, AndKey):
                stack.extend(reversed(k.keys))
                continue
            fn, rank = self._compile(k)
            if fn is _false:
                return _false, 0
            if fn is not _true:
                parts.append((fn, rank))
        parts.sort(key=_by_rank)  # stable: content-free keys first, then header, then text
        fns = [fn for fn, _ in parts]
        rank = parts[-1][1] if parts else 0
        if not fns:
            return _true, 0
        if len(fns) == 1:
            return fns[0], rank
        if len(fns) == 2:
            a, b = fns
            return (lambda c, m: a(c, m) and b(c, m)), rank
        if len(fns) == 3:
            a, b, d = fns
            return (lambda c, m: a(c, m) and b(c, m) and d(c, m)), rank

        def all_of(c: Candidate, m: MessageContent | None) -> bool:
            for fn in fns:  # noqa: SIM110 - a plain loop is faster than all() over a generator
                if not fn(c, m):
                    return False
            return True

        return all_of, rank

    def _sequence(self, key: SequenceKey) -> Evaluator:
        uid = key.uid
        if key.set.saved:
            saved = self.saved
            return lambda c, m: c.uid in saved
        ranges = key.set.resolve(self.max_uid if uid else self.max_seq, clamp=not uid)
        if not ranges:
            return _false
        if len(ranges) == 1:
            lo, hi = ranges[0]
            if uid:
                return lambda c, m: lo <= c.uid <= hi
            return lambda c, m: lo <= c.seq <= hi
        if sum(hi - lo + 1 for lo, hi in ranges) <= _SMALL_SET:
            numbers = frozenset(n for lo, hi in ranges for n in range(lo, hi + 1))
            if uid:
                return lambda c, m: c.uid in numbers
            return lambda c, m: c.seq in numbers
        starts = [lo for lo, _ in ranges]
        ends = [hi for _, hi in ranges]
        find = bisect.bisect_right

        def contains(n: int) -> bool:
            i = find(starts, n) - 1
            return i >= 0 and n <= ends[i]

        if uid:
            return lambda c, m: contains(c.uid)
        return lambda c, m: contains(c.seq)

    def _date(self, key: DateKey) -> tuple[Evaluator, int]:
        day, op = key.date, key.op
        if key.which == "INTERNAL":
            start = self.day_start(day)
            if op == "BEFORE":
                return (lambda c, m: c.internal_date < start), 0
            if op == "SINCE":
                return (lambda c, m: c.internal_date >= start), 0
            end = self._next_day_start(day)
            return (lambda c, m: start <= c.internal_date < end), 0

        compare: Callable[[_dt.date], bool]
        if op == "BEFORE":
            compare = day.__gt__  # sent < day
        elif op == "SINCE":
            compare = day.__le__  # sent >= day
        else:
            compare = day.__eq__
        day_of = self.day_of

        def sent(c: Candidate, m: MessageContent | None) -> bool:
            assert m is not None, "SENT* keys need the message header"
            d = m.sent_date()
            return compare(d if d is not None else day_of(c.internal_date))

        return sent, 1


def _by_rank(item: tuple[Evaluator, int]) -> int:
    return item[1]


def _flag(key: FlagKey) -> Evaluator:
    fold = key.flag.casefold()
    present = key.present
    if fold == "\\recent":
        if present:
            return lambda c, m: c.recent
        return lambda c, m: not c.recent
    flag = key.flag
    memo: dict[frozenset[str], bool] = {}  # most messages share a few flag sets

    def has_flag(c: Candidate, m: MessageContent | None) -> bool:
        flags = c.flags
        result = memo.get(flags)
        if result is None:
            found = flag in flags or any(f.casefold() == fold for f in flags)
            result = found == present
            if len(memo) < _FLAG_MEMO_MAX:
                memo[flags] = result
        return result

    return has_flag


def _header(key: HeaderKey) -> Evaluator:
    name = key.field.lower()
    needle = normalize_needle(key.value)

    def header_has(c: Candidate, m: MessageContent | None) -> bool:
        assert m is not None, "header keys need the message header"
        values = m.field_values(name)
        if values is None:
            return False
        if not needle:
            return True
        return any(needle in v for v in values)

    return header_has


def _text(key: TextKey) -> Evaluator:
    needle = normalize_needle(key.value)
    if not needle:
        return _true  # the empty string is in every message
    if key.where == "BODY":

        def body_has(c: Candidate, m: MessageContent | None) -> bool:
            assert m is not None, "BODY needs the message"
            return needle in m.body_text()

        return body_has

    def text_has(c: Candidate, m: MessageContent | None) -> bool:
        assert m is not None, "TEXT needs the message"
        return needle in m.header_text() or needle in m.body_text()

    return text_has


# ------------------------------------------------------------------ entry points


def matches(
    key: SearchKey,
    cand: Candidate,
    ctx: SearchContext,
    *,
    header: bytes | None = None,
    message: bytes | None = None,
) -> bool:
    """Does ``cand`` satisfy ``key``? Pass what :func:`content_needed` asks for: ``header``
    (the raw header block) for ``"header"``, ``message`` (the whole message; the header is
    derived from it) for ``"full"``. Missing content that is read raises ``ValueError``."""
    fn, rank = ctx._compile(key)
    return fn(cand, MessageContent(header, message) if rank else None)


def search(
    key: SearchKey,
    candidates: Iterable[Candidate],
    ctx: SearchContext,
    load: Callable[[Candidate, ContentNeed], tuple[bytes | None, bytes | None]] | None = None,
) -> list[Candidate]:
    """The candidates matching ``key``, in the given order.

    Keys that need no content are evaluated first (within every AND, and the cheap side of
    every OR first); ``load(cand, need) -> (header, message)`` is called at most once per
    candidate, with ``need = content_needed(key)``, and only when the cheap keys leave the
    result open. ``load`` returning ``(None, None)`` means the message vanished: it has no
    header fields and no text."""
    fn = ctx.evaluator(key)
    need = content_needed(key)
    if need == "none":
        return [c for c in candidates if fn(c, None)]
    if load is None:
        raise ValueError(f"this SEARCH program needs message content ({need}) but no load callback was given")
    out: list[Candidate] = []
    for c in candidates:

        def loader(c: Candidate = c) -> tuple[bytes | None, bytes | None]:
            return load(c, need)

        if fn(c, MessageContent(loader=loader)):
            out.append(c)
    return out


__all__ = [
    "Candidate", "ContentNeed", "MessageContent", "SearchContext", "content_needed", "decode_bytes",
    "decode_encoded_words", "matches", "normalize", "normalize_needle", "parse_header_fields",
    "parse_sent_date", "search", "split_message",
]
