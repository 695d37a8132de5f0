"""The folder lock, and keeping a session's mirror of the index store in step with it.

:class:`IndexRefresh` is the part of :class:`~.index.MailboxIndex` every operation goes
through: :meth:`~IndexRefresh._locked` takes the locks and catches up with what other
sessions and processes committed (:meth:`~IndexRefresh._refresh`: the rows changed since
the mirror's HIGHESTMODSEQ, or a full reload), :meth:`~IndexRefresh._commit` writes one
transaction and moves the mirror on only if it succeeded, and a missing or corrupt store
is rebuilt with a new UIDVALIDITY (:mod:`.uidvalidity`). Changes by others found here
wait in the object (``_unannounced``, ``_pending_flags``, ``_ghosts``) until the session
may report them.

Concurrency: every read-modify-write of the store runs under ``flock`` on
``pymaild-index.lock`` (a separate file, because closing any descriptor of the SQLite
file would drop SQLite's own POSIX locks held by the process) plus a thread lock for
the object. Deliveries only add files to ``new/`` and never touch the index, so they
take no lock: the next sync sees their files. Everything here blocks; the IMAP server
calls it from a worker thread.

Between operations an index holds no SQLite connection and no descriptor: each operation
takes a connection from a small process-wide pool and gives it back at its end
(:meth:`.IndexStore.release`, ~0.04 ms), so an idle index is its view and its share of
the mirror only (~3-5 KiB for a small folder instead of ~125 KiB).
"""

from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import logging
import os
import threading
import time
from collections.abc import Iterator
from typing import TYPE_CHECKING

from mailserver.storage.indexstore import CorruptIndex, Meta
from mailserver.storage.indextypes import Message, _new_message
from mailserver.storage.keywords import DovecotKeywords
from mailserver.storage.maildirname import letters_of
from mailserver.storage.maildirpp import FILE_MODE
from mailserver.storage.snapshots import SharedSnapshots
from mailserver.storage.uidvalidity import account_root, dovecot_uidvalidity, next_uidvalidity

log = logging.getLogger("pymaild.storage")

LOCK_FILE = "pymaild-index.lock"


class IndexRefresh(SharedSnapshots):
    """Part of :class:`~.index.MailboxIndex`: locking, refreshing the mirror, committing."""

    _mutex: threading.RLock
    _lock_fd: int | None
    _depth: int
    _keywords: DovecotKeywords
    _flags_cache: dict[tuple[str, str], frozenset[str]]
    _view: list[int]
    _ghosts: dict[int, Message]
    _unannounced: set[int]
    _pending_flags: set[int]
    _recent: set[int]
    _uidvalidity_changed: bool

    if TYPE_CHECKING:  # defined by MailboxIndex (index.py)
        def _in_view(self, uid: int) -> bool: ...

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        """Thread lock + folder flock, with the mirror refreshed from the store."""
        with self._mutex:
            if self._depth:
                yield
                return
            if self._lock_fd is None:
                self._lock_fd = os.open(
                    self.dir / LOCK_FILE, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, FILE_MODE
                )
            fcntl.flock(self._lock_fd, fcntl.LOCK_EX)
            self._depth += 1
            try:
                self._refresh()
                if self._keywords.reload():
                    self._flags_cache.clear()
                yield
                self._share()
            except BaseException:
                # Files may have been renamed or removed without the index knowing:
                # start over from the store (and the files) at the next lock.
                self._stale = True
                raise
            finally:
                self._depth -= 1
                fcntl.flock(self._lock_fd, fcntl.LOCK_UN)
                # An idle session holds no connection and no descriptor; taking them
                # back from the pool costs microseconds (see IndexStore.release).
                self._release()

    def _release(self) -> None:
        self._store.release()
        if self._lock_fd is not None:
            os.close(self._lock_fd)
            self._lock_fd = None

    def _refresh(self) -> None:
        """Catch up with what other sessions and processes committed."""
        store = self._store
        if store.conn is not None:
            try:
                same = os.stat(store.path).st_ino == store.inode
            except FileNotFoundError:
                same = False
            if not same:  # deleted or replaced (rebuilt by another process): reopen
                store.close()
        try:
            meta = self._open_meta()
        except CorruptIndex as exc:
            meta = self._rebuild(str(exc))
        old = self._meta
        if self._stale or old is None or meta.uidvalidity != old.uidvalidity:
            self._full_reload(meta)
        elif meta.highestmodseq != old.highestmodseq or meta.uidnext != old.uidnext:
            if meta.expunge_floor > old.highestmodseq:
                self._full_reload(meta)  # the expunge log no longer reaches back to us
            elif self._snapshot_nearer(meta):
                # Another session's big change (a STORE on every message) is already in
                # a snapshot: copying it beats replaying the rows, and shares them.
                self._full_reload(meta)
            else:
                try:
                    self._incremental(meta)
                except CorruptIndex as exc:
                    self._full_reload(self._rebuild(str(exc)))
        else:
            self._meta = meta  # first_recent_uid may have moved

    def _open_meta(self) -> Meta:
        if self._store.conn is None:
            self._store.connect()
        meta = self._store.read_meta()
        if meta is None:
            meta = self._create(corrupt=None)
        return meta

    def _create(self, corrupt: str | None) -> Meta:
        """A new empty index with a UIDVALIDITY above any this folder had before."""
        hint = self._read_hint()
        floor = self._meta.uidvalidity + 1 if self._meta else 1
        floor = max(int(time.time()), hint + 1, floor, dovecot_uidvalidity(self.dir) + 1)
        uidvalidity = next_uidvalidity(account_root(self.dir), floor)
        meta = self._store.create(uidvalidity)
        self._write_hint(uidvalidity)
        if corrupt is not None:
            log.warning(
                "mailbox index %s was corrupt (%s): rebuilt with new UIDVALIDITY %d; "
                "clients will resynchronise", self._store.path, corrupt, uidvalidity,
            )
        elif hint:
            log.warning(
                "mailbox index %s was missing: rebuilt with new UIDVALIDITY %d; "
                "clients will resynchronise", self._store.path, uidvalidity,
            )
        else:
            log.info("mailbox index %s created, UIDVALIDITY %d", self._store.path, uidvalidity)
        return meta

    def _rebuild(self, reason: str) -> Meta:
        moved = self._store.move_aside(str(time.time_ns()))
        log.warning("mailbox index %s unusable (%s); kept as %s", self._store.path, reason, moved)
        self._store.connect()
        return self._create(corrupt=reason)

    def _read_hint(self) -> int:
        # The lock file remembers the last UIDVALIDITY, so a rebuild within the same
        # second as the previous one, or after the index vanished, still gets a new one.
        assert self._lock_fd is not None
        raw = os.pread(self._lock_fd, 32, 0).strip()
        return int(raw) if raw.isdigit() else 0

    def _write_hint(self, uidvalidity: int) -> None:
        assert self._lock_fd is not None
        data = f"{uidvalidity}\n".encode()
        os.pwrite(self._lock_fd, data, 0)
        os.ftruncate(self._lock_fd, len(data))

    def _full_reload(self, meta: Meta) -> None:
        entries, by_base, stamp, shared = self._load(meta)
        old_meta, old_entries = self._meta, self._entries
        if old_meta is not None and old_meta.uidvalidity != meta.uidvalidity:
            # Every UID the client knows is void.
            if self._view:
                self._uidvalidity_changed = True
            self._view, self._ghosts, self._recent = [], {}, set()
            self._pending_flags = set()
            self._unannounced = set(entries)
        else:
            for uid in self._view:
                m = entries.get(uid)
                if m is None:
                    if uid not in self._ghosts:
                        self._ghosts[uid] = old_entries[uid]
                    continue
                prev = old_entries.get(uid)
                if prev is not None and (
                    prev.extra != m.extra or (prev.suffix != m.suffix and prev.letters != m.letters)
                ):
                    self._pending_flags.add(uid)  # (a move from new/ to cur/ is no flag change)
            # Set operations: 100k in a few ms.
            fresh = entries.keys() - old_entries.keys() if old_entries else set(entries)
            if self._view:
                fresh.difference_update(self._view)
            self._unannounced |= fresh
        if shared:
            self._use_shared(entries, by_base)
        else:
            self._entries, self._by_base, self._shared_src = entries, by_base, None
        self._meta = meta
        self._stale = False
        # The mirror was replaced: compare it with the files again, unless the snapshot
        # it came from was found to match the files as they still are.
        self._scan_stamp = stamp

    def _incremental(self, meta: Meta) -> None:
        assert self._meta is not None
        since = self._meta.highestmodseq
        rows = self._store.rows_since(since)
        entries, by_base = self._own()
        unannounced, pending = self._unannounced, self._pending_flags
        # Another session's STORE on 100k messages arrives as 100k rows: per row, plain
        # tuple access and dict lookups (letters memoised per suffix, the view as a set).
        in_view = set(self._view).__contains__ if len(rows) > 64 else self._in_view
        letters: dict[str, str] = {}
        for row in rows:
            uid = row[0]
            prev = entries.get(uid)
            if prev is None:
                unannounced.add(uid)
                by_base[row[1]] = uid
            else:
                if prev[1] != row[1]:
                    by_base.pop(prev[1], None)
                    by_base[row[1]] = uid
                old, new = prev[3], row[3]
                if old != new:
                    if old not in letters:
                        letters[old] = letters_of(old)
                    if new not in letters:
                        letters[new] = letters_of(new)
                if (prev[7] != row[7] or (old != new and letters[old] != letters[new])) and in_view(uid):
                    pending.add(uid)
            entries[uid] = _new_message(Message, row)
        for _modseq, uid in self._store.expunged_since(since):
            prev = entries.pop(uid, None)
            if prev is not None:
                by_base.pop(prev.base, None)
                if self._in_view(uid):
                    self._ghosts[uid] = prev
            unannounced.discard(uid)
        self._meta = meta

    def _meta_copy(self) -> Meta:
        assert self._meta is not None
        return dataclasses.replace(self._meta)

    @contextlib.contextmanager
    def _commit(self, meta: Meta) -> Iterator[None]:
        """One store transaction ending with the new counters; the mirror follows only
        on success - after a failure it is reloaded from the store at the next lock."""
        try:
            with self._store.transaction():
                yield
                self._store.set_meta(meta)
        except BaseException:
            self._stale = True
            raise
        self._meta = meta
