"""One password check for every protocol that logs in (submission, IMAP).

Throttle first (per IP and per account), then the stored hash read off the event loop,
then argon2 verification (which hashes even for unknown users, so timing does not reveal
accounts), then the failure counted, the metric bumped and the line fail2ban reads
logged. Each protocol turns the result into its own reply.
"""

from __future__ import annotations

import asyncio
import logging
from enum import Enum

from mailserver.auth.passwords import PasswordChecker
from mailserver.auth.ratelimit import AuthThrottle
from mailserver.auth.store import AccountStore
from mailserver.metrics import Metrics


class AuthResult(Enum):
    OK = "ok"
    INVALID = "invalid"
    THROTTLED = "throttled"


def loggable(text: str, limit: int = 320) -> str:
    """Client-supplied text for a log line: no control characters, no spaces, bounded.

    A newline in a user name would otherwise start a forged log line, e.g. an
    "auth failed client=<admin's IP>" that fail2ban would act on.
    """
    cleaned = "".join(c if c.isprintable() and not c.isspace() else f"\\x{ord(c):02x}" for c in text)
    return cleaned[:limit]


class LoginChecker:
    """Checks logins for one protocol; ``log`` is that protocol's logger (fail2ban's filter
    matches ``pymaild.submission`` and ``pymaild.imap``)."""

    def __init__(self, store: AccountStore, passwords: PasswordChecker, throttle: AuthThrottle,
                 metrics: Metrics, log: logging.Logger) -> None:
        self.store = store
        self.passwords = passwords
        self.throttle = throttle
        self.metrics = metrics
        self.log = log

    async def check(self, ip: str, user: str, password: str, listener: str) -> AuthResult:
        """``user`` as normalised by the caller (stripped, lower case)."""
        shown = loggable(user)
        if self.throttle.ip_blocked(ip) or self.throttle.account_blocked(user):
            self.log.warning("auth throttled client=%s user=%s", ip, shown)
            return AuthResult.THROTTLED
        stored = await asyncio.to_thread(self.store.password_hash, user) if "@" in user else None
        if not await self.passwords.verify(stored, password):
            self.throttle.failure(ip, user)
            self.metrics.inc("auth_failures_total", listener=listener)
            self.log.warning("auth failed client=%s user=%s", ip, shown)  # fail2ban matches this line
            return AuthResult.INVALID
        return AuthResult.OK
