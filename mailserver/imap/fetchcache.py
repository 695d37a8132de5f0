"""The FETCH cache of one Maildir folder: ``pymaild-cache.sqlite`` next to the index.

A client's header sync (``UID FETCH 1:* (... BODY.PEEK[HEADER.FIELDS (...)])``) must not
open every message file each time. For each message, keyed by its Maildir base name (the
part before ``:2,``, which survives flag renames), the cache keeps the raw header block
(``BODY[HEADER.FIELDS]`` is cut from it) and the rendered ENVELOPE, BODYSTRUCTURE and BODY.
Message files never change, so an entry never goes stale; entries of messages that are
gone are removed with ``forget``/``prune``.

The ``fields`` table also keeps small per-message values computed from the header: the
``BODY[HEADER.FIELDS (...)]`` result of each field list a client asks for, and the SORT
and THREAD keys (:mod:`mailserver.imap.sorting`, keys ``SORT<version>:<criterion>``).

It is a cache: nothing in it is needed for correctness. Writes are ``synchronous=OFF``
(a crash may lose recent entries, which are rebuilt from the files), and every failure
is contained: a damaged file is deleted and recreated, any other SQLite or file error
(disk full, a lock held by another process past ``busy_timeout``) makes the call a miss
or a no-op and is logged. No method raises because of the cache.

One SQLite connection per folder per process, shared by every ``FetchCache`` on that
folder (one per IMAP session) behind a lock. A connection per object would be unsafe for
the recovery: deleting a damaged file by path while another connection still has the
old one open lets that connection, when it closes, unlink the new file's ``-wal`` by
path (the problem the index avoids with PERSIST). With one connection there is nothing
else open to race with. The connection also checks the file's inode before each use, so
a folder renamed or deleted underneath is reopened instead of written through a stale
handle.

``CACHE_VERSION`` is stored as ``PRAGMA user_version``: bump it whenever the schema or
the rendering in :mod:`mailserver.imap.mime` changes, and old entries are discarded.

No in-process memory layer, after measuring one (10,000 entries of ~4 KiB, a 42 MB file):
a full ``get_many`` costs ~60 ms of CPU from SQLite and under 1 ms from a dict, but a
dict holding a folder costs ~30 MB per session (300 MB at 100k messages), and a bounded
one thrashes on exactly the full syncs it would help. What clients repeat within a
session is small (a window of new messages, one message's BODYSTRUCTURE), and SQLite
answers that in 0.02 ms (1 entry) to 0.3 ms (100 entries).
"""

from __future__ import annotations

import contextlib
import logging
import os
import sqlite3
import threading
import time
from collections.abc import Callable, Collection, Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any, NamedTuple, TypeVar

from mailserver.imap import format as fmt
from mailserver.imap import mime
from mailserver.storage.maildirpp import FILE_MODE

log = logging.getLogger("pymaild.storage")

CACHE_FILE = "pymaild-cache.sqlite"
CACHE_VERSION = 1  # schema and rendering; see the module docstring
HEADER_CAP = 256 * 1024  # longest header block stored; longer ones are cut (see CacheEntry)
BUSY_TIMEOUT_MS = 2000
RETRY_AFTER = 60.0  # seconds before opening again after the file could not be opened
_T = TypeVar("_T")
_CHUNK = 500  # bases per "IN (...)" query

_SCHEMA = """
CREATE TABLE IF NOT EXISTS entries (
    base TEXT PRIMARY KEY,
    header BLOB NOT NULL,
    bodystructure BLOB,
    body BLOB,
    envelope BLOB
)
"""
_FIELDS_SCHEMA = """
CREATE TABLE IF NOT EXISTS fields (
    base TEXT NOT NULL,
    key TEXT NOT NULL,
    data BLOB NOT NULL,
    PRIMARY KEY (base, key)
) WITHOUT ROWID
"""
_COLUMNS = "base, header, bodystructure, body, envelope"
_UPSERT = f"""
INSERT INTO entries ({_COLUMNS}) VALUES (?, ?, ?, ?, ?)
ON CONFLICT (base) DO UPDATE SET
    header = excluded.header,
    bodystructure = coalesce(excluded.bodystructure, entries.bodystructure),
    body = coalesce(excluded.body, entries.body),
    envelope = coalesce(excluded.envelope, entries.envelope)
"""


class CacheEntry(NamedTuple):
    header: bytes  # the raw header block (mime.split_header()[0]), at most HEADER_CAP octets
    bodystructure: bytes | None  # rendered BODYSTRUCTURE
    body: bytes | None  # rendered BODY
    envelope: bytes | None  # rendered ENVELOPE

    @property
    def header_truncated(self) -> bool:
        """The header was longer than HEADER_CAP and is cut: read the file for HEADER.FIELDS."""
        return len(self.header) >= HEADER_CAP


def entry_for(data: bytes, *, structure: bool) -> CacheEntry:
    """The cache entry of a message: header and ENVELOPE (cheap) always, BODYSTRUCTURE and
    BODY (which need the whole message parsed) with ``structure=True``."""
    msg = mime.ParsedMessage(data)
    header = msg.header
    envelope = fmt.format_value(msg.envelope())
    if not structure:
        return CacheEntry(header[:HEADER_CAP], None, None, envelope)
    return CacheEntry(
        header[:HEADER_CAP],
        fmt.format_value(msg.body_structure(extended=True)),
        fmt.format_value(msg.body_structure(extended=False)),
        envelope,
    )


def fields_key(names: Iterable[str], *, exclude: bool) -> str:
    """The cache key of a HEADER.FIELDS(.NOT) list: the result does not depend on the order
    or case of the names, so ``(From To)`` and ``(to FROM)`` share one."""
    return ("NOT " if exclude else "") + " ".join(sorted({n.lower() for n in names}))


def _is_corrupt(exc: sqlite3.Error) -> bool:
    # SQLite reports "file is not a database" and "database disk image is malformed" as
    # plain DatabaseError; locked/busy/full/I-O errors are OperationalError and are not
    # damage (deleting the file for those would only throw the cache away for nothing).
    return type(exc) is sqlite3.DatabaseError


# ---------------------------------------------------------------------------- shared store


class _Store:
    """The one connection to one folder's cache file in this process."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.lock = threading.Lock()
        self.conn: sqlite3.Connection | None = None
        self.inode: tuple[int, int] | None = None
        self.users = 0
        self.retry_at = 0.0  # monotonic time before which opening is not tried again

    # All methods below run with self.lock held.

    def connection(self) -> sqlite3.Connection | None:
        """The open connection, (re)opened as needed; None while the file cannot be used."""
        if self.conn is not None:
            try:
                st = os.stat(self.path)
                same = (st.st_dev, st.st_ino) == self.inode
            except OSError:
                same = False
            if same:
                return self.conn
            self.close()  # deleted, or the folder renamed/replaced underneath
        if time.monotonic() < self.retry_at:
            return None
        try:
            self.conn = self._open()
        except sqlite3.Error as exc:
            if _is_corrupt(exc):
                return self.recreate(exc)
            self._fail(exc)
        except OSError as exc:
            self._fail(exc)
        return self.conn

    def _fail(self, exc: Exception) -> None:
        log.warning("fetch cache %s unusable for %ds: %s", self.path, RETRY_AFTER, exc)
        self.close()
        self.retry_at = time.monotonic() + RETRY_AFTER

    def _open(self) -> sqlite3.Connection:
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, FILE_MODE)
        try:
            st = os.fstat(fd)
        finally:
            os.close(fd)
        conn = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False,
                               timeout=BUSY_TIMEOUT_MS / 1000)
        try:
            conn.execute(f"PRAGMA busy_timeout={BUSY_TIMEOUT_MS}")
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute("PRAGMA synchronous=OFF")
            version = conn.execute("PRAGMA user_version").fetchone()[0]
            if version != CACHE_VERSION:
                conn.execute("BEGIN IMMEDIATE")
                conn.execute("DROP TABLE IF EXISTS entries")
                conn.execute("DROP TABLE IF EXISTS fields")
                conn.execute(_SCHEMA)
                conn.execute(_FIELDS_SCHEMA)
                conn.execute(f"PRAGMA user_version={CACHE_VERSION}")
                conn.execute("COMMIT")
            else:
                conn.execute(_SCHEMA)  # IF NOT EXISTS: repairs a missing table
                conn.execute(_FIELDS_SCHEMA)
            # A file whose table has other columns (not ours) fails here, as damage.
            conn.execute(f"SELECT {_COLUMNS} FROM entries LIMIT 0").fetchall()
        except sqlite3.OperationalError as exc:
            conn.close()
            if "no such column" in str(exc) or "no such table" in str(exc):
                raise sqlite3.DatabaseError(str(exc)) from exc
            raise
        except BaseException:
            conn.close()
            raise
        self.inode = (st.st_dev, st.st_ino)
        self.retry_at = 0.0
        return conn

    def recreate(self, exc: Exception) -> sqlite3.Connection | None:
        """Delete a damaged file (with its -wal/-shm) and start an empty one."""
        log.warning("fetch cache %s damaged (%s): recreating it", self.path, exc)
        self.close()
        for suffix in ("", "-wal", "-shm", "-journal"):
            with contextlib.suppress(OSError):  # missing, or not ours to delete: _open says
                os.unlink(f"{self.path}{suffix}")
        try:
            self.conn = self._open()
        except (sqlite3.Error, OSError) as again:
            self._fail(again)
        return self.conn

    def close(self) -> None:
        if self.conn is not None:
            with contextlib.suppress(sqlite3.Error):
                self.conn.close()
        self.conn = None
        self.inode = None


_stores: dict[str, _Store] = {}
_stores_lock = threading.Lock()


def _acquire(path: Path) -> _Store:
    key = os.path.abspath(path)
    with _stores_lock:
        store = _stores.get(key)
        if store is None:
            store = _stores[key] = _Store(path)
        store.users += 1
        return store


def _release(store: _Store) -> None:
    with _stores_lock:
        store.users -= 1
        if store.users > 0:
            return
        _stores.pop(os.path.abspath(store.path), None)
        # Closed before anyone can open the folder again: never two connections to one
        # file in this process (see the module docstring).
        with store.lock:
            store.close()


# ---------------------------------------------------------------------------- FetchCache


class FetchCache:
    """The FETCH cache of one folder, for one session (used by one thread at a time)."""

    def __init__(self, folder_dir: Path) -> None:
        self.path = Path(folder_dir) / CACHE_FILE
        self._store: _Store | None = None
        self._closed = False

    # ------------------------------------------------------------ plumbing

    @contextlib.contextmanager
    def _conn(self) -> Iterator[sqlite3.Connection | None]:
        """The shared connection with its lock held; None when the cache is unusable."""
        if self._closed:
            yield None
            return
        if self._store is None:
            self._store = _acquire(self.path)
        store = self._store
        with store.lock:
            yield store.connection()

    def _run(self, what: str, work: Callable[[sqlite3.Connection], _T], default: _T) -> _T:
        """``work(conn)`` under the lock; on failure log, recover from damage, return default."""
        with self._conn() as conn:
            if conn is None:
                return default
            try:
                return work(conn)
            except sqlite3.Error as exc:
                with contextlib.suppress(sqlite3.Error):
                    if conn.in_transaction:
                        conn.execute("ROLLBACK")
                assert self._store is not None
                if _is_corrupt(exc):
                    self._store.recreate(exc)
                else:
                    log.warning("fetch cache %s: %s failed: %s", self.path, what, exc)
                return default

    # ------------------------------------------------------------ API

    def get_many(self, bases: Sequence[str]) -> dict[str, CacheEntry]:
        """The cached entries of those ``bases`` that have one."""
        if not bases:
            return {}
        found: dict[str, CacheEntry] = {}
        nothing: list[_Row] = []
        rows = self._run("read", lambda c: _read(c, bases), nothing)
        for base, header, bodystructure, body, envelope in rows:
            # Anything but what we write (a damaged or foreign row) is a miss; the next
            # put_many replaces it.
            if type(header) is bytes and _blob(bodystructure) and _blob(body) and _blob(envelope):
                found[base] = CacheEntry(header, bodystructure, body, envelope)
        return found

    def put_many(self, entries: Mapping[str, CacheEntry]) -> None:
        """Insert or update; a None field keeps the value already stored."""
        if not entries:
            return

        def work(conn: sqlite3.Connection) -> None:
            conn.execute("BEGIN IMMEDIATE")
            conn.executemany(_UPSERT, [(base, *entry) for base, entry in entries.items()])
            conn.execute("COMMIT")

        self._run("write", work, None)

    def get_fields(self, bases: Sequence[str], key: str) -> dict[str, bytes]:
        """Cached ``BODY[HEADER.FIELDS (...)]`` results for one field list (``key``, see
        :func:`fields_key`): a client's header sync reads these small blobs and nothing
        else, instead of each header block and a regex over it."""
        if not bases:
            return {}

        def work(conn: sqlite3.Connection) -> dict[str, bytes]:
            out: dict[str, bytes] = {}
            for i in range(0, len(bases), _CHUNK):
                chunk = list(bases[i : i + _CHUNK])
                marks = ",".join("?" * len(chunk))
                for base, data in conn.execute(
                        f"SELECT base, data FROM fields WHERE key = ? AND base IN ({marks})", [key, *chunk]):
                    if type(data) is bytes:
                        out[base] = data
            return out

        return self._run("read fields", work, {})

    def put_fields(self, key: str, results: Mapping[str, bytes]) -> None:
        if not results:
            return

        def work(conn: sqlite3.Connection) -> None:
            conn.execute("BEGIN IMMEDIATE")
            conn.executemany("INSERT OR REPLACE INTO fields (base, key, data) VALUES (?, ?, ?)",
                             [(base, key, data) for base, data in results.items()])
            conn.execute("COMMIT")

        self._run("write fields", work, None)

    def forget(self, bases: Iterable[str]) -> None:
        """Remove entries (messages expunged)."""
        keys = [(b,) for b in bases]
        if not keys:
            return

        def work(conn: sqlite3.Connection) -> None:
            conn.execute("BEGIN IMMEDIATE")
            conn.executemany("DELETE FROM entries WHERE base = ?", keys)
            conn.executemany("DELETE FROM fields WHERE base = ?", keys)
            conn.execute("COMMIT")

        self._run("forget", work, None)

    def prune(self, keep: Collection[str]) -> int:
        """Remove every entry whose base is not in ``keep``; returns how many went."""
        keep_set = keep if isinstance(keep, set | frozenset) else set(keep)

        def work(conn: sqlite3.Connection) -> int:
            bases = conn.execute("SELECT base FROM entries UNION SELECT base FROM fields").fetchall()
            stale = [(b,) for (b,) in bases if b not in keep_set]
            if stale:
                conn.execute("BEGIN IMMEDIATE")
                conn.executemany("DELETE FROM entries WHERE base = ?", stale)
                conn.executemany("DELETE FROM fields WHERE base = ?", stale)
                conn.execute("COMMIT")
            return len(stale)

        return self._run("prune", work, 0)

    def close(self) -> None:
        """Release the folder's shared connection (closed with its last user)."""
        if self._store is not None and not self._closed:
            _release(self._store)
        self._store = None
        self._closed = True

    def __enter__(self) -> FetchCache:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _blob(value: object) -> bool:
    return value is None or type(value) is bytes


# (base, header, bodystructure, body, envelope) as stored: checked by the reader, since a
# damaged or foreign row may hold anything.
_Row = tuple[Any, Any, Any, Any, Any]


def _read(conn: sqlite3.Connection, bases: Sequence[str]) -> list[_Row]:
    """Rows for ``bases``, by primary-key lookups in chunks. (Reading the whole table and
    filtering is no faster even when every row is wanted: the time goes into the blobs.)"""
    rows: list[_Row] = []
    for i in range(0, len(bases), _CHUNK):
        chunk = list(bases[i : i + _CHUNK])
        marks = ",".join("?" * len(chunk))
        rows += conn.execute(f"SELECT {_COLUMNS} FROM entries WHERE base IN ({marks})", chunk).fetchall()
    return rows
