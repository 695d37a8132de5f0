"""The outbound queue on disk: file format, atomic writes, the owner lock, CLI requests.

Layout of ``state_dir/queue/`` (an operator can read every file with ``cat``/``jq``)::

    <ID>.eml          the message, raw RFC 5322 bytes with CRLF, never changed once written
    <ID>.json         envelope + per-recipient state; its presence is the commit point
    .<ID>.json.<rand> a state file being written (tmp), removed at start
    .lock             flock()ed by the process that owns the queue (the daemon), holds its pid
    requests/         flush/remove requests dropped by ``pymaild queue`` for the owner
    corrupt/          entries the owner could not load, kept for the operator

Queue IDs are 13 hex digits of creation time in microseconds + 5 random hex digits
(``18C2F5A1B3D4E07F3A``): unique, and ``ls`` sorts them by age.

Commit protocol of a new message (:func:`write_new`): the data file is created with
O_EXCL, written and fsync'd; then the state file is written to a tmp name, fsync'd and
renamed to ``<ID>.json``; then the directory is fsync'd, which makes both names durable.
Only then does enqueue() return the ID. A crash before the rename leaves a data file
without state (an orphan, removed at the next start: the message was never accepted). A
state file whose data file is missing can only come from a crash before the directory
fsync (never acknowledged) or from outside interference; it is logged and dropped.

Every later state change rewrites ``<ID>.json`` the same way (tmp, fsync, rename, dir
fsync), so a reader sees the old state or the new one, never half. Removal unlinks the
state file first (the commit point of removal), then the data file.

Only the lock holder writes entries. Everybody may read them (the CLI's list/show) and
drop requests; see :func:`write_request` and ``mailserver/commands/queue.py``.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import logging
import os
import re
import secrets
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

from mailserver.fsutil import fsync_dir, with_path
from mailserver.message import header_end

from .dsn import format_reply

log = logging.getLogger("pymaild.queue")

DATA_SUFFIX = ".eml"
STATE_SUFFIX = ".json"
LOCK_NAME = ".lock"
REQUESTS_DIR = "requests"
CORRUPT_DIR = "corrupt"
FORMAT_VERSION = 1
FILE_MODE = 0o600

QUEUE_ID_RE = re.compile(r"^[0-9A-F]{18}$")

RecipientStatus = Literal["pending", "sent", "failed"]
RequestAction = Literal["flush", "remove"]

_CREATE = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC | os.O_NOFOLLOW


class QueueError(Exception):
    """A queue operation that cannot be done (bad ID, queue locked by another process)."""


@dataclass
class RecipientState:
    """One recipient of a queued message and where its delivery stands.

    ``state``: ``pending`` (to be tried at ``next_attempt``), ``sent``, or ``failed``
    (given up: permanent error or expired). ``notified`` is True once the sender has had
    the failure DSN for it, or once it was decided that no DSN is sent (null sender,
    non-local sender). ``code``/``status``/``text``/``mx`` are the last attempt's result.
    """

    address: str
    state: RecipientStatus = "pending"
    attempts: int = 0
    next_attempt: float = 0.0
    last_attempt: float | None = None
    code: int = 0
    status: str = ""
    text: str = ""
    mx: str = ""
    notified: bool = False


@dataclass
class QueueEntry:
    """A queued message's envelope and state: the content of ``<ID>.json``."""

    id: str
    mail_from: str  # "" is the null sender <>
    created: float
    size: int
    recipients: list[RecipientState]
    message_id: str = ""
    delay_notice_sent: bool = False
    version: int = FORMAT_VERSION

    @property
    def pending(self) -> list[RecipientState]:
        return [r for r in self.recipients if r.state == "pending"]

    @property
    def failed(self) -> list[RecipientState]:
        return [r for r in self.recipients if r.state == "failed"]

    @property
    def next_attempt(self) -> float | None:
        """The earliest next attempt of a pending recipient (None: nothing pending)."""
        return min((r.next_attempt for r in self.pending), default=None)

    @property
    def attempts(self) -> int:
        return max((r.attempts for r in self.recipients), default=0)

    @property
    def last_error(self) -> str:
        """The latest non-success reply, e.g. ``451 4.7.1 try later``, or ""."""
        tried = [r for r in self.recipients if r.state != "sent" and r.last_attempt is not None]
        if not tried:
            return ""
        r = max(tried, key=lambda r: r.last_attempt or 0.0)
        return format_reply(r.code, r.text)

    @property
    def done(self) -> bool:
        """Nothing left to do: no pending recipient, every failure notified."""
        return all(r.state == "sent" or (r.state == "failed" and r.notified)
                   for r in self.recipients)

    def copy(self) -> QueueEntry:
        return QueueEntry.from_dict(self.to_dict())

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def to_json(self) -> bytes:
        return (json.dumps(self.to_dict(), indent=1, ensure_ascii=False) + "\n").encode()

    @classmethod
    def from_dict(cls, raw: dict[str, Any]) -> QueueEntry:
        """Validate and build; raises ValueError naming the problem."""
        try:
            if raw.get("version") != FORMAT_VERSION:
                raise ValueError(f"unsupported format version {raw.get('version')!r}")
            recipients = [RecipientState(**r) for r in raw["recipients"]]
            entry = cls(**{**raw, "recipients": recipients})
        except (KeyError, TypeError) as exc:
            raise ValueError(f"malformed queue entry: {exc}") from None
        if not QUEUE_ID_RE.match(entry.id):
            raise ValueError(f"bad queue id {entry.id!r}")
        if not entry.recipients or any(r.state not in ("pending", "sent", "failed")
                                       for r in entry.recipients):
            raise ValueError("no recipients or unknown recipient state")
        return entry

    @classmethod
    def from_json(cls, data: bytes) -> QueueEntry:
        try:
            raw = json.loads(data)
        except (ValueError, UnicodeDecodeError) as exc:
            raise ValueError(f"not JSON: {exc}") from None
        if not isinstance(raw, dict):
            raise ValueError("not a JSON object")
        return cls.from_dict(raw)


# ---------------------------------------------------------------------------- paths


_id_lock = threading.Lock()
_last_micros = 0


def new_queue_id(clock: Callable[[], float] = time.time) -> str:
    """A fresh ID. The time part strictly increases within a process (even if the clock
    stands still or steps back), so IDs made here never collide; the random part keeps
    two processes apart, and the data file's O_EXCL catches the rest."""
    global _last_micros
    with _id_lock:
        _last_micros = max(int(clock() * 1_000_000), _last_micros + 1)
        micros = _last_micros & (16**13 - 1)
    return f"{micros:013X}{secrets.randbelow(16**5):05X}"


def check_id(queue_id: str) -> str:
    """The ID, upper-cased, if it is one; raises QueueError (no path tricks get through)."""
    normalized = queue_id.strip().upper()
    if not QUEUE_ID_RE.match(normalized):
        raise QueueError(f"not a queue id: {queue_id!r}")
    return normalized


def data_path(directory: Path, queue_id: str) -> Path:
    return directory / f"{queue_id}{DATA_SUFFIX}"


def state_path(directory: Path, queue_id: str) -> Path:
    return directory / f"{queue_id}{STATE_SUFFIX}"


# ---------------------------------------------------------------------------- writes


def ensure_dir(directory: Path) -> None:
    """Create the queue directory (0700) and make its entry durable in the parent."""
    if directory.is_dir():
        return
    directory.mkdir(parents=True, exist_ok=True, mode=0o700)
    fsync_dir(directory.parent)


def _write_fd(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        n = os.write(fd, view)
        if n <= 0:  # pragma: no cover - a regular file never does this
            raise OSError(errno.EIO, "write made no progress")
        view = view[n:]
    os.fsync(fd)


def _write_state_file(directory: Path, entry: QueueEntry) -> None:
    """tmp + fsync + rename over ``<ID>.json``; the caller fsyncs the directory."""
    tmp = directory / f".{entry.id}{STATE_SUFFIX}.{secrets.token_hex(4)}"
    fd = os.open(tmp, _CREATE, FILE_MODE)
    try:
        try:
            _write_fd(fd, entry.to_json())
        except OSError as exc:
            with_path(exc, tmp)
            raise
        finally:
            os.close(fd)
        os.rename(tmp, state_path(directory, entry.id))
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def write_new(directory: Path, entry: QueueEntry, data: bytes) -> None:
    """Commit a new message: data, then state, then one directory fsync (module doc)."""
    path = data_path(directory, entry.id)
    fd = os.open(path, _CREATE, FILE_MODE)  # FileExistsError: the ID is taken, nothing done
    committed_name = False
    try:
        try:
            _write_fd(fd, data)
        except OSError as exc:
            with_path(exc, path)
            raise
        finally:
            os.close(fd)
        _write_state_file(directory, entry)
        committed_name = True
        fsync_dir(directory)
    except BaseException:
        # Not committed unless the directory fsync returned: take our names back so the
        # caller's error means "not queued".
        for p in ([state_path(directory, entry.id)] if committed_name else []) + [path]:
            with contextlib.suppress(OSError):
                os.unlink(p)
        raise


def write_state(directory: Path, entry: QueueEntry) -> None:
    """Atomically replace ``<ID>.json`` with ``entry`` and make it durable."""
    _write_state_file(directory, entry)
    fsync_dir(directory)


def delete_entry(directory: Path, queue_id: str, *, durable: bool = True) -> bool:
    """Remove an entry: state first (the commit point), then data. True if it existed.

    ``durable=False`` skips the directory fsync, for messages that are delivered: if a
    crash loses the unlink, the entry comes back and is delivered once more, which the
    queue's contract allows (at most one duplicate, never a loss), and it saves one
    journal commit per delivered message. Operator removals stay durable.
    """
    existed = False
    try:
        os.unlink(state_path(directory, queue_id))
        existed = True
        if durable:
            fsync_dir(directory)
    except FileNotFoundError:
        pass
    with contextlib.suppress(FileNotFoundError):
        os.unlink(data_path(directory, queue_id))
    return existed


# ---------------------------------------------------------------------------- reads


def read_entry(directory: Path, queue_id: str) -> QueueEntry | None:
    """The entry, or None if there is none (or it vanished while we looked)."""
    try:
        raw = state_path(directory, queue_id).read_bytes()
    except FileNotFoundError:
        return None
    return QueueEntry.from_json(raw)


def read_data(directory: Path, queue_id: str) -> bytes:
    return data_path(directory, queue_id).read_bytes()


def read_header(directory: Path, queue_id: str, limit: int = 256 * 1024) -> bytes:
    """The header section of the message, up to the empty line (RFC 5322 2.1; a bare-LF
    one too, as ``message.header_end`` reads it), from its first ``limit`` octets only."""
    with open(data_path(directory, queue_id), "rb") as fh:
        head = fh.read(limit)
    return head[: header_end(head)]


def list_entries(directory: Path) -> list[QueueEntry]:
    """Every committed entry, oldest first. Read-only and safe while the owner runs."""
    entries = []
    for name in _names(directory):
        if name.endswith(STATE_SUFFIX) and QUEUE_ID_RE.match(name[: -len(STATE_SUFFIX)]):
            try:
                entry = read_entry(directory, name[: -len(STATE_SUFFIX)])
            except ValueError as exc:
                log.warning("queue %s: unreadable state file: %s", name, exc)
                continue
            if entry is not None:
                entries.append(entry)
    entries.sort(key=lambda e: (e.created, e.id))
    return entries


def load_for_owner(directory: Path) -> list[QueueEntry]:
    """Load the queue at start, cleaning what a crash left behind. Lock holder only.

    - tmp state files (``.ID.json.*``): removed (the old state file, if any, is intact);
    - a data file without state: an enqueue that never committed; removed;
    - a state file without data, or a data file whose size differs: logged; the state
      file is moved to ``corrupt/`` (with the data file, if any) for the operator.
    """
    names = set(_names(directory))
    entries: list[QueueEntry] = []
    changed = False
    for name in sorted(names):
        path = directory / name
        if name.startswith(".") and STATE_SUFFIX + "." in name:
            path.unlink(missing_ok=True)
            changed = True
        elif name.endswith(DATA_SUFFIX):
            qid = name[: -len(DATA_SUFFIX)]
            if qid + STATE_SUFFIX not in names:
                log.info("queue %s: removing data file of an enqueue that never committed", qid)
                path.unlink(missing_ok=True)
                changed = True
        elif name.endswith(STATE_SUFFIX):
            qid = name[: -len(STATE_SUFFIX)]
            problem = ""
            entry: QueueEntry | None = None
            try:
                entry = QueueEntry.from_json(path.read_bytes())
                if entry.id != qid:
                    problem = f"file name does not match id {entry.id}"
                elif qid + DATA_SUFFIX not in names:
                    problem = "data file missing"
                else:
                    size = data_path(directory, qid).stat().st_size
                    if size != entry.size:
                        problem = f"data file has {size} bytes, state says {entry.size}"
            except ValueError as exc:
                problem = str(exc)
            if problem:
                log.error("queue %s: dropped from the queue (moved to %s/): %s",
                          qid, CORRUPT_DIR, problem)
                _quarantine(directory, qid)
                changed = True
            elif entry is not None:
                entries.append(entry)
    if changed:
        fsync_dir(directory)
    entries.sort(key=lambda e: (e.created, e.id))
    return entries


def _quarantine(directory: Path, qid: str) -> None:
    target = directory / CORRUPT_DIR
    target.mkdir(exist_ok=True, mode=0o700)
    for suffix in (DATA_SUFFIX, STATE_SUFFIX):
        with contextlib.suppress(FileNotFoundError):
            os.rename(directory / f"{qid}{suffix}", target / f"{qid}{suffix}")
    fsync_dir(target)


def _names(directory: Path) -> list[str]:
    try:
        with os.scandir(directory) as it:
            return [e.name for e in it if e.is_file(follow_symlinks=False)]
    except FileNotFoundError:
        return []


# ---------------------------------------------------------------------------- owner lock


class QueueLock:
    """``flock`` on ``queue/.lock``: one owner (daemon or CLI in offline mode) at a time.

    The kernel drops the lock when the holder dies, even by SIGKILL, so a stale lock
    cannot exist. The holder's pid is written into the file for messages.
    """

    def __init__(self, directory: Path) -> None:
        self.path = directory / LOCK_NAME
        self._fd: int | None = None

    @property
    def held(self) -> bool:
        return self._fd is not None

    def try_acquire(self) -> bool:
        if self._fd is not None:
            return True
        ensure_dir(self.path.parent)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, FILE_MODE)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            return False
        except BaseException:
            os.close(fd)
            raise
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        self._fd = fd
        return True

    def acquire(self, timeout: float) -> None:
        """Acquire, retrying for ``timeout`` seconds (a CLI may hold it for a moment)."""
        deadline = time.monotonic() + timeout
        while not self.try_acquire():
            if time.monotonic() >= deadline:
                raise QueueError(f"{self.path.parent}: queue is in use by another process "
                                 f"(pid {self.holder() or '?'})")
            time.sleep(0.05)

    def release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)  # closing drops the flock
            self._fd = None

    def holder(self) -> int | None:
        try:
            text = self.path.read_text().strip()
        except OSError:
            return None
        return int(text) if text.isdigit() else None

    @contextlib.contextmanager
    def held_if_free(self) -> Iterator[bool]:
        """Yield True while holding the lock if nobody else had it, else yield False."""
        got = self.try_acquire()
        try:
            yield got
        finally:
            if got:
                self.release()


# ---------------------------------------------------------------------------- requests


@dataclass(frozen=True)
class Request:
    path: Path
    action: RequestAction
    queue_id: str | None  # None: every message (flush only)
    created: float = field(default=0.0)


def write_request(directory: Path, action: RequestAction, queue_id: str | None) -> Path:
    """Drop a request for the queue owner into ``requests/``, atomically (tmp + rename).

    The owner applies requests in name order (names start with the time) and deletes
    each one after applying it, so the file's disappearance is the acknowledgement.
    """
    if action not in ("flush", "remove"):
        raise QueueError(f"unknown request {action!r}")
    if action == "remove" and queue_id is None:
        raise QueueError("remove needs a queue id")
    req_dir = directory / REQUESTS_DIR
    ensure_dir(directory)
    req_dir.mkdir(exist_ok=True, mode=0o700)
    name = f"{time.time_ns():020d}-{secrets.token_hex(4)}"
    body = json.dumps({"action": action, "id": queue_id, "created": time.time()}).encode()
    tmp = req_dir / f".{name}.tmp"
    fd = os.open(tmp, _CREATE, FILE_MODE)
    try:
        _write_fd(fd, body)
    finally:
        os.close(fd)
    final = req_dir / f"{name}.json"
    os.rename(tmp, final)
    fsync_dir(req_dir)
    return final


def read_requests(directory: Path) -> list[Request]:
    """Pending requests, oldest first; malformed ones are logged and deleted."""
    req_dir = directory / REQUESTS_DIR
    requests = []
    for name in sorted(_names(req_dir)):
        if name.startswith(".") or not name.endswith(".json"):
            continue
        path = req_dir / name
        try:
            raw = json.loads(path.read_bytes())
            action = raw["action"]
            qid = raw["id"]
            if action not in ("flush", "remove") or not (qid is None or QUEUE_ID_RE.match(qid)):
                raise ValueError(f"bad request {raw!r}")
            if action == "remove" and qid is None:
                raise ValueError("remove without id")
        except FileNotFoundError:
            continue
        except (ValueError, KeyError, TypeError) as exc:
            log.warning("queue request %s ignored: %s", name, exc)
            path.unlink(missing_ok=True)
            continue
        requests.append(Request(path, action, qid, float(raw.get("created") or 0.0)))
    return requests


def clean_request_tmp(directory: Path, older_than: float = 3600.0) -> None:
    """Remove tmp request files a killed CLI left behind (owner only, at start)."""
    req_dir = directory / REQUESTS_DIR
    now = time.time()
    for name in _names(req_dir):
        if name.startswith(".") and name.endswith(".tmp"):
            path = req_dir / name
            with contextlib.suppress(OSError):
                if now - path.stat().st_mtime > older_than:
                    path.unlink()
