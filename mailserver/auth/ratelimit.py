"""Failed-login throttling per client IP and per account (sliding window, in memory).

Shared by SMTP submission and (later) IMAP: a client that fails too often is refused for
a while, whichever account it tries, and an account under attack is protected from every
address at once. Successful logins do not clear the IP's record (an attacker holding one
valid password must not reset its budget for guessing others).
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable


class AuthThrottle:
    def __init__(
        self,
        *,
        max_failures_per_ip: int = 10,
        max_failures_per_account: int = 10,
        window: float = 900.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.max_per_ip = max_failures_per_ip
        self.max_per_account = max_failures_per_account
        self.window = window
        self.clock = clock
        self._ip: dict[str, deque[float]] = {}
        self._account: dict[str, deque[float]] = {}

    def _recent(self, table: dict[str, deque[float]], key: str) -> int:
        entries = table.get(key)
        if not entries:
            return 0
        horizon = self.clock() - self.window
        while entries and entries[0] < horizon:
            entries.popleft()
        if not entries:
            del table[key]
            return 0
        return len(entries)

    def ip_blocked(self, ip: str) -> bool:
        return self._recent(self._ip, ip) >= self.max_per_ip

    def account_blocked(self, account: str) -> bool:
        return self._recent(self._account, account.lower()) >= self.max_per_account

    def failure(self, ip: str, account: str | None) -> None:
        now = self.clock()
        self._ip.setdefault(ip, deque(maxlen=self.max_per_ip * 2)).append(now)
        if account:
            self._account.setdefault(account.lower(), deque(maxlen=self.max_per_account * 2)).append(now)
        if len(self._ip) > 100_000:  # bound memory under a distributed attack
            self._ip.clear()
        if len(self._account) > 100_000:
            self._account.clear()
