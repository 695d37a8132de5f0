"""The values a :class:`~mailserver.storage.index.MailboxIndex` hands out and the errors it raises.

:class:`Message` is one row of a folder's index (:mod:`.indexstore`), :class:`ChangeSet`
what a sync or expunge tells the client; the IMAP layer sees them through
:mod:`mailserver.storage.api`. The helpers below (field getters, ``_new_message``) let
every part of the index (:mod:`.index`, :mod:`.snapshots`, :mod:`.maildirscan`,
:mod:`.flagstore`) read and build 100k rows at C speed.
"""

from __future__ import annotations

import dataclasses
import operator
from typing import Literal, NamedTuple

from mailserver.storage.maildirname import letters_of

StoreMode = Literal["add", "remove", "replace"]


class ReadOnlyMailbox(Exception):
    """A write (STORE, EXPUNGE) through a read-only (EXAMINE) view."""


class KeywordLimit(Exception):
    """A STORE, APPEND or COPY would give a message more than ``max_keywords_per_message``
    keywords, or a folder more than ``max_keywords_per_folder`` distinct ones (IMAP
    ``NO [LIMIT]``). Raised before anything is changed on disk for the message."""

    code = "LIMIT"


class Message(NamedTuple):
    """One index row. A NamedTuple because 100k of them are built on a cold load."""

    uid: int
    base: str  # file name before ":2,", never changes
    sub: str  # "new" or "cur"
    suffix: str  # ":2,<letters>" or "" exactly as on disk
    modseq: int
    size: int  # RFC822.SIZE (W= or S= from the name, else the file size)
    internal_date: float  # seconds since the epoch (the file's mtime, as Dovecot does)
    extra: str  # keywords beyond the 26 letters, "\n"-separated ("" if none)

    @property
    def letters(self) -> str:
        return letters_of(self.suffix)

    @property
    def name(self) -> str:
        return self.base + self.suffix


@dataclasses.dataclass
class ChangeSet:
    """What a session must tell its client after :meth:`MailboxIndex.sync` / ``expunge``."""

    new: list[int] = dataclasses.field(default_factory=list)  # UIDs added to the view
    expunged: list[int] = dataclasses.field(default_factory=list)  # UIDs removed, ascending
    # Sequence numbers for "* n EXPUNGE", valid when sent in this (descending) order.
    expunged_seqs: list[int] = dataclasses.field(default_factory=list)
    flags: list[int] = dataclasses.field(default_factory=list)  # UIDs to send FETCH FLAGS for
    # The index was rebuilt (missing or corrupt): every UID changed; the view is reset
    # and the client must be disconnected or the mailbox re-selected.
    uidvalidity_changed: bool = False

    def __bool__(self) -> bool:
        return bool(self.new or self.expunged or self.flags or self.uidvalidity_changed)


_SUB = operator.itemgetter(2)  # Message fields, for C-speed scans of every row
_SUFFIX = operator.itemgetter(3)
_SIZE = operator.itemgetter(5)
_EXTRA = operator.itemgetter(7)
_new_message = tuple.__new__  # _new_message(Message, row): no argument parsing per row


def _keyword_count(suffix: str, extra: str) -> int:
    """Keywords of a message named with ``suffix`` (lower-case letters) plus index ``extra``."""
    return sum(c.islower() for c in letters_of(suffix)) + (extra.count("\n") + 1 if extra else 0)


def _split_extra(extra: str) -> list[str]:
    return extra.split("\n") if extra else []
