"""FETCH BINARY: a section with its Content-Transfer-Encoding undone (RFC 3516 4.2).

``BINARY[1.2]`` is part 1.2's content (as in ``BODY[1.2]``) decoded by that part's own
Content-Transfer-Encoding: base64 and quoted-printable are decoded, 7bit/8bit/binary
are sent as they are. ``BINARY[]`` is the whole message: its header as it is, then its
body decoded by the message's own CTE. A multipart or message/rfc822 section may only
have an identity CTE (RFC 2045 6.4), so it comes out as ``BODY[...]`` would send it:
the parts inside keep their own encodings (a client asks for each leaf it wants).
Any other CTE (x-uuencode, a typo) is :class:`UnknownCTE`, answered
``NO [UNKNOWN-CTE]`` (RFC 3516 4.3). Decoding is lenient, as mail readers are: base64
skips what is not of its alphabet and a missing ``=`` padding; quoted-printable keeps
an ``=`` not followed by two hex digits.
"""

from __future__ import annotations

import binascii
import re

from . import mime
from .fetchitems import Section

IDENTITY = frozenset({b"7BIT", b"8BIT", b"BINARY"})
_NOT_BASE64 = re.compile(rb"[^A-Za-z0-9+/]")


class UnknownCTE(Exception):
    """A section whose Content-Transfer-Encoding this server cannot undo."""

    def __init__(self, encoding: bytes) -> None:
        super().__init__(encoding.decode("ascii", "replace"))
        self.encoding = encoding


def decode_base64(data: bytes) -> bytes:
    """Lenient base64: line ends, whitespace and stray octets skipped; everything after
    the first ``=`` pad ignored; a truncated last quantum decoded as far as it goes."""
    pad = data.find(b"=")
    if pad >= 0:
        data = data[:pad]
    clean = _NOT_BASE64.sub(b"", data)
    usable = len(clean) - len(clean) % 4
    tail = clean[usable:]
    out = binascii.a2b_base64(clean[:usable]) if usable else b""
    if len(tail) >= 2:  # 2 chars -> 1 octet, 3 chars -> 2 octets
        out += binascii.a2b_base64(tail + b"=" * (4 - len(tail)))
    return out


def decode(data: bytes, encoding: bytes) -> bytes:
    """``data`` with ``encoding`` (upper case, as ``MimePart.encoding``) undone."""
    if encoding in IDENTITY:
        return data
    if encoding == b"BASE64":
        return decode_base64(data)
    if encoding == b"QUOTED-PRINTABLE":
        return binascii.a2b_qp(data)
    raise UnknownCTE(encoding)


def binary_section(data: bytes, section: Section) -> bytes:
    """``BINARY[section]`` of a message (``data`` with CRLF line ends); ``b""`` for a part
    that does not exist, as for ``BODY[...]``. Raises :class:`UnknownCTE`."""
    parsed = mime.ParsedMessage(data)
    root = parsed.root
    if not section.part:
        if root.is_multipart or root.is_message:
            return data
        return parsed.header + decode(parsed.body, root.encoding)
    node = parsed.part(section.part)
    if node is None:
        return b""
    content = data[node.body_start:node.end]
    if node.is_multipart or node.is_message:
        return content
    return decode(content, node.encoding)
