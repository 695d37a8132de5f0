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
