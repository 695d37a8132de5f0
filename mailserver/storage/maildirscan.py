"""Reading a folder's ``new/`` and ``cur/`` and reconciling the index with what is there.

The files are the truth for existence and flags, in the format Dovecot, mutt and mbsync
use: :meth:`MaildirSync._sync_disk` (the disk half of ``MailboxIndex.sync``) compares the
directories with the mirror and records what other programs did: new files get UIDs in
delivery order, files gone are logged as expunged, renamed files (flags changed by another
program) get a new modseq; a read-write view moves files from ``new/`` to ``cur/``.
An idle folder costs two ``stat()`` calls instead of a readdir
(:meth:`MaildirSync._dirs_unchanged`). :func:`scan_folder` and :func:`dir_fds` serve the
other parts that must look at the files (STORE and EXPUNGE of a file another program
renamed).
"""

from __future__ import annotations

import contextlib
import logging
import os
import stat
import time
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path
from typing import TYPE_CHECKING

from mailserver.storage.indexrefresh import IndexRefresh
from mailserver.storage.indextypes import _SUB, Message, _new_message
from mailserver.storage.maildirname import imap_size, letters_of, make_suffix, name_time, split_name

log = logging.getLogger("pymaild.storage")


def scan_folder(folder: Path) -> dict[str, tuple[str, str]]:
    """``{base: (sub, suffix)}`` of every message file of the folder at ``folder``.

    ``new/`` first: a file moved to ``cur/`` by another program while we scan is
    then seen at least once. A base found twice keeps the ``cur/`` name (if two
    ``cur/`` names exist, the one that still exists).
    """
    out: dict[str, tuple[str, str]] = {}
    for sub in ("new", "cur"):
        with os.scandir(folder / sub) as it:
            for entry in it:
                name = entry.name
                if name[0] == "." or not entry.is_file(follow_symlinks=False):
                    continue
                base, suffix = split_name(name)
                prev = out.get(base)
                if prev is not None and prev[0] == "cur" and sub == "cur":
                    if not os.path.exists(folder / sub / name):
                        continue
                    log.warning("%s: two files for one message: %s%s, %s", folder, base,
                                prev[1], suffix)
                out[base] = (sub, suffix)
    return out


@contextlib.contextmanager
def dir_fds(subs: Mapping[str, str]) -> Iterator[dict[str, int]]:
    """``new/`` and ``cur/`` (``subs``: sub -> its path) open for the ``*at()`` calls of a
    loop over many files: a rename or stat relative to an open directory does not resolve
    the folder's path again for every file (a quarter of a 10k-file rename loop)."""
    fds: dict[str, int] = {}
    try:
        for sub in ("new", "cur"):
            fds[sub] = os.open(subs[sub], os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        yield fds
    finally:
        for fd in fds.values():
            os.close(fd)


class MaildirSync(IndexRefresh):
    """Part of :class:`~.index.MailboxIndex`: the files of ``new/`` and ``cur/`` against
    the mirror, and the index rows for what changed."""

    _sub: dict[str, str]  # "new", "cur", "tmp" -> the directory's path ending in "/"
    trust_dir_mtime: bool

    if TYPE_CHECKING:  # defined by MailboxIndex (index.py)
        def _forget(self, gone: Iterable[Message]) -> None: ...

    def _dirs_unchanged(self) -> bool:
        """True if nothing was added, removed or renamed in new/ and cur/ since a scan.

        Dovecot's trick: a directory's mtime changes with every entry change, so an idle
        folder needs two stat() calls instead of a 10k-entry readdir. The stamp is only
        trusted if it was a second old when that scan began, because a change within the
        same timestamp tick as the previous one can leave the mtime as it was.
        """
        now = time.time_ns()
        stamp = (os.stat(self._sub["new"]).st_mtime_ns, os.stat(self._sub["cur"]).st_mtime_ns)
        if self.trust_dir_mtime and stamp == self._scan_stamp:
            return True
        quiet = max(stamp) < now - 1_000_000_000
        self._scan_stamp = stamp if quiet else None
        self._stamp_fresh = quiet  # a scan follows: _share stores the stamp for a restart
        return False

    def _sync_disk(self) -> None:
        if self._dirs_unchanged():
            # The mirror already matches the files; only other sessions' index-only
            # changes (arrived through _refresh) and \Recent remain to handle.
            self._commit_disk_changes([], [], [])
            return
        disk, vanished = self._look()
        if not self.read_only and any(sub == "new" for sub, _suffix in disk.values()):
            # Into cur/: this session has seen them (the Maildir meaning of new/).
            targets: dict[str, str] = {}  # suffix -> the cur/ suffix: a handful of kinds
            rename = os.rename
            with dir_fds(self._sub) as fds:
                new_fd, cur_fd = fds["new"], fds["cur"]
                for base, (sub, suffix) in list(disk.items()):
                    if sub != "new":
                        continue
                    target = targets.get(suffix)
                    if target is None:
                        target = targets[suffix] = make_suffix(letters_of(suffix))
                    try:
                        rename(base + suffix, base + target, src_dir_fd=new_fd, dst_dir_fd=cur_fd)
                    except FileNotFoundError:
                        continue  # moved or deleted by someone else: the next sync sees where
                    disk[base] = ("cur", target)
            # No directory fsync: files are matched by base, so a move lost in a crash
            # is simply redone.
        by_base = self._by_base
        changed: list[tuple[Message, str, str]] = []
        fresh: list[str] = []
        for base, (sub, suffix) in disk.items():
            uid = by_base.get(base)
            if uid is None:
                fresh.append(base)
            else:
                m = self._entries[uid]
                if m.sub != sub or m.suffix != suffix:
                    changed.append((m, sub, suffix))

        self._commit_disk_changes(self._new_files_info(fresh, disk) if fresh else [], changed, vanished)

    def _look(self) -> tuple[dict[str, tuple[str, str]], list[Message]]:
        """What differs between the files and the mirror: ``({base: (sub, suffix)}, gone)``.

        The dict holds every message whose file is not where and as the mirror says (and,
        for a read-write view, every file in ``new/``, which is to move); the list the
        messages with no file left. The names of ``cur/`` are compared as sets with the
        mirror's names, so only what changed costs Python work: a 100k folder with a few
        new files takes ~0.15 s instead of ~0.6 s of per-file work.
        """
        entries = self._entries
        rows = entries.values()
        known: dict[str, set[str]] = {"new": set(), "cur": set()}
        if "new" in map(_SUB, rows):  # (only a read-only view leaves files in new/)
            for m in rows:
                known[m.sub].add(m.base + m.suffix)
        else:
            known["cur"] = {m.base + m.suffix for m in rows}
        listed = {"new": self._list_new(), "cur": set(os.listdir(self._sub["cur"]))}
        disk, missing = self._differences(known, listed)
        if missing:
            # readdir() may miss a file renamed while it runs (a flag change by another
            # program): look again before declaring anything expunged.
            listed["new"] |= self._list_new()
            listed["cur"] |= set(os.listdir(self._sub["cur"]))
            disk, missing = self._differences(known, listed)
        return disk, [entries[self._by_base[base]] for base in missing]

    def _list_new(self) -> set[str]:
        # Usually empty, and the files here get renamed: only regular files, by d_type.
        with os.scandir(self._sub["new"]) as it:
            return {e.name for e in it if e.name[0] != "." and e.is_file(follow_symlinks=False)}

    def _differences(
        self, known: dict[str, set[str]], listed: dict[str, set[str]]
    ) -> tuple[dict[str, tuple[str, str]], list[str]]:
        """``({base: (sub, suffix)}, bases without a file)`` for the bases whose names
        differ between ``known`` (the mirror) and ``listed`` (the directories)."""
        found: dict[str, list[tuple[str, str]]] = {}
        for sub in ("new", "cur"):
            have, had = listed[sub], known[sub]
            moving = sub == "new" and not self.read_only  # moves everything in new/
            if not moving and have == had:
                continue  # the common case, at C speed
            added = have if moving else have - had
            for name in added:
                if name[0] != ".":
                    base, suffix = split_name(name)
                    found.setdefault(base, []).append((sub, suffix))
            for name in had - have:
                found.setdefault(split_name(name)[0], [])
        disk: dict[str, tuple[str, str]] = {}
        missing: list[str] = []
        for base, where in found.items():
            uid = self._by_base.get(base)
            m = None if uid is None else self._entries[uid]
            if m is not None and m.name in listed[m.sub] and (m.sub, m.suffix) not in where:
                where.append((m.sub, m.suffix))  # the file as the mirror knows it is still there
            if not where:
                if m is not None:
                    missing.append(base)
                continue
            disk[base] = self._pick(base, where)
        return disk, missing

    def _pick(self, base: str, where: list[tuple[str, str]]) -> tuple[str, str]:
        """Of several files for one message (a copy, a crash between link and unlink by
        another program), the one in cur/ that still exists, a newly seen name first."""
        if len(where) == 1:
            return where[0]
        curs = [w for w in where if w[0] == "cur"]
        if not curs:
            return where[-1]
        if len(curs) > 1:
            curs = [w for w in curs if os.path.lexists(self._sub["cur"] + base + w[1])] or curs
            log.warning("%s: two files for one message: %s", self.dir, ", ".join(base + w[1] for w in curs))
        return curs[0]

    def _commit_disk_changes(
        self,
        fresh: list[tuple[str, str, str, int, float]],
        changed: list[tuple[Message, str, str]],
        vanished: list[Message],
    ) -> None:
        meta = self._meta_copy()
        if meta.highestmodseq == 0:
            meta.highestmodseq = 1  # an index made before HIGHESTMODSEQ started at 1: never 0
        # _new_message's numbering for each, without a call per row (a cold 100k SELECT).
        uid0, modseq0, new_message = meta.uidnext, meta.highestmodseq + 1, _new_message
        new_msgs = [new_message(Message, (uid0 + i, base, sub, suffix, modseq0 + i, size, idate, ""))
                    for i, (base, sub, suffix, size, idate) in enumerate(fresh)]
        meta.uidnext += len(new_msgs)
        meta.highestmodseq += len(new_msgs)
        updates: list[Message] = []
        notify: list[int] = []
        for m, sub, suffix in changed:
            meta.highestmodseq += 1
            updates.append(m._replace(sub=sub, suffix=suffix, modseq=meta.highestmodseq))
            if letters_of(suffix) != m.letters:
                notify.append(m.uid)
        expunges = [(meta.highestmodseq + i + 1, m.uid) for i, m in enumerate(vanished)]
        meta.highestmodseq += len(expunges)

        claim: set[int] = set()
        if meta.first_recent_uid < meta.uidnext:
            claim = {
                u for u in (*self._unannounced, *(m.uid for m in new_msgs))
                if u >= meta.first_recent_uid
            }
            if not self.read_only:
                meta.first_recent_uid = meta.uidnext  # the first session to see them gets them
        assert self._meta is not None
        if (new_msgs or updates or expunges or meta.first_recent_uid != self._meta.first_recent_uid
                or meta.highestmodseq != self._meta.highestmodseq):
            with self._commit(meta):
                self._store.upsert([*new_msgs, *updates])
                if expunges:
                    self._store.delete(expunges, meta)
        if new_msgs or updates:
            entries, by_base = self._own()
            for m in new_msgs:
                entries[m.uid] = m
                by_base[m.base] = m.uid
            self._unannounced.update(m.uid for m in new_msgs)
            for m in updates:
                entries[m.uid] = m
        self._pending_flags.update(u for u in notify if self._in_view(u))
        self._forget(vanished)
        self._recent |= claim

    def _new_files_info(
        self, fresh: list[str], disk: dict[str, tuple[str, str]]
    ) -> list[tuple[str, str, str, int, float]]:
        """``(base, sub, suffix, size, mtime)`` of files seen for the first time, in
        delivery order (the order their UIDs must follow)."""
        found: list[tuple[float, str, str, str, int, float]] = []
        lstat, is_reg, time_of, size_of = os.stat, stat.S_ISREG, name_time, imap_size
        with dir_fds(self._sub) as fds:
            for base in fresh:
                sub, suffix = disk[base]
                try:
                    st = lstat(base + suffix, dir_fd=fds[sub], follow_symlinks=False)
                except FileNotFoundError:
                    continue  # gone again already; never indexed, nothing to report
                if not is_reg(st.st_mode):
                    continue  # a directory or symlink someone left there: not a message
                t = time_of(base)
                # Delivery order: the time in the name (when the writer made it); mtime is
                # the internal date and may be older (APPEND with a date, migrated mail).
                mtime = st.st_mtime
                size = size_of(base)
                found.append((t[0] + t[1] / 1e6 if t else mtime, base, sub, suffix,
                              st.st_size if size is None else size, mtime))
        found.sort()
        return [row[1:] for row in found]
