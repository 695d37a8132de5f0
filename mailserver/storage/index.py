"""Index of one Maildir folder for IMAP: stable UIDs, flags, MODSEQ, \\Recent, expunge log.

This is the storage under the IMAP server (``mailserver/imap/session.py``). One
:class:`MailboxIndex` object is one session's view of one folder:

* The store (:mod:`.indexstore`, ``pymaild-index.sqlite`` in the folder directory) is
  shared by every session and process; it holds UIDVALIDITY, UIDNEXT, HIGHESTMODSEQ and,
  per message, uid, base file name, modseq, size and internal date.
* The files stay the truth for existence and flags, in the format Dovecot, mutt and
  mbsync use: :meth:`MailboxIndex.sync` compares ``new/`` + ``cur/`` with the index and
  records what other programs did (new files, deletions, flag renames).
* The *view* (the UIDs the client has been told about, hence the sequence numbers)
  changes only in :meth:`~MailboxIndex.sync` and through the session's own
  :meth:`~MailboxIndex.store_flags` and :meth:`~MailboxIndex.expunge`; changes by others
  that turn up meanwhile wait in the object until the next sync reports them, as RFC 3501
  requires (no EXPUNGE while a FETCH/STORE/SEARCH runs).

This module holds the view, the lookups IMAP makes on it, and the changes that add or
remove messages (APPEND, COPY, EXPUNGE). The rest of the class is in parts, one module
each, lower ones first (each part may use those below it):

* :mod:`.snapshots`: the rows shared by the sessions of one folder in this process.
* :mod:`.indexrefresh`: the folder lock, catching up with the store, committing
  (concurrency and the cost of idle sessions are explained there).
* :mod:`.maildirscan`: reading ``new/`` and ``cur/`` and recording what other programs did.
* :mod:`.flagstore`: STORE, flag names, keyword caps.

Beside them: :mod:`.indextypes` (``Message``, ``ChangeSet``, the errors),
:mod:`.uidvalidity` (a new index's UIDVALIDITY), :func:`.maildir.copy_durably` (COPY
without hard links).
"""

from __future__ import annotations

import bisect
import collections
import contextlib
import errno
import os
import threading
from collections.abc import Iterable, Iterator, Mapping, Sequence
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, BinaryIO

from mailserver.fsutil import fsync_dir, with_path
from mailserver.storage import quota
from mailserver.storage.flagstore import FlagStore
from mailserver.storage.indexstore import INDEX_FILE, IndexStore, Meta
from mailserver.storage.indextypes import (
    _EXTRA,
    _SIZE,
    _SUFFIX,
    ChangeSet,
    Message,
    ReadOnlyMailbox,
    _split_extra,
)
from mailserver.storage.keywords import KEYWORDS_FILE, DovecotKeywords
from mailserver.storage.maildir import copy_durably, maildir_hostname
from mailserver.storage.maildirname import NameMaker, letters_of, make_suffix, name_field
from mailserver.storage.maildirpp import FILE_MODE
from mailserver.storage.maildirscan import MaildirSync, scan_folder
from mailserver.storage.snapshots import _Snapshot

_OPEN_FLAGS = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC | os.O_NOFOLLOW
# Hard link impossible: other file system, or one that does not do links.
_NO_LINK = {errno.EXDEV, errno.EPERM, errno.EMLINK, errno.ENOTSUP, errno.EOPNOTSUPP}


class MailboxIndex(FlagStore, MaildirSync):
    """One session's view of the Maildir folder at ``folder_dir``: the Maildir
    implementation of :class:`mailserver.storage.api.MailboxView` (the contract of each
    public method is written there).

    ``read_only`` (EXAMINE): files stay in ``new/``, \\Recent is not claimed, and
    :meth:`store_flags` / :meth:`expunge` raise :class:`ReadOnlyMailbox`. Call
    :meth:`sync` first (that is SELECT); lookups are in memory and need no lock.
    """

    # Skip the readdir of an idle folder by its directory mtimes (see .maildirscan).
    # Set False for file systems with unreliable directory mtimes.
    trust_dir_mtime = True
    # Keyword caps ([imap] max_keywords_per_message / _per_folder; the daemon sets them).
    # Past the 26 Maildir letters keywords live in the index rows, so without a cap one
    # client could grow every row and the FLAGS response without bound.
    max_keywords_per_message = 50
    max_keywords_per_folder = 200

    def __init__(
        self, folder_dir: Path, *, read_only: bool = False, hostname: str | None = None
    ) -> None:
        self.dir = Path(folder_dir)
        self.read_only = read_only
        self._names = NameMaker(maildir_hostname(hostname))
        # String prefixes: pathlib costs more than the rename itself in 10k-file loops.
        self._sub = {sub: f"{self.dir}/{sub}/" for sub in ("new", "cur", "tmp")}
        self._store = IndexStore(self.dir / INDEX_FILE)
        self._keywords = DovecotKeywords(self.dir / KEYWORDS_FILE)
        self._mutex = threading.RLock()
        self._lock_fd: int | None = None
        self._depth = 0
        # Mirror of the store as of the last refresh/commit.
        self._meta: Meta | None = None
        self._stale = True  # reload everything at the next lock (start, or after a failure)
        # Read-only views (MappingProxyType) of a snapshot's dicts while they are shared
        # with it (_shared_src): _own() makes them private before the first change.
        self._entries: Mapping[int, Message] = {}
        self._by_base: Mapping[str, int] = {}
        self._shared_src: tuple[dict[int, Message], dict[str, int]] | None = None
        # The session's view and what waits to be announced in it.
        self._view: list[int] = []  # sorted UIDs; sequence number = index + 1
        self._ghosts: dict[int, Message] = {}  # in the view, gone from the store
        self._unannounced: set[int] = set()  # in the store, not yet in the view
        self._pending_flags: set[int] = set()  # changed by others, not yet reported
        self._recent: set[int] = set()
        self._uidvalidity_changed = False
        self._announced_modseq = 0
        self._announced_uidnext = 1
        self._scan_stamp: tuple[int, int] | None = None  # (new/, cur/) mtimes of a quiet scan
        self._stamp_fresh = False  # _scan_stamp was just taken (not yet stored in the file)
        # The process-wide snapshot this mirror came from or was published as (held so it
        # stays alive for the next session), and the modseq at which the mirror equalled it.
        self._key = str(self.dir)
        self._snapshot: _Snapshot | None = None
        self._ident_seen: tuple[int, int] | None = None  # the index file's, at the last operation
        self._shared_at = 0
        self._publish_due = False  # loaded from the store: offer it to the next session
        # (letters, extra) -> flag names: FETCH FLAGS of 10k messages shares a few dozen.
        self._flags_cache: dict[tuple[str, str], frozenset[str]] = {}

    # ================================================================ public: state

    @property
    def uidvalidity(self) -> int:
        return self._meta.uidvalidity if self._meta else 0

    @property
    def identity(self) -> tuple[str, int, int]:
        """(directory, UIDVALIDITY, the index file's nonce): what names this folder's
        messages by UID for as long as the file lives (a recreated folder differs)."""
        meta = self._meta
        return (self._key, meta.uidvalidity, meta.nonce) if meta else (self._key, 0, 0)

    @property
    def uidnext(self) -> int:
        """UIDNEXT as of the last sync (consistent with the view)."""
        return self._announced_uidnext

    @property
    def highestmodseq(self) -> int:
        """HIGHESTMODSEQ the client may be told: no change it has not seen lies below it."""
        return self._announced_modseq

    @property
    def uids(self) -> Sequence[int]:
        """The view's UIDs in sequence order (do not modify)."""
        return self._view

    def __len__(self) -> int:
        return len(self._view)  # EXISTS

    def seq(self, uid: int) -> int | None:
        """Sequence number of ``uid`` in the view, or None. O(log n)."""
        i = bisect.bisect_left(self._view, uid)
        return i + 1 if i < len(self._view) and self._view[i] == uid else None

    def uid_at(self, seq: int) -> int:
        """UID of sequence number ``seq`` (1-based); IndexError if out of range."""
        if seq < 1:
            raise IndexError(seq)
        return self._view[seq - 1]

    def uids_between(self, first: int, last: int) -> Sequence[int]:
        """View UIDs in ``first..last`` (a UID set range), by bisection."""
        lo = bisect.bisect_left(self._view, first)
        hi = bisect.bisect_right(self._view, last)
        return self._view[lo:hi]

    def message(self, uid: int) -> Message:
        """The index row of a message in the view (KeyError if not in the view).

        A message expunged by another session but not yet reported keeps its last row,
        so FETCH of its flags still answers; its file may be gone.
        """
        m = self._entries.get(uid)
        if m is not None and self._in_view(uid):
            return m
        return self._ghosts[uid]

    def path(self, uid: int) -> Path:
        m = self.message(uid)
        return self.dir / m.sub / m.name

    def size(self, uid: int) -> int:
        return self.message(uid).size

    def internal_date(self, uid: int) -> float:
        return self.message(uid).internal_date

    def modseq(self, uid: int) -> int:
        return self.message(uid).modseq

    def flags(self, uid: int) -> frozenset[str]:
        """System flags and keywords; \\Recent is separate (:meth:`is_recent`)."""
        return self._flag_names(self.message(uid))

    def search_rows(self) -> list[tuple[int, frozenset[str], bool, int, float, int]]:
        """``(uid, flags, recent, size, internal date, modseq)`` of every message in the
        view, in sequence order: what SEARCH evaluates, in one pass (a ``message`` and
        ``flags`` call per UID cost 10x more on a 10k folder)."""
        entries, ghosts, recent = self._entries, self._ghosts, self._recent
        flags_of: dict[tuple[str, str], frozenset[str]] = {}
        out = []
        for uid in self._view:
            m = entries.get(uid) or ghosts[uid]
            key = (m.suffix, m.extra)
            flags = flags_of.get(key)
            if flags is None:
                flags = flags_of[key] = self._flag_names(m)
            out.append((uid, flags, uid in recent, m.size, m.internal_date, m.modseq))
        return out

    def view_rows(self, uids: Sequence[int]) -> list[tuple[int, Message]]:
        """``(seq, row)`` of each of ``uids`` (usually ascending) that is in the view, as
        :meth:`seq` and :meth:`message` give them (a message expunged elsewhere keeps its
        last row), in one walk: what FETCH renders from."""
        entries, ghosts, view = self._entries, self._ghosts, self._view
        out = []
        i, n = 0, len(view)
        for uid in uids:
            if not (i < n and view[i] == uid):  # not the next in the view: look it up
                i = bisect.bisect_left(view, uid)
                if i >= n or view[i] != uid:
                    continue
            i += 1
            m = entries.get(uid) or ghosts.get(uid)
            if m is not None:
                out.append((i, m))
        return out

    def flag_rows(self, uids: Sequence[int]) -> list[tuple[int, int, frozenset[str], bool, int]]:
        """``(seq, uid, flags, recent, modseq)`` of each of ``uids`` (usually ascending) that is
        in the view and not expunged elsewhere: the answers to a non-silent STORE, in one
        walk (a ``seq``, ``flags`` and ``is_recent`` call per UID cost 3x more)."""
        ghosts, recent = self._ghosts, self._recent
        flags_of: dict[tuple[str, str], frozenset[str]] = {}
        out = []
        for seq, m in self.view_rows(uids):
            uid = m.uid
            if uid in ghosts:
                continue
            key = (m.suffix, m.extra)
            flags = flags_of.get(key)
            if flags is None:
                flags = flags_of[key] = self._flag_names(m)
            out.append((seq, uid, flags, uid in recent, m.modseq))
        return out

    def is_recent(self, uid: int) -> bool:
        return uid in self._recent

    @property
    def recent_count(self) -> int:
        return len(self._recent)

    def keywords(self) -> list[str]:
        """Keywords defined in this folder (for the FLAGS response)."""
        names = [n for letter in "abcdefghijklmnopqrstuvwxyz" if (n := self._keywords.name(letter))]
        seen = {n.casefold() for n in names}
        # The distinct keyword lists, at C speed, in first-seen order (dicts keep it).
        for extra in dict.fromkeys(map(_EXTRA, self._entries.values())):
            for kw in _split_extra(extra):
                if kw.casefold() not in seen:
                    seen.add(kw.casefold())
                    names.append(kw)
        return names

    def first_unseen(self) -> int | None:
        """Sequence number of the first message without \\Seen (SELECT's ``UNSEEN``).

        A few ms for 100k messages, where asking :meth:`message` for each costs ~150 ms."""
        unseen = {sfx for sfx in set(map(_SUFFIX, self._view_rows())) if "S" not in letters_of(sfx)}
        if unseen:
            for seq, sfx in enumerate(map(_SUFFIX, self._view_rows()), 1):
                if sfx in unseen:
                    return seq
        return None

    def count_without(self, letter: str) -> int:
        """Messages in the view whose flags lack ``letter`` ("S": STATUS ``UNSEEN``)."""
        counts = collections.Counter(map(_SUFFIX, self._view_rows()))
        return sum(n for sfx, n in counts.items() if letter not in letters_of(sfx))

    def count_with(self, letter: str) -> int:
        """Messages in the view whose flags have ``letter`` ("T": STATUS ``DELETED``)."""
        counts = collections.Counter(map(_SUFFIX, self._view_rows()))
        return sum(n for sfx, n in counts.items() if letter in letters_of(sfx))

    def total_size(self) -> int:
        """RFC822.SIZE of every message in the view (STATUS ``SIZE``)."""
        return sum(map(_SIZE, self._view_rows()))

    def _view_rows(self) -> Iterator[Message]:
        """The rows of the view in sequence order (expunged-elsewhere ones included)."""
        if not self._ghosts:
            return map(self._entries.__getitem__, self._view)
        entries, ghosts = self._entries, self._ghosts
        return (entries.get(u) or ghosts[u] for u in self._view)

    def changed_since(self, modseq: int) -> list[int]:
        """View UIDs whose modseq is above ``modseq`` (CHANGEDSINCE), ascending."""
        out = []
        for uid in self._view:
            m = self._entries.get(uid) or self._ghosts.get(uid)
            if m is not None and m.modseq > modseq:
                out.append(uid)
        return out

    def vanished_since(self, modseq: int) -> tuple[list[int], bool]:
        """UIDs expunged after ``modseq`` (QRESYNC VANISHED (EARLIER)) and whether the
        list is complete; if the bounded log no longer reaches back that far it is not,
        and the caller must send every UID it cannot vouch for."""
        with self._locked():
            assert self._meta is not None
            rows = self._store.expunged_since(modseq)
            complete = modseq >= self._meta.expunge_floor
        return sorted({uid for _m, uid in rows} - set(self._entries)), complete

    def open(self, uid: int, row: Message | None = None) -> BinaryIO:
        """Open the message file for reading, following a rename by another program.
        ``row``: the message's row when the caller has it (no second lookup)."""
        m = self.message(uid) if row is None else row
        try:
            # A str path: pathlib joins were a third of a cold header FETCH.
            return open(self._sub[m.sub] + m.name, "rb")  # the caller closes it
        except FileNotFoundError:
            found = self._find_file(m.base)
            if found is None:
                raise
            # Not written into the mirror: the next sync must still see the rename.
            return open(found, "rb")

    # ================================================================ public: changes

    def sync(self, hold_expunges: bool = False) -> ChangeSet:
        """Bring the index up to date with the folder and report what the client must learn.

        Scans ``new/`` and ``cur/``; new files get UIDs in delivery order, files gone
        are logged as expunged, renamed files (flags changed by another program) get a
        new modseq. Unless read-only, files in ``new/`` move to ``cur/`` with ``:2,``
        and this session claims \\Recent for every message no session has seen.

        ``hold_expunges``: new messages and flag changes are announced, but messages
        expunged elsewhere stay in the view (their sequence numbers keep meaning what
        the client was told) until a later sync without it: for the commands during
        which RFC 3501 7.4.1 forbids EXPUNGE (FETCH, STORE, SEARCH, COPY by number).
        """
        with self._locked():
            self._sync_disk()
            if self.read_only and self._recent and self._meta is not None:
                # A read-write SELECT elsewhere claimed them: a STATUS view kept open
                # must not go on counting them as RECENT (Dovecot: 0 after that CLOSE).
                first = self._meta.first_recent_uid
                self._recent = {u for u in self._recent if u >= first}
            return self._announce(hold_expunges)

    @property
    def holds_expunges(self) -> bool:
        """Messages expunged elsewhere are still in the view, waiting to be announced."""
        return bool(self._ghosts)

    def expunged_elsewhere(self, uid: int) -> bool:
        """``uid`` is in the view but expunged by another session or program (not yet
        announced): its last known row still answers FETCH of flags, UID and sizes."""
        return uid in self._ghosts

    def expunge(self, uids: Iterable[int] | None = None) -> ChangeSet:
        """EXPUNGE (all \\Deleted messages) or UID EXPUNGE (\\Deleted ones among ``uids``).

        Files are unlinked and the directory fsynced before the index forgets them, so a
        crash in between only makes the next sync log the expunge. Returns the removed
        UIDs and the EXPUNGE sequence numbers; the view no longer holds them.
        """
        if self.read_only:
            raise ReadOnlyMailbox("mailbox is read-only")
        wanted = None if uids is None else set(uids)
        with self._locked():
            targets = [
                m
                for uid in self._view
                if (m := self._entries.get(uid)) is not None
                and "T" in m.letters
                and (wanted is None or uid in wanted)
            ]
            if not targets:
                return ChangeSet()
            disk: dict[str, tuple[str, str]] | None = None
            gone: list[Message] = []
            dirs: set[str] = set()
            freed = removed_files = 0  # what we unlinked (not what others did): quota
            for m in targets:
                try:
                    os.unlink(self._sub[m.sub] + m.name)
                    dirs.add(m.sub)
                    freed += _file_size(m)
                    removed_files += 1
                except FileNotFoundError:
                    if disk is None:
                        disk = scan_folder(self.dir)
                    where = disk.get(m.base)
                    if where is not None:
                        if "T" not in letters_of(where[1]):
                            continue  # another program undeleted it: the next sync tells
                        try:
                            os.unlink(self.dir / where[0] / (m.base + where[1]))
                            freed += _file_size(m)
                            removed_files += 1
                        except FileNotFoundError:
                            pass
                        dirs.add(where[0])
                gone.append(m)
            for sub in sorted(dirs):
                fsync_dir(self.dir / sub)
            quota.record_change(quota.maildir_root(self.dir), -freed, -removed_files)
            meta = self._meta_copy()
            expunges = [(meta.highestmodseq + i + 1, m.uid) for i, m in enumerate(gone)]
            meta.highestmodseq += len(expunges)
            with self._commit(meta):
                self._store.delete(expunges, meta)
            self._forget(gone)
            removed = sorted(m.uid for m in gone)
            seqs = self._drop_from_view(removed)
            self._maybe_advance_modseq()
        return ChangeSet(expunged=removed, expunged_seqs=seqs)

    def announce_new(self) -> list[int]:
        """Move the messages waiting for the view (this session's COPY or MOVE into its own
        folder, deliveries seen meanwhile) into it, without the expunges by others: EXISTS
        may be sent during any command, EXPUNGE not (RFC 3501 7.4.1). The new UIDs."""
        with self._locked():
            new = sorted(self._entries.keys() & self._unannounced)
            self._unannounced.difference_update(new)
            assert self._meta is not None
            first = self._meta.first_recent_uid
            if new and not self.read_only and new[-1] >= first:
                # A copy is \Recent for the session that made it (RFC 3501 6.4.7), as
                # sync would have claimed it.
                meta = self._meta_copy()
                meta.first_recent_uid = meta.uidnext
                with self._commit(meta):
                    pass
                self._recent.update(u for u in new if u >= first)
            if new:
                self._view = sorted({*self._view, *new})
            self._maybe_advance_modseq()
            if not self._unannounced and self._meta is not None:
                self._announced_uidnext = self._meta.uidnext
            return new

    def append(
        self,
        data: bytes,
        flags: Iterable[str] = (),
        internal_date: float | datetime | None = None,
    ) -> int:
        """APPEND: store ``data`` durably with ``flags``; returns the new UID.

        tmp/ + fsync, mtime set to the internal date (where Dovecot keeps it too), then
        under the lock: rename into ``cur/`` with the flags, fsync ``cur/``, commit the
        index row. The message reaches this view at the next :meth:`sync`.
        """
        sys_letters, kws = self._parse_flags(flags)
        self._check_message_keywords(len(kws))
        base = self._names.make(len(data))
        tmp = self.dir / "tmp" / base
        placed: Path | None = None  # in cur/ but not yet in the index
        fd = os.open(tmp, _OPEN_FLAGS, FILE_MODE)
        try:
            try:
                view = memoryview(data)
                while view:
                    view = view[os.write(fd, view) :]
                os.fsync(fd)
            except OSError as exc:
                with_path(exc, tmp)
                raise
            finally:
                os.close(fd)
            if internal_date is not None:
                ts = internal_date.timestamp() if isinstance(internal_date, datetime) else internal_date
                os.utime(tmp, (ts, ts))
            with self._locked():
                if kws:
                    self._check_folder_keywords(kws)
                    self._assign_keywords(kws)
                letters, extra = self._apply("", "", sys_letters, kws, "replace")
                suffix = make_suffix(letters)
                final = self.dir / "cur" / (base + suffix)
                os.rename(tmp, final)
                placed = final
                fsync_dir(final.parent)
                meta = self._meta_copy()
                m = self._new_message(meta, base, "cur", suffix, len(data), final.stat().st_mtime, extra)
                with self._commit(meta):
                    self._store.upsert([m])
                placed = None
                self._add(m)
            quota.record_change(quota.maildir_root(self.dir), len(data), 1)
        except BaseException:
            # The client hears NO: the message must not turn up at the next sync either.
            for leftover in (tmp, placed):
                if leftover is not None:
                    with contextlib.suppress(OSError):
                        os.unlink(leftover)
            raise
        return m.uid

    def copy_to(self, other: MailboxIndex, uids: Iterable[int]) -> list[tuple[int, int]]:
        """COPY (UIDPLUS): ``[(source uid, new uid)]`` in source UID order.

        Hard links into ``other``'s ``tmp/`` (a real copy, fsynced, across file systems),
        then renamed into its ``cur/`` with the same flags - keyword letters translated
        to ``other``'s ``dovecot-keywords`` - and internal date. The two folder locks are
        never held together, so COPY A->B and B->A cannot deadlock.
        """
        with self._locked():
            snap = [
                (m, self._flag_names(m))
                for uid in sorted(set(uids))
                if self._in_view(uid) and (m := self._entries.get(uid)) is not None
            ]
        staged: list[tuple[Message, frozenset[str], str, Path]] = []
        placed: list[Path] = []  # in other's cur/ but not yet in its index
        try:
            for m, names in snap:
                src = self.dir / m.sub / m.name
                size = name_field(m.base, "S")
                if size is None:
                    try:
                        size = os.stat(src).st_size
                    except FileNotFoundError:
                        size = m.size
                base = other._names.make(size, m.size)
                tmp = other.dir / "tmp" / base
                if not self._link_or_copy(src, m, tmp):
                    continue  # expunged by another program meanwhile: nothing to copy
                staged.append((m, names, base, tmp))
            if not staged:
                return []
            pairs: list[tuple[int, int]] = []
            with other._locked():
                kws = sorted({n for _m, names, _b, _t in staged for n in names if n[0] != "\\"})
                if kws:
                    other._check_folder_keywords(kws)
                    other._assign_keywords(kws)
                meta = other._meta_copy()
                rows = []
                for m, names, base, tmp in staged:
                    sys_letters, kw = other._parse_flags(names)
                    letters, extra = other._apply("", "", sys_letters, kw, "replace")
                    suffix = make_suffix(letters)
                    os.rename(tmp, other.dir / "cur" / (base + suffix))
                    placed.append(other.dir / "cur" / (base + suffix))
                    rows.append(
                        other._new_message(meta, base, "cur", suffix, m.size, m.internal_date, extra)
                    )
                    pairs.append((m.uid, rows[-1].uid))
                fsync_dir(other.dir / "cur")
                with other._commit(meta):
                    other._store.upsert(rows)
                placed.clear()
                for row in rows:
                    other._add(row)
            quota.record_change(quota.maildir_root(other.dir),
                                sum(_file_size(m) for m, _n, _b, _t in staged), len(staged))
            return pairs
        except BaseException:
            # The client hears NO: no copy may turn up at the next sync either.
            for path in [tmp for _m, _n, _b, tmp in staged] + placed:
                with contextlib.suppress(OSError):
                    os.unlink(path)
            raise

    def release(self) -> None:
        """Let go of what an idle session need not hold: the SQLite connection (to the
        process-wide pool, see :mod:`.indexstore`) and the lock file descriptor.

        Nothing is lost: the mirror and the view stay, and the next operation takes a
        connection back and catches up incrementally as usual. Every operation already
        ends with this, so callers never need it; it also drops the flag-name cache.
        """
        with self._mutex:
            if self._depth:
                return  # inside an operation (a nested call): it releases at its end
            self._release()
            self._flags_cache.clear()

    def close(self) -> None:
        with self._mutex:
            self._store.close()
            if self._lock_fd is not None:
                os.close(self._lock_fd)
                self._lock_fd = None
            # The mirror as it is now is the best start for the next session: hand it
            # over (free: no more changes come from here) and keep it a while.
            self._share(final=True)
            self._stale = True
            self._keep_snapshot()

    def __enter__(self) -> MailboxIndex:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ================================================================ view and mirror (every part uses these)

    def _new_message(
        self, meta: Meta, base: str, sub: str, suffix: str, size: int, idate: float, extra: str
    ) -> Message:
        uid = meta.uidnext
        meta.uidnext += 1
        meta.highestmodseq += 1
        return Message(uid, base, sub, suffix, meta.highestmodseq, size, idate, extra)

    def _add(self, m: Message) -> None:
        entries, by_base = self._own()
        entries[m.uid] = m
        by_base[m.base] = m.uid
        self._unannounced.add(m.uid)

    def _forget(self, gone: Iterable[Message]) -> None:
        for m in gone:
            entries, by_base = self._own()
            entries.pop(m.uid, None)
            by_base.pop(m.base, None)
            self._unannounced.discard(m.uid)
            self._pending_flags.discard(m.uid)
            if self._in_view(m.uid):
                self._ghosts[m.uid] = m

    def _announce(self, hold_expunges: bool = False) -> ChangeSet:
        """Move everything pending into the view (but the expunges, if held) and say what
        changed."""
        changes = ChangeSet(uidvalidity_changed=self._uidvalidity_changed)
        self._uidvalidity_changed = False
        if self._ghosts and not hold_expunges:
            changes.expunged = sorted(self._ghosts)
            changes.expunged_seqs = self._drop_from_view(changes.expunged)
        changes.flags = sorted(u for u in self._pending_flags if u in self._entries and self._in_view(u))
        self._pending_flags.clear()
        new = sorted(self._entries.keys() & self._unannounced)
        self._unannounced.clear()
        if new:
            if self._view and new[0] < self._view[-1]:
                self._view = sorted({*self._view, *new})  # cannot happen: UIDs only grow
            else:
                self._view.extend(new)
        changes.new = new
        assert self._meta is not None
        if not self._ghosts:
            # With expunges held, HIGHESTMODSEQ stays where it was: a QRESYNC client that
            # stored a higher one would never be told of them (RFC 7162 3.1.2.1).
            self._announced_modseq = self._meta.highestmodseq
        self._announced_uidnext = self._meta.uidnext
        return changes

    def _drop_from_view(self, uids: list[int]) -> list[int]:
        """Remove ``uids`` from the view; the EXPUNGE sequence numbers, descending."""
        seqs = sorted((s for u in uids if (s := self.seq(u)) is not None), reverse=True)
        gone = set(uids)
        self._view = [u for u in self._view if u not in gone]
        for u in uids:
            self._ghosts.pop(u, None)
            self._recent.discard(u)
        return seqs

    def _maybe_advance_modseq(self) -> None:
        # The session reports its own changes at once; HIGHESTMODSEQ may follow only if
        # nothing by others is still waiting below it.
        if not (self._ghosts or self._unannounced or self._pending_flags) and self._meta:
            self._announced_modseq = self._meta.highestmodseq

    def _in_view(self, uid: int) -> bool:
        i = bisect.bisect_left(self._view, uid)
        return i < len(self._view) and self._view[i] == uid

    # ================================================================ message files

    def _find_file(self, base: str) -> Path | None:
        where = scan_folder(self.dir).get(base)
        return None if where is None else self.dir / where[0] / (base + where[1])

    def _link_or_copy(self, src: Path, m: Message, dst: Path) -> bool:
        """Hard-link (or copy) ``src`` to ``dst``; False if the message is gone."""
        for _attempt in range(2):
            try:
                os.link(src, dst)
                return True
            except FileNotFoundError:
                found = self._find_file(m.base)  # renamed by a flag change meanwhile?
                if found is None:
                    return False
                src = found
            except OSError as exc:
                if exc.errno not in _NO_LINK:
                    raise
                copy_durably(src, dst, m.internal_date)
                return True
        return False


if TYPE_CHECKING:
    # mypy checks that the index still offers the storage interface IMAP uses.
    from mailserver.storage.api import MailboxView

    _conforms: type[MailboxView] = MailboxIndex


def _file_size(m: Message) -> int:
    """The file's size as Maildir++ quota counts it: ``S=`` from the name, else the row's."""
    size = name_field(m.base, "S")
    return m.size if size is None else size
