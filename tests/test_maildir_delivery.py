"""Durable Maildir delivery: exact bytes, unique names, nothing left behind on failure."""

from __future__ import annotations

import os
import re
import stat
import threading
from pathlib import Path

import pytest

from mailserver.storage import maildir as maildir_mod
from mailserver.storage.maildir import MaildirWriter, maildir_hostname, size_from_name
from mailserver.storage.maildirpp import create_maildirpp

MSG = [b"From: a@example.org\r\nTo: b@example.org\r\n", b"Subject: hi\r\n\r\n", b"body\r\n"]
NAME_RE = re.compile(
    r"^(?P<secs>\d+)\.M(?P<usecs>\d{1,6})P(?P<pid>\d+)Q(?P<q>\d+)R(?P<r>[0-9a-f]{16})"
    r"\.(?P<host>[^/:,]+),S=(?P<size>\d+)$"
)


def files(d: Path) -> list[Path]:
    return sorted(p for p in d.iterdir() if p.is_file())


def assert_clean_tmp(root: Path) -> None:
    for tmp in root.rglob("tmp"):
        assert files(tmp) == [], f"leftover in {tmp}"


@pytest.fixture
def mailbox(tmp_path: Path) -> Path:
    root = tmp_path / "mail" / "example.org" / "bob"
    create_maildirpp(root)
    return root


def test_deliver_exact_bytes_one_file(mailbox: Path) -> None:
    path = MaildirWriter().deliver(mailbox, None, MSG)
    assert files(mailbox / "new") == [path]
    assert path.read_bytes() == b"".join(MSG)
    assert files(mailbox / "cur") == []
    assert_clean_tmp(mailbox)
    m = NAME_RE.match(path.name)
    assert m, path.name
    assert int(m["pid"]) == os.getpid()
    assert int(m["size"]) == path.stat().st_size == len(b"".join(MSG))
    assert size_from_name(path.name) == path.stat().st_size
    assert stat.S_IMODE(path.stat().st_mode) == 0o600


def test_many_small_and_mixed_chunks(mailbox: Path) -> None:
    """More chunks than one writev() takes (IOV_MAX), empty ones, other buffer types."""
    chunks: list[bytes | bytearray | memoryview] = [
        f"X-Line-{i}: {'v' * (i % 7)}\r\n".encode() for i in range(3000)
    ]
    chunks[10] = b""
    chunks[20] = bytearray(b"X-Bytearray: 1\r\n")
    chunks[30] = memoryview(b"X-Memoryview: 1\r\n")
    path = MaildirWriter().deliver(mailbox, None, chunks)
    expected = b"".join(bytes(c) for c in chunks)
    assert path.read_bytes() == expected
    assert size_from_name(path.name) == len(expected)


def test_short_writes_are_continued(mailbox: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The kernel may write less than asked (signals, quotas near full): keep going."""
    real_writev = os.writev
    calls = 0

    def stingy_writev(fd: int, buffers: list[memoryview]) -> int:
        nonlocal calls
        calls += 1
        return real_writev(fd, [bytes(buffers[0][:7])])  # at most 7 bytes per call

    monkeypatch.setattr(maildir_mod.os, "writev", stingy_writev)
    data = b"0123456789" * 100 + b"tail"
    path = MaildirWriter().deliver(mailbox, None, [data[:333], data[333:]])
    assert path.read_bytes() == data
    assert calls >= len(data) // 7


def test_empty_message(mailbox: Path) -> None:
    path = MaildirWriter().deliver(mailbox, None, [])
    assert path.read_bytes() == b""
    assert size_from_name(path.name) == 0


def test_deliver_into_folder(mailbox: Path) -> None:
    path = MaildirWriter().deliver(mailbox, "Junk", MSG)
    assert path.parent == mailbox / ".Junk" / "new"
    assert files(mailbox / "new") == []
    assert path.read_bytes() == b"".join(MSG)


def test_missing_folder_and_missing_mailbox_are_created(tmp_path: Path) -> None:
    # e.g. postmaster@ before any account exists: nothing on disk yet.
    root = tmp_path / "mail" / "example.org" / "postmaster"
    w = MaildirWriter()
    inbox = w.deliver(root, None, MSG)
    assert inbox.parent == root / "new"
    assert (root / "cur").is_dir() and (root / "tmp").is_dir()
    nested = w.deliver(tmp_path / "other", "Lists/Rust", MSG)
    assert nested.parent == tmp_path / "other" / ".Lists.Rust" / "new"
    assert (tmp_path / "other" / ".Lists.Rust" / "maildirfolder").is_file()
    assert (tmp_path / "other" / "cur").is_dir()  # the INBOX of that mailbox too


def test_invalid_folder_creates_nothing(tmp_path: Path) -> None:
    with pytest.raises(ValueError):
        MaildirWriter().deliver(tmp_path / "m", "../../etc", MSG)
    assert list(tmp_path.iterdir()) == []


def test_1000_rapid_deliveries_from_threads_have_unique_names(mailbox: Path) -> None:
    # Two writers as two daemons would have (each counter starts at 1), four threads.
    writers = [MaildirWriter(fsync=False), MaildirWriter(fsync=False)]
    paths: list[Path] = []
    lock = threading.Lock()

    def work(w: MaildirWriter, n: int) -> None:
        mine = [w.deliver(mailbox, None, [f"Subject: {n}-{i}\r\n\r\n".encode()]) for i in range(250)]
        with lock:
            paths.extend(mine)

    threads = [threading.Thread(target=work, args=(writers[i % 2], i)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(paths) == 1000
    assert len({p.name for p in paths}) == 1000
    assert len(files(mailbox / "new")) == 1000
    assert_clean_tmp(mailbox)


def test_hostname_escaping() -> None:
    assert maildir_hostname("a/b:c,d") == r"a\057b\072c\054d"
    name = MaildirWriter(hostname="mx1.example.org").unique_name(42)
    assert NAME_RE.match(name)
    assert name.endswith(".mx1.example.org,S=42")


def test_size_from_name() -> None:
    assert size_from_name("1.M2P3Q4R5.host,S=1234") == 1234
    assert size_from_name("1.M2P3Q4R5.host,S=1234,W=1250:2,RS") == 1234
    assert size_from_name("1.M2P3Q4R5.host:2,S") is None  # the S flag is not a size
    assert size_from_name("1.M2P3Q4R5.host") is None


# ------------------------------------------------------------------ failures


def test_new_dir_unusable_leaves_nothing_behind(mailbox: Path) -> None:
    """A real failure: new/ is not a directory, so the rename fails."""
    (mailbox / "new").rmdir()
    (mailbox / "new").write_bytes(b"")
    with pytest.raises(OSError):
        MaildirWriter().deliver(mailbox, None, MSG)
    assert_clean_tmp(mailbox)


def test_file_fsync_error_leaves_nothing_behind(
    mailbox: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def failing_fsync(fd: int) -> None:
        raise OSError(5, "Input/output error")

    monkeypatch.setattr(maildir_mod.os, "fsync", failing_fsync)
    with pytest.raises(OSError, match="Input/output"):
        MaildirWriter().deliver(mailbox, None, MSG)
    assert_clean_tmp(mailbox)
    assert files(mailbox / "new") == []


def test_write_error_leaves_nothing_behind(mailbox: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def full_disk(fd: int, buffers: list[memoryview]) -> int:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(maildir_mod.os, "writev", full_disk)
    with pytest.raises(OSError, match="No space"):
        MaildirWriter().deliver(mailbox, None, MSG)
    assert_clean_tmp(mailbox)
    assert files(mailbox / "new") == []


def test_dir_fsync_error_removes_the_delivered_file(
    mailbox: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Not durable means not delivered: the caller answers 4xx, so no copy may stay."""

    def failing_fsync_dir(path: Path) -> None:
        raise OSError(5, "Input/output error")

    monkeypatch.setattr(maildir_mod, "fsync_dir", failing_fsync_dir)
    with pytest.raises(OSError):
        MaildirWriter().deliver(mailbox, None, MSG)
    assert files(mailbox / "new") == []
    assert_clean_tmp(mailbox)


def test_without_fsync_no_fsync_happens(mailbox: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def no_fsync(fd: int) -> None:
        raise AssertionError("fsync called with fsync=False")

    monkeypatch.setattr(maildir_mod.os, "fsync", no_fsync)
    monkeypatch.setattr(maildir_mod, "fsync_dir", no_fsync)
    path = MaildirWriter(fsync=False).deliver(mailbox, None, MSG)
    assert path.read_bytes() == b"".join(MSG)


# ------------------------------------------------------------------ several recipients


def test_deliver_many(tmp_path: Path) -> None:
    a, b = tmp_path / "a", tmp_path / "b"
    create_maildirpp(a)
    paths = MaildirWriter().deliver_many([(a, None), (b, None), (a, None), (a, "Junk")], MSG)
    assert paths[0] == paths[2]  # same target listed twice: one copy
    assert [p.parent for p in paths] == [a / "new", b / "new", a / "new", a / ".Junk" / "new"]
    assert len({p.name for p in paths}) == 3
    for p in paths:
        assert p.read_bytes() == b"".join(MSG)
    assert files(a / "new") == [paths[0]]
    assert_clean_tmp(tmp_path)


def test_deliver_many_is_all_or_nothing(tmp_path: Path) -> None:
    a, b, c = tmp_path / "a", tmp_path / "b", tmp_path / "c"
    for root in (a, b, c):
        create_maildirpp(root)
    (b / "new").rmdir()
    (b / "new").write_bytes(b"")  # b's copy cannot be renamed into place
    with pytest.raises(OSError):
        MaildirWriter().deliver_many([(a, None), (b, None), (c, None)], MSG)
    assert files(a / "new") == []  # already renamed, then taken back
    assert files(c / "new") == []
    assert_clean_tmp(tmp_path)


def test_deliver_batch_per_copy_content(tmp_path: Path) -> None:
    a, b = tmp_path / "a", tmp_path / "b"
    items = [
        (a, None, [b"Delivered-To: a@example.org\r\n", *MSG]),
        (b, "Junk", [b"Delivered-To: b@example.org\r\n", *MSG]),
    ]
    pa, pb = MaildirWriter().deliver_batch(items)
    assert pa.read_bytes() == b"Delivered-To: a@example.org\r\n" + b"".join(MSG)
    assert pb.read_bytes() == b"Delivered-To: b@example.org\r\n" + b"".join(MSG)
    assert pb.parent == b / ".Junk" / "new"
    assert size_from_name(pa.name) == pa.stat().st_size


def test_deliver_batch_bad_folder_touches_nothing(tmp_path: Path) -> None:
    items = [(tmp_path / "a", None, MSG), (tmp_path / "b", "../escape", MSG)]
    with pytest.raises(ValueError):
        MaildirWriter().deliver_batch(items)
    assert list(tmp_path.iterdir()) == []


async def test_deliver_async(mailbox: Path) -> None:
    w = MaildirWriter()
    path = await w.deliver_async(mailbox, "Sent", MSG)
    assert path.read_bytes() == b"".join(MSG)
    paths = await w.deliver_many_async([(mailbox, None), (mailbox, "Trash")], MSG)
    assert [p.parent.parent for p in paths] == [mailbox, mailbox / ".Trash"]
    paths = await w.deliver_batch_async([(mailbox, "Drafts", MSG)])
    assert paths[0].parent == mailbox / ".Drafts" / "new"
