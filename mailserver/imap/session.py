"""One IMAP session: the state machine of RFC 3501/9051 over parsed commands.

The transport (``server.py``) feeds parsed commands in and tells the framer what the
session answered (``Action``); everything that touches the disk (the Maildir index,
mailbox tree, message files) runs in worker threads (the ``run_in_thread`` it is given),
so a 100,000-message FETCH never stalls other sessions. It reads time only from the clock
it is given (``now``) and starts no timer: in IDLE it tells the transport its next
deadline (:meth:`IMAPSession.next_deadline`). Untagged updates follow RFC 3501 7.4.1: changes made by others
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
import logging
import sqlite3
from collections.abc import Awaitable, Callable

from mailserver.auth.login import loggable
from mailserver.fsutil import describe_error, is_disk_full
from mailserver.imap.fetchcache import FetchCache
from mailserver.storage.api import KeywordLimit, MailboxError, ReadOnlyMailbox
from mailserver.storage.quota import OverQuota

from . import format as fmt
from .commands import Command, Compress, Enable, Id, SimpleCommand
from .session_auth import AuthCommands
from .session_core import Action, Output, Refused, State
from .session_mailboxes import MailboxCommands
from .session_quota import QuotaCommands
from .session_selected import SelectedCommands

log = logging.getLogger("pymaild.imap")


class IMAPSession(AuthCommands, MailboxCommands, SelectedCommands, QuotaCommands):
    """One connection's session: the commands of the ``session_*`` modules, dispatched by
    the table at the end of this module (the one place that maps a command to its handler
    and to the states it is allowed in)."""

    # ================================================================ entry points

    def greeting(self) -> bytes:
        return fmt.untagged_status("OK", f"{self.backend.hostname} pymaild IMAP ready",
                                   code=fmt.code_capability(self.capabilities()))

    async def execute(self, cmd: Command) -> Action:
        """Run one command; every response (untagged and tagged) is written to ``out``.

        The handler's tagged response is held until the changes by others that this
        command may carry are written (:meth:`_send_updates`): RFC 3501 7.4.1 / RFC 9051
        7.5.1 allow them only while a command is in progress."""
        self.last_activity = self.now()
        handler = _HANDLERS.get(cmd.name)
        if handler is None:
            self.out.write(fmt.tagged(cmd.tag, "BAD", f"{cmd.name} is not supported"))
            return Action.NONE
        if self.state.name not in handler[1]:
            return self._wrong_state(cmd)
        pausing = cmd.name in ("AUTHENTICATE", "IDLE", "STARTTLS", "COMPRESS")
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
            except OverQuota as exc:
                # RFC 9208 4.3 / 7: nothing was written; EXPUNGE still works to make room.
                self._tagged = fmt.tagged(cmd.tag, "NO", f"{cmd.name} failed: {exc}",
                                          code=fmt.CODE_OVERQUOTA)
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

    def _wrong_state(self, cmd: Command) -> Action:
        resume = cmd.name in ("AUTHENTICATE", "IDLE", "STARTTLS", "COMPRESS")
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

    # ================================================================ any state

    async def _capability(self, cmd: Command) -> Action:
        self._untagged(fmt.capability(self.capabilities()))
        self._ok(cmd.tag, "CAPABILITY completed")
        return Action.NONE

    async def _compress(self, cmd: Command) -> Action:
        """COMPRESS DEFLATE (RFC 4978 3): after this tagged OK, sent as it is, both
        directions are raw DEFLATE (the transport switches on Action.COMPRESS)."""
        assert isinstance(cmd, Compress)
        if self.compressing:
            raise Refused("DEFLATE is already active", code="COMPRESSIONACTIVE")
        if cmd.mechanism != "DEFLATE":  # as Dovecot answers it
            raise Refused(f"unknown compression mechanism {cmd.mechanism[:30]}")
        self.compressing = True
        self._ok(cmd.tag, "DEFLATE active")
        return Action.COMPRESS

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
            await self.run_in_thread(old.close)
        if self.state is State.SELECTED and sel is not None and (self._dirty or sel.index.holds_expunges):
            await self._report_changes()
        return Action.IDLE

    # The transport owns the one timer (server.py): while it waits for input in IDLE it
    # asks next_deadline(), calls on_deadline() when that time comes and push_changes()
    # when mailbox_changed() woke it. Times are those of the session's clock (``now``).

    def begin_idle_wait(self) -> asyncio.Event:
        """The transport starts waiting for the client in IDLE: the event that
        :meth:`mailbox_changed` sets; the keepalive interval starts now."""
        self._wake = asyncio.Event()
        self._keepalive_at = self.now() + self.backend.limits.idle_keepalive
        return self._wake

    def end_idle_wait(self) -> None:
        self._wake = None

    def next_deadline(self) -> float | None:
        """When the transport must call :meth:`on_deadline`: the next keepalive while it
        waits in IDLE; None otherwise (outside IDLE the transport times out silence itself)."""
        return self._keepalive_at if self._wake is not None else None

    def on_deadline(self) -> bool:
        """The deadline came. False: the client stayed silent past ``idle_timeout`` (RFC
        3501 5.4 autologout; the transport says BYE). Else ``* OK Still here`` (for NATs
        that forget idle flows) and the next keepalive is armed."""
        limits = self.backend.limits
        now = self.now()
        if now - self.last_activity > limits.idle_timeout:
            return False
        self.out.write(b"* OK Still here\r\n")
        self._keepalive_at = now + limits.idle_keepalive
        return True

    async def push_changes(self) -> None:
        """:meth:`mailbox_changed` woke the transport in IDLE: what changed, now (RFC 2177);
        the keepalive interval starts again."""
        if self.state is State.SELECTED and self._dirty:
            await self._report_changes()
            await self.out.drain()
        self._keepalive_at = self.now() + self.backend.limits.idle_keepalive

    def idle_done(self, tag: str) -> None:
        """The client sent DONE; the tagged OK is written by :meth:`report_if_dirty`, after
        the last updates (the transport calls the two in turn)."""
        self.idling = False
        self.last_activity = self.now()
        self._idle_tagged = fmt.tagged(tag, "OK", "IDLE terminated")


Handler = Callable[[IMAPSession, Command], Awaitable[Action]]
_ANY = ("NOT_AUTHENTICATED", "AUTHENTICATED", "SELECTED")
_AUTH = ("AUTHENTICATED", "SELECTED")
_SEL = ("SELECTED",)
_SELECTED_ONLY = {"CHECK", "CLOSE", "UNSELECT", "EXPUNGE", "SEARCH", "SORT", "THREAD", "FETCH", "STORE",
                  "COPY", "MOVE"}
_HANDLERS: dict[str, tuple[Handler, tuple[str, ...]]] = {
    "CAPABILITY": (IMAPSession._capability, _ANY),
    "NOOP": (IMAPSession._noop, _ANY),
    "LOGOUT": (IMAPSession._logout, _ANY),
    "ID": (IMAPSession._id, _ANY),
    "ENABLE": (IMAPSession._enable, _AUTH),
    "COMPRESS": (IMAPSession._compress, _AUTH),
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
    "GETQUOTA": (IMAPSession._getquota, _AUTH),
    "GETQUOTAROOT": (IMAPSession._getquotaroot, _AUTH),
    "SETQUOTA": (IMAPSession._setquota, _AUTH),
    "IDLE": (IMAPSession._idle, _AUTH),
    "CHECK": (IMAPSession._check, _SEL),
    "CLOSE": (IMAPSession._close, _SEL),
    "UNSELECT": (IMAPSession._unselect, _SEL),
    "EXPUNGE": (IMAPSession._expunge, _SEL),
    "SEARCH": (IMAPSession._search, _SEL),
    "SORT": (IMAPSession._sort, _SEL),
    "THREAD": (IMAPSession._thread, _SEL),
    "FETCH": (IMAPSession._fetch, _SEL),
    "STORE": (IMAPSession._store, _SEL),
    "COPY": (IMAPSession._copy, _SEL),
    "MOVE": (IMAPSession._copy, _SEL),
}

__all__ = ["Action", "IMAPSession", "Output", "SimpleCommand", "State"]

