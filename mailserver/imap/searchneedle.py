"""A BODY/TEXT needle compiled once per SEARCH (:mod:`.searcheval`): its normalised text and
the ASCII fragments and phrase patterns the byte shortcuts look for."""

from __future__ import annotations

import itertools
import re
from dataclasses import dataclass

from .searchtext import normalize_needle

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
