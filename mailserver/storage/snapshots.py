"""Rows shared between the sessions of one folder in this process (:class:`_Snapshot`).

Thunderbird keeps several sessions per user, idle for hours, and phones reconnect all day:
reading and building every row of a big folder for each (~0.5 s per 100k messages) would
cost more than everything else a session does. So the :class:`~.index.MailboxIndex`
objects of one folder share an immutable snapshot of its rows: a new session takes its
dicts as they are (or copies them and replays the store's changes since) instead of
reading every row, and if the folder is idle and the snapshot's rows were found to match
the files at the directories' current mtimes, it skips the readdir too. A session copies
the dicts only when it first changes something (:meth:`SharedSnapshots._own`). The
snapshot outlives the last session a while (:data:`KEEP_SECONDS`, :data:`KEEP_ROWS`) for
clients that reconnect. Each session keeps its own view, \\Recent and pending
announcements exactly as if it had read everything itself.

:class:`SharedSnapshots` is the part of :class:`~.index.MailboxIndex` that takes rows
from a snapshot (:meth:`~SharedSnapshots._load`) and publishes its own mirror as the
next one (:meth:`~SharedSnapshots._share`); the index's ``__init__`` sets the attributes
declared on it.
"""

from __future__ import annotations

import collections
import dataclasses
import logging
import sqlite3
import threading
import time
import weakref
from collections.abc import Mapping
from pathlib import Path
from types import MappingProxyType
from typing import cast

from mailserver.storage.indexstore import IndexStore, Meta
from mailserver.storage.indextypes import _SUB, Message, _new_message

log = logging.getLogger("pymaild.storage")


@dataclasses.dataclass(eq=False, slots=True, weakref_slot=True)
class _Snapshot:
    """The rows of one folder's index at one HIGHESTMODSEQ, shared read-only by the
    :class:`MailboxIndex` objects of that folder in this process.

    Rows are a function of (index file, UIDVALIDITY, HIGHESTMODSEQ): every row write and
    every expunge takes a new modseq (see :mod:`.indexstore`); the file is its device and
    inode number plus the random nonce written at its creation. So a new session whose
    store says the same things shares the two dicts instead of reading and building every
    row (~0.5 s for 100k messages), and one whose store has moved on since copies them
    and reads only the rows and expunges after ``highestmodseq`` - the same incremental
    catch-up every open session does. The Message tuples are shared either way.
    """

    ident: tuple[int, int]  # (st_dev, st_ino) of the index file
    nonce: int  # Meta.nonce: the same file, not a new one that got the same inode number
    uidvalidity: int
    highestmodseq: int
    entries: dict[int, Message]  # never modified once published
    by_base: dict[str, int]
    # (new/ mtime, cur/ mtime, modseq): a session found the files to match the store's
    # rows at that modseq while the directories had those mtimes (see
    # MaildirSync._dirs_unchanged). A new session that loads the same rows skips the
    # readdir of an idle folder.
    stamp: tuple[int, int, int] | None = None


# Folder directory -> its newest snapshot, alive as long as some index object holds it
# or it is among the recently closed ones kept below.
_snapshots: weakref.WeakValueDictionary[str, _Snapshot] = weakref.WeakValueDictionary()
_snapshots_lock = threading.Lock()
# The snapshots of folders whose last session closed, kept for a client that comes back
# (a phone or mbsync reconnecting, a client reopening a folder): KEEP_ROWS messages in
# all (~0.5 KiB each), least recently closed dropped first, and none older than
# KEEP_SECONDS (dropped at the next index open after that). Reopening a 100k folder from
# a kept snapshot takes ~0.05-0.2 s instead of ~0.7 s.
KEEP_ROWS = 200_000
KEEP_SECONDS = 300.0
_kept: collections.OrderedDict[str, tuple[_Snapshot, float]] = collections.OrderedDict()


def _keep(key: str, snap: _Snapshot) -> None:
    """Hold ``snap`` a while after its last session let go of it (call with the lock)."""
    _kept.pop(key, None)
    if len(snap.entries) <= KEEP_ROWS and KEEP_SECONDS > 0:
        _kept[key] = (snap, time.monotonic() + KEEP_SECONDS)
    _expire_kept()


def _expire_kept() -> None:
    now = time.monotonic()
    total = sum(len(snap.entries) for snap, _t in _kept.values())
    while _kept:
        key, (snap, until) = next(iter(_kept.items()))
        if until > now and total <= KEEP_ROWS:
            break
        del _kept[key]
        total -= len(snap.entries)


# A session republishes its mirror once it is this many modseqs past the snapshot it last
# matched (and past an eighth of the folder): new sessions then never replay much.
_SHARE_AFTER = 1024


class SharedSnapshots:
    """Part of :class:`~.index.MailboxIndex`: its mirror (``_entries``, ``_by_base``) from
    and to this folder's :class:`_Snapshot`."""

    dir: Path
    read_only: bool
    _store: IndexStore
    _meta: Meta | None
    _stale: bool
    _entries: Mapping[int, Message]
    _by_base: Mapping[str, int]
    _shared_src: tuple[dict[int, Message], dict[str, int]] | None
    _key: str
    _snapshot: _Snapshot | None
    _ident_seen: tuple[int, int] | None
    _shared_at: int
    _publish_due: bool
    _scan_stamp: tuple[int, int] | None
    _stamp_fresh: bool

    def _load(
        self, meta: Meta
    ) -> tuple[dict[int, Message], dict[str, int], tuple[int, int] | None, bool]:
        """The store's rows at ``meta`` as ``(entries, by_base, trusted dir stamp, shared)``:
        from this folder's snapshot if it is one of this store's past states (``shared``:
        the snapshot's own dicts, not to be changed), else read."""
        snap = self._usable_snapshot(meta)
        if snap is None:
            entries = {row[0]: _new_message(Message, row) for row in self._store.all_rows()}
            self._snapshot = None
            self._publish_due = True
            # The stamp stored with the rows (a restart): trusted as a snapshot's is.
            return (entries, {m.base: uid for uid, m in entries.items()},
                    self._trusted(self._store.scan_stamp, meta, entries), False)
        entries, by_base = snap.entries, snap.by_base
        self._snapshot, self._shared_at = snap, snap.highestmodseq
        since = snap.highestmodseq
        shared = since == meta.highestmodseq
        if not shared:
            entries, by_base = entries.copy(), by_base.copy()
            for row in self._store.rows_since(since):
                m = _new_message(Message, row)
                prev = entries.get(m.uid)
                if prev is not None and prev.base != m.base:
                    by_base.pop(prev.base, None)
                entries[m.uid] = m
                by_base[m.base] = m.uid
            for _modseq, uid in self._store.expunged_since(since):
                prev = entries.pop(uid, None)
                if prev is not None:
                    by_base.pop(prev.base, None)
        return entries, by_base, self._trusted(snap.stamp, meta, entries), shared

    def _trusted(self, stamp: tuple[int, int, int] | None, meta: Meta,
                 entries: Mapping[int, Message]) -> tuple[int, int] | None:
        """The directory mtimes of ``stamp`` if the rows at ``meta`` are the ones it was
        taken with, else None (the next sync reads the directories)."""
        if (
            stamp is None
            or stamp[2] != meta.highestmodseq
            # Files a read-only session left in new/ must still be moved by this one.
            or (not self.read_only and "new" in map(_SUB, entries.values()))
        ):
            return None
        return stamp[0], stamp[1]

    def _use_shared(self, entries: dict[int, Message], by_base: dict[str, int]) -> None:
        """Take a snapshot's dicts as the mirror until the first change (see _own)."""
        self._shared_src = (entries, by_base)
        self._entries, self._by_base = MappingProxyType(entries), MappingProxyType(by_base)

    def _own(self) -> tuple[dict[int, Message], dict[str, int]]:
        """The mirror's dicts, to change: private copies first if they are a snapshot's.

        Sessions that only read (most of them, most of the time) share one copy of a big
        folder's dicts; the copy costs ~10 ms per 100k messages, once per divergence."""
        src = self._shared_src
        if src is not None:
            self._entries, self._by_base = src[0].copy(), src[1].copy()
            self._shared_src = None
        return cast(dict[int, Message], self._entries), cast(dict[str, int], self._by_base)

    def _snapshot_nearer(self, meta: Meta) -> bool:
        assert self._meta is not None
        behind = meta.highestmodseq - self._meta.highestmodseq
        if behind < max(_SHARE_AFTER, len(self._entries) >> 3):
            return False
        snap = self._usable_snapshot(meta)
        return snap is not None and snap.highestmodseq > self._meta.highestmodseq

    def _usable_snapshot(self, meta: Meta) -> _Snapshot | None:
        with _snapshots_lock:
            if _kept:
                _expire_kept()
            snap = _snapshots.get(self._key)
        if (
            snap is None
            or snap.ident != self._store.ident
            or snap.nonce != meta.nonce
            or snap.uidvalidity != meta.uidvalidity
            # Not a past state of this store, or the expunge log no longer reaches back.
            or not meta.expunge_floor <= snap.highestmodseq <= meta.highestmodseq
        ):
            return None
        return snap

    def _share(self, final: bool = False) -> None:
        """After an operation: keep this folder's snapshot useful for the next session.

        Costs a dictionary lookup. When the mirror was just read from the store or has
        moved far past the snapshot, it is published: its dicts become the snapshot's and
        this index shares them like any other until it changes something (_own). At
        close (``final``) it is published if it is any newer than the snapshot."""
        meta, ident = self._meta, self._store.ident or self._ident_seen
        if self._stale or meta is None or ident is None:
            return
        self._ident_seen = ident
        stamp = None if self._scan_stamp is None else (*self._scan_stamp, meta.highestmodseq)
        fresh_stamp, self._stamp_fresh = self._stamp_fresh, False
        if (fresh_stamp and stamp is not None and stamp != self._store.scan_stamp and not self.read_only
                and self._store.conn is not None):
            try:
                self._store.write_scan_stamp(stamp)  # for the first open after a restart
            except sqlite3.Error:
                log.warning("%s: could not store the directory scan stamp", self.dir, exc_info=True)
        with _snapshots_lock:
            current = _snapshots.get(self._key)
            usable = (
                current is not None
                and current.ident == ident
                and current.nonce == meta.nonce
                and current.uidvalidity == meta.uidvalidity
            )
            snap = current if usable else None
            if snap is not None and snap.highestmodseq <= meta.highestmodseq:
                # Whoever loads the rows this mirror has may trust what it trusts: the
                # files matched them when the directories had these mtimes.
                if stamp is not None and snap.stamp != stamp:
                    snap.stamp = stamp
                if snap.highestmodseq == meta.highestmodseq:
                    self._snapshot, self._shared_at, self._publish_due = snap, meta.highestmodseq, False
                    return
            if snap is not None and snap.highestmodseq > meta.highestmodseq:
                return  # another session published a newer one
            drift = meta.highestmodseq - self._shared_at
            due = self._publish_due or final
            if usable and not due and drift < max(_SHARE_AFTER, len(self._entries) >> 3):
                return
            entries, by_base = self._shared_src or self._own()
            snap = _Snapshot(ident, meta.nonce, meta.uidvalidity, meta.highestmodseq, entries, by_base, stamp)
            _snapshots[self._key] = snap
            _kept.pop(self._key, None)  # an older one: this one is held by this index
            self._use_shared(entries, by_base)
        self._snapshot, self._shared_at, self._publish_due = snap, meta.highestmodseq, False

    def _keep_snapshot(self) -> None:
        """At close: let go of the snapshot, kept a while if it is still the folder's."""
        snap, self._snapshot = self._snapshot, None
        if snap is not None:
            with _snapshots_lock:
                if _snapshots.get(self._key) is snap:  # (not one since replaced)
                    _keep(self._key, snap)
