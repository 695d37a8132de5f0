"""The outcome of one delivery attempt for one recipient, shared by the queue and remote delivery.

Kept in its own module so the queue (which decides retry/bounce) and the remote delivery
(which produces results) do not import each other.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

DeliveryKind = Literal["sent", "temp", "perm"]


@dataclass(frozen=True, slots=True)
class DeliveryResult:
    """``kind``: "sent" (accepted by the next hop), "temp" (retry later), "perm" (bounce).

    ``code`` is the SMTP reply code (or the one we would have given, e.g. 451 for a DNS
    timeout), ``status`` the RFC 3463 enhanced status ("4.4.1"), ``text`` a one-line
    human explanation for logs and DSNs, ``mx`` the host name that gave the answer
    ("" when no host was reached).
    """

    kind: DeliveryKind
    code: int
    status: str
    text: str
    mx: str = ""
