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

Speed of ``BODY``/``TEXT`` (the answers are those of the plain reading above, whatever
path gives them; ``SHORTCUTS = FAST_PARSE = False`` is that plain reading, and the tests
compare the two on tricky, random and mutated messages):

1. :func:`raw_haystacks`: for a message whose raw bytes rule out every transformation that
   could make new ASCII text (base64, encoded-words or entities where they would be
   decoded, charsets other than UTF-8, ...), the body with non-ASCII characters folded as
   normalisation would fold them alone, plus its quoted-printable decoding. A needle with
   an ASCII word in none of them is not in the message: ~15x cheaper than parsing.
2. :func:`parse_message`: the email package's tree, built without the feed parser for
   well-formed messages (:class:`_Splitter`), then the same per-part decoding as before,
   kept as pieces (:class:`_Piece`). Per piece a needle is found verbatim (then it is in
   the normalised text), or provably absent (an ASCII word or the phrase is missing from
   the folded bytes), or undecided.
3. Only undecided messages are normalised in full (NFKC + casefold of the whole text is the
   single most expensive step). Nothing is cached beyond one message's evaluation.
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
import itertools
import math
import re
import unicodedata
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from email.message import Message
from typing import Literal

from mailserver.message import header_end, split_header

from .mime import parse_addresses
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
    return _decode_text(data, charset)[0]


def _decode_text(data: bytes, charset: str | None) -> tuple[str, bytes | None]:
    """:func:`decode_bytes`, and ``data`` again when it is exactly the UTF-8 of the text
    (so the byte checks of the shortcuts need not encode it again), else None."""
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
                return data.decode(name, "replace"), None
            except Exception:  # non-text codecs (base64, rot13) and codec bugs: use the fallback
                pass
    try:
        return data.decode("utf-8"), data
    except UnicodeDecodeError:
        return data.decode("latin-1"), None


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


_HEADER_END = re.compile(rb"^\r*$", re.MULTILINE)  # the first line empty but for CRs
_FIELD_NAME_OK = re.compile(r"[!-9;-~]+")  # printable ASCII but ':' (RFC 5322 2.2)


_BLANK_AT_START = re.compile(rb"\r*(?:\n|\Z)")
_BLANK_AFTER_LF = re.compile(rb"\n\r*(?:\n|\Z)")  # a literal first byte: the engine scans fast


def _header_end(header: bytes) -> int:
    """Where the first line that is empty but for CRs starts (the end of the header
    block), or len(header): ``_HEADER_END`` without the multi-line ``^``, which makes the
    engine try every position (that was most of a SUBJECT search)."""
    if _BLANK_AT_START.match(header):
        return 0
    m = _BLANK_AFTER_LF.search(header)
    return m.start() + 1 if m else len(header)


def header_field(header: bytes, name: str) -> list[str] | None:
    """``parse_header_fields(header).get(name)`` for one lower-case field name, without
    splitting the whole block: byte finds on the lower-cased block locate the field's
    lines. For an ASCII block only (None otherwise, and for a name no field line can
    have): there the two readings agree byte for byte (the tests compare them), while
    non-ASCII bytes go through UTF-8 decoding and Unicode case rules that only the full
    parse has."""
    if not header.isascii() or not _FIELD_NAME_OK.fullmatch(name) or not name.isascii():
        return None
    end = _header_end(header)
    lower = header[:end].lower()  # ASCII: bytes.lower is the field name's case rule
    key = name.lower().encode("ascii")
    values: list[str] = []
    if lower.startswith(key):
        start = 0
    else:
        nl = lower.find(b"\n" + key)
        start = nl + 1 if nl >= 0 else -1
    while start >= 0:  # at a line that starts with the name: a field if ':' follows
        pos = start + len(key)
        while pos < end and header[pos] in (32, 9):
            pos += 1
        if pos < end and header[pos] == 58:  # ':' ends the name: this is the field
            pos += 1
            parts: list[bytes] = []
            while True:
                eol = header.find(b"\n", pos, end)
                if eol < 0:
                    parts.append(header[pos:end].rstrip(b"\r"))
                    break
                parts.append(header[pos:eol].rstrip(b"\r"))
                pos = eol + 1
                if pos >= end or header[pos] not in (32, 9):  # not a continuation line
                    break
            values.append(b"".join(parts).decode("ascii").strip())
        nxt = lower.find(b"\n" + key, start)
        start = nxt + 1 if nxt >= 0 else -1
    return values


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

# Module switches, for tests and measurements: both on is the normal operation, both off
# is the reference the shortcuts are checked against (results are the same either way).
SHORTCUTS = True  # decide BODY/TEXT from byte checks where that provably gives the same answer
FAST_PARSE = True  # take simple MIME structures apart without the email package's feed parser


# ------------------------------------------------------------------ MIME structure, fast
#
# The email package's feed parser costs ~0.6 ms for a 12 KB message (it pushes every line
# through Python code). _Splitter builds the same tree of compat32 Message objects for the
# messages that are plainly well formed, finding only the lines that start with "--"
# (boundary candidates) with a regex. It mirrors email.feedparser.FeedParser._parsegen step
# by step for that subset, and gives up (_Bail; the caller then runs the real parser)
# on everything it does not mirror: a bare CR (the feed parser splits lines at it), a
# header block with a line that is not "name:" or a continuation (the parser would end the
# header there), no empty line after a header block, message/delivery-status,
# multipart/digest (other default types), a boundary outside a plain character set (so no
# header line can look like a boundary line), a missing start or close delimiter, two
# delimiter lines in a row, more than _MAX_DASH_LINES candidate lines or _MAX_DEPTH levels.
# Header fields are made with the same policy calls the parser makes (header_source_parse,
# set_raw); a leaf's payload is its lines joined, the line break before a delimiter
# removed from the part the parser would remove it from (its "_last" message). So walk(),
# items(), get_payload() and the content-type methods answer exactly as on the parser's tree.

_COMPAT32 = email.policy.compat32
_HEADER_BLOCK = re.compile(rb"(?:[\x21-\x39\x3b-\x7e]+:[^\r\n]*\r?\n(?:[ \t][^\r\n]*\r?\n)*)*")
_FIELD = re.compile(rb"[^\n]*\n(?:[ \t][^\n]*\n)*")
_TOP_FIELD = re.compile(rb"(?im)^content-(?:type|transfer-encoding):[^\n]*\n(?:[ \t][^\n]*\n)*")
# What the feed parser's boundaryre allows after "--" boundary: "--" (the close delimiter),
# blanks, the line break. A line holds at most one LF, at its end, so \Z is its "$".
_DELIMITER_TAIL = re.compile(rb"(--)?[ \t]*(?:\r\n|\r|\n)?\Z")
_SAFE_BOUNDARY = re.compile(r"[0-9A-Za-z'()+_,./=?-]{1,200}")
_MAX_DASH_LINES = 4096
_MAX_DEPTH = 32


class _Bail(Exception):
    """Outside what _Splitter mirrors exactly: use the email package's parser."""


class _Message(Message):
    """A compat32 Message that remembers its parsed header parameters: get_param() re-parses
    Content-Type on every call, and the walk asks several times. Only for _Splitter's
    trees, whose header fields are all set before the first question and never change."""

    def _get_params_preserve(self, failobj: object, header: str) -> object:
        cache = self.__dict__.setdefault("_params_memo", {})
        params = cache.get(header)
        if params is None:
            params = cache[header] = super()._get_params_preserve(  # type: ignore[misc]  # private
                _NO_PARAMS, header)  # (an email.message method, the one this memo exists for)
        return failobj if params is _NO_PARAMS else params


_NO_PARAMS: list[tuple[str, str]] = []  # a sentinel object


class _Splitter:
    __slots__ = ("dashes", "data", "lines")

    def __init__(self, data: bytes) -> None:
        self.data = data
        self.dashes: list[int] = []
        self.lines: list[bytes] = []  # the line at each of dashes
        # Lines that start with "--", the only ones a delimiter can be. A bare CR ends a
        # line for the feed parser: the caller refuses "\r--", and a bare CR inside one
        # of these lines is refused here; elsewhere it only matters in a header block,
        # which _HEADER_BLOCK refuses it in (payload lines are joined back as they were).
        dashes = [0] if data.startswith(b"--") else []
        at = data.find(b"\n--")
        while at >= 0:
            dashes.append(at + 1)
            if len(dashes) > _MAX_DASH_LINES:
                raise _Bail
            at = data.find(b"\n--", at + 3)
        lines = [self._line(at) for at in dashes]
        for line in lines:
            cr = line.find(b"\r")
            if cr >= 0 and cr != len(line) - 2:
                raise _Bail
        self.dashes, self.lines = dashes, lines

    def _line(self, pos: int) -> bytes:
        end = self.data.find(b"\n", pos)
        return self.data[pos:] if end < 0 else self.data[pos : end + 1]

    def _after_line(self, pos: int) -> int:
        end = self.data.find(b"\n", pos)
        if end < 0:
            raise _Bail
        return end + 1

    def _scan(self, pos: int, outer: list[bytes], own: bytes | None) -> tuple[int, re.Match[bytes] | None]:
        """The first line at or after ``pos`` that ends an enclosing part (no match
        returned) or that is an ``own`` delimiter line; (len(data), None) if none is."""
        if not outer and own is None:
            return len(self.data), None
        dashes, lines = self.dashes, self.lines
        for i in range(bisect.bisect_left(dashes, pos), len(dashes)):
            line = lines[i]
            if outer and _delimiter(line, outer):
                return dashes[i], None
            if own is not None and line.startswith(own) and (mo := _DELIMITER_TAIL.match(line, len(own))):
                return dashes[i], mo
        return len(self.data), None

    def entity(self, start: int, stack: list[bytes], depth: int) -> tuple[Message, int, Message]:
        """(message, end, last): the entity whose header starts at ``start``, where its
        lines end (a line an enclosing boundary matches, or the end of the data), and the
        message the feed parser would have made last while reading it."""
        if depth > _MAX_DEPTH:
            raise _Bail
        data = self.data
        if data.startswith(b"\n", start) or data.startswith(b"\r\n", start):
            block_end = start
            body = start + (1 if data[start] == 0x0A else 2)
        else:
            block_end = header_end(data, start)
            if block_end == len(data):  # no empty line
                raise _Bail
            body = block_end + (1 if data[block_end] == 0x0A else 2)
            if not _HEADER_BLOCK.fullmatch(data, start, block_end):
                raise _Bail
        msg = _Message(policy=_COMPAT32)
        # The top level's own fields are never searched as body text: only the two that
        # decide its structure and decoding are needed (Message.get takes the first).
        fields = _TOP_FIELD if depth == 0 else _FIELD
        for f in fields.finditer(data, start, block_end):
            lines = f.group().decode("ascii", "surrogateescape").split("\n")
            name, value = _COMPAT32.header_source_parse([line + "\n" for line in lines[:-1]])
            msg.set_raw(name, value)
        ctype = msg.get_content_type()
        if ctype in ("message/delivery-status", "multipart/digest"):
            raise _Bail
        maintype = ctype.split("/")[0]  # Message.get_content_maintype()
        if maintype == "message":
            child, end, last = self.entity(body, stack, depth + 1)
            msg.attach(child)
            return msg, end, last
        if maintype == "multipart":
            return self._multipart(msg, body, stack, depth)
        end = self._scan(body, stack, None)[0]
        msg.set_payload(data[body:end].decode("ascii", "surrogateescape"))
        return msg, end, msg

    def _multipart(
        self, msg: Message, body: int, stack: list[bytes], depth: int
    ) -> tuple[Message, int, Message]:
        boundary = msg.get_boundary()
        if boundary is None or not _SAFE_BOUNDARY.fullmatch(boundary):
            raise _Bail
        own = b"--" + boundary.encode("ascii")
        inner = [*stack, own]
        data = self.data
        at, mo = self._scan(body, stack, own)
        if mo is None or mo.group(1):
            raise _Bail  # no start delimiter: the parser keeps the text as payload
        while True:
            first = self._after_line(at)
            if first >= len(data):
                raise _Bail
            if _delimiter(self._line(first), inner):
                raise _Bail  # delimiter lines in a row
            child, end, last = self.entity(first, inner, depth + 1)
            msg.attach(child)
            # RFC 2046: the line break before a delimiter belongs to the delimiter
            if last.get_content_maintype() != "multipart":
                # The raw payload, as email.feedparser trims it: get_payload() would
                # re-decode surrogates, set_payload keeps a str as given.
                payload = last._payload  # type: ignore[attr-defined]  # private, not in the stubs
                if isinstance(payload, str) and payload.endswith(("\r", "\n")):  # NLCRE_eol
                    last.set_payload(payload[: -2 if payload.endswith("\r\n") else -1])
            if end >= len(data):
                raise _Bail  # no close delimiter
            line = self._line(end)
            if _delimiter(line, stack):
                raise _Bail  # an enclosing part ends before this one is closed
            mo = _DELIMITER_TAIL.match(line, len(own)) if line.startswith(own) else None
            if mo is None:
                raise _Bail
            if mo.group(1):
                break
            at = end
        after = data.find(b"\n", end)
        end = self._scan(len(data) if after < 0 else after + 1, stack, None)[0]  # the epilogue
        return msg, end, msg


def _delimiter(line: bytes, seps: list[bytes]) -> bool:
    """Is ``line`` a delimiter line of one of the "--boundary" strings ``seps``?"""
    return any(line.startswith(sep) and _DELIMITER_TAIL.match(line, len(sep)) for sep in seps)


def _fast_tree(message: bytes) -> Message | None:
    """The email package's compat32 tree of ``message`` for the simple cases, or None."""
    if not FAST_PARSE or b"\r--" in message:
        return None  # (a bare CR starts a line for the feed parser; see _Splitter.__init__)
    try:
        return _Splitter(message).entity(0, [], 0)[0]
    except Exception:  # _Bail, and anything odd in the header methods: the parser decides
        return None


def parse_message(message: bytes) -> Message:
    """The compat32 tree of a message, as ``email.message_from_bytes`` makes it."""
    tree = _fast_tree(message)
    if tree is None:
        tree = email.message_from_bytes(message, policy=_COMPAT32)
    return tree


# ------------------------------------------------------------------ searchable pieces
#
# BODY and TEXT search normalize("\0".join(pieces)): a needle (no NUL) matches iff it lies
# inside the normalised text of one piece. _Piece keeps one piece and its byte forms for the
# shortcuts (see _Piece.decide for what they prove).


class _Piece:
    __slots__ = ("_data", "_hay", "_lower", "_norm", "_stripped", "html", "text")

    def __init__(self, text: str | None, data: bytes | None = None, html: bool = False) -> None:
        self.text = text  # the piece itself (None for header pieces, which use header_text())
        self._data = data  # bytes with the same ASCII runs as text (its UTF-8, or the raw header)
        self.html = html  # an HTML part: _html_text(text) is a piece too
        self._lower: bytes | None = None
        self._hay: _Hay | None = None
        self._stripped: _Piece | None = None
        self._norm: list[str] | None = None

    def texts(self) -> list[str]:
        assert self.text is not None
        if not self.html:
            return [self.text]
        if self._stripped is None:
            self._stripped = _Piece(_html_text(self.text))
        assert self._stripped.text is not None
        return [self.text, self._stripped.text]

    def normalized_has(self, text: str) -> bool:
        """Is ``text`` in the normalised form of one of this piece's texts?"""
        if self._norm is None:
            self._norm = [normalize(t) for t in self.texts()]
        return any(text in n for n in self._norm)

    def data(self) -> bytes:
        if self._data is None:
            assert self.text is not None
            self._data = self.text.encode("utf-8", "surrogatepass")
        return self._data

    def lower(self) -> bytes:
        if self._lower is None:
            self._lower = self.data().lower()
        return self._lower

    def decide(self, needle: _Needle) -> int:
        """_YES: normalize(piece) contains the needle; _NO: it cannot; _MAYBE: look.

        _YES (_verbatim): the needle is printable ASCII, lower case, with single inner spaces
        and none at the ends, and occurs in the piece followed by an ASCII character or its
        end. NFKC leaves ASCII alone and casefold lower-cases it; no canonical composition
        takes an ASCII character as its second element (so neither the character before
        nor the one after -- ASCII, a starter -- can absorb one of the occurrence), and its
        spaces are single between non-spaces: the occurrence is in normalize(piece).

        _NO: normalisation turns a non-ASCII character into ASCII or white space only for
        the characters of the fold table (checked for every code point), and composition
        only ever absorbs characters into non-ASCII ones, so each run of printable non-space
        ASCII in normalize(piece) lies in a run of the folded bytes (fold_bytes replaces each
        table character by what it normalises to alone, which is at least what it gives in
        context); each fragment of the needle lies in such a run. Between two words of the
        normalised text there is only white space, which comes from white space or from
        table characters, all ASCII white space in the folded bytes, so the phrase regex
        finds the needle's words there too. The tests check this per code point, in
        context, and on random strings."""
        low = self.lower()
        if needle.exact is not None and _verbatim(low, needle.exact):
            return _YES
        if self._hay is None:
            self._hay = _Hay(low)
        folded = self._hay.view(needle)  # lower(), folded as far as the needle needs
        tokens = all(f in folded for f in needle.frags)
        verdict = _MAYBE if tokens and (needle.phrase is None or needle.phrase.search(folded)) else _NO
        # The tag-stripped HTML: tags become spaces, which only split ASCII runs, so its
        # tokens are among the raw HTML's unless an entity decodes to something.
        if self.html and verdict != _YES and (tokens or "&" in (self.text or "")):
            assert self.text is not None
            if self._stripped is None:
                self._stripped = _Piece(_html_text(self.text))
            verdict = max(verdict, self._stripped.decide(needle))
        return verdict


_NO, _MAYBE, _YES = 0, 1, 2


def _verbatim(low: bytes, needle: bytes) -> bool:
    """``needle`` (printable ASCII, lower case, single inner spaces, none at the ends)
    occurs in ``low`` followed by an ASCII byte or the end: such an occurrence survives
    normalisation unchanged (see _Piece.decide)."""
    i = low.find(needle)
    tries = 0
    while i >= 0 and tries < 64:
        j = i + len(needle)
        if j == len(low) or low[j] < 0x80:
            return True
        i = low.find(needle, i + 1)
        tries += 1
    return False


def _walk_pieces(msg: Message) -> list[_Piece]:
    """The pieces of :func:`body_text`, in order (an HTML part's tag-stripped text is
    implied by its piece's ``html`` flag)."""
    pieces: list[_Piece] = []
    for i, part in enumerate(msg.walk()):
        if i:  # headers of nested parts: file names, forwarded messages
            block = "\n".join(f"{k}: {v}" for k, v in part.items())
            block = _unsurrogate(block)
            pieces.append(_Piece(block))
            decoded = decode_encoded_words(block)
            if decoded != block:
                pieces.append(_Piece(decoded))
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
            pieces.append(_Piece(_unsurrogate(raw)))
        if not isinstance(payload, bytes):
            continue
        try:
            charset = part.get_content_charset(None)
        except Exception:
            charset = None
        text, utf8 = _decode_text(payload, charset)
        pieces.append(_Piece(text, utf8, html=part.get_content_subtype() == "html"))
    return pieces


def body_pieces(message: bytes) -> list[_Piece]:
    """The searchable pieces of the body. Raises whatever the ``email`` package raises on a
    hopeless message; :class:`MessageContent` falls back to the raw bytes then."""
    return _walk_pieces(parse_message(message))


def body_text(message: bytes) -> str:
    """The searchable text of the body (not normalised; parts joined with NUL, which no
    needle contains). Raises whatever the ``email`` package raises on a hopeless message;
    :class:`MessageContent` falls back to the raw bytes then."""
    return "\0".join(t for piece in body_pieces(message) for t in piece.texts())


# ------------------------------------------------------------------ normalisation-aware folding
#
# Characters that NFKC + casefold + NFKC (the normalisation of :func:`normalize`) can turn
# into ASCII, or that are white space (str.split), given as code point ranges for the
# Unicode version below and recomputed (~1 s, once) under any other version. Every other
# non-ASCII character normalises to non-ASCII, non-space characters only (with whatever
# neighbours; tests/test_imap_searcheval.py checks this).

_FOLD_UNIDATA = "14.0.0"
_FOLD_RANGES_14 = (
    "0x85 0xA0 0xA8 0xAA 0xAF 0xB2-0xB4 0xB8-0xBA 0xBC-0xBE 0xDF 0x130 0x132-0x133 0x13F-0x140 0x149 "
    "0x17F 0x1C4-0x1CC 0x1F1-0x1F3 0x2B0 0x2B2-0x2B3 0x2B7-0x2B8 0x2D8-0x2DD 0x2E1-0x2E3 0x37A 0x37E "
    "0x384-0x385 0x1680 0x1D2C 0x1D2E 0x1D30-0x1D31 0x1D33-0x1D3A 0x1D3C 0x1D3E-0x1D43 0x1D47-0x1D49 "
    "0x1D4D 0x1D4F-0x1D50 0x1D52 0x1D56-0x1D58 0x1D5B 0x1D62-0x1D65 0x1D9C 0x1DA0 0x1DBB 0x1E9A 0x1E9E "
    "0x1FBD 0x1FBF-0x1FC1 0x1FCD-0x1FCF 0x1FDD-0x1FDF 0x1FED-0x1FEF 0x1FFD-0x1FFE 0x2000-0x200A 0x2017 "
    "0x2024-0x2026 0x2028-0x2029 0x202F 0x203C 0x203E 0x2047-0x2049 0x205F 0x2070-0x2071 0x2074-0x207A "
    "0x207C-0x208A 0x208C-0x208E 0x2090-0x2093 0x2095-0x209C 0x20A8 0x2100-0x2103 0x2105-0x2106 "
    "0x2109-0x210E 0x2110-0x2113 0x2115-0x2116 0x2119-0x211D 0x2120-0x2122 0x2124 0x2128 0x212A "
    "0x212C-0x212D 0x212F-0x2131 0x2133-0x2134 0x2139 0x213B 0x2145-0x2149 0x2150-0x217F 0x2189 "
    "0x2460-0x24EA 0x2A74-0x2A76 0x2C7C-0x2C7D 0x3000 0x309B-0x309C 0x3200-0x321E 0x3220-0x3243 "
    "0x3250-0x325F 0x32B1-0x32CF 0x3358-0x337A 0x3380-0x33FF 0xA7F2-0xA7F4 0xFB00-0xFB06 0xFB29 "
    "0xFC5E-0xFC63 0xFDFA-0xFDFB 0xFE10 0xFE13-0xFE16 0xFE19 0xFE30 0xFE33-0xFE38 0xFE47-0xFE50 0xFE52 "
    "0xFE54-0xFE57 0xFE59-0xFE5C 0xFE5F-0xFE66 0xFE68-0xFE6B 0xFE70 0xFE72 0xFE74 0xFE76 0xFE78 0xFE7A "
    "0xFE7C 0xFE7E 0xFF01-0xFF5E 0xFFE3 0x107A5 0x1D400-0x1D454 0x1D456-0x1D49C 0x1D49E-0x1D49F "
    "0x1D4A2 0x1D4A5-0x1D4A6 0x1D4A9-0x1D4AC 0x1D4AE-0x1D4B9 0x1D4BB 0x1D4BD-0x1D4C3 0x1D4C5-0x1D505 "
    "0x1D507-0x1D50A 0x1D50D-0x1D514 0x1D516-0x1D51C 0x1D51E-0x1D539 0x1D53B-0x1D53E 0x1D540-0x1D544 "
    "0x1D546 0x1D54A-0x1D550 0x1D552-0x1D6A3 0x1D7CE-0x1D7FF 0x1F100-0x1F10A 0x1F110-0x1F12E "
    "0x1F130-0x1F14F 0x1F16A-0x1F16C 0x1F190 0x1FBF0-0x1FBF9"
)


def _normalizes_to_ascii(ch: str) -> bool:
    if ch.isspace():
        return True
    folded = unicodedata.normalize("NFKC", unicodedata.normalize("NFKC", ch).casefold())
    return any(c < "\x80" or c.isspace() for c in folded)


def fold_code_points() -> list[int]:
    """The non-ASCII code points that normalise to something with ASCII or white space
    (or are white space), computed from this Python's ``unicodedata``."""
    out = []
    for cp in range(0x80, 0x110000):
        if (cp < 0xD800 or cp > 0xDFFF) and _normalizes_to_ascii(chr(cp)):
            out.append(cp)
    return out


def _ranges_of(points: Iterable[int]) -> list[tuple[int, int]]:
    ranges: list[list[int]] = []
    for cp in points:
        if ranges and ranges[-1][1] == cp - 1:
            ranges[-1][1] = cp
        else:
            ranges.append([cp, cp])
    return [(a, b) for a, b in ranges]


def _fold_ranges() -> list[tuple[int, int]]:
    if unicodedata.unidata_version != _FOLD_UNIDATA:
        return _ranges_of(fold_code_points())
    out = []
    for item in _FOLD_RANGES_14.split():
        lo, _, hi = item.partition("-")
        out.append((int(lo, 16), int(hi or lo, 16)))
    return out


def _utf8_alternation(seqs: list[bytes]) -> bytes:
    """A regex matching exactly the given UTF-8 sequences (a prefix-free set), as a trie."""
    groups: dict[int, list[bytes]] = {}
    for s in seqs:
        groups.setdefault(s[0], []).append(s[1:])
    ends = sorted(b for b, rests in groups.items() if rests == [b""])
    alts = []
    if ends:
        alts.append(b"[" + b"".join(b"\\x%02x" % b for b in ends) + b"]")
    for b, rests in sorted(groups.items()):
        if rests != [b""]:
            alts.append(b"\\x%02x(?:" % b + _utf8_alternation(rests) + b")")
    return b"|".join(alts)


_SHARP_S = "\u00df".encode()  # the one foldable character among the common C3 xx letters
_FOLD_TABLES: tuple[re.Pattern[bytes], frozenset[bytes], bytes] | None = None
_FOLD_CACHE: dict[bytes, bytes] = {}  # at most one entry per character of the table
_FOLD_SCAN_MAX = 64  # more candidate lead bytes than this: one regex pass instead


def _fold_tables() -> tuple[re.Pattern[bytes], frozenset[bytes], bytes]:
    """(regex of the foldable characters' UTF-8, the set of those sequences, the bytes
    that begin none of them except ß: a translate() deletion table leaving lead bytes)."""
    global _FOLD_TABLES
    if _FOLD_TABLES is None:
        seqs = [chr(cp).encode() for lo, hi in _fold_ranges() for cp in range(lo, hi + 1)]
        leads = {seq[0] for seq in seqs if seq != _SHARP_S}
        others = bytes(b for b in range(256) if b not in leads)
        _FOLD_TABLES = (re.compile(_utf8_alternation(seqs)), frozenset(seqs), others)
    return _FOLD_TABLES


def prepare() -> None:
    """Build the tables the BODY/TEXT shortcuts use (~10 ms, or ~1.5 s under a Python whose
    Unicode data is not 14.0.0). Optional: the first BODY/TEXT search does it otherwise."""
    _fold_tables()


def _fold_seq(seq: bytes) -> bytes:
    out = _FOLD_CACHE.get(seq)
    if out is None:
        ch = seq.decode("utf-8")
        folded = unicodedata.normalize("NFKC", unicodedata.normalize("NFKC", ch).casefold())
        out = "".join(" " if c.isspace() else c for c in folded).encode("utf-8", "surrogatepass")
        _FOLD_CACHE[seq] = out
    return out


def _fold_match(m: re.Match[bytes]) -> bytes:
    return _fold_seq(m.group())


def fold_bytes(data: bytes) -> bytes:
    """``data`` with the UTF-8 of every character that normalisation can turn into ASCII
    or white space replaced by what it normalises to alone (white space as one space)."""
    pattern, seqs, others = _fold_tables()
    if _SHARP_S in data and _SHARP_S in seqs:
        data = data.replace(_SHARP_S, _fold_seq(_SHARP_S))
    leads = data.translate(None, others)  # C speed; a regex scan is ~10x slower
    if not leads:
        return data
    if len(leads) > _FOLD_SCAN_MAX:
        return pattern.sub(_fold_match, data)
    starts: list[int] = []
    for lead in set(leads):
        byte = bytes((lead,))
        i = data.find(byte)
        while i >= 0:
            starts.append(i)
            i = data.find(byte, i + 1)
    out: list[bytes] = []
    last = 0
    for i in sorted(starts):  # UTF-8 is prefix-free: at most one sequence starts at i
        if i < last:
            continue
        for k in (2, 3, 4):
            seq = data[i : i + k]
            if seq in seqs:
                out.append(data[last:i])
                out.append(_fold_seq(seq))
                last = i + k
                break
    if not out:
        return data
    out.append(data[last:])
    return b"".join(out)


# ------------------------------------------------------------------ the raw pre-filter
#
# Before any parsing: a haystack of bytes that holds every ASCII word the body pieces can
# have after normalisation, for the messages whose raw bytes rule out every transformation
# that could make new ASCII text. See raw_haystacks() for the conditions and the argument.

_RAW_CHARSET_VALUE = re.compile(rb'[ \t\r\n]*=[ \t\r\n]*"?(?:utf-?8|us-ascii)(?![0-9a-z._-])')
_RAW_CTE_VALUE = re.compile(rb"[ \t]*(7bit|8bit|binary|quoted-printable)[ \t]*\r?\n(?![ \t])")
# A line the feed parser would not take as a header line (email.feedparser.headerRE:
# "From ", a name then ":", or a continuation), searched in b"\n" + block.
_RAW_NOT_HEADER_LINE = re.compile(rb"\n(?![ \t])[\x21-\x39\x3b-\x7e]*(?:[^\x21-\x39\x3b-\x7e:]|\Z)")
# A QP soft line break whose next line decodes to a UTF-8 continuation byte (a part could
# start on that line, after a header the parser ended there), or "=" + bare CR (a2b_qp
# then skips to the next LF, the parser starts a line after the CR).
_RAW_QP_SEAM = re.compile(rb"=\r?\n(?:=[89ab]|[\x80-\xbf])|=\r(?!\n)")
_QUESTION_MAX = 64  # "?" looked at one by one for "=?"; beyond, one substring search


class _Hay:
    """One raw haystack: lower-case bytes, folded (fold_bytes) only when a needle needs it."""

    __slots__ = ("_folded", "low", "others")

    def __init__(self, low: bytes) -> None:
        self.low = low
        _, _, others = _fold_tables()
        self.others = bool(low.translate(None, others))  # a foldable character other than ß
        self._folded: bytes | None = None

    def view(self, needle: _Needle) -> bytes:
        """The bytes to look for ``needle`` in: low itself unless folding could matter.
        ß alone folds to "ss", which an occurrence of a word without "s" cannot overlap."""
        if self.others or (needle.has_s and _SHARP_S in self.low):
            if self._folded is None:
                self._folded = fold_bytes(self.low)
            return self._folded
        return self.low

    def may_hold(self, needle: _Needle) -> bool:
        view = self.view(needle)
        if not all(f in view for f in needle.frags):
            return False
        return needle.raw_phrase is None or needle.raw_phrase.search(view) is not None


def _has_encoded_word_start(data: bytes) -> bool:
    """b"=?" in data, looking at each "?" (memchr) while there are few."""
    i = data.find(b"?")
    for _ in range(_QUESTION_MAX):
        if i < 0:
            return False
        if i and data[i - 1] == 0x3D:
            return True
        i = data.find(b"?", i + 1)
    return b"=?" in data


def raw_haystacks(message: bytes) -> list[_Hay] | None:
    """Haystacks such that every maximal run of printable, non-space ASCII in the normalised
    text of every body piece is inside one of them (after folding) -- or None when the
    message's bytes do not allow that cheap a bound (then only the parsed pieces tell).

    Conditions and why they suffice (a body piece is a nested header block, a decoded text
    payload, an HTML payload with its tags stripped, or the raw body on a parser failure):

    * the whole message is valid UTF-8, and every "charset" in it (case-insensitively) is
      followed by ``= utf-8`` / ``utf8`` / ``us-ascii`` (optionally quoted) and no further
      name character. A Content-Type parameter can only be named by those letters (RFC
      2231 ``charset*`` is refused), so every charset the email package sees resolves to
      UTF-8 (or decode_bytes' UTF-8 fallback, or utf-8-sig for a trailing " sig"), and every
      text is the UTF-8 reading of its bytes (slices at line boundaries are valid UTF-8);
    * every line of the top header block is one the feed parser takes as a header line, and
      none is "From " or has a bare CR: the parser's body starts where split_header's
      does, so every nested part lies in that body;
    * every "content-transfer-encoding:" is followed by 7bit, 8bit, binary or
      quoted-printable and the end of an unfolded line: a field's name is written out in
      full right before its colon, so no part is base64- or uu-decoded. Quoted-printable is
      decoded by binascii.a2b_qp, a left-to-right transducer whose tokens never cross a
      LF except a soft break ending at one, so a2b_qp of a slice starting at a line start
      is a substring of a2b_qp(body) (at most cut short before a soft break): a second
      haystack. It must be valid UTF-8, and no soft break may be followed by a line that
      decodes to a continuation byte (the seam where a slice may begin or end is then a
      character boundary, so every slice decodes to valid UTF-8 too), and there must be no
      "=" + bare CR (a2b_qp skips to the next LF there; the parser starts a line);
    * no "=?" in the body: nested header blocks have no encoded-words to decode (the ": "
      and "\n" that items() puts in cannot form one), so they are raw header lines with
      ": " for ":" and 8-bit bytes made U+FFFD;
    * no "&" in the body nor in its QP decoding: html.unescape changes nothing, and tag
      stripping only turns tags into spaces.

    So each piece is slices of a haystack with white space put in where a haystack has a
    tag, or after a ":", or between lines, and U+FFFD for non-ASCII; fold_bytes() covers what
    normalisation makes of the non-ASCII characters (see _Piece.decide), and
    _Needle.raw_phrase lets tags and nothing-after-a-colon stand for white space."""
    if not message.isascii():
        try:
            message.decode("utf-8")
        except UnicodeDecodeError:
            return None
    header, body = split_header(message)
    if header.endswith(b"\n\r\n"):
        block = header[:-2]
    elif header.endswith(b"\n\n"):
        block = header[:-1]
    elif header in (b"\r\n", b"\n"):
        block = b""
    else:
        block = header  # no empty line: all header (it must end with a line break)
    if block and (not block.endswith(b"\n") or _RAW_NOT_HEADER_LINE.search(b"\n" + block, 0, len(block))):
        return None
    if b"\r" in block and block.count(b"\r") != block.count(b"\r\n"):
        return None
    if b"&" in body or _has_encoded_word_start(body):
        return None
    low = message.lower()
    qp = False
    at = low.find(b"content-transfer-encoding:")
    while at >= 0:
        m = _RAW_CTE_VALUE.match(low, at + 26)
        if m is None:
            return None
        qp = qp or m.group(1) == b"quoted-printable"
        at = low.find(b"content-transfer-encoding:", m.end())
    at = low.find(b"charset")
    while at >= 0:
        if not _RAW_CHARSET_VALUE.match(low, at + 7):
            return None
        at = low.find(b"charset", at + 7)
    body_low = low[len(header) :]
    haystacks = [_Hay(body_low)]  # folding commutes with lower(): it maps only non-ASCII
    if qp:
        if _RAW_QP_SEAM.search(body_low):
            return None
        decoded = binascii.a2b_qp(body_low)  # a2b_qp(x.lower()).lower() == a2b_qp(x).lower()
        if b"&" in decoded:
            return None
        if not decoded.isascii():
            try:
                decoded.decode("utf-8")
            except UnicodeDecodeError:
                return None
        haystacks.append(_Hay(decoded.lower()))
    return haystacks


# ------------------------------------------------------------------ needles


@dataclass(frozen=True, slots=True)
class _Needle:
    """A BODY/TEXT string, normalised, and what the byte shortcuts need of it."""

    text: str  # normalize_needle(value)
    frags: tuple[bytes, ...]  # its maximal runs of printable non-space ASCII; () = no shortcuts
    exact: bytes | None  # the needle, if printable ASCII without spaces at either end
    phrase: re.Pattern[bytes] | None  # its words with white space between, if printable ASCII
    raw_phrase: re.Pattern[bytes] | None  # the same, where tags (and none after ":") count as space
    has_s: bool  # "s" in one of frags (what ß folds to)
    bare: bool  # non-empty, no NUL, no space at either end: it matches within one piece or not at all


_WS_BYTES = rb"[\t\n\x0b\x0c\r\x1c-\x1f ]+"  # what str.split() splits at, among ASCII bytes
_WS_OR_TAG = rb"(?:[\t\n\x0b\x0c\r\x1c-\x1f ]|<[^<>]*>)+"  # (_TAG: a tag becomes a space)
_WS_OR_TAG_OPT = rb"(?:[\t\n\x0b\x0c\r\x1c-\x1f ]|<[^<>]*>)*"


def compile_needle(value: str) -> _Needle:
    text = normalize_needle(value)
    frags = tuple(f.encode("ascii") for f in re.findall(r"[\x21-\x7e]+", text))
    if "\0" in text or any("A" <= c <= "Z" for c in text):
        # NUL joins the pieces, so such a needle can span two (a needle from a literal
        # could hold one); normalisation lower-cases ASCII, so the other cannot happen
        frags = ()
    core = text.strip(" ")
    printable = bool(frags) and all(" " <= c <= "~" for c in core)
    exact = core.encode("ascii") if printable and core == text else None
    phrase = raw_phrase = None
    if printable and " " in core:
        words = [w.encode("ascii") for w in core.split(" ")]
        phrase = re.compile(_WS_BYTES.join(re.escape(w) for w in words))
        raw = re.escape(words[0])
        for prev, word in itertools.pairwise(words):
            raw += (_WS_OR_TAG_OPT if prev.endswith(b":") else _WS_OR_TAG) + re.escape(word)
        raw_phrase = re.compile(raw)
    bare = bool(text) and "\0" not in text and text == text.strip(" ")
    return _Needle(text, frags, exact, phrase, raw_phrase, any(b"s" in f for f in frags), bare)



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
    "Candidate", "ContentNeed", "MessageContent", "SearchContext", "content_needed", "decode_bytes",
    "decode_encoded_words", "matches", "normalize", "normalize_needle", "parse_header_fields",
    "parse_sent_date", "prepare", "search",
]
