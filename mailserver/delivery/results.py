"""The outcome of one delivery attempt for one recipient: an SMTP reply, and who gave it.

Kept in its own module so the queue (which decides retry/bounce), the route lookup and
the remote delivery (which produce results) do not import each other.

A result is an ``SMTPReply`` (the type every layer uses for SMTP answers) plus the host
it concerns. Either the next hop's own reply (``from_reply``: "550 5.1.1 no such user"),
or a decision made here with the code we would have given (``temp``/``perm``: a DNS
timeout is "451 4.4.3", a null MX "556 5.1.10"). The queue records code, status and
``diagnostic`` per recipient (delivery/queue_store.py); a DSN quotes them (RFC 3464).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Literal

from mailserver.smtpreply import SMTPReply

DeliveryKind = Literal["sent", "temp", "perm"]

# RFC 3463 2 / RFC 2034: an enhanced code leads the reply text, followed by a space.
_ENHANCED = re.compile(r"([245])\.([0-9]{1,3})\.([0-9]{1,3})(?:\s+|$)")
_MAX_TEXT = 500  # of a host's reply kept for logs, the queue record and DSNs


@dataclass(frozen=True, slots=True)
class DeliveryResult:
    """``reply``: the SMTP reply that decides the recipient's fate. ``mx``: the host name
    it concerns ("" when no host was reached). ``received``: the reply is the next hop's
    own words (quoted verbatim in logs and DSNs), not a decision made here."""

    reply: SMTPReply
    mx: str = ""
    received: bool = False

    @property
    def kind(self) -> DeliveryKind:
        """"sent" (accepted by the next hop), "temp" (retry later), "perm" (bounce).

        RFC 5321 4.2.1: 2yz is done, 5yz will fail again; 4yz, and whatever a broken
        server sends instead of a reply we can act on (1yz, 3yz, 6yz...), is retried.
        """
        first = self.reply.code // 100
        return "sent" if first == 2 else "perm" if first == 5 else "temp"

    @property
    def status(self) -> str:
        """The RFC 3463 status a DSN's Status field needs (RFC 3464 2.3.4): the reply's
        enhanced code, or "class.0.0" when the host gave none."""
        return self.reply.enhanced or f"{_status_class(self.reply.code)}.0.0"

    @property
    def diagnostic(self) -> str:
        """One line for logs, the queue record and a DSN's Diagnostic-Code.

        A received reply as the host worded it ("550 5.1.1 no such user", or "550 no such
        user" when it gave no enhanced code); a decision of ours as its text alone, since
        the code is recorded beside it ("MX lookup for example.net failed: ...").
        """
        return str(self.reply) if self.received else self.reply.text


def temp(code: int, enhanced: str, text: str, mx: str = "", *, module: str) -> DeliveryResult:
    """Retry later: a transient failure decided by ``module`` (RFC 5321 4.2.1, 4yz)."""
    if code // 100 != 4 or not enhanced.startswith("4."):
        raise ValueError(f"not a transient reply: {code} {enhanced}")
    return DeliveryResult(SMTPReply(code, enhanced, text, module), mx)


def perm(code: int, enhanced: str, text: str, mx: str = "", *, module: str) -> DeliveryResult:
    """Bounce: a permanent failure decided by ``module`` (RFC 5321 4.2.1, 5yz)."""
    if code // 100 != 5 or not enhanced.startswith("5."):
        raise ValueError(f"not a permanent reply: {code} {enhanced}")
    return DeliveryResult(SMTPReply(code, enhanced, text, module), mx)


def from_reply(code: int, message: str, mx: str, *, module: str) -> DeliveryResult:
    """The next hop's reply ``code`` ``message`` (the text after the code, lines joined),
    as received by ``module``. Its enhanced code is taken from the text when present and
    of the reply's class: "250 5.1.1 ok" has none, its "5.1.1" stays text."""
    text = " ".join(message.split())[:_MAX_TEXT]
    enhanced = ""
    m = _ENHANCED.match(text)
    if m and m.group(1) == _status_class(code):
        enhanced = f"{m.group(1)}.{m.group(2)}.{m.group(3)}"
        text = text[m.end():]
    return DeliveryResult(SMTPReply(code, enhanced, text, module), mx, received=True)


def _status_class(code: int) -> str:
    """The RFC 3463 class for reply ``code``: its first digit; "4" (retry) for a code
    outside 200-599, which no server should send."""
    return str(code)[0] if 200 <= code < 600 else "4"
