"""The envelope and message that travel through every pipeline stage."""

from __future__ import annotations

import os
import secrets
import time
from dataclasses import dataclass, field


def new_message_id() -> str:
    """A short, sortable, unique id used in logs, Received headers and queue files."""
    # Time prefix makes ids sort by arrival; the random tail keeps them unique across
    # processes and restarts without shared state.
    return f"{int(time.time() * 1000):x}{os.getpid() & 0xFFFF:04x}{secrets.token_hex(4)}"


@dataclass(slots=True)
class Envelope:
    """The SMTP envelope: who the transaction says it is from and to, and where it came from."""

    mail_from: str  # "" is the null reverse-path <>
    rcpt_to: list[str] = field(default_factory=list)
    client_ip: str = ""
    client_port: int = 0
    helo: str = ""
    tls: bool = False
    auth_user: str | None = None


@dataclass(slots=True)
class Message:
    """Envelope plus the raw RFC 5322 bytes (CRLF line endings, not dot-stuffed)."""

    envelope: Envelope
    data: bytes
    id: str = field(default_factory=new_message_id)
    received_at: float = field(default_factory=time.time)


# RFC 5322 2.1.1: "Each line of characters MUST be no more than 998 characters ... excluding
# the CRLF". RFC 5321 4.5.3.1.6 says the same of SMTP text lines (1000 with CRLF).
MAX_LINE_OCTETS = 998


def has_long_line(data: bytes, limit: int = MAX_LINE_OCTETS) -> bool:
    """Is any line of ``data`` longer than ``limit`` octets, its CRLF not counted?

    Exact for CRLF line ends (what is relayed); a bare-LF line is allowed one octet more.
    Jumps from the last LF of one ``limit + 2``-octet window to the next, so a message of
    short lines is checked in about len/limit C-level searches, not one step per line.
    """
    span = limit + 2  # the longest allowed line with its CRLF
    n, pos = len(data), 0
    while n - pos > span:
        nl = data.rfind(b"\n", pos, pos + span)
        if nl < 0:
            return True
        pos = nl + 1
    nl = data.rfind(b"\n", pos)
    tail = n - (nl + 1 if nl >= 0 else pos)  # an unterminated last line
    if tail and data.endswith(b"\r"):
        tail -= 1
    return tail > limit


def transport_problem(data: bytes) -> str | None:
    """Why ``data`` must not be handed to another mail server as it is, or None.

    A NUL octet is allowed by no SMTP body type we offer or use (RFC 5321 2.3.8, RFC 6152:
    not even 8BITMIME), and a line over 998 octets breaks RFC 5322 and is cut or refused
    by the next hop. Both checks are C-level scans (``in``, ``rfind``).
    """
    if b"\0" in data:
        return "contains a NUL octet"
    if has_long_line(data):
        return f"has a line longer than {MAX_LINE_OCTETS} octets"
    return None
