"""What every IMAP session of the daemon shares: accounts, passwords, limits, the hub."""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass
from enum import Enum
from pathlib import Path

from mailserver.auth.passwords import PasswordChecker
from mailserver.auth.ratelimit import AuthThrottle
from mailserver.auth.store import AccountStore
from mailserver.metrics import Metrics
from mailserver.storage.maildirpp import create_maildirpp

from .framing import Limits as FramingLimits
from .hub import MailboxHub

log = logging.getLogger("pymaild.imap")


@dataclass(frozen=True)
class IMAPLimits:
    max_line_length: int = 65536
    max_append_size: int = 64 * 1024 * 1024
    login_timeout: float = 120.0  # before authentication
    idle_timeout: float = 1800.0  # autologout without a command (RFC 3501 5.4: at least 30 min)
    idle_keepalive: float = 120.0  # "* OK Still here" in IDLE, for NATs that forget idle flows
    max_connections: int = 5000
    max_connections_per_ip: int = 100
    max_sessions_per_user: int = 50
    max_errors: int = 50  # BAD answers in one session before BYE
    tls_handshake_timeout: float = 30.0
    drain_timeout: float = 5.0

    def framing(self) -> FramingLimits:
        return FramingLimits(max_line_length=self.max_line_length, max_literal=self.max_append_size)


class AuthResult(Enum):
    OK = "ok"
    INVALID = "invalid"
    THROTTLED = "throttled"


def loggable(text: str) -> str:
    """A client-chosen name, safe for one log line (fail2ban reads these lines)."""
    out = "".join(ch if ch.isprintable() and not ch.isspace() else f"\\x{ord(ch):02x}" for ch in text)
    return out[:200]


class IMAPBackend:
    def __init__(self, *, hostname: str, store: AccountStore, passwords: PasswordChecker,
                 throttle: AuthThrottle, limits: IMAPLimits | None = None, hub: MailboxHub | None = None,
                 metrics: Metrics | None = None) -> None:
        self.hostname = hostname
        self.store = store
        self.passwords = passwords
        self.throttle = throttle
        self.limits = limits or IMAPLimits()
        self.hub = hub or MailboxHub()
        self.metrics = metrics or Metrics()
        self.sessions_per_user: dict[str, int] = {}

    async def authenticate(self, ip: str, user: str, password: str, listener: str) -> AuthResult:
        user = user.strip().lower()
        shown = loggable(user)
        if self.throttle.ip_blocked(ip) or self.throttle.account_blocked(user):
            log.warning("auth throttled client=%s user=%s", ip, shown)
            return AuthResult.THROTTLED
        stored = await asyncio.to_thread(self.store.password_hash, user) if "@" in user else None
        ok = await self.passwords.verify(stored, password)  # hashes even for unknown users
        if not ok:
            self.throttle.failure(ip, user)
            self.metrics.inc("auth_failures_total", listener=listener)
            log.warning("auth failed client=%s user=%s", ip, shown)  # fail2ban matches this line
            return AuthResult.INVALID
        return AuthResult.OK

    def acquire_session(self, user: str) -> bool:
        n = self.sessions_per_user.get(user, 0)
        if n >= self.limits.max_sessions_per_user:
            return False
        self.sessions_per_user[user] = n + 1
        return True

    def release_session(self, user: str) -> None:
        n = self.sessions_per_user.get(user, 1) - 1
        if n <= 0:
            self.sessions_per_user.pop(user, None)
        else:
            self.sessions_per_user[user] = n

    def mailbox_root(self, user: str) -> Path:
        """The account's Maildir++ root, created (with the special-use folders) if missing."""
        root = self.store.maildir_path(user)
        if not (root / "cur").is_dir():
            create_maildirpp(root)
        return root
