"""Many long-lived IMAP sessions on one account issuing random commands, each checked by
its own :class:`~tests.support.imapclient.ViewModel` (see that module for the rules).

Used by ``tests/test_imap_stress.py`` (a short run in CI) and ``bench/imap_stress.py``
(ten minutes). Everything random comes from one seed (per session: ``seed * 1000 + i``);
the seed is in every failure message. Session kinds: plain, CONDSTORE, QRESYNC (VANISHED
instead of EXPUNGE, SELECT ... (QRESYNC ...) replays, UID FETCH ... (CHANGEDSINCE m
VANISHED)) and IDLE-heavy ones.

At the end every session stops, runs NOOP (which may announce everything held back) and
fetches UIDs and flags of its whole folder: every session's view must then be the same.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import random
import ssl
import time
from dataclasses import dataclass, field

from .imapclient import CommandInfo, IMAPClient, Tagged, Violation, make_set

FLAG_POOL = ["\\Seen", "\\Flagged", "\\Answered", "\\Draft", "$Work", "Kw1", "Kw2"]
OTHER = "Other"


@dataclass
class StressConfig:
    host: str
    port: int
    ctx: ssl.SSLContext | None
    user: str
    password: str
    sessions: int = 12
    seconds: float = 40.0
    seed: int = 1
    idle_sessions: int = 2
    qresync_sessions: int = 3
    condstore_sessions: int = 2
    max_inbox: int = 60
    min_inbox: int = 10
    max_other: int = 300
    think: float = 0.004  # up to this long between commands: untagged data sent after a
    # tagged response then arrives while no command is in progress, where the model sees it


@dataclass
class StressResult:
    seed: int
    commands: collections.Counter[str] = field(default_factory=collections.Counter)
    responses: collections.Counter[str] = field(default_factory=collections.Counter)
    no: collections.Counter[str] = field(default_factory=collections.Counter)
    violations: list[str] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def total(self) -> int:
        return sum(self.commands.values())

    def summary(self) -> str:
        top = ", ".join(f"{k} {v}" for k, v in self.commands.most_common())
        seen = ", ".join(f"{k} {v}" for k, v in sorted(self.responses.items()))
        nos = ", ".join(f"{k} {v}" for k, v in self.no.items()) or "none"
        return (f"seed {self.seed}: {self.total} commands in {self.seconds:.0f} s, "
                f"{len(self.violations)} violations\n  commands: {top}\n  untagged seen: {seen}\n"
                f"  expected NO answers: {nos}")


class _Session:
    def __init__(self, index: int, kind: str, cfg: StressConfig, result: StressResult) -> None:
        self.i = index
        self.kind = kind  # plain, condstore, qresync, idle
        self.cfg = cfg
        self.result = result
        self.rng = random.Random(cfg.seed * 1000 + index)
        self.c = IMAPClient(f"s{index}-{kind}")
        self.last_modseq = 0  # HIGHESTMODSEQ at the last full sync (QRESYNC / CHANGEDSINCE)
        self.last_known: list[int] = []
        self.uidvalidity = 0
        self.other_size = 0

    @property
    def m(self):
        return self.c.model

    # ------------------------------------------------------------ plumbing

    def check(self) -> None:
        if self.m.violation is not None:
            raise self.m.violation

    async def run(self, line: str, info: CommandInfo | None = None, *, literal: bytes | None = None,
                  may_fail: tuple[str, ...] = ()) -> Tagged:
        name = (info.name if info else line.split(" ", 1)[0].upper())
        key = ("UID " if info is not None and info.uid else "") + name
        self.result.commands[key] += 1
        r = await self.c.command(line, info, literal=literal)
        self.check()
        if r.status == "BAD":
            self.m.fail(f"BAD for a command the view allows: {line[:120]!r} -> {r.code} {r.text}")
        elif r.status == "NO":
            if r.code.split(" ")[0] in may_fail:
                self.result.no[f"{key} NO [{r.code}]"] += 1
            else:
                self.m.fail(f"unexpected NO: {line[:120]!r} -> [{r.code}] {r.text}")
        elif r.code.startswith("EXPUNGEISSUED"):
            self.result.no[f"{key} OK [EXPUNGEISSUED]"] += 1
        self.check()
        for t in r.untagged:
            if len(t) > 2:
                word = str(t[2] if str(t[1]).isdigit() else t[1]).upper()
                self.result.responses[word] += 1
        return r

    def seqs(self, most: int = 5) -> list[int]:
        n = len(self.m.view)
        if n == 0:
            return []
        start = self.rng.randint(1, n)
        if self.rng.random() < 0.5:
            return [start]
        if self.rng.random() < 0.5:
            return list(range(start, min(n, start + self.rng.randint(1, most)) + 1))
        return sorted(self.rng.sample(range(1, n + 1), min(n, self.rng.randint(1, most))))

    def uids(self, most: int = 5) -> list[int]:
        known = self.m.known()
        if not known:
            return []
        return sorted(self.rng.sample(known, min(len(known), self.rng.randint(1, most))))

    def targets(self, seqs: list[int]) -> set[int]:
        return {u for s in seqs if (u := self.m.view[s - 1]) is not None}

    # ------------------------------------------------------------ session life

    async def start(self) -> None:
        cfg = self.cfg
        await self.c.connect(cfg.host, cfg.port, cfg.ctx)
        r = await self.run(f'LOGIN "{cfg.user}" "{cfg.password}"')
        assert r.ok, r
        if self.kind == "qresync":
            await self.run("ENABLE QRESYNC")
            self.m.qresync = True
        await self.select("INBOX")

    async def select(self, folder: str) -> None:
        m = self.m
        params = ""
        if self.kind == "condstore":
            params = " (CONDSTORE)"
        elif self.kind == "qresync" and folder == "INBOX" and self.uidvalidity and self.last_modseq:
            known = f" {make_set(self.last_known)}" if self.last_known and self.rng.random() < 0.7 else ""
            params = f" (QRESYNC ({self.uidvalidity} {self.last_modseq}{known}))"
        m.reset(folder)
        await self.run(f"SELECT {folder}{params}", CommandInfo("SELECT", select=folder))
        self.uidvalidity = m.uidvalidity
        await self.learn()

    async def learn(self) -> None:
        """Learn the UIDs of messages the view has only counted (after EXISTS)."""
        for _ in range(5):
            view = self.m.view
            if None not in view:
                break
            first = view.index(None) + 1
            if self.rng.random() < 0.5:
                await self.run(f"FETCH {first}:{len(view)} (UID FLAGS)", CommandInfo("FETCH"))
            else:
                known = [u for u in view[:first - 1] if u is not None]
                low = known[-1] + 1 if known else 1
                await self.run(f"UID FETCH {low}:* (UID FLAGS)", CommandInfo("FETCH", uid=True))
        if self.m.folder == "INBOX" and None not in self.m.view:
            self.last_known = self.m.known()
            self.last_modseq = self.m.highestmodseq

    async def sync_point(self) -> None:
        """NOOP (which may announce everything) and remember HIGHESTMODSEQ for QRESYNC."""
        await self.run("NOOP")
        await self.learn()

    # ------------------------------------------------------------ operations

    async def op_noop(self) -> None:
        await self.run(self.rng.choice(["NOOP", "CHECK"]))
        await self.learn()

    async def op_fetch(self) -> None:
        seqs = self.seqs(8)
        if not seqs:
            return await self.op_append("INBOX")
        items = self.rng.choice(["(FLAGS)", "(UID FLAGS)", "(UID RFC822.SIZE FLAGS INTERNALDATE)",
                                 "(FLAGS BODY.PEEK[HEADER.FIELDS (SUBJECT)])", "(BODY.PEEK[])",
                                 "(UID BODY[TEXT])", "(ENVELOPE)"])
        if self.kind in ("condstore", "qresync") and self.rng.random() < 0.3:
            items = "(FLAGS MODSEQ)"
        await self.run(f"FETCH {make_set(seqs)} {items}", CommandInfo("FETCH"),
                       may_fail=("EXPUNGEISSUED",))
        await self.learn()

    async def op_uid_fetch(self) -> None:
        uids = self.uids(8)
        spec = make_set(uids) if uids and self.rng.random() < 0.7 else "1:*"
        mod = ""
        if self.kind == "condstore" and self.last_modseq and self.rng.random() < 0.5:
            mod = f" (CHANGEDSINCE {self.last_modseq})"
        elif self.kind == "qresync" and self.last_modseq and self.rng.random() < 0.6:
            mod = f" (CHANGEDSINCE {self.last_modseq} VANISHED)"
        items = self.rng.choice(["(FLAGS)", "(UID FLAGS)", "(FLAGS BODY.PEEK[HEADER])"])
        await self.run(f"UID FETCH {spec} {items}{mod}", CommandInfo("FETCH", uid=True),
                       may_fail=("EXPUNGEISSUED",))
        await self.learn()

    def _flags(self) -> tuple[str, frozenset[str]]:
        mode = self.rng.choice(["+", "+", "-", ""])
        flags = frozenset(self.rng.sample(FLAG_POOL, self.rng.randint(1, 3)))
        return mode, flags

    async def op_store(self, uid: bool = False) -> None:
        mode, flags = self._flags()
        silent = ".SILENT" if self.rng.random() < 0.25 else ""
        flag_text = " ".join(sorted(flags))
        if uid:
            uids = self.uids(6)
            if not uids:
                return
            info = CommandInfo("STORE", uid=True, targets=set(uids), store=(mode, flags), silent=bool(silent))
            await self.run(f"UID STORE {make_set(uids)} {mode}FLAGS{silent} ({flag_text})", info,
                           may_fail=("EXPUNGEISSUED",))
        else:
            seqs = self.seqs(6)
            if not seqs:
                return
            info = CommandInfo("STORE", targets=self.targets(seqs), store=(mode, flags), silent=bool(silent))
            await self.run(f"STORE {make_set(seqs)} {mode}FLAGS{silent} ({flag_text})", info,
                           may_fail=("EXPUNGEISSUED",))
        await self.learn()

    async def op_search(self) -> None:
        crit = self.rng.choice(["ALL", "FLAGGED", "UNSEEN", "KEYWORD $Work", "NOT DELETED",
                                "SUBJECT stress", "1:3"])
        if self.kind in ("condstore", "qresync") and self.rng.random() < 0.2:
            crit = f"MODSEQ {max(self.last_modseq - 5, 1)}"
        if self.rng.random() < 0.4:
            await self.run(f"UID SEARCH {crit}", CommandInfo("SEARCH", uid=True))
        elif len(self.m.view) >= 3 or crit != "1:3":
            await self.run(f"SEARCH {crit}", CommandInfo("SEARCH"))

    async def op_copy(self, uid: bool = False, move: bool = False) -> None:
        dest = OTHER if move or self.rng.random() < 0.6 else "INBOX"
        name = "MOVE" if move else "COPY"
        if uid:
            uids = self.uids(3)
            if not uids:
                return
            await self.run(f"UID {name} {make_set(uids)} {dest}",
                           CommandInfo(name, uid=True, targets=set(uids)))
        else:
            seqs = self.seqs(3)
            if not seqs:
                return
            await self.run(f"{name} {make_set(seqs)} {dest}", CommandInfo(name, targets=self.targets(seqs)))
        await self.learn()

    async def op_expunge(self) -> None:
        if self.rng.random() < 0.5:
            seqs = self.seqs(4)
            if seqs:
                await self.run(f"STORE {make_set(seqs)} +FLAGS.SILENT (\\Deleted)",
                               CommandInfo("STORE", targets=self.targets(seqs),
                                           store=("+", frozenset(["\\Deleted"])), silent=True))
            await self.run("EXPUNGE")
        else:
            uids = self.uids(4)
            if not uids:
                return
            await self.run(f"UID STORE {make_set(uids)} +FLAGS (\\Deleted)",
                           CommandInfo("STORE", uid=True, targets=set(uids),
                                       store=("+", frozenset(["\\Deleted"]))),
                           may_fail=("EXPUNGEISSUED",))
            await self.run(f"UID EXPUNGE {make_set(uids)}", CommandInfo("EXPUNGE", uid=True))
        await self.learn()

    async def op_append(self, folder: str | None = None) -> None:
        folder = folder or (OTHER if self.rng.random() < 0.3 else "INBOX")
        n = self.rng.randint(1, 10**9)
        body = (f"From: stress@example.test\r\nTo: user@example.test\r\nSubject: stress {n}\r\n"
                f"Message-ID: <{n}.{self.i}@stress.test>\r\n\r\nbody {n}\r\n").encode()
        flags = " ".join(self.rng.sample(FLAG_POOL, self.rng.randint(0, 2)))
        await self.run(f"APPEND {folder} ({flags})", CommandInfo("APPEND"), literal=body)
        await self.learn()

    async def op_list_status(self) -> None:
        choice = self.rng.random()
        if choice < 0.4:
            await self.run('LIST "" "*"')
        else:
            folder = OTHER if choice < 0.8 else "INBOX"
            r = await self.run(f"STATUS {folder} (MESSAGES UIDNEXT UNSEEN)")
            for t in r.untagged:
                if len(t) > 3 and str(t[1]).upper() == "STATUS" and str(t[2]) == OTHER:
                    vals = t[3]
                    for k in range(0, len(vals) - 1, 2):
                        if str(vals[k]).upper() == "MESSAGES":
                            self.other_size = int(vals[k + 1])
        await self.learn()

    async def op_idle(self) -> None:
        self.result.commands["IDLE"] += 1
        await self.c.idle(self.rng.uniform(0.05, 0.5 if self.kind == "idle" else 0.2))
        self.check()
        await self.learn()

    async def op_reselect(self) -> None:
        await self.select("INBOX")

    async def op_clean_other(self) -> None:
        if self.other_size < self.cfg.max_other:
            return await self.op_list_status()
        await self.select(OTHER)
        if self.m.view:
            await self.run("STORE 1:* +FLAGS.SILENT (\\Deleted)",
                           CommandInfo("STORE", store=("+", frozenset(["\\Deleted"])), silent=True))
            await self.run("EXPUNGE")
        self.other_size = 0
        await self.select("INBOX")

    # ------------------------------------------------------------ the loop

    async def loop(self, deadline: float) -> None:
        ops = [
            (self.op_noop, 5), (self.op_fetch, 14), (self.op_uid_fetch, 8),
            (lambda: self.op_store(False), 10), (lambda: self.op_store(True), 6), (self.op_search, 5),
            (lambda: self.op_copy(False), 3), (lambda: self.op_copy(True), 2),
            (lambda: self.op_copy(False, move=True), 3), (lambda: self.op_copy(True, move=True), 3),
            (self.op_expunge, 6), (self.op_append, 6), (self.op_list_status, 5), (self.op_idle, 3),
            (self.op_reselect, 1), (self.op_clean_other, 1),
        ]
        if self.kind == "idle":
            ops.append((self.op_idle, 60))
        funcs = [f for f, _w in ops]
        weights = [w for _f, w in ops]
        while time.monotonic() < deadline:
            n = len(self.m.view)
            if n > self.cfg.max_inbox and self.rng.random() < 0.5:
                op = self.rng.choice([self.op_expunge, lambda: self.op_copy(True, move=True)])
            elif n < self.cfg.min_inbox and self.rng.random() < 0.5:
                op = self.op_append
            else:
                op = self.rng.choices(funcs, weights)[0]
            await self.learn()  # so that every target of a command has a known UID
            await op()
            if self.m.folder != "INBOX":
                await self.select("INBOX")
            if self.cfg.think:
                await asyncio.sleep(self.rng.uniform(0, self.cfg.think))

    async def finish(self) -> tuple[list[int], dict[int, frozenset[str]]]:
        await self.run("NOOP")
        await self.run("UID FETCH 1:* (UID FLAGS)", CommandInfo("FETCH", uid=True))
        view = list(self.m.view)
        if None in view:
            self.m.fail(f"UIDs still unknown after UID FETCH 1:*: {view}")
            self.check()
        return [u for u in view if u is not None], {u: self.m.flags.get(u, frozenset()) for u in view if u}

    async def logout(self) -> None:
        self.c.allow_bye = True
        with contextlib.suppress(ConnectionError, Violation):
            await self.run("LOGOUT", CommandInfo("LOGOUT"))
        await self.c.close()


def _kinds(cfg: StressConfig) -> list[str]:
    kinds = (["idle"] * cfg.idle_sessions + ["qresync"] * cfg.qresync_sessions
             + ["condstore"] * cfg.condstore_sessions)
    kinds += ["plain"] * max(0, cfg.sessions - len(kinds))
    return kinds[:cfg.sessions]


async def run_stress(cfg: StressConfig) -> StressResult:
    """Run the sessions for ``cfg.seconds``; raise :class:`Violation` (with the seed) on the
    first broken rule, else return the counts."""
    result = StressResult(cfg.seed)
    sessions = [_Session(i, kind, cfg, result) for i, kind in enumerate(_kinds(cfg))]
    started = time.monotonic()
    try:
        await sessions[0].start()
        await sessions[0].run(f"CREATE {OTHER}")
        await asyncio.gather(*(s.start() for s in sessions[1:]))
        # A few messages to start with, in both folders.
        for k in range(cfg.min_inbox * 2):
            await sessions[0].op_append("INBOX" if k % 4 else OTHER)
        deadline = time.monotonic() + cfg.seconds
        tasks = [asyncio.ensure_future(s.loop(deadline)) for s in sessions]
        done, pending = await asyncio.wait(tasks, return_when=asyncio.FIRST_EXCEPTION)
        for t in pending:
            t.cancel()
        for t in done:
            if t.exception() is not None:
                raise t.exception()  # type: ignore[misc]
        # Quiet now: every session must come to the same view of INBOX.
        finals = []
        for s in sessions:
            finals.append(await s.finish())
        first_uids, first_flags = finals[0]
        for s, (uids, flags) in zip(sessions[1:], finals[1:], strict=True):
            if uids != first_uids:
                s.m.fail(f"final view differs from {sessions[0].c.model.name}'s: "
                         f"{sorted(set(uids) ^ set(first_uids))[:20]}")
            elif flags != first_flags:
                diff = [u for u in uids if flags[u] != first_flags[u]][:5]
                s.m.fail(f"final flags differ from {sessions[0].c.model.name}'s for UIDs {diff}")
            s.check()
    except Violation as exc:
        result.violations.append(str(exc))
        await asyncio.gather(*(s.c.close() for s in sessions), return_exceptions=True)
        raise Violation(f"seed {cfg.seed}: {exc}") from None
    except BaseException:
        await asyncio.gather(*(s.c.close() for s in sessions), return_exceptions=True)
        raise
    finally:
        result.seconds = time.monotonic() - started
    await asyncio.gather(*(s.logout() for s in sessions), return_exceptions=True)
    return result
