"""Password hashing with argon2id (argon2-cffi).

Production uses argon2id with m=19 MiB, t=2, p=1: OWASP's current recommendation (Password
Storage Cheat Sheet, first of its equivalent argon2id settings). About 20-25 ms and 19 MiB
per hash on our 2-core machines, against 180 ms (64 MiB, four threads) for argon2-cffi's
default RFC 9106 "low memory" profile we used before: a cold login is cheap enough to
serve a mail client's five connections at once, and a guesser with a GPU still pays
19 MiB of memory per guess, which is what argon2 is for. p=1 because the daemon already
runs one verification per core (PasswordChecker), so threads inside a hash buy nothing.

Every hash records its own parameters, so hashes made with other parameters (the old
default, or cheap ones in tests) still verify; :func:`needs_rehash` tells when a stored
hash differs from the current policy, and a successful login then upgrades it
(login.py).

In the daemon, use :class:`PasswordChecker`: a verification blocks a CPU for ~25 ms, so
it must run off the event loop and with a cap on how many run at once.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import threading
from collections.abc import Callable
from typing import Any, TypeVar

from argon2 import PasswordHasher, Type
from argon2.exceptions import InvalidHashError, VerificationError

T = TypeVar("T")

# argon2id, OWASP: m=19 MiB (19456 KiB), t=2, p=1. See the module docstring.
TIME_COST = 2
MEMORY_COST_KIB = 19456
PARALLELISM = 1


def make_hasher(
    *, time_cost: int = TIME_COST, memory_cost_kib: int = MEMORY_COST_KIB, parallelism: int = PARALLELISM
) -> PasswordHasher:
    """An argon2id hasher with the given cost. Tests use e.g. ``make_hasher(time_cost=1,
    memory_cost_kib=8, parallelism=1)`` (~0.05 ms) where hashing is not the subject."""
    return PasswordHasher(
        time_cost=time_cost,
        memory_cost=memory_cost_kib,
        parallelism=parallelism,
        type=Type.ID,
    )


DEFAULT_HASHER = make_hasher()


def hash_password(pw: str, hasher: PasswordHasher | None = None) -> str:
    """Hash ``pw``; returns an encoded ``$argon2id$v=19$m=...,t=...,p=...$salt$hash``."""
    return (hasher or DEFAULT_HASHER).hash(pw)


def verify_password(hash: str, pw: str) -> bool:
    """True if ``pw`` matches ``hash``; False on mismatch or on any malformed input.

    The comparison inside argon2 is constant-time. Never raises for bad data: a corrupt
    row in the database must look like a wrong password, not crash the session.
    """
    if not isinstance(hash, str) or not isinstance(pw, str):
        return False
    try:
        # The parameters come from the hash itself, so any hasher instance will do.
        return DEFAULT_HASHER.verify(hash, pw)
    except (VerificationError, InvalidHashError, UnicodeError, TypeError, ValueError):
        return False


def needs_rehash(hash: str, hasher: PasswordHasher | None = None) -> bool:
    """True if ``hash`` was made with other parameters than ``hasher`` (after a
    successful login the caller may then store a fresh hash)."""
    try:
        return (hasher or DEFAULT_HASHER).check_needs_rehash(hash)
    except (InvalidHashError, ValueError):
        return True


class PasswordChecker:
    """Async password verification for the daemon, off the event loop and capped.

    At most ``max_concurrent`` hashes run at any moment (each takes 19 MiB and a CPU),
    including ones whose caller was cancelled meanwhile: the slot is released when the
    thread finishes, not when the waiter gives up. Waiters queue on a semaphore.

    ``verify(None, pw)`` checks against a dummy hash and returns False, so an unknown
    user takes as long as a wrong password (no account enumeration by timing).
    """

    def __init__(self, max_concurrent: int = 2, hasher: PasswordHasher | None = None) -> None:
        if max_concurrent < 1:
            raise ValueError("max_concurrent must be at least 1")
        self.max_concurrent = max_concurrent
        self.hasher = hasher or DEFAULT_HASHER
        self._sem: asyncio.Semaphore | None = None
        # Own threads: hashing must not starve the default executor that other
        # to_thread() calls (SQLite lookups, Maildir writes) share, nor be starved by it.
        self._executor = concurrent.futures.ThreadPoolExecutor(
            max_workers=max_concurrent, thread_name_prefix="argon2"
        )
        self._dummy_hash: str | None = None
        self._dummy_lock = threading.Lock()

    async def verify(self, hash: str | None, pw: str) -> bool:
        """True if ``pw`` matches ``hash``; None means "no such user" (always False)."""
        if hash is None:
            await self._run(self._verify_dummy, pw)
            return False
        return await self._run(verify_password, hash, pw)

    async def hash(self, pw: str) -> str:
        """Hash a new password with this checker's parameters, off the event loop."""
        return await self._run(hash_password, pw, self.hasher)

    async def needs_rehash(self, hash: str) -> bool:
        """Cheap (no hashing): whether ``hash`` is weaker than this checker's policy."""
        return needs_rehash(hash, self.hasher)

    def close(self) -> None:
        """Stop the worker threads (after running queued work)."""
        self._executor.shutdown(wait=True)

    # ------------------------------------------------------------------ internals

    async def _run(self, fn: Callable[..., T], *args: object) -> T:
        # The semaphore keeps waiters on the loop, where cancelling one before its turn
        # costs nothing; the executor's own queue could not be cancelled that way.
        if self._sem is None:  # created lazily: bound to the loop that first uses it
            self._sem = asyncio.Semaphore(self.max_concurrent)
        sem = self._sem
        await sem.acquire()
        try:
            fut = asyncio.get_running_loop().run_in_executor(self._executor, fn, *args)
        except BaseException:
            sem.release()
            raise
        fut.add_done_callback(lambda f: _release(sem, f))
        # shield: cancelling the waiter must not mark the slot free while the thread
        # still holds its memory; _release runs when the work is really done.
        return await asyncio.shield(fut)

    def _verify_dummy(self, pw: str) -> bool:
        with self._dummy_lock:
            if self._dummy_hash is None:
                self._dummy_hash = hash_password("pymaild dummy password", self.hasher)
        verify_password(self._dummy_hash, pw)
        return False


def _release(sem: asyncio.Semaphore, fut: asyncio.Future[Any]) -> None:
    sem.release()
    if not fut.cancelled():
        fut.exception()  # mark retrieved: a cancelled waiter must not log "never retrieved"
