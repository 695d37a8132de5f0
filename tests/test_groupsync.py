"""Group commit of directory fsyncs: shared by concurrent callers, never skipped."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import pytest

from mailserver.storage.groupsync import DirectorySync


def test_concurrent_callers_share_fsyncs(tmp_path: Path) -> None:
    started: list[float] = []

    def slow_fsync(path: Path) -> None:
        started.append(time.monotonic())
        time.sleep(0.05)  # a real pause: a slow disk, so that callers pile up behind one fsync

    sync = DirectorySync(slow_fsync)
    calls: list[tuple[float, float]] = []

    def caller() -> None:
        t0 = time.monotonic()
        sync.sync(tmp_path)
        calls.append((t0, time.monotonic()))

    threads = [threading.Thread(target=caller) for _ in range(20)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(calls) == 20
    assert sync.fsyncs < 20  # shared
    # The durability rule: every caller returned after an fsync that *started* after
    # the caller entered sync() (its rename came before that).
    for entered, returned in calls:
        assert any(entered <= s and s + 0.05 <= returned + 1e-3 for s in started)


def test_a_single_caller_always_fsyncs(tmp_path: Path) -> None:
    sync = DirectorySync()
    for _ in range(3):
        sync.sync(tmp_path)
    assert sync.fsyncs == 3


def test_failure_is_reported_and_the_next_caller_retries(tmp_path: Path) -> None:
    attempts: list[int] = []

    def flaky(path: Path) -> None:
        attempts.append(1)
        if len(attempts) == 1:
            raise OSError(5, "EIO")

    sync = DirectorySync(flaky)
    with pytest.raises(OSError):
        sync.sync(tmp_path)
    sync.sync(tmp_path)  # not covered by the failed one: it fsyncs itself
    assert len(attempts) == 2


def test_different_directories_do_not_share(tmp_path: Path) -> None:
    seen: list[Path] = []
    sync = DirectorySync(seen.append)
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    sync.sync(tmp_path / "a")
    sync.sync(tmp_path / "b")
    assert seen == [tmp_path / "a", tmp_path / "b"]
