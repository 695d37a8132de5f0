"""One IMAP session: the state machine of RFC 3501/9051 over parsed commands.

The transport (``server.py``) feeds parsed commands in and tells the framer what the
session answered (``Action``); everything that touches the disk (the Maildir index,
mailbox tree, message files) runs in worker threads, so a 100,000-message FETCH never
stalls other sessions. Untagged updates follow RFC 3501 7.4.1: changes made by others
are reported inside the response to a command, before its tagged response, never after it
(then no command is in progress and a client takes them for part of its next command).
Expunges by others are held back during FETCH, STORE, SEARCH and COPY/MOVE by sequence
number, because EXPUNGE would shift the numbers the client is using; meanwhile those
messages stay in the session's view (their sequence numbers still name them), and FETCH of
one answers what the index still knows (flags, UID, sizes, dates) or, if its content is
needed and the file is gone, leaves it out and ends with ``OK [EXPUNGEISSUED]``, as
Dovecot does. See :meth:`IMAPSession.execute`.
"""

from __future__ import annotations

import asyncio
import enum
import logging
import sqlite3
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from mailserver.auth.login import AuthResult, loggable
from mailserver.fsutil import describe_error, is_disk_full
from mailserver.imap.fetchcache import FetchCache
from mailserver.storage.api import (
    ChangeSet,
    CorruptIndex,
    KeywordLimit,
    MailboxError,
    MailboxStore,
    MailboxView,
    ReadOnlyMailbox,
    StoreMode,
)

from . import format as fmt
from . import searcheval
from .backend import IMAPBackend
from .commands import (
    Append,
    Authenticate,
    Command,
    Copy,
    Enable,
    Fetch,
    Id,
    List,
    Login,
    Lsub,
    MailboxCommand,
    Rename,
    Search,
    Select,
    SimpleCommand,
    Status,
    Store,
    UidExpunge,
)
from .fetch import Attribute, BodySection
from .fetcher import FetchPlan, Renderer, SearchLoader
from .mailboxes import DELIMITER, pattern_matches
from .search import uses_modseq
from .seqset import SequenceSet

log = logging.getLogger("pymaild.imap")

SYSTEM_FLAGS = ("\\Answered", "\\Flagged", "\\Deleted", "\\Seen", "\\Draft")
_FETCH_CHUNK = 500
_FETCH_CHUNK_FULL = 25  # messages per chunk when whole bodies are read
_SEARCH_SLICE = 500
_STATUS_CACHE = 8


class State(enum.Enum):
    NOT_AUTHENTICATED = "not authenticated"
    AUTHENTICATED = "authenticated"
    SELECTED = "selected"
    LOGOUT = "logout"


class Action(enum.Enum):
    """What the transport must do with the framer after a command."""

    NONE = "none"  # answered; read the next command
    RESUME = "resume"  # a pausing command (AUTHENTICATE/IDLE/STARTTLS) was answered: resume
    CONTINUE_AUTH = "continue-auth"  # a "+" challenge was sent
    IDLE = "idle"  # "+ idling" was sent
    STARTTLS = "starttls"  # tagged OK sent: start the TLS handshake now
    CLOSE = "close"  # BYE sent (LOGOUT, fatal error): close the connection


class Output:
    """The transport side the session writes to."""

    def write(self, data: bytes) -> None:  # pragma: no cover - interface
        raise NotImplementedError

    def writelines(self, pieces: Sequence[bytes]) -> None:
        """Several responses at once, not joined first (big bodies are not copied again);
        the transport may send them with one writev or one run of TLS records."""
        for data in pieces:
            self.write(data)

    async def drain(self) -> None:  # pragma: no cover - interface
        raise NotImplementedError


class Refused(Exception):
    """A command refused with a tagged NO (or BAD)."""

    def __init__(self, text: str, code: str | None = None, status: str = "NO") -> None:
        super().__init__(text)
        self.text = text
        self.code = code
        self.status = status


@dataclass
class Selected:
    name: str
    index: MailboxView
    cache: FetchCache
    hub_key: str
    readonly: bool
    keywords: list[str] = field(default_factory=list)  # as last sent in * FLAGS


class IMAPSession:
    def __init__(self, backend: IMAPBackend, out: Output, *, client_ip: str, listener: str, tls: bool,
                 starttls_available: bool, session_id: str = "") -> None:
        self.backend = backend
        self.out = out
        self.client_ip = client_ip
        self.listener = listener
        self.tls = tls
        self.starttls_available = starttls_available
        self.id = session_id
        self.state = State.NOT_AUTHENTICATED
        self.user: str | None = None
        self.login_name = "-"  # kept after LOGOUT, for the disconnect log line
        self.tree: MailboxStore | None = None
        self.selected: Selected | None = None
        self.enabled: set[str] = set()
        self.condstore = False  # a CONDSTORE-enabling command was seen (RFC 7162 3.1)
        self.idling = False
        self._idle_tag = ""
        self._dirty = False
        self._wake: asyncio.Event | None = None
        # While a command runs its tagged response waits here, so that the updates it may
        # carry (_send_updates) go out before it, never after it.
        self._in_command = False
        self._tagged: bytes | None = None
        self._idle_tagged: bytes | None = None
        self._auth_tag = ""
        self.auth_failures = 0  # failed LOGIN/AUTHENTICATE on this connection
        self._status_indexes: OrderedDict[Path, MailboxView] = OrderedDict()
        self.errors = 0
        self.last_activity = time.monotonic()

    # ================================================================ capabilities

    def capabilities(self) -> list[str]:
        caps = ["IMAP4rev1", "SASL-IR", "LITERAL+", "ID", "ENABLE", "IDLE"]
        if self.state is State.NOT_AUTHENTICATED:
            if self.starttls_available and not self.tls:
                caps.append("STARTTLS")
            if self.tls:
                caps.append("AUTH=PLAIN")
            else:
                caps.append("LOGINDISABLED")
            return caps
        return [
            *caps, "NAMESPACE", "UIDPLUS", "MOVE", "UNSELECT", "CHILDREN", "SPECIAL-USE", "LIST-EXTENDED",
            "LIST-STATUS", "CONDSTORE", "QRESYNC", "ESEARCH", "STATUS=SIZE",
            f"APPENDLIMIT={self.backend.limits.max_append_size}",
        ]

    # ================================================================ entry points

    def greeting(self) -> bytes:
        return fmt.untagged_status("OK", f"{self.backend.hostname} pymaild IMAP ready",
                                   code=fmt.code_capability(self.capabilities()))

    async def execute(self, cmd: Command) -> Action:
        """Run one command; every response (untagged and tagged) is written to ``out``.

        The handler's tagged response is held until the changes by others that this
        command may carry are written (:meth:`_send_updates`): RFC 3501 7.4.1 / RFC 9051
        7.5.1 allow them only while a command is in progress."""
        self.last_activity = time.monotonic()
        handler = _HANDLERS.get(cmd.name)
        if handler is None:
            self.out.write(fmt.tagged(cmd.tag, "BAD", f"{cmd.name} is not supported"))
            return Action.NONE
        if self.state.name not in handler[1]:
            return self._wrong_state(cmd)
        pausing = cmd.name in ("AUTHENTICATE", "IDLE", "STARTTLS")
        self._in_command = True
        self._tagged = None
        try:
            try:
                action = await handler[0](self, cmd) or Action.NONE
            except Refused as exc:
                self._tagged = fmt.tagged(cmd.tag, exc.status, exc.text, code=exc.code)
                action = Action.RESUME if pausing else Action.NONE
            except MailboxError as exc:
                self._tagged = fmt.tagged(cmd.tag, "NO", str(exc), code=exc.code)
                action = Action.NONE
            except ReadOnlyMailbox:
                self._tagged = fmt.tagged(cmd.tag, "NO", "mailbox is read-only (EXAMINE)", code="READ-ONLY")
                action = Action.NONE
            except KeywordLimit as exc:
                self._tagged = fmt.tagged(cmd.tag, "NO", str(exc), code=exc.code)
                action = Action.NONE
            except (OSError, sqlite3.OperationalError) as exc:
                # A full disk or an I/O error (in a file or in a folder's SQLite index) fails
                # this command, not the session. Disk full is [OVERQUOTA], as Dovecot says it.
                log.error("session=%s user=%s %s failed: %s", self.id, self.user, cmd.name,
                          describe_error(exc))
                if is_disk_full(exc):
                    text, code = f"{cmd.name} failed: not enough disk space", fmt.CODE_OVERQUOTA
                else:
                    reason = exc.strerror if isinstance(exc, OSError) else str(exc)
                    text, code = f"{cmd.name} failed: {reason or 'server error'}", "SERVERBUG"
                self._tagged = fmt.tagged(cmd.tag, "NO", text, code=code)
                action = Action.RESUME if pausing else Action.NONE
            if self._tagged is not None:
                await self._send_updates(cmd)
        finally:
            self._in_command = False
            tagged, self._tagged = self._tagged, None
        if tagged is not None:
            self.out.write(tagged)
        return action

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

    def _wrong_state(self, cmd: Command) -> Action:
        resume = cmd.name in ("AUTHENTICATE", "IDLE", "STARTTLS")
        if self.state is State.NOT_AUTHENTICATED:
            text = f"{cmd.name} is not allowed before logging in"
        elif self.state is State.AUTHENTICATED and cmd.name in _SELECTED_ONLY:
            text = f"{cmd.name} needs a selected mailbox (SELECT first)"
        else:
            text = f"{cmd.name} is not allowed now"
        self.out.write(fmt.tagged(cmd.tag, "BAD", text))
        return Action.RESUME if resume else Action.NONE

    async def after_command(self, cmd: Command) -> None:
        """Nothing: a command's updates are sent inside its response, before its tagged
        line (:meth:`execute`). After the tagged response no command is in progress and
        RFC 3501 7.4.1 forbids EXPUNGE; the transport still calls this hook."""

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

    def mailbox_changed(self) -> None:
        """Hub callback: someone else changed the selected folder."""
        self._dirty = True
        if self._wake is not None:
            self._wake.set()

    def close(self) -> None:
        self._deselect()
        indexes = list(self._status_indexes.values())
        self._status_indexes.clear()
        _off_loop(*(index.close for index in indexes))
        if self.user is not None:
            self.backend.release_session(self.user)
            self.user = None
        self.state = State.LOGOUT

    # ================================================================ helpers

    def _ok(self, tag: str, text: str, code: str | None = None) -> None:
        line = fmt.tagged(tag, "OK", text, code=code)
        if self._in_command:
            self._tagged = line  # written by execute() after the command's updates
        else:
            self.out.write(line)

    def _untagged(self, data: bytes) -> None:
        self.out.write(data)

    def _sel(self) -> Selected:
        assert self.selected is not None
        return self.selected

    def _tree(self) -> MailboxStore:
        assert self.tree is not None
        return self.tree

    def _resolve(self, seqset: SequenceSet, uid: bool) -> list[int]:
        """UIDs (ascending) that a sequence set names in the current view."""
        if seqset.saved:
            raise Refused("$ (SEARCHRES) is not supported", status="BAD")
        index = self._sel().index
        view = index.uids
        if uid:
            largest = view[-1] if view else 0
            out: list[int] = []
            for lo, hi in seqset.resolve(largest):
                out.extend(index.uids_between(lo, hi))
            return out
        n = len(view)
        spans = seqset.resolve(n)
        if spans and spans[-1][1] > n:
            raise Refused(f"message sequence number out of range (mailbox has {n})", status="BAD")
        return [view[s - 1] for lo, hi in spans for s in range(lo, hi + 1)]

    async def _report_changes(self, hold_expunges: bool = False) -> None:
        sel = self.selected
        if sel is None:
            return
        self._dirty = False
        try:
            changes = await asyncio.to_thread(sel.index.sync, hold_expunges)
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
        new = await asyncio.to_thread(index.announce_new)  # takes the folder lock
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

    def _deselect(self) -> None:
        sel = self.selected
        if sel is None:
            return
        self.selected = None
        self.backend.hub.unregister(sel.hub_key, self)
        _off_loop(sel.index.close, sel.cache.close)

    def _notify_others(self, paths: Sequence[Path]) -> None:
        self.backend.hub.changed(paths, origin=self)

    async def _other_index(self, name: str, path: Path) -> MailboxView:
        """A view of the folder ``name`` (at ``path``) that is not (necessarily) the selected
        one, for STATUS, APPEND and COPY; a few are kept open per session (opening costs a
        load)."""
        sel = self.selected
        if sel is not None and sel.index.dir == path:
            return sel.index
        index = self._status_indexes.pop(path, None)
        if index is None:
            # Read-only view: STATUS must not claim \Recent or move new/ to cur/ (the
            # session that SELECTs the folder does); APPEND and COPY into it still work.
            index = self._tree().open(name, read_only=True)
        self._status_indexes[path] = index
        while len(self._status_indexes) > _STATUS_CACHE:
            _p, old = self._status_indexes.popitem(last=False)
            await asyncio.to_thread(old.close)
        return index

    # ================================================================ any state

    async def _capability(self, cmd: Command) -> Action:
        self._untagged(fmt.capability(self.capabilities()))
        self._ok(cmd.tag, "CAPABILITY completed")
        return Action.NONE

    async def _noop(self, cmd: Command) -> Action:
        # The folder is synced by execute() (_send_updates), before this tagged OK.
        self._ok(cmd.tag, f"{cmd.name} completed")
        return Action.NONE

    async def _logout(self, cmd: Command) -> Action:
        self._untagged(fmt.untagged_status("BYE", f"{self.backend.hostname} logging out"))
        self._ok(cmd.tag, "LOGOUT completed")
        self.close()
        return Action.CLOSE

    async def _id(self, cmd: Command) -> Action:
        assert isinstance(cmd, Id)
        if cmd.params:
            shown = " ".join(f"{loggable(k)}={loggable(v or '')}" for k, v in cmd.params[:6]
                             if k.lower() in ("name", "version"))
            log.info("id session=%s client=%s %s", self.id, self.client_ip, shown[:160])
        self._untagged(fmt.untagged(b"ID", fmt.format_value(["name", "pymaild", "vendor", "pymaild"])))
        self._ok(cmd.tag, "ID completed")
        return Action.NONE

    async def _enable(self, cmd: Command) -> Action:
        assert isinstance(cmd, Enable)
        done = []
        for cap in cmd.capabilities:
            # RFC 5161: what we do not support is ignored, not refused (mutt sends UTF8=ACCEPT).
            if cap in ("CONDSTORE", "QRESYNC") and cap not in self.enabled:
                self.enabled.add(cap)
                done.append(cap)
                if cap == "QRESYNC":
                    self.enabled.add("CONDSTORE")
                self.condstore = True
        self._untagged(b"* ENABLED" + b"".join(b" " + c.encode() for c in done) + b"\r\n")
        self._ok(cmd.tag, "ENABLE completed")
        return Action.NONE

    # ================================================================ not authenticated

    async def _starttls(self, cmd: Command) -> Action:
        if self.tls or not self.starttls_available:
            raise Refused("TLS is already active" if self.tls else "STARTTLS is not available", status="BAD")
        self._ok(cmd.tag, "Begin TLS negotiation now")
        return Action.STARTTLS

    def tls_started(self) -> None:
        self.tls = True

    async def _login(self, cmd: Command) -> Action:
        assert isinstance(cmd, Login)
        if not self.tls:
            return self._refused_without_tls(cmd.tag, "LOGIN")
        return await self._check_credentials(cmd.tag, cmd.username, cmd.password)

    async def _authenticate(self, cmd: Command) -> Action:
        assert isinstance(cmd, Authenticate)
        if not self.tls:
            action = self._refused_without_tls(cmd.tag, "AUTHENTICATE")
            return Action.RESUME if action is Action.NONE else action
        if cmd.mechanism != "PLAIN":
            raise Refused(f"mechanism {cmd.mechanism[:20]} is not supported (use PLAIN)", code="CANNOT")
        if cmd.initial_response is None:
            self._auth_tag = cmd.tag
            self.out.write(b"+ \r\n")
            return Action.CONTINUE_AUTH
        return await self._plain(cmd.tag, cmd.initial_response)

    async def auth_response(self, tag: str, data: bytes | None) -> Action:
        """The client's answer to the ``+`` challenge (None: it cancelled with ``*``)."""
        if data is None:
            self.out.write(fmt.tagged(tag, "BAD", "authentication cancelled"))
            return Action.NONE  # the framer already reads commands again
        return await self._plain(tag, data)

    async def _plain(self, tag: str, data: bytes) -> Action:
        parts = data.split(b"\x00")
        if len(parts) != 3:
            self.out.write(fmt.tagged(tag, "BAD", "malformed PLAIN response"))
            return Action.RESUME
        try:
            authzid, user, password = (p.decode("utf-8") for p in parts)
        except UnicodeDecodeError:
            self.out.write(fmt.tagged(tag, "BAD", "PLAIN response is not UTF-8"))
            return Action.RESUME
        if authzid and authzid.strip().lower() != user.strip().lower():
            # mbsync sends authzid == login name: fine. Acting as someone else: never.
            self.backend.throttle.failure(self.client_ip, user.strip().lower())
            return self._login_failed(tag, "authorization identity must be the login name",
                                      "AUTHORIZATIONFAILED", Action.RESUME)
        try:
            action = await self._check_credentials(tag, user, password)
        except Refused as exc:
            self.out.write(fmt.tagged(tag, exc.status, exc.text, code=exc.code))
            return Action.RESUME
        return Action.RESUME if action is Action.NONE else action

    def _refused_without_tls(self, tag: str, command: str) -> Action:
        # A client set up without STARTTLS: the operator should see it (not a fail2ban line).
        log.warning("login refused without TLS session=%s client=%s command=%s", self.id,
                    self.client_ip, command)
        return self._login_failed(tag, "Log in only after STARTTLS, so the password is never sent"
                                  " in clear text", "PRIVACYREQUIRED", Action.NONE)

    def _login_failed(self, tag: str, text: str, code: str, action: Action) -> Action:
        """NO for a failed login; after a few on one connection, BYE too and close (the
        client must reconnect, and go through the per-address throttle again)."""
        self.out.write(fmt.tagged(tag, "NO", text, code=code))
        self.auth_failures += 1
        if self.auth_failures >= self.backend.logins.policy.max_failures_per_connection:
            log.info("closing session=%s client=%s: too many failed logins", self.id, self.client_ip)
            self.out.write(fmt.untagged_status("BYE", "too many failed logins"))
            return Action.CLOSE
        return action

    async def _check_credentials(self, tag: str, user: str, password: str) -> Action:
        backend = self.backend
        result = await backend.authenticate(self.client_ip, user, password, self.listener)
        if result is AuthResult.THROTTLED:  # (LoginChecker already waited failure_delay)
            return self._login_failed(tag, "too many failed logins, try again later", "UNAVAILABLE",
                                      Action.NONE)
        if result is AuthResult.INVALID:
            return self._login_failed(tag, "invalid user name or password", "AUTHENTICATIONFAILED",
                                      Action.NONE)
        user = user.strip().lower()
        if not backend.acquire_session(user):
            log.warning("session limit session=%s client=%s user=%s", self.id, self.client_ip, loggable(user))
            raise Refused(f"too many sessions for {user} (limit {backend.limits.max_sessions_per_user})",
                          code="LIMIT")
        self.user = self.login_name = user
        try:
            tree = await asyncio.to_thread(backend.mailbox_store, user)
        except OSError as exc:
            backend.release_session(user)
            self.user = None
            log.error("session=%s cannot open the mailbox of %s: %s", self.id, user, exc)
            raise Refused("your mailbox cannot be opened right now", code="UNAVAILABLE") from None
        self.tree = tree
        self.state = State.AUTHENTICATED
        log.info("login session=%s client=%s user=%s", self.id, self.client_ip, user)
        self._ok(tag, "Logged in", code=fmt.code_capability(self.capabilities()))
        return Action.NONE

    # ================================================================ authenticated

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
        if not await asyncio.to_thread(tree.exists, name):
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

        index, cache, keywords, first_unseen = await asyncio.to_thread(open_index)
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
        vanished, complete = await asyncio.to_thread(index.vanished_since, modseq)
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
        assert isinstance(cmd, MailboxCommand)
        await asyncio.to_thread(self._tree().create, cmd.mailbox)
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
        await asyncio.to_thread(tree.delete, cmd.mailbox)
        self.backend.hub.changed([path])
        self._ok(cmd.tag, "DELETE completed")
        return Action.NONE

    async def _forget_index(self, path: Path) -> None:
        index = self._status_indexes.pop(path, None)
        if index is not None:
            await asyncio.to_thread(index.close)

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
        await asyncio.to_thread(tree.rename, cmd.old, cmd.new)
        self.backend.hub.changed([old])
        self._ok(cmd.tag, "RENAME completed")
        return Action.NONE

    async def _subscribe(self, cmd: Command) -> Action:
        assert isinstance(cmd, MailboxCommand)
        tree = self._tree()
        if cmd.name == "SUBSCRIBE":
            await asyncio.to_thread(tree.subscribe, cmd.mailbox)
        else:
            await asyncio.to_thread(tree.unsubscribe, cmd.mailbox)
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
        infos = await asyncio.to_thread(tree.list)
        subscribed_only = lsub or "SUBSCRIBED" in selection
        special_only = "SPECIAL-USE" in selection
        subscribed_names = set(await asyncio.to_thread(tree.subscriptions)) if subscribed_only else set()
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
        if not await asyncio.to_thread(tree.exists, name):
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
                elif item == "HIGHESTMODSEQ":
                    values.append((item, index.highestmodseq))
                elif item == "APPENDLIMIT":
                    values.append((item, self.backend.limits.max_append_size))
            return values

        values = await asyncio.to_thread(compute)
        return fmt.status_response(name, values)

    async def _append(self, cmd: Command) -> Action:
        assert isinstance(cmd, Append)
        tree = self._tree()
        name = "INBOX" if cmd.mailbox.upper() == "INBOX" else cmd.mailbox
        path = tree.path(name)
        if not await asyncio.to_thread(tree.exists, name):
            raise Refused("no such mailbox", code="TRYCREATE")
        if not cmd.message:
            raise Refused("an empty message cannot be appended")
        flags = [f for f in cmd.flags if f.upper() != "\\RECENT"]
        index = await self._other_index(name, path)

        def append() -> tuple[int, int]:
            if index is not (self.selected.index if self.selected else None):
                index.sync()
            return index.uidvalidity, index.append(cmd.message, flags, cmd.date_time)

        uidvalidity, uid = await asyncio.to_thread(append)
        self._notify_others([path])
        if self.selected is not None and self.selected.index is index:
            self._dirty = True  # EXISTS follows, before the tagged OK (execute)
        self._ok(cmd.tag, "APPEND completed", code=fmt.code_appenduid(uidvalidity, uid))
        return Action.NONE

    # ================================================================ selected

    async def _check(self, cmd: Command) -> Action:
        self._ok(cmd.tag, "CHECK completed")
        return Action.NONE

    async def _close(self, cmd: Command) -> Action:
        sel = self._sel()
        if not sel.readonly:
            changes = await asyncio.to_thread(sel.index.expunge)
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
        changes = await asyncio.to_thread(sel.index.expunge, uids)
        self._write_changes(ChangeSet(expunged=changes.expunged, expunged_seqs=changes.expunged_seqs))
        if changes.expunged:
            self._notify_others([sel.index.dir])
        code = fmt.code_highestmodseq(sel.index.highestmodseq) if self.condstore else None
        self._ok(cmd.tag, "EXPUNGE completed", code=code)
        return Action.NONE

    async def _search(self, cmd: Command) -> Action:
        assert isinstance(cmd, Search)
        sel = self._sel()
        index = sel.index
        if uses_modseq(cmd.criteria):
            self.condstore = True

        def candidates() -> tuple[list[searcheval.Candidate], searcheval.SearchContext]:
            view = index.uids
            new = searcheval.Candidate
            cands = [new(seq, *row) for seq, row in enumerate(index.search_rows(), 1)]
            return cands, searcheval.SearchContext(max_seq=len(view), max_uid=view[-1] if view else 0)

        cands, ctx = await asyncio.to_thread(candidates)
        load = SearchLoader(index, sel.cache)
        # Content searches run in slices, each its own worker-thread call: the evaluator
        # holds the GIL, and other sessions get the interpreter between slices.
        step = len(cands) or 1
        if searcheval.content_needed(cmd.criteria) != "none":
            step = _SEARCH_SLICE
        found: list[searcheval.Candidate] = []
        try:
            for start in range(0, len(cands), step):
                found += await asyncio.to_thread(searcheval.search, cmd.criteria, cands[start:start + step],
                                                 ctx, load)
        finally:
            await asyncio.to_thread(load.flush)
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

    async def _fetch(self, cmd: Command) -> Action:
        assert isinstance(cmd, Fetch)
        sel = self._sel()
        index = sel.index
        if any(isinstance(i, BodySection) and i.binary for i in cmd.items):
            raise Refused("BINARY is not supported", status="BAD")
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
                gone, _complete = await asyncio.to_thread(index.vanished_since, since)
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
                changed, _failed = await asyncio.to_thread(index.store_flags, unseen, ["\\Seen"], "add")
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
        pending = asyncio.ensure_future(asyncio.to_thread(renderer.render, chunks[0])) if chunks else None
        try:
            for i in range(len(chunks)):
                assert pending is not None
                responses = await pending
                pending = (asyncio.ensure_future(asyncio.to_thread(renderer.render, chunks[i + 1]))
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
        changed, failed = await asyncio.to_thread(
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
        if not await asyncio.to_thread(tree.exists, name):
            raise Refused("no such mailbox", code="TRYCREATE")
        uids = self._resolve(cmd.sequence_set, cmd.uid)
        dest = await self._other_index(name, dest_path)
        source = sel.index

        def copy() -> tuple[int, list[tuple[int, int]]]:
            if dest is not source:
                dest.sync()
            return dest.uidvalidity, source.copy_to(dest, uids)

        uidvalidity, pairs = await asyncio.to_thread(copy)
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
        changes = await asyncio.to_thread(expunge_moved) if moved else ChangeSet()
        self._write_changes(ChangeSet(expunged=changes.expunged, expunged_seqs=changes.expunged_seqs))
        if changes.expunged:
            self._notify_others([source.dir])
        if dest is source and pairs:
            await self._announce_own()  # after the EXPUNGEs, as Dovecot
        self._ok(cmd.tag, "MOVE completed")
        return Action.NONE

    # ================================================================ IDLE

    async def _idle(self, cmd: Command) -> Action:
        self._idle_tag = cmd.tag
        self.idling = True
        self.out.write(b"+ idling\r\n")
        sel = self.selected
        if sel is not None:
            # A client sits in IDLE for hours: hand back the FETCH cache's share of the
            # folder's SQLite connection (a fresh FetchCache opens it again on first use).
            old = sel.cache
            sel.cache = FetchCache(sel.index.dir)
            await asyncio.to_thread(old.close)
        if self.state is State.SELECTED and sel is not None and (self._dirty or sel.index.holds_expunges):
            await self._report_changes()
        return Action.IDLE

    async def idle_wait(self, input_ready: Callable[[], Awaitable[None]]) -> bool:
        """While in IDLE: push changes as they happen and a keepalive every ``idle_keepalive``
        until ``input_ready`` returns (the client sent DONE or anything else): True. False
        when the client stayed silent past ``idle_timeout`` (the caller logs it out)."""
        self._wake = asyncio.Event()
        limits = self.backend.limits
        reader = asyncio.ensure_future(input_ready())
        waker: asyncio.Future[Literal[True]] | None = None
        try:
            while True:
                waker = asyncio.ensure_future(self._wake.wait())
                done, _ = await asyncio.wait((reader, waker), timeout=limits.idle_keepalive,
                                             return_when=asyncio.FIRST_COMPLETED)
                waker.cancel()
                if reader in done:
                    return True
                if waker in done:
                    self._wake.clear()
                    if self.state is State.SELECTED and self._dirty:
                        await self._report_changes()
                        await self.out.drain()
                    continue
                if time.monotonic() - self.last_activity > limits.idle_timeout:
                    return False
                self.out.write(b"* OK Still here\r\n")
        finally:
            # Cancelled (the connection dropped, the session task was cancelled) or failed
            # inside the wait: neither helper task may be left pending, or asyncio logs
            # "Task was destroyed but it is pending!" for each when they are collected.
            self._wake = None
            for task in (reader, waker):
                if task is not None and not task.done():
                    task.cancel()

    def idle_done(self, tag: str) -> None:
        """The client sent DONE; the tagged OK is written by :meth:`report_if_dirty`, after
        the last updates (the transport calls the two in turn)."""
        self.idling = False
        self.last_activity = time.monotonic()
        self._idle_tagged = fmt.tagged(tag, "OK", "IDLE terminated")


def _holds_expunges(cmd: Command) -> bool:
    """RFC 3501 7.4.1: no EXPUNGE during FETCH, STORE or SEARCH by sequence number (the
    UID forms may carry them); COPY and MOVE by number are held to the same rule, so the
    numbers a client sends next still name what it thinks they do."""
    return cmd.name in ("FETCH", "STORE", "SEARCH", "COPY", "MOVE") and not getattr(cmd, "uid", False)


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


def _off_loop(*closers: Callable[[], None]) -> None:
    """Run ``closers`` in a worker thread when a loop runs (closing an index takes a lock
    and may wait on the disk), else here; a failing one does not stop the others."""

    def run() -> None:
        for close in closers:
            try:
                close()
            except Exception:
                log.exception("closing a mailbox index or cache failed")

    try:
        asyncio.get_running_loop().run_in_executor(None, run)
    except RuntimeError:  # no running loop: tests, or after the loop stopped
        run()


Handler = Callable[[IMAPSession, Command], Awaitable[Action]]
_ANY = ("NOT_AUTHENTICATED", "AUTHENTICATED", "SELECTED")
_AUTH = ("AUTHENTICATED", "SELECTED")
_SEL = ("SELECTED",)
_SELECTED_ONLY = {"CHECK", "CLOSE", "UNSELECT", "EXPUNGE", "SEARCH", "FETCH", "STORE", "COPY", "MOVE"}
_HANDLERS: dict[str, tuple[Handler, tuple[str, ...]]] = {
    "CAPABILITY": (IMAPSession._capability, _ANY),
    "NOOP": (IMAPSession._noop, _ANY),
    "LOGOUT": (IMAPSession._logout, _ANY),
    "ID": (IMAPSession._id, _ANY),
    "ENABLE": (IMAPSession._enable, _AUTH),
    "STARTTLS": (IMAPSession._starttls, ("NOT_AUTHENTICATED",)),
    "LOGIN": (IMAPSession._login, ("NOT_AUTHENTICATED",)),
    "AUTHENTICATE": (IMAPSession._authenticate, ("NOT_AUTHENTICATED",)),
    "NAMESPACE": (IMAPSession._namespace, _AUTH),
    "SELECT": (IMAPSession._select, _AUTH),
    "EXAMINE": (IMAPSession._select, _AUTH),
    "CREATE": (IMAPSession._create, _AUTH),
    "DELETE": (IMAPSession._delete, _AUTH),
    "RENAME": (IMAPSession._rename, _AUTH),
    "SUBSCRIBE": (IMAPSession._subscribe, _AUTH),
    "UNSUBSCRIBE": (IMAPSession._subscribe, _AUTH),
    "LIST": (IMAPSession._list, _AUTH),
    "LSUB": (IMAPSession._list, _AUTH),
    "STATUS": (IMAPSession._status, _AUTH),
    "APPEND": (IMAPSession._append, _AUTH),
    "IDLE": (IMAPSession._idle, _AUTH),
    "CHECK": (IMAPSession._check, _SEL),
    "CLOSE": (IMAPSession._close, _SEL),
    "UNSELECT": (IMAPSession._unselect, _SEL),
    "EXPUNGE": (IMAPSession._expunge, _SEL),
    "SEARCH": (IMAPSession._search, _SEL),
    "FETCH": (IMAPSession._fetch, _SEL),
    "STORE": (IMAPSession._store, _SEL),
    "COPY": (IMAPSession._copy, _SEL),
    "MOVE": (IMAPSession._copy, _SEL),
}

__all__ = ["Action", "IMAPSession", "Output", "SimpleCommand", "State"]
