"""Modified UTF-7 for mailbox names (RFC 3501 5.1.3).

Printable US-ASCII (0x20-0x7E) stands for itself, except ``&`` which is written ``&-``.
Everything else is UTF-16BE in base64 with ``,`` for ``/``, no padding, between ``&`` and
``-``. Decoding is strict: a name is accepted only in its canonical spelling (the one
``encode_mailbox_name`` produces), so one folder never has two wire names. This refuses
unterminated or empty-looking shifts, non-zero padding bits, odd byte counts, lone
surrogates, base64 used for printable ASCII, and adjacent shifts (``&AOk-&AOk-``).
"""

from __future__ import annotations

import base64
import binascii
import re

from .errors import MailboxNameError

_B64_CHUNK = re.compile(r"[A-Za-z0-9+,]+")


def _is_direct(ch: str) -> bool:
    return 0x20 <= ord(ch) <= 0x7E


def encode_mailbox_name(name: str) -> str:
    """Unicode mailbox name -> modified UTF-7. Raises MailboxNameError on lone surrogates."""
    out: list[str] = []
    pending: list[str] = []

    def flush() -> None:
        if not pending:
            return
        try:
            raw = "".join(pending).encode("utf-16-be")
        except UnicodeEncodeError as exc:
            raise MailboxNameError("mailbox name contains a lone surrogate") from exc
        b64 = base64.b64encode(raw).decode("ascii").rstrip("=").replace("/", ",")
        out.append(f"&{b64}-")
        pending.clear()

    for ch in name:
        if _is_direct(ch):
            flush()
            out.append("&-" if ch == "&" else ch)
        else:
            pending.append(ch)
    flush()
    return "".join(out)


def decode_mailbox_name(wire: str | bytes) -> str:
    """Modified UTF-7 -> Unicode. Raises MailboxNameError unless ``wire`` is canonical."""
    if isinstance(wire, bytes):
        try:
            wire = wire.decode("ascii")
        except UnicodeDecodeError as exc:
            raise MailboxNameError("8-bit octets in a modified UTF-7 mailbox name") from exc
    out: list[str] = []
    i = 0
    n = len(wire)
    while i < n:
        ch = wire[i]
        if not _is_direct(ch):
            raise MailboxNameError(f"character {ch!r} must be encoded")
        if ch != "&":
            out.append(ch)
            i += 1
            continue
        end = wire.find("-", i + 1)
        if end < 0:
            raise MailboxNameError("unterminated '&' shift in mailbox name")
        chunk = wire[i + 1 : end]
        i = end + 1
        if not chunk:
            out.append("&")
            continue
        if not _B64_CHUNK.fullmatch(chunk):
            raise MailboxNameError(f"invalid modified base64 {chunk[:20]!r}")
        if len(chunk) % 4 == 1:
            raise MailboxNameError("truncated modified base64")
        padded = chunk.replace(",", "/") + "=" * (-len(chunk) % 4)
        try:
            raw = base64.b64decode(padded, validate=True)
        except binascii.Error as exc:
            raise MailboxNameError("invalid modified base64") from exc
        if len(raw) % 2:
            raise MailboxNameError("modified base64 does not hold whole UTF-16 units")
        try:
            text = raw.decode("utf-16-be")
        except UnicodeDecodeError as exc:
            raise MailboxNameError("invalid UTF-16 (lone surrogate) in mailbox name") from exc
        out.append(text)
    result = "".join(out)
    if encode_mailbox_name(result) != wire:
        raise MailboxNameError("non-canonical modified UTF-7 (padding bits, ASCII in base64 "
                               "or adjacent shifts)")
    return result
