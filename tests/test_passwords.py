"""argon2id hashing and the daemon's off-loop, capped PasswordChecker."""

from __future__ import annotations

import asyncio
import threading
import time
from typing import Any

import pytest

from mailserver.auth import passwords
from mailserver.auth.passwords import (
    PasswordChecker,
    hash_password,
    make_hasher,
    needs_rehash,
    verify_password,
)
from tests.support.wait import async_wait_until

CHEAP = make_hasher(time_cost=1, memory_cost_kib=8, parallelism=1)


def test_default_hash_is_argon2id_with_production_parameters() -> None:
    h = hash_password("correct horse")
    assert h.startswith("$argon2id$v=19$m=19456,t=2,p=1$")  # OWASP's argon2id recommendation
    assert verify_password(h, "correct horse")
    assert not verify_password(h, "correct horse ")
    assert not needs_rehash(h)


def test_hashes_of_the_old_default_still_verify_and_need_a_rehash() -> None:
    old = make_hasher(time_cost=3, memory_cost_kib=65536, parallelism=4).hash("correct horse")
    assert old.startswith("$argon2id$v=19$m=65536,t=3,p=4$")  # argon2-cffi's default, until now
    assert verify_password(old, "correct horse")
    assert needs_rehash(old)


def test_roundtrip_wrong_password_and_salt() -> None:
    h1 = hash_password("s3cret", CHEAP)
    h2 = hash_password("s3cret", CHEAP)
    assert h1.startswith("$argon2id$v=19$m=8,t=1,p=1$")
    assert h1 != h2  # random salt
    assert verify_password(h1, "s3cret") and verify_password(h2, "s3cret")
    assert not verify_password(h1, "S3cret")
    assert not verify_password(h1, "")


def test_unicode_password() -> None:
    h = hash_password("pässwörd 🔑", CHEAP)
    assert verify_password(h, "pässwörd 🔑")
    assert not verify_password(h, "passwort 🔑")


@pytest.mark.parametrize(
    "bad_hash",
    ["", "not a hash", "$argon2id$v=19$m=8,t=1,p=1$garbage", "$2b$12$" + "x" * 53, None, 42],
)
def test_invalid_hash_is_false_not_an_exception(bad_hash: object) -> None:
    assert verify_password(bad_hash, "pw") is False  # type: ignore[arg-type]


def test_unencodable_password_is_false() -> None:
    h = hash_password("pw", CHEAP)
    assert verify_password(h, "\udcff") is False  # lone surrogate: not UTF-8


def test_needs_rehash_detects_weaker_parameters() -> None:
    cheap = hash_password("pw", CHEAP)
    assert needs_rehash(cheap)  # against production defaults
    assert not needs_rehash(cheap, CHEAP)
    assert needs_rehash("garbage")


async def test_checker_verify_hash_and_unknown_user() -> None:
    checker = PasswordChecker(hasher=CHEAP)
    try:
        h = await checker.hash("pw")
        assert h.startswith("$argon2id$v=19$m=8,t=1,p=1$")
        assert await checker.verify(h, "pw") is True
        assert await checker.verify(h, "nope") is False
        assert await checker.verify(None, "pw") is False  # unknown user: dummy hash
        assert await checker.verify("corrupt", "pw") is False
        assert await checker.needs_rehash(h) is False
    finally:
        checker.close()


def test_checker_rejects_zero_concurrency() -> None:
    with pytest.raises(ValueError):
        PasswordChecker(max_concurrent=0)


async def test_checker_does_not_block_the_event_loop() -> None:
    """Four production-cost verifications run while a ticker keeps ticking.

    Run on the loop, each verification would stall it for a whole hash; so the
    longest gap between ticks must stay well below the time of one hash.
    """
    h = hash_password("pw")
    t0 = time.perf_counter()
    verify_password(h, "pw")
    one_hash = time.perf_counter() - t0

    checker = PasswordChecker(max_concurrent=2)
    gaps: list[float] = []
    done = asyncio.Event()

    async def ticker() -> None:
        last = time.perf_counter()
        while not done.is_set():
            await asyncio.sleep(0.005)  # the tick: a real pause, its lateness is what we measure
            now = time.perf_counter()
            gaps.append(now - last)
            last = now

    tick_task = asyncio.create_task(ticker())
    try:
        results = await asyncio.gather(*(checker.verify(h, pw) for pw in ("pw", "x", "pw", "y")))
    finally:
        done.set()
        await tick_task
        checker.close()
    assert results == [True, False, True, False]
    assert len(gaps) >= 4
    assert max(gaps) < one_hash * 0.75, (max(gaps), one_hash)


async def test_checker_caps_concurrency_even_when_waiters_are_cancelled(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A cancelled waiter's hash keeps its slot until the thread is really done."""
    running = 0
    peak = 0
    lock = threading.Lock()
    release = threading.Event()
    real_verify = passwords.verify_password

    def counting_verify(h: str, pw: str) -> bool:
        nonlocal running, peak
        with lock:
            running += 1
            peak = max(peak, running)
        try:
            # Hold the slot until the test lets go: the first two hashes are surely still
            # running when their waiters are cancelled, however slow the machine.
            release.wait(20)
            return real_verify(h, pw)
        finally:
            with lock:
                running -= 1

    monkeypatch.setattr(passwords, "verify_password", counting_verify)
    h = hash_password("pw", CHEAP)
    checker = PasswordChecker(max_concurrent=2, hasher=CHEAP)
    # What a checker that freed the cancelled waiters' slots would do: hand two more
    # hashes to its threads. Its pool has exactly max_concurrent threads, so those would
    # queue there and never run beside the held ones (``peak`` cannot show it); the
    # hand-overs can.
    handed = 0
    submit = checker._executor.submit

    def counting_submit(fn: Any, /, *args: Any, **kwargs: Any) -> Any:
        nonlocal handed
        handed += 1
        return submit(fn, *args, **kwargs)

    monkeypatch.setattr(checker._executor, "submit", counting_submit)
    try:
        tasks = [asyncio.create_task(checker.verify(h, "pw")) for _ in range(6)]
        await async_wait_until(lambda: running == 2, interval=0.005, what="the first two hashes to run")
        tasks[0].cancel()
        tasks[1].cancel()
        more = [asyncio.create_task(checker.verify(h, "pw")) for _ in range(4)]
        await async_wait_until(lambda: tasks[0].done() and tasks[1].done(), interval=0.005,
                               what="the cancellations to land")
        # A real pause, for something that must NOT happen: a checker that freed the slots
        # of the cancelled waiters would start two more hashes now, beside the held ones.
        await asyncio.sleep(0.05)
        assert handed == 2, f"{handed} hashes handed to threads while only 2 slots exist"
        release.set()
        results = await asyncio.gather(*tasks, *more, return_exceptions=True)
    finally:
        release.set()
        checker.close()
    assert isinstance(results[0], asyncio.CancelledError)
    assert isinstance(results[1], asyncio.CancelledError)
    assert results[2:] == [True] * 8
    assert peak == 2
