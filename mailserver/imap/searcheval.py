"""Evaluate a parsed SEARCH program (:mod:`.searchkeys`) against the messages of a mailbox.

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

Speed of ``BODY``/``TEXT`` (the answers are those of the plain reading above, whatever
path gives them; ``SHORTCUTS = mimesplit.FAST_PARSE = False`` is that plain reading, and
the tests compare the two on tricky, random and mutated messages):

1. :func:`.rawfilter.raw_haystacks`: for a message whose raw bytes rule out every
   transformation that could make new ASCII text (base64, encoded-words or entities where
   they would be decoded, charsets other than UTF-8, ...), the body with non-ASCII
   characters folded as normalisation would fold them alone (:mod:`.textfold`), plus its
   quoted-printable decoding. A needle with an ASCII word in none of them is not in the
   message: ~15x cheaper than parsing.
2. :func:`.mimesplit.parse_message`: the email package's tree, built without the feed parser
   for well-formed messages (:class:`.mimesplit._Splitter`), then the same per-part decoding
   as before, kept as pieces (:class:`.bodypieces._Piece`). Per piece a needle
   (:mod:`.searchneedle`) is found verbatim (then it is in the normalised text), or provably
   absent (an ASCII word or the phrase is missing from the folded bytes), or undecided.
3. Only undecided messages are normalised in full (NFKC + casefold of the whole text is the
   single most expensive step). Nothing is cached beyond one message's evaluation.
"""

from __future__ import annotations

import bisect
import datetime as _dt
import email
import email.errors
import email.policy
import email.utils
import math
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Literal

from mailserver.message import split_header

from .bodypieces import (
    _MAYBE,
    _NO,
    _YES,
    _Piece,
    body_pieces,
)
from .mime import parse_addresses
from .rawfilter import (
    _Hay,
    raw_haystacks,
)
from .searchkeys import (
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
from .searchneedle import _Needle, compile_needle
from .searchtext import (
    decode_encoded_words,
    header_field,
    normalize,
    normalize_needle,
    parse_header_fields,
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


# Module switch, for tests and measurements, with mimesplit.FAST_PARSE: both on is the normal
# operation, both off is the reference the shortcuts are checked against (results are the
# same either way).
SHORTCUTS = True  # decide BODY/TEXT from byte checks where that provably gives the same answer

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

    __slots__ = ("_body", "_fields", "_header", "_header_pieces", "_header_text", "_loader", "_message",
                 "_norm", "_pieces", "_raw", "_sent")

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
        self._pieces: list[_Piece] | None = None
        self._header_pieces: list[_Piece] | None = None
        self._raw: list[_Hay] | bool | None = False  # raw_haystacks(), False: not computed yet
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
            self._header = split_header(self._message)[0]
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

    def _field(self, name: str) -> list[str] | None:
        """The raw values of one field: by :func:`header_field` for an ASCII block (a
        SUBJECT search reads one field of a ~40-line block), else by the full parse."""
        if self._fields is None:
            values = header_field(self.header(), name)
            if values is not None:
                return values
        return self.fields().get(name)

    def field_values(self, name: str) -> list[str] | None:
        """Normalised values of a field (lower-case name): each raw value and, if it has
        encoded-words, its decoded form. None if the message lacks the field."""
        values = self._norm.get(name)
        if values is None:
            raw = self._field(name)
            if not raw:
                return None
            values = []
            for value in raw:
                values.append(normalize(value))
                decoded = decode_encoded_words(value)
                if decoded != value:
                    values.append(normalize(decoded))
                if name in _ADDRESS_FIELDS:
                    # The addresses as ENVELOPE parses them, so "user (c)@ (c) example.org"
                    # is found as user@example.org too (Dovecot searches the parsed form).
                    addrs = _address_text(value)
                    if addrs:
                        values.append(normalize(addrs))
            self._norm[name] = values
        return values

    def header_text(self) -> str:
        if self._header_text is None:
            raw = self.header().decode("utf-8", "replace")
            decoded = decode_encoded_words(raw)
            text = raw if decoded == raw else f"{raw}\0{decoded}"
            self._header_text = normalize(text)
        return self._header_text

    def body_pieces(self) -> list[_Piece]:
        if self._pieces is None:
            message = self.message()
            try:
                self._pieces = body_pieces(message)
            except Exception:
                self._pieces = [_Piece(split_header(message)[1].decode("utf-8", "replace"))]
        return self._pieces

    def body_text(self) -> str:
        if self._body is None:
            self._body = normalize("\0".join(t for piece in self.body_pieces() for t in piece.texts()))
        return self._body

    def _header_pieces_(self) -> list[_Piece]:
        if self._header_pieces is None:
            header = self.header()
            pieces = [_Piece(None, header)]  # decoded as UTF-8 with replacement: the same ASCII runs
            if b"=?" in header:
                raw = header.decode("utf-8", "replace")
                decoded = decode_encoded_words(raw)
                if decoded != raw:
                    pieces.append(_Piece(None, decoded.encode("utf-8", "surrogatepass")))
            self._header_pieces = pieces
        return self._header_pieces

    def header_has(self, needle: _Needle) -> bool:
        """Is ``needle`` in :meth:`header_text` (with the shortcuts where they decide)?"""
        if SHORTCUTS and needle.frags:
            verdict = _decide(self._header_pieces_(), needle)
            if verdict != _MAYBE:
                return verdict == _YES
        return needle.text in self.header_text()

    def body_has(self, needle: _Needle) -> bool:
        """Is ``needle`` in :meth:`body_text`? With SHORTCUTS: the raw haystacks, then the
        pieces' byte checks, then the pieces still undecided normalised one by one (for a
        needle without NUL or white space at either end that is the same question: NUL
        survives normalisation, so such a needle lies within one piece's normalised text)."""
        if not SHORTCUTS or self._body is not None:
            return needle.text in self.body_text()
        undecided: list[_Piece] | None = None
        if needle.frags:
            if self._raw is False:
                self._raw = raw_haystacks(self.message())
            hay = self._raw
            if isinstance(hay, list) and not any(h.may_hold(needle) for h in hay):
                return False
            undecided = []
            for piece in self.body_pieces():  # all of them first: a failure anywhere changes all
                verdict = piece.decide(needle)
                if verdict == _YES:
                    return True
                if verdict == _MAYBE:
                    undecided.append(piece)
            if not undecided:
                return False
        if needle.bare:
            if undecided is None:
                undecided = self.body_pieces()
            return any(piece.normalized_has(needle.text) for piece in undecided)
        return needle.text in self.body_text()

    def sent_date(self) -> _dt.date | None:
        if self._sent is None:
            dates = self._field("date")
            self._sent = (parse_sent_date(dates[0]) if dates else None,)
        return self._sent[0]


def _decide(pieces: list[_Piece], needle: _Needle) -> int:
    best = _NO
    for piece in pieces:
        verdict = piece.decide(needle)
        if verdict == _YES:
            return _YES
        best = max(best, verdict)
    return best


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


_ADDRESS_FIELDS = frozenset({"from", "sender", "reply-to", "to", "cc", "bcc"})


def _address_text(value: str) -> str:
    """``name <mailbox@host>, ...`` of an address field, as ENVELOPE reads it."""
    out = []
    for name, _route, mailbox, host in parse_addresses(value.encode("utf-8", "surrogateescape")):
        if host is None:
            continue  # group start/end
        spec = (mailbox or b"") + (b"@" + host if host else b"")
        out.append((name + b" <" + spec + b">") if name else spec)
    return b", ".join(out).decode("utf-8", "replace")


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
    needle = compile_needle(key.value)
    if not needle.text:
        return _true  # the empty string is in every message
    if key.where == "BODY":

        def body_has(c: Candidate, m: MessageContent | None) -> bool:
            assert m is not None, "BODY needs the message"
            return m.body_has(needle)

        return body_has

    def text_has(c: Candidate, m: MessageContent | None) -> bool:
        assert m is not None, "TEXT needs the message"
        return m.header_has(needle) or m.body_has(needle)

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
    "Candidate", "ContentNeed", "MessageContent", "SearchContext", "content_needed", "matches",
    "parse_sent_date", "search",
]
