"""The searchable text of a message for SEARCH BODY/TEXT (:mod:`.searcheval`): the decoded
text parts (HTML with tags stripped) and the header blocks of nested parts, kept as pieces
(:class:`_Piece`) with the byte forms the shortcuts decide on."""

from __future__ import annotations

import email
import email.errors
import email.policy
import email.utils
import html
import re
from email.message import Message

from .mimesplit import parse_message
from .rawfilter import _Hay
from .searchneedle import _Needle
from .searchtext import (
    _decode_text,
    decode_encoded_words,
    normalize,
)

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
