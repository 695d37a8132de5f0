"""LoginChecker (auth/login.py): throttle, cache of good logins, argon2, hash upgrade,
on a real account database (SQLite) and real argon2 (cheap parameters)."""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path

import pytest

from mailserver.auth.cache import VerifiedCache
from mailserver.auth.login import AuthResult, LoginChecker, LoginPolicy
from mailserver.auth.passwords import PasswordChecker, make_hasher
from mailserver.auth.ratelimit import AuthThrottle
from mailserver.auth.store import AccountStore
from mailserver.metrics import Metrics

CHEAP = make_hasher(time_cost=1, memory_cost_kib=8, parallelism=1)
OLD = make_hasher(time_cost=1, memory_cost_kib=16, parallelism=1)  # "an older policy"
USER = "carol@example.org"


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def env(tmp_path: Path):  # type: ignore[no-untyped-def]
    store = AccountStore(tmp_path / "accounts.db", tmp_path / "mail", hasher=CHEAP)
    store.create_account(USER, "right-password-1")
    clock = Clock()
    metrics = Metrics()
    passwords = PasswordChecker(hasher=CHEAP)
    checker = LoginChecker(store, passwords, AuthThrottle(), metrics, logging.getLogger("pymaild.imap"),
                           cache=VerifiedCache(ttl=600, clock=clock), policy=LoginPolicy(failure_delay=0))
    yield store, checker, metrics, clock, tmp_path
    passwords.close()
    store.close()


def check(checker: LoginChecker, password: str, ip: str = "192.0.2.1") -> AuthResult:
    return asyncio.run(checker.check(ip, USER, password, "imaps"))


def counts(metrics: Metrics) -> dict[str, float]:
    return {r: metrics.value("auth_checks_total", result=r) for r in ("ok", "cached", "failed", "throttled")}


def test_second_login_is_a_cache_hit_and_a_wrong_password_is_never_cached(env) -> None:  # type: ignore[no-untyped-def]
    _, checker, metrics, _, _ = env
    assert check(checker, "right-password-1") is AuthResult.OK
    assert check(checker, "right-password-1") is AuthResult.OK
    assert check(checker, "wrong") is AuthResult.INVALID
    assert check(checker, "wrong") is AuthResult.INVALID
    assert counts(metrics) == {"ok": 1, "cached": 1, "failed": 2, "throttled": 0}
    assert len(checker.cache) == 1


def test_password_changed_by_another_process_invalidates(env) -> None:  # type: ignore[no-untyped-def]
    _, checker, metrics, _, tmp_path = env
    assert check(checker, "right-password-1") is AuthResult.OK
    other = AccountStore(tmp_path / "accounts.db", tmp_path / "mail", hasher=CHEAP)  # the CLI's
    other.set_password(USER, "new-password-22")
    other.close()
    assert check(checker, "right-password-1") is AuthResult.INVALID
    assert check(checker, "new-password-22") is AuthResult.OK
    assert counts(metrics)["cached"] == 0


def test_removed_or_disabled_account_invalidates(env) -> None:  # type: ignore[no-untyped-def]
    store, checker, _, _, tmp_path = env
    assert check(checker, "right-password-1") is AuthResult.OK
    store.set_disabled(USER, True)
    assert check(checker, "right-password-1") is AuthResult.INVALID
    store.set_disabled(USER, False)
    assert check(checker, "right-password-1") is AuthResult.OK
    other = AccountStore(tmp_path / "accounts.db", tmp_path / "mail", hasher=CHEAP)
    other.remove_account(USER)
    other.close()
    assert check(checker, "right-password-1") is AuthResult.INVALID


def test_cache_entries_expire(env) -> None:  # type: ignore[no-untyped-def]
    _, checker, metrics, clock, _ = env
    check(checker, "right-password-1")
    clock.now += 601
    check(checker, "right-password-1")
    assert counts(metrics)["ok"] == 2 and counts(metrics)["cached"] == 0


def test_over_budget_address_costs_no_hash_and_no_cache_lookup(env) -> None:  # type: ignore[no-untyped-def]
    _, checker, metrics, _, _ = env
    check(checker, "right-password-1")  # cached now
    for i in range(5):
        check(checker, f"wrong-{i}", ip="192.0.2.9")
    # pair budget (5) used up: even the right password is refused, and not looked up
    assert check(checker, "right-password-1", ip="192.0.2.9") is AuthResult.THROTTLED
    assert counts(metrics) == {"ok": 1, "cached": 0, "failed": 5, "throttled": 1}
    # the owner elsewhere is fine, from the cache
    assert check(checker, "right-password-1", ip="198.51.100.1") is AuthResult.OK


def test_hash_made_under_an_older_policy_is_upgraded_on_login(tmp_path: Path) -> None:
    store = AccountStore(tmp_path / "accounts.db", tmp_path / "mail", hasher=OLD)
    store.create_account(USER, "right-password-1")
    passwords = PasswordChecker(hasher=CHEAP)
    checker = LoginChecker(store, passwords, AuthThrottle(), Metrics(), logging.getLogger("t"),
                           policy=LoginPolicy(failure_delay=0))
    try:
        assert (store.password_hash(USER) or "").startswith("$argon2id$v=19$m=16,")
        assert check(checker, "right-password-1") is AuthResult.OK
        upgraded = store.password_hash(USER) or ""
        assert upgraded.startswith("$argon2id$v=19$m=8,t=1,p=1$")
        assert check(checker, "right-password-1") is AuthResult.OK  # cached under the new hash
        assert store.password_hash(USER) == upgraded
        # compare-and-swap: an upgrade never overwrites a password changed meanwhile
        assert not store.replace_password_hash(USER, "stale", "x")
    finally:
        passwords.close()
        store.close()


def test_simultaneous_identical_logins_share_one_hash(env) -> None:  # type: ignore[no-untyped-def]
    _, checker, metrics, _, _ = env

    async def six() -> list[AuthResult]:
        return await asyncio.gather(*(checker.check(f"192.0.2.{i}", USER, "right-password-1", "imaps")
                                      for i in range(6)))

    assert asyncio.run(six()) == [AuthResult.OK] * 6
    assert counts(metrics) == {"ok": 1, "cached": 5, "failed": 0, "throttled": 0}
    assert checker._inflight == {}

    async def wrong() -> list[AuthResult]:
        return await asyncio.gather(*(checker.check(f"192.0.2.{i}", USER, "nope", "imaps") for i in range(3)))

    assert asyncio.run(wrong()) == [AuthResult.INVALID] * 3  # each one still a failure
    assert counts(metrics)["failed"] == 3


def test_many_devices_behind_one_address_log_in_at_once(env) -> None:  # type: ignore[no-untyped-def]
    # Twelve sessions from one address with the right password at the same moment (a
    # laptop, a phone and a webmail, as in the IMAP stress test): more than the pair
    # budget (5) is in progress at once, and none may be refused for that.
    _, checker, metrics, _, _ = env

    async def twelve() -> list[AuthResult]:
        return await asyncio.gather(*(checker.check("192.0.2.1", USER, "right-password-1", "imaps")
                                      for _ in range(12)))

    assert asyncio.run(twelve()) == [AuthResult.OK] * 12
    assert counts(metrics)["throttled"] == 0


def test_parallel_guesses_from_one_address_get_one_budget_of_checks(env) -> None:  # type: ignore[no-untyped-def]
    _, checker, metrics, _, _ = env

    async def twenty() -> list[AuthResult]:
        return await asyncio.gather(*(checker.check("192.0.2.1", USER, f"guess-{i}", "imaps")
                                      for i in range(20)))

    results = asyncio.run(twenty())
    assert results.count(AuthResult.INVALID) == 5  # the pair budget, in hashes
    assert results.count(AuthResult.THROTTLED) == 15
    assert counts(metrics) == {"ok": 0, "cached": 0, "failed": 5, "throttled": 15}
