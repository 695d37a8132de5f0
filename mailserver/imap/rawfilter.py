"""The raw-bytes pre-filter of SEARCH BODY/TEXT (:mod:`.searcheval`): before any parsing,
haystacks of bytes that hold every ASCII word the body can have after normalisation, for
the messages whose raw bytes rule out every transformation that could make new ASCII text."""

from __future__ import annotations

import binascii
import re

from mailserver.message import split_header

from .searchneedle import _Needle
from .textfold import (
    _SHARP_S,
    _fold_tables,
    fold_bytes,
)

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
