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

Concurrency: every read-modify-write of the store runs under ``flock`` on
``pymaild-index.lock`` (a separate file, because closing any descriptor of the SQLite
file would drop SQLite's own POSIX locks held by the process) plus a thread lock for
the object. Deliveries only add files to ``new/`` and never touch the index, so they
take no lock: the next sync sees their files. Everything here blocks; the IMAP server
calls it from a worker thread.

Cost of many sessions (Thunderbird keeps several per user, idle for hours):

* Between operations an index holds no SQLite connection and no descriptor: each
  operation takes a connection from a small process-wide pool and gives it back at its
  end (:meth:`.IndexStore.release`, ~0.04 ms), so an idle index is its view and its
  share of the mirror only (~3-5 KiB for a small folder instead of ~125 KiB).
* Sessions of one folder in one process share an immutable snapshot of the rows
  (:class:`_Snapshot`): a new session takes its dicts as they are (or copies them and
  replays the store's changes since) instead of reading every row, and if the folder is
  idle and the snapshot's rows were found to match the files at the directories'
  current mtimes, it skips the readdir too. A session copies the dicts only when it
  first changes something (:meth:`MailboxIndex._own`). The snapshot outlives the last
  session a while (:data:`KEEP_SECONDS`, :data:`KEEP_ROWS`) for clients that reconnect.
  Each session keeps its own view, \\Recent and pending announcements exactly as if it
  had read everything itself.
"""

from __future__ import annotations

import bisect
import collections
import contextlib
import dataclasses
import errno
import fcntl
import logging
import operator
import os
import shutil
import sqlite3
import stat
import threading
import time
import weakref
from collections.abc import Iterable, Iterator, Mapping, Sequence
from datetime import datetime
from pathlib import Path
from types import MappingProxyType
from typing import TYPE_CHECKING, BinaryIO, Literal, NamedTuple, cast

from mailserver.fsutil import fsync_dir, with_path
from mailserver.storage.indexstore import INDEX_FILE, CorruptIndex, IndexStore, Meta, StoreGroup
from mailserver.storage.keywords import KEYWORDS_FILE, DovecotKeywords
from mailserver.storage.maildir import maildir_hostname
from mailserver.storage.maildirname import (
    FLAG_TO_LETTER,
    LETTER_TO_FLAG,
    NameMaker,
    imap_size,
    letters_of,
    make_suffix,
    name_field,
    name_time,
    normalize_flag,
    split_name,
)
from mailserver.storage.maildirpp import FILE_MODE

log = logging.getLogger("pymaild.storage")

LOCK_FILE = "pymaild-index.lock"
# In the account's Maildir++ root: the last UIDVALIDITY given to any folder of the account.
# It survives DELETE and RENAME of a folder, so a name never gets a UIDVALIDITY twice
# (a folder's own lock file goes with the folder).
UIDVALIDITY_FILE = "pymaild-uidvalidity"
StoreMode = Literal["add", "remove", "replace"]

_OPEN_FLAGS = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC | os.O_NOFOLLOW
# Hard link impossible: other file system, or one that does not do links.
_NO_LINK = {errno.EXDEV, errno.EPERM, errno.EMLINK, errno.ENOTSUP, errno.EOPNOTSUPP}


class ReadOnlyMailbox(Exception):
    """A write (STORE, EXPUNGE) through a read-only (EXAMINE) view."""


class KeywordLimit(Exception):
    """A STORE, APPEND or COPY would give a message more than ``max_keywords_per_message``
    keywords, or a folder more than ``max_keywords_per_folder`` distinct ones (IMAP
    ``NO [LIMIT]``). Raised before anything is changed on disk for the message."""

    code = "LIMIT"


class Message(NamedTuple):
    """One index row. A NamedTuple because 100k of them are built on a cold load."""

    uid: int
    base: str  # file name before ":2,", never changes
    sub: str  # "new" or "cur"
    suffix: str  # ":2,<letters>" or "" exactly as on disk
    modseq: int
    size: int  # RFC822.SIZE (W= or S= from the name, else the file size)
    internal_date: float  # seconds since the epoch (the file's mtime, as Dovecot does)
    extra: str  # keywords beyond the 26 letters, "\n"-separated ("" if none)

    @property
    def letters(self) -> str:
        return letters_of(self.suffix)

    @property
    def name(self) -> str:
        return self.base + self.suffix


@dataclasses.dataclass
class ChangeSet:
    """What a session must tell its client after :meth:`MailboxIndex.sync` / ``expunge``."""

    new: list[int] = dataclasses.field(default_factory=list)  # UIDs added to the view
    expunged: list[int] = dataclasses.field(default_factory=list)  # UIDs removed, ascending
    # Sequence numbers for "* n EXPUNGE", valid when sent in this (descending) order.
    expunged_seqs: list[int] = dataclasses.field(default_factory=list)
    flags: list[int] = dataclasses.field(default_factory=list)  # UIDs to send FETCH FLAGS for
    # The index was rebuilt (missing or corrupt): every UID changed; the view is reset
    # and the client must be disconnected or the mailbox re-selected.
    uidvalidity_changed: bool = False

    def __bool__(self) -> bool:
        return bool(self.new or self.expunged or self.flags or self.uidvalidity_changed)


_SUB = operator.itemgetter(2)  # Message fields, for C-speed scans of every row
_SUFFIX = operator.itemgetter(3)
_SIZE = operator.itemgetter(5)
_EXTRA = operator.itemgetter(7)
_PLAN_UID = lambda step: step[0][0]  # noqa: E731  a STORE plan step's UID (its old row's)
_ROWS_IN_THREAD = 512  # a STORE of this many rows writes them in a thread beside its renames
_new_message = tuple.__new__  # _new_message(Message, row): no argument parsing per row


def _keyword_count(suffix: str, extra: str) -> int:
    """Keywords of a message named with ``suffix`` (lower-case letters) plus index ``extra``."""
    return sum(c.islower() for c in letters_of(suffix)) + (extra.count("\n") + 1 if extra else 0)


def _split_extra(extra: str) -> list[str]:
    return extra.split("\n") if extra else []


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
    # MailboxIndex._dirs_unchanged). A new session that loads the same rows skips the
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


class MailboxIndex:
    """One session's view of the Maildir folder at ``folder_dir``: the Maildir
    implementation of :class:`mailserver.storage.api.MailboxView` (the contract of each
    public method is written there).

    ``read_only`` (EXAMINE): files stay in ``new/``, \\Recent is not claimed, and
    :meth:`store_flags` / :meth:`expunge` raise :class:`ReadOnlyMailbox`. Call
    :meth:`sync` first (that is SELECT); lookups are in memory and need no lock.
    """

    # Skip the readdir of an idle folder by its directory mtimes (see _dirs_unchanged).
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

    def store_flags(
        self,
        uids: Iterable[int],
        flags: Iterable[str],
        mode: StoreMode = "add",
        unchanged_since: int | None = None,
    ) -> tuple[list[int], list[int]]:
        """STORE: ``(changed, failed_modified)`` UIDs, both ascending.

        Each changed message is renamed in ``cur/`` and gets a new modseq. With
        ``unchanged_since`` (CONDSTORE UNCHANGEDSINCE) a message whose modseq is above it
        is left alone and listed in ``failed_modified``. UIDs not in the view, or
        expunged by another session meanwhile, are skipped. A store that changes
        nothing changes no modseq.
        """
        if self.read_only:
            raise ReadOnlyMailbox("mailbox is read-only")
        if mode not in ("add", "remove", "replace"):
            raise ValueError(f"bad store mode {mode!r}")
        sys_letters, kws = self._parse_flags(flags)
        if mode != "remove":
            self._check_message_keywords(len(kws))
        with self._locked():
            meta = self._meta_copy()
            if kws and mode != "remove":
                self._check_folder_keywords(kws)
                self._assign_keywords(kws)
            entries = self._entries
            new_message = _new_message
            failed: list[int] = []
            # (row, new row, new suffix if the file is to be renamed) per message to change.
            plan: list[tuple[Message, Message, str | None]] = []
            # (suffix, extra) -> (new suffix or None if the letters stay, new extra), or
            # None for no change: a 100k-message STORE meets only a few combinations.
            memo: dict[tuple[str, str], tuple[str | None, str] | None] = {}
            # The messages to change, grouped by their new (sub, suffix, extra): each group
            # takes a run of consecutive modseqs, so its rows are written in one statement
            # (RFC 7162 3.1 asks a new, higher modseq of each changed message, not an
            # order among the messages of one command).
            groups: dict[tuple[str, str, str], list[tuple[Message, str | None]]] = {}
            for uid in self._view_members(uids):
                m = entries.get(uid)
                if m is None:
                    continue  # expunged by another session, not yet reported
                _u, _base, sub, suffix, old_modseq, _size, _idate, extra = m
                if unchanged_since is not None and old_modseq > unchanged_since:
                    failed.append(uid)
                    continue
                key = (suffix, extra)
                if key in memo:
                    result = memo[key]
                else:
                    result = memo[key] = self._store_result(suffix, extra, sys_letters, kws, mode)
                    if result is not None and mode == "add":  # replace was checked above
                        self._check_message_keywords(_keyword_count(result[0] or suffix, result[1]))
                if result is None:
                    continue
                new_suffix, new_extra = result
                if new_suffix is not None:
                    sub, suffix = "cur", new_suffix
                members = groups.get((sub, suffix, new_extra))
                if members is None:
                    members = groups[(sub, suffix, new_extra)] = []
                members.append((m, new_suffix))
            modseq = meta.highestmodseq
            written: list[StoreGroup] = []
            for (sub, suffix, new_extra), members in groups.items():
                written.append(StoreGroup(sub, suffix, new_extra, modseq + 1, [m.uid for m, _s in members]))
                for m, new_suffix in members:
                    modseq += 1
                    row = new_message(Message, (m.uid, m.base, sub, suffix, modseq, m.size, m.internal_date,
                                                new_extra))
                    plan.append((m, row, new_suffix))
            if len(groups) > 1:
                plan.sort(key=_PLAN_UID)  # the renames and the answers in UID order
            meta.highestmodseq = modseq
            changed: list[int] = []
            external: list[int] = []
            vanished: list[Message] = []
            updates: dict[int, Message] = {}
            if plan:
                done: list[tuple[str, str]] = []
                try:
                    with self._commit(meta):
                        changed, external, vanished, updates = self._store_apply(
                            plan, written, meta, failed, sys_letters, kws, mode, unchanged_since, done
                        )
                except BaseException:
                    # The client hears NO and the index rolled back: put the names back
                    # too, so the flags on disk stay what the index says (best effort).
                    for old_name, new_name in reversed(done):
                        with contextlib.suppress(OSError):
                            os.rename(new_name, old_name)
                    raise
            if updates:
                self._own()[0].update(updates)
            if external:
                stored = set(changed)
                self._pending_flags.update(u for u in external if u not in stored)
            self._pending_flags.difference_update(changed)
            self._forget(vanished)
            self._maybe_advance_modseq()
        return changed, sorted(failed)

    def _store_apply(
        self,
        plan: list[tuple[Message, Message, str | None]],
        written: list[StoreGroup],
        meta: Meta,
        failed: list[int],
        sys_letters: set[str],
        kws: list[str],
        mode: str,
        unchanged_since: int | None,
        done: list[tuple[str, str]],
    ) -> tuple[list[int], list[int], list[Message], dict[int, Message]]:
        """Carry out a STORE inside its index transaction: ``(changed, changed by another
        program instead, vanished, new rows)``. The renames (~5 us each, the floor) and
        the rows' UPDATE (``written``, one statement per group) run side by side, the
        UPDATE in a thread of its own for a big STORE: both release the GIL, the UPDATE for
        its whole run (row-by-row executemany in a thread was tried: its per-row GIL
        hand-offs with the renames cost more than the overlap saved). Nothing is committed
        before the renames are fsynced. Each rename is added to ``done`` as ``(old name,
        new name)``, for the caller to undo if the STORE fails.
        """
        rows = [new for _m, new, _s in plan]
        missed: list[Message] = []
        renamed = False
        subs = self._sub
        cur = subs["cur"]
        rename = os.rename
        failure: list[BaseException] = []

        def write_rows() -> None:
            try:
                self._store.update_groups(written)
            except BaseException as exc:  # re-raised in the STORE's own thread
                failure.append(exc)

        writer = None
        if len(rows) >= _ROWS_IN_THREAD:
            writer = threading.Thread(target=write_rows, name="store-rows")
            writer.start()
        try:
            with self._dir_fds() as fds:
                cur_fd = fds["cur"]
                for m, _new, new_suffix in plan:
                    if new_suffix is not None:
                        old_name, new_name = m.base + m.suffix, m.base + new_suffix
                        try:
                            rename(old_name, new_name, src_dir_fd=fds[m.sub], dst_dir_fd=cur_fd)
                            renamed = True
                            done.append((subs[m.sub] + old_name, cur + new_name))
                        except FileNotFoundError:
                            missed.append(m)  # renamed or deleted by another program meanwhile
        finally:
            if writer is not None:
                writer.join()
        if writer is None:
            write_rows()
        if failure:
            raise failure[0]
        updates = {new.uid: new for new in rows}
        external: list[int] = []
        vanished: list[Message] = []
        unchanged: set[int] = set()
        if missed:
            disk = self._scan()
            fixed: list[Message] = []
            for m in missed:
                uid = m.uid
                moved, meta.highestmodseq, again = self._store_moved(
                    m, disk.get(m.base), meta.highestmodseq, sys_letters, kws, mode, unchanged_since
                )
                unchanged.add(uid)
                if moved is None:
                    vanished.append(m)
                    del updates[uid]  # its row goes (the UPDATE written for it with it)
                    continue
                external.append(uid)
                row = moved
                if again is None:
                    if unchanged_since is not None:
                        failed.append(uid)  # its flags changed after the client's modseq
                else:
                    new_suffix, new_extra = again
                    if new_suffix is not None:
                        renamed = True
                    meta.highestmodseq += 1
                    row = moved._replace(
                        sub="cur" if new_suffix else moved.sub, suffix=new_suffix or moved.suffix,
                        modseq=meta.highestmodseq, extra=new_extra,
                    )
                    unchanged.discard(uid)
                updates[uid] = row
                fixed.append(row)
            self._store.update(fixed)
        if renamed:
            # The renames must be on disk before the index says they happened.
            fsync_dir(self.dir / "cur")
        if vanished:
            expunges = [(meta.highestmodseq + i + 1, m.uid) for i, m in enumerate(vanished)]
            meta.highestmodseq += len(expunges)
            self._store.delete(expunges, meta)
        changed = [new.uid for new in rows if new.uid not in unchanged]
        return changed, external, vanished, updates

    def _view_members(self, uids: Iterable[int]) -> list[int]:
        """The distinct ``uids`` that are in the view, ascending."""
        wanted = set(uids)
        if len(wanted) * 8 < len(self._view):
            return sorted(u for u in wanted if self._in_view(u))
        return sorted(wanted.intersection(self._view))

    def _store_result(
        self, suffix: str, extra: str, sys_letters: set[str], kws: list[str], mode: str
    ) -> tuple[str | None, str] | None:
        """What a STORE makes of a message named with ``suffix`` and index keywords
        ``extra``: None if nothing changes, else ``(new suffix, new extra)`` with a None
        suffix if the file keeps its name (only letterless keywords changed)."""
        old = letters_of(suffix)
        letters, new_extra = self._apply(old, extra, sys_letters, kws, mode)
        if letters == old and new_extra == extra:
            return None
        return (make_suffix(letters) if letters != old else None), new_extra

    def _store_moved(
        self,
        m: Message,
        where: tuple[str, str] | None,
        modseq: int,
        sys_letters: set[str],
        kws: list[str],
        mode: str,
        unchanged_since: int | None,
    ) -> tuple[Message | None, int, tuple[str | None, str] | None]:
        """STORE on a message another program renamed (``where`` it is now, None if it is
        gone): ``(the row with its new name and a new modseq, modseq, the store's result
        for it)``; the file is already renamed for that result unless it is None."""
        if where is None:
            return None, modseq, None
        modseq += 1
        m = m._replace(sub=where[0], suffix=where[1], modseq=modseq)
        if unchanged_since is not None:
            return m, modseq, None
        result = self._store_result(m.suffix, m.extra, sys_letters, kws, mode)
        if result is not None and result[0] is not None:
            os.rename(self._sub[m.sub] + m.name, self._sub["cur"] + m.base + result[0])
        return m, modseq, result

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
            for m in targets:
                try:
                    os.unlink(self._sub[m.sub] + m.name)
                    dirs.add(m.sub)
                except FileNotFoundError:
                    if disk is None:
                        disk = self._scan()
                    where = disk.get(m.base)
                    if where is not None:
                        if "T" not in letters_of(where[1]):
                            continue  # another program undeleted it: the next sync tells
                        with contextlib.suppress(FileNotFoundError):
                            os.unlink(self.dir / where[0] / (m.base + where[1]))
                        dirs.add(where[0])
                gone.append(m)
            for sub in sorted(dirs):
                fsync_dir(self.dir / sub)
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

    def _release(self) -> None:
        self._store.release()
        if self._lock_fd is not None:
            os.close(self._lock_fd)
            self._lock_fd = None

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
            snap, self._snapshot = self._snapshot, None
            if snap is not None:
                with _snapshots_lock:
                    if _snapshots.get(self._key) is snap:  # (not one since replaced)
                        _keep(self._key, snap)

    def __enter__(self) -> MailboxIndex:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ================================================================ locking and refresh

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
        floor = max(int(time.time()), hint + 1, floor, _dovecot_uidvalidity(self.dir) + 1)
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

    # ================================================================ sync internals

    def _scan(self) -> dict[str, tuple[str, str]]:
        """``{base: (sub, suffix)}`` of every message file.

        ``new/`` first: a file moved to ``cur/`` by another program while we scan is
        then seen at least once. A base found twice keeps the ``cur/`` name (if two
        ``cur/`` names exist, the one that still exists).
        """
        out: dict[str, tuple[str, str]] = {}
        for sub in ("new", "cur"):
            with os.scandir(self.dir / sub) as it:
                for entry in it:
                    name = entry.name
                    if name[0] == "." or not entry.is_file(follow_symlinks=False):
                        continue
                    base, suffix = split_name(name)
                    prev = out.get(base)
                    if prev is not None and prev[0] == "cur" and sub == "cur":
                        if not os.path.exists(self.dir / sub / name):
                            continue
                        log.warning("%s: two files for one message: %s%s, %s", self.dir, base,
                                    prev[1], suffix)
                    out[base] = (sub, suffix)
        return out

    def _dirs_unchanged(self) -> bool:
        """True if nothing was added, removed or renamed in new/ and cur/ since a scan.

        Dovecot's trick: a directory's mtime changes with every entry change, so an idle
        folder needs two stat() calls instead of a 10k-entry readdir. The stamp is only
        trusted if it was a second old when that scan began, because a change within the
        same timestamp tick as the previous one can leave the mtime as it was.
        """
        now = time.time_ns()
        stamp = (os.stat(self._sub["new"]).st_mtime_ns, os.stat(self._sub["cur"]).st_mtime_ns)
        if self.trust_dir_mtime and stamp == self._scan_stamp:
            return True
        quiet = max(stamp) < now - 1_000_000_000
        self._scan_stamp = stamp if quiet else None
        self._stamp_fresh = quiet  # a scan follows: _share stores the stamp for a restart
        return False

    def _sync_disk(self) -> None:
        if self._dirs_unchanged():
            # The mirror already matches the files; only other sessions' index-only
            # changes (arrived through _refresh) and \Recent remain to handle.
            self._commit_disk_changes([], [], [])
            return
        disk, vanished = self._look()
        if not self.read_only and any(sub == "new" for sub, _suffix in disk.values()):
            # Into cur/: this session has seen them (the Maildir meaning of new/).
            targets: dict[str, str] = {}  # suffix -> the cur/ suffix: a handful of kinds
            rename = os.rename
            with self._dir_fds() as fds:
                new_fd, cur_fd = fds["new"], fds["cur"]
                for base, (sub, suffix) in list(disk.items()):
                    if sub != "new":
                        continue
                    target = targets.get(suffix)
                    if target is None:
                        target = targets[suffix] = make_suffix(letters_of(suffix))
                    try:
                        rename(base + suffix, base + target, src_dir_fd=new_fd, dst_dir_fd=cur_fd)
                    except FileNotFoundError:
                        continue  # moved or deleted by someone else: the next sync sees where
                    disk[base] = ("cur", target)
            # No directory fsync: files are matched by base, so a move lost in a crash
            # is simply redone.
        by_base = self._by_base
        changed: list[tuple[Message, str, str]] = []
        fresh: list[str] = []
        for base, (sub, suffix) in disk.items():
            uid = by_base.get(base)
            if uid is None:
                fresh.append(base)
            else:
                m = self._entries[uid]
                if m.sub != sub or m.suffix != suffix:
                    changed.append((m, sub, suffix))

        self._commit_disk_changes(self._new_files_info(fresh, disk) if fresh else [], changed, vanished)

    @contextlib.contextmanager
    def _dir_fds(self) -> Iterator[dict[str, int]]:
        """``new/`` and ``cur/`` open for the ``*at()`` calls of a loop over many files: a
        rename or stat relative to an open directory does not resolve the folder's path
        again for every file (a quarter of a 10k-file rename loop)."""
        fds: dict[str, int] = {}
        try:
            for sub in ("new", "cur"):
                fds[sub] = os.open(self._sub[sub], os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
            yield fds
        finally:
            for fd in fds.values():
                os.close(fd)

    def _look(self) -> tuple[dict[str, tuple[str, str]], list[Message]]:
        """What differs between the files and the mirror: ``({base: (sub, suffix)}, gone)``.

        The dict holds every message whose file is not where and as the mirror says (and,
        for a read-write view, every file in ``new/``, which is to move); the list the
        messages with no file left. The names of ``cur/`` are compared as sets with the
        mirror's names, so only what changed costs Python work: a 100k folder with a few
        new files takes ~0.15 s instead of ~0.6 s of per-file work.
        """
        entries = self._entries
        rows = entries.values()
        known: dict[str, set[str]] = {"new": set(), "cur": set()}
        if "new" in map(_SUB, rows):  # (only a read-only view leaves files in new/)
            for m in rows:
                known[m.sub].add(m.base + m.suffix)
        else:
            known["cur"] = {m.base + m.suffix for m in rows}
        listed = {"new": self._list_new(), "cur": set(os.listdir(self._sub["cur"]))}
        disk, missing = self._differences(known, listed)
        if missing:
            # readdir() may miss a file renamed while it runs (a flag change by another
            # program): look again before declaring anything expunged.
            listed["new"] |= self._list_new()
            listed["cur"] |= set(os.listdir(self._sub["cur"]))
            disk, missing = self._differences(known, listed)
        return disk, [entries[self._by_base[base]] for base in missing]

    def _list_new(self) -> set[str]:
        # Usually empty, and the files here get renamed: only regular files, by d_type.
        with os.scandir(self._sub["new"]) as it:
            return {e.name for e in it if e.name[0] != "." and e.is_file(follow_symlinks=False)}

    def _differences(
        self, known: dict[str, set[str]], listed: dict[str, set[str]]
    ) -> tuple[dict[str, tuple[str, str]], list[str]]:
        """``({base: (sub, suffix)}, bases without a file)`` for the bases whose names
        differ between ``known`` (the mirror) and ``listed`` (the directories)."""
        found: dict[str, list[tuple[str, str]]] = {}
        for sub in ("new", "cur"):
            have, had = listed[sub], known[sub]
            moving = sub == "new" and not self.read_only  # moves everything in new/
            if not moving and have == had:
                continue  # the common case, at C speed
            added = have if moving else have - had
            for name in added:
                if name[0] != ".":
                    base, suffix = split_name(name)
                    found.setdefault(base, []).append((sub, suffix))
            for name in had - have:
                found.setdefault(split_name(name)[0], [])
        disk: dict[str, tuple[str, str]] = {}
        missing: list[str] = []
        for base, where in found.items():
            uid = self._by_base.get(base)
            m = None if uid is None else self._entries[uid]
            if m is not None and m.name in listed[m.sub] and (m.sub, m.suffix) not in where:
                where.append((m.sub, m.suffix))  # the file as the mirror knows it is still there
            if not where:
                if m is not None:
                    missing.append(base)
                continue
            disk[base] = self._pick(base, where)
        return disk, missing

    def _pick(self, base: str, where: list[tuple[str, str]]) -> tuple[str, str]:
        """Of several files for one message (a copy, a crash between link and unlink by
        another program), the one in cur/ that still exists, a newly seen name first."""
        if len(where) == 1:
            return where[0]
        curs = [w for w in where if w[0] == "cur"]
        if not curs:
            return where[-1]
        if len(curs) > 1:
            curs = [w for w in curs if os.path.lexists(self._sub["cur"] + base + w[1])] or curs
            log.warning("%s: two files for one message: %s", self.dir, ", ".join(base + w[1] for w in curs))
        return curs[0]

    def _commit_disk_changes(
        self,
        fresh: list[tuple[str, str, str, int, float]],
        changed: list[tuple[Message, str, str]],
        vanished: list[Message],
    ) -> None:
        meta = self._meta_copy()
        if meta.highestmodseq == 0:
            meta.highestmodseq = 1  # an index made before HIGHESTMODSEQ started at 1: never 0
        # _new_message's numbering for each, without a call per row (a cold 100k SELECT).
        uid0, modseq0, new_message = meta.uidnext, meta.highestmodseq + 1, _new_message
        new_msgs = [new_message(Message, (uid0 + i, base, sub, suffix, modseq0 + i, size, idate, ""))
                    for i, (base, sub, suffix, size, idate) in enumerate(fresh)]
        meta.uidnext += len(new_msgs)
        meta.highestmodseq += len(new_msgs)
        updates: list[Message] = []
        notify: list[int] = []
        for m, sub, suffix in changed:
            meta.highestmodseq += 1
            updates.append(m._replace(sub=sub, suffix=suffix, modseq=meta.highestmodseq))
            if letters_of(suffix) != m.letters:
                notify.append(m.uid)
        expunges = [(meta.highestmodseq + i + 1, m.uid) for i, m in enumerate(vanished)]
        meta.highestmodseq += len(expunges)

        claim: set[int] = set()
        if meta.first_recent_uid < meta.uidnext:
            claim = {
                u for u in (*self._unannounced, *(m.uid for m in new_msgs))
                if u >= meta.first_recent_uid
            }
            if not self.read_only:
                meta.first_recent_uid = meta.uidnext  # the first session to see them gets them
        assert self._meta is not None
        if (new_msgs or updates or expunges or meta.first_recent_uid != self._meta.first_recent_uid
                or meta.highestmodseq != self._meta.highestmodseq):
            with self._commit(meta):
                self._store.upsert([*new_msgs, *updates])
                if expunges:
                    self._store.delete(expunges, meta)
        if new_msgs or updates:
            entries, by_base = self._own()
            for m in new_msgs:
                entries[m.uid] = m
                by_base[m.base] = m.uid
            self._unannounced.update(m.uid for m in new_msgs)
            for m in updates:
                entries[m.uid] = m
        self._pending_flags.update(u for u in notify if self._in_view(u))
        self._forget(vanished)
        self._recent |= claim

    def _new_files_info(
        self, fresh: list[str], disk: dict[str, tuple[str, str]]
    ) -> list[tuple[str, str, str, int, float]]:
        """``(base, sub, suffix, size, mtime)`` of files seen for the first time, in
        delivery order (the order their UIDs must follow)."""
        found: list[tuple[float, str, str, str, int, float]] = []
        lstat, is_reg, time_of, size_of = os.stat, stat.S_ISREG, name_time, imap_size
        with self._dir_fds() as fds:
            for base in fresh:
                sub, suffix = disk[base]
                try:
                    st = lstat(base + suffix, dir_fd=fds[sub], follow_symlinks=False)
                except FileNotFoundError:
                    continue  # gone again already; never indexed, nothing to report
                if not is_reg(st.st_mode):
                    continue  # a directory or symlink someone left there: not a message
                t = time_of(base)
                # Delivery order: the time in the name (when the writer made it); mtime is
                # the internal date and may be older (APPEND with a date, migrated mail).
                mtime = st.st_mtime
                size = size_of(base)
                found.append((t[0] + t[1] / 1e6 if t else mtime, base, sub, suffix,
                              st.st_size if size is None else size, mtime))
        found.sort()
        return [row[1:] for row in found]

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

    def _find_file(self, base: str) -> Path | None:
        where = self._scan().get(base)
        return None if where is None else self.dir / where[0] / (base + where[1])

    # ================================================================ flags

    def _parse_flags(self, flags: Iterable[str]) -> tuple[set[str], list[str]]:
        """System flag letters and keywords (deduplicated case-insensitively)."""
        letters: set[str] = set()
        kws: dict[str, str] = {}
        for flag in flags:
            canon = normalize_flag(flag)
            if canon in FLAG_TO_LETTER:
                letters.add(FLAG_TO_LETTER[canon])
            else:
                kws.setdefault(canon.casefold(), canon)
        return letters, list(kws.values())

    def _apply(
        self, letters: str, extra: str, sys_letters: set[str], kws: list[str], mode: str
    ) -> tuple[str, str]:
        """New ``(letters, extra)`` after a STORE; unknown letters are never dropped."""
        cur = set(letters)
        kw_letters = {ltr for k in kws if (ltr := self._keywords.letter(k))}
        kw_extra = [k for k in kws if self._keywords.letter(k) is None]
        more = {e.casefold(): e for e in _split_extra(extra)}
        if mode == "add":
            cur |= sys_letters | kw_letters
            for k in kw_extra:
                more.setdefault(k.casefold(), k)
        elif mode == "remove":
            cur -= sys_letters | kw_letters
            for k in kws:
                more.pop(k.casefold(), None)
        else:
            # Letters nobody can name (P, or a keyword letter missing from
            # dovecot-keywords) are not the client's to clear.
            keep = {
                c for c in cur
                if (c.isupper() and c not in LETTER_TO_FLAG)
                or (c.islower() and self._keywords.name(c) is None)
            }
            cur = keep | sys_letters | kw_letters
            more = {k.casefold(): k for k in kw_extra}
        return "".join(sorted(cur)), "\n".join(sorted(more.values(), key=str.casefold))

    def _check_message_keywords(self, count: int) -> None:
        if count > self.max_keywords_per_message:
            raise KeywordLimit(f"a message may have at most {self.max_keywords_per_message} keywords")

    def _check_folder_keywords(self, kws: list[str]) -> None:
        """Under the lock: would ``kws`` take the folder past its distinct-keyword cap?"""
        if all(self._keywords.letter(k) for k in kws):
            return  # the common case: every keyword has its letter already
        known = {k.casefold() for k in self.keywords()}
        new = {k.casefold() for k in kws} - known
        if new and len(known) + len(new) > self.max_keywords_per_folder:
            raise KeywordLimit(f"a folder may have at most {self.max_keywords_per_folder} distinct "
                               "keywords; remove unused ones first")

    def _assign_keywords(self, kws: list[str]) -> None:
        # A letter given out may already sit, unnamed, in some file name.
        if self._keywords.assign(kws):
            self._flags_cache.clear()

    def _flag_names(self, m: Message) -> frozenset[str]:
        key = (m.letters, m.extra)
        cached = self._flags_cache.get(key)
        if cached is not None:
            return cached
        names: set[str] = set()
        for c in m.letters:
            if c in LETTER_TO_FLAG:
                names.add(LETTER_TO_FLAG[c])
            elif c.islower() and (kw := self._keywords.name(c)) is not None:
                names.add(kw)
        names.update(_split_extra(m.extra))
        if len(self._flags_cache) > 4096:
            self._flags_cache.clear()
        out = self._flags_cache[key] = frozenset(names)
        return out

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
                _copy_durably(src, dst, m.internal_date)
                return True
        return False


def account_root(folder: Path) -> Path:
    """The Maildir++ root a folder belongs to: the parent of a ``.name`` folder, else itself."""
    if folder.name.startswith(".") and os.path.isdir(folder.parent / "cur"):
        return folder.parent
    return folder


def next_uidvalidity(root: Path, at_least: int) -> int:
    """A UIDVALIDITY for a new index in the account at ``root``: at least ``at_least`` and
    above every one given before in the account (``pymaild-uidvalidity``, under flock,
    fsynced before the index that uses it exists)."""
    path = root / UIDVALIDITY_FILE
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, FILE_MODE)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        raw = os.pread(fd, 32, 0).strip()
        last = int(raw) if raw.isdigit() else 0
        value = max(at_least, last + 1) & 0xFFFFFFFF or 1
        data = f"{value}\n".encode()
        os.pwrite(fd, data, 0)
        os.ftruncate(fd, len(data))
        os.fsync(fd)
        if not raw:
            fsync_dir(root)  # a new file: make its directory entry durable too
        return value
    finally:
        os.close(fd)  # drops the flock


def _dovecot_uidvalidity(folder: Path) -> int:
    """The UIDVALIDITY Dovecot gave this folder (``dovecot-uidlist``) and the account's
    (``dovecot-uidvalidity``), 0 when absent: a new index must not reuse them, or a
    client that synchronised with Dovecot would trust its old UIDs."""
    found = 0
    with contextlib.suppress(OSError, ValueError):
        with open(folder / "dovecot-uidlist", "rb") as f:
            head = f.readline(256).split()
        if head[:1] == [b"1"] and len(head) > 1:
            found = int(head[1])
        else:
            found = max((int(w[1:]) for w in head[1:] if w[:1] == b"V" and w[1:].isdigit()), default=0)
    with contextlib.suppress(OSError, ValueError):
        text = (account_root(folder) / "dovecot-uidvalidity").read_text("ascii").strip()
        found = max(found, int(text, 16))
    return found


def _copy_durably(src: Path, dst: Path, mtime: float) -> None:
    with open(src, "rb") as fin:
        fd = os.open(dst, _OPEN_FLAGS, FILE_MODE)
        try:
            try:
                with os.fdopen(fd, "wb", closefd=False) as fout:
                    shutil.copyfileobj(fin, fout, 1 << 20)
                os.fsync(fd)
            except OSError as exc:
                with_path(exc, dst)
                raise
            finally:
                os.close(fd)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(dst)  # never a partial copy left in tmp/
            raise
    os.utime(dst, (mtime, mtime))


if TYPE_CHECKING:
    # mypy checks that the index still offers the storage interface IMAP uses.
    from mailserver.storage.api import MailboxView

    _conforms: type[MailboxView] = MailboxIndex
