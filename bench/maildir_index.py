"""Maildir folder index benchmark (the storage under the IMAP server).

    python bench/maildir_index.py                  # 10,000 messages in a temp dir
    python bench/maildir_index.py --count 100000   # the big-folder case
    python bench/maildir_index.py --dir /var/lib/pymaild/bench

Rows:
  idle RSS/index    daemon memory per idle MailboxIndex: 1000 objects on one 20-message
                    folder, each synced (as SELECT does), RSS growth / 1000
  idle RSS/index 5/f  the same with five sessions per folder over 200 folders
  reconnect         fresh SQLite connect + read the counters (median)
  repool            the same with the connection from the pool, as every operation does
  sync idle small   a whole sync() of an idle 20-message folder (median)
  fill              deliver M small messages with MaildirWriter(fsync=False)
  sync cold         first MailboxIndex.sync(): scan, move new/ -> cur/, stat, build index
  open warm         a new MailboxIndex (a new session) loading the index + scanning,
                    directories modified < 1 s ago (so the readdir cannot be skipped)
  sync warm         sync() again, nothing changed, directories modified < 1 s ago
  sync idle         sync() again after a quiet second: two stat()s instead of a readdir
  open warm idle    a new session on the idle folder while another has it open (median
                    of 5): what LOGIN+SELECT of an already indexed folder costs
  sync +100         sync() after 100 new deliveries
  store \\Seen all  store_flags on every message (M renames + one commit)
  store -\\Seen all the same, removing it again
  (rename floor)    os.rename of every file and back, halved: what a STORE on all cannot beat
  store \\Flagged one  store_flags on one message (rename + dir fsync + commit), median
  sync other session   a session learning all those flag changes from the index
  sync 1 elsewhere  what each other session pays when one message's flags change
  open after store  a new session after the store-all (the index changed since the
                    last session opened)
  uid->seq map      seq(uid) for every UID (what FETCH 1:* / UID FETCH resolve)
  flags all         flags(uid) for every UID (FETCH 1:* FLAGS without I/O)
  reopen after close   a new session once every session of the folder has closed
  open, nothing kept   the same with nothing of the folder in memory (a daemon restart)

The index commits with real fsyncs; only the fill skips them. Nothing here is a test.
"""

from __future__ import annotations

import argparse
import gc
import multiprocessing
import os
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

from mailserver.storage import snapshots
from mailserver.storage.index import MailboxIndex
from mailserver.storage.indexstore import INDEX_FILE, IndexStore
from mailserver.storage.maildir import MaildirWriter
from mailserver.storage.maildirpp import create_maildirpp

T = TypeVar("T")


def timed(label: str, fn: Callable[[], T], note: str = "") -> T:
    t0 = time.perf_counter()
    out = fn()
    ms = (time.perf_counter() - t0) * 1000
    print(f"  {label:<20} {ms:10.1f} ms  {note}")
    return out


def median_ms(label: str, fn: Callable[[], object], runs: int, note: str = "", digits: int = 2) -> None:
    times = []
    for _ in range(runs):
        t0 = time.perf_counter()
        fn()
        times.append((time.perf_counter() - t0) * 1000)
    print(f"  {label:<20} {statistics.median(times):10.{digits}f} ms  {note}")


def message(i: int) -> list[bytes]:
    return [
        f"From: a@example.org\r\nTo: b@example.net\r\nSubject: bench {i}\r\n"
        f"Message-ID: <{i}@bench>\r\n\r\nbody {i}\r\n".encode()
    ]


def rss() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def _idle_rss(folders: list[Path], objects: int) -> float:
    """KiB of RSS per synced index, ``objects`` of them spread over ``folders``."""
    warm = MailboxIndex(folders[0])  # imports, SQLite, the pool: not per index
    warm.sync()
    warm.close()
    held = []
    gc.collect()
    before = rss()
    for i in range(objects):
        ix = MailboxIndex(folders[i % len(folders)])
        ix.sync()
        if hasattr(ix, "release"):
            ix.release()  # (a no-op since every operation releases)
        held.append(ix)
    gc.collect()
    return (rss() - before) / objects / 1024


def idle_memory(base: Path, objects: int = 1000) -> None:
    """RSS per idle index: many sessions with a small folder selected, all idle - all on
    one folder, then five per folder (the memory phase of bench/imap_sync.py)."""
    writer = MaildirWriter(fsync=False)
    folders = []
    for n in range(objects // 5):
        root = base / f"small{n}"
        create_maildirpp(root, durable=False)
        for i in range(20):
            writer.deliver(root, None, message(i))
        first = MailboxIndex(root)
        first.sync()
        first.close()
        folders.append(root)
    ctx = multiprocessing.get_context("spawn")  # a fresh heap for each measurement
    for label, spread in (("idle RSS/index", 1), ("idle RSS/index 5/f", objects // 5)):
        with ctx.Pool(1) as pool:
            per = pool.apply(_idle_rss, (folders[:spread], objects))
        where = "one 20-message folder" if spread == 1 else f"{spread} folders of 20, 5 each"
        print(f"  {label:<20} {per:10.1f} KiB ({objects} synced indexes on {where})")
    root = folders[0]

    def reconnect() -> None:
        store = IndexStore(root / INDEX_FILE)
        store.connect()
        store.read_meta()
        store.close()

    median_ms("reconnect", reconnect, 200, "(fresh connect + read counters + close, median of 200)", 3)
    if hasattr(IndexStore, "release"):

        def repool() -> None:
            store = IndexStore(root / INDEX_FILE)
            store.connect()
            store.read_meta()
            store.release()

        median_ms("repool", repool, 200, "(pooled connect + read counters + release, median)", 3)
    ix = MailboxIndex(root)
    ix.sync()
    median_ms("sync idle small", ix.sync, 200, "(20 messages: lock, connection, counters, 2 stat)", 3)
    ix.close()


def run(base: Path, count: int) -> None:
    idle_memory(base)
    root = base / "mailbox"
    create_maildirpp(root, durable=False)
    writer = MaildirWriter(fsync=False)
    print(f"M = {count} messages in {root}")
    timed("fill", lambda: [writer.deliver(root, None, message(i)) for i in range(count)])

    ix = MailboxIndex(root)
    c = timed("sync cold", ix.sync)
    assert len(c.new) == count
    ix2 = MailboxIndex(root)
    timed("open warm", ix2.sync, "(new session: load index + scan; dirs changed <1 s ago)")
    timed("sync warm", ix.sync, "(nothing changed; dirs changed <1 s ago: full readdir)")
    time.sleep(1.1)
    ix.sync()  # records the directory mtimes as trustworthy
    ix2.sync()
    timed("sync idle", ix.sync, "(nothing changed; dir mtimes unchanged: no readdir)")

    def open_session() -> None:
        other = MailboxIndex(root)
        other.sync()
        other.close()

    median_ms("open warm idle", open_session, 5, "(new session, folder idle and open elsewhere)", 1)
    for i in range(100):
        writer.deliver(root, None, message(count + i))
    c = timed("sync +100", ix.sync)
    assert len(c.new) == 100
    uids = list(ix.uids)
    changed, _ = timed("store \\Seen all", lambda: ix.store_flags(uids, ["\\Seen"]))
    assert len(changed) == len(uids)
    changed, _ = timed("store -\\Seen all", lambda: ix.store_flags(uids, ["\\Seen"], "remove"))
    assert len(changed) == len(uids)
    ix.store_flags(uids, ["\\Seen"])

    def rename_all() -> None:
        cur = f"{root}/cur/"
        names = os.listdir(cur)
        for name in names:
            os.rename(cur + name, cur + name + "F")
        for name in names:
            os.rename(cur + name + "F", cur + name)

    t0 = time.perf_counter()
    if hasattr(ix, "release"):
        ix.release()
    rename_all()
    half = (time.perf_counter() - t0) * 1000 / 2
    print(f"  {'(rename floor)':<20} {half:10.1f} ms  (os.rename of every file, no index: the floor)")
    one_ms = []
    for uid in uids[:50]:
        t0 = time.perf_counter()
        ix.store_flags([uid], ["\\Flagged"])
        one_ms.append((time.perf_counter() - t0) * 1000)
    label = "store \\Flagged one"
    print(f"  {label:<20} {statistics.median(one_ms):10.2f} ms  (median of 50, fsyncs)")
    c = timed("sync other session", ix2.sync, "(learns every flag change from the index)")
    assert len(c.flags) == count and len(c.new) == 100
    pairs = iter(uids[100:150])

    def one_elsewhere() -> None:
        ix.store_flags([next(pairs)], ["\\Answered"])
        t0 = time.perf_counter()
        assert len(ix2.sync().flags) == 1
        times.append((time.perf_counter() - t0) * 1000)

    times: list[float] = []
    for _ in range(20):
        one_elsewhere()
    label = "sync 1 elsewhere"
    print(f"  {label:<20} {statistics.median(times):10.2f} ms  (median of 20: readdir + 1 row from index)")
    timed("open after store", open_session, "(new session after others changed every message)")
    timed("uid->seq map", lambda: [ix.seq(u) for u in uids], f"({len(uids)} lookups)")
    timed("flags all", lambda: [ix.flags(u) for u in uids])
    ix.close()
    ix2.close()
    time.sleep(1.1)
    timed("reopen after close", open_session, "(every session had closed: LOGOUT, then LOGIN+SELECT)")
    snapshots._kept.clear()  # as after a daemon restart: nothing in memory
    timed("open, nothing kept", open_session, "(a new session in a new process: reads the index)")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--count", type=int, default=10_000, help="messages in the folder (default 10000)")
    ap.add_argument("--dir", type=Path, default=None, help="where to build the test folder")
    args = ap.parse_args()
    if args.dir:
        args.dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=args.dir) as tmp:
        run(Path(tmp), args.count)


if __name__ == "__main__":
    main()
