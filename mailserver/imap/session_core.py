"""What every part of an IMAP session shares: its state, the selected folder, responses.

``SessionCore`` holds one connection's state (RFC 3501 3: not authenticated,
authenticated, selected, logout), the account's folder tree and the selected folder's
view, and the helpers every command uses: the tagged OK held back until the command's
updates are written (:meth:`SessionCore._ok`), sequence sets resolved against the view,
the few other folders kept open for STATUS, APPEND and COPY. The commands are in the
``session_*`` modules (their classes extend this one); ``session.py`` puts them together
and dispatches.
"""

from __future__ import annotations

import asyncio
import enum
import logging
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import ParamSpec, Protocol, TypeVar

from mailserver.imap.fetchcache import FetchCache
from mailserver.storage import quota
from mailserver.storage.api import MailboxStore, MailboxView

from . import format as fmt
from .backend import IMAPBackend
from .errors import IMAPError, Status
from .seqset import SequenceSet

log = logging.getLogger("pymaild.imap")

_STATUS_CACHE = 8
_P = ParamSpec("_P")
_T = TypeVar("_T")


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
    COMPRESS = "compress"  # tagged OK sent: DEFLATE both directions from now on (RFC 4978)
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


class Refused(IMAPError):
    """A command the session refuses with a tagged NO (or BAD): the same shape as the
    parser's errors (status, response code, text), raised where the tag is not at hand;
    ``execute`` answers it with the command's tag."""

    def __init__(self, text: str, code: str | None = None, status: Status = "NO") -> None:
        super().__init__(None, text, code=code, status=status)

    @property
    def text(self) -> str:
        return self.message


@dataclass
class Selected:
    name: str
    index: MailboxView
    cache: FetchCache
    hub_key: str
    readonly: bool
    keywords: list[str] = field(default_factory=list)  # as last sent in * FLAGS



class ThreadRunner(Protocol):
    """How a session runs blocking work (the folder index, message files, the folder
    tree): ``asyncio.to_thread`` in the daemon, so the event loop serves other sessions
    meanwhile; a test may run it inline."""

    def __call__(self, func: Callable[_P, _T], /, *args: _P.args, **kwargs: _P.kwargs) -> Awaitable[_T]: ...


class SessionCore:
    def __init__(self, backend: IMAPBackend, out: Output, *, client_ip: str, listener: str, tls: bool,
                 starttls_available: bool, session_id: str = "", now: Callable[[], float] = time.monotonic,
                 run_in_thread: ThreadRunner = asyncio.to_thread) -> None:
        self.backend = backend
        # The session reads no clock and starts no thread itself: both are given, so a test
        # can drive it in-process with a clock it advances and with inline disk work.
        self.now = now
        self.run_in_thread = run_in_thread
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
        self.compressing = False  # COMPRESS DEFLATE was answered OK (RFC 4978)
        self._idle_tag = ""
        self._dirty = False
        self._wake: asyncio.Event | None = None  # set by mailbox_changed while the transport waits in IDLE
        self._keepalive_at = 0.0  # when the next "* OK Still here" is due in IDLE (clock of now)
        # While a command runs its tagged response waits here, so that the updates it may
        # carry (_send_updates) go out before it, never after it.
        self._in_command = False
        self._tagged: bytes | None = None
        self._idle_tagged: bytes | None = None
        self._auth_tag = ""
        self.auth_failures = 0  # failed LOGIN/AUTHENTICATE on this connection
        self._status_indexes: OrderedDict[Path, MailboxView] = OrderedDict()
        self.errors = 0
        self.last_activity = now()

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
            *caps, "NAMESPACE", "UIDPLUS", "MOVE", "UNSELECT", "CHILDREN",
            "SPECIAL-USE", "CREATE-SPECIAL-USE", "LIST-EXTENDED", "LIST-STATUS", "CONDSTORE", "QRESYNC",
            "ESEARCH", "STATUS=SIZE",
            # RFC 5256, RFC 5957, RFC 5267 (ESORT), Dovecot's THREAD=REFS
            "SORT", "SORT=DISPLAY", "ESORT", "THREAD=ORDEREDSUBJECT", "THREAD=REFERENCES", "THREAD=REFS",
            "BINARY",  # RFC 3516
            "COMPRESS=DEFLATE",  # RFC 4978
            "QUOTA", "QUOTA=RES-STORAGE", "QUOTA=RES-MESSAGE",  # RFC 9208
            f"APPENDLIMIT={self.backend.limits.max_append_size}",
        ]

    def close(self) -> None:
        self._deselect()
        indexes = list(self._status_indexes.values())
        self._status_indexes.clear()
        _off_loop(*(index.close for index in indexes))
        if self.user is not None:
            self.backend.release_session(self.user)
            self.user = None
        self.state = State.LOGOUT

    def mailbox_changed(self) -> None:
        """Hub callback: someone else changed the selected folder."""
        self._dirty = True
        if self._wake is not None:
            self._wake.set()

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

    def _deselect(self) -> None:
        sel = self.selected
        if sel is None:
            return
        self.selected = None
        self.backend.hub.unregister(sel.hub_key, self)
        _off_loop(sel.index.close, sel.cache.close)

    def _quota_of(self) -> tuple[Path, quota.Limits]:
        """The account's Maildir root and quota limits (blocks: reads the accounts DB)."""
        assert self.user is not None
        store = self.backend.store
        return store.maildir_path(self.user), store.quota_limits(self.user)

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
            await self.run_in_thread(old.close)
        return index


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
