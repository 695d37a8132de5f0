"""Telling a session what others changed in its selected folder (RFC 3501 7.4.1).

Changes made by others are reported inside the response to a command, before its tagged
response, never after it (then no command is in progress and a client takes them for
part of its next command). Expunges by others are held back during FETCH, STORE, SEARCH
and COPY/MOVE by sequence number, because EXPUNGE would shift the numbers the client is
using. New keywords come with FLAGS and PERMANENTFLAGS first (RFC 3501 7.2.6).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

from mailserver.storage.api import ChangeSet, CorruptIndex

from . import format as fmt
from .commands import Command
from .session_core import SessionCore, State

log = logging.getLogger("pymaild.imap")

SYSTEM_FLAGS = ("\\Answered", "\\Flagged", "\\Deleted", "\\Seen", "\\Draft")


class SessionUpdates(SessionCore):
    async def _send_updates(self, cmd: Command) -> None:
        """What others changed in the selected folder, for the response to ``cmd``.

        Expunges only where RFC 3501 7.4.1 allows them (not during FETCH, STORE, SEARCH,
        COPY or MOVE by sequence number; MOVE's own EXPUNGEs are its result, not an
        update); new messages (EXISTS) and flag changes (FETCH) always. NOOP and CHECK
        look at the folder even if nobody said it changed (other programs writing it)."""
        sel = self.selected
        if self.state is not State.SELECTED or sel is None:
            return
        try:
            if _holds_expunges(cmd):
                if self._dirty:
                    await self._report_changes(hold_expunges=True)
            elif self._dirty or sel.index.holds_expunges or cmd.name in ("NOOP", "CHECK"):
                await self._report_changes()
        except OSError as exc:
            # The command itself is done: its answer stands; the updates come next time.
            self._dirty = True
            log.error("session=%s user=%s sync of %s failed: %s", self.id, self.user, sel.name, exc)

    async def report_if_dirty(self) -> None:
        """End IDLE after :meth:`idle_done`: what changed since the last push, then the
        tagged OK (IDLE is in progress until its tagged response)."""
        try:
            if self.state is State.SELECTED and self.selected is not None and (
                    self._dirty or self.selected.index.holds_expunges):
                await self._report_changes()
        finally:
            tagged, self._idle_tagged = self._idle_tagged, None
            if tagged is not None:
                self.out.write(tagged)

    async def _report_changes(self, hold_expunges: bool = False) -> None:
        sel = self.selected
        if sel is None:
            return
        self._dirty = False
        try:
            changes = await self.run_in_thread(sel.index.sync, hold_expunges)
        except (FileNotFoundError, CorruptIndex) as exc:
            log.warning("session=%s mailbox %s is gone: %s", self.id, sel.name, exc)
            self._bye_and_deselect("the selected mailbox was deleted or renamed")
            return
        self._write_changes(changes)

    def _bye_and_deselect(self, reason: str) -> None:
        self._deselect()
        self.state = State.AUTHENTICATED
        self.out.write(fmt.untagged_status("OK", reason, code="CLOSED"))

    def _write_changes(self, changes: ChangeSet) -> None:
        sel = self._sel()
        index = sel.index
        if changes.uidvalidity_changed:
            self._bye_and_deselect("the mailbox index was rebuilt; select it again")
            return
        parts: list[bytes] = []
        if changes.expunged:
            if "QRESYNC" in self.enabled:
                parts.append(fmt.vanished(changes.expunged))
            else:
                parts.extend(fmt.expunge(s) for s in changes.expunged_seqs)
        if changes.new or changes.flags:
            parts.append(self._new_keywords([*changes.new, *changes.flags]))
        if changes.new:
            # Only for growth: RFC 3501 5.2, EXISTS never reports a shrink (EXPUNGE does).
            parts.append(fmt.exists(len(index)))
            parts.append(fmt.recent(index.recent_count))
        for uid in changes.flags:
            seq = index.seq(uid)
            if seq is not None:
                parts.append(self._flags_fetch(seq, uid))
        if parts:
            self.out.write(b"".join(parts))

    async def _announce_own(self) -> None:
        """EXISTS (and RECENT) for what this session added to its selected folder, now."""
        index = self._sel().index
        new = await self.run_in_thread(index.announce_new)  # takes the folder lock
        if new:
            self.out.write(self._new_keywords(new) + fmt.exists(len(index)) + fmt.recent(index.recent_count))

    def _flags_lines(self) -> bytes:
        """``* FLAGS`` and ``* OK [PERMANENTFLAGS]`` for the selected folder's keywords."""
        sel = self._sel()
        flags = [*SYSTEM_FLAGS, *sel.keywords]
        return fmt.flags_response(flags) + fmt.untagged_status(
            "OK", "Flags permitted", code=fmt.code_permanentflags([] if sel.readonly else [*flags, "\\*"]))

    def _new_keywords(self, uids: Sequence[int]) -> bytes:
        """FLAGS and PERMANENTFLAGS again when ``uids`` carry a keyword the client was not
        told about yet (RFC 3501 7.2.6; Dovecot), else nothing. Sent before their FETCH."""
        sel = self._sel()
        known = {k.casefold() for k in sel.keywords}
        added = False
        for uid in uids:
            if sel.index.seq(uid) is None:
                continue
            for flag in sorted(sel.index.flags(uid)):
                if flag[0] != "\\" and flag.casefold() not in known:
                    known.add(flag.casefold())
                    sel.keywords.append(flag)
                    added = True
        return self._flags_lines() if added else b""

    def _flags_fetch(self, seq: int, uid: int) -> bytes:
        index = self._sel().index
        flags = index.flags(uid) | ({"\\Recent"} if index.is_recent(uid) else set())
        items: list[tuple[str, fmt.Value]] = [("UID", uid), ("FLAGS", fmt.Raw(fmt.flags(sorted(flags))))]
        if self.condstore:
            items.append(("MODSEQ", fmt.Raw(b"(%d)" % index.modseq(uid))))
        return fmt.fetch_response(seq, items)


def _holds_expunges(cmd: Command) -> bool:
    """RFC 3501 7.4.1: no EXPUNGE during FETCH, STORE or SEARCH by sequence number (the
    UID forms may carry them); SORT and THREAD answer with numbers as SEARCH does (RFC
    5256 3), and COPY and MOVE by number are held to the same rule, so the numbers a
    client sends next still name what it thinks they do."""
    return (cmd.name in ("FETCH", "STORE", "SEARCH", "SORT", "THREAD", "COPY", "MOVE")
            and not getattr(cmd, "uid", False))
