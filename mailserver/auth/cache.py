"""A cache of successful password verifications (like Dovecot's auth cache), sans-I/O.

A client's second and later connections (Thunderbird opens five or six at start, and
reconnects all day) should not each cost an argon2 verification. After a successful
check the cache remembers ``HMAC(key, account, password, stored hash)`` for ``ttl``
seconds; a later login whose HMAC is there is known good without hashing.

* Never the password: only an HMAC-SHA256 under a random key made at start, held in
  memory only (nothing is written to disk).
* A wrong password is never cached, so it always costs a full check (and goes through
  the throttle first, so the cache is no guessing oracle: see login.py).
* Invalidation needs no messages between processes: the stored hash is part of the
  key, and it is read from the database at each login. ``pymaild creds password``
  (another process) writes a new hash with a new salt, so the old entry no longer
  matches; ``creds remove`` or ``disable`` make the lookup return no hash at all.
* Bounded: at most ``max_entries`` (least recently used dropped first).
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import time
from collections import OrderedDict
from collections.abc import Callable


class VerifiedCache:
    def __init__(self, ttl: float = 3600.0, max_entries: int = 10_000,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.ttl = ttl
        self.max_entries = max(1, max_entries)
        self.clock = clock
        self._key = secrets.token_bytes(32)
        self._entries: OrderedDict[bytes, float] = OrderedDict()  # digest -> expiry
        self.hits = 0
        self.misses = 0

    @property
    def enabled(self) -> bool:
        return self.ttl > 0

    def digest(self, account: str, password: str, stored_hash: str) -> bytes:
        msg = b"\0".join((account.encode("utf-8", "surrogatepass"),
                          password.encode("utf-8", "surrogatepass"),
                          stored_hash.encode("utf-8", "surrogatepass")))
        return hmac.new(self._key, msg, hashlib.sha256).digest()

    def hit(self, account: str, password: str, stored_hash: str) -> bool:
        """True if this exact (account, password, stored hash) was verified within ttl."""
        if not self.enabled:
            return False
        digest = self.digest(account, password, stored_hash)
        expiry = self._entries.get(digest)
        if expiry is None or expiry <= self.clock():
            if expiry is not None:
                del self._entries[digest]
            self.misses += 1
            return False
        self._entries.move_to_end(digest)
        self.hits += 1
        return True

    def add(self, account: str, password: str, stored_hash: str) -> None:
        """Remember a verification that succeeded (never call it for a failed one)."""
        if not self.enabled:
            return
        digest = self.digest(account, password, stored_hash)
        self._entries[digest] = self.clock() + self.ttl
        self._entries.move_to_end(digest)
        while len(self._entries) > self.max_entries:
            self._entries.popitem(last=False)

    def __len__(self) -> int:
        return len(self._entries)
