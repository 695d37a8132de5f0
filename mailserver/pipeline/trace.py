"""Trace headers: Received (RFC 5321 4.4), Return-Path and Delivered-To, and hop counting."""

from __future__ import annotations

import email.utils
import re
import time

from ..address import Address
from ..message import header_end

_RECEIVED = re.compile(rb"^received[ \t]*:", re.IGNORECASE | re.MULTILINE)


def header_section(data: bytes) -> bytes:
    """The header block of a message, up to the empty line that ends it (RFC 5322 2.1),
    its last line end included; all of ``data`` if there is none.

    The message module's rule: a bare-LF empty line ends the header too. That is where
    the next hop sees the end once remote delivery has made every line end CRLF, and
    where DKIM and DMARC read the From this is used to check.
    """
    return data[: header_end(data)]


def count_received(data: bytes) -> int:
    """Received headers in the header section: loop protection (RFC 5321 6.3)."""
    return len(_RECEIVED.findall(header_section(data)))


_date_cache: tuple[int, str] = (-1, "")


def _rfc5322_date(when: float) -> str:
    """formatdate() is slow enough to show in profiles; a date changes once a second."""
    global _date_cache
    second = int(when)
    if _date_cache[0] != second:
        _date_cache = (second, email.utils.formatdate(second, localtime=True))
    return _date_cache[1]


def _clean(text: str) -> str:
    # Everything here may come from the client: keep it on one line and inside comments.
    return re.sub(r"[^\x21-\x7e]", "?", text).replace("(", "?").replace(")", "?")[:255]


def received_header(
    *,
    helo: str,
    client_ip: str,
    hostname: str,
    message_id: str,
    protocol: str,
    tls_version: str | None = None,
    tls_cipher: str | None = None,
    recipient: str | None = None,
    hide_client: bool = False,
    when: float | None = None,
) -> bytes:
    """One folded ``Received:`` line.

    ``protocol`` is the RFC 3848 "with" keyword: ESMTP, ESMTPS, ESMTPA, ESMTPSA.
    ``recipient`` is named only for single-recipient messages (privacy of the others).
    """
    date = _rfc5322_date(when if when is not None else time.time())
    if hide_client:
        source = "from authenticated-user"
    else:
        ip = f"IPv6:{client_ip}" if ":" in client_ip else client_ip
        source = f"from {_clean(helo)} ([{ip}])"
    lines = [f"Received: {source}", f"\tby {hostname} (pymaild) with {protocol} id {message_id}"]
    if tls_version:
        lines.append(f"\t(using {_clean(tls_version)} with cipher {_clean(tls_cipher or 'unknown')})")
    if recipient:
        lines.append(f"\tfor <{_clean(recipient)}>")
    lines[-1] += ";"
    lines.append(f"\t{date}")
    return ("\r\n".join(lines) + "\r\n").encode("ascii")


def return_path_header(sender: Address | None) -> bytes:
    return f"Return-Path: <{'' if sender is None else sender}>\r\n".encode()


def delivered_to_header(address: str) -> bytes:
    return f"Delivered-To: {address}\r\n".encode()
