"""Maildir folder index benchmark (storage for the future IMAP server).

    python bench/maildir_index.py                  # 10,000 messages in a temp dir
    python bench/maildir_index.py --count 100000   # the big-folder case
    python bench/maildir_index.py --dir /var/lib/pymaild/bench

Rows:
  fill              deliver M small messages with MaildirWriter(fsync=False)
  sync cold         first MailboxIndex.sync(): scan, move new/ -> cur/, stat, build index
  open warm         a new MailboxIndex (a new session) loading the index + scanning
  sync warm         sync() again, nothing changed, directories modified < 1 s ago
  sync idle         sync() again after a quiet second: two stat()s instead of a readdir
  sync +100         sync() after 100 new deliveries
  store \\Seen all  store_flags on every message (M renames + one commit)
  store \\Seen one  store_flags on one message (rename + dir fsync + commit), median
  uid->seq map      seq(uid) for every UID (what FETCH 1:* / UID FETCH resolve)
  flags all         flags(uid) for every UID (FETCH 1:* FLAGS without I/O)

The index commits with real fsyncs; only the fill skips them. Nothing here is a test.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

from mailserver.delivery.maildir import MaildirWriter
from mailserver.storage.index import MailboxIndex
from mailserver.storage.maildirpp import create_maildirpp

T = TypeVar("T")


def timed(label: str, fn: Callable[[], T], note: str = "") -> T:
    t0 = time.perf_counter()
    out = fn()
    ms = (time.perf_counter() - t0) * 1000
    print(f"  {label:<18} {ms:10.1f} ms  {note}")
    return out


def message(i: int) -> list[bytes]:
    return [
        f"From: a@example.org\r\nTo: b@example.net\r\nSubject: bench {i}\r\n"
        f"Message-ID: <{i}@bench>\r\n\r\nbody {i}\r\n".encode()
    ]


def run(base: Path, count: int) -> None:
    root = base / "mailbox"
    create_maildirpp(root, durable=False)
    writer = MaildirWriter(fsync=False)
    print(f"M = {count} messages in {root}")
    timed("fill", lambda: [writer.deliver(root, None, message(i)) for i in range(count)])

    ix = MailboxIndex(root)
    c = timed("sync cold", ix.sync)
    assert len(c.new) == count
    ix2 = MailboxIndex(root)
    timed("open warm", ix2.sync, "(new session: load index + scan)")
    timed("sync warm", ix.sync, "(nothing changed; dirs changed <1 s ago: full readdir)")
    time.sleep(1.1)
    ix.sync()  # records the directory mtimes as trustworthy
    timed("sync idle", ix.sync, "(nothing changed; dir mtimes unchanged: no readdir)")
    for i in range(100):
        writer.deliver(root, None, message(count + i))
    c = timed("sync +100", ix.sync)
    assert len(c.new) == 100
    uids = list(ix.uids)
    changed, _ = timed("store \\Seen all", lambda: ix.store_flags(uids, ["\\Seen"]))
    assert len(changed) == len(uids)
    one = []
    for uid in uids[:50]:
        t0 = time.perf_counter()
        ix.store_flags([uid], ["\\Flagged"])
        one.append((time.perf_counter() - t0) * 1000)
    label = "store \\Flagged one"
    print(f"  {label:<18} {statistics.median(one):10.2f} ms  (median of 50, fsyncs)")
    c = timed("sync other session", ix2.sync, "(learns every flag change from the index)")
    assert len(c.flags) == count and len(c.new) == 100
    timed("uid->seq map", lambda: [ix.seq(u) for u in uids], f"({len(uids)} lookups)")
    timed("flags all", lambda: [ix.flags(u) for u in uids])
    ix.close()
    ix2.close()


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
