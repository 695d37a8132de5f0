"""Normalisation-aware folding of UTF-8 bytes for the SEARCH BODY/TEXT shortcuts
(:mod:`.searcheval`): :func:`fold_bytes` folds the non-ASCII characters that normalisation
can turn into ASCII or white space, so byte checks can prove a needle absent."""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Iterable

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
