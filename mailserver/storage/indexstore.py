"""The on-disk index of one Maildir folder: an SQLite file, ``pymaild-index.sqlite``.

Why SQLite and not a Dovecot-style text uidlist: measured on this machine with 10,000
messages, rewriting a text uidlist atomically (tmp + fsync + rename + dir fsync) costs
about 10 ms per change and grows with the folder (about 100 ms at 100k) - and marking one
message \\Seen is the most common IMAP write. An SQLite commit of one changed row costs
about 1 ms whatever the folder size; reading all rows back costs about the same as
parsing the text file (20 vs 12 ms for 10k). SQLite's journal makes each commit atomic
and durable (``synchronous=FULL``), so the index never needs a full rewrite.

Journal mode PERSIST, not WAL: WAL commits are faster (0.4 ms) but a closing WAL
connection unlinks ``<name>-wal`` by path, which is unsafe once a corrupt file has been
moved aside and replaced; WAL also needs shared memory, which network file systems lack.
Every access is serialised by the folder lock anyway, so WAL's concurrent readers would
buy nothing.

Schema (version 1):

    meta(key, value)            uidvalidity, uidnext, highestmodseq, first_recent_uid,
                                expunge_floor (modseqs <= it have left the expunge log),
                                nonce (random, set at creation; absent in older files)
    messages(uid, base, sub, suffix, modseq, size, internal_date, extra)
                                sub: "new"|"cur"; suffix: ":2,<letters>" or "" as on disk;
                                extra: keywords beyond the 26 letters, one per line
    expunged(modseq, uid)       the last EXPUNGE_LOG_MAX expunges, for QRESYNC VANISHED

Invariant the readers rely on: every write of a messages row, and every expunge, takes a
fresh modseq above the previous HIGHESTMODSEQ, so "rows with modseq > X" plus "expunges
with modseq > X" is exactly what changed since X.

Connections are not held while a session idles: an open SQLite connection costs about
116 KiB (lookaside buffers, parsed schema, page cache), most of the memory an idle IMAP
session would hold. :meth:`IndexStore.release` hands the connection to a small
process-wide pool instead (its page cache shrunk) and the next :meth:`~IndexStore.connect`
of the same file takes it back in microseconds - a fresh connect, schema parse included,
costs about 0.4 ms. The pool is bounded (:data:`POOL_MAX`), so many idle sessions hold no
connection at all; a pooled connection is only reused while the file at the path is still
the one it was opened on (same device and inode).
"""

from __future__ import annotations

import contextlib
import json
import operator
import os
import secrets
import sqlite3
import threading
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple, cast

from mailserver.storage.maildirpp import FILE_MODE

INDEX_FILE = "pymaild-index.sqlite"
SCHEMA_VERSION = 1
EXPUNGE_LOG_MAX = 10_000
POOL_MAX = 8  # idle connections kept per process, over all folders

_SCHEMA = """
CREATE TABLE meta (key TEXT PRIMARY KEY, value INTEGER NOT NULL);
CREATE TABLE messages (
    uid INTEGER PRIMARY KEY,
    base TEXT NOT NULL UNIQUE,
    sub TEXT NOT NULL,
    suffix TEXT NOT NULL,
    modseq INTEGER NOT NULL,
    size INTEGER NOT NULL,
    internal_date REAL NOT NULL,
    extra TEXT NOT NULL DEFAULT ''
);
CREATE INDEX messages_modseq ON messages (modseq);
CREATE TABLE expunged (modseq INTEGER PRIMARY KEY, uid INTEGER NOT NULL);
"""

Row = tuple[int, str, str, str, int, int, float, str]
# meta keys of the last trusted directory scan (absent in older files, ignored by them).
_SCAN_STAMP_KEYS = ("scan_new_mtime_ns", "scan_cur_mtime_ns", "scan_modseq")
_UID = operator.itemgetter(0)
_COLUMNS = "uid, base, sub, suffix, modseq, size, internal_date, extra"


class StoreGroup(NamedTuple):
    """Rows a STORE gives the same new name parts and keywords (see
    :meth:`IndexStore.update_groups`)."""

    sub: str
    suffix: str
    extra: str
    first_modseq: int
    uids: list[int]


class CorruptIndex(Exception):
    """The index file is not a usable pymaild index; it must be rebuilt."""


@dataclass(slots=True)
class Meta:
    uidvalidity: int
    uidnext: int
    highestmodseq: int
    first_recent_uid: int
    expunge_floor: int
    # Tells this file from an earlier one at the same path and inode number with the same
    # UIDVALIDITY (deleted and recreated within a second): 0 for files made before it.
    nonce: int = 0


def _corrupt(exc: sqlite3.Error) -> bool:
    # Only damage means "rebuild": a rebuild throws away every UID, so a locked database,
    # a full disk or an I/O error must propagate instead. Plain DatabaseError is what
    # SQLite raises for "file is not a database" and "database disk image is malformed".
    return type(exc) is sqlite3.DatabaseError


class _Pool:
    """Idle connections, most recently released last, at most :data:`POOL_MAX`."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        # (path, (st_dev, st_ino) when opened, pid, connection)
        self._idle: list[tuple[str, tuple[int, int], int, sqlite3.Connection]] = []

    def take(self, path: str, ident: tuple[int, int]) -> sqlite3.Connection | None:
        drop: list[sqlite3.Connection] = []
        found = None
        pid = os.getpid()
        with self._lock:
            for i in range(len(self._idle) - 1, -1, -1):
                p, idt, owner, conn = self._idle[i]
                if owner != pid:
                    # Inherited through fork: never used, and never closed either (kept
                    # referenced, so no finalizer closes the parent's file under it).
                    _INHERITED.append(self._idle.pop(i)[3])
                elif p != path:
                    continue
                elif idt != ident:
                    del self._idle[i]  # the file was replaced or deleted meanwhile
                    drop.append(conn)
                elif found is None:
                    del self._idle[i]
                    found = conn
        for conn in drop:
            _close(conn)
        return found

    def put(self, path: str, ident: tuple[int, int], conn: sqlite3.Connection) -> None:
        with self._lock:
            self._idle.append((path, ident, os.getpid(), conn))
            evicted = self._idle[:-POOL_MAX] if len(self._idle) > POOL_MAX else []
            del self._idle[: len(evicted)]
        for _p, _i, owner, old in evicted:
            if owner == os.getpid():
                _close(old)
            else:
                _INHERITED.append(old)

    def clear(self) -> None:
        """Close every idle connection (tests, shutdown)."""
        with self._lock:
            idle, self._idle = self._idle, []
        for _p, _i, owner, conn in idle:
            if owner == os.getpid():
                _close(conn)
            else:
                _INHERITED.append(conn)

    def __len__(self) -> int:
        return len(self._idle)


POOL = _Pool()
_INHERITED: list[sqlite3.Connection] = []


def _close(conn: sqlite3.Connection) -> None:
    with contextlib.suppress(sqlite3.Error):
        conn.close()


class IndexStore:
    """SQLite access for one folder index. Not thread-safe: the caller serialises."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.conn: sqlite3.Connection | None = None
        self.inode: int | None = None
        self._ident: tuple[int, int] | None = None
        # The stored stamp of the last trusted directory scan, as of read_meta().
        self.scan_stamp: tuple[int, int, int] | None = None

    @property
    def ident(self) -> tuple[int, int] | None:
        """``(st_dev, st_ino)`` of the file the connection is open on (None if closed)."""
        return self._ident

    # ------------------------------------------------------------ open / close

    def connect(self) -> None:
        """Open (creating an empty file with mode 0600 if missing); an idle connection
        to the same file is taken from the pool if there is one."""
        path = str(self.path)
        try:
            st = os.stat(path)
        except FileNotFoundError:
            pass
        else:
            ident = (st.st_dev, st.st_ino)
            conn = POOL.take(path, ident)
            if conn is not None:
                self.conn, self._ident, self.inode = conn, ident, st.st_ino
                return
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, FILE_MODE)
        try:
            st = os.fstat(fd)
        finally:
            os.close(fd)
        conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False, timeout=30)
        try:
            conn.execute("PRAGMA journal_mode=PERSIST")
            conn.execute("PRAGMA synchronous=FULL")
            # Room for a whole 100k-message index (~17 MB): a STORE on every message
            # then never spills pages mid-transaction (0.55 -> 0.4 s). Only while the
            # connection is in use: release() shrinks the cache again.
            conn.execute("PRAGMA cache_size=-32768")
        except sqlite3.Error as exc:
            conn.close()
            if _corrupt(exc):
                raise CorruptIndex(str(exc)) from exc
            raise
        self.conn, self._ident, self.inode = conn, (st.st_dev, st.st_ino), st.st_ino

    def release(self) -> None:
        """Give the connection back to the pool (closed if a transaction is open)."""
        conn, ident = self.conn, self._ident
        self.conn = self._ident = self.inode = None
        if conn is None:
            return
        if ident is None or conn.in_transaction:
            _close(conn)
            return
        try:
            conn.execute("PRAGMA shrink_memory")  # the page cache: re-read from the OS
        except sqlite3.Error:
            _close(conn)
            return
        POOL.put(str(self.path), ident, conn)

    def close(self) -> None:
        conn = self.conn
        self.conn = self._ident = self.inode = None
        if conn is not None:
            _close(conn)

    def move_aside(self, tag: str) -> Path | None:
        """Rename a damaged file (and its journal) out of the way; returns the new path.

        The journal goes too: left in place it would be replayed into the new file.
        Only call with the folder lock held, so no other process is inside a transaction.
        """
        self.close()
        target = self.path.with_name(f"{self.path.name}.corrupt-{tag}")
        moved: Path | None = None
        with contextlib.suppress(FileNotFoundError):
            os.rename(self.path, target)
            moved = target
        with contextlib.suppress(FileNotFoundError):
            os.rename(f"{self.path}-journal", f"{target}-journal")
        return moved

    # ------------------------------------------------------------ reading

    def _c(self) -> sqlite3.Connection:
        assert self.conn is not None, "index not open"
        return self.conn

    def read_meta(self) -> Meta | None:
        """The folder's counters, or None for an empty (new) file."""
        try:
            tables = {r[0] for r in self._c().execute("SELECT name FROM sqlite_master WHERE type='table'")}
            if not tables:
                return None
            if not {"meta", "messages", "expunged"} <= tables:
                raise CorruptIndex(f"tables missing: {sorted(tables)}")
            values = dict(self._c().execute("SELECT key, value FROM meta").fetchall())
            stamp = tuple(values.get(k) for k in _SCAN_STAMP_KEYS)
            self.scan_stamp = cast(tuple[int, int, int], stamp) if None not in stamp else None
        except sqlite3.Error as exc:
            if _corrupt(exc):
                raise CorruptIndex(str(exc)) from exc
            raise
        try:
            if values["version"] != SCHEMA_VERSION:
                raise CorruptIndex(f"schema version {values['version']}")
            return Meta(
                values["uidvalidity"],
                values["uidnext"],
                values["highestmodseq"],
                values["first_recent_uid"],
                values["expunge_floor"],
                values.get("nonce", 0),
            )
        except KeyError as exc:
            raise CorruptIndex(f"meta key {exc} missing") from exc

    def all_rows(self) -> list[Row]:
        return self._query(f"SELECT {_COLUMNS} FROM messages ORDER BY uid", ())

    def rows_since(self, modseq: int) -> list[Row]:
        """Rows written after ``modseq``, by uid. Sorted here: ``ORDER BY uid`` in SQL
        makes SQLite scan the whole table instead of the modseq index (8 ms for the 100
        rows changed since, at 100k)."""
        rows = self._query(f"SELECT {_COLUMNS} FROM messages WHERE modseq > ?", (modseq,))
        rows.sort(key=_UID)
        return rows

    def expunged_since(self, modseq: int) -> list[tuple[int, int]]:
        """``(modseq, uid)`` of logged expunges after ``modseq``, oldest first."""
        return self._query("SELECT modseq, uid FROM expunged WHERE modseq > ? ORDER BY modseq", (modseq,))

    def _query(self, sql: str, args: tuple[object, ...]) -> list[Any]:  # rows, as the schema says
        try:
            return self._c().execute(sql, args).fetchall()
        except sqlite3.Error as exc:
            if _corrupt(exc):
                raise CorruptIndex(str(exc)) from exc
            raise

    # ------------------------------------------------------------ writing

    @contextlib.contextmanager
    def transaction(self) -> Iterator[IndexStore]:
        """BEGIN IMMEDIATE ... COMMIT, rolled back on any exception."""
        c = self._c()
        c.execute("BEGIN IMMEDIATE")
        try:
            yield self
        except BaseException:
            with contextlib.suppress(sqlite3.Error):
                c.execute("ROLLBACK")
            raise
        try:
            c.execute("COMMIT")
        except sqlite3.Error as exc:
            with contextlib.suppress(sqlite3.Error):
                c.execute("ROLLBACK")
            if _corrupt(exc):
                raise CorruptIndex(str(exc)) from exc
            raise

    def create(self, uidvalidity: int) -> Meta:
        """Lay down the schema and counters of a new, empty index (in one transaction)."""
        # HIGHESTMODSEQ starts at 1: RFC 7162 3.1.2.1 reserves 0 (Dovecot reports 1 too).
        meta = Meta(uidvalidity, 1, 1, 1, 0, secrets.randbits(62) or 1)
        with self.transaction():
            for stmt in _SCHEMA.split(";"):
                if stmt.strip():
                    self._c().execute(stmt)
            self._c().execute("INSERT INTO meta VALUES ('version', ?)", (SCHEMA_VERSION,))
            self._c().execute("INSERT INTO meta VALUES ('nonce', ?)", (meta.nonce,))
            self.set_meta(meta)
        return meta

    def set_meta(self, meta: Meta) -> None:
        self._c().executemany(
            "INSERT OR REPLACE INTO meta VALUES (?, ?)",
            [
                ("uidvalidity", meta.uidvalidity),
                ("uidnext", meta.uidnext),
                ("highestmodseq", meta.highestmodseq),
                ("first_recent_uid", meta.first_recent_uid),
                ("expunge_floor", meta.expunge_floor),
            ],
        )

    def write_scan_stamp(self, stamp: tuple[int, int, int]) -> None:
        """Remember ``(new/ mtime ns, cur/ mtime ns, highestmodseq)`` of a scan that found
        the files matching the rows (see ``_dirs_unchanged`` in :mod:`.maildirscan`), in a
        transaction of its own: after a restart the first open of an idle folder then needs
        two stat() calls, not a readdir of every file (~80 ms per 100k). Call with the
        folder lock held."""
        with self.transaction():
            self._c().executemany("INSERT OR REPLACE INTO meta VALUES (?, ?)",
                                  zip(_SCAN_STAMP_KEYS, stamp, strict=True))
        self.scan_stamp = stamp

    def upsert(self, rows: Iterable[Row]) -> None:
        self._c().executemany(f"INSERT OR REPLACE INTO messages ({_COLUMNS}) VALUES (?,?,?,?,?,?,?,?)", rows)

    def update(self, rows: Iterable[Row]) -> None:
        """Rewrite the name, modseq and keywords of rows that exist (base, size and date
        never change): about 40 % cheaper than :meth:`upsert` for a 100k-row STORE, which
        would delete and re-insert every row and its ``base`` index entry."""
        # Numbered parameters pick the columns out of whole rows: no per-row tuple.
        self._c().executemany(
            "UPDATE messages SET sub = ?3, suffix = ?4, modseq = ?5, extra = ?8 WHERE uid = ?1", rows
        )

    def update_groups(self, groups: Iterable[StoreGroup]) -> None:
        """Rewrite rows a group at a time: every UID of a group gets the group's name
        parts and keywords, and modseqs ``first_modseq``, ``first_modseq + 1`` ... in the
        order given. One statement per group (a JSON array walked by ``json_each``, SQLite
        3.33+): half the time of :meth:`update`'s row-by-row executemany, and the GIL is
        released for the whole statement, so the caller's renames run beside it."""
        c = self._c()
        if sqlite3.sqlite_version_info < (3, 33, 0):  # no UPDATE ... FROM
            c.executemany(
                "UPDATE messages SET sub = ?, suffix = ?, modseq = ?, extra = ? WHERE uid = ?",
                ((g.sub, g.suffix, g.first_modseq + i, g.extra, uid)
                 for g in groups for i, uid in enumerate(g.uids)))
            return
        for g in groups:
            c.execute(
                "UPDATE messages SET sub = ?, suffix = ?, extra = ?, modseq = ? + j.key "
                "FROM json_each(?) AS j WHERE messages.uid = j.value",
                (g.sub, g.suffix, g.extra, g.first_modseq, json.dumps(g.uids)),
            )

    def delete(self, expunges: list[tuple[int, int]], meta: Meta) -> None:
        """Remove messages and log ``(modseq, uid)`` expunges; trims the log to its bound."""
        c = self._c()
        c.executemany("DELETE FROM messages WHERE uid = ?", [(uid,) for _m, uid in expunges])
        c.executemany("INSERT INTO expunged (modseq, uid) VALUES (?, ?)", expunges)
        row = c.execute(
            "SELECT modseq FROM expunged ORDER BY modseq DESC LIMIT 1 OFFSET ?", (EXPUNGE_LOG_MAX,)
        ).fetchone()
        if row is not None:
            c.execute("DELETE FROM expunged WHERE modseq <= ?", (row[0],))
            meta.expunge_floor = max(meta.expunge_floor, row[0])
