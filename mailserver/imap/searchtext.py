"""Text helpers of SEARCH (:mod:`.searcheval`): normalisation (NFKC + casefold, each run of
white space as one space), charset decoding, RFC 2047 encoded-words and reading header fields
from a raw header block."""

from __future__ import annotations

import base64
import binascii
import codecs
import re
import unicodedata

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
