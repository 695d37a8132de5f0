"""The cache of successful verifications (auth/cache.py), with an injected clock."""

from __future__ import annotations

from mailserver.auth.cache import VerifiedCache

HASH = "$argon2id$v=19$m=19456,t=2,p=1$c2FsdHNhbHQ$aGFzaGhhc2g"


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_hit_after_add_and_only_for_the_same_credentials() -> None:
    cache = VerifiedCache(ttl=60, clock=Clock())
    assert not cache.hit("carol@example.org", "pw", HASH)
    cache.add("carol@example.org", "pw", HASH)
    assert cache.hit("carol@example.org", "pw", HASH)
    assert not cache.hit("carol@example.org", "pw2", HASH)  # wrong password
    assert not cache.hit("dave@example.org", "pw", HASH)  # other account
    assert not cache.hit("carol@example.org", "pw", HASH + "x")  # password changed: new hash


def test_ttl_expiry() -> None:
    clock = Clock()
    cache = VerifiedCache(ttl=60, clock=clock)
    cache.add("carol@example.org", "pw", HASH)
    clock.now = 59.9
    assert cache.hit("carol@example.org", "pw", HASH)
    clock.now = 60.0
    assert not cache.hit("carol@example.org", "pw", HASH)
    assert len(cache) == 0


def test_never_holds_the_password_and_keys_differ_per_process() -> None:
    a, b = VerifiedCache(), VerifiedCache()
    a.add("carol@example.org", "secret-password", HASH)
    b.add("carol@example.org", "secret-password", HASH)
    (ka,), (kb,) = a._entries, b._entries
    assert b"secret-password" not in ka and ka != kb and len(ka) == 32


def test_bounded_and_disabled_with_ttl_zero() -> None:
    cache = VerifiedCache(ttl=60, max_entries=10)
    for i in range(100):
        cache.add(f"u{i}@example.org", "pw", HASH)
    assert len(cache) == 10 and cache.hit("u99@example.org", "pw", HASH)
    off = VerifiedCache(ttl=0)
    off.add("carol@example.org", "pw", HASH)
    assert not off.hit("carol@example.org", "pw", HASH)
