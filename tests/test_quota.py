"""storage/quota.py: the Maildir++ ``maildirsize`` file (read, append, recalculate), the
limits in the account store, and the reservation that makes racing writers take turns."""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from mailserver.auth.passwords import make_hasher
from mailserver.auth.store import AccountStore, NoSuchAccount
from mailserver.storage import quota
from mailserver.storage.index import MailboxIndex
from mailserver.storage.maildir import MaildirWriter
from mailserver.storage.maildirpp import create_maildirpp
from mailserver.storage.quota import Limits, OverQuota, Usage


@pytest.fixture()
def root(tmp_path: Path) -> Path:
    r = tmp_path / "alice"
    create_maildirpp(r, durable=False)
    return r


def _drop(folder: Path, name: str, size: int, sub: str = "cur") -> None:
    (folder / sub / name).write_bytes(b"x" * size)


# ------------------------------------------------------------------ the file format


def test_parse_limits_forms() -> None:
    assert quota.parse_limits("1000S,10C") == Limits(1000, 10)
    assert quota.parse_limits("1000S") == Limits(1000, 0)
    assert quota.parse_limits("10C") == Limits(0, 10)
    assert quota.parse_limits("") == Limits(0, 0)
    assert quota.parse_limits("0S,0C") == Limits(0, 0)
    assert Limits(1000, 10).line() == "1000S,10C"
    assert Limits(0, 5).line() == "5C"
    assert Limits().line() == ""


def test_dovecot_written_file_is_read(root: Path) -> None:
    """Dovecot's own layout: padded first usage line, appended deltas, negative lines."""
    text = "2147483648S,1000C\n       12345     7\n4096 1\n-1000 -1\n"
    assert quota.parse_maildirsize(text) == (Limits(2147483648, 1000), Usage(15441, 7))
    (root / "maildirsize").write_text(text)
    assert quota.usage(root, Limits(2147483648, 1000)) == Usage(15441, 7)


def test_torn_or_malformed_file_is_recalculated(root: Path) -> None:
    assert quota.parse_maildirsize("100S\n12 1\n5") is None  # no final newline: torn write
    assert quota.parse_maildirsize("100S\nabc 1\n") is None
    _drop(root, "1.M1P1.h,S=300:2,S", 300)
    (root / "maildirsize").write_text("1000S\n12 1\nbogus\n")
    assert quota.usage(root, Limits(1000)) == Usage(300, 1)
    assert (root / "maildirsize").read_text() == "1000S\n300 1\n"


def test_recalculation_walks_every_folder_and_uses_s_sizes(root: Path) -> None:
    _drop(root, "1.M1P1.h,S=100:2,", 7)  # S= wins over the real size, as in Dovecot
    _drop(root, "2.M1P1.h,S=50", 50, sub="new")
    _drop(root / ".Sent", "3.M1P1.h:2,S", 20)  # no S=: the file's size
    _drop(root / ".Trash", "4.M1P1.h,S=1000:2,T", 1000)
    (root / "tmp" / "5.M1P1.h,S=999").write_bytes(b"y")  # tmp/ is not mail yet
    (root / "cur" / ".hidden").write_bytes(b"z")
    assert quota.usage(root, Limits(10_000, 100)) == Usage(1170, 4)
    assert (root / "maildirsize").read_text() == "10000S,100C\n1170 4\n"


def test_append_lines_and_missing_file(root: Path) -> None:
    quota.record_change(root, 500, 1)  # no file: nothing to keep up to date
    assert not (root / "maildirsize").exists()
    assert quota.usage(root, Limits(10_000)) == Usage(0, 0)
    quota.record_change(root, 500, 1)
    quota.record_change(root, -200, -1)
    assert (root / "maildirsize").read_text() == "10000S\n0 0\n500 1\n-200 -1\n"
    assert quota.usage(root, Limits(10_000)) == Usage(300, 0)


def test_recalculated_when_big_old_or_limits_change(root: Path) -> None:
    _drop(root, "1.M1P1.h,S=10:2,", 10)
    limits = Limits(10_000)
    (root / "maildirsize").write_text("10000S\n999 9\n")  # wrong, but fresh: trusted
    assert quota.usage(root, limits) == Usage(999, 9)
    # Other limits (the admin changed them): recalculated with the new first line.
    assert quota.usage(root, Limits(20_000)) == Usage(10, 1)
    (root / "maildirsize").write_text("10000S\n999 9\n")
    old = time.time() - quota.MAX_AGE - 5
    os.utime(root / "maildirsize", (old, old))
    assert quota.usage(root, limits) == Usage(10, 1)
    (root / "maildirsize").write_text("10000S\n0 0\n" + "1 0\n" * 3000)  # > 5120 bytes
    assert quota.usage(root, limits) == Usage(10, 1)
    assert (root / "maildirsize").read_text() == "10000S\n10 1\n"


def test_file_dropped_by_another_program_counted_after_recalculation(root: Path) -> None:
    limits = Limits(10_000)
    assert quota.usage(root, limits) == Usage(0, 0)
    _drop(root, "9.M1P1.other,S=700:2,S", 700)  # e.g. an import by another program
    (root / "maildirsize").unlink()  # the Maildir++ way to ask for a recount
    assert quota.usage(root, limits) == Usage(700, 1)


# ------------------------------------------------------------------ writers keep it exact


def test_writer_index_append_copy_expunge_keep_usage_exact(root: Path) -> None:
    limits = Limits(1_000_000)
    assert quota.usage(root, limits) == Usage(0, 0)
    MaildirWriter(fsync=False).deliver(root, None, [b"a" * 100])
    assert quota.usage(root, limits) == Usage(100, 1)
    inbox = MailboxIndex(root)
    sent = MailboxIndex(root / ".Sent")
    try:
        inbox.sync()
        sent.sync()
        uid = inbox.append(b"b" * 250, ["\\Seen"])
        assert quota.usage(root, limits) == Usage(350, 2)
        inbox.sync()
        inbox.copy_to(sent, [uid])
        assert quota.usage(root, limits) == Usage(600, 3)
        inbox.store_flags([uid], ["\\Deleted"], "add")
        inbox.expunge()
        assert quota.usage(root, limits) == Usage(350, 2)
    finally:
        inbox.close()
        sent.close()
    # The appended lines agree with a full recount.
    assert quota.measure(root) == Usage(350, 2)


# ------------------------------------------------------------------ reservation


def test_reserve_refuses_what_does_not_fit(root: Path) -> None:
    _drop(root, "1.M1P1.h,S=900:2,", 900)
    with quota.reserve([(root, Limits(1000), 100, 1)]):
        pass  # exactly full is allowed
    with pytest.raises(OverQuota) as exc, quota.reserve([(root, Limits(1000), 101, 1)]):
        pytest.fail("must not run")
    assert exc.value.resource == "STORAGE"
    with pytest.raises(OverQuota) as exc, quota.reserve([(root, Limits(0, 1), 1, 1)]):
        pytest.fail("must not run")
    assert exc.value.resource == "MESSAGE"
    with quota.reserve([(root, Limits(), 10**12, 10**6)]):
        pass  # unlimited
    assert quota.full(root, Limits(900)) == "STORAGE"
    assert quota.full(root, Limits(901)) is None
    assert quota.full(root, Limits(0, 1)) == "MESSAGE"


def test_racing_writers_never_exceed_the_limit(root: Path) -> None:
    """16 threads each try to deliver 100-byte messages into 1000 bytes: exactly 10 fit."""
    writer = MaildirWriter(fsync=False)
    limits = Limits(1000)
    accepted: list[int] = []
    start = threading.Barrier(16)

    def worker() -> None:
        start.wait()
        for _ in range(3):
            try:
                with quota.reserve([(root, limits, 100, 1)]):
                    time.sleep(0.001)  # widen the window between check and write
                    writer.deliver(root, None, [b"m" * 100])
                accepted.append(1)
            except OverQuota:
                pass

    threads = [threading.Thread(target=worker) for _ in range(16)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(accepted) == 10
    assert quota.measure(root) == Usage(1000, 10)
    assert quota.usage(root, limits) == Usage(1000, 10)


# ------------------------------------------------------------------ limits in the store


def test_store_limits_default_and_own(tmp_path: Path) -> None:
    store = AccountStore.in_state_dir(tmp_path, hasher=make_hasher(time_cost=1, memory_cost_kib=8,
                                                                    parallelism=1))
    store.create_account("bob@example.test", "password-123456")
    assert store.quota_limits("bob@example.test") == Limits()
    store.default_quota = Limits(5000, 0)
    assert store.quota_limits("bob@example.test") == Limits(5000, 0)
    store.set_quota("Bob@Example.test", Limits(100_000, 50))
    assert store.quota_limits("bob@example.test") == Limits(100_000, 50)
    assert store.own_quota("bob@example.test") == Limits(100_000, 50)
    store.set_quota("bob@example.test", None)
    assert store.quota_limits("bob@example.test") == Limits(5000, 0)
    with pytest.raises(NoSuchAccount):
        store.set_quota("nobody@example.test", Limits(1))
    store.set_quota("bob@example.test", Limits(7, 7))
    store.remove_account("bob@example.test")
    store.create_account("bob@example.test", "password-123456")
    assert store.own_quota("bob@example.test") is None  # a new account starts on defaults
    store.close()


def test_warning_due_once_per_crossing_and_only_if_it_fits(root: Path) -> None:
    limits = Limits(10_000)
    notice = b"n" * 100
    _drop(root, "1.M1P1.h,S=8000:2,", 8000)
    assert quota.warning_due(root, limits, lambda u: notice) is None  # 80 %: not yet
    _drop(root, "2.M1P1.h,S=1000:2,", 1000)
    (root / "maildirsize").unlink()
    assert quota.warning_due(root, limits, lambda u: notice) == notice  # 90 %
    assert quota.warning_due(root, limits, lambda u: notice) is None  # once
    (root / "cur" / "2.M1P1.h,S=1000:2,").unlink()
    (root / "maildirsize").unlink()
    assert quota.warning_due(root, limits, lambda u: notice) is None  # below: re-armed
    assert not (root / quota.WARN_FILE).exists()
    _drop(root, "3.M1P1.h,S=1950:2,", 1950)
    (root / "maildirsize").unlink()
    assert quota.warning_due(root, limits, lambda u: notice) is None  # 9950: no room for it
    assert not (root / quota.WARN_FILE).exists()


async def test_rcpt_check_remembers_limits_not_usage(tmp_path: Path) -> None:
    """An account without limits costs a RCPT no thread hand-off once its limits are
    known; a limited one is checked (usage read) at every RCPT; a limit set meanwhile
    is seen once the memory expires (CACHE_SECONDS)."""
    from mailserver.smtp.quotacheck import RcptQuota
    from mailserver.smtp.recipients import CACHE_SECONDS

    store = AccountStore.in_state_dir(tmp_path, hasher=make_hasher(time_cost=1, memory_cost_kib=8,
                                                                    parallelism=1))
    for name in ("free", "tight"):
        store.create_account(f"{name}@example.test", "password-123456")
        create_maildirpp(store.maildir_path(f"{name}@example.test"))
    store.set_quota("tight@example.test", Limits(1, 0))
    hops = 0

    async def counting(func: Callable[..., Any], /, *args: Any, **kwargs: Any) -> Any:
        nonlocal hops
        hops += 1
        return func(*args, **kwargs)

    now = [100.0]
    check = RcptQuota(store, counting, lambda: now[0])
    try:
        assert await check.full_account(["free@example.test"]) is None
        assert await check.full_account(["free@example.test"]) is None
        assert hops == 1  # the second RCPT used the remembered "no limits"
        MaildirWriter().deliver(store.maildir_path("tight@example.test"), None, [b"Subject: x\r\n\r\nhi\r\n"])
        assert await check.full_account(["tight@example.test"]) == "tight@example.test"
        assert await check.full_account(["tight@example.test"]) == "tight@example.test"
        assert hops == 3  # limited: usage read every time
        store.set_quota("free@example.test", Limits(1, 0))
        MaildirWriter().deliver(store.maildir_path("free@example.test"), None, [b"Subject: x\r\n\r\nhi\r\n"])
        assert await check.full_account(["free@example.test"]) is None  # still remembered
        now[0] += CACHE_SECONDS + 1
        assert await check.full_account(["free@example.test"]) == "free@example.test"
    finally:
        store.close()
