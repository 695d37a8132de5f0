"""Flags and keywords of a folder's messages: STORE, and the flag names of a row.

System flags are the letters of the Maildir name (``:2,<letters>``, RFC 3501 2.3.2 /
cr.yp.to/proto/maildir.html); keywords are the folder's ``dovecot-keywords`` letters
(:mod:`.keywords`) while there are free ones, and past the 26 letters the index row's
``extra`` field. :class:`FlagStore` is the part of :class:`~.index.MailboxIndex` that
changes them (:meth:`~FlagStore.store_flags`: a rename in ``cur/`` and a new modseq per
changed message, RFC 7162 3.1), turns flag names into letters and back, and enforces the
keyword caps (:class:`~.indextypes.KeywordLimit`) for STORE, APPEND and COPY.
"""

from __future__ import annotations

import contextlib
import os
import threading
from collections.abc import Iterable
from typing import TYPE_CHECKING

from mailserver.fsutil import fsync_dir
from mailserver.storage.indexrefresh import IndexRefresh
from mailserver.storage.indexstore import Meta, StoreGroup
from mailserver.storage.indextypes import (
    KeywordLimit,
    Message,
    ReadOnlyMailbox,
    StoreMode,
    _keyword_count,
    _new_message,
    _split_extra,
)
from mailserver.storage.maildirname import (
    FLAG_TO_LETTER,
    LETTER_TO_FLAG,
    letters_of,
    make_suffix,
    normalize_flag,
)
from mailserver.storage.maildirscan import dir_fds, scan_folder

_PLAN_UID = lambda step: step[0][0]  # noqa: E731  a STORE plan step's UID (its old row's)
_ROWS_IN_THREAD = 512  # a STORE of this many rows writes them in a thread beside its renames


class FlagStore(IndexRefresh):
    """Part of :class:`~.index.MailboxIndex`: STORE, flag names, keyword caps."""

    _sub: dict[str, str]
    max_keywords_per_message: int
    max_keywords_per_folder: int

    if TYPE_CHECKING:  # defined by MailboxIndex (index.py)
        def keywords(self) -> list[str]: ...
        def _forget(self, gone: Iterable[Message]) -> None: ...
        def _maybe_advance_modseq(self) -> None: ...

    def store_flags(
        self,
        uids: Iterable[int],
        flags: Iterable[str],
        mode: StoreMode = "add",
        unchanged_since: int | None = None,
    ) -> tuple[list[int], list[int]]:
        """STORE: ``(changed, failed_modified)`` UIDs, both ascending.

        Each changed message is renamed in ``cur/`` and gets a new modseq. With
        ``unchanged_since`` (CONDSTORE UNCHANGEDSINCE) a message whose modseq is above it
        is left alone and listed in ``failed_modified``. UIDs not in the view, or
        expunged by another session meanwhile, are skipped. A store that changes
        nothing changes no modseq.
        """
        if self.read_only:
            raise ReadOnlyMailbox("mailbox is read-only")
        if mode not in ("add", "remove", "replace"):
            raise ValueError(f"bad store mode {mode!r}")
        sys_letters, kws = self._parse_flags(flags)
        if mode != "remove":
            self._check_message_keywords(len(kws))
        with self._locked():
            meta = self._meta_copy()
            if kws and mode != "remove":
                self._check_folder_keywords(kws)
                self._assign_keywords(kws)
            entries = self._entries
            new_message = _new_message
            failed: list[int] = []
            # (row, new row, new suffix if the file is to be renamed) per message to change.
            plan: list[tuple[Message, Message, str | None]] = []
            # (suffix, extra) -> (new suffix or None if the letters stay, new extra), or
            # None for no change: a 100k-message STORE meets only a few combinations.
            memo: dict[tuple[str, str], tuple[str | None, str] | None] = {}
            # The messages to change, grouped by their new (sub, suffix, extra): each group
            # takes a run of consecutive modseqs, so its rows are written in one statement
            # (RFC 7162 3.1 asks a new, higher modseq of each changed message, not an
            # order among the messages of one command).
            groups: dict[tuple[str, str, str], list[tuple[Message, str | None]]] = {}
            for uid in self._view_members(uids):
                m = entries.get(uid)
                if m is None:
                    continue  # expunged by another session, not yet reported
                _u, _base, sub, suffix, old_modseq, _size, _idate, extra = m
                if unchanged_since is not None and old_modseq > unchanged_since:
                    failed.append(uid)
                    continue
                key = (suffix, extra)
                if key in memo:
                    result = memo[key]
                else:
                    result = memo[key] = self._store_result(suffix, extra, sys_letters, kws, mode)
                    if result is not None and mode == "add":  # replace was checked above
                        self._check_message_keywords(_keyword_count(result[0] or suffix, result[1]))
                if result is None:
                    continue
                new_suffix, new_extra = result
                if new_suffix is not None:
                    sub, suffix = "cur", new_suffix
                members = groups.get((sub, suffix, new_extra))
                if members is None:
                    members = groups[(sub, suffix, new_extra)] = []
                members.append((m, new_suffix))
            modseq = meta.highestmodseq
            written: list[StoreGroup] = []
            for (sub, suffix, new_extra), members in groups.items():
                written.append(StoreGroup(sub, suffix, new_extra, modseq + 1, [m.uid for m, _s in members]))
                for m, new_suffix in members:
                    modseq += 1
                    row = new_message(Message, (m.uid, m.base, sub, suffix, modseq, m.size, m.internal_date,
                                                new_extra))
                    plan.append((m, row, new_suffix))
            if len(groups) > 1:
                plan.sort(key=_PLAN_UID)  # the renames and the answers in UID order
            meta.highestmodseq = modseq
            changed: list[int] = []
            external: list[int] = []
            vanished: list[Message] = []
            updates: dict[int, Message] = {}
            if plan:
                done: list[tuple[str, str]] = []
                try:
                    with self._commit(meta):
                        changed, external, vanished, updates = self._store_apply(
                            plan, written, meta, failed, sys_letters, kws, mode, unchanged_since, done
                        )
                except BaseException:
                    # The client hears NO and the index rolled back: put the names back
                    # too, so the flags on disk stay what the index says (best effort).
                    for old_name, new_name in reversed(done):
                        with contextlib.suppress(OSError):
                            os.rename(new_name, old_name)
                    raise
            if updates:
                self._own()[0].update(updates)
            if external:
                stored = set(changed)
                self._pending_flags.update(u for u in external if u not in stored)
            self._pending_flags.difference_update(changed)
            self._forget(vanished)
            self._maybe_advance_modseq()
        return changed, sorted(failed)

    def _store_apply(
        self,
        plan: list[tuple[Message, Message, str | None]],
        written: list[StoreGroup],
        meta: Meta,
        failed: list[int],
        sys_letters: set[str],
        kws: list[str],
        mode: str,
        unchanged_since: int | None,
        done: list[tuple[str, str]],
    ) -> tuple[list[int], list[int], list[Message], dict[int, Message]]:
        """Carry out a STORE inside its index transaction: ``(changed, changed by another
        program instead, vanished, new rows)``. The renames (~5 us each, the floor) and
        the rows' UPDATE (``written``, one statement per group) run side by side, the
        UPDATE in a thread of its own for a big STORE: both release the GIL, the UPDATE for
        its whole run (row-by-row executemany in a thread was tried: its per-row GIL
        hand-offs with the renames cost more than the overlap saved). Nothing is committed
        before the renames are fsynced. Each rename is added to ``done`` as ``(old name,
        new name)``, for the caller to undo if the STORE fails.
        """
        rows = [new for _m, new, _s in plan]
        missed: list[Message] = []
        renamed = False
        subs = self._sub
        cur = subs["cur"]
        rename = os.rename
        failure: list[BaseException] = []

        def write_rows() -> None:
            try:
                self._store.update_groups(written)
            except BaseException as exc:  # re-raised in the STORE's own thread
                failure.append(exc)

        writer = None
        if len(rows) >= _ROWS_IN_THREAD:
            writer = threading.Thread(target=write_rows, name="store-rows")
            writer.start()
        try:
            with dir_fds(self._sub) as fds:
                cur_fd = fds["cur"]
                for m, _new, new_suffix in plan:
                    if new_suffix is not None:
                        old_name, new_name = m.base + m.suffix, m.base + new_suffix
                        try:
                            rename(old_name, new_name, src_dir_fd=fds[m.sub], dst_dir_fd=cur_fd)
                            renamed = True
                            done.append((subs[m.sub] + old_name, cur + new_name))
                        except FileNotFoundError:
                            missed.append(m)  # renamed or deleted by another program meanwhile
        finally:
            if writer is not None:
                writer.join()
        if writer is None:
            write_rows()
        if failure:
            raise failure[0]
        updates = {new.uid: new for new in rows}
        external: list[int] = []
        vanished: list[Message] = []
        unchanged: set[int] = set()
        if missed:
            disk = scan_folder(self.dir)
            fixed: list[Message] = []
            for m in missed:
                uid = m.uid
                moved, meta.highestmodseq, again = self._store_moved(
                    m, disk.get(m.base), meta.highestmodseq, sys_letters, kws, mode, unchanged_since
                )
                unchanged.add(uid)
                if moved is None:
                    vanished.append(m)
                    del updates[uid]  # its row goes (the UPDATE written for it with it)
                    continue
                external.append(uid)
                row = moved
                if again is None:
                    if unchanged_since is not None:
                        failed.append(uid)  # its flags changed after the client's modseq
                else:
                    new_suffix, new_extra = again
                    if new_suffix is not None:
                        renamed = True
                    meta.highestmodseq += 1
                    row = moved._replace(
                        sub="cur" if new_suffix else moved.sub, suffix=new_suffix or moved.suffix,
                        modseq=meta.highestmodseq, extra=new_extra,
                    )
                    unchanged.discard(uid)
                updates[uid] = row
                fixed.append(row)
            self._store.update(fixed)
        if renamed:
            # The renames must be on disk before the index says they happened.
            fsync_dir(self.dir / "cur")
        if vanished:
            expunges = [(meta.highestmodseq + i + 1, m.uid) for i, m in enumerate(vanished)]
            meta.highestmodseq += len(expunges)
            self._store.delete(expunges, meta)
        changed = [new.uid for new in rows if new.uid not in unchanged]
        return changed, external, vanished, updates

    def _view_members(self, uids: Iterable[int]) -> list[int]:
        """The distinct ``uids`` that are in the view, ascending."""
        wanted = set(uids)
        if len(wanted) * 8 < len(self._view):
            return sorted(u for u in wanted if self._in_view(u))
        return sorted(wanted.intersection(self._view))

    def _store_result(
        self, suffix: str, extra: str, sys_letters: set[str], kws: list[str], mode: str
    ) -> tuple[str | None, str] | None:
        """What a STORE makes of a message named with ``suffix`` and index keywords
        ``extra``: None if nothing changes, else ``(new suffix, new extra)`` with a None
        suffix if the file keeps its name (only letterless keywords changed)."""
        old = letters_of(suffix)
        letters, new_extra = self._apply(old, extra, sys_letters, kws, mode)
        if letters == old and new_extra == extra:
            return None
        return (make_suffix(letters) if letters != old else None), new_extra

    def _store_moved(
        self,
        m: Message,
        where: tuple[str, str] | None,
        modseq: int,
        sys_letters: set[str],
        kws: list[str],
        mode: str,
        unchanged_since: int | None,
    ) -> tuple[Message | None, int, tuple[str | None, str] | None]:
        """STORE on a message another program renamed (``where`` it is now, None if it is
        gone): ``(the row with its new name and a new modseq, modseq, the store's result
        for it)``; the file is already renamed for that result unless it is None."""
        if where is None:
            return None, modseq, None
        modseq += 1
        m = m._replace(sub=where[0], suffix=where[1], modseq=modseq)
        if unchanged_since is not None:
            return m, modseq, None
        result = self._store_result(m.suffix, m.extra, sys_letters, kws, mode)
        if result is not None and result[0] is not None:
            os.rename(self._sub[m.sub] + m.name, self._sub["cur"] + m.base + result[0])
        return m, modseq, result

    def _parse_flags(self, flags: Iterable[str]) -> tuple[set[str], list[str]]:
        """System flag letters and keywords (deduplicated case-insensitively)."""
        letters: set[str] = set()
        kws: dict[str, str] = {}
        for flag in flags:
            canon = normalize_flag(flag)
            if canon in FLAG_TO_LETTER:
                letters.add(FLAG_TO_LETTER[canon])
            else:
                kws.setdefault(canon.casefold(), canon)
        return letters, list(kws.values())

    def _apply(
        self, letters: str, extra: str, sys_letters: set[str], kws: list[str], mode: str
    ) -> tuple[str, str]:
        """New ``(letters, extra)`` after a STORE; unknown letters are never dropped."""
        cur = set(letters)
        kw_letters = {ltr for k in kws if (ltr := self._keywords.letter(k))}
        kw_extra = [k for k in kws if self._keywords.letter(k) is None]
        more = {e.casefold(): e for e in _split_extra(extra)}
        if mode == "add":
            cur |= sys_letters | kw_letters
            for k in kw_extra:
                more.setdefault(k.casefold(), k)
        elif mode == "remove":
            cur -= sys_letters | kw_letters
            for k in kws:
                more.pop(k.casefold(), None)
        else:
            # Letters nobody can name (P, or a keyword letter missing from
            # dovecot-keywords) are not the client's to clear.
            keep = {
                c for c in cur
                if (c.isupper() and c not in LETTER_TO_FLAG)
                or (c.islower() and self._keywords.name(c) is None)
            }
            cur = keep | sys_letters | kw_letters
            more = {k.casefold(): k for k in kw_extra}
        return "".join(sorted(cur)), "\n".join(sorted(more.values(), key=str.casefold))

    def _check_message_keywords(self, count: int) -> None:
        if count > self.max_keywords_per_message:
            raise KeywordLimit(f"a message may have at most {self.max_keywords_per_message} keywords")

    def _check_folder_keywords(self, kws: list[str]) -> None:
        """Under the lock: would ``kws`` take the folder past its distinct-keyword cap?"""
        if all(self._keywords.letter(k) for k in kws):
            return  # the common case: every keyword has its letter already
        known = {k.casefold() for k in self.keywords()}
        new = {k.casefold() for k in kws} - known
        if new and len(known) + len(new) > self.max_keywords_per_folder:
            raise KeywordLimit(f"a folder may have at most {self.max_keywords_per_folder} distinct "
                               "keywords; remove unused ones first")

    def _assign_keywords(self, kws: list[str]) -> None:
        # A letter given out may already sit, unnamed, in some file name.
        if self._keywords.assign(kws):
            self._flags_cache.clear()

    def _flag_names(self, m: Message) -> frozenset[str]:
        key = (m.letters, m.extra)
        cached = self._flags_cache.get(key)
        if cached is not None:
            return cached
        names: set[str] = set()
        for c in m.letters:
            if c in LETTER_TO_FLAG:
                names.add(LETTER_TO_FLAG[c])
            elif c.islower() and (kw := self._keywords.name(c)) is not None:
                names.add(kw)
        names.update(_split_extra(m.extra))
        if len(self._flags_cache) > 4096:
            self._flags_cache.clear()
        out = self._flags_cache[key] = frozenset(names)
        return out
