"""Commands on the selected folder (RFC 3501 6.4): CHECK, CLOSE, UNSELECT, EXPUNGE,
SEARCH, SORT and THREAD (RFC 5256), FETCH, STORE, COPY and MOVE.

FETCH and SEARCH run in worker threads in chunks, so a 100,000-message FETCH never stalls
other sessions; FETCH of a message expunged elsewhere answers what the index still knows
or ends with ``OK [EXPUNGEISSUED]`` (RFC 2180 4.1.1), as Dovecot does.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import cast

from mailserver.storage import quota
from mailserver.storage.api import ChangeSet, ReadOnlyMailbox, StoreMode

from . import format as fmt
from . import searcheval
from .binarypart import UnknownCTE
from .commands import Command, Copy, Fetch, Search, Sort, Store, Thread, UidExpunge
from .fetchitems import Attribute, BodySection
from .fetchrender import FetchPlan, Renderer, SearchLoader
from .mailthreads import ThreadInput, thread
from .searchkeys import AllKey, SearchKey, uses_modseq
from .seqset import SequenceSet
from .session_core import Action, Refused, State
from .session_updates import SessionUpdates
from .sortcache import KEYS
from .sorting import (
    COMPANIONS,
    STORED,
    KeyValue,
    ThreadFields,
    cache_key,
    encode_keys,
    esort_response,
    key_value,
    order,
    sort_response,
    thread_fields_of,
)

_FETCH_CHUNK = 500
_FETCH_CHUNK_FULL = 25  # messages per chunk when whole bodies are read
_SEARCH_SLICE = 500


class SelectedCommands(SessionUpdates):
    async def _check(self, cmd: Command) -> Action:
        self._ok(cmd.tag, "CHECK completed")
        return Action.NONE

    async def _close(self, cmd: Command) -> Action:
        sel = self._sel()
        if not sel.readonly:
            changes = await self.run_in_thread(sel.index.expunge)
            if changes.expunged:
                self._notify_others([sel.index.dir])
        self._deselect()
        self.state = State.AUTHENTICATED
        self._ok(cmd.tag, f"{cmd.name} completed")
        return Action.NONE

    async def _unselect(self, cmd: Command) -> Action:
        self._deselect()
        self.state = State.AUTHENTICATED
        self._ok(cmd.tag, "UNSELECT completed")
        return Action.NONE

    async def _expunge(self, cmd: Command) -> Action:
        sel = self._sel()
        if sel.readonly:
            raise ReadOnlyMailbox()
        uids = self._resolve(cmd.sequence_set, True) if isinstance(cmd, UidExpunge) else None
        # Report others' changes first so sequence numbers in our EXPUNGEs are right.
        if self._dirty:
            await self._report_changes()
        changes = await self.run_in_thread(sel.index.expunge, uids)
        self._write_changes(ChangeSet(expunged=changes.expunged, expunged_seqs=changes.expunged_seqs))
        if changes.expunged:
            self._notify_others([sel.index.dir])
        code = fmt.code_highestmodseq(sel.index.highestmodseq) if self.condstore else None
        self._ok(cmd.tag, "EXPUNGE completed", code=code)
        return Action.NONE

    async def _matching(self, criteria: SearchKey) -> tuple[list[searcheval.Candidate], SearchLoader]:
        """The messages ``criteria`` match, in mailbox order, and the header loader that
        read them (its prefetched FETCH-cache entries serve SORT and THREAD next; the
        caller flushes it)."""
        sel = self._sel()
        index = sel.index
        if uses_modseq(criteria):
            self.condstore = True

        def candidates() -> tuple[list[searcheval.Candidate], searcheval.SearchContext]:
            view = index.uids
            new = searcheval.Candidate
            cands = [new(seq, *row) for seq, row in enumerate(index.search_rows(), 1)]
            return cands, searcheval.SearchContext(max_seq=len(view), max_uid=view[-1] if view else 0)

        cands, ctx = await self.run_in_thread(candidates)
        load = SearchLoader(index, sel.cache)
        # Content searches run in slices, each its own worker-thread call: the evaluator
        # holds the GIL, and other sessions get the interpreter between slices.
        if isinstance(criteria, AllKey):  # webmail's usual SORT and THREAD program
            return cands, load
        step = len(cands) or 1
        if searcheval.content_needed(criteria) != "none":
            step = _SEARCH_SLICE
        found: list[searcheval.Candidate] = []
        try:
            for start in range(0, len(cands), step):
                found += await self.run_in_thread(searcheval.search, criteria, cands[start:start + step],
                                                 ctx, load)
        except BaseException:
            await self.run_in_thread(load.flush)
            raise
        return found, load

    async def _search(self, cmd: Command) -> Action:
        assert isinstance(cmd, Search)
        found, load = await self._matching(cmd.criteria)
        await self.run_in_thread(load.flush)
        numbers = [c.uid if cmd.uid else c.seq for c in found]
        modseq = max((c.modseq for c in found), default=0) if uses_modseq(cmd.criteria) else None
        if cmd.returns is not None:
            if modseq is not None and found and not {"ALL", "COUNT"} & set(cmd.returns or ("ALL",)):
                # RFC 7162 3.1.5: with only MIN and/or MAX, the MODSEQ of what is returned.
                wanted = {min(numbers) if "MIN" in cmd.returns else 0,
                          max(numbers) if "MAX" in cmd.returns else 0}
                modseq = max(c.modseq for c, n in zip(found, numbers, strict=True) if n in wanted)
            self._untagged(self._esearch(cmd, numbers, modseq))
        else:
            self._untagged(fmt.search_response(numbers, modseq=modseq or None))
        self._ok(cmd.tag, "SEARCH completed")
        return Action.NONE

    def _esearch(self, cmd: Search, numbers: list[int], modseq: int | None) -> bytes:
        opts = cmd.returns or ("ALL",)
        if "SAVE" in opts:
            raise Refused("SEARCH RETURN (SAVE) is not supported", status="BAD")
        out = b"* ESEARCH (TAG " + fmt.quoted(cmd.tag) + b")"
        if cmd.uid:
            out += b" UID"
        if numbers:
            if "MIN" in opts:
                out += b" MIN %d" % min(numbers)
            if "MAX" in opts:
                out += b" MAX %d" % max(numbers)
            if "ALL" in opts:
                out += b" ALL " + str(SequenceSet.from_numbers(numbers)).encode()
        if "COUNT" in opts:
            out += b" COUNT %d" % len(numbers)
        if modseq:
            out += b" MODSEQ %d" % modseq
        return out + b"\r\n"

    async def _stored_keys(self, found: list[searcheval.Candidate], load: SearchLoader,
                           criteria: frozenset[str], use_uid: bool = False) -> _Keys:
        """For each criterion of STORED in ``criteria``, the key of every message of
        ``found``, in order: comparable values (``sorting.key_value``), or for THREAD the
        messages' ``ThreadInput`` numbered by UID or sequence number. Keys come from the
        process's columns (:mod:`.sortcache`) when kept there; the others from the
        folder's FETCH cache (``sorting.cache_key``), or else the header block, the cache's
        or the file's, and are stored in both. In slices off the event loop, like SEARCH."""
        sel = self._sel()
        index, cache = sel.index, sel.cache
        stored = sorted(criteria & STORED)
        keys = _Keys({}, [])
        if not stored:
            return keys
        folder = index.identity
        # Keys computed with these from the same header blocks, kept for a later command.
        extra = sorted({e for crit in stored for e in COMPANIONS.get(crit, ())} - set(stored))
        cols = {crit: KEYS.column(folder, crit) for crit in stored + extra}

        def from_columns() -> tuple[dict[str, list[object]], list[int]]:
            uids = [c.uid for c in found]
            got = {crit: list(map(cols[crit].get, uids)) for crit in stored}
            missing: set[int] = set()
            for values in got.values():
                if None in values:
                    missing.update(i for i, v in enumerate(values) if v is None)
            return got, sorted(missing)

        def decode(crit: str, value: bytes) -> object:
            return thread_fields_of(value) if crit == "THREAD" else key_value(crit, value)

        def slice_keys(got: dict[str, list[object]], idx: list[int]) -> None:
            part = [found[i] for i in idx]
            base_of = {m.uid: m.base for _seq, m in index.view_rows([c.uid for c in part])}
            bases = [base_of.get(c.uid, "") for c in part]  # "": not in the view (kept nowhere)
            have = {crit: cache.get_fields(bases, cache_key(crit)) if cache else {} for crit in stored}
            computed = stored + extra
            fresh: dict[str, dict[str, bytes]] = {crit: {} for crit in computed}
            learned: dict[str, dict[int, object]] = {crit: {} for crit in computed}
            for i, c, base in zip(idx, part, bases, strict=True):
                values = [v for crit in stored if (v := have[crit].get(base)) is not None]
                if len(values) == len(stored):
                    try:
                        decoded = [decode(crit, value) for crit, value in zip(stored, values, strict=True)]
                    except (ValueError, TypeError, UnicodeDecodeError):
                        pass  # not a value we write (a damaged or foreign row): compute it again
                    else:
                        for crit, d in zip(stored, decoded, strict=True):
                            got[crit][i] = learned[crit][c.uid] = d
                        continue
                header, whole = load(c, "header")
                keep = whole is None and base  # (b"", b""): the file went away as we looked
                for crit, (value, d) in zip(computed, encode_keys(header or b"", c.internal_date, computed),
                                            strict=True):
                    if crit in got:
                        got[crit][i] = d
                    if keep:
                        fresh[crit][base] = value
                        learned[crit][c.uid] = d
            if cache is not None:
                for crit, entries in fresh.items():
                    cache.put_fields(cache_key(crit), entries)
            for crit, kept in learned.items():
                cols[crit].update(kept)

        try:
            got, missing = await self.run_in_thread(from_columns)
            for start in range(0, len(missing), _SEARCH_SLICE):
                await self.run_in_thread(slice_keys, got, missing[start:start + _SEARCH_SLICE])
        finally:
            await self.run_in_thread(load.flush)
        if missing:
            view = list(index.uids)

            def grow() -> None:  # may prune a column of 100k: off the event loop
                for crit, col in cols.items():
                    KEYS.grew(folder, crit, col, view)

            await self.run_in_thread(grow)
        keys.values = {crit: cast("list[KeyValue]", got[crit]) for crit in stored if crit != "THREAD"}
        if "THREAD" in got:
            fields = cast("list[ThreadFields]", got["THREAD"])

            def inputs() -> list[ThreadInput]:
                return [ThreadInput(c.uid if use_uid else c.seq, *t)
                        for c, t in zip(found, fields, strict=True)]

            keys.threads = await self.run_in_thread(inputs)
        return keys

    def _answer(self, shape: object, criteria: SearchKey) -> tuple[object | None, list[int] | None]:
        """The kept answer of ``shape`` (:mod:`.sortcache`) for this view, and the view
        to keep a new one under (None when ``criteria`` is not ALL: only ALL's answer is
        a function of the view alone)."""
        if not isinstance(criteria, AllKey):
            return None, None
        index = self._sel().index
        view = list(index.uids)
        return KEYS.answer(index.identity, shape, view), view

    def _keep_answer(self, shape: object, view: list[int] | None, result: object, size: int) -> None:
        index = self._sel().index
        if view is not None and index.uids == view:  # the view did not move while we worked
            KEYS.keep_answer(index.identity, shape, view, result, size)

    async def _sort(self, cmd: Command) -> Action:
        """SORT (RFC 5256 3), and ESORT's RETURN options (RFC 5267 3.2, RFC 9394)."""
        assert isinstance(cmd, Sort)
        shape = ("SORT", cmd.keys, cmd.uid)
        kept, view = self._answer(shape, cmd.criteria)
        found: list[searcheval.Candidate] = []
        if isinstance(kept, list):
            numbers: list[int] = kept
        else:
            found, load = await self._matching(cmd.criteria)
            wanted = frozenset(name for name, _reverse in cmd.keys)
            keys = (await self._stored_keys(found, load, wanted)).values

            def ordered() -> list[int]:
                columns: list[tuple[list[KeyValue], bool]] = []
                for name, reverse in cmd.keys:
                    if name == "ARRIVAL":
                        columns.append(([int(c.internal_date) for c in found], reverse))
                    elif name == "SIZE":
                        columns.append(([c.size for c in found], reverse))
                    else:
                        columns.append((keys[name], reverse))
                return [found[i].uid if cmd.uid else found[i].seq for i in order(len(found), columns)]

            numbers = await self.run_in_thread(ordered)
            self._keep_answer(shape, view, numbers, len(numbers))
        modseq = None
        if uses_modseq(cmd.criteria) and found:
            modseq = max(c.modseq for c in found)  # RFC 7162 3.1.5, as for SEARCH
        if cmd.returns is not None:
            response = esort_response(cmd.tag, cmd.uid, numbers, cmd.returns, cmd.partial)
            if modseq:
                response = response[:-2] + b" MODSEQ %d\r\n" % modseq
        else:
            response = sort_response(numbers)
            if modseq:
                response = response[:-2] + b" (MODSEQ %d)\r\n" % modseq
        self._untagged(response)
        self._ok(cmd.tag, "SORT completed")
        return Action.NONE

    async def _thread(self, cmd: Command) -> Action:
        """THREAD (RFC 5256 3-4): ORDEREDSUBJECT, REFERENCES, REFS."""
        assert isinstance(cmd, Thread)
        shape = ("THREAD", cmd.algorithm, cmd.uid)
        kept, view = self._answer(shape, cmd.criteria)
        if isinstance(kept, str):
            data = kept
        else:
            found, load = await self._matching(cmd.criteria)
            inputs = (await self._stored_keys(found, load, frozenset({"THREAD"}), cmd.uid)).threads
            data = await self.run_in_thread(thread, inputs, cmd.algorithm)
            self._keep_answer(shape, view, data, len(found))
        self._untagged(b"* THREAD " + data.encode("ascii") + b"\r\n" if data else b"* THREAD\r\n")
        self._ok(cmd.tag, "THREAD completed")
        return Action.NONE

    async def _fetch(self, cmd: Command) -> Action:
        assert isinstance(cmd, Fetch)
        sel = self._sel()
        index = sel.index
        if cmd.vanished and ("QRESYNC" not in self.enabled or not cmd.uid or cmd.changedsince is None):
            raise Refused("VANISHED needs QRESYNC enabled, UID FETCH and CHANGEDSINCE", status="BAD")
        uids = self._resolve(cmd.sequence_set, cmd.uid)
        with_modseq = False
        asks_modseq = any(isinstance(i, Attribute) and i.name == "MODSEQ" for i in cmd.items)
        if cmd.changedsince is not None or asks_modseq:
            self.condstore = True
            with_modseq = True
        elif self.condstore and any(isinstance(i, Attribute) and i.name == "FLAGS" for i in cmd.items):
            with_modseq = True  # RFC 7162 3.1.4.1: FLAGS come with MODSEQ once CONDSTORE is on
        if cmd.changedsince is not None:
            since = cmd.changedsince
            if cmd.vanished:
                gone, _complete = await self.run_in_thread(index.vanished_since, since)
                # Not a message still in the view (expunged elsewhere, held): that one gets
                # a VANISHED of its own, which does shift the sequence numbers.
                wanted = [u for u in gone if cmd.sequence_set.contains(u, max(index.uidnext - 1, 1))
                          and index.seq(u) is None]
                if wanted:
                    self._untagged(fmt.vanished(wanted, earlier=True))
            uids = [u for u in uids if index.modseq(u) > since]
        force: frozenset[int] = frozenset()
        if not sel.readonly and any(
                (isinstance(i, BodySection) and i.sets_seen)
                or (isinstance(i, Attribute) and i.name in ("RFC822", "RFC822.TEXT")) for i in cmd.items):
            unseen = [u for u in uids if "\\Seen" not in index.flags(u)]
            if unseen:
                changed, _failed = await self.run_in_thread(index.store_flags, unseen, ["\\Seen"], "add")
                force = frozenset(changed)
                if changed:
                    self._notify_others([index.dir])
        plan = FetchPlan.of(cmd.items)
        # RFC 7162 3.2.4: with QRESYNC every FETCH response carries the UID.
        with_uid = cmd.uid or "QRESYNC" in self.enabled
        renderer = Renderer(index, sel.cache, plan, with_uid=with_uid, with_modseq=with_modseq,
                            force_flags=force)
        # Whole bodies go in smaller chunks, and the next chunk is rendered (files read in
        # the worker) while this one is encrypted and sent: the two overlap.
        size = _FETCH_CHUNK_FULL if plan.need_full else _FETCH_CHUNK
        chunks = [uids[start:start + size] for start in range(0, len(uids), size)]
        pending = asyncio.ensure_future(self.run_in_thread(renderer.render, chunks[0])) if chunks else None
        try:
            for i in range(len(chunks)):
                assert pending is not None
                try:
                    responses = await pending
                except UnknownCTE as e:  # RFC 3516 4.3
                    pending = None
                    raise Refused(f"unknown Content-Transfer-Encoding {str(e)[:40]!r}",
                                  code="UNKNOWN-CTE") from None
                pending = (asyncio.ensure_future(self.run_in_thread(renderer.render, chunks[i + 1]))
                           if i + 1 < len(chunks) else None)
                if plan.need_full:
                    self.out.writelines(responses)
                else:
                    self.out.write(b"".join(responses))  # many small ones: one buffer
                await self.out.drain()
        finally:
            if pending is not None:  # the connection failed mid-way: the render runs out alone
                pending.add_done_callback(lambda f: f.cancelled() or f.exception())
        if renderer.missing:
            # Expunged by another session or program, not yet announced (RFC 2180 4.1.1):
            # left out, and said so, as Dovecot does.
            self._ok(cmd.tag, "Some messages were already expunged", code="EXPUNGEISSUED")
            return Action.NONE
        self._ok(cmd.tag, "FETCH completed")
        return Action.NONE

    async def _store(self, cmd: Command) -> Action:
        assert isinstance(cmd, Store)
        sel = self._sel()
        index = sel.index
        if sel.readonly:
            raise ReadOnlyMailbox()
        uids = self._resolve(cmd.sequence_set, cmd.uid)
        flags = [f for f in cmd.flags if f.upper() != "\\RECENT"]
        mode: StoreMode = "add" if cmd.mode == "+" else "remove" if cmd.mode == "-" else "replace"
        if cmd.unchangedsince is not None:
            self.condstore = True
        changed, failed = await self.run_in_thread(
            index.store_flags, uids, flags, mode, cmd.unchangedsince)
        if changed:
            self._notify_others([index.dir])
        changed_set = set(changed)
        failed_set = set(failed)
        out = [self._new_keywords(changed)] if any(f[0] != "\\" for f in flags) else []
        # A silent STORE without CONDSTORE answers nothing per message: no walk over them.
        # RFC 2180 4.2.1: a STORE to a message expunged elsewhere is ignored (flag_rows
        # leaves those out).
        rows = [] if cmd.silent and not self.condstore else index.flag_rows(uids)
        flag_lists: dict[tuple[frozenset[str], bool], bytes] = {}
        for seq, uid, names, recent, modseq in rows:
            if uid in failed_set:
                continue
            if cmd.silent:
                if uid in changed_set:  # CONDSTORE: the new MODSEQ even when silent
                    out.append(b"* %d FETCH (UID %d MODSEQ (%d))\r\n" % (seq, uid, modseq))
                continue
            listed = flag_lists.get((names, recent))
            if listed is None:
                listed = flag_lists[(names, recent)] = fmt.flags(
                    sorted(names | {"\\Recent"} if recent else names))
            if self.condstore:
                out.append(b"* %d FETCH (UID %d FLAGS %s MODSEQ (%d))\r\n" % (seq, uid, listed, modseq))
            else:
                out.append(b"* %d FETCH (UID %d FLAGS %s)\r\n" % (seq, uid, listed))
        if out:
            self.out.write(b"".join(out))
        if failed:
            numbers = failed if cmd.uid else [s for u in failed if (s := index.seq(u)) is not None]
            self._ok(cmd.tag, "Conditional STORE failed for some messages", code=fmt.code_modified(numbers))
        else:
            self._ok(cmd.tag, "STORE completed")
        return Action.NONE

    async def _copy(self, cmd: Command) -> Action:
        assert isinstance(cmd, Copy)
        sel = self._sel()
        move = cmd.name == "MOVE"
        if move and sel.readonly:
            raise ReadOnlyMailbox()
        tree = self._tree()
        name = "INBOX" if cmd.mailbox.upper() == "INBOX" else cmd.mailbox
        dest_path = tree.path(name)
        if not await self.run_in_thread(tree.exists, name):
            raise Refused("no such mailbox", code="TRYCREATE")
        uids = self._resolve(cmd.sequence_set, cmd.uid)
        dest = await self._other_index(name, dest_path)
        source = sel.index

        def copy() -> tuple[int, list[tuple[int, int]]]:
            if move:
                # MOVE within the account leaves its usage as it was: no quota check
                # (RFC 9208 4.3 asks it only of what adds), so a full user can file mail.
                if dest is not source:
                    dest.sync()
                return dest.uidvalidity, source.copy_to(dest, uids)
            root, limits = self._quota_of()
            nbytes = sum(source.message(u).size for u in uids)
            with quota.reserve([(root, limits, nbytes, len(uids))]):
                if dest is not source:
                    dest.sync()
                return dest.uidvalidity, source.copy_to(dest, uids)

        uidvalidity, pairs = await self.run_in_thread(copy)
        if pairs:
            self._notify_others([dest_path])
        code = None
        if pairs:
            code = fmt.code_copyuid(uidvalidity, [s for s, _d in pairs], [d for _s, d in pairs])
        if not move:
            if dest is source and pairs:
                await self._announce_own()
            self._ok(cmd.tag, "COPY completed", code=code)
            return Action.NONE
        if code is not None:
            self._untagged(fmt.untagged_status("OK", "Moved", code=code))
        moved = [s for s, _d in pairs]

        def expunge_moved() -> ChangeSet:
            source.store_flags(moved, ["\\Deleted"], "add")
            return source.expunge(moved)

        # Sequence numbers of these EXPUNGEs are those of the client's view: messages others
        # expunged stay in it until a command that may tell (execute, _send_updates).
        changes = await self.run_in_thread(expunge_moved) if moved else ChangeSet()
        self._write_changes(ChangeSet(expunged=changes.expunged, expunged_seqs=changes.expunged_seqs))
        if changes.expunged:
            self._notify_others([source.dir])
        if dest is source and pairs:
            await self._announce_own()  # after the EXPUNGEs, as Dovecot
        self._ok(cmd.tag, "MOVE completed")
        return Action.NONE


@dataclass
class _Keys:
    """What ``_stored_keys`` gives: per sort criterion, each message's comparable value;
    for THREAD, each message's ``ThreadInput``."""

    values: dict[str, list[KeyValue]]
    threads: list[ThreadInput]
