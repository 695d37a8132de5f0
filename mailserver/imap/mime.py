"""Message structure for FETCH (RFC 3501 6.4.5, 7.4.2): ENVELOPE, BODY/BODYSTRUCTURE, sections.

Pure functions over the message bytes, no I/O. Nothing here raises on malformed input: a
broken address list, Content-Type or MIME boundary gives a best-effort answer.

Offsets and sizes are those of the bytes passed in. Messages written by other programs
may use bare LF line ends; header/body and MIME boundaries are found either way and sizes
are the octets as given. A caller that wants CRLF on the wire for such a file normalises
the bytes before calling (then every size and offset follows the normalised bytes). The
one exception is ``header_fields``: its result is a synthesized header, always with CRLF
line ends (as Dovecot sends it), so ``BODY[HEADER.FIELDS (...)]`` is never a mixture.

Choices (compared with Dovecot 2.3 on the same messages, see tests/test_imap_mime.py):

* Media types, subtypes, transfer encodings, disposition types and parameter names are
  upper-cased (``"TEXT" "PLAIN" ("CHARSET" "US-ASCII")``, the form of RFC 3501's own
  example); parameter values are sent as written. Dovecot keeps the case as written and
  uses lower case for its defaults; clients compare these case-insensitively.
* A text/* part without a charset parameter gets ``CHARSET "US-ASCII"`` after its other
  parameters (as Dovecot).
  A missing or unparseable Content-Type is text/plain; charset=us-ascii (RFC 2045 5.2),
  message/rfc822 inside multipart/digest (RFC 2046 5.1.5).
* Line counts are the number of LF octets in the body (a last line without a line end is
  not counted), as Dovecot counts them.
* RFC 2231 parameters: continuations (``name*0``, ``name*1*``, ...) are joined. When the
  joined value decodes (per its charset) to pure ASCII it is sent under the plain name
  (``"NAME" "report.pdf"``); otherwise it is sent once, still encoded, as ``"NAME*"
  "utf-8''%C3%A9t%C3%A9.pdf"`` (Dovecot does the same for that case), so 8-bit never
  appears where a client does not expect it. If two parameters end up with the same name
  (``filename`` and ``filename*`` decoding to plain ASCII), the first one wins.
* A multipart without a boundary, or without any delimiter line, gets one empty text/plain
  part (the grammar needs at least one; Dovecot does the same). A multipart or
  message/rfc822 nested deeper than ``MAX_DEPTH`` is reported as an opaque
  APPLICATION/OCTET-STREAM part; parts beyond the message's ``MAX_PARTS`` are not listed.
* Addresses: display names are sent as written (RFC 2047 encoded words not decoded,
  quoted strings unquoted, words joined by one space); a quoted local part is unquoted
  (as Dovecot). When an address has no display name but a comment, the comment is the
  name (``a@b (Ann)`` -> ``("Ann" NIL "a" "b")``, as Dovecot and UW-IMAP do); other
  comments are dropped. An address without ``@`` gets host ``""``, never NIL: a NIL host
  is how RFC 3501 marks the start of a group, so NIL would make clients misread it
  (Dovecot sends ``"MISSING_DOMAIN"``).
* Envelope strings are unfolded (line breaks before whitespace removed), tabs become
  spaces (as Dovecot) and leading/trailing whitespace is stripped; 8-bit is kept (the
  formatter sends a literal). The first header of a name is used.
* A section that does not exist (``BODY[3]`` of a two-part message, ``[1.HEADER]`` of a
  part that is not message/rfc822) is ``b""``: the server answers with an empty string,
  as Dovecot does.
"""

from __future__ import annotations

import codecs
import functools
import re
from collections.abc import Iterable

from mailserver.message import body_start as message_body_start

from . import format as fmt
from .fetchitems import Section

MAX_DEPTH = 32  # multipart / message nesting levels that are parsed
MAX_PARTS = 5000  # parts listed for one message; further ones are left out

Address = tuple[bytes | None, bytes | None, bytes | None, bytes | None]  # name adl mailbox host
_GROUP_END: Address = (None, None, None, None)

# ---------------------------------------------------------------------------- header block


_UNFOLD_RE = re.compile(rb"\r?\n(?=[ \t])")


@functools.lru_cache(maxsize=256)
def _field_finder(names: frozenset[bytes]) -> re.Pattern[bytes]:
    r"""Finds the fields with the given (lower-case) names in ``b"\n" + header``: group 1 is
    the whole field (continuation lines included, without its last line end), group 2 the
    name as written, group 3 the value. It also matches the empty line ending the header,
    with every group empty. The lookahead on first letters lets the regex engine skip most
    lines cheaply; the possessive quantifiers keep it linear on any input."""
    valid = sorted((n for n in names if n), key=len, reverse=True)
    alts = b"|".join(re.escape(n) for n in valid) or b"(?!)"
    firsts = {n[:1].lower() for n in valid} | {n[:1].upper() for n in valid}
    look = b"".join(re.escape(c) for c in sorted(firsts)) + b"\r\n"
    return re.compile(
        rb"\n(?=[" + look + rb"])(?:(((?i:" + alts + rb"))[ \t]*+:([^\n]*+(?:\n[ \t][^\n]*+)*+))|\r?\n)"
    )


def _field_values(header: bytes, finder: re.Pattern[bytes]) -> dict[bytes, bytes]:
    """The first raw value (after the colon, folding and line end kept) of each name."""
    found: dict[bytes, bytes] = {}
    for field, name, value in finder.findall(b"\n" + header):
        if not field:
            break  # the empty line: the header ends
        key = name.lower()
        if key not in found:
            found[key] = value
    return found


@functools.lru_cache(maxsize=256)
def _names_finder(names: tuple[str, ...]) -> re.Pattern[bytes]:
    return _field_finder(frozenset(n.encode("utf-8", "replace").lower() for n in names))


def first_values(header: bytes, names: tuple[str, ...]) -> dict[bytes, bytes]:
    """Lower-case name -> the unfolded value of the first field of that name (tabs as
    spaces, stripped), for the names present; one pass over the header block."""
    return {k: _clean(v) for k, v in _field_values(header, _names_finder(names)).items()}


def _clean(value: bytes) -> bytes:
    """A header value as sent in ENVELOPE/BODYSTRUCTURE: unfolded, tabs as spaces, stripped."""
    value = value.strip(b" \t\r\n")
    if b"\n" in value:
        value = _UNFOLD_RE.sub(b"", value)
    if b"\t" in value:
        value = value.replace(b"\t", b" ")
    return value


def _crlf(data: bytes) -> bytes:
    """Bare LF line ends as CRLF (returns ``data`` itself when it has none)."""
    if data.count(b"\n") == data.count(b"\r\n"):
        return data
    return data.replace(b"\r\n", b"\n").replace(b"\n", b"\r\n")


def header_fields(header: bytes, names: Iterable[str], *, exclude: bool = False) -> bytes:
    """``BODY[HEADER.FIELDS (names)]`` (``exclude=True``: ``HEADER.FIELDS.NOT``).

    Whole original fields, folding included, in their original order, then the empty
    line. Names match case-insensitively. Only the header up to its first empty line is
    looked at. The result always ends with CRLF CRLF, or is just CRLF when nothing is
    left; line ends are CRLF even when the message uses bare LF.
    """
    buf = b"\n" + header
    finder = _names_finder(tuple(names))
    if not exclude:
        fields = []
        for field, _name, _value in finder.findall(buf):
            if not field:
                break
            fields.append(field)
        if not fields:
            return b"\r\n"
        return _crlf(b"\n".join(fields) + b"\n") + b"\r\n"
    pieces = []
    prev, end = 1, len(buf)
    for m in finder.finditer(buf):
        if not m.group(1):
            end = m.start() + 1  # the empty line starts after this line end
            break
        pieces.append(buf[prev : m.start() + 1])
        prev = m.end(1) + 1  # past the field's own line end
    pieces.append(buf[prev:end])
    out = b"".join(pieces)
    if not out:
        return b"\r\n"
    if not out.endswith(b"\n"):
        out += b"\r\n"
    return _crlf(out) + b"\r\n"


# ---------------------------------------------------------------------------- rendering

_PRINTABLE = bytes(range(0x20, 0x7F))  # what a quoted string may hold (without UTF8=ACCEPT)


def _str(value: bytes | None) -> bytes:
    """``fmt.nstring(value)`` (utf8=False), faster: NIL, a quoted string, or a literal."""
    if value is None:
        return b"NIL"
    if len(value) > fmt.MAX_QUOTED or value.translate(None, _PRINTABLE):
        if 0 in value:  # a literal cannot carry NUL (RFC 3501 CHAR8)
            return _str(value.replace(b"\0", b""))
        return b"{%d}\r\n" % len(value) + value
    if 0x5C in value or 0x22 in value:
        value = value.replace(b"\\", b"\\\\").replace(b'"', b'\\"')
    return b'"' + value + b'"'


def _str_list(values: list[bytes] | None) -> bytes:
    return b"NIL" if not values else b"(" + b" ".join(map(_str, values)) + b")"


def line_count(data: bytes) -> int:
    """Body lines as BODYSTRUCTURE reports them: the number of LF octets."""
    return data.count(b"\n")


# ---------------------------------------------------------------------------- addresses

# Tokens of an address list (RFC 5322 3.2-3.4): quoted string (possibly unterminated),
# comment (one nesting level inside; deeper nesting degrades to stray parentheses),
# domain literal, atom (dots included: dot-atoms and "Q." in phrases), one special, or
# whitespace (kept so that adjacency is known).
_ADDR_TOKEN = re.compile(
    rb'("(?:[^"\\]|\\.)*"?)'
    rb"|(\((?:[^()\\]|\\.|\((?:[^()\\]|\\.)*\))*\))"
    rb"|(\[(?:[^\[\]\\]|\\.)*\]?)"
    rb'|([^\s()<>\[\]:;@,"]+)'
    rb"|([()<>\[\]:;@,])"
    rb"|(\s+)",
    re.S,
)
_ESCAPE_RE = re.compile(rb"\\(.)", re.S)

_Q, _C, _L, _A, _S, _W = range(6)


def _unquote(text: bytes) -> bytes:
    """Content of a quoted string token (``"a \\" b"`` -> ``a " b``)."""
    inner = text[1:-1] if len(text) > 1 and text.endswith(b'"') and not _odd_escape(text) else text[1:]
    return _ESCAPE_RE.sub(rb"\1", inner) if b"\\" in inner else inner


def _odd_escape(text: bytes) -> bool:
    """True when the closing quote of ``text`` is escaped (the string is unterminated)."""
    n = 0
    i = len(text) - 2
    while i >= 1 and text[i] == 0x5C:
        n += 1
        i -= 1
    return n % 2 == 1


def _tokens(value: bytes) -> list[tuple[int, bytes]]:
    out = []
    for groups in _ADDR_TOKEN.findall(value):
        for kind, text in enumerate(groups):
            if text:
                out.append((kind, text))
                break
    return out


def _word(kind: int, text: bytes) -> bytes:
    return _unquote(text) if kind == _Q else text


def _phrase(tokens: list[tuple[int, bytes]]) -> bytes | None:
    return b" ".join(_word(k, t) for k, t in tokens if k in (_Q, _A, _L)) or None


def _addr_spec(tokens: list[tuple[int, bytes]]) -> tuple[bytes, bytes, list[tuple[int, bytes]]]:
    """``(mailbox, host, tokens before the local part)`` of ``local@domain``."""
    at = -1
    for i in range(len(tokens) - 1, -1, -1):
        if tokens[i] == (_S, b"@"):
            at = i
            break
    if at < 0:
        return b" ".join(_word(k, t) for k, t in tokens if k in (_Q, _A, _L)), b"", []
    host = b"".join(t for k, t in tokens[at + 1 :] if k in (_A, _L, _Q) or (k == _S and t == b"@"))
    # The local part: the words before "@", comments and whitespace skipped (CFWS may sit
    # around "@" and the dots: "user (c)@ (c) domain.org", RFC 5322 3.4.1 and 4.4). Words
    # apart are one local part only when adjacent or joined by a dot; otherwise the
    # earlier ones are a (bare) display name.
    words: list[bytes] = []
    j = at
    k = at - 1
    joined = True
    while k >= 0:
        kind, text = tokens[k]
        if kind in (_W, _C):
            joined = False
            k -= 1
            continue
        if kind not in (_Q, _A):
            break
        if words and not (joined or text.endswith(b".") or words[0].startswith(b".")):
            break
        words.insert(0, _word(kind, text))
        j = k
        joined = True
        k -= 1
    return b"".join(words), host, tokens[:j]


def _comment_text(tokens: list[tuple[int, bytes]]) -> bytes | None:
    comments = [t for k, t in tokens if k == _C]
    if not comments:
        return None
    text = comments[-1][1:-1].strip()
    return (_ESCAPE_RE.sub(rb"\1", text) if b"\\" in text else text) or None


def _mailbox(item: list[tuple[int, bytes]], angle: list[tuple[int, bytes]] | None) -> Address | None:
    if angle is not None:
        name = _phrase(item)
        route: bytes | None = None
        colon = -1
        for i in range(len(angle) - 1, -1, -1):
            if angle[i] == (_S, b":"):
                colon = i
                break
        if colon >= 0:
            route = b"".join(t for k, t in angle[:colon] if k in (_A, _L) or (k == _S and t in b"@,")) or None
            angle = angle[colon + 1 :]
        mailbox, host, _rest = _addr_spec(angle)
        return (name, route, mailbox, host)
    if not any(k in (_Q, _A, _L) for k, _t in item):
        return None  # only comments / stray specials
    mailbox, host, before = _addr_spec(item)
    name = _phrase(before) if before else None
    if name is None:
        name = _comment_text(item[len(before) :])  # a comment after the address, not before
    return (name, None, mailbox, host)


_PLAIN = rb'[^<>@\s"(),;:\[\]\\]'  # a character of a plain local part or domain
# One common-form address and the comma after it: "quoted name" <a@b>, words <a@b>, <a@b>,
# a@b. Possessive/atomic parts keep it linear on garbage (a long run of spaces, say).
_FAST_ADDR = re.compile(
    rb'[\s,]*+(?:"((?:[^"\\\r\n]|\\.)*+)"[ ]*+<(%s++)@(%s++)>' % (_PLAIN, _PLAIN)
    + rb'|([^"<>@(),;:\[\]\\\s][^"<>@(),;:\[\]\\]*+)<(%s++)@(%s++)>' % (_PLAIN, _PLAIN)
    + rb"|<(%s++)@(%s++)>|(%s++)@(%s++))[ ]*+(?:,|\Z)" % (_PLAIN, _PLAIN, _PLAIN, _PLAIN)
)


def parse_addresses(value: bytes) -> list[Address]:
    """An address-list header value as ENVELOPE address structures (groups included).

    Never raises: anything that is not an address list gives a best-effort answer.
    """
    value = _clean(value)
    out: list[Address] = []
    pos, n = 0, len(value)
    match = _FAST_ADDR.match
    while pos < n:
        m = match(value, pos)
        if m is None:
            if value[pos:].strip(b" ,"):
                return _parse_addresses(value)
            break
        last = m.lastindex
        if last == 3:
            name = m[1]
            if b"\\" in name:
                name = _ESCAPE_RE.sub(rb"\1", name)
            out.append((name or None, None, m[2], m[3]))
        elif last == 6:
            out.append((b" ".join(m[4].split()), None, m[5], m[6]))
        elif last == 8:
            out.append((None, None, m[7], m[8]))
        else:
            out.append((None, None, m[9], m[10]))
        pos = m.end()
    return out


def _parse_addresses(value: bytes) -> list[Address]:
    tokens = _tokens(value)
    out: list[Address] = []
    item: list[tuple[int, bytes]] = []
    angle: list[tuple[int, bytes]] | None = None
    group = False

    def flush() -> None:
        nonlocal item, angle
        addr = _mailbox(item, angle)
        if addr is not None:
            out.append(addr)
        item, angle = [], None

    i, n = 0, len(tokens)
    while i < n:
        kind, text = tokens[i]
        i += 1
        if kind != _S:
            if angle is None:  # words after "<...>" are ignored
                item.append((kind, text))
            continue
        if text == b",":
            flush()
        elif text == b";":
            flush()
            if group:
                out.append(_GROUP_END)
                group = False
        elif text == b"<":
            inner: list[tuple[int, bytes]] = []
            while i < n and tokens[i] != (_S, b">"):
                inner.append(tokens[i])
                i += 1
            i += 1
            if angle is None:
                angle = inner
        elif text == b":":
            if not group and angle is None and (_S, b"@") not in item:
                name = _phrase(item)
                out.append((None, None, name if name is not None else b"", None))
                item = []
                group = True
        elif text == b"@":
            item.append((kind, text))
        # stray ">", "(", ")", "[", "]" are dropped
    flush()
    if group:
        out.append(_GROUP_END)
    return out


# ---------------------------------------------------------------------------- envelope

_ENVELOPE_FINDER = _field_finder(frozenset({
    b"date", b"subject", b"from", b"sender", b"reply-to", b"to", b"cc", b"bcc", b"in-reply-to",
    b"message-id",
}))


def _addresses(raw: bytes | None) -> bytes | None:
    """An address list rendered for ENVELOPE, None for NIL (absent or no address)."""
    if raw is None:
        return None
    addrs = parse_addresses(raw)
    if not addrs:
        return None
    # 1*address: the grammar puts no space between the addresses.
    return b"(" + b"".join(
        b"(%s %s %s %s)" % (_str(a[0]), _str(a[1]), _str(a[2]), _str(a[3])) for a in addrs
    ) + b")"


def _text(raw: bytes | None) -> bytes:
    return b"NIL" if raw is None else _str(_clean(raw))


def render_envelope(header: bytes) -> bytes:
    """The ENVELOPE structure of a message header in wire form (RFC 3501 7.4.2)."""
    f = _field_values(header, _ENVELOPE_FINDER)
    from_ = _addresses(f.get(b"from"))
    sender = _addresses(f.get(b"sender")) or from_
    reply_to = _addresses(f.get(b"reply-to")) or from_
    return b"(%s %s %s %s %s %s %s %s %s %s)" % (
        _text(f.get(b"date")),
        _text(f.get(b"subject")),
        from_ or b"NIL",
        sender or b"NIL",
        reply_to or b"NIL",
        _addresses(f.get(b"to")) or b"NIL",
        _addresses(f.get(b"cc")) or b"NIL",
        _addresses(f.get(b"bcc")) or b"NIL",
        _text(f.get(b"in-reply-to")),
        _text(f.get(b"message-id")),
    )


def envelope(header: bytes) -> fmt.Value:
    """ENVELOPE of a message header, a ``fmt.Raw`` ready for ``format_value``.

    Pre-rendered because the grammar's address lists have no space between addresses,
    which ``format_value`` would put in.
    """
    return fmt.Raw(render_envelope(header))


# ---------------------------------------------------------------------------- MIME headers

_CONTENT_FINDER = _field_finder(frozenset({
    b"content-type", b"content-transfer-encoding", b"content-id", b"content-description",
    b"content-disposition", b"content-language", b"content-location", b"content-md5",
}))
_TOKEN_RE = re.compile(rb"[!#$%&'*+\-.0-9A-Z^_`a-z{|}~]+")
_COMMENT_AFTER_SPACE = re.compile(rb"\s\((?:[^()\\]|\\.)*+\)", re.S)
_ATTR_CHARS = frozenset(b"!#$&+-.0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZ^_`abcdefghijklmnopqrstuvwxyz{|}~")

Params = list[tuple[bytes, bytes]]


def _skip_comment(s: bytes, i: int) -> int:
    """Index after the (possibly nested) comment starting at s[i] == '('."""
    depth = 0
    n = len(s)
    while i < n:
        c = s[i]
        if c == 0x5C:
            i += 2
            continue
        if c == 0x28:
            depth += 1
        elif c == 0x29:
            depth -= 1
            if depth == 0:
                return i + 1
        i += 1
    return n


def _strip_comments(s: bytes) -> bytes:
    if b"(" not in s:
        return s.strip()
    out = bytearray()
    i, n = 0, len(s)
    while i < n:
        c = s[i]
        if c == 0x28:
            i = _skip_comment(s, i)
            out += b" "
        elif c == 0x22:  # quoted: copy through
            j = i + 1
            while j < n and s[j] != 0x22:
                j += 2 if s[j] == 0x5C else 1
            out += s[i : j + 1]
            i = j + 1
        else:
            out.append(c)
            i += 1
    return bytes(out).strip()


def _split_semicolons(s: bytes) -> list[bytes]:
    """Split on ``;`` outside quoted strings and comments."""
    if b'"' not in s and b"(" not in s:
        return s.split(b";")
    out = []
    start = i = 0
    n = len(s)
    while i < n:
        c = s[i]
        if c == 0x22:
            i += 1
            while i < n and s[i] != 0x22:
                i += 2 if s[i] == 0x5C else 1
            i += 1
        elif c == 0x28:
            i = _skip_comment(s, i)
        elif c == 0x3B:
            out.append(s[start:i])
            i += 1
            start = i
        else:
            i += 1
    out.append(s[start:])
    return out


def _param_value(raw: bytes) -> bytes:
    raw = raw.strip()
    if raw.startswith(b'"'):
        i, n = 1, len(raw)
        while i < n and raw[i] != 0x22:
            i += 2 if raw[i] == 0x5C else 1
        inner = raw[1:i]
        return _ESCAPE_RE.sub(rb"\1", inner) if b"\\" in inner else inner
    if b"(" in raw:
        raw = _COMMENT_AFTER_SPACE.sub(b"", raw).strip()
        if raw.startswith(b"("):
            raw = _strip_comments(raw)
    return raw


def _parse_params(pieces: list[bytes]) -> Params:
    """``name=value`` pieces (after the first ``;``) with RFC 2231 decoding."""
    raw: list[tuple[bytes, bytes]] = []
    for piece in pieces:
        eq = piece.find(b"=")
        if eq < 0:
            continue
        name = _strip_comments(piece[:eq]).lower()
        if not name or not _TOKEN_RE.fullmatch(name):
            continue
        raw.append((name, _param_value(piece[eq + 1 :])))
    if not raw:
        return []
    if not any(b"*" in name for name, _v in raw):
        out: Params = []
        seen: set[bytes] = set()
        for name, value in raw:
            up = name.upper()
            if up not in seen:
                seen.add(up)
                out.append((up, value))
        return out
    return _rfc2231(raw)


def _rfc2231(raw: list[tuple[bytes, bytes]]) -> Params:
    order: list[tuple[bytes, bool]] = []  # (name, is_extended) in order of first appearance
    plain: dict[bytes, bytes] = {}
    ext: dict[bytes, dict[int, tuple[bool, bytes]]] = {}
    for name, value in raw:
        base, star, rest = name.partition(b"*")
        index: int | None = None
        encoded = False
        if star:
            if rest == b"":
                index, encoded = 0, True
            elif rest.isdigit():
                index = int(rest)
            elif rest.endswith(b"*") and rest[:-1].isdigit():
                index, encoded = int(rest[:-1]), True
        if index is None or not base or index > 999:
            if name not in plain:
                plain[name] = value
                order.append((name, False))
            continue
        segments = ext.setdefault(base, {})
        if not segments:
            order.append((base, True))
        segments.setdefault(index, (encoded, value))
    out: Params = []
    seen: set[bytes] = set()
    for name, extended in order:
        if extended:
            name, value = _join_2231(name, ext[name])
        else:
            value = plain[name]
        up = name.upper()
        if up not in seen:
            seen.add(up)
            out.append((up, value))
    return out


def _percent_decode(s: bytes) -> bytes:
    if b"%" not in s:
        return s
    out = bytearray()
    i, n = 0, len(s)
    while i < n:
        c = s[i]
        if c == 0x25 and _is_hex(s[i + 1 : i + 3]):
            out.append(int(s[i + 1 : i + 3], 16))
            i += 3
        else:
            out.append(c)
            i += 1
    return bytes(out)


def _is_hex(pair: bytes) -> bool:
    return len(pair) == 2 and all(c in b"0123456789abcdefABCDEF" for c in pair)


def _percent_encode(data: bytes) -> bytes:
    return b"".join(bytes((c,)) if c in _ATTR_CHARS else b"%%%02X" % c for c in data)


def _join_2231(base: bytes, segments: dict[int, tuple[bool, bytes]]) -> tuple[bytes, bytes]:
    """``(name, value)``: plain when possible, else ``name*`` with the joined encoded value."""
    parts = [segments[i] for i in sorted(segments)]
    if not any(enc for enc, _v in parts):
        return base, b"".join(v for _e, v in parts)
    charset = lang = b""
    first_enc, first = parts[0]
    if first_enc and first.count(b"'") >= 2:
        charset, lang, first = first.split(b"'", 2)
        parts[0] = (True, first)
    octets = b"".join(_percent_decode(v) if enc else v for enc, v in parts)
    if octets.isascii():
        return base, octets
    try:
        text = octets.decode(codecs.lookup(charset.decode("ascii")).name)
    except (LookupError, UnicodeError, ValueError):
        text = None
    if text is not None and text.isascii():
        return base, text.encode("ascii")
    return base + b"*", charset + b"'" + lang + b"'" + _percent_encode(octets)


def _content_type(raw: bytes | None) -> tuple[bytes, bytes, Params] | None:
    """``(TYPE, SUBTYPE, params)`` of a Content-Type value, None when absent or invalid."""
    if raw is None:
        return None
    pieces = _split_semicolons(_clean(raw))
    mtype, slash, sub = _strip_comments(pieces[0]).partition(b"/")
    mtype, sub = mtype.strip(), sub.strip()
    if not slash or not _TOKEN_RE.fullmatch(mtype) or not _TOKEN_RE.fullmatch(sub):
        return None
    return mtype.upper(), sub.upper(), _parse_params(pieces[1:])


def _disposition(raw: bytes | None) -> tuple[bytes, Params] | None:
    if raw is None:
        return None
    pieces = _split_semicolons(_clean(raw))
    dtype = _strip_comments(pieces[0])
    if not _TOKEN_RE.fullmatch(dtype):
        return None
    return dtype.upper(), _parse_params(pieces[1:])


def _languages(raw: bytes | None) -> list[bytes] | None:
    if raw is None:
        return None
    langs = [t for t in (_strip_comments(p) for p in _clean(raw).split(b",")) if t]
    return langs or None


# ---------------------------------------------------------------------------- structure


class MimePart:
    """One body part: ``data[start:body_start]`` is its MIME header (with the empty line),
    ``data[body_start:end]`` its content. A message/rfc822 part has ``message``, the root
    part of the encapsulated message; a multipart has ``children``."""

    __slots__ = ("body_start", "children", "end", "fields", "message", "params", "start", "subtype", "type")

    def __init__(self, start: int, body_start: int, end: int, fields: dict[bytes, bytes],
                 mtype: bytes, subtype: bytes, params: Params) -> None:
        self.start = start
        self.body_start = body_start
        self.end = end
        self.fields = fields
        self.type = mtype
        self.subtype = subtype
        self.params = params
        self.children: list[MimePart] = []
        self.message: MimePart | None = None

    @property
    def is_multipart(self) -> bool:
        return self.type == b"MULTIPART"

    @property
    def is_message(self) -> bool:
        return self.message is not None

    @property
    def encoding(self) -> bytes:
        """Content-Transfer-Encoding, upper case, ``7BIT`` by default."""
        raw = self.fields.get(b"content-transfer-encoding")
        enc = _strip_comments(_clean(raw)) if raw is not None else b""
        return enc.upper() if enc else b"7BIT"

    def field(self, name: bytes) -> bytes | None:
        raw = self.fields.get(name)
        return None if raw is None else _clean(raw)


_TEXT_PLAIN = (b"TEXT", b"PLAIN", [(b"CHARSET", b"US-ASCII")])
_MESSAGE_RFC822: tuple[bytes, bytes, Params] = (b"MESSAGE", b"RFC822", [])


def _delimiters(data: bytes, start: int, end: int, boundary: bytes) -> list[tuple[int, int, bool]]:
    """``(line start, after the line, is close)`` of each delimiter line in data[start:end].

    RFC 2046 5.1.1: ``--boundary`` at the start of a line, ``--`` more for the close
    delimiter, then only whitespace to the end of the line.
    """
    marker = b"--" + boundary
    mlen = len(marker)
    found: list[tuple[int, int, bool]] = []
    i = data.find(marker, start, end)
    while i >= 0:
        if i == start or data[i - 1] == 0x0A:
            eol = data.find(b"\n", i + mlen, end)
            line_end = end if eol < 0 else eol + 1
            rest = data[i + mlen : line_end]
            close = rest.startswith(b"--")
            if close:
                rest = rest[2:]
            if not rest.strip(b" \t\r\n"):
                found.append((i, line_end, close))
                if close:
                    break
                i = data.find(marker, line_end, end)
                continue
        i = data.find(marker, i + 1, end)
    return found


def _content_end(data: bytes, start: int, line: int) -> int:
    """End of the content before a delimiter line: the line break before it is the delimiter's."""
    if line > start and data[line - 1] == 0x0A:
        return line - 2 if line - 1 > start and data[line - 2] == 0x0D else line - 1
    return line


class _Parser:
    def __init__(self, data: bytes) -> None:
        self.data = data
        self.parts = 0

    def parse(self, start: int, end: int, depth: int, default: tuple[bytes, bytes, Params]) -> MimePart:
        data = self.data
        self.parts += 1
        body_start = message_body_start(data, start, end)
        fields = _field_values(data[start:body_start], _CONTENT_FINDER) if body_start > start else {}
        ctype = _content_type(fields.get(b"content-type"))
        if ctype is None:
            mtype, sub, params = default
            params = list(params)
        else:
            mtype, sub, params = ctype
            if mtype == b"TEXT" and not any(k == b"CHARSET" for k, _v in params):
                params.append((b"CHARSET", b"US-ASCII"))
        nested = mtype == b"MULTIPART" or (mtype == b"MESSAGE" and sub == b"RFC822")
        if nested and (depth >= MAX_DEPTH or self.parts >= MAX_PARTS):
            mtype, sub, params = b"APPLICATION", b"OCTET-STREAM", []
            nested = False
        part = MimePart(start, body_start, end, fields, mtype, sub, params)
        if not nested:
            return part
        if mtype == b"MESSAGE":
            part.message = self.parse(body_start, end, depth + 1, _TEXT_PLAIN)
            return part
        child_default = _MESSAGE_RFC822 if sub == b"DIGEST" else _TEXT_PLAIN
        boundary = next((v for k, v in params if k == b"BOUNDARY"), b"")
        lines = _delimiters(data, body_start, end, boundary) if boundary else []
        for n, (_line, after, close) in enumerate(lines):
            if close or self.parts >= MAX_PARTS:
                break  # parts beyond MAX_PARTS are not listed
            # Without a close delimiter the last part runs to the end.
            part_end = _content_end(data, after, lines[n + 1][0]) if n + 1 < len(lines) else end
            part.children.append(self.parse(after, max(after, part_end), depth + 1, child_default))
        if not part.children:
            part.children.append(MimePart(body_start, body_start, body_start, {}, *_TEXT_PLAIN))
        return part


def parse_structure(data: bytes) -> MimePart:
    """The MIME tree of a whole message."""
    return _Parser(data).parse(0, len(data), 0, _TEXT_PLAIN)


def _render(data: bytes, part: MimePart, extended: bool) -> bytes:
    """One body (RFC 3501 ``body``) in wire form."""
    if part.is_multipart:
        # body-type-mpart = 1*body SP media-subtype: no space between the bodies.
        out = b"".join([_render(data, c, extended) for c in part.children]) + b" " + _str(part.subtype)
        if extended:
            out += b" " + _params_wire(part.params) + b" " + _ext_common(part)
        return b"(" + out + b")"
    out = b"%s %s %s %s %s %s %d" % (
        _str(part.type),
        _str(part.subtype),
        _params_wire(part.params),
        _str(part.field(b"content-id")),
        _str(part.field(b"content-description")),
        _str(part.encoding),
        part.end - part.body_start,
    )
    if part.message is not None:
        inner = part.message
        out += b" %s %s %d" % (
            render_envelope(data[inner.start : inner.body_start]),
            _render(data, inner, extended),
            data.count(b"\n", part.body_start, part.end),
        )
    elif part.type == b"TEXT":
        out += b" %d" % data.count(b"\n", part.body_start, part.end)
    if extended:
        out += b" " + _str(part.field(b"content-md5")) + b" " + _ext_common(part)
    return b"(" + out + b")"


def _params_wire(params: Params) -> bytes:
    return _str_list([x for pair in params for x in pair])


def _ext_common(part: MimePart) -> bytes:
    """disposition, language, location."""
    disp = _disposition(part.fields.get(b"content-disposition"))
    disp_wire = b"NIL" if disp is None else b"(" + _str(disp[0]) + b" " + _params_wire(disp[1]) + b")"
    return b"%s %s %s" % (
        disp_wire,
        _str_list(_languages(part.fields.get(b"content-language"))),
        _str(part.field(b"content-location")),
    )


# ---------------------------------------------------------------------------- one message


class ParsedMessage:
    """One message, parsed at most once, answering ENVELOPE, BODY[STRUCTURE] and sections."""

    __slots__ = ("_root", "body_start", "data")

    def __init__(self, data: bytes) -> None:
        self.data = data
        self.body_start = message_body_start(data, 0, len(data))
        self._root: MimePart | None = None

    @property
    def header(self) -> bytes:
        return self.data[: self.body_start]

    @property
    def body(self) -> bytes:
        return self.data[self.body_start :]

    @property
    def root(self) -> MimePart:
        if self._root is None:
            self._root = parse_structure(self.data)
        return self._root

    def envelope(self) -> fmt.Value:
        """ENVELOPE as a ``fmt.Raw`` (see ``envelope()``)."""
        return fmt.Raw(render_envelope(self.header))

    def body_structure(self, *, extended: bool) -> fmt.Value:
        """BODYSTRUCTURE (``extended``) or BODY as a ``fmt.Raw`` (see ``body_structure()``)."""
        return fmt.Raw(_render(self.data, self.root, extended))

    def part(self, path: tuple[int, ...]) -> MimePart | None:
        """The part a section number names (RFC 3501 6.4.5), None when there is none.

        Part 1 of a non-multipart message is its body (the root itself); the parts of a
        message/rfc822 part are those of the encapsulated message.
        """
        node = self.root
        message: MimePart | None = node  # the message whose parts the next number picks
        for n in path:
            if message is not None:
                if message.is_multipart:
                    if not 1 <= n <= len(message.children):
                        return None
                    node = message.children[n - 1]
                elif n == 1:
                    node = message
                else:
                    return None
            elif node.is_multipart:
                if not 1 <= n <= len(node.children):
                    return None
                node = node.children[n - 1]
            else:
                return None
            message = node.message
        return node

    def section(self, section: Section) -> bytes:
        """``BODY[section]`` content; ``b""`` for a part that does not exist."""
        data = self.data
        text = section.text
        if not section.part:
            start, body_start, end = 0, self.body_start, len(data)
        else:
            node = self.part(section.part)
            if node is None:
                return b""
            if text is None:
                return data[node.body_start : node.end]
            if text == "MIME":
                return data[node.start : node.body_start]
            if node.message is None:
                return b""  # HEADER / TEXT of a part that is not a message
            inner = node.message
            start, body_start, end = inner.start, inner.body_start, inner.end
        if text is None:
            return data[start:end]
        if text == "HEADER":
            return data[start:body_start]
        if text == "TEXT":
            return data[body_start:end]
        if text in ("HEADER.FIELDS", "HEADER.FIELDS.NOT"):
            return header_fields(data[start:body_start], section.fields, exclude=text == "HEADER.FIELDS.NOT")
        return b""


def body_structure(data: bytes, *, extended: bool) -> fmt.Value:
    """BODYSTRUCTURE (``extended=True``) or BODY (``extended=False``) of a message.

    A ``fmt.Raw`` ready for ``format_value``: pre-rendered because a multipart's bodies
    follow each other without a space, which ``format_value`` would put in.
    """
    return ParsedMessage(data).body_structure(extended=extended)


def section_bytes(data: bytes, section: Section) -> bytes:
    """``BODY[section]`` of a message; ``b""`` for a part that does not exist."""
    if not section.part and section.text is None:
        return data  # BODY[]: the whole message, neither parsed nor copied
    return ParsedMessage(data).section(section)
