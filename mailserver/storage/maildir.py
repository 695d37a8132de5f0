"""Durable delivery of one message into one or more Maildirs.

The protocol (cr.yp.to/proto/maildir.html): write the whole message to ``tmp/<name>``,
fsync it, rename it to ``new/<name>``, fsync ``new/``. Only when that has returned is
the message on disk for good, and only then may SMTP answer 250. The stdlib
``mailbox.Maildir.add()`` skips both fsyncs, which is why this module exists.

File names follow the Maildir spec with Dovecot's fields:
``<secs>.M<usecs>P<pid>Q<counter>R<random hex>.<host>,S=<size>`` where ``S=`` is the
exact file size, so the IMAP layer knows RFC822.SIZE without a stat(). The bytes are
stored exactly as given (CRLF line endings as SMTP delivers them; Dovecot reads both).

:func:`copy_durably` is the same durable write for IMAP COPY between file systems.

Everything here is synchronous and blocking: the daemon calls it through
``asyncio.to_thread`` (see :meth:`MaildirWriter.deliver_async`). A writer is
thread-safe; one instance per process is enough.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import itertools
import os
import secrets
import shutil
import socket
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path

from mailserver.fsutil import fsync_dir, with_path
from mailserver.storage import quota
from mailserver.storage.groupsync import DirectorySync
from mailserver.storage.maildirpp import (
    FILE_MODE,
    ensure_maildir,
    folder_path,
)

Chunk = bytes | bytearray | memoryview

try:
    _IOV_MAX = max(16, os.sysconf("SC_IOV_MAX"))
except (ValueError, OSError):  # pragma: no cover - every Linux has it
    _IOV_MAX = 1024

_OPEN_FLAGS = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC | os.O_NOFOLLOW


def maildir_hostname(name: str | None = None) -> str:
    """The host part of Maildir file names, escaped as Dovecot does.

    ``/`` and ``:`` cannot appear in a name (path separator, info separator); ``,``
    would be mistaken for the start of the ``,S=`` field.
    """
    host = name if name is not None else socket.gethostname()
    return host.replace("/", r"\057").replace(":", r"\072").replace(",", r"\054") or "localhost"


def size_from_name(name: str) -> int | None:
    """The ``S=`` size recorded in a Maildir file name, or None if it has none."""
    base = name.split(":", 1)[0]
    for field in base.split(",")[1:]:
        if field.startswith("S=") and field[2:].isdigit():
            return int(field[2:])
    return None


class MaildirWriter:
    """Writes messages into Maildirs durably.

    ``fsync=False`` skips every fsync (file and directories): only for benchmarks and
    throwaway test setups, never for a server that promises 250.
    """

    def __init__(self, *, fsync: bool = True, hostname: str | None = None) -> None:
        self.fsync = fsync
        self.hostname = maildir_hostname(hostname)
        self._counter = itertools.count(1)
        # Looked up at call time, so tests can inject failures into fsync_dir.
        self._dir_sync = DirectorySync(lambda path: fsync_dir(path))
        self._lock = threading.Lock()
        # Called on the event loop with the folder directories after each async delivery
        # (the IMAP hub: IDLEing clients hear of new mail at once).
        self.listeners: list[Callable[[list[Path]], None]] = []

    def unique_name(self, size: int) -> str:
        """A fresh file name for a message of ``size`` bytes (without ``:2,`` flags)."""
        with self._lock:
            n = next(self._counter)
        usecs_total = time.time_ns() // 1000
        secs, usecs = divmod(usecs_total, 1_000_000)
        rand = secrets.token_hex(8)
        return f"{secs}.M{usecs}P{os.getpid()}Q{n}R{rand}.{self.hostname},S={size}"

    def deliver(self, maildir_root: Path, folder: str | None, chunks: Sequence[Chunk]) -> Path:
        """Deliver the concatenation of ``chunks`` into ``folder`` of ``maildir_root``.

        ``folder`` is None/"INBOX" for the inbox or a folder name (see
        :func:`~mailserver.storage.maildirpp.folder_path`). Missing Maildir directories
        are created. Returns the final path in ``new/`` once the file and the directory
        entry are on stable storage. On any error no file is left behind (neither in
        ``tmp/`` nor in ``new/``) and the exception propagates.
        """
        return self.deliver_batch([(maildir_root, folder, chunks)])[0]

    def deliver_many(
        self, targets: Sequence[tuple[Path, str | None]], chunks: Sequence[Chunk]
    ) -> list[Path]:
        """Deliver one message to several ``(maildir_root, folder)`` targets, all or none.

        Returns the final paths in the order of ``targets``; a target listed twice gets
        one copy and the same path twice. See :meth:`deliver_batch` for the phasing and
        the all-or-nothing rule.
        """
        dirs: dict[Path, tuple[Path, str | None]] = {}
        for root, folder in targets:
            dirs.setdefault(folder_path(Path(root), folder), (Path(root), folder))
        paths = self.deliver_batch([(root, folder, chunks) for root, folder in dirs.values()])
        by_dir = dict(zip(dirs, paths, strict=True))
        return [by_dir[folder_path(Path(root), folder)] for root, folder in targets]

    def deliver_batch(
        self, items: Sequence[tuple[Path, str | None, Sequence[Chunk]]]
    ) -> list[Path]:
        """Deliver several messages, ``(maildir_root, folder, chunks)`` each, all or none.

        Meant for one SMTP transaction whose copies differ slightly (e.g. each with its
        own Delivered-To header). Returns the final paths in the order of ``items``.
        The work is done in phases - write and fsync every copy, then rename every
        copy, then fsync every ``new/`` directory once - which saves about a sixth of
        the time against one :meth:`deliver` per copy.

        If anything fails, every copy already written or renamed is removed (best
        effort) and the exception propagates: the caller answers 4xx and the sender
        retries the whole message, so no recipient gets it twice and none loses it.
        """
        # Validate every folder name before touching the disk.
        planned = [
            (Path(root), folder_path(Path(root), folder), chunks) for root, folder, chunks in items
        ]
        staged: list[tuple[Path, Path]] = []  # (tmp path, final path)
        placed: list[Path] = []
        try:
            for root, d, chunks in planned:
                staged.append(self._write_tmp(root, d, chunks))
            for tmp, final in staged:
                os.rename(tmp, final)
                placed.append(final)
            if self.fsync:
                # Shared with concurrent deliveries into the same folders (group commit).
                for new_dir in dict.fromkeys(final.parent for _tmp, final in staged):
                    self._dir_sync.sync(new_dir)
        except BaseException:
            for tmp, _final in staged:
                with contextlib.suppress(OSError):
                    os.unlink(tmp)
            for final in placed:
                with contextlib.suppress(OSError):
                    os.unlink(final)
            raise
        # Keep Maildir++ usage (maildirsize) current: one line per copy delivered.
        for (root, _d, _chunks), (_tmp, final) in zip(planned, staged, strict=True):
            quota.record_change(root, size_from_name(final.name) or 0, 1)
        return [final for _tmp, final in staged]

    async def deliver_async(
        self, maildir_root: Path, folder: str | None, chunks: Sequence[Chunk]
    ) -> Path:
        """:meth:`deliver` in a worker thread, so the event loop keeps running.

        If the awaiting task is cancelled the thread still finishes the delivery (a
        half-done rename cannot be stopped safely); the sender then retries and the
        message may arrive twice, which is the right side to err on.
        """
        path = await asyncio.to_thread(self.deliver, maildir_root, folder, chunks)
        self.announce([path])
        return path

    async def deliver_many_async(
        self, targets: Sequence[tuple[Path, str | None]], chunks: Sequence[Chunk]
    ) -> list[Path]:
        """:meth:`deliver_many` in a worker thread."""
        paths = await asyncio.to_thread(self.deliver_many, targets, chunks)
        self.announce(paths)
        return paths

    async def deliver_batch_async(
        self, items: Sequence[tuple[Path, str | None, Sequence[Chunk]]]
    ) -> list[Path]:
        """:meth:`deliver_batch` in a worker thread."""
        paths = await asyncio.to_thread(self.deliver_batch, items)
        self.announce(paths)
        return paths

    def announce(self, paths: Sequence[Path]) -> None:
        """Tell ``listeners`` (on the event loop) about files a delivery placed: the
        ``*_async`` methods do it; a caller running :meth:`deliver_batch` in a thread of
        its own choosing calls this when the thread has returned."""
        if self.listeners:
            folders = list(dict.fromkeys(p.parent.parent for p in paths))  # <folder>/new/<file>
            for listener in self.listeners:
                listener(folders)

    # ------------------------------------------------------------------ internals

    def _write_tmp(
        self, root: Path, folder_dir: Path, chunks: Sequence[Chunk]
    ) -> tuple[Path, Path]:
        """Write one copy to ``tmp/`` and fsync it; return (tmp path, final path)."""
        views = [v for v in (memoryview(c).cast("B") for c in chunks) if v.nbytes]
        size = sum(v.nbytes for v in views)
        for attempt in range(3):
            name = self.unique_name(size)
            tmp = folder_dir / "tmp" / name
            try:
                fd = os.open(tmp, _OPEN_FLAGS, FILE_MODE)
            except FileNotFoundError:
                if attempt:
                    raise
                # First mail to a mailbox nobody created yet (e.g. postmaster before any
                # account exists), or a folder removed behind our back: create it.
                ensure_maildir(root, durable=self.fsync)
                if folder_dir != root:
                    ensure_maildir(folder_dir, is_folder=True, durable=self.fsync)
                continue
            except FileExistsError:
                continue  # a name collision should be impossible; take a new name
            try:
                try:
                    _write_all(fd, views)
                    if self.fsync:
                        os.fsync(fd)
                except OSError as exc:
                    with_path(exc, tmp)
                    raise
                finally:
                    os.close(fd)
            except BaseException:
                with contextlib.suppress(OSError):
                    os.unlink(tmp)
                raise
            return tmp, folder_dir / "new" / name
        raise FileExistsError(errno.EEXIST, "could not find a free Maildir file name", str(tmp))


def _write_all(fd: int, views: list[memoryview]) -> None:
    """Write every byte of ``views`` to ``fd``, coping with short writes."""
    pending = list(views)
    i = 0
    while i < len(pending):
        written = os.writev(fd, pending[i : i + _IOV_MAX])
        if written <= 0:
            raise OSError(errno.EIO, "write made no progress")
        while written:
            head = pending[i]
            if written >= head.nbytes:
                written -= head.nbytes
                i += 1
            else:
                pending[i] = head[written:]
                written = 0


def copy_durably(src: Path, dst: Path, mtime: float) -> None:
    """Copy ``src`` to the new file ``dst`` (into a folder's ``tmp/``) and fsync it, with
    ``mtime`` as its mtime (the internal date): COPY where a hard link is impossible."""
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

