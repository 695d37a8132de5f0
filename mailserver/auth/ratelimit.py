"""Failed-login throttling, sans-I/O (time is injected; the caller does any waiting).

Shared by SMTP submission and IMAP. Three tables, each a sliding window of failures:

* **per client address** (an IPv6 address counts as its /64): over ``max_failures_per_ip``
  the address is refused, whatever account it names, without a password check;
* **per (address, account)**: over ``max_failures_per_pair`` that address may no longer
  try that account (a phone with an old password stops there, before it uses up the
  address budget of everyone behind the same NAT);
* **per account**, from all addresses: past ``account_delay_after`` failures the account
  is "under pressure". Then attempts from addresses that already failed on it (*suspect*
  addresses) are spaced out: each takes the account's next check slot, the slots being
  ``account_delay * account_delay_growth ** (failures - account_delay_after)`` apart (at
  most ``account_delay_max``). An attempt whose slot is more than ``max_wait`` away is
  refused without a password check. Attempts from addresses that have not failed on
  the account are never delayed by it.

Why this shape (docs/how-it-works.md, "Failed logins", has the long version): nothing
an attacker does from other addresses can make the owner wait or be refused, because the
owner's address is not suspect; the password checks an attacker gets for one account are
at most one per address it brings (per window) plus one per slot of the suspect lane,
which grows to one per ``account_delay_max``. A refused attempt never costs a hash.

An attempt is counted against the address and (address, account) budgets from the moment
it starts (``begin``) until it is known to have succeeded, so a client cannot overrun a
budget by sending many attempts at once on parallel connections. An attempt that is over
a budget only because of such attempts in progress is not refused but told to wait
(``Refusal.BUSY``, retry after one of them ends): twelve devices or a webmail behind one
address logging in at the same moment all get in, one budget's worth at a time, while
a guesser's parallel attempts are refused as soon as the earlier ones have failed. A
success removes that reservation and clears the
(address, account) record (the failures there were the owner's own typos); it does not
clear the address record (an attacker holding one valid password must not reset its
budget for guessing others) nor the account record.

Every table is an LRU map bounded by ``max_entries``; records whose window has passed
are dropped as they are met.
"""

from __future__ import annotations

import enum
import ipaddress
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field


class Refusal(enum.Enum):
    ADDRESS = "address"  # the client address is over its budget
    PAIR = "address+account"  # this address is over its budget for this account
    ACCOUNT = "account"  # the account's suspect lane has no slot within max_wait
    # Not a refusal yet: over a budget only counting attempts still in progress; begin()
    # again once one of them has ended (the caller waits at most max_wait for that).
    BUSY = "busy"


class _Record:
    """Failure times (oldest first, at most the table's ``maxlen``), attempts in progress,
    and for accounts the next suspect check slot. Small: ~200 bytes with one failure."""

    __slots__ = ("failures", "next_slot", "pending")

    def __init__(self) -> None:
        self.failures: list[float] = []
        self.pending = 0
        self.next_slot = 0.0


@dataclass
class Attempt:
    """One login attempt admitted by :meth:`AuthThrottle.begin`, or refused."""

    ip: str
    account: str
    refused: Refusal | None = None
    wait: float = 0.0  # seconds to wait before checking the password
    done: bool = field(default=False, repr=False)


def address_key(ip: str) -> str:
    """The throttle key of a client address: IPv4 as is, IPv6 as its /64 (one customer
    gets a whole /64, so counting single IPv6 addresses would count nothing)."""
    try:
        addr = ipaddress.ip_address(ip)
    except ValueError:
        return ip
    if isinstance(addr, ipaddress.IPv6Address):
        if addr.ipv4_mapped is not None:
            return str(addr.ipv4_mapped)
        return str(ipaddress.IPv6Network((addr, 64), strict=False))
    return ip


class _Table:
    def __init__(self, maxlen: int, max_entries: int) -> None:
        self.maxlen = maxlen
        self.max_entries = max_entries
        self.records: OrderedDict[str, _Record] = OrderedDict()

    def get(self, key: str, horizon: float, now: float) -> _Record | None:
        rec = self.records.get(key)
        if rec is None:
            return None
        _expire(rec, horizon)
        if not rec.failures and rec.pending <= 0 and rec.next_slot <= now:
            del self.records[key]
            return None
        return rec

    def touch(self, key: str) -> _Record:
        rec = self.records.get(key)
        if rec is None:
            rec = self.records[key] = _Record()
            while len(self.records) > self.max_entries:
                self.records.popitem(last=False)  # least recently used
        else:
            self.records.move_to_end(key)
        return rec

    def add_failure(self, key: str, when: float) -> None:
        failures = self.touch(key).failures
        failures.append(when)
        if len(failures) > self.maxlen:
            del failures[0]

    def count(self, key: str, horizon: float, now: float) -> int:
        rec = self.get(key, horizon, now)
        return len(rec.failures) + rec.pending if rec else 0

    def counts(self, key: str, horizon: float, now: float) -> tuple[int, int]:
        """(failures in the window, attempts in progress)."""
        rec = self.get(key, horizon, now)
        return (len(rec.failures), rec.pending) if rec else (0, 0)

    def prune(self, horizon: float, now: float, n: int = 2) -> None:
        """Drop up to ``n`` stale records from the least recently used end."""
        for _ in range(n):
            if not self.records:
                return
            key = next(iter(self.records))
            if self.get(key, horizon, now) is not None:
                return


def _expire(rec: _Record, horizon: float) -> None:
    failures = rec.failures
    if failures and failures[0] < horizon:
        rec.failures = [t for t in failures if t >= horizon]


class AuthThrottle:
    def __init__(
        self,
        *,
        max_failures_per_ip: int = 10,
        max_failures_per_pair: int = 5,
        account_delay_after: int = 10,
        window: float = 900.0,
        account_delay: float = 1.0,
        account_delay_growth: float = 2.0,
        account_delay_max: float = 60.0,
        max_wait: float = 1.0,
        max_entries: int = 50_000,
        clock: Callable[[], float] = time.monotonic,
        # Old name of account_delay_after (until 0.x the account was refused past it).
        max_failures_per_account: int | None = None,
    ) -> None:
        self.max_per_ip = max_failures_per_ip
        self.max_per_pair = max_failures_per_pair
        self.account_delay_after = (account_delay_after if max_failures_per_account is None
                                    else max_failures_per_account)
        self.window = window
        self.account_delay = account_delay
        self.account_delay_growth = account_delay_growth
        self.account_delay_max = account_delay_max
        self.max_wait = max_wait
        self.clock = clock
        self._ip = _Table(max_failures_per_ip + 1, max_entries)
        self._pair = _Table(max_failures_per_pair + 1, max_entries)
        # Enough entries to reach account_delay_max and a margin; older ones don't matter.
        self._account = _Table(self.account_delay_after + 64, max_entries)

    # ---------------------------------------------------------------- queries

    def _horizon(self) -> tuple[float, float]:
        now = self.clock()
        return now - self.window, now

    def ip_blocked(self, ip: str) -> bool:
        """Whether the address is over its budget (refuse it at connect)."""
        horizon, now = self._horizon()
        return self._ip.count(address_key(ip), horizon, now) >= self.max_per_ip

    def account_failures(self, account: str) -> int:
        horizon, now = self._horizon()
        rec = self._account.get(account.lower(), horizon, now)
        return len(rec.failures) if rec else 0

    def spacing(self, failures: int) -> float:
        """Seconds between suspect checks of an account with ``failures`` recent failures."""
        over = failures - self.account_delay_after
        if over < 0:
            return 0.0
        try:
            delay = self.account_delay * self.account_delay_growth ** over
        except OverflowError:
            delay = self.account_delay_max
        return min(self.account_delay_max, delay)

    def table_sizes(self) -> tuple[int, int, int]:
        return len(self._ip.records), len(self._pair.records), len(self._account.records)

    # ---------------------------------------------------------------- attempts

    def begin(self, ip: str, account: str) -> Attempt:
        """Admit (maybe after ``wait`` seconds) or refuse one login attempt. An admitted
        attempt must end with :meth:`succeeded` or :meth:`failed`."""
        horizon, now = self._horizon()
        ip = address_key(ip)
        account = account.lower()
        pair = f"{ip} {account}"
        for table in (self._ip, self._pair, self._account):
            table.prune(horizon, now)
        attempt = Attempt(ip, account)
        ip_failures, ip_pending = self._ip.counts(ip, horizon, now)
        if ip_failures >= self.max_per_ip:
            attempt.refused, attempt.done = Refusal.ADDRESS, True
            return attempt
        pair_failures, pair_pending = self._pair.counts(pair, horizon, now)
        pair_count = pair_failures + pair_pending
        if pair_failures >= self.max_per_pair:
            attempt.refused, attempt.done = Refusal.PAIR, True
            return attempt
        if ip_failures + ip_pending >= self.max_per_ip or pair_count >= self.max_per_pair:
            attempt.refused, attempt.done = Refusal.BUSY, True
            return attempt
        acc = self._account.get(account, horizon, now)
        if pair_count > 0 and acc is not None:  # suspect: this address failed on it before
            spacing = self.spacing(len(acc.failures))
            if spacing > 0:
                slot = max(now, acc.next_slot)
                if slot - now > self.max_wait:
                    attempt.refused, attempt.done = Refusal.ACCOUNT, True
                    return attempt
                acc.next_slot = slot + spacing
                attempt.wait = slot - now
        self._ip.touch(ip).pending += 1
        self._pair.touch(pair).pending += 1
        self._account.touch(account).pending += 1
        return attempt

    def succeeded(self, attempt: Attempt) -> None:
        if attempt.done:
            return
        attempt.done = True
        self._release(self._ip, attempt.ip)
        self._release(self._account, attempt.account)
        self._pair.records.pop(f"{attempt.ip} {attempt.account}", None)

    def failed(self, attempt: Attempt) -> None:
        if attempt.done:
            return
        attempt.done = True
        now = self.clock()
        pair = f"{attempt.ip} {attempt.account}"
        for table, key in ((self._ip, attempt.ip), (self._pair, pair), (self._account, attempt.account)):
            self._release(table, key)
            table.add_failure(key, now)

    def failure(self, ip: str, account: str | None) -> None:
        """Count a failure that needed no password check (e.g. a foreign authzid)."""
        attempt = Attempt(address_key(ip), (account or "").lower())
        if account:
            self.failed(attempt)
        else:
            attempt.done = True
            self._ip.add_failure(attempt.ip, self.clock())

    @staticmethod
    def _release(table: _Table, key: str) -> None:
        rec = table.records.get(key)
        if rec is not None and rec.pending > 0:
            rec.pending -= 1
