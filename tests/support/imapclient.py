"""An in-tree IMAP client that keeps a model of its session's view and checks every response.

imaplib hides the order of untagged responses, which is exactly what RFC 3501 7.4.1 is
about, so this client reads the wire itself (asyncio streams, real TLS) and feeds every
response into :class:`ViewModel` the moment it is read:

* the view is the ordered list of UIDs the server has told this session about (sequence
  number n = index n-1, ``None`` where EXISTS announced a message whose UID is not learnt
  yet); it changes only by untagged EXISTS, EXPUNGE and VANISHED, and gets UIDs filled in
  by FETCH responses;
* an EXPUNGE or VANISHED while no command is in progress, or while a FETCH, STORE,
  SEARCH or COPY by sequence number runs, is a violation (RFC 3501 7.4.1, RFC 9051 7.5.1,
  RFC 7162 3.2.10); so is one during a MOVE by sequence number for a message that MOVE
  did not move (the others' expunges must wait for a command that allows them);
* every FETCH's sequence number must map to the UID the view holds; UIDs must ascend with
  sequence numbers; EXISTS never announces fewer messages than the view holds;
  VANISHED (EARLIER) never names a message of the view; a STORE's FETCH answers carry
  what the STORE set; SEARCH never names a number outside the view;
* a tagged BAD is always a violation (the client only sends what its view allows); a
  tagged NO only when the caller says it may come.

:class:`Violation` carries the session's recent transcript. Other tests can use
:class:`IMAPClient` alone as a raw asyncio client (``await c.command("NOOP")``).
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import re
import ssl
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

FORBID_EXPUNGE = {"FETCH", "STORE", "SEARCH", "COPY"}  # by sequence number: RFC 3501 7.4.1


class Violation(AssertionError):
    """The server broke a rule the model checks."""


# ---------------------------------------------------------------- parsing

Token = Any  # str (atom), bytes (quoted or literal), None (NIL), list (parenthesised)

_ATOM_END = b" ()\r\n"


def parse_tokens(data: bytes) -> list[Token]:
    """One response (literals inline, as on the wire) as nested tokens."""
    stack: list[list[Token]] = [[]]
    i, n = 0, len(data)
    while i < n:
        c = data[i:i + 1]
        if c in (b" ", b"\r", b"\n"):
            i += 1
        elif c == b"(":
            stack.append([])
            i += 1
        elif c == b")":
            done = stack.pop()
            stack[-1].append(done)
            i += 1
        elif c == b'"':
            j = i + 1
            out = bytearray()
            while data[j:j + 1] != b'"':
                if data[j:j + 1] == b"\\":
                    j += 1
                out += data[j:j + 1]
                j += 1
            stack[-1].append(bytes(out))
            i = j + 1
        elif c == b"{":
            j = data.index(b"}", i)
            size = int(data[i + 1:j].rstrip(b"+"))
            start = data.index(b"\n", j) + 1
            stack[-1].append(data[start:start + size])
            i = start + size
        else:
            j = i
            depth = 0
            while j < n:
                ch = data[j:j + 1]
                if ch == b"[":
                    depth += 1
                elif ch == b"]":
                    depth -= 1
                elif depth == 0 and ch in (b" ", b"(", b")", b"\r", b"\n"):
                    break
                j += 1
            atom = data[i:j].decode("latin-1")
            stack[-1].append(None if atom.upper() == "NIL" else atom)
            i = j
    while len(stack) > 1:  # unbalanced: keep what there is
        done = stack.pop()
        stack[-1].append(done)
    return stack[0]


def parse_set(text: str) -> list[int]:
    """A UID set / sequence set without ``*`` as a sorted list."""
    out: set[int] = set()
    for part in text.split(","):
        if ":" in part:
            a, b = (int(x) for x in part.split(":"))
            out.update(range(min(a, b), max(a, b) + 1))
        elif part:
            out.add(int(part))
    return sorted(out)


def make_set(numbers: Iterable[int]) -> str:
    nums = sorted(set(numbers))
    parts: list[str] = []
    i = 0
    while i < len(nums):
        j = i
        while j + 1 < len(nums) and nums[j + 1] == nums[j] + 1:
            j += 1
        parts.append(str(nums[i]) if i == j else f"{nums[i]}:{nums[j]}")
        i = j + 1
    return ",".join(parts)


_CODE = re.compile(r"^\[([^\]]*)\]")


@dataclass
class Tagged:
    status: str  # OK, NO, BAD
    code: str  # inside [ ], "" if none
    text: str
    untagged: list[list[Token]] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return self.status == "OK"


@dataclass
class CommandInfo:
    """What the model must know about the command in progress."""

    name: str  # FETCH, STORE, UID-less name
    uid: bool = False
    line: str = ""
    targets: set[int] = field(default_factory=set)  # UIDs a STORE/MOVE works on
    store: tuple[str, frozenset[str]] | None = None  # ("+"|"-"|"", flags) of a STORE
    silent: bool = False
    select: str | None = None  # the folder a SELECT/EXAMINE opens
    answered: set[int] = field(default_factory=set)  # targets whose STORE answer was seen


# ---------------------------------------------------------------- the model


class ViewModel:
    """One session's view of its selected folder, as the server has told it."""

    def __init__(self, name: str, history: int = 200) -> None:
        self.name = name
        self.folder: str | None = None
        self.view: list[int | None] = []
        self.flags: dict[int, frozenset[str]] = {}
        self.modseq: dict[int, int] = {}
        self.gone: set[int] = set()  # UIDs this session was told are expunged
        self.current: CommandInfo | None = None
        self.qresync = False
        self.highestmodseq = 0
        self.uidvalidity = 0
        self.transcript: collections.deque[str] = collections.deque(maxlen=history)
        self.violation: Violation | None = None
        self.counts: collections.Counter[str] = collections.Counter()

    # ------------------------------------------------------------ helpers

    def fail(self, text: str) -> None:
        if self.violation is None:
            tail = "\n".join(self.transcript)
            self.violation = Violation(f"{self.name}: {text}\n--- last lines of {self.name}:\n{tail}")

    def note(self, line: str) -> None:
        self.transcript.append(line)

    def known(self) -> list[int]:
        return [u for u in self.view if u is not None]

    def seq_of(self, uid: int) -> int | None:
        try:
            return self.view.index(uid) + 1
        except ValueError:
            return None

    def reset(self, folder: str | None) -> None:
        self.folder = folder
        self.view = []
        self.flags = {}
        self.modseq = {}
        self.gone = set()

    # ------------------------------------------------------------ untagged responses

    def untagged(self, tokens: list[Token]) -> None:
        if len(tokens) < 2:
            return
        first = tokens[1]
        if isinstance(first, str) and first.isdigit() and len(tokens) > 2:
            number = int(first)
            kind = str(tokens[2]).upper()
            if kind == "EXISTS":
                self._exists(number)
            elif kind == "EXPUNGE":
                self._expunge(number)
            elif kind == "FETCH":
                self._fetch(number, tokens[3] if len(tokens) > 3 and isinstance(tokens[3], list) else [])
            return
        kind = str(first).upper()
        if kind == "VANISHED":
            earlier = len(tokens) > 3 and isinstance(tokens[2], list)
            uids = parse_set(str(tokens[-1]))
            self._vanished(uids, earlier)
        elif kind in ("SEARCH",):
            self._search([int(t) for t in tokens[2:] if isinstance(t, str) and t.isdigit()])
        elif kind == "BYE" and (self.current is None or self.current.name != "LOGOUT"):
            self.fail("unexpected BYE")
        elif kind == "OK" and len(tokens) > 2 and isinstance(tokens[2], str):
            code = tokens[2]
            if code.startswith("[HIGHESTMODSEQ "):
                self.highestmodseq = int(code[15:-1])
            elif code.startswith("[UIDVALIDITY "):
                self.uidvalidity = int(code[13:-1])

    def _check_expunge_allowed(self, what: str, uids: Iterable[int | None]) -> None:
        cur = self.current
        if cur is None:
            self.fail(f"{what} while no command is in progress (RFC 3501 7.4.1)")
            return
        if cur.name == "IDLE" or cur.uid:
            return
        if cur.name in FORBID_EXPUNGE:
            self.fail(f"{what} during {cur.name} by sequence number (RFC 3501 7.4.1)")
        elif cur.name == "MOVE":
            others = [u for u in uids if u not in cur.targets]
            if others:
                self.fail(f"{what} during MOVE by sequence number for messages it did not move: {others}")

    def _exists(self, n: int) -> None:
        self.counts["exists"] += 1
        if n < len(self.view):
            self.fail(f"EXISTS {n} is less than the {len(self.view)} messages of the view "
                      f"(EXPUNGE, not EXISTS, reports a shrink)")
            return
        self.view.extend([None] * (n - len(self.view)))

    def _expunge(self, seq: int) -> None:
        self.counts["expunge"] += 1
        if not 1 <= seq <= len(self.view):
            self.fail(f"EXPUNGE {seq} outside the view of {len(self.view)}")
            return
        uid = self.view[seq - 1]
        self._check_expunge_allowed(f"* {seq} EXPUNGE (uid {uid})", [uid])
        del self.view[seq - 1]
        if uid is not None:
            self.gone.add(uid)
            self.flags.pop(uid, None)

    def _vanished(self, uids: list[int], earlier: bool) -> None:
        if earlier:
            self.counts["vanished_earlier"] += 1
            present = [u for u in uids if u in self.view]
            if present:
                self.fail(f"VANISHED (EARLIER) names messages still in the view: {present[:10]}")
            return
        self.counts["vanished"] += 1
        self._check_expunge_allowed(f"VANISHED {make_set(uids)}", uids)
        for u in uids:
            if u in self.view:
                self.view.remove(u)
            elif None in self.view:
                # A message announced by EXISTS whose UID this session has not learnt yet:
                # one of the unknown slots between the known UIDs below and above it (a run
                # of unknown slots: which one does not matter to the model).
                slots = [i for i, v in enumerate(self.view) if v is None]
                below = [i for i in slots if all(k is None or k < u for k in self.view[:i])
                         and all(k is None or k > u for k in self.view[i + 1:])]
                if not below:
                    self.fail(f"VANISHED {u}: not in the view")
                    continue
                del self.view[below[0]]
            elif u not in self.gone:
                self.fail(f"VANISHED {u}: not in the view")
            self.gone.add(u)
            self.flags.pop(u, None)

    def _fetch(self, seq: int, items: list[Token]) -> None:
        self.counts["fetch"] += 1
        if not 1 <= seq <= len(self.view):
            self.fail(f"FETCH for sequence number {seq} outside the view of {len(self.view)}")
            return
        data: dict[str, Token] = {}
        for i in range(0, len(items) - 1, 2):
            data[str(items[i]).upper()] = items[i + 1]
        have = self.view[seq - 1]
        uid = int(data["UID"]) if "UID" in data else have
        if "UID" in data:
            assert uid is not None
            if have is None:
                lower = [v for v in self.view[:seq - 1] if v is not None]
                upper = [v for v in self.view[seq:] if v is not None]
                if (lower and lower[-1] >= uid) or (upper and upper[0] <= uid):
                    self.fail(f"FETCH {seq} UID {uid} out of UID order in the view")
                    return
                if uid in self.gone:
                    self.fail(f"FETCH {seq} UID {uid}: a message this session was told is expunged")
                    return
                self.view[seq - 1] = uid
            elif have != uid:
                self.fail(f"FETCH {seq} says UID {uid}, the view has UID {have} at {seq}")
                return
        cur = self.current
        answer = False
        if cur is not None and cur.store is not None and uid in cur.targets and uid not in cur.answered:
            # The first FETCH is the STORE's answer (FLAGS, or UID MODSEQ if .SILENT);
            # later ones may report others' changes since.
            cur.answered.add(uid)
            answer = True
        if "FLAGS" in data and uid is not None:
            flags = frozenset(str(f) for f in data["FLAGS"] or [] if str(f) != "\\Recent")
            self.flags[uid] = flags
            if answer and cur is not None and cur.store is not None and not cur.silent:
                mode, wanted = cur.store
                if mode == "+" and not wanted <= flags:
                    self.fail(f"STORE +FLAGS {sorted(wanted)}: FETCH {seq} answers {sorted(flags)}")
                elif mode == "-" and wanted & flags:
                    self.fail(f"STORE -FLAGS {sorted(wanted)}: FETCH {seq} answers {sorted(flags)}")
                elif mode == "" and wanted != flags:
                    self.fail(f"STORE FLAGS {sorted(wanted)}: FETCH {seq} answers {sorted(flags)}")
        if "MODSEQ" in data and uid is not None and isinstance(data["MODSEQ"], list):
            value = int(data["MODSEQ"][0])
            if value < self.modseq.get(uid, 0):
                self.fail(f"MODSEQ of UID {uid} went down: {self.modseq[uid]} -> {value}")
            self.modseq[uid] = value

    def _search(self, numbers: list[int]) -> None:
        cur = self.current
        if cur is None or cur.uid:
            return
        bad = [n for n in numbers if n > len(self.view)]
        if bad:
            self.fail(f"SEARCH names sequence numbers outside the view of {len(self.view)}: {bad[:5]}")


# ---------------------------------------------------------------- the client


class IMAPClient:
    """A raw asyncio IMAP client whose every response goes through a :class:`ViewModel`."""

    def __init__(self, name: str = "c") -> None:
        self.model = ViewModel(name)
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None
        self._tags = 0
        self._waiting: tuple[str, asyncio.Future[Tagged]] | None = None
        self._continuation: asyncio.Future[None] | None = None
        self._collected: list[list[Token]] = []
        self._task: asyncio.Task[None] | None = None
        self.closed = False
        self.allow_bye = False

    async def connect(self, host: str, port: int, ctx: ssl.SSLContext | None) -> list[Token]:
        self.reader, self.writer = await asyncio.open_connection(host, port, ssl=ctx, limit=1 << 22)
        greeting = await self._read_response()
        self._task = asyncio.get_running_loop().create_task(self._read_loop())
        return parse_tokens(greeting)

    async def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
            with contextlib.suppress(OSError, asyncio.TimeoutError, ssl.SSLError):
                await asyncio.wait_for(self.writer.wait_closed(), 2)
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._task

    # ------------------------------------------------------------ wire

    async def _read_response(self) -> bytes:
        assert self.reader is not None
        line = await self.reader.readline()
        if not line:
            return b""
        out = bytearray(line)
        while True:
            m = re.search(rb"\{(\d+)\+?\}\r\n$", line)
            if not m:
                return bytes(out)
            out += await self.reader.readexactly(int(m.group(1)))
            line = await self.reader.readline()
            out += line

    async def _read_loop(self) -> None:
        model = self.model
        try:
            while True:
                raw = await self._read_response()
                if not raw:
                    break
                model.note("S: " + raw[:300].decode("latin-1").rstrip("\r\n"))
                if raw.startswith(b"+"):
                    if self._continuation is not None and not self._continuation.done():
                        self._continuation.set_result(None)
                    else:
                        model.fail("unexpected continuation request")
                    continue
                tokens = parse_tokens(raw)
                if raw.startswith(b"* "):
                    if self.allow_bye and len(tokens) > 1 and str(tokens[1]).upper() == "BYE":
                        continue
                    model.untagged(tokens)
                    self._collected.append(tokens)
                    continue
                tag = str(tokens[0]) if tokens else ""
                if self._waiting is None or self._waiting[0] != tag:
                    model.fail(f"tagged response for a command not sent: {raw[:80]!r}")
                    continue
                status = str(tokens[1]).upper() if len(tokens) > 1 else ""
                parts = raw.split(b" ", 2)
                rest = parts[2].decode("utf-8", "replace").strip() if len(parts) > 2 else ""
                m = _CODE.match(rest)
                code = m.group(1) if m else ""
                text = rest[m.end():].strip() if m else rest
                result = Tagged(status, code, text, self._collected)
                self._collected = []
                fut = self._waiting[1]
                self._waiting = None
                model.current = None  # nothing is in progress from here on
                if not fut.done():
                    fut.set_result(result)
        except (OSError, ssl.SSLError, asyncio.IncompleteReadError) as exc:
            model.note(f"connection error: {exc!r}")
        finally:
            self.closed = True
            for fut in ([self._waiting[1]] if self._waiting else []) + (
                    [self._continuation] if self._continuation else []):
                if not fut.done():
                    fut.set_exception(ConnectionError(f"{model.name}: connection closed"))

    def _send(self, data: bytes) -> None:
        assert self.writer is not None
        self.model.note("C: " + data[:300].decode("latin-1").rstrip("\r\n"))
        self.writer.write(data)

    def next_tag(self) -> str:
        self._tags += 1
        return f"{self.model.name}.{self._tags}"

    async def command(self, line: str, info: CommandInfo | None = None, *, literal: bytes | None = None,
                      timeout: float = 60.0) -> Tagged:
        """Send ``line`` (plus a LITERAL+ literal) and wait for its tagged response."""
        if self.closed:
            raise ConnectionError(f"{self.model.name}: connection closed")
        tag = self.next_tag()
        fut: asyncio.Future[Tagged] = asyncio.get_running_loop().create_future()
        self._waiting = (tag, fut)
        self.model.current = info or CommandInfo(line.split(" ", 1)[0].upper(), line=line)
        if literal is not None:
            self._send(f"{tag} {line} {{{len(literal)}+}}\r\n".encode() + literal + b"\r\n")
        else:
            self._send(f"{tag} {line}\r\n".encode())
        assert self.writer is not None
        await self.writer.drain()
        return await asyncio.wait_for(fut, timeout)

    async def idle(self, seconds: float) -> Tagged:
        """IDLE for ``seconds`` (the model allows any update meanwhile), then DONE."""
        fut = await self.idle_start()
        await asyncio.sleep(seconds)
        return await self.idle_done(fut)

    async def idle_start(self) -> asyncio.Future[Tagged]:
        """Send IDLE and wait for the ``+``; the future is the tagged response to come."""
        tag = self.next_tag()
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[Tagged] = loop.create_future()
        self._continuation = loop.create_future()
        self._waiting = (tag, fut)
        self.model.current = CommandInfo("IDLE", line="IDLE")
        self._send(f"{tag} IDLE\r\n".encode())
        await asyncio.wait_for(self._continuation, 30)
        self._continuation = None
        return fut

    async def idle_done(self, fut: asyncio.Future[Tagged]) -> Tagged:
        self._send(b"DONE\r\n")
        return await asyncio.wait_for(fut, 30)

    def abort(self) -> None:
        """Drop the connection at once (a laptop that leaves the network), no LOGOUT."""
        if self.writer is not None:
            self.writer.transport.abort()
