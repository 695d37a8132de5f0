"""Response formatting (RFC 3501 7, 9): strings, lists, flags, FETCH, status responses.

Everything returns ``bytes`` ready for the wire. Strings are quoted when that is safe
(printable, no CR/LF/NUL, not too long; 8-bit only with ``utf8=True`` after ENABLE
UTF8=ACCEPT) and sent as literals otherwise, so a quoted string never carries an
unescaped ``"`` or ``\\``. Response text is sanitised: client input quoted in an error
message can never inject a line break or a fake response code.
"""

from __future__ import annotations

import datetime as _dt
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from .dates import format_datetime
from .errors import IMAPError
from .lexer import ASTRING_CHARS, ATOM_CHARS, TAG_CHARS
from .seqset import SequenceSet

MAX_QUOTED = 1024


@dataclass(frozen=True, slots=True)
class Atom:
    """A bare atom on the wire (e.g. ``\\Seen`` via ``flags``, ``NIL``-free keywords)."""

    text: str


@dataclass(frozen=True, slots=True)
class Raw:
    """Pre-formatted bytes inserted as they are (nested structures built elsewhere)."""

    data: bytes


@dataclass(frozen=True, slots=True)
class Literal8:
    """Binary content for BINARY[] responses: ``~{n}`` (RFC 3516)."""

    data: bytes


Value = None | int | str | bytes | Atom | Raw | Literal8 | _dt.datetime | Sequence["Value"]


def _to_bytes(value: str | bytes) -> bytes:
    return value.encode("utf-8") if isinstance(value, str) else value


_NOT_QUOTABLE = re.compile(rb"[^\x20-\x7e]")
_CONTROL = re.compile(rb"[\x00-\x1f\x7f]")


def can_quote(data: bytes, *, utf8: bool = False, max_quoted: int = MAX_QUOTED) -> bool:
    # Regexes, not per-octet Python loops: a header sync formats 10,000s of strings.
    if len(data) > max_quoted:
        return False
    if utf8:
        try:
            data.decode("utf-8")
        except UnicodeDecodeError:
            return False
        return _CONTROL.search(data) is None
    return _NOT_QUOTABLE.search(data) is None


def quoted(value: str | bytes) -> bytes:
    """Always a quoted string; raises ValueError for octets that cannot be quoted."""
    data = _to_bytes(value)
    if any(b in (0x00, 0x0D, 0x0A) for b in data):
        raise ValueError("CR, LF and NUL cannot be quoted; use a literal")
    return b'"' + data.replace(b"\\", b"\\\\").replace(b'"', b'\\"') + b'"'


def literal(value: str | bytes) -> bytes:
    data = _to_bytes(value)
    return b"{%d}\r\n" % len(data) + data


def string(value: str | bytes, *, utf8: bool = False, max_quoted: int = MAX_QUOTED) -> bytes:
    """Quoted when safe, literal otherwise."""
    data = _to_bytes(value)
    if can_quote(data, utf8=utf8, max_quoted=max_quoted):
        return quoted(data)
    return literal(data)


def astring(value: str | bytes, *, utf8: bool = False) -> bytes:
    """A bare atom when every octet is an ASTRING-CHAR (and it is not ``NIL``), else string."""
    data = _to_bytes(value)
    if data and data.upper() != b"NIL" and all(b in ASTRING_CHARS for b in data):
        return data
    return string(data, utf8=utf8)


def nstring(value: str | bytes | None, *, utf8: bool = False) -> bytes:
    return b"NIL" if value is None else string(value, utf8=utf8)


def format_value(value: Value, *, utf8: bool = False) -> bytes:
    """None -> NIL, int -> number, str/bytes -> string, datetime -> quoted date-time,
    Atom -> atom, Raw -> as is, Literal8 -> ~{n}, list/tuple -> parenthesized list."""
    if value is None:
        return b"NIL"
    if isinstance(value, bool):
        raise TypeError("booleans have no IMAP form")
    if isinstance(value, int):
        if value < 0:
            raise ValueError("IMAP numbers are unsigned")
        return b"%d" % value
    if isinstance(value, str | bytes):
        return string(value, utf8=utf8)
    if isinstance(value, Atom):
        raw = value.text.encode("ascii")
        if not raw or not all(b in ATOM_CHARS or b == 0x5C for b in raw):
            raise ValueError(f"{value.text!r} is not an atom")
        return raw
    if isinstance(value, Raw):
        return value.data
    if isinstance(value, Literal8):
        return b"~{%d}\r\n" % len(value.data) + value.data
    if isinstance(value, _dt.datetime):
        return quoted(format_datetime(value))
    if isinstance(value, list | tuple):
        return b"(" + b" ".join(format_value(v, utf8=utf8) for v in value) + b")"
    raise TypeError(f"cannot format {type(value).__name__}")


def _flag_bytes(flag: str) -> bytes:
    raw = flag.encode("ascii")
    body = raw[1:] if raw.startswith(b"\\") else raw
    if raw == b"\\*":
        return raw  # PERMANENTFLAGS
    if not body or not all(b in ATOM_CHARS for b in body):
        raise ValueError(f"invalid flag {flag!r}")
    return raw


def flags(values: Iterable[str]) -> bytes:
    """``(\\Seen $Junk)``; raises ValueError for a flag that is not atom syntax."""
    return b"(" + b" ".join(_flag_bytes(f) for f in values) + b")"


def mailbox(name: str, *, utf8: bool = False) -> bytes:
    """A wire mailbox name (already modified UTF-7 unless UTF8=ACCEPT) as an astring."""
    return astring(name, utf8=utf8)


# ---------------------------------------------------------------------------- responses


def _text(text: str) -> bytes:
    """resp-text ``text``: TEXT-CHARs only; never starts with '[' (would read as a code)."""
    clean = "".join(ch if 0x20 <= ord(ch) < 0x7F else "?" for ch in text).strip()
    if not clean:
        clean = "done"
    if clean.startswith("["):
        clean = "(" + clean[1:]
    return clean.encode("ascii")


def _code(code: str) -> bytes:
    raw = code.encode("ascii")
    if not raw or b"]" in raw or any(b < 0x20 or b == 0x7F for b in raw) or raw.startswith(b" "):
        raise ValueError(f"invalid response code {code!r}")
    return b"[" + raw + b"] "


def _check_tag(tag: str) -> bytes:
    raw = tag.encode("ascii", "replace")
    if raw != b"*" and (not raw or not all(b in TAG_CHARS for b in raw)):
        raise ValueError(f"invalid tag {tag!r}")
    return raw


def tagged(tag: str, status: str, text: str, *, code: str | None = None) -> bytes:
    """``tag OK|NO|BAD [code] text``; ``tag`` may be ``*`` for an untagged BAD."""
    status = status.upper()
    if status not in ("OK", "NO", "BAD"):
        raise ValueError(f"invalid tagged status {status!r}")
    prefix = _code(code) if code else b""
    return _check_tag(tag) + b" " + status.encode() + b" " + prefix + _text(text) + b"\r\n"


def error_response(error: IMAPError) -> bytes:
    """The tagged (or ``*`` when the tag was invalid) response line that answers ``error``."""
    return tagged(error.tag or "*", error.status, error.message, code=error.code)


def untagged_status(status: str, text: str, *, code: str | None = None) -> bytes:
    """``* OK|NO|BAD|BYE|PREAUTH [code] text``."""
    status = status.upper()
    if status not in ("OK", "NO", "BAD", "BYE", "PREAUTH"):
        raise ValueError(f"invalid status {status!r}")
    prefix = _code(code) if code else b""
    return b"* " + status.encode() + b" " + prefix + _text(text) + b"\r\n"


def untagged(*parts: bytes | str | int) -> bytes:
    """``* part part ...``: parts already formatted (bytes), atoms (str) or numbers."""
    out = []
    for p in parts:
        if isinstance(p, int):
            out.append(b"%d" % p)
        elif isinstance(p, str):
            out.append(p.encode("ascii"))
        else:
            out.append(p)
    return b"* " + b" ".join(out) + b"\r\n"


def continuation(text: str = "Ready") -> bytes:
    """``+ text`` (also used for base64 SASL challenges, ``+ `` for an empty one)."""
    clean = "".join(ch if 0x20 <= ord(ch) < 0x7F else "?" for ch in text)
    return b"+ " + clean.encode("ascii") + b"\r\n"


def exists(n: int) -> bytes:
    return b"* %d EXISTS\r\n" % n


def recent(n: int) -> bytes:
    return b"* %d RECENT\r\n" % n


def expunge(seq: int) -> bytes:
    if seq < 1:
        raise ValueError("EXPUNGE takes a message sequence number")
    return b"* %d EXPUNGE\r\n" % seq


def vanished(uids: SequenceSet | Iterable[int], *, earlier: bool = False) -> bytes:
    """``* VANISHED [(EARLIER)] uid-set`` (RFC 7162 3.2.10)."""
    seqset = uids if isinstance(uids, SequenceSet) else SequenceSet.from_numbers(uids)
    return b"* VANISHED " + (b"(EARLIER) " if earlier else b"") + str(seqset).encode() + b"\r\n"


def capability(caps: Iterable[str]) -> bytes:
    return b"* CAPABILITY " + " ".join(caps).encode("ascii") + b"\r\n"


def flags_response(values: Iterable[str]) -> bytes:
    return b"* FLAGS " + flags(values) + b"\r\n"


def fetch_response(seq: int, items: Sequence[tuple[str, Value]], *, utf8: bool = False) -> bytes:
    """``* seq FETCH (NAME value ...)``. Names are used as given (e.g. the result of
    ``BodySection.response_name()``); values go through ``format_value``. Pass flags as
    ``Raw(flags(...))`` or a list of ``Atom``."""
    if seq < 1:
        raise ValueError("FETCH takes a message sequence number")
    body = b" ".join(name.encode("ascii") + b" " + format_value(value, utf8=utf8) for name, value in items)
    return b"* %d FETCH (" % seq + body + b")\r\n"


def search_response(numbers: Iterable[int], *, modseq: int | None = None) -> bytes:
    """``* SEARCH 1 2 3`` with the RFC 7162 ``(MODSEQ n)`` suffix when asked."""
    out = b"* SEARCH" + b"".join(b" %d" % n for n in numbers)
    if modseq is not None:
        out += b" (MODSEQ %d)" % modseq
    return out + b"\r\n"


def list_response(attributes: Iterable[str], delimiter: str | None, name: str, *,
                  command: str = "LIST", utf8: bool = False) -> bytes:
    """``* LIST (\\HasNoChildren \\Sent) "/" Sent``."""
    delim = b"NIL" if delimiter is None else quoted(delimiter)
    return (b"* " + command.encode("ascii") + b" " + flags(attributes) + b" " + delim + b" "
            + mailbox(name, utf8=utf8) + b"\r\n")


def status_response(name: str, items: Sequence[tuple[str, int]], *, utf8: bool = False) -> bytes:
    body = b" ".join(k.encode("ascii") + b" %d" % v for k, v in items)
    return b"* STATUS " + mailbox(name, utf8=utf8) + b" (" + body + b")\r\n"


# ---------------------------------------------------------------------------- response codes


def code_uidnext(n: int) -> str:
    return f"UIDNEXT {n}"


def code_uidvalidity(n: int) -> str:
    return f"UIDVALIDITY {n}"


def code_unseen(n: int) -> str:
    return f"UNSEEN {n}"


def code_highestmodseq(n: int) -> str:
    return f"HIGHESTMODSEQ {n}"


def code_appenduid(uidvalidity: int, uid: int) -> str:
    return f"APPENDUID {uidvalidity} {uid}"


def code_copyuid(uidvalidity: int, source: Sequence[int] | SequenceSet,
                 dest: Sequence[int] | SequenceSet) -> str:
    """COPYUID pairs source and destination UIDs by position: lists keep their order."""
    if not isinstance(source, SequenceSet) and not isinstance(dest, SequenceSet) and len(source) != len(dest):
        raise ValueError("COPYUID needs as many destination UIDs as source UIDs")
    src = source if isinstance(source, SequenceSet) else SequenceSet.from_numbers(source, sort=False)
    dst = dest if isinstance(dest, SequenceSet) else SequenceSet.from_numbers(dest, sort=False)
    return f"COPYUID {uidvalidity} {src} {dst}"


def code_permanentflags(values: Iterable[str]) -> str:
    return "PERMANENTFLAGS " + flags(values).decode("ascii")


def code_capability(caps: Iterable[str]) -> str:
    return "CAPABILITY " + " ".join(caps)


def code_modified(uids: SequenceSet | Iterable[int]) -> str:
    seqset = uids if isinstance(uids, SequenceSet) else SequenceSet.from_numbers(uids)
    return f"MODIFIED {seqset}"


CODE_OVERQUOTA = "OVERQUOTA"
