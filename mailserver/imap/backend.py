"""What every IMAP session of the daemon shares: accounts, passwords, limits, the hub."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

from mailserver.auth.cache import VerifiedCache
from mailserver.auth.login import AuthResult, LoginChecker, LoginPolicy
from mailserver.auth.passwords import PasswordChecker
from mailserver.auth.ratelimit import AuthThrottle
from mailserver.auth.store import AccountStore
from mailserver.metrics import Metrics
from mailserver.storage.api import ChangeNotifier, MailboxStore
from mailserver.storage.maildirpp import create_maildirpp

from .framing import Limits as FramingLimits
from .hub import MailboxHub
from .mailboxes import MailboxTree

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
    max_command_size: int = 1024 * 1024  # any command but APPEND, literals included
    max_literals: int = 1000  # per command

    def framing(self) -> FramingLimits:
        return FramingLimits(max_line_length=self.max_line_length, max_literal=self.max_append_size,
                             max_small_command=self.max_command_size, max_literals=self.max_literals)


class IMAPBackend:
    def __init__(self, *, hostname: str, store: AccountStore, passwords: PasswordChecker,
                 throttle: AuthThrottle, limits: IMAPLimits | None = None, hub: ChangeNotifier | None = None,
                 metrics: Metrics | None = None, login_cache: VerifiedCache | None = None,
                 login_policy: LoginPolicy | None = None) -> None:
        self.hostname = hostname
        self.store = store
        self.passwords = passwords
        self.throttle = throttle
        self.limits = limits or IMAPLimits()
        self.hub: ChangeNotifier = hub or MailboxHub()
        self.metrics = metrics or Metrics()
        self.sessions_per_user: dict[str, int] = {}
        self.logins = LoginChecker(store, passwords, throttle, self.metrics, log, cache=login_cache,
                                   policy=login_policy)

    async def authenticate(self, ip: str, user: str, password: str, listener: str) -> AuthResult:
        return await self.logins.check(ip, user.strip().lower(), password, listener)

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

    def mailbox_store(self, user: str) -> MailboxStore:
        """The account's folders (blocks: creates a missing Maildir++ root). The one place
        that picks the store implementation (:mod:`mailserver.storage.api`)."""
        return MailboxTree(self.mailbox_root(user), hostname=self.hostname)
