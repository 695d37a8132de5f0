"""MailboxIndex: the Maildir folder index under the (future) IMAP server.

Real Maildirs in tmp_path, filled by the real MaildirWriter; other programs (mutt,
Dovecot) are imitated by renaming and deleting files the way they do.
"""

from __future__ import annotations

import logging
import multiprocessing
import os
import sqlite3
import threading
from pathlib import Path

import pytest

from mailserver.storage.index import MailboxIndex
from mailserver.storage.indexstore import EXPUNGE_LOG_MAX, INDEX_FILE
from mailserver.storage.indextypes import ReadOnlyMailbox
from mailserver.storage.maildir import MaildirWriter
from mailserver.storage.maildirpp import create_maildirpp, folder_path


def msg(i: int) -> list[bytes]:
    return [f"From: a@example.org\r\nSubject: message {i}\r\n\r\nbody {i}\r\n".encode()]


@pytest.fixture
def root(tmp_path: Path) -> Path:
    r = tmp_path / "mail" / "example.org" / "bob"
    create_maildirpp(r, durable=False)
    return r


@pytest.fixture
def writer() -> MaildirWriter:
    return MaildirWriter(fsync=False)


def deliver(writer: MaildirWriter, root: Path, n: int, folder: str | None = None) -> list[Path]:
    return [writer.deliver(root, folder, msg(i)) for i in range(n)]


def names(d: Path) -> list[str]:
    return sorted(os.listdir(d))


def test_uids_stable_across_restart_and_new_to_cur(root: Path, writer: MaildirWriter) -> None:
    paths = deliver(writer, root, 5)
    ix = MailboxIndex(root)
    changes = ix.sync()
    assert changes.new == [1, 2, 3, 4, 5]
    assert len(ix) == 5 and ix.uidnext == 6 and ix.uidvalidity > 0
    # Delivery order is UID order, and every file moved to cur/ with an empty ":2,".
    assert names(root / "new") == []
    assert [ix.path(u).name for u in ix.uids] == [p.name + ":2," for p in paths]
    assert all(ix.path(u).parent == root / "cur" for u in ix.uids)
    assert [ix.size(u) for u in ix.uids] == [p.stat().st_size for p in [ix.path(u) for u in ix.uids]]
    assert ix.recent_count == 5
    before = {u: ix.path(u).name for u in ix.uids}
    uidvalidity = ix.uidvalidity
    ix.close()

    deliver(writer, root, 2)
    again = MailboxIndex(root)  # a restart
    assert again.sync().new == [1, 2, 3, 4, 5, 6, 7]
    assert again.uidvalidity == uidvalidity
    assert {u: again.path(u).name for u in [1, 2, 3, 4, 5]} == before
    assert again.recent_count == 2  # only the new ones: the first session had claimed 1..5
    assert not again.sync()  # warm: nothing changed


def test_sequence_numbers(root: Path, writer: MaildirWriter) -> None:
    deliver(writer, root, 6)
    ix = MailboxIndex(root)
    ix.sync()
    ix.store_flags([2, 5], ["\\Deleted"])
    assert ix.expunge().expunged_seqs == [5, 2]  # descending: valid in this order
    assert list(ix.uids) == [1, 3, 4, 6]
    assert [ix.seq(u) for u in (1, 2, 3, 4, 6)] == [1, None, 2, 3, 4]
    assert ix.uid_at(4) == 6
    assert list(ix.uids_between(2, 5)) == [3, 4]
    with pytest.raises(IndexError):
        ix.uid_at(5)


def test_read_only_leaves_new_and_recent(root: Path, writer: MaildirWriter) -> None:
    deliver(writer, root, 3)
    ro = MailboxIndex(root, read_only=True)
    assert ro.sync().new == [1, 2, 3]
    assert len(names(root / "new")) == 3 and ro.path(1).parent.name == "new"
    assert ro.recent_count == 3  # seen as recent, but not claimed
    with pytest.raises(ReadOnlyMailbox):
        ro.store_flags([1], ["\\Seen"])
    with pytest.raises(ReadOnlyMailbox):
        ro.expunge()
    rw = MailboxIndex(root)
    rw.sync()
    assert rw.recent_count == 3 and names(root / "new") == []
    assert MailboxIndex(root).sync().new == [1, 2, 3]
    third = MailboxIndex(root)
    third.sync()
    assert third.recent_count == 0  # the first read-write session got them
    # The read-only view learns that the files moved (no flag change to report).
    assert not ro.sync().flags
    assert ro.path(1).parent.name == "cur" and ro.open(1).read() == b"".join(msg(0))


def test_external_flag_change_bumps_modseq(root: Path, writer: MaildirWriter) -> None:
    deliver(writer, root, 3)
    ix = MailboxIndex(root)
    ix.sync()
    old_modseq, highest = ix.modseq(2), ix.highestmodseq
    p = ix.path(2)
    os.rename(p, p.with_name(p.name + "RS"))  # mutt: replied + seen
    changes = ix.sync()
    assert changes.flags == [2] and not changes.new and not changes.expunged
    assert ix.flags(2) == {"\\Answered", "\\Seen"}
    assert ix.modseq(2) > old_modseq and ix.highestmodseq > highest
    assert ix.changed_since(highest) == [2]
    # Another session sees the same thing through the index.
    other = MailboxIndex(root)
    other.sync()
    assert other.flags(2) == {"\\Answered", "\\Seen"} and other.modseq(2) == ix.modseq(2)


def test_external_rename_before_store_is_not_lost(root: Path, writer: MaildirWriter) -> None:
    deliver(writer, root, 2)
    ix = MailboxIndex(root)
    ix.sync()
    p = ix.path(1)
    os.rename(p, p.with_name(p.name + "F"))  # flagged elsewhere; we have not synced
    assert ix.store_flags([1], ["\\Seen"]) == ([1], [])
    assert ix.flags(1) == {"\\Seen", "\\Flagged"}
    assert ix.path(1).name.endswith(":2,FS") and ix.path(1).exists()
    # The same race with UNCHANGEDSINCE: the other program's change wins.
    modseq = ix.modseq(2)
    p = ix.path(2)
    os.rename(p, p.with_name(p.name + "T"))
    assert ix.store_flags([2], ["\\Seen"], unchanged_since=modseq) == ([], [2])
    assert ix.sync().flags == [2]
    assert ix.flags(2) == {"\\Deleted"}


def test_external_deletion(root: Path, writer: MaildirWriter) -> None:
    deliver(writer, root, 4)
    ix = MailboxIndex(root)
    ix.sync()
    highest = ix.highestmodseq
    os.unlink(ix.path(2))
    os.unlink(ix.path(3))
    changes = ix.sync()
    assert changes.expunged == [2, 3] and changes.expunged_seqs == [3, 2]
    assert list(ix.uids) == [1, 4]
    assert ix.vanished_since(highest) == ([2, 3], True)
    assert MailboxIndex(root).sync().new == [1, 4]


def test_store_modes_and_unchangedsince(root: Path, writer: MaildirWriter) -> None:
    deliver(writer, root, 3)
    a, b = MailboxIndex(root), MailboxIndex(root)
    a.sync()
    b.sync()
    assert a.store_flags([1, 2], ["\\Seen", "\\Flagged"], "add") == ([1, 2], [])
    assert a.path(1).name.endswith(":2,FS")  # letters sorted, as the Maildir spec says
    m1 = a.modseq(1)
    assert a.store_flags([1], ["\\Seen"], "add") == ([], [])  # no change, no new modseq
    assert a.modseq(1) == m1
    assert a.store_flags([1], ["\\Flagged"], "remove") == ([1], [])
    assert a.flags(1) == {"\\Seen"} and a.modseq(1) > m1
    assert a.store_flags([2], ["\\Draft", "Work"], "replace") == ([2], [])
    assert a.flags(2) == {"\\Draft", "Work"} and a.path(2).name.endswith(":2,Da")

    # b's client knows the folder as of `known`; a then changes message 3, so b's
    # conditional store must fail for 3 and succeed for 1.
    b.sync()
    known = b.highestmodseq
    a.store_flags([3], ["\\Answered"])
    changed, failed = b.store_flags([1, 3], ["\\Deleted"], "add", unchanged_since=known)
    assert failed == [3] and changed == [1]
    fresh = MailboxIndex(root)
    fresh.sync()
    assert fresh.flags(3) == {"\\Answered"}
    assert fresh.flags(1) == {"\\Seen", "\\Deleted"}
    # b is told about a's change at its next sync, not in the middle of its STORE.
    assert b.sync().flags == [3]
    with pytest.raises(ValueError):
        a.store_flags([1], ["\\Recent"])
    with pytest.raises(ValueError):
        a.store_flags([1], ["bad word"])


def test_expunge_and_uid_expunge(root: Path, writer: MaildirWriter) -> None:
    deliver(writer, root, 5)
    ix = MailboxIndex(root)
    ix.sync()
    highest = ix.highestmodseq
    ix.store_flags([1, 2, 4], ["\\Deleted"])
    paths = {u: ix.path(u) for u in (1, 2, 4)}
    uid_exp = ix.expunge([2, 3])  # UID EXPUNGE 2:3: only the \Deleted one goes
    assert uid_exp.expunged == [2] and uid_exp.expunged_seqs == [2]
    assert not paths[2].exists() and paths[1].exists()
    rest = ix.expunge()
    assert rest.expunged == [1, 4] and rest.expunged_seqs == [3, 1]
    assert list(ix.uids) == [3, 5] and names(root / "cur") == sorted(
        ix.path(u).name for u in (3, 5)
    )
    assert ix.vanished_since(highest) == ([1, 2, 4], True)
    other = MailboxIndex(root)
    assert other.sync().new == [3, 5]


def test_other_sessions_expunge_waits_for_sync(root: Path, writer: MaildirWriter) -> None:
    deliver(writer, root, 3)
    a, b = MailboxIndex(root), MailboxIndex(root)
    a.sync()
    b.sync()
    a.store_flags([2], ["\\Deleted"])
    a.expunge()
    # b runs a STORE first: no sequence number may shift under it.
    assert b.store_flags([1, 2, 3], ["\\Seen"]) == ([1, 3], [])
    assert list(b.uids) == [1, 2, 3]
    assert b.flags(2) == frozenset() and not b.path(2).exists()  # last known row, file gone
    changes = b.sync()
    assert changes.expunged == [2] and changes.expunged_seqs == [2]
    assert list(b.uids) == [1, 3]
    a.sync()
    assert b.highestmodseq == a.highestmodseq


def test_expunge_log_is_bounded(root: Path, writer: MaildirWriter, monkeypatch) -> None:
    import mailserver.storage.indexstore as store

    monkeypatch.setattr(store, "EXPUNGE_LOG_MAX", 3)
    assert EXPUNGE_LOG_MAX >= 1000  # the real bound
    deliver(writer, root, 6)
    ix = MailboxIndex(root)
    ix.sync()
    start = ix.highestmodseq
    ix.store_flags(list(ix.uids), ["\\Deleted"])
    after_store = ix.highestmodseq
    ix.expunge()
    uids, complete = ix.vanished_since(start)
    assert not complete  # the log no longer reaches back that far
    uids, complete = ix.vanished_since(after_store + 3)
    assert complete and uids == [4, 5, 6]


def test_append_durable_with_flags_and_date(root: Path) -> None:
    ix = MailboxIndex(root)
    ix.sync()
    data = b"From: me@example.org\r\nSubject: draft\r\n\r\ntext\r\n"
    uid = ix.append(data, ["\\Seen", "\\Draft", "$Label1"], 1_000_000_000)
    assert uid == 1
    assert names(root / "tmp") == []
    changes = ix.sync()
    assert changes.new == [1]
    p = ix.path(1)
    assert p.parent == root / "cur" and p.name.endswith(":2,DSa")
    assert p.read_bytes() == data and ix.size(1) == len(data)
    assert p.stat().st_mtime == 1_000_000_000 == ix.internal_date(1)
    assert ix.flags(1) == {"\\Seen", "\\Draft", "$Label1"}
    assert (root / "dovecot-keywords").read_text() == "0 $Label1\n"
    assert ix.append(b"x\r\n") == 2


def test_copy_hard_links_and_maps_keywords(root: Path, writer: MaildirWriter) -> None:
    deliver(writer, root, 3)
    sent_dir = folder_path(root, "Sent")
    # The destination already knows other keywords: letters must be translated.
    (sent_dir / "dovecot-keywords").write_text("0 other\n1 $Junk\n")
    src, dst = MailboxIndex(root), MailboxIndex(sent_dir)
    src.sync()
    dst.sync()
    src.store_flags([2], ["\\Seen", "project"])
    assert src.path(2).name.endswith(":2,Sa")
    pairs = src.copy_to(dst, [3, 2, 99])
    assert pairs == [(2, 1), (3, 2)]
    assert dst.sync().new == [1, 2]
    assert dst.flags(1) == {"\\Seen", "project"} and dst.path(1).name.endswith(":2,Sc")
    assert os.stat(dst.path(1)).st_ino == os.stat(src.path(2)).st_ino  # a hard link
    assert dst.path(2).read_bytes() == src.path(3).read_bytes()
    assert dst.internal_date(1) == src.internal_date(2) and dst.size(1) == src.size(2)
    assert dst.recent_count == 2
    assert names(sent_dir / "tmp") == []
    # MOVE = copy + store \Deleted + UID EXPUNGE.
    src.store_flags([2, 3], ["\\Deleted"])
    assert src.expunge([2, 3]).expunged == [2, 3]
    assert dst.path(1).exists()


def test_copy_falls_back_to_a_real_copy(root: Path, writer: MaildirWriter, monkeypatch) -> None:
    import errno

    deliver(writer, root, 1)
    src, dst = MailboxIndex(root), MailboxIndex(folder_path(root, "Trash"))
    src.sync()

    def no_link(a: object, b: object) -> None:
        raise OSError(errno.EXDEV, "cross-device link")

    monkeypatch.setattr(os, "link", no_link)
    assert src.copy_to(dst, [1]) == [(1, 1)]
    dst.sync()
    assert os.stat(dst.path(1)).st_ino != os.stat(src.path(1)).st_ino
    assert dst.path(1).read_bytes() == src.path(1).read_bytes()
    assert dst.internal_date(1) == pytest.approx(src.internal_date(1), abs=1e-3)


def test_two_sessions_in_threads_no_lost_updates(root: Path, writer: MaildirWriter) -> None:
    """Two index objects on one folder, each in its own thread, plus live deliveries."""
    deliver(writer, root, 20)
    a, b = MailboxIndex(root), MailboxIndex(root)
    errors: list[BaseException] = []
    stop = threading.Event()

    def session(ix: MailboxIndex, flag: str) -> None:
        try:
            for _ in range(15):
                ix.sync()
                ix.store_flags(list(ix.uids), [flag])
        except BaseException as exc:
            errors.append(exc)

    def mta() -> None:
        for _ in range(200):  # new files keep arriving while the sessions work
            if stop.is_set():
                break
            deliver(writer, root, 1)
            stop.wait(0.002)

    threads = [threading.Thread(target=session, args=(a, "\\Seen")),
               threading.Thread(target=session, args=(b, "kw_b"))]
    delivery = threading.Thread(target=mta)
    delivery.start()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    stop.set()
    delivery.join()
    assert not errors
    check = MailboxIndex(root)
    check.sync()
    on_disk = names(root / "cur") + names(root / "new")
    assert len(check) == len(on_disk) == len(set(check.uids))
    assert list(check.uids) == list(range(1, len(on_disk) + 1))  # no duplicate, no gap
    # Both sessions stored on the first 20 in every round: neither write was lost.
    for uid in range(1, 21):
        assert check.flags(uid) == {"\\Seen", "kw_b"}, uid
    modseqs = [check.modseq(u) for u in check.uids]
    assert len(set(modseqs)) == len(modseqs)  # every change got its own modseq


def _process_session(root: str, flag: str, rounds: int) -> None:
    ix = MailboxIndex(Path(root))
    for _ in range(rounds):
        ix.sync()
        ix.store_flags(list(ix.uids), [flag])


def test_two_processes_no_lost_updates(root: Path, writer: MaildirWriter) -> None:
    deliver(writer, root, 30)
    ctx = multiprocessing.get_context("spawn")
    procs = [ctx.Process(target=_process_session, args=(str(root), f, 10))
             for f in ("\\Flagged", "\\Answered")]
    for p in procs:
        p.start()
    for p in procs:
        p.join(60)
        assert p.exitcode == 0
    ix = MailboxIndex(root)
    ix.sync()
    assert list(ix.uids) == list(range(1, 31))
    assert all(ix.flags(u) == {"\\Flagged", "\\Answered"} for u in ix.uids)


def test_corrupt_index_rebuilt_with_new_uidvalidity(
    root: Path, writer: MaildirWriter, caplog: pytest.LogCaptureFixture
) -> None:
    deliver(writer, root, 3)
    session = MailboxIndex(root)
    session.sync()
    session.store_flags([2], ["\\Seen"])
    old = session.uidvalidity
    session.close()
    db = root / INDEX_FILE
    db.write_bytes(b"this is not an SQLite database" * 100)
    caplog.set_level(logging.INFO, logger="pymaild.storage")
    ix = MailboxIndex(root)
    changes = ix.sync()
    assert ix.uidvalidity > old
    assert changes.new == [1, 2, 3]
    assert ix.flags(2) == {"\\Seen"}  # flags live in the file names: they survive
    assert any("corrupt" in r.getMessage() and r.levelno == logging.WARNING for r in caplog.records)
    assert any(p.name.startswith(INDEX_FILE + ".corrupt-") for p in root.iterdir())
    sqlite3.connect(db).execute("SELECT count(*) FROM messages").fetchone()


def test_missing_index_rebuilt_and_open_sessions_told(
    root: Path, writer: MaildirWriter, caplog: pytest.LogCaptureFixture
) -> None:
    deliver(writer, root, 2)
    session = MailboxIndex(root)
    session.sync()
    old = session.uidvalidity
    os.unlink(root / INDEX_FILE)
    caplog.set_level(logging.INFO, logger="pymaild.storage")
    other = MailboxIndex(root)
    other.sync()
    assert other.uidvalidity > old  # even within the same second
    assert any("missing" in r.getMessage() for r in caplog.records)
    changes = session.sync()
    # The view starts over under the new UIDVALIDITY; the IMAP layer must end the
    # session's SELECT (the client resynchronises from scratch).
    assert changes.uidvalidity_changed and changes.new == [1, 2]
    assert session.uidvalidity == other.uidvalidity and list(session.uids) == [1, 2]
    assert not session.sync()


def test_dovecot_keywords_interop(root: Path, writer: MaildirWriter) -> None:
    # A folder as Dovecot leaves it: letters a=$Junk b=work d=todo (c unused).
    (root / "dovecot-keywords").write_text("0 $Junk\n1 work\n3 todo\n")
    p = deliver(writer, root, 1)[0]
    os.rename(p, root / "cur" / (p.name + ":2,PSadz"))
    ix = MailboxIndex(root)
    ix.sync()
    assert ix.flags(1) == {"\\Seen", "$Junk", "todo"}  # P and unmapped z: kept, not shown
    ix.store_flags([1], ["NewOne", "WORK"], "add")  # case-insensitive: WORK is "work"
    assert (root / "dovecot-keywords").read_text() == "0 $Junk\n1 work\n2 NewOne\n3 todo\n"
    assert ix.path(1).name.endswith(":2,PSabcdz")
    assert ix.flags(1) == {"\\Seen", "$Junk", "work", "NewOne", "todo"}
    ix.store_flags([1], ["\\Flagged"], "replace")
    assert ix.path(1).name.endswith(":2,FPz")  # foreign letters survive a replace
    assert set(ix.keywords()) == {"$Junk", "work", "NewOne", "todo"}


def test_more_than_26_keywords_live_in_the_index(root: Path, writer: MaildirWriter) -> None:
    deliver(writer, root, 1)
    ix = MailboxIndex(root)
    ix.sync()
    kws = [f"kw{i:02d}" for i in range(30)]
    ix.store_flags([1], kws)
    assert ix.flags(1) == set(kws)
    assert len(ix.path(1).name.split(":2,")[1]) == 26
    again = MailboxIndex(root)
    again.sync()
    assert again.flags(1) == set(kws)
    again.store_flags([1], ["kw29", "kw00"], "remove")
    assert again.flags(1) == set(kws) - {"kw29", "kw00"}


def test_idle_folder_skips_readdir_but_misses_nothing(
    root: Path, writer: MaildirWriter, monkeypatch: pytest.MonkeyPatch
) -> None:
    import mailserver.storage.maildirscan as maildirscan

    deliver(writer, root, 3)
    ix = MailboxIndex(root)
    ix.sync()
    scans = []
    real_look = MailboxIndex._look  # the readdir of sync()
    monkeypatch.setattr(MailboxIndex, "_look", lambda self: scans.append(1) or real_look(self))
    real_ns = maildirscan.time.time_ns
    monkeypatch.setattr(maildirscan.time, "time_ns", lambda: real_ns() + 5_000_000_000)
    assert not ix.sync() and len(scans) == 1  # dirs a second old: stamp recorded
    assert not ix.sync() and len(scans) == 1  # idle: two stat() calls, no readdir
    deliver(writer, root, 1)
    assert ix.sync().new == [4] and len(scans) == 2
    p = ix.path(1)
    os.rename(p, p.with_name(p.name + "S"))
    assert ix.sync().flags == [1]
    # Index-only changes by another session still arrive while the dirs are idle.
    ix.sync()
    other = MailboxIndex(root)
    other.sync()
    other.store_flags([2], [f"k{i}" for i in range(27)])  # 27th keyword: index only
    ix.sync()
    n = len(scans)
    assert other.store_flags([2], ["k26"], "remove") == ([2], [])
    assert ix.sync().flags == [2] and len(scans) == n


def test_idle_index_holds_no_connection_and_release_keeps_the_view(
    root: Path, writer: MaildirWriter
) -> None:
    from mailserver.storage import indexstore

    deliver(writer, root, 4)
    a, b = MailboxIndex(root), MailboxIndex(root)
    assert a.sync().new == [1, 2, 3, 4]
    b.sync()
    # Every operation gives its connection and lock descriptor back at its end.
    assert a._store.conn is None and a._lock_fd is None
    assert len(indexstore.POOL) >= 1
    b.store_flags([2], ["\\Seen"])
    b.store_flags([3], ["\\Deleted"])
    b.expunge()
    deliver(writer, root, 1)
    a.release()
    a.release()  # idempotent
    # Nothing was announced yet: the view and the rows are as the client knows them.
    assert list(a.uids) == [1, 2, 3, 4] and a.flags(2) == frozenset() and a.recent_count == 4
    assert a.message(3).uid == 3  # expunged elsewhere, still answerable
    changes = a.sync()
    assert changes.expunged == [3] and changes.flags == [2] and changes.new == [5]
    assert a.flags(2) == {"\\Seen"} and list(a.uids) == [1, 2, 4, 5]
    b.sync()
    assert a.highestmodseq == b.highestmodseq
    # A changed file is caught after a release too (the readdir trust is kept as is).
    p = a.path(1)
    os.rename(p, p.with_name(p.name + "F"))
    a.release()
    assert a.sync().flags == [1] and a.flags(1) == {"\\Flagged"}


def test_pooled_connection_never_outlives_its_file(root: Path, writer: MaildirWriter) -> None:
    from mailserver.storage import indexstore

    deliver(writer, root, 2)
    indexstore.POOL.clear()
    ix = MailboxIndex(root)
    ix.sync()
    pooled = indexstore.POOL.take(str(root / INDEX_FILE), _ident(root / INDEX_FILE))
    assert pooled is not None  # released into the pool, found again by path and inode
    indexstore.POOL.put(str(root / INDEX_FILE), _ident(root / INDEX_FILE), pooled)
    # The file is replaced (restored from a backup, say): the pooled connection to the old
    # inode must not be used for the new file.
    os.rename(root / INDEX_FILE, root / "old.sqlite")
    (root / INDEX_FILE).write_bytes((root / "old.sqlite").read_bytes())
    assert indexstore.POOL.take(str(root / INDEX_FILE), _ident(root / INDEX_FILE)) is None
    assert len(indexstore.POOL) == 0
    assert not ix.sync() and list(ix.uids) == [1, 2]
    # Bounded: releasing more connections than POOL_MAX closes the oldest.
    stores = [indexstore.IndexStore(root / INDEX_FILE) for _ in range(indexstore.POOL_MAX + 3)]
    for s in stores:
        s.connect()
    for s in stores:
        s.release()
    assert len(indexstore.POOL) == indexstore.POOL_MAX


def test_pooled_connection_not_reused_after_fork(root: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from mailserver.storage import indexstore

    indexstore.POOL.clear()
    ix = MailboxIndex(root)
    ix.sync()
    assert len(indexstore.POOL) == 1
    real = os.getpid()
    monkeypatch.setattr(indexstore.os, "getpid", lambda: real + 1)  # as in a forked child
    assert indexstore.POOL.take(str(root / INDEX_FILE), _ident(root / INDEX_FILE)) is None
    assert len(indexstore.POOL) == 0


def _ident(path: Path) -> tuple[int, int]:
    st = path.stat()
    return st.st_dev, st.st_ino


def test_sync_ignores_what_is_not_a_message_file(root: Path, writer: MaildirWriter) -> None:
    deliver(writer, root, 2)
    (root / "new" / ".hidden").write_text("x")
    (root / "new" / "adir").mkdir()
    (root / "cur" / "bdir:2,").mkdir()
    (root / "cur" / ".nfs0001").write_text("x")
    os.symlink("/etc/hostname", root / "cur" / "link:2,")
    os.symlink("/etc/hostname", root / "new" / "link2")
    ix = MailboxIndex(root)
    assert ix.sync().new == [1, 2]
    assert sorted(names(root / "new")) == [".hidden", "adir", "link2"]  # none of them moved
    assert not ix.sync()
    # The same once the mirror exists (the set comparison path), and in a read-only view.
    (root / "cur" / "cdir:2,S").mkdir()
    os.symlink("/etc/hostname", root / "cur" / "link3:2,S")
    assert not ix.sync()
    ro = MailboxIndex(root, read_only=True)
    assert ro.sync().new == [1, 2] and not ro.sync()


def test_two_files_for_one_message(
    root: Path, writer: MaildirWriter, caplog: pytest.LogCaptureFixture
) -> None:
    deliver(writer, root, 2)
    ix = MailboxIndex(root)
    ix.sync()
    p = ix.path(1)
    # A copy of message 1 turns up in new/ (restored by some tool): cur/ is the truth.
    os.link(p, root / "new" / p.name.split(":")[0])
    assert not ix.sync() and ix.path(1) == p
    assert len(names(root / "new")) == 1  # not moved over the one in cur/
    # A second name in cur/: one of them is taken, with a warning, and nothing breaks.
    os.unlink(root / "new" / p.name.split(":")[0])
    os.link(p, p.with_name(p.name + "S"))
    caplog.set_level(logging.WARNING, logger="pymaild.storage")
    ix.sync()
    assert any("two files" in r.getMessage() for r in caplog.records)
    assert ix.path(1).exists() and list(ix.uids) == [1, 2]
    os.unlink(ix.path(1))  # the chosen one goes: the other is found, nothing expunged
    changes = ix.sync()
    assert not changes.expunged and ix.path(1).exists() and list(ix.uids) == [1, 2]


def test_a_file_missed_by_readdir_is_not_expunged(
    root: Path, writer: MaildirWriter, monkeypatch: pytest.MonkeyPatch
) -> None:
    import mailserver.storage.maildirscan as maildirscan

    deliver(writer, root, 3)
    ix = MailboxIndex(root)
    ix.sync()
    target = ix.path(2)
    os.rename(target, target.with_name(target.name + "S"))  # flagged by mutt meanwhile
    real = maildirscan.os.listdir
    calls = []

    def racy(path: str) -> list[str]:
        out = real(path)
        calls.append(path)
        if len(calls) == 1:  # the first readdir misses the renamed file
            out = [n for n in out if not n.startswith(target.name.split(":")[0])]
        return out

    monkeypatch.setattr(maildirscan.os, "listdir", racy)
    changes = ix.sync()
    assert not changes.expunged and changes.flags == [2] and len(calls) == 2
    assert ix.flags(2) == {"\\Seen"}


def test_read_only_view_follows_files_moved_out_of_new(root: Path, writer: MaildirWriter) -> None:
    deliver(writer, root, 3)
    ro = MailboxIndex(root, read_only=True)
    ro.sync()
    assert all(ro.path(u).parent.name == "new" for u in ro.uids)
    p = root / "new" / ro.path(2).name
    os.rename(p, root / "cur" / (p.name + ":2,S"))  # another MUA read it
    os.unlink(ro.path(3))
    changes = ro.sync()
    assert changes.flags == [2] and changes.expunged == [3]
    assert ro.path(2).parent.name == "cur" and ro.flags(2) == {"\\Seen"}
    rw = MailboxIndex(root)
    assert rw.sync().new == [1, 2]
    assert names(root / "new") == [] and not ro.sync().flags  # moved, flags unchanged


def _fresh_state(root: Path, read_only: bool = True) -> dict[int, tuple[object, ...]]:
    """Every row as an index that shares nothing with this process would load it."""
    import mailserver.storage.snapshots as snapshots

    saved = dict(snapshots._snapshots)
    snapshots._snapshots.clear()
    try:
        ix = MailboxIndex(root, read_only=read_only)
        ix.sync()
        return {u: tuple(ix.message(u)) for u in ix.uids}
    finally:
        ix.close()
        snapshots._snapshots.update(saved)


def _state(ix: MailboxIndex) -> dict[int, tuple[object, ...]]:
    return {u: tuple(ix.message(u)) for u in ix.uids}


@pytest.fixture
def counted(monkeypatch: pytest.MonkeyPatch) -> dict[str, int]:
    """Counts full index reads and directory reads."""
    from mailserver.storage.indexstore import IndexStore

    counts = {"all_rows": 0, "look": 0}
    real_rows, real_look = IndexStore.all_rows, MailboxIndex._look

    def all_rows(self: IndexStore) -> list:  # type: ignore[type-arg]
        counts["all_rows"] += 1
        return real_rows(self)

    def look(self: MailboxIndex):  # type: ignore[no-untyped-def]
        counts["look"] += 1
        return real_look(self)

    monkeypatch.setattr(IndexStore, "all_rows", all_rows)
    monkeypatch.setattr(MailboxIndex, "_look", look)
    return counts


def _quiet_dirs(monkeypatch: pytest.MonkeyPatch) -> None:
    """Make every directory change look more than a second old (see _dirs_unchanged)."""
    import mailserver.storage.maildirscan as maildirscan

    real_ns = maildirscan.time.time_ns
    monkeypatch.setattr(maildirscan.time, "time_ns", lambda: real_ns() + 5_000_000_000)


def test_new_session_shares_the_loaded_rows(
    root: Path, writer: MaildirWriter, counted: dict[str, int], monkeypatch: pytest.MonkeyPatch
) -> None:
    deliver(writer, root, 5)
    a = MailboxIndex(root)
    assert a.sync().new == [1, 2, 3, 4, 5]
    a.store_flags([2], ["\\Seen", "kw"])
    assert counted["all_rows"] == 1
    b = MailboxIndex(root)
    assert b.sync().new == [1, 2, 3, 4, 5]
    assert counted["all_rows"] == 1  # not read again: a's rows plus the store's changes
    assert _state(b) == _state(a) == _fresh_state(root)  # (a read of its own)
    assert b.recent_count == 0 and a.recent_count == 5  # \Recent stays the first session's
    assert b.highestmodseq == a.highestmodseq and b.uidnext == 6
    # Each view is its own: b's store is news to a, not to b, and shares nothing mutable.
    b.store_flags([1], ["\\Flagged"])
    assert a.flags(1) == frozenset() and b.flags(1) == {"\\Flagged"}
    assert a.sync().flags == [1] and not b.sync()
    # On a folder idle for more than a second, a new session skips the readdir too.
    _quiet_dirs(monkeypatch)
    a.sync()  # finds the files as the rows say: the snapshot learns the directory mtimes
    looks = counted["look"]
    c = MailboxIndex(root)
    assert c.sync().new == [1, 2, 3, 4, 5]
    assert counted["look"] == looks and counted["all_rows"] == 2
    assert _state(c) == _state(a)
    # ...but not once a file changed behind everyone's back.
    p = a.path(3)
    os.rename(p, p.with_name(p.name + "T"))
    d = MailboxIndex(root)
    d.sync()
    assert counted["look"] == looks + 1 and d.flags(3) == {"\\Deleted"}
    assert c.sync().flags == [3]


def _other_process_changes(root: str) -> None:
    ix = MailboxIndex(Path(root))
    ix.sync()
    ix.store_flags(list(ix.uids), ["\\Answered"])
    ix.store_flags([1, 2], ["\\Deleted"])
    ix.expunge()
    ix.append(b"Subject: appended\\r\\n\\r\\nx\\r\\n", ["\\Seen"])
    ix.store_flags([3], ["k" + str(i) for i in range(28)])  # two keywords beyond the letters
    ix.close()


def test_snapshot_is_caught_up_after_another_process_changes(
    root: Path, writer: MaildirWriter, counted: dict[str, int]
) -> None:
    deliver(writer, root, 6)
    a = MailboxIndex(root)
    a.sync()
    ctx = multiprocessing.get_context("spawn")
    proc = ctx.Process(target=_other_process_changes, args=(str(root),))
    proc.start()
    proc.join(60)
    assert proc.exitcode == 0
    deliver(writer, root, 1)
    b = MailboxIndex(root)
    b.sync()
    assert counted["all_rows"] == 1  # a's snapshot plus the other process's changes
    assert b._snapshot is a._snapshot
    assert list(b.uids) == [3, 4, 5, 6, 7, 8]
    assert _state(b) == _fresh_state(root)
    assert b.flags(3) == {"\\Answered", *(f"k{i}" for i in range(28))}
    assert b.flags(7) == {"\\Seen"} and b.recent_count == 2  # the append and the delivery
    # a, which the snapshot came from, is told the same at its next sync.
    changes = a.sync()
    assert changes.expunged == [1, 2] and changes.new == [7, 8]
    assert _state(a) == _state(b)


def test_snapshot_not_used_across_a_rebuild_or_beyond_the_expunge_log(
    root: Path, writer: MaildirWriter, counted: dict[str, int], monkeypatch: pytest.MonkeyPatch
) -> None:
    import mailserver.storage.indexstore as store

    deliver(writer, root, 6)
    a = MailboxIndex(root)
    a.sync()
    # Another process replaces the index file (a rebuild): new UIDVALIDITY, rows reread.
    os.rename(root / INDEX_FILE, root / "elsewhere.sqlite")
    b = MailboxIndex(root)
    b.sync()
    assert b.uidvalidity != a.uidvalidity and counted["all_rows"] == 2
    assert list(b.uids) == [1, 2, 3, 4, 5, 6] and _state(b) == _fresh_state(root)
    assert a.sync().uidvalidity_changed and a.uidvalidity == b.uidvalidity
    # More expunges than the log keeps since the snapshot: it cannot be caught up.
    monkeypatch.setattr(store, "EXPUNGE_LOG_MAX", 2)
    reads = counted["all_rows"]
    b.store_flags([1, 2, 3, 4], ["\\Deleted"])
    b.expunge()
    assert b._snapshot is not None and b._snapshot.highestmodseq < b.highestmodseq  # still held
    d = MailboxIndex(root)
    d.sync()
    assert counted["all_rows"] == reads + 1
    assert list(d.uids) == [5, 6] and _state(d) == _state(b)


def test_read_only_snapshot_files_in_new_still_move(
    root: Path, writer: MaildirWriter, monkeypatch: pytest.MonkeyPatch
) -> None:
    deliver(writer, root, 3)
    _quiet_dirs(monkeypatch)
    ro = MailboxIndex(root, read_only=True)
    ro.sync()
    ro.sync()  # trusts the (quiet) directories: rows with files in new/
    assert ro._snapshot is not None and ro._snapshot.stamp is not None
    rw = MailboxIndex(root)
    assert rw.sync().new == [1, 2, 3] and rw.recent_count == 3
    assert names(root / "new") == [] and all(rw.path(u).parent.name == "cur" for u in rw.uids)
    ro2 = MailboxIndex(root, read_only=True)
    assert ro2.sync().new == [1, 2, 3] and ro2.path(1).parent.name == "cur"


def test_sessions_in_threads_sharing_snapshots(root: Path, writer: MaildirWriter) -> None:
    """New sessions keep opening while others store, expunge and mail arrives."""
    deliver(writer, root, 30)
    errors: list[BaseException] = []
    stop = threading.Event()

    def opener() -> None:
        try:
            while not stop.is_set():
                ix = MailboxIndex(root)
                ix.sync()
                assert list(ix.uids) == sorted(set(ix.uids))
                ix.store_flags(list(ix.uids)[:5], ["\\Seen"])
                ix.close()
        except BaseException as exc:
            errors.append(exc)

    def changer() -> None:
        try:
            ix = MailboxIndex(root)
            for i in range(40):
                ix.sync()
                uids = list(ix.uids)
                ix.store_flags(uids[i % 7 :: 3], [f"kw{i % 3}", "\\Flagged"], "add" if i % 2 else "remove")
                if i % 5 == 0 and uids:
                    ix.store_flags(uids[-1:], ["\\Deleted"])
                    ix.expunge()
                deliver(writer, root, 1)
            ix.close()
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=opener) for _ in range(2)]
    ch = threading.Thread(target=changer)
    for t in threads:
        t.start()
    ch.start()
    ch.join()
    stop.set()
    for t in threads:
        t.join()
    assert not errors
    last = MailboxIndex(root)
    last.sync()
    assert _state(last) == _fresh_state(root)


def test_store_on_many_with_files_changed_behind_its_back(root: Path, writer: MaildirWriter) -> None:
    deliver(writer, root, 5)
    ix = MailboxIndex(root)
    ix.sync()
    highest = ix.highestmodseq
    os.unlink(ix.path(2))  # deleted by another program
    p = ix.path(3)
    os.rename(p, p.with_name(p.name + "F"))  # flagged by another program
    changed, failed = ix.store_flags([1, 2, 3, 4, 5], ["\\Seen"])
    assert changed == [1, 3, 4, 5] and failed == []
    assert ix.flags(3) == {"\\Seen", "\\Flagged"} and ix.path(3).name.endswith(":2,FS")
    assert all(ix.path(u).exists() for u in (1, 3, 4, 5))
    changes = ix.sync()
    assert changes.expunged == [2] and list(ix.uids) == [1, 3, 4, 5]
    assert ix.vanished_since(highest) == ([2], True)
    modseqs = [ix.modseq(u) for u in ix.uids]
    assert len(set(modseqs)) == 4 and min(modseqs) > highest
    assert _state(ix) == _fresh_state(root)
    # Conditional: the message another program changed fails, the others change.
    known = ix.highestmodseq
    p = ix.path(4)
    os.rename(p, p.with_name(p.name + "R"))
    assert ix.store_flags([1, 4, 5], ["\\Deleted"], unchanged_since=known) == ([1, 5], [4])
    assert ix.flags(4) == {"\\Seen", "\\Answered"} and ix.sync().flags == [4]
    # Keywords beyond the 26 letters change no file name; mixed with ones that do.
    ix.store_flags([1], [f"k{i}" for i in range(26)])
    changed, _ = ix.store_flags([1, 3], ["k26", "k0"])
    assert changed == [1, 3] and "k26" in ix.flags(1) and ix.flags(3) >= {"k26", "k0"}
    assert _state(ix) == _fresh_state(root)


def test_counts_for_select_and_status(root: Path, writer: MaildirWriter) -> None:
    deliver(writer, root, 5)
    a, b = MailboxIndex(root), MailboxIndex(root)
    a.sync()
    b.sync()
    assert a.first_unseen() == 1 and a.count_without("S") == 5 and a.count_with("T") == 0
    a.store_flags([1, 2, 4], ["\\Seen"])
    a.store_flags([3, 4], ["\\Deleted"])
    b.sync()
    for ix in (a, b):
        assert ix.first_unseen() == 3
        assert ix.count_without("S") == 2 and ix.count_with("S") == 3 and ix.count_with("T") == 2
        assert ix.total_size() == sum(ix.size(u) for u in ix.uids)
    # As the view says: a message expunged by another session still counts until b syncs.
    a.expunge()
    b.store_flags([5], ["\\Seen"])
    assert b.first_unseen() == 3 and b.count_with("T") == 2 and len(b) == 5
    b.sync()
    assert b.first_unseen() is None and b.count_without("S") == 0 and b.count_with("T") == 0
    assert b.total_size() == sum(b.size(u) for u in b.uids) and len(b) == 3
    b.store_flags([1], ["$Label1", *(f"x{i}" for i in range(30))])
    assert set(b.keywords()) == {"$Label1", *(f"x{i}" for i in range(30))}


def test_snapshot_identity_includes_the_file_nonce(root: Path, writer: MaildirWriter) -> None:
    import dataclasses

    from mailserver.storage.indexstore import IndexStore

    deliver(writer, root, 3)
    a = MailboxIndex(root)
    a.sync()
    meta = a._meta
    assert meta is not None and meta.nonce != 0
    with a._locked():
        assert a._usable_snapshot(meta) is a._snapshot is not None
        # A file made again at the same path, given the old inode number and (within the
        # same second) the same UIDVALIDITY, still differs in its nonce.
        assert a._usable_snapshot(dataclasses.replace(meta, nonce=meta.nonce + 1)) is None
        assert a._usable_snapshot(dataclasses.replace(meta, uidvalidity=meta.uidvalidity + 1)) is None
    store = IndexStore(root / INDEX_FILE)
    store.connect()
    assert store.read_meta() == meta  # kept in the file
    store.conn.execute("DELETE FROM meta WHERE key = 'nonce'")  # a file from before nonces
    again = store.read_meta()
    assert again is not None and again.nonce == 0 and again.uidvalidity == meta.uidvalidity
    store.close()


def test_snapshot_kept_a_while_after_the_last_session_closes(
    root: Path, writer: MaildirWriter, counted: dict[str, int], monkeypatch: pytest.MonkeyPatch
) -> None:
    import mailserver.storage.snapshots as snapshots

    deliver(writer, root, 5)
    a = MailboxIndex(root)
    a.sync()
    a.close()  # the only session: LOGOUT
    b = MailboxIndex(root)  # the client comes back
    assert b.sync().new == [1, 2, 3, 4, 5] and counted["all_rows"] == 1
    b.close()
    # Not for ever: after KEEP_SECONDS the next open reads the index again.
    real = snapshots.time.monotonic
    monkeypatch.setattr(snapshots.time, "monotonic", lambda: real() + snapshots.KEEP_SECONDS + 1)
    c = MailboxIndex(root)
    c.sync()
    assert counted["all_rows"] == 2 and not snapshots._kept
    c.close()
    assert list(snapshots._kept) == [str(root)]
    # And not beyond KEEP_ROWS in all: a folder bigger than that is not kept.
    monkeypatch.setattr(snapshots, "KEEP_ROWS", 4)
    d = MailboxIndex(root)
    d.sync()
    assert counted["all_rows"] == 3 and not snapshots._kept
    d.close()
    assert not snapshots._kept


def test_flag_rows_agrees_with_the_per_message_calls(root: Path, writer: MaildirWriter) -> None:
    """``flag_rows`` (a non-silent STORE's answers in one walk) gives what ``seq``,
    ``flags``, ``is_recent`` and ``modseq`` give one by one, for UIDs in any order, and
    leaves out UIDs not in the view and messages expunged elsewhere but not announced."""
    deliver(writer, root, 6)
    a, b = MailboxIndex(root), MailboxIndex(root)
    a.sync()
    b.sync()
    b.store_flags([2], ["\\Seen", "$Work"])
    b.store_flags([3], ["\\Deleted"])
    b.expunge()
    a.sync(True)  # the expunge of 3 is held: still in the view, not answered for
    assert a.expunged_elsewhere(3) and a.seq(3) == 3
    wanted = [6, 1, 2, 3, 4, 99, 5, 5]
    expected = [(a.seq(u), u, a.flags(u), a.is_recent(u), a.modseq(u))
                for u in wanted if a.seq(u) is not None and not a.expunged_elsewhere(u)]
    assert a.flag_rows(wanted) == expected
    assert [row[1] for row in expected] == [6, 1, 2, 4, 5, 5]
    assert a.flag_rows([2])[0][2] == {"\\Seen", "$Work"}
    assert a.flag_rows([]) == []


@pytest.mark.parametrize("old_sqlite", [False, True])
def test_big_store_rows_on_disk_match_memory(root: Path, writer: MaildirWriter, old_sqlite: bool,
                                             monkeypatch: pytest.MonkeyPatch) -> None:
    """A STORE big enough to write its rows in a thread beside the renames, over messages
    whose flags differ (several groups of new names, each a run of modseqs): every changed
    message gets its own new modseq above the old HIGHESTMODSEQ, and what another index
    reads back from the file is exactly what the storing index holds in memory. With an
    SQLite older than 3.33 (no UPDATE ... FROM) the row-by-row fallback gives the same."""
    from mailserver.storage import flagstore, indexstore, snapshots

    if old_sqlite:
        monkeypatch.setattr(indexstore.sqlite3, "sqlite_version_info", (3, 31, 1))
    n = flagstore._ROWS_IN_THREAD + 100
    deliver(writer, root, n)
    ix = MailboxIndex(root)
    ix.sync()
    ix.store_flags(list(range(1, n + 1, 3)), ["\\Flagged"])
    ix.store_flags(list(range(2, n + 1, 5)), ["$Work"])
    before = ix.highestmodseq
    changed, failed = ix.store_flags(list(ix.uids), ["\\Seen"])
    assert changed == list(range(1, n + 1)) and failed == []
    modseqs = [ix.modseq(u) for u in ix.uids]
    assert len(set(modseqs)) == n and min(modseqs) == before + 1 and ix.highestmodseq == before + n
    assert all("\\Seen" in ix.flags(u) for u in ix.uids)
    assert ix.flags(4) == {"\\Seen", "\\Flagged"} and ix.flags(7) == {"\\Seen", "\\Flagged", "$Work"}
    assert all(ix.path(u).exists() for u in ix.uids)
    memory = {u: (ix.message(u), ix.path(u).name) for u in ix.uids}
    ix.close()
    with sqlite3.connect(root / INDEX_FILE) as db:  # the rows as written, not a shared copy
        rows = db.execute("SELECT uid, sub, suffix, modseq, extra FROM messages ORDER BY uid").fetchall()
    assert rows == [(m.uid, m.sub, m.suffix, m.modseq, m.extra) for m, _name in memory.values()]
    snapshots._snapshots.clear()
    again = MailboxIndex(root)
    changes = again.sync()  # a fresh view: all new, and no name differs from the file's rows
    assert changes.new == list(range(1, n + 1)) and not changes.flags and not changes.expunged
    assert {u: (again.message(u), again.path(u).name) for u in again.uids} == memory


def test_view_rows_agrees_with_seq_and_message(root: Path, writer: MaildirWriter) -> None:
    """``view_rows`` (what FETCH renders from, one walk) gives what ``seq`` and
    ``message`` give one by one: UIDs in any order, UIDs not in the view left out, and a
    message expunged elsewhere but not announced still answered with its last row."""
    deliver(writer, root, 6)
    a, b = MailboxIndex(root), MailboxIndex(root)
    a.sync()
    b.sync()
    b.store_flags([3], ["\\Deleted"])
    b.expunge()
    a.sync(True)
    assert a.expunged_elsewhere(3)
    wanted = [6, 1, 3, 99, 2, 2, 0]
    expected = [(a.seq(u), a.message(u)) for u in wanted if a.seq(u) is not None]
    assert a.view_rows(wanted) == expected
    assert [m.uid for _s, m in expected] == [6, 1, 3, 2, 2]
    assert a.view_rows([]) == []


def test_restart_skips_the_readdir_of_an_idle_folder_but_misses_nothing(
    root: Path, writer: MaildirWriter, counted: dict[str, int], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The stamp of a quiet scan is stored with the rows: after a restart (no snapshot in
    memory) the first open of an idle folder trusts it and reads no directory, but a
    file added or renamed since, or a row changed since, makes it read them again."""
    import mailserver.storage.snapshots as snapshots

    def restart() -> MailboxIndex:
        snapshots._snapshots.clear()
        snapshots._kept.clear()
        return MailboxIndex(root)

    deliver(writer, root, 4)
    a = MailboxIndex(root)
    a.sync()  # moves new/ -> cur/: the directories just changed, nothing to trust yet
    a.close()
    b = restart()
    b.sync()
    assert b._store.scan_stamp is None  # the changes are less than a second old
    _quiet_dirs(monkeypatch)
    b.sync()  # a quiet scan: its stamp goes into the file
    assert b._store.scan_stamp is not None
    b.close()
    looks, reads = counted["look"], counted["all_rows"]
    c = restart()
    assert c.sync().new == [1, 2, 3, 4]
    assert counted["look"] == looks and counted["all_rows"] == reads + 1  # rows read, no readdir
    assert _state(c) == _fresh_state(root)
    c.close()
    # A file renamed behind everyone's back after the stamp: read again, and caught.
    p = c.path(2)
    os.rename(p, p.with_name(p.name + "F"))
    d = restart()
    d.sync()
    assert counted["look"] == looks + 1 and d.flags(2) == {"\\Flagged"}
    d.close()
    # A row changed since the stamp with no file renamed (a 27th keyword lives only in the
    # index): the stamp is for an older modseq, so the directories are read again.
    e = restart()
    e.sync()
    e.store_flags([3], [f"k{i}" for i in range(27)])  # 26 letters (a rename) and one more
    e.sync()  # a quiet scan again: a new stamp, stored
    stored = e._store.scan_stamp
    assert stored is not None and stored[2] == e.highestmodseq
    cur_mtime = os.stat(root / "cur").st_mtime_ns
    assert e.store_flags([3], ["k26"], "remove") == ([3], [])
    assert os.stat(root / "cur").st_mtime_ns == cur_mtime  # no file touched
    e.close()
    looks = counted["look"]
    f = restart()
    f.sync()
    assert counted["look"] == looks + 1
    assert _state(f) == _fresh_state(root)
