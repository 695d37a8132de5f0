"""UIDVALIDITY for a new folder index: above every value the folder name had before.

RFC 3501 2.3.1.1: a client that sees the same UIDVALIDITY trusts the UIDs it cached, so a
folder name must never get one twice - not after DELETE and CREATE in the same second,
not after its index was lost, and not after a migration from Dovecot, whose values the
client may have seen. A new index (``IndexRefresh._create`` in :mod:`.indexrefresh`) asks
:func:`next_uidvalidity` (the account-wide counter) for a value at least the current time
and above :func:`dovecot_uidvalidity`.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
from pathlib import Path

from mailserver.fsutil import fsync_dir
from mailserver.storage.maildirpp import FILE_MODE

# In the account's Maildir++ root: the last UIDVALIDITY given to any folder of the account.
# It survives DELETE and RENAME of a folder, so a name never gets a UIDVALIDITY twice
# (a folder's own lock file goes with the folder).
UIDVALIDITY_FILE = "pymaild-uidvalidity"


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


def dovecot_uidvalidity(folder: Path) -> int:
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
