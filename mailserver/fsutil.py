"""Durable file-system primitives shared by every module that promises "on disk".

A rename or a new directory entry survives a crash only once the directory itself is
fsync'd; a replaced file is whole only if it was written to a temporary name, fsync'd,
then renamed over the old one. These two helpers are the one place that does it.
"""

from __future__ import annotations

import contextlib
import errno
import os
import secrets
import sqlite3
from pathlib import Path

from .smtpreply import SMTPReply

# Errors that mean "no room": SMTP answers 452 4.3.1 (RFC 3463: mail system full).
DISK_FULL = frozenset({errno.ENOSPC, errno.EDQUOT})


def with_path(exc: OSError, path: Path | str) -> OSError:
    """Name ``path`` in ``exc`` if it names none (``os.write``/``os.fsync`` on a
    descriptor do not), so the log line says which file failed."""
    if exc.filename is None:
        exc.filename = os.fspath(path)
    return exc


_SQLITE_FULL = 13  # SQLITE_FULL: "database or disk is full"


def is_disk_full(exc: BaseException) -> bool:
    """True for ENOSPC/EDQUOT, and for SQLite's SQLITE_FULL."""
    if isinstance(exc, OSError):
        return exc.errno in DISK_FULL
    if isinstance(exc, sqlite3.Error):
        return (getattr(exc, "sqlite_errorcode", 0) or 0) & 0xFF == _SQLITE_FULL
    return False


def describe_error(exc: BaseException) -> str:
    """``path=... errno=28 (ENOSPC) No space left on device`` for a log line."""
    if isinstance(exc, sqlite3.Error):
        return f"sqlite={getattr(exc, 'sqlite_errorname', '?')} {exc}"
    if not isinstance(exc, OSError):
        return f"error={exc!r}"
    code = errno.errorcode.get(exc.errno, "?") if exc.errno is not None else "?"
    where = exc.filename if exc.filename is not None else "-"
    if exc.filename2 is not None:
        where = f"{where} -> {exc.filename2}"
    return f"path={where} errno={exc.errno} ({code}) {exc.strerror or exc}"


def storage_failure_reply(exc: OSError | sqlite3.Error, what: str) -> SMTPReply:
    """The SMTP answer when the disk refused a write: nothing was accepted, retry later."""
    if is_disk_full(exc):
        return SMTPReply(452, "4.3.1", f"Insufficient system storage: {what}, try again later", "storage")
    return SMTPReply(451, "4.3.0", f"{what} failed, try again later", "storage")


def fsync_dir(path: Path | str) -> None:
    """fsync a directory so entries created, renamed or removed in it survive a crash."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    except OSError as exc:
        with_path(exc, path)
        raise
    finally:
        os.close(fd)


def mkdir_durable(path: Path, mode: int = 0o700) -> None:
    """``mkdir -p`` whose new entries survive a crash: each parent that gained one is fsync'd."""
    missing: list[Path] = []
    p = Path(path)
    while not p.is_dir():
        missing.append(p)
        if p.parent == p:
            break
        p = p.parent
    for d in reversed(missing):
        try:
            os.mkdir(d, mode)
        except FileExistsError:
            if not d.is_dir():
                raise
            continue
        fsync_dir(d.parent)


def write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


def write_file_atomic(path: Path, data: bytes, mode: int = 0o600, *, dir_mode: int = 0o700) -> None:
    """tmp + fsync + rename + directory fsync: the file is either the old or the new one.

    The temporary name is dot-prefixed and unique per call, so concurrent writers never
    share one and a leftover from a crash is never mistaken for the real file.
    """
    path.parent.mkdir(parents=True, exist_ok=True, mode=dir_mode)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, mode)
    try:
        try:
            write_all(fd, data)
            os.fsync(fd)
        except OSError as exc:
            with_path(exc, tmp)
            raise
        finally:
            os.close(fd)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    fsync_dir(path.parent)
