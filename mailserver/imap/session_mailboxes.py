"""Commands on the account's folders, in the authenticated state (RFC 3501 6.3):
NAMESPACE, SELECT/EXAMINE (with the QRESYNC replay, RFC 7162 3.2.5), CREATE, DELETE,
RENAME, SUBSCRIBE/UNSUBSCRIBE, LIST/LSUB (with LIST-EXTENDED and LIST-STATUS), STATUS and
APPEND.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from mailserver.imap.fetchcache import FetchCache
from mailserver.storage import quota
from mailserver.storage.api import MailboxView

from . import format as fmt
from .commands import Append, Command, Create, List, Lsub, MailboxCommand, Rename, Select, Status
from .mailboxes import DELIMITER, pattern_matches
from .seqset import SequenceSet
from .session_core import Action, Refused, Selected, State
from .session_updates import SessionUpdates


class MailboxCommands(SessionUpdates):
    async def _namespace(self, cmd: Command) -> Action:
        self._untagged(b'* NAMESPACE (("" "' + DELIMITER.encode() + b'")) NIL NIL\r\n')
        self._ok(cmd.tag, "NAMESPACE completed")
        return Action.NONE

    async def _select(self, cmd: Command) -> Action:
        assert isinstance(cmd, Select)
        if cmd.qresync is not None and "QRESYNC" not in self.enabled:
            raise Refused("QRESYNC must be enabled first (ENABLE QRESYNC)", status="BAD")
        if self.selected is not None:
            self._deselect()
            self.state = State.AUTHENTICATED
            if "QRESYNC" in self.enabled:
                self._untagged(fmt.untagged_status("OK", "previous mailbox closed", code="CLOSED"))
        tree = self._tree()
        path = tree.path(cmd.mailbox)
        name = "INBOX" if cmd.mailbox.upper() == "INBOX" else cmd.mailbox
        if not await self.run_in_thread(tree.exists, name):
            raise Refused("no such mailbox", code="NONEXISTENT")
        if cmd.condstore or cmd.qresync:
            self.condstore = True

        def open_index() -> tuple[MailboxView, FetchCache, list[str], int | None]:
            index = tree.open(name, read_only=cmd.readonly)
            try:
                index.sync()
                return index, FetchCache(path), index.keywords(), index.first_unseen()
            except BaseException:
                index.close()
                raise

        index, cache, keywords, first_unseen = await self.run_in_thread(open_index)
        key = self.backend.hub.register(path, self)
        self.selected = Selected(name, index, cache, key, cmd.readonly, list(keywords))
        self.state = State.SELECTED
        self._dirty = False
        out = [
            self._flags_lines(),
            fmt.exists(len(index)),
            fmt.recent(index.recent_count),
        ]
        if first_unseen is not None:
            out.append(fmt.untagged_status("OK", "First unseen", code=fmt.code_unseen(first_unseen)))
        out += [
            fmt.untagged_status("OK", "UIDs valid", code=fmt.code_uidvalidity(index.uidvalidity)),
            fmt.untagged_status("OK", "Predicted next UID", code=fmt.code_uidnext(index.uidnext)),
            fmt.untagged_status("OK", "Highest", code=fmt.code_highestmodseq(index.highestmodseq)),
        ]
        self.out.write(b"".join(out))
        if cmd.qresync is not None and cmd.qresync.uidvalidity == index.uidvalidity:
            await self._qresync_replay(cmd.qresync.modseq, cmd.qresync.known_uids)
        code = "READ-ONLY" if cmd.readonly else "READ-WRITE"
        self._ok(cmd.tag, f"{cmd.name} completed", code=code)
        return Action.NONE

    async def _qresync_replay(self, modseq: int, known: SequenceSet | None) -> None:
        """RFC 7162 3.2.5: what changed since the client's modseq, as VANISHED + FETCH."""
        sel = self._sel()
        index = sel.index
        vanished, complete = await self.run_in_thread(index.vanished_since, modseq)
        largest = index.uidnext - 1
        if not complete and largest > 0:
            # The expunge log does not reach back far enough: every UID the client may know
            # (its known-uids, else 1:UIDNEXT-1) that is not in the mailbox is reported.
            present = set(index.uids)
            scope = known if known is not None else SequenceSet(((1, largest),))
            vanished = sorted({u for lo, hi in scope.resolve(largest) for u in range(lo, hi + 1)
                               if u not in present} | set(vanished))
        if known is not None:
            keep: set[int] = set()
            largest = max(index.uidnext - 1, 1)
            for lo, hi in known.resolve(largest):
                keep.update(u for u in vanished if lo <= u <= hi)
            vanished = sorted(keep)
        vanished = [u for u in vanished if index.seq(u) is None]  # see _fetch
        if vanished:
            self._untagged(fmt.vanished(vanished, earlier=True))
        changed = index.changed_since(modseq)
        if known is not None:
            changed = [u for u in changed if known.contains(u, max(index.uidnext - 1, 1))]
        for uid in changed:
            seq = index.seq(uid)
            if seq is not None:
                self._untagged(self._flags_fetch(seq, uid))

    async def _create(self, cmd: Command) -> Action:
        assert isinstance(cmd, Create)
        if len(cmd.use) > 1:  # RFC 6154 3: the server may refuse more than one
            raise Refused("one special use per folder", code="USEATTR")
        use = cmd.use[0] if cmd.use else None
        tree = self._tree()
        await self.run_in_thread(lambda: tree.create(cmd.mailbox, use=use))
        self._ok(cmd.tag, "CREATE completed")
        return Action.NONE

    async def _delete(self, cmd: Command) -> Action:
        assert isinstance(cmd, MailboxCommand)
        tree = self._tree()
        path = tree.path(cmd.mailbox)
        if self.selected is not None and self.selected.index.dir == path:
            self._deselect()
            self.state = State.AUTHENTICATED
        await self._forget_index(path)
        await self.run_in_thread(tree.delete, cmd.mailbox)
        self.backend.hub.changed([path])
        self._ok(cmd.tag, "DELETE completed")
        return Action.NONE

    async def _forget_index(self, path: Path) -> None:
        index = self._status_indexes.pop(path, None)
        if index is not None:
            await self.run_in_thread(index.close)

    async def _rename(self, cmd: Command) -> Action:
        assert isinstance(cmd, Rename)
        tree = self._tree()
        old = tree.path(cmd.old)
        tree.path(cmd.new)  # validate the new name first
        if self.selected is not None and self.selected.index.dir == old and cmd.old.upper() != "INBOX":
            self._deselect()
            self.state = State.AUTHENTICATED
        # The folder and its children move; which identities (paths) that touches is the
        # store's business, so every kept view goes (a cache of _STATUS_CACHE at most).
        for path in list(self._status_indexes):
            await self._forget_index(path)
        await self.run_in_thread(tree.rename, cmd.old, cmd.new)
        self.backend.hub.changed([old])
        self._ok(cmd.tag, "RENAME completed")
        return Action.NONE

    async def _subscribe(self, cmd: Command) -> Action:
        assert isinstance(cmd, MailboxCommand)
        tree = self._tree()
        if cmd.name == "SUBSCRIBE":
            await self.run_in_thread(tree.subscribe, cmd.mailbox)
        else:
            await self.run_in_thread(tree.unsubscribe, cmd.mailbox)
        self._ok(cmd.tag, f"{cmd.name} completed")
        return Action.NONE

    async def _list(self, cmd: Command) -> Action:
        assert isinstance(cmd, List | Lsub)
        tree = self._tree()
        lsub = isinstance(cmd, Lsub)
        patterns = (cmd.pattern,) if isinstance(cmd, Lsub) else cmd.patterns
        selection = frozenset() if isinstance(cmd, Lsub) else cmd.selection
        returns = frozenset() if isinstance(cmd, Lsub) else cmd.returns
        if not lsub and len(patterns) == 1 and patterns[0] == "":
            # RFC 3501 6.3.8: the hierarchy delimiter and root name.
            self._untagged(fmt.list_response(["\\Noselect"], DELIMITER, ""))
            self._ok(cmd.tag, "LIST completed")
            return Action.NONE
        infos = await self.run_in_thread(tree.list)
        subscribed_only = lsub or "SUBSCRIBED" in selection
        special_only = "SPECIAL-USE" in selection
        subscribed_names = set(await self.run_in_thread(tree.subscriptions)) if subscribed_only else set()
        # Parents of subscribed names the patterns miss: LSUB lists
        # them as \Noselect (RFC 3501 6.3.9), LIST (SUBSCRIBED RECURSIVEMATCH) with
        # CHILDINFO (RFC 5258 3.5). As Dovecot does.
        childinfo = "RECURSIVEMATCH" in selection and "SUBSCRIBED" in selection
        sub_parents = (_hidden_parents(cmd.reference, patterns, subscribed_names, lsub=lsub)
                       if lsub or childinfo else set())
        extended = b' (CHILDINFO ("SUBSCRIBED"))'
        out: list[bytes] = []
        seen_names = set()
        for info in infos:
            if not any(pattern_matches(cmd.reference, p, info.name) for p in patterns):
                continue
            if subscribed_only and info.name not in subscribed_names and not (
                    info.name in sub_parents and (childinfo or lsub)):
                continue
            attrs = list(info.attributes)
            if lsub or not (selection or returns):  # \NonExistent is LIST-EXTENDED's
                attrs = [a for a in attrs if a != "\\NonExistent"]
            if special_only and not any(a in ("\\Sent", "\\Drafts", "\\Trash", "\\Junk", "\\Archive")
                                        for a in attrs):
                continue
            if lsub:
                attrs = [a for a in attrs if a in ("\\Noselect",)]
                if info.name not in subscribed_names and "\\Noselect" not in attrs:
                    attrs.append("\\Noselect")
            elif ("SUBSCRIBED" in selection or "SUBSCRIBED" in returns) and info.subscribed:
                attrs.append("\\Subscribed")
            seen_names.add(info.name)
            line = fmt.list_response(attrs, DELIMITER, info.name, command="LSUB" if lsub else "LIST")
            if childinfo and info.name in sub_parents:
                line = line[:-2] + extended + b"\r\n"
            out.append(line)
            if isinstance(cmd, List) and "STATUS" in returns and info.selectable:
                # RFC 5819: each STATUS follows its LIST line.
                out.append(await self._status_line(info.name, cmd.status_items))
        if subscribed_only:
            # Subscribed names that no longer exist are still listed (RFC 3501 6.3.9).
            for name in sorted((subscribed_names | sub_parents) - seen_names):
                if not any(pattern_matches(cmd.reference, p, name) for p in patterns):
                    continue
                if name in subscribed_names:
                    attrs = ["\\Noselect"] if lsub else ["\\NonExistent", "\\Subscribed"]
                elif lsub or childinfo:
                    attrs = ["\\Noselect"] if lsub else ["\\NonExistent"]
                else:
                    continue
                line = fmt.list_response(attrs, DELIMITER, name, command="LSUB" if lsub else "LIST")
                if childinfo and name in sub_parents:
                    line = line[:-2] + extended + b"\r\n"
                out.append(line)
        self.out.write(b"".join(out))
        self._ok(cmd.tag, f"{'LSUB' if lsub else 'LIST'} completed")
        return Action.NONE

    async def _status(self, cmd: Command) -> Action:
        assert isinstance(cmd, Status)
        tree = self._tree()
        name = "INBOX" if cmd.mailbox.upper() == "INBOX" else cmd.mailbox
        if not await self.run_in_thread(tree.exists, name):
            raise Refused("no such mailbox", code="NONEXISTENT")
        self._untagged(await self._status_line(name, cmd.items))
        self._ok(cmd.tag, "STATUS completed")
        return Action.NONE

    async def _status_line(self, name: str, items: Sequence[str]) -> bytes:
        path = self._tree().path(name)
        sel = self.selected
        if sel is not None and sel.index.dir == path:
            index = sel.index
            live = False
        else:
            index = await self._other_index(name, path)
            live = True
        if "HIGHESTMODSEQ" in items:
            self.condstore = True

        def compute() -> list[tuple[str, int]]:
            if live:
                index.sync()
            values: list[tuple[str, int]] = []
            for item in items:
                if item == "MESSAGES":
                    values.append((item, len(index)))
                elif item == "RECENT":
                    values.append((item, index.recent_count))
                elif item == "UIDNEXT":
                    values.append((item, index.uidnext))
                elif item == "UIDVALIDITY":
                    values.append((item, index.uidvalidity))
                elif item == "UNSEEN":
                    values.append((item, index.count_without("S")))
                elif item == "DELETED":
                    values.append((item, index.count_with("T")))
                elif item == "SIZE":
                    values.append((item, index.total_size()))
                elif item == "DELETED-STORAGE":
                    # RFC 9208 4.2.1: what EXPUNGE would free, in STORAGE's units (KiB).
                    freed = sum(row[3] for row in index.search_rows() if "\\Deleted" in row[1])
                    values.append((item, freed // 1024))
                elif item == "HIGHESTMODSEQ":
                    values.append((item, index.highestmodseq))
                elif item == "APPENDLIMIT":
                    values.append((item, self.backend.limits.max_append_size))
            return values

        values = await self.run_in_thread(compute)
        return fmt.status_response(name, values)

    async def _append(self, cmd: Command) -> Action:
        assert isinstance(cmd, Append)
        tree = self._tree()
        name = "INBOX" if cmd.mailbox.upper() == "INBOX" else cmd.mailbox
        path = tree.path(name)
        if not await self.run_in_thread(tree.exists, name):
            raise Refused("no such mailbox", code="TRYCREATE")
        if not cmd.message:
            raise Refused("an empty message cannot be appended")
        flags = [f for f in cmd.flags if f.upper() != "\\RECENT"]
        index = await self._other_index(name, path)

        def append() -> tuple[int, int]:
            root, limits = self._quota_of()
            # RFC 9208 4.3: over quota is NO [OVERQUOTA] before anything is written; the
            # lock held meanwhile makes racing writers into the account decide in turn.
            with quota.reserve([(root, limits, len(cmd.message), 1)]):
                if index is not (self.selected.index if self.selected else None):
                    index.sync()
                return index.uidvalidity, index.append(cmd.message, flags, cmd.date_time)

        uidvalidity, uid = await self.run_in_thread(append)
        self._notify_others([path])
        if self.selected is not None and self.selected.index is index:
            self._dirty = True  # EXISTS follows, before the tagged OK (execute)
        self._ok(cmd.tag, "APPEND completed", code=fmt.code_appenduid(uidvalidity, uid))
        return Action.NONE


def _hidden_parents(reference: str, patterns: Sequence[str], names: set[str], *, lsub: bool) -> set[str]:
    """Parents of ``names`` that match one of the patterns while the name itself matches
    none. For LSUB only where a ``%`` stopped the name (``a`` for ``a.b`` with ``%``):
    LSUB "" "a" lists nothing for a subscribed ``a.b`` (RFC 3501 6.3.9; Dovecot)."""
    out: set[str] = set()
    for name in names:
        if DELIMITER not in name or any(pattern_matches(reference, p, name) for p in patterns):
            continue
        for p in patterns:
            if lsub and ("%" not in p or not pattern_matches(reference, p.replace("%", "*"), name)):
                continue
            parts = name.split(DELIMITER)
            for i in range(1, len(parts)):
                parent = DELIMITER.join(parts[:i])
                if pattern_matches(reference, p, parent):
                    out.add(parent)
    return out
