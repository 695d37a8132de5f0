"""The storage interface under IMAP: what one mailbox store must offer (issue 11).

The IMAP layer (``mailserver/imap/``) reaches mail only through three interfaces, written
here as :class:`typing.Protocol` classes, so a second store (a database shared by several
machines, say) can be added beside the Maildir one without touching the IMAP code:

* :class:`MailboxStore`: one account's folders: names, LIST, CREATE/DELETE/RENAME,
  subscriptions, and opening a folder as a :class:`MailboxView`. The Maildir++
  implementation is :class:`mailserver.imap.mailboxes.MailboxTree`.
* :class:`MailboxView`: one session's view of one folder (what SELECT, EXAMINE, STATUS,
  APPEND and COPY work on): sequence numbers <-> UIDs, index rows and flags, APPEND,
  STORE, EXPUNGE, COPY, changes since a MODSEQ, message bytes. The Maildir
  implementation is :class:`mailserver.storage.index.MailboxIndex`.
* :class:`ChangeNotifier` / :class:`ChangeListener`: telling the sessions that have a
  folder selected that someone changed it. The in-process implementation is
  :class:`mailserver.imap.hub.MailboxHub`.

Conformance is structural and checked by mypy: each implementation module ends with a
``TYPE_CHECKING`` assignment of its class to the Protocol, so a method that drifts from
the contract here fails ``mypy``. The Protocols cost nothing at run time: the IMAP layer
calls the implementation's methods directly, with no wrapper per message.

Terms (RFC 3501 2.3.1, RFC 9051 2.3.1, RFC 7162):

* *UID*: a message's number in its folder, strictly ascending in the order messages are
  added, never reused while the folder keeps its UIDVALIDITY (RFC 3501 2.3.1.1).
* *UIDVALIDITY*: changes only when UIDs of the folder are no longer what clients were
  told (folder recreated, index lost): a folder name never gets the same value twice.
* *MODSEQ*: per message, raised on each change of its flags; a folder's HIGHESTMODSEQ is
  the largest, and also covers expunges (RFC 7162 3.1.1, 3.2.10).
* *View*: the UIDs this session's client has been told about, in sequence order; sequence
  number ``n`` is ``uids[n - 1]``. It changes only in :meth:`MailboxView.sync`,
  :meth:`MailboxView.announce_new` and the view's own :meth:`MailboxView.expunge`, so
  changes made by others wait until the session may report them (RFC 3501 7.4.1).

Every method blocks (disk, network); the IMAP layer calls them from worker threads, one
call at a time per view. Errors: :class:`ReadOnlyMailbox`, :class:`KeywordLimit` and
(for folder operations) :class:`MailboxError` are the refusals a client hears as NO;
:class:`CorruptIndex` or :class:`FileNotFoundError` from :meth:`MailboxView.sync` mean
the folder went away under the session (it is deselected); any other :class:`OSError`
(or :class:`sqlite3.OperationalError`, from the Maildir index) is a storage failure: the
command fails with NO, the session goes on. A second store raises :class:`OSError`
subclasses for its failures.

Row types are the Maildir implementation's (:class:`Message`, :class:`ChangeSet`), re-
exported here: a second store fills ``base``/``sub``/``suffix`` with its own stable
per-message key and the IMAP system flags as Maildir letters (``:2,<letters>``), and
keywords beyond them in ``extra``.
"""

from __future__ import annotations

import builtins
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import BinaryIO, Protocol, Self

from mailserver.storage.indexstore import CorruptIndex
from mailserver.storage.indextypes import ChangeSet, KeywordLimit, Message, ReadOnlyMailbox, StoreMode

__all__ = [
    "ChangeListener", "ChangeNotifier", "ChangeSet", "CorruptIndex", "FlagRow", "KeywordLimit",
    "MailboxError", "MailboxInfo", "MailboxStore", "MailboxView", "Message", "ReadOnlyMailbox",
    "SearchRow", "StoreMode",
]


class MailboxError(Exception):
    """A folder operation refused: ``code`` is the IMAP response code (NONEXISTENT,
    ALREADYEXISTS, CANNOT, INUSE, LIMIT...) and the message the text of the tagged NO."""

    def __init__(self, message: str, code: str | None = None) -> None:
        super().__init__(message)
        self.code = code


@dataclass(frozen=True, slots=True)
class MailboxInfo:
    """One LIST answer."""

    name: str  # wire name (INBOX in upper case)
    attributes: tuple[str, ...]  # \HasChildren/\HasNoChildren, \Noselect, special use
    subscribed: bool
    selectable: bool


#: ``(uid, flags, recent, size, internal date, modseq)``: one message as SEARCH sees it.
SearchRow = tuple[int, frozenset[str], bool, int, float, int]
#: ``(seq, uid, flags, recent, modseq)``: one message as a STORE answer shows it.
FlagRow = tuple[int, int, frozenset[str], bool, int]


class MailboxView(Protocol):
    """One session's view of one folder.

    Open one with :meth:`MailboxStore.open`, then :meth:`sync` (that is SELECT) before
    any lookup; lookups are in memory (no I/O, no lock) and answer for the view as of the
    last :meth:`sync`/:meth:`announce_new`/:meth:`expunge`. Changes by others never
    alter the view between those calls. A message expunged by another session or program
    but not yet reported stays in the view ("held") with its last known row: lookups still
    answer for it and :meth:`open` may fail with :class:`FileNotFoundError`.

    Durability: :meth:`append`, :meth:`copy_to`, :meth:`store_flags` and :meth:`expunge`
    return only once their change is durable (message data and directory entries
    fsynced, index committed): a crash after the return loses nothing the client was told.
    """

    #: The folder's identity: equal for two views of the same folder, and the key the
    #: session uses for its caches, the FETCH cache directory and :class:`ChangeNotifier`.
    #: (A store not on a local file system gives a local directory for those caches.)
    dir: Path

    @property
    def uidvalidity(self) -> int:
        """UIDVALIDITY (RFC 3501 2.3.1.1), non-zero once synced."""
        ...

    @property
    def identity(self) -> tuple[str, int, int]:
        """What names this folder's messages by UID while it lives: (directory,
        UIDVALIDITY, a number that differs for a folder deleted and made again)."""
        ...

    @property
    def uidnext(self) -> int:
        """UIDNEXT as of the last sync: consistent with the view (RFC 3501 2.3.1.1)."""
        ...

    @property
    def highestmodseq(self) -> int:
        """HIGHESTMODSEQ the client may be told: no change it has not been shown lies at or
        below it (RFC 7162 3.1.2.1)."""
        ...

    @property
    def uids(self) -> Sequence[int]:
        """The view's UIDs, ascending: sequence number ``n`` is ``uids[n - 1]``. Read-only."""
        ...

    def __len__(self) -> int:
        """Messages in the view (EXISTS)."""
        ...

    @property
    def recent_count(self) -> int:
        """Messages of the view that are \\Recent for this session (RECENT)."""
        ...

    @property
    def holds_expunges(self) -> bool:
        """Messages expunged elsewhere are still in the view, waiting to be reported."""
        ...

    # ---------------------------------------------------------------- lookups (in memory)

    def seq(self, uid: int) -> int | None:
        """Sequence number of ``uid`` in the view, or None. O(log n)."""
        ...

    def uids_between(self, first: int, last: int) -> Sequence[int]:
        """View UIDs in ``first..last`` inclusive, ascending (a UID set range)."""
        ...

    def message(self, uid: int) -> Message:
        """The row of a message in the view (held ones included); KeyError otherwise."""
        ...

    def flags(self, uid: int) -> frozenset[str]:
        """System flags and keywords of a view message (not \\Recent: :meth:`is_recent`)."""
        ...

    def modseq(self, uid: int) -> int:
        """MODSEQ of a view message (RFC 7162 3.1.3); KeyError if not in the view."""
        ...

    def is_recent(self, uid: int) -> bool:
        """\\Recent for this session (RFC 3501 2.3.2)."""
        ...

    def view_rows(self, uids: Sequence[int]) -> list[tuple[int, Message]]:
        """``(seq, row)`` of each of ``uids`` (usually ascending) that is in the view, held
        ones included, in one pass: what FETCH renders from (hot path: one call per chunk)."""
        ...

    def flag_rows(self, uids: Sequence[int]) -> list[FlagRow]:
        """``(seq, uid, flags, recent, modseq)`` of each of ``uids`` in the view and not held:
        a STORE's untagged FETCH answers, in one pass (hot path)."""
        ...

    def search_rows(self) -> list[SearchRow]:
        """``(uid, flags, recent, size, internal date, modseq)`` of every view message in
        sequence order: what SEARCH evaluates, in one pass (hot path)."""
        ...

    def keywords(self) -> list[str]:
        """Keywords defined in the folder (the FLAGS response), in a stable order."""
        ...

    def first_unseen(self) -> int | None:
        """Sequence number of the first message without \\Seen (SELECT's UNSEEN), or None."""
        ...

    def count_without(self, letter: str) -> int:
        """View messages whose flags lack the Maildir ``letter`` ("S": STATUS UNSEEN)."""
        ...

    def count_with(self, letter: str) -> int:
        """View messages whose flags have the Maildir ``letter`` ("T": STATUS DELETED)."""
        ...

    def total_size(self) -> int:
        """Sum of RFC822.SIZE over the view (STATUS SIZE, RFC 8438)."""
        ...

    def changed_since(self, modseq: int) -> list[int]:
        """View UIDs whose MODSEQ is above ``modseq``, ascending (CHANGEDSINCE, RFC 7162
        3.1.4.1; QRESYNC's FETCH part, 3.2.5)."""
        ...

    # ---------------------------------------------------------------- reads with I/O

    def vanished_since(self, modseq: int) -> tuple[list[int], bool]:
        """``(uids, complete)``: UIDs expunged after ``modseq`` and no longer in the store
        (VANISHED (EARLIER), RFC 7162 3.2.5.1, 3.2.6), ascending. ``complete`` is False when
        the store's expunge log no longer reaches back to ``modseq``: the caller must then
        also report every UID it cannot vouch for (RFC 7162 3.2.5.2 allows the superset)."""
        ...

    def open(self, uid: int, row: Message | None = None) -> BinaryIO:
        """The message's bytes (RFC822, CRLF line ends as stored), for reading; the caller
        closes it. ``row``: the message's row if the caller has it. FileNotFoundError if
        the message is gone (expunged elsewhere, held in the view)."""
        ...

    # ---------------------------------------------------------------- changes

    def sync(self, hold_expunges: bool = False) -> ChangeSet:
        """Bring the view up to date and return what the client must now be told: new UIDs
        (EXISTS), expunged UIDs with their sequence numbers as the client knew them
        (EXPUNGE/VANISHED), UIDs whose flags others changed (FETCH FLAGS), or
        ``uidvalidity_changed`` (the session must deselect). A read-write view claims
        \\Recent for messages no session has seen. ``hold_expunges``: leave messages
        expunged elsewhere in the view (held) for a later call, for the commands during
        which RFC 3501 7.4.1 forbids EXPUNGE. Raises FileNotFoundError or
        :class:`CorruptIndex` if the folder is gone."""
        ...

    def announce_new(self) -> list[int]:
        """Move messages waiting for the view (this session's own COPY/MOVE into the folder,
        deliveries seen meanwhile) into it, without expunges by others (EXISTS may be sent
        during any command, EXPUNGE not). Returns the new UIDs, ascending."""
        ...

    def append(self, data: bytes, flags: Iterable[str] = (),
               internal_date: float | datetime | None = None) -> int:
        """APPEND ``data`` with ``flags`` (IMAP flag names; \\Recent is not one) and the
        internal date (now if None); returns the new UID (UIDPLUS APPENDUID). Durable on
        return; the message reaches this view at the next :meth:`sync`. Raises
        :class:`KeywordLimit` before storing anything; on any failure nothing is stored."""
        ...

    def store_flags(self, uids: Iterable[int], flags: Iterable[str], mode: StoreMode = "add",
                    unchanged_since: int | None = None) -> tuple[list[int], list[int]]:
        """STORE: ``(changed, failed_modified)`` UIDs, both ascending. Each changed message
        gets a new MODSEQ above every earlier one; a message whose flags end up as they
        were is not changed. ``unchanged_since`` (CONDSTORE UNCHANGEDSINCE, RFC 7162
        3.1.3): a message whose MODSEQ is above it is left alone and listed in
        ``failed_modified``. UIDs not in the view, or held, are skipped. Raises
        :class:`ReadOnlyMailbox` on a read-only view, :class:`KeywordLimit`, ValueError
        for a bad ``mode``. Durable on return."""
        ...

    def expunge(self, uids: Iterable[int] | None = None) -> ChangeSet:
        """EXPUNGE every \\Deleted message of the view, or (UID EXPUNGE, RFC 4315) those
        among ``uids``. Returns ``expunged`` UIDs (ascending) and ``expunged_seqs`` (the
        EXPUNGE responses' numbers, descending, so each is right when sent in that order);
        the view no longer holds
        them, and each expunge raises HIGHESTMODSEQ. Raises :class:`ReadOnlyMailbox`.
        Durable on return."""
        ...

    def copy_to(self, other: Self, uids: Iterable[int]) -> list[tuple[int, int]]:
        """COPY view messages into ``other`` (a view of the same store, possibly this one)
        with their flags and internal dates: ``[(source uid, new uid)]`` in source UID order
        (UIDPLUS COPYUID). Messages gone meanwhile are skipped. The copies reach ``other``'s
        view at its next :meth:`sync` or :meth:`announce_new`. Durable on return; on any
        failure no copy is left. Must not deadlock against a copy the other way."""
        ...

    def close(self) -> None:
        """Let go of the view (and anything it holds open). Idempotent."""
        ...


class MailboxStore(Protocol):
    """One account's folders, by IMAP name (hierarchy delimiter ``.``, modified UTF-7 as
    on the wire, ``INBOX`` case-insensitive).

    Refusals raise :class:`MailboxError` with the IMAP response code (NONEXISTENT,
    ALREADYEXISTS, CANNOT, INUSE, LIMIT). Changes are durable on return.
    """

    def path(self, name: str) -> Path:
        """The folder's identity (:attr:`MailboxView.dir` of its views), whether or not it
        exists. Validates the name: refuses names that are not valid (code CANNOT)."""
        ...

    def exists(self, name: str) -> bool:
        """The folder exists and is selectable."""
        ...

    def open(self, name: str, *, read_only: bool) -> MailboxView:
        """A new, not yet synced view of an existing folder. ``read_only`` (EXAMINE, STATUS):
        the view claims no \\Recent and refuses STORE/EXPUNGE, while APPEND and COPY into it
        still work. A folder that does not exist fails at the view's first sync."""
        ...

    def subscriptions(self) -> builtins.list[str]:
        """Subscribed names (some may not exist), each once (LSUB, LIST (SUBSCRIBED))."""
        ...

    def list(self) -> builtins.list[MailboxInfo]:  # (builtins: ``list`` names this method here)
        """Every folder plus the missing parents of nested ones (``\\NonExistent``
        ``\\Noselect``), INBOX first, then by name, with attributes (children, special use)
        and whether subscribed (RFC 3501 6.3.8, RFC 5258, RFC 6154)."""
        ...

    def create(self, name: str, *, use: str | None = None) -> None:
        """CREATE the folder and any missing parents (RFC 3501 6.3.3); a trailing delimiter
        is dropped. ALREADYEXISTS, CANNOT, LIMIT. ``use``: a special-use attribute the new
        folder takes (``\\Sent``, RFC 6154 3); USEATTR when it cannot, and then nothing
        is created."""
        ...

    def delete(self, name: str) -> None:
        """DELETE the folder and its messages, atomically for readers (RFC 3501 6.3.4);
        the subscription stays. INBOX: CANNOT; missing: NONEXISTENT; with children: INUSE."""
        ...

    def rename(self, old: str, new: str) -> None:
        """RENAME with its children and subscriptions (RFC 3501 6.3.5); RENAME of INBOX
        moves its messages into ``new`` and leaves INBOX empty. The UIDVALIDITY of a name
        is never reused. ALREADYEXISTS, NONEXISTENT, CANNOT."""
        ...

    def subscribe(self, name: str) -> None:
        """Add ``name`` to the subscriptions (need not exist). LIMIT."""
        ...

    def unsubscribe(self, name: str) -> None:
        """Remove ``name`` from the subscriptions. NONEXISTENT if it was not subscribed."""
        ...


class ChangeListener(Protocol):
    """A session with a folder selected, as :class:`ChangeNotifier` sees it."""

    def mailbox_changed(self) -> None:
        """Someone else changed the selected folder: re-sync at the next point the session
        may send updates. Called on the event loop; must not block."""
        ...

    @property
    def idling(self) -> bool:
        """The session is in IDLE (a notifier may poll only folders with such sessions)."""
        ...


class ChangeNotifier(Protocol):
    """Who has which folder selected, and telling them when it changes (IDLE, and updates
    at the next command). Runs on the event loop: every method returns at once.

    A store shared by several machines needs a notifier that also hears the other
    machines' changes (the in-process hub sees this process's and polls the Maildir)."""

    def start(self) -> None:
        """Start any background work (the hub's poll of folders other programs write);
        called on the running event loop when the IMAP server starts."""
        ...

    async def stop(self) -> None:
        """Stop what :meth:`start` started; called when the IMAP server stops."""
        ...

    def register(self, folder_dir: Path | str, listener: ChangeListener) -> str:
        """``listener`` has the folder (:attr:`MailboxView.dir`) selected; returns the key
        to :meth:`unregister` with."""
        ...

    def unregister(self, key: str, listener: ChangeListener) -> None:
        """Undo :meth:`register`; unknown keys and listeners are ignored."""
        ...

    def changed(self, folder_dirs: Iterable[Path | str], origin: ChangeListener | None = None) -> None:
        """These folders changed (STORE, EXPUNGE, APPEND, COPY, delivery, DELETE, RENAME):
        call :meth:`ChangeListener.mailbox_changed` of every listener of them but ``origin``."""
        ...
