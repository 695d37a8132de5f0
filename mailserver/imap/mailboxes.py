"""One account's mailbox tree as IMAP sees it: names, LIST, CREATE/DELETE/RENAME, subscriptions.

IMAP names use ``.`` as the hierarchy delimiter, as Dovecot's Maildir++ layout does, so a
name maps to a directory one to one: ``Archive.2024`` is ``<root>/.Archive.2024``. Names
are kept exactly as on the wire (modified UTF-7, which is also how Dovecot stores them), so
a store is shared with Dovecot, mbsync and mutt unchanged. Everything here blocks (file
system); the session calls it from a worker thread.
"""

from __future__ import annotations

import builtins
import contextlib
import os
import secrets
import shutil
from pathlib import Path
from typing import TYPE_CHECKING

from mailserver.fsutil import fsync_dir, write_file_atomic
from mailserver.storage import quota
from mailserver.storage.api import MailboxError as MailboxError
from mailserver.storage.api import MailboxInfo as MailboxInfo
from mailserver.storage.index import MailboxIndex
from mailserver.storage.maildirpp import (
    DEFAULT_FOLDERS,
    SUBSCRIPTIONS_FILE,
    ensure_maildir,
    folder_path,
)

from .errors import MailboxNameError
from .utf7 import decode_mailbox_name

DELIMITER = "."
SPECIAL_USE = {name: "\\" + name for name in DEFAULT_FOLDERS}  # "Sent" -> "\Sent", ...
# The uses CREATE (USE (...)) can give (RFC 6154 2, 3): \All and \Flagged would be
# virtual folders, which this store does not have.
CREATABLE_USES = {use.upper(): use for use in SPECIAL_USE.values()}
# Folders given a special use by CREATE: "<attribute> TAB <name>" lines in the account
# root (no leading dot, so never a folder). A recorded use is the folder's, and the
# default folder of that name (Sent for \Sent) then has none.
SPECIAL_USE_FILE = "pymaild-special-use"
MAX_NAME_BYTES = 200
MAX_DEPTH = 16
_TRASH_PREFIX = "..deleted-"  # names starting ".." are never listed (not a valid folder)


def check_name(name: str) -> str:
    """Validate a client-supplied mailbox name; returns it (``INBOX`` in canonical case).

    Refuses what could escape the account's Maildir or that another Maildir program could
    not read back: ``/``, NUL and control characters, empty levels or ``..``, a leading or
    trailing delimiter, invalid modified UTF-7, wildcards, overlong or too deep names.
    """
    if name.upper() == "INBOX":
        return "INBOX"
    if not name:
        raise MailboxError("empty mailbox name", "CANNOT")
    if "/" in name or "\\" in name:
        raise MailboxError(f"mailbox names use {DELIMITER!r} as hierarchy delimiter; '/' is not allowed",
                           "CANNOT")
    if any(ord(c) < 0x20 or ord(c) == 0x7F for c in name):
        raise MailboxError("mailbox name contains control characters", "CANNOT")
    if "*" in name or "%" in name:
        raise MailboxError("mailbox names cannot contain * or %", "CANNOT")
    if name.startswith(DELIMITER) or name.endswith(DELIMITER) or DELIMITER * 2 in name:
        raise MailboxError("mailbox name has an empty hierarchy level", "CANNOT")
    if len(name.encode("utf-8")) > MAX_NAME_BYTES or name.count(DELIMITER) >= MAX_DEPTH:
        raise MailboxError("mailbox name is too long", "CANNOT")
    try:
        decode_mailbox_name(name)
    except MailboxNameError as exc:
        raise MailboxError(f"invalid mailbox name: {exc}", "CANNOT") from None
    if name.upper().startswith("INBOX" + DELIMITER):
        name = "INBOX" + name[5:]  # INBOX.x: children of INBOX, canonical prefix
    return name


def _glob_match(pattern: str, name: str) -> bool:
    """LIST pattern: ``*`` matches anything, ``%`` anything but the delimiter.

    A set of pattern positions is carried along the name (a Thompson NFA), so the cost is
    at most len(name) x len(pattern) whatever the wildcards. The regex this replaced
    backtracked: ``*a*a*a*a*a*a*a*a*b`` against a 60-character name took 30 s of CPU.
    """
    p: list[str] = []
    for ch in pattern:  # runs of wildcards are one wildcard ("*" if any is "*")
        if ch in "*%" and p and p[-1] in "*%":
            if ch == "*":
                p[-1] = "*"
            continue
        p.append(ch)
    if len(p) - p.count("*") - p.count("%") > len(name):
        return False  # more literal characters than the name has: also bounds len(p)
    m = len(p)

    def closure(states: set[int]) -> set[int]:
        out: set[int] = set()
        for i in states:
            out.add(i)
            if i < m and p[i] in "*%":  # a wildcard may match nothing
                out.add(i + 1)
        return out

    states = closure({0})
    for ch in name:
        following: set[int] = set()
        for i in states:
            if i == m:
                continue
            c = p[i]
            if c == "*" or (c == "%" and ch != DELIMITER):
                following.add(i)
            elif c == ch:
                following.add(i + 1)
        if not following:
            return False
        states = closure(following)
    return m in states


def pattern_matches(reference: str, pattern: str, name: str) -> bool:
    full = pattern if pattern.upper().startswith("INBOX") and not reference else reference + pattern
    if full.upper() == "INBOX" or full.upper().startswith("INBOX" + DELIMITER):
        full = "INBOX" + full[5:]
    return _glob_match(full, name)


class MailboxTree:
    """The Maildir++ mailbox of one account at ``root``: the Maildir implementation of
    :class:`mailserver.storage.api.MailboxStore` (its views are
    :class:`~mailserver.storage.index.MailboxIndex`). ``hostname``: this server's name,
    for the file names of messages stored through its views."""

    # [imap] max_folders (the daemon sets it): mailboxes per account, and subscriptions
    # (which may name mailboxes that do not exist) as many again. Each folder is a
    # directory, an index and a place every LIST and NOTIFY-style poll walks.
    max_folders = 1000

    def __init__(self, root: Path, hostname: str | None = None) -> None:
        self.root = Path(root)
        self.hostname = hostname

    # ---------------------------------------------------------------- lookups

    def path(self, name: str) -> Path:
        name = check_name(name)
        try:
            return folder_path(self.root, None if name == "INBOX" else name)
        except ValueError as exc:
            raise MailboxError(str(exc), "CANNOT") from None

    def exists(self, name: str) -> bool:
        return (self.path(name) / "cur").is_dir()

    def open(self, name: str, *, read_only: bool) -> MailboxIndex:
        """A view of the folder (not yet synced: :meth:`MailboxIndex.sync` is SELECT)."""
        return MailboxIndex(self.path(name), read_only=read_only, hostname=self.hostname)

    def names(self) -> list[str]:
        """Every selectable mailbox, INBOX first, then by name."""
        found = []
        with contextlib.suppress(FileNotFoundError):
            for entry in os.scandir(self.root):
                n = entry.name
                if len(n) < 2 or not n.startswith(".") or n.startswith(".."):
                    continue
                if not entry.is_dir(follow_symlinks=False):
                    continue
                name = n[1:]
                try:
                    if check_name(name) != name:
                        continue
                except MailboxError:
                    continue  # something another program made that we cannot name safely
                if os.path.isdir(os.path.join(entry.path, "cur")):
                    found.append(name)
        return ["INBOX", *sorted(found)]

    def subscriptions(self) -> list[str]:
        try:
            text = (self.root / SUBSCRIPTIONS_FILE).read_text("utf-8", errors="replace")
        except FileNotFoundError:
            return []
        out = []
        for line in text.splitlines():
            line = line.strip()
            # Dovecot 2.3's format starts with "V\t2" and separates hierarchy levels with
            # a tab ("Lists\tpython"): read as our delimiter, so a migrated file just works.
            if not line or line.startswith("V\t"):
                continue
            out.append(DELIMITER.join(line.split("\t")))
        return list(dict.fromkeys(out))

    def list(self) -> list[MailboxInfo]:
        """Every mailbox plus the parents missing from disk (as \\Noselect), sorted."""
        names = self.names()
        selectable = set(names)
        subscribed = set(self.subscriptions())
        everything = set(names)
        for name in names:
            parts = name.split(DELIMITER)
            for i in range(1, len(parts)):
                everything.add(DELIMITER.join(parts[:i]))
        children = {n.rsplit(DELIMITER, 1)[0] for n in everything if DELIMITER in n}
        uses = self._special_uses(selectable)
        out = []
        for name in sorted(everything, key=lambda n: (n != "INBOX", n)):
            attrs = ["\\HasChildren" if name in children else "\\HasNoChildren"]
            if name not in selectable:
                attrs.insert(0, "\\Noselect")
                attrs.insert(0, "\\NonExistent")
            use = uses.get(name)
            if use is not None:
                attrs.append(use)
            out.append(MailboxInfo(name, tuple(attrs), name in subscribed, name in selectable))
        return out

    def _recorded_uses(self) -> dict[str, str]:
        """Folder name -> special use given by CREATE (whether the folder exists or not)."""
        try:
            text = (self.root / SPECIAL_USE_FILE).read_text("utf-8", errors="replace")
        except FileNotFoundError:
            return {}
        out: dict[str, str] = {}
        for line in text.splitlines():
            use, sep, name = line.partition("\t")
            canonical = CREATABLE_USES.get(use.upper())
            if sep and canonical is not None and name:
                out[name] = canonical
        return out

    def _special_uses(self, existing: set[str]) -> dict[str, str]:
        """Folder name -> its special-use attribute, for the folders in ``existing``: those
        CREATE recorded, then the default folders by name for the uses nobody holds."""
        uses = {n: u for n, u in self._recorded_uses().items() if n in existing}
        held = set(uses.values())
        for name, use in SPECIAL_USE.items():
            if name in existing and use not in held and name not in uses:
                uses[name] = use
        return uses

    def _set_uses(self, uses: dict[str, str]) -> None:
        write_file_atomic(self.root / SPECIAL_USE_FILE,
                          "".join(f"{u}\t{n}\n" for n, u in sorted(uses.items())).encode())

    # ---------------------------------------------------------------- changes

    def create(self, name: str, *, use: str | None = None) -> None:
        if len(name) > 1 and name.endswith(DELIMITER):
            # RFC 3501 6.3.3: a trailing delimiter only declares that children will
            # follow; the mailbox created is the name without it (as Dovecot does).
            name = name[:-1]
        name = check_name(name)
        if name == "INBOX":
            raise MailboxError("INBOX always exists", "ALREADYEXISTS")
        if self.exists(name):
            raise MailboxError("mailbox already exists", "ALREADYEXISTS")
        recorded: dict[str, str] = {}
        if use is not None:
            # RFC 6154 3: refused with USEATTR, and nothing created, when the use cannot be
            # given: one this store has no folders for, or one another folder holds.
            canonical = CREATABLE_USES.get(use.upper())
            if canonical is None:
                raise MailboxError(f"special use {use[:30]} cannot be given to a folder here "
                                   f"(only {' '.join(SPECIAL_USE.values())})", "USEATTR")
            folders = set(self.names())
            holder = next((n for n, u in self._special_uses(folders).items() if u == canonical), None)
            if holder is not None:
                raise MailboxError(f"{holder} already has the special use {canonical}", "USEATTR")
            use = canonical
            # Stale lines (a folder deleted by another program) go; a use never outlives
            # its folder's name being given again.
            recorded = {n: u for n, u in self._recorded_uses().items() if n in folders}
        # Parents are created too, so every level is selectable (RFC 3501 6.3.3).
        parts = name.split(DELIMITER)
        existing = self.names()
        known = set(existing)
        adding = sum(1 for i in range(1, len(parts) + 1) if DELIMITER.join(parts[:i]) not in known)
        if len(existing) - 1 + adding > self.max_folders:  # INBOX does not count
            raise MailboxError(f"too many mailboxes (at most {self.max_folders})", "LIMIT")
        for i in range(1, len(parts) + 1):
            level = DELIMITER.join(parts[:i])
            if level.upper() == "INBOX":
                continue
            ensure_maildir(self.path(level), is_folder=True)
        if use is not None:
            try:
                self._set_uses({**recorded, name: use})
            except BaseException:
                # The folder without its use is not what CREATE asked for (RFC 6154 3).
                shutil.rmtree(self.path(name), ignore_errors=True)
                raise

    def delete(self, name: str) -> None:
        name = check_name(name)
        if name == "INBOX":
            raise MailboxError("INBOX cannot be deleted", "CANNOT")
        path = self.path(name)
        if not (path / "cur").is_dir():
            raise MailboxError("no such mailbox", "NONEXISTENT")
        prefix = name + DELIMITER
        if any(n.startswith(prefix) for n in self.names()):
            # Dovecot's rule: keeps RFC 3501's \Noselect-parent state out of the store.
            raise MailboxError("mailbox has children, delete them first", "INUSE")
        # Rename away first (atomic: the folder is gone for every reader at once), then
        # remove the files at leisure.
        trash = self.root / f"{_TRASH_PREFIX}{secrets.token_hex(6)}"
        os.rename(path, trash)
        fsync_dir(self.root)
        # Its messages leave the account's quota usage (maildirsize), as an EXPUNGE would.
        freed = quota.measure(trash)
        shutil.rmtree(trash, ignore_errors=True)
        recorded = self._recorded_uses()
        if name in recorded:  # a folder made later under this name does not inherit it
            del recorded[name]
            self._set_uses(recorded)
        quota.record_change(self.root, -freed.storage, -freed.messages)
        # The subscription stays (RFC 3501 6.3.4, RFC 9051 6.3.4; Dovecot): LSUB shows it as
        # \Noselect and LIST (SUBSCRIBED) as \NonExistent until the client unsubscribes.

    def rename(self, old: str, new: str) -> None:
        old, new = check_name(old), check_name(new)
        if new == "INBOX":
            raise MailboxError("cannot rename to INBOX", "ALREADYEXISTS")
        if self.exists(new):
            raise MailboxError("target mailbox already exists", "ALREADYEXISTS")
        if new.startswith(old + DELIMITER):
            raise MailboxError("cannot rename a mailbox into itself", "CANNOT")
        if old == "INBOX":
            self._rename_inbox(new)
            return
        if not self.exists(old):
            raise MailboxError("no such mailbox", "NONEXISTENT")
        parent = new.rsplit(DELIMITER, 1)[0] if DELIMITER in new else None
        if parent and not self.exists(parent) and parent != "INBOX":
            self.create(parent)
        moves = [(n, new + n[len(old):]) for n in self.names() if n == old or n.startswith(old + DELIMITER)]
        for src, dst in moves:
            os.rename(self.path(src), self.path(dst))
        fsync_dir(self.root)
        renamed = {src: dst for src, dst in moves}
        self._set_subscriptions([renamed.get(s, s) for s in self.subscriptions()])
        recorded = self._recorded_uses()
        if any(n in renamed for n in recorded):  # a given use moves with its folder
            self._set_uses({renamed.get(n, n): u for n, u in recorded.items()})

    def _rename_inbox(self, new: str) -> None:
        """RFC 3501 6.3.5: move every INBOX message to a new mailbox; INBOX stays, empty."""
        self.create(new)
        target = self.path(new)
        moved = False
        for sub in ("cur", "new"):
            src_dir = self.root / sub
            with contextlib.suppress(FileNotFoundError):
                for entry in os.scandir(src_dir):
                    if entry.is_file():
                        os.rename(entry.path, target / "cur" / _cur_name(entry.name, sub))
                        moved = True
        if moved:
            fsync_dir(target / "cur")
            fsync_dir(self.root / "cur")
            fsync_dir(self.root / "new")

    def subscribe(self, name: str) -> None:
        name = check_name(name)
        subs = self.subscriptions()
        if name not in subs:
            if len(subs) >= self.max_folders:
                raise MailboxError(f"too many subscriptions (at most {self.max_folders})", "LIMIT")
            self._set_subscriptions([*subs, name])

    def unsubscribe(self, name: str) -> None:
        name = check_name(name)
        subs = self.subscriptions()
        if name not in subs:
            raise MailboxError("not subscribed", "NONEXISTENT")
        self._set_subscriptions([s for s in subs if s != name])

    def _set_subscriptions(self, names: builtins.list[str]) -> None:  # (self.list shadows it)
        write_file_atomic(self.root / SUBSCRIPTIONS_FILE, "".join(f"{n}\n" for n in names).encode())


def _cur_name(name: str, sub: str) -> str:
    return name if sub == "cur" or ":2," in name else name + ":2,"


if TYPE_CHECKING:
    # mypy checks that the Maildir++ tree still offers the storage interface.
    from mailserver.storage.api import MailboxStore

    _conforms: type[MailboxStore] = MailboxTree
