"""The failed-login throttle (auth/ratelimit.py): sans-I/O, a fake clock, no sleeping."""

from __future__ import annotations

import pytest

from mailserver.auth.ratelimit import AuthThrottle, Refusal, address_key


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def make(**kw: object) -> tuple[AuthThrottle, Clock]:
    clock = Clock()
    params: dict[str, object] = {"max_failures_per_ip": 10, "max_failures_per_pair": 5,
                                 "account_delay_after": 10, "window": 900.0, "account_delay": 1.0,
                                 "account_delay_growth": 2.0, "account_delay_max": 60.0,
                                 "max_wait": 1.0, "clock": clock}
    params.update(kw)
    return AuthThrottle(**params), clock  # type: ignore[arg-type]


def fail(t: AuthThrottle, ip: str, account: str) -> Refusal | None:
    attempt = t.begin(ip, account)
    if attempt.refused is None:
        t.failed(attempt)
    return attempt.refused


def test_ten_guesses_from_one_address_do_not_lock_the_owner_out() -> None:
    t, _ = make()
    results = [fail(t, "192.0.2.1", "carol@example.org") for _ in range(10)]
    assert results[:5] == [None] * 5 and results[5:] == [Refusal.PAIR] * 5  # pair budget: 5
    owner = t.begin("198.51.100.7", "carol@example.org")  # a fresh address, right password
    assert owner.refused is None and owner.wait == 0
    t.succeeded(owner)


def test_three_guesses_each_from_twenty_addresses_do_not_lock_the_owner_out() -> None:
    t, _ = make()
    for i in range(20):
        for _ in range(3):
            fail(t, f"192.0.2.{i + 1}", "carol@example.org")
    owner = t.begin("198.51.100.7", "carol@example.org")
    assert owner.refused is None and owner.wait == 0


def test_address_over_budget_is_refused_for_every_account_and_at_connect() -> None:
    t, _ = make(max_failures_per_ip=4)
    for i in range(4):
        assert fail(t, "192.0.2.1", f"user{i}@example.org") is None
    assert t.ip_blocked("192.0.2.1")
    assert t.begin("192.0.2.1", "someone@example.org").refused is Refusal.ADDRESS
    assert not t.ip_blocked("192.0.2.2")


def test_budgets_expire_after_the_window() -> None:
    t, clock = make(max_failures_per_ip=2)
    fail(t, "192.0.2.1", "a@example.org")
    fail(t, "192.0.2.1", "b@example.org")
    assert t.ip_blocked("192.0.2.1")
    clock.now += 901
    assert not t.ip_blocked("192.0.2.1")
    assert t.begin("192.0.2.1", "a@example.org").refused is None


def test_concurrent_attempts_count_before_their_result_is_known() -> None:
    # 20 parallel connections from one address cannot all get a password check.
    t, _ = make(max_failures_per_ip=10, max_failures_per_pair=5)
    attempts = [t.begin("192.0.2.1", "carol@example.org") for _ in range(20)]
    assert sum(a.refused is None for a in attempts) == 5
    # Not refused yet: busy, to retry when one of the five has ended ...
    assert {a.refused for a in attempts[5:]} == {Refusal.BUSY}
    # ... and once those five have failed, the pair is over budget for good.
    for a in attempts[:5]:
        t.failed(a)
    assert t.begin("192.0.2.1", "carol@example.org").refused is Refusal.PAIR


def test_attempts_in_progress_make_others_wait_not_fail() -> None:
    # Twelve devices behind one address log in at once: five at a time get a check, the
    # rest are told to come back, and all get in once the first succeed.
    t, _ = make(max_failures_per_ip=10, max_failures_per_pair=5)
    admitted = 0
    waiting = 12
    while waiting:
        batch = [t.begin("192.0.2.1", "carol@example.org") for _ in range(waiting)]
        ok = [a for a in batch if a.refused is None]
        assert ok and {a.refused for a in batch if a.refused is not None} <= {Refusal.BUSY}
        for a in ok:
            t.succeeded(a)
        admitted += len(ok)
        waiting -= len(ok)
    assert admitted == 12


def test_success_clears_the_pair_but_not_the_address_budget() -> None:
    t, _ = make(max_failures_per_ip=10, max_failures_per_pair=3)
    for _ in range(2):
        fail(t, "192.0.2.1", "carol@example.org")
    ok = t.begin("192.0.2.1", "carol@example.org")
    t.succeeded(ok)
    # carol's typos are forgiven on that address...
    for _ in range(3):
        assert fail(t, "192.0.2.1", "carol@example.org") is None
    # ...but the address's own count went on (2 + 3 failures).
    assert t.account_failures("carol@example.org") == 5
    assert t._ip.count("192.0.2.1", 0, clock_now(t)) == 5


def clock_now(t: AuthThrottle) -> float:
    return t.clock()


def test_distributed_guessing_is_held_to_few_password_checks() -> None:
    # 50 addresses, 5 guesses each, as fast as they like, for 60 seconds.
    t, clock = make()
    checks = 0
    start = clock.now
    while clock.now - start < 60:
        for i in range(50):
            attempt = t.begin(f"203.0.113.{i + 1}", "carol@example.org")
            if attempt.refused is None:
                assert attempt.wait <= 1.0  # nobody is held longer than max_wait
                checks += 1
                t.failed(attempt)
        clock.now += 0.1
    # One check per new address, plus the suspect lane: after 50 failures its slots are
    # account_delay_max (60 s) apart, so one or two more.
    assert 50 <= checks <= 52, checks
    # Meanwhile the owner, from an address that never failed, gets in at once.
    owner = t.begin("198.51.100.7", "carol@example.org")
    assert owner.refused is None and owner.wait == 0


def test_suspect_lane_spacing_grows_and_is_capped() -> None:
    t, _ = make(account_delay_after=10, account_delay=0.5, account_delay_growth=3.0, account_delay_max=20)
    assert t.spacing(9) == 0 and t.spacing(10) == 0.5 and t.spacing(11) == 1.5
    assert t.spacing(14) == 20 and t.spacing(10_000) == 20


def test_a_suspect_address_waits_at_most_max_wait_else_is_refused_without_a_check() -> None:
    t, clock = make(account_delay_after=2, max_failures_per_pair=5, account_delay=0.4,
                    account_delay_growth=1.0, max_wait=1.0)
    fail(t, "192.0.2.1", "carol@example.org")
    fail(t, "192.0.2.2", "carol@example.org")  # 2 failures: under pressure
    waits = []
    for _ in range(4):
        a = t.begin("192.0.2.1", "carol@example.org")  # suspect: failed on carol before
        waits.append(a.wait if a.refused is None else a.refused)
    assert waits == [0.0, pytest.approx(0.4), pytest.approx(0.8), Refusal.ACCOUNT]
    clock.now += 2
    assert t.begin("192.0.2.1", "carol@example.org").refused is None


def test_unknown_users_and_ipv6_prefixes() -> None:
    assert address_key("2001:db8:1:2:3:4:5:6") == "2001:db8:1:2::/64"
    assert address_key("2001:db8:1:2::99") == "2001:db8:1:2::/64"
    assert address_key("::ffff:192.0.2.1") == "192.0.2.1"
    assert address_key("192.0.2.1") == "192.0.2.1"
    t, _ = make(max_failures_per_ip=3)
    for i in range(3):
        fail(t, f"2001:db8:1:2::{i + 1}", f"nobody{i}@example.org")
    assert t.ip_blocked("2001:db8:1:2::ffff")  # same /64
    assert not t.ip_blocked("2001:db8:1:3::1")


def test_tables_are_bounded() -> None:
    t, _ = make(max_entries=100)
    for i in range(5000):
        fail(t, f"10.{i // 65536}.{i // 256 % 256}.{i % 256}", f"user{i}@example.org")
    assert max(t.table_sizes()) <= 100


def test_stale_records_are_dropped() -> None:
    t, clock = make()
    for i in range(50):
        fail(t, f"192.0.2.{i}", "carol@example.org")
    clock.now += 1000
    for _ in range(60):
        t.begin("198.51.100.1", "dave@example.org")  # each begin prunes a little
    sizes = t.table_sizes()
    assert sizes[0] <= 2 and sizes[1] <= 2, sizes


def test_failure_without_check_counts() -> None:
    t, _ = make(max_failures_per_ip=2)
    t.failure("192.0.2.1", "bob@example.org")
    t.failure("192.0.2.1", None)
    assert t.ip_blocked("192.0.2.1")


def test_old_keyword_name_still_accepted() -> None:
    t = AuthThrottle(max_failures_per_ip=10, max_failures_per_account=7, window=900)
    assert t.account_delay_after == 7
