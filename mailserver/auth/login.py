"""One password check for every protocol that logs in (submission, IMAP).

The order matters:

1. the throttle (ratelimit.py): an address over its budget, or over its budget for this
   account, is refused here, before anything else (no database read, no hash, no cache
   lookup: an over-budget client learns nothing about its guess); an address that
   already failed on an account under attack waits for the account's next check slot
   (at most ``max_wait``) or is refused; one over a budget only because of attempts still
   in progress waits for one of them to end (at most ``max_wait``);
2. the stored hash, read off the event loop (at every login, so a password changed or an
   account removed by another process counts at once);
3. the cache of successful verifications (cache.py): a hit is a success without a hash;
   identical checks running at the same moment share one hash;
4. argon2 verification, which hashes even for unknown users, so timing does not reveal
   accounts. A success is cached (and the hash redone if the parameters changed); a failure
   is counted, delayed by ``failure_delay``, and logged in the line fail2ban reads.

A miss in step 3 is never answered faster than a full check, and steps 1 and 3 come in
this order, so the cache is not a guessing oracle. Each protocol turns the result into
its own reply.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from dataclasses import dataclass
from enum import Enum

from mailserver.auth.cache import VerifiedCache
from mailserver.auth.passwords import PasswordChecker
from mailserver.auth.ratelimit import Attempt, AuthThrottle, Refusal
from mailserver.auth.store import AccountStore
from mailserver.metrics import Metrics


class AuthResult(Enum):
    OK = "ok"
    INVALID = "invalid"
    THROTTLED = "throttled"


@dataclass(frozen=True)
class LoginPolicy:
    failure_delay: float = 0.5  # before answering a failed or throttled attempt
    max_failures_per_connection: int = 3  # then the protocol answers, and closes


def loggable(text: str, limit: int = 320) -> str:
    """Client-supplied text for a log line: no control characters, no spaces, bounded.

    A newline in a user name would otherwise start a forged log line, e.g. an
    "auth failed client=<admin's IP>" that fail2ban would act on.
    """
    cleaned = "".join(c if c.isprintable() and not c.isspace() else f"\\x{ord(c):02x}" for c in text)
    return cleaned[:limit]


class LoginChecker:
    """Checks logins for one protocol; ``log`` is that protocol's logger (fail2ban's filter
    matches ``pymaild.submission`` and ``pymaild.imap``). The throttle, the cache and the
    password checker are shared by all protocols."""

    def __init__(self, store: AccountStore, passwords: PasswordChecker, throttle: AuthThrottle,
                 metrics: Metrics, log: logging.Logger, *, cache: VerifiedCache | None = None,
                 policy: LoginPolicy | None = None) -> None:
        self.store = store
        self.passwords = passwords
        self.throttle = throttle
        self.metrics = metrics
        self.log = log
        self.cache = cache if cache is not None else VerifiedCache()
        self.policy = policy or LoginPolicy()
        self._inflight: dict[bytes, asyncio.Future[bool]] = {}
        # Set (and replaced) whenever an attempt ends: what BUSY attempts wait for.
        self._ended = asyncio.Event()

    async def check(self, ip: str, user: str, password: str, listener: str) -> AuthResult:
        """``user`` as normalised by the caller (stripped, lower case)."""
        shown = loggable(user)
        attempt = await self._begin(ip, user)
        if attempt.refused is not None:
            self.metrics.inc("auth_checks_total", result="throttled")
            self.log.warning("auth throttled client=%s user=%s", ip, shown)
            await self._delay()
            return AuthResult.THROTTLED
        ok = False
        try:
            if attempt.wait > 0:
                await asyncio.sleep(attempt.wait)
            stored = await asyncio.to_thread(self.store.password_hash, user) if "@" in user else None
            if stored is None:
                await self.passwords.verify(None, password)  # as long as a wrong password
            elif self.cache.hit(user, password, stored):
                ok = True
                self.metrics.inc("auth_checks_total", result="cached")
            else:
                ok, hashed = await self._verify_once(user, password, stored)
                if ok:
                    self.metrics.inc("auth_checks_total", result="ok" if hashed else "cached")
        finally:
            # Cancelled half way (the client left): counted as a failure, so hanging up
            # is no way around the budget.
            (self.throttle.succeeded if ok else self.throttle.failed)(attempt)
            self._ended.set()
            self._ended = asyncio.Event()
        if ok:
            return AuthResult.OK
        self.metrics.inc("auth_checks_total", result="failed")
        self.metrics.inc("auth_failures_total", listener=listener)
        self.log.warning("auth failed client=%s user=%s", ip, shown)  # fail2ban matches this line
        await self._delay()
        return AuthResult.INVALID

    async def _begin(self, ip: str, user: str) -> Attempt:
        """The throttle's answer; over a budget only because of attempts still in progress
        (many devices behind one address logging in at once), wait for those to end, at
        most the throttle's ``max_wait``, then ask again. Still busy then: refused."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.throttle.max_wait
        while True:
            attempt = self.throttle.begin(ip, user)
            left = deadline - loop.time()
            if attempt.refused is not Refusal.BUSY or left <= 0:
                return attempt
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._ended.wait(), left)

    async def _verify_once(self, user: str, password: str, stored: str) -> tuple[bool, bool]:
        """Verify, sharing the work with identical checks already running (Thunderbird
        opens five or six connections at once with the same password: one hash, not six).
        Returns (ok, whether this caller started the hash)."""
        key = self.cache.digest(user, password, stored)
        task = self._inflight.get(key)
        if task is not None:
            return await asyncio.shield(task), False
        task = asyncio.ensure_future(self._verify_and_remember(user, password, stored))
        self._inflight[key] = task
        task.add_done_callback(lambda _: self._inflight.pop(key, None))
        # shield: a client that leaves must not cancel the check others wait for.
        return await asyncio.shield(task), True

    async def _verify_and_remember(self, user: str, password: str, stored: str) -> bool:
        if not await self.passwords.verify(stored, password):
            return False
        self.cache.add(user, password, await self._upgrade(user, password, stored))
        return True

    async def _delay(self) -> None:
        if self.policy.failure_delay > 0:
            await asyncio.sleep(self.policy.failure_delay)

    async def _upgrade(self, user: str, password: str, stored: str) -> str:
        """After a verified login: a hash made with weaker (or other) parameters than the
        current policy is replaced, unless the password changed meanwhile. Returns the
        hash now stored."""
        if not await self.passwords.needs_rehash(stored):
            return stored
        try:
            fresh = await self.passwords.hash(password)
            if await asyncio.to_thread(self.store.replace_password_hash, user, stored, fresh):
                self.log.info("password rehashed with the current parameters user=%s", loggable(user))
                return fresh
        except Exception as exc:  # an upgrade must never fail a good login
            self.log.error("password hash upgrade failed user=%s: %s", loggable(user), exc)
        return stored
