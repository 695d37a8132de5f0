"""Durable file-system primitives shared by every module that promises "on disk".

A rename or a new directory entry survives a crash only once the directory itself is
fsync'd; a replaced file is whole only if it was written to a temporary name, fsync'd,
then renamed over the old one. These two helpers are the one place that does it.
"""

from __future__ import annotations

import contextlib
import os
import secrets
from pathlib import Path


def fsync_dir(path: Path | str) -> None:
    """fsync a directory so entries created, renamed or removed in it survive a crash."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
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
        finally:
            os.close(fd)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    fsync_dir(path.parent)
