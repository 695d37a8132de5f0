"""Maildir++ layout: create a mailbox tree and map folder names to directories.

The layout is the one Dovecot (``mail_location = maildir:...``) and Courier use, so a
mailbox written by pymaild can be read by Dovecot, mbsync and mutt and vice versa:

    <root>/cur new tmp              INBOX
    <root>/.Sent/cur new tmp        a subfolder, plus an empty ``maildirfolder`` marker
    <root>/.a.b/                    the nested folder "a/b" (Maildir++ flattens with ".")
    <root>/subscriptions            subscribed folder names, one per line

Folder names are taken as given (the IMAP layer decides their encoding, e.g. modified
UTF-7 as Dovecot stores them by default); this module only guarantees that no name can
escape the root.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterable
from pathlib import Path

from mailserver.fsutil import fsync_dir  # re-exported: callers import it from here

# Special-use folders every new mailbox gets (RFC 6154 names, as Thunderbird expects).
DEFAULT_FOLDERS: tuple[str, ...] = ("Sent", "Drafts", "Trash", "Junk", "Archive")

MAILDIR_SUBDIRS: tuple[str, ...] = ("cur", "new", "tmp")
FOLDER_MARKER = "maildirfolder"
SUBSCRIPTIONS_FILE = "subscriptions"

DIR_MODE = 0o700
FILE_MODE = 0o600

# A directory entry is at most 255 bytes; keep room for Dovecot's own suffixes.
_MAX_FOLDER_BYTES = 200


def folder_path(root: Path, folder: str | None) -> Path:
    """Directory of ``folder`` inside the Maildir++ mailbox at ``root``.

    ``None`` or ``"INBOX"`` (any case) is the root itself; ``"Junk"`` is ``root/.Junk``;
    nested names ``"a/b"`` and ``"a.b"`` both map to ``root/.a.b``. Raises ValueError for
    names that are empty, contain NUL or other control characters, ``..`` or empty
    hierarchy levels, start with a dot, start or end with ``/`` or ``.``, or are too long:
    the result is always a direct child of ``root``.
    """
    if folder is None or folder.upper() == "INBOX":
        return root
    return root / ("." + _flatten(folder))


def _flatten(folder: str) -> str:
    if not folder:
        raise ValueError("empty folder name")
    if any(ord(c) < 0x20 or ord(c) == 0x7F for c in folder):
        raise ValueError(f"folder name {folder!r} contains control characters")
    if folder.startswith((".", "/")) or folder.endswith((".", "/")):
        raise ValueError(f"folder name {folder!r} must not start or end with '.' or '/'")
    flat = folder.replace("/", ".")
    # ".." would be an empty hierarchy level; in a path it could also mean "parent".
    if ".." in flat:
        raise ValueError(f"folder name {folder!r} has an empty hierarchy level or '..'")
    if len(flat.encode("utf-8", "surrogateescape")) > _MAX_FOLDER_BYTES:
        raise ValueError(f"folder name {folder!r} is too long")
    return flat


def make_dirs(path: Path, *, durable: bool = True) -> bool:
    """Create ``path`` and missing parents with mode 0700, like ``mkdir -p``.

    With ``durable``, each parent that gained an entry is fsynced, so the new directory
    survives a crash (a file fsynced inside an unsynced new directory can be lost).
    Returns True if anything was created. Existing directories are left as they are.
    """
    missing: list[Path] = []
    p = path
    while not p.is_dir():
        missing.append(p)
        if p.parent == p:
            break
        p = p.parent
    created = False
    for d in reversed(missing):
        try:
            os.mkdir(d, DIR_MODE)
        except FileExistsError:
            if not d.is_dir():
                raise
            continue  # another thread or process made it first: fine
        created = True
        if durable:
            fsync_dir(d.parent)
    return created


def ensure_maildir(path: Path, *, is_folder: bool = False, durable: bool = True) -> bool:
    """Make ``path`` a Maildir (cur/ new/ tmp/); with ``is_folder`` add the marker file.

    Idempotent and additive: it never removes or truncates anything. Returns True if
    anything was created.
    """
    created = make_dirs(path, durable=durable)
    for sub in MAILDIR_SUBDIRS:
        created |= make_dirs(path / sub, durable=durable)
    if is_folder:
        marker = path / FOLDER_MARKER
        if not marker.exists():
            with contextlib.suppress(FileExistsError):
                fd = os.open(marker, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, FILE_MODE)
                os.close(fd)
                created = True
                if durable:
                    fsync_dir(path)
    return created


def create_maildirpp(
    root: Path, folders: Iterable[str] = DEFAULT_FOLDERS, *, durable: bool = True
) -> None:
    """Create the Maildir++ mailbox at ``root`` with INBOX and the given subfolders.

    Also writes ``subscriptions`` (one folder name per line, the format Dovecot and
    Courier read) if it does not exist yet: an existing file is the user's choice and is
    never rewritten. Safe to run again on a mailbox full of mail.
    """
    folders = list(folders)
    ensure_maildir(root, durable=durable)
    for name in folders:
        ensure_maildir(folder_path(root, name), is_folder=True, durable=durable)
    subs = root / SUBSCRIPTIONS_FILE
    if not subs.exists():
        _write_new_file(subs, "".join(f"{name}\n" for name in folders).encode(), durable)


def _write_new_file(path: Path, data: bytes, durable: bool) -> None:
    """Write ``path`` atomically (tmp + link) unless it already exists."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, FILE_MODE)
    try:
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view) :]
            if durable:
                os.fsync(fd)
        finally:
            os.close(fd)
        # link() rather than rename(): if someone created the file meanwhile, keep theirs.
        with contextlib.suppress(FileExistsError):
            os.link(tmp, path)
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
    if durable:
        fsync_dir(path.parent)
