"""Per-account quota: usage kept in the Maildir++ ``maildirsize`` file, as Dovecot does.

The file lives in the account's Maildir root and is the usage truth that Dovecot
(``quota = maildir``) and Courier read and write as well (Maildir++ quota spec,
www.courier-mta.org/imap/README.maildirquota.html):

    1073741824S,1000C          the limits: bytes ("S") and messages ("C"); 0 or absent = none
    123456 12                  the usage when the file was (re)calculated: bytes count
    4096 1                     then one line per change, appended: +bytes +count
    -4096 -1                   ... or -bytes -count for an expunge

Usage is the sum of every line after the first. Appends use ``O_APPEND`` and one
``write()`` of a short line, which the kernel does atomically, so pymaild and Dovecot can
both append without a lock. The file is recalculated (every ``cur/`` and ``new/`` of
INBOX and the ``.folders``, using the ``S=`` size in each file name, ``stat()`` when there
is none) when it is missing, larger than 5120 bytes, older than 15 minutes, unreadable,
or its limits line differs from the account's limits: the same rules as Courier and
Dovecot, so mail another program dropped into the Maildir is counted at the latest 15
minutes later (deleting ``maildirsize`` forces it at once).

Writers: :func:`record_change` appends a line, but only if the file exists (a missing
file is recalculated anyway at the next check, which then counts the change): the
Maildir writer calls it after each delivery, the IMAP index after APPEND, COPY and
EXPUNGE. It never takes a lock, so it is safe under any other lock.

Enforcement: :func:`reserve` is the check before mail enters. It holds an exclusive
``flock`` on ``pymaild-quota.lock`` in the Maildir root for as long as the caller
writes, so two deliveries into one account (threads or pymaild processes) decide one
after the other, each seeing the other's bytes: the limit is never exceeded by pymaild's
own writers. (Dovecot does not take that lock: a Dovecot delivery racing with ours can
overshoot by at most the one message each of them let in.)

Everything here blocks: call it from a worker thread.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

from mailserver.storage.maildirname import name_field, split_name

MAILDIRSIZE = "maildirsize"
LOCK_FILE = "pymaild-quota.lock"
#: Recalculate when the file grows past this (Maildir++ spec).
MAX_FILE_SIZE = 5120
#: ... or when it was last written longer ago than this (seconds).
MAX_AGE = 15 * 60.0
#: Marker in the Maildir root: the warning for this crossing of :data:`WARN_AT` was sent.
WARN_FILE = "pymaild-quota-warned"
#: Fraction of a limit at which the user is told, once per crossing.
WARN_AT = 0.9

_FILE_MODE = 0o600


@dataclass(frozen=True, slots=True)
class Limits:
    """An account's limits: ``storage`` in bytes, ``messages`` a count; 0 = unlimited."""

    storage: int = 0
    messages: int = 0

    @property
    def unlimited(self) -> bool:
        return self.storage == 0 and self.messages == 0

    def line(self) -> str:
        """The first line of ``maildirsize`` for these limits (without the newline)."""
        parts = []
        if self.storage:
            parts.append(f"{self.storage}S")
        if self.messages:
            parts.append(f"{self.messages}C")
        return ",".join(parts)


@dataclass(frozen=True, slots=True)
class Usage:
    """Bytes and messages in use (never negative)."""

    storage: int
    messages: int


class OverQuota(Exception):
    """Mail that would not fit: ``resource`` is "STORAGE" or "MESSAGE"."""

    def __init__(self, resource: str, usage: Usage, limits: Limits) -> None:
        super().__init__(f"mailbox is over its {resource.lower()} quota")
        self.resource = resource
        self.usage = usage
        self.limits = limits


def parse_limits(line: str) -> Limits:
    """The limits of a ``maildirsize`` first line: ``"1000S,10C"``, ``"1000S"``, ``""``.

    Unknown fields are ignored (Courier's spec allows more letters); a malformed number
    counts as no limit for that resource.
    """
    storage = messages = 0
    for field in line.strip().split(","):
        field = field.strip()
        if len(field) < 2 or not field[:-1].isdigit():
            continue
        if field[-1] == "S":
            storage = int(field[:-1])
        elif field[-1] == "C":
            messages = int(field[:-1])
    return Limits(storage, messages)


def parse_maildirsize(text: str) -> tuple[Limits, Usage] | None:
    """``(limits, usage)`` from the file's text, or None if a usage line is malformed or
    the text does not end in a newline (a write in progress or torn): recalculate then."""
    if not text.endswith("\n"):
        return None
    lines = text.split("\n")[:-1]
    if not lines:
        return None
    limits = parse_limits(lines[0])
    total = count = 0
    for line in lines[1:]:
        fields = line.split()
        if len(fields) != 2:
            return None
        try:
            total += int(fields[0])
            count += int(fields[1])
        except ValueError:
            return None
    return limits, Usage(max(total, 0), max(count, 0))


def folder_dirs(root: Path) -> Iterator[Path]:
    """INBOX (``root``) and every Maildir++ folder ``root/.name`` below it."""
    yield root
    with contextlib.suppress(FileNotFoundError), os.scandir(root) as it:
        for entry in it:
            if entry.name.startswith(".") and entry.name not in (".", ".."):
                with contextlib.suppress(OSError):
                    if entry.is_dir(follow_symlinks=False):
                        yield Path(entry.path)


def measure(root: Path) -> Usage:
    """Walk every folder's ``cur/`` and ``new/``: bytes (``S=`` or the file size) and count."""
    total = count = 0
    for folder in folder_dirs(root):
        for sub in ("cur", "new"):
            with contextlib.suppress(FileNotFoundError, NotADirectoryError), \
                    os.scandir(folder / sub) as it:
                for entry in it:
                    if entry.name.startswith("."):
                        continue
                    size = name_field(split_name(entry.name)[0], "S")
                    if size is None:
                        try:
                            size = entry.stat(follow_symlinks=False).st_size
                        except FileNotFoundError:
                            continue  # expunged while we looked
                    total += size
                    count += 1
    return Usage(total, count)


def recalculate(root: Path, limits: Limits) -> Usage:
    """Measure the Maildir and write a fresh ``maildirsize`` (tmp + rename, as Dovecot
    does). Returns the usage. A change recorded while the walk runs may be missed or
    counted twice until the next recalculation, as with Dovecot."""
    usage = measure(root)
    text = f"{limits.line()}\n{usage.storage} {usage.messages}\n".encode()
    tmp = root / f"{MAILDIRSIZE}.{os.getpid()}.{time.monotonic_ns()}.tmp"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, _FILE_MODE)
    try:
        try:
            os.write(fd, text)
        finally:
            os.close(fd)
        os.rename(tmp, root / MAILDIRSIZE)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    return usage


def usage(root: Path, limits: Limits, *, now: float | None = None) -> Usage:
    """The account's usage, from ``maildirsize``; recalculated first when the file is
    missing, stale (older than :data:`MAX_AGE`, larger than :data:`MAX_FILE_SIZE`),
    malformed, or carries other limits than ``limits``."""
    path = root / MAILDIRSIZE
    try:
        st = path.stat()
        fresh = st.st_size <= MAX_FILE_SIZE and (
            (time.time() if now is None else now) - st.st_mtime <= MAX_AGE)
        parsed = parse_maildirsize(path.read_text("ascii", "replace")) if fresh else None
    except FileNotFoundError:
        parsed = None
    if parsed is not None and parsed[0] == limits:
        return parsed[1]
    if not root.is_dir():
        return Usage(0, 0)
    return recalculate(root, limits)


def peek_usage(root: Path) -> Usage:
    """Usage without writing anything: ``maildirsize`` as it is, else a walk. For the
    CLI, which may run as another user than the daemon (a file it created would be
    root's)."""
    try:
        parsed = parse_maildirsize((root / MAILDIRSIZE).read_text("ascii", "replace"))
    except FileNotFoundError:
        parsed = None
    return parsed[1] if parsed is not None else measure(root)


def record_change(root: Path, nbytes: int, count: int) -> None:
    """Append ``nbytes count`` to ``maildirsize`` if it exists (one atomic write).

    Without the file there is nothing to keep up to date: the next :func:`usage`
    measures the Maildir. Failures are swallowed: the file is a cache the next
    recalculation corrects, and the mail itself is already safe.
    """
    if not nbytes and not count:
        return
    try:
        fd = os.open(root / MAILDIRSIZE, os.O_WRONLY | os.O_APPEND | os.O_CLOEXEC)
    except OSError:
        return
    try:
        with contextlib.suppress(OSError):
            os.write(fd, f"{nbytes} {count}\n".encode())
    finally:
        os.close(fd)


def fits(current: Usage, limits: Limits, nbytes: int, count: int) -> str | None:
    """The resource ("STORAGE"/"MESSAGE") that ``nbytes``/``count`` more would exceed."""
    if limits.storage and nbytes > 0 and current.storage + nbytes > limits.storage:
        return "STORAGE"
    if limits.messages and count > 0 and current.messages + count > limits.messages:
        return "MESSAGE"
    return None


@contextlib.contextmanager
def reserve(items: Iterable[tuple[Path, Limits, int, int]]) -> Iterator[None]:
    """Check that each ``(root, limits, bytes, count)`` fits, and hold the accounts'
    quota locks while the caller writes (so concurrent writers decide one at a time).

    Raises :class:`OverQuota` (with the first account that does not fit) before the body
    runs. Accounts without limits are neither locked nor checked. The locks are taken
    in path order, so two multi-account deliveries cannot deadlock.
    """
    wanted: dict[Path, tuple[Limits, int, int]] = {}
    for root, limits, nbytes, count in items:
        if limits.unlimited:
            continue
        _lim, b, c = wanted.get(root, (limits, 0, 0))
        wanted[root] = (limits, b + nbytes, c + count)
    fds: list[int] = []
    try:
        for root in sorted(wanted):
            limits, nbytes, count = wanted[root]
            try:
                fd = os.open(root / LOCK_FILE, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, _FILE_MODE)
            except FileNotFoundError:
                continue  # no Maildir yet: empty, and the writer creates it
            fds.append(fd)
            fcntl.flock(fd, fcntl.LOCK_EX)
            current = usage(root, limits)
            over = fits(current, limits, nbytes, count)
            if over is not None:
                raise OverQuota(over, current, limits)
        yield
    finally:
        for fd in fds:
            os.close(fd)  # releases the flock


def full(root: Path, limits: Limits) -> str | None:
    """The resource already at or over its limit (nothing more fits), or None: the
    check at SMTP RCPT, before the message size is known."""
    if limits.unlimited:
        return None
    current = usage(root, limits)
    if limits.storage and current.storage >= limits.storage:
        return "STORAGE"
    if limits.messages and current.messages >= limits.messages:
        return "MESSAGE"
    return None


def warning_due(root: Path, limits: Limits, compose: Callable[[Usage], bytes]) -> bytes | None:
    """The warning to deliver (``compose(usage)``) if the account has reached
    :data:`WARN_AT` of a limit and has not been warned since it was last below, and the
    warning itself fits; else None. Below the mark the marker file is removed, so the next
    crossing warns again. Call it under :func:`reserve`; the marker is claimed with
    ``O_EXCL``, so the warning goes out once even with writers outside the lock."""
    if limits.unlimited:
        return None
    current = usage(root, limits)
    high = (limits.storage and current.storage >= WARN_AT * limits.storage) or (
        limits.messages and current.messages >= WARN_AT * limits.messages)
    marker = root / WARN_FILE
    if not high:
        with contextlib.suppress(FileNotFoundError):
            marker.unlink()
        return None
    if marker.exists():
        return None
    notice = compose(current)
    if fits(current, limits, len(notice), 1) is not None:
        return None  # no room even for the notice: the next refusal (452) tells the sender
    try:
        os.close(os.open(marker, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, _FILE_MODE))
    except FileExistsError:
        return None
    return notice


def maildir_root(folder_dir: Path) -> Path:
    """The account's Maildir root of a folder directory (INBOX is the root itself)."""
    return folder_dir.parent if folder_dir.name.startswith(".") else folder_dir
