"""SORT and THREAD keys and results kept in memory, shared by the sessions of a process.

A message's key for a criterion never changes (message files never do), and a UID names
one message for the life of a folder's index file (RFC 3501 2.3.1.1). So a folder's keys
can be kept per UID, in one column per criterion, under the folder's identity: its
directory, UIDVALIDITY and its index file's nonce (a folder deleted and recreated gets a
new file, hence new columns). A warm SORT then reads no SQLite and decodes nothing.

The last answer of each command shape (``SORT (REVERSE DATE)``, ``THREAD REFERENCES``,
UIDs or sequence numbers) over ``ALL`` is kept too, with the view it was computed on:
when a session's view is the same list of UIDs, the answer is the same (the keys are the
messages', and ``ALL`` matches the view), as Dovecot's sort index gives it back without
sorting again.

Bounded: :data:`KeyCache.max_bytes` (``imap.sort_cache_size``) bounds what the columns
and answers of all folders of the process cost, estimated from measured sizes
(:data:`ENTRY_BYTES`: a date key ~100 bytes with its dict slot, a subject ~130, a THREAD
input ~600 with two references; a kept view or answer ~40 bytes a message); past it the
least recently used answers, then columns, are dropped whole. Nothing is kept per
connection. Entries of expunged messages stay until their column is pruned (when it
holds more than twice the folder's messages) or dropped.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Sequence
from typing import Generic, TypeVar

#: (directory, UIDVALIDITY, index file nonce)
Folder = tuple[str, int, int]

#: Estimated bytes of one kept message key, by criterion (tracemalloc, 10k entries; a
#: THREAD input with two references); one number of a kept view or answer.
ENTRY_BYTES = {"THREAD": 600, "DATE": 100}
KEY_BYTES = 150  # a casemapped subject or address
NUMBER_BYTES = 40
_R = TypeVar("_R")


class _Answer(Generic[_R]):
    __slots__ = ("result", "size", "view")

    def __init__(self, view: list[int], result: _R, size: int) -> None:
        self.view = view
        self.result = result
        self.size = size


class KeyCache:
    """The process's columns of keys ``(folder, criterion) -> {uid: value}`` and its last
    answers ``(folder, shape) -> (view, result)``, least recently used first."""

    #: Estimated bytes of every column and answer of the process; 0: keep none.
    max_bytes = 64 * 1024 * 1024

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._columns: OrderedDict[tuple[Folder, str], dict[int, object]] = OrderedDict()
        self._answers: OrderedDict[tuple[Folder, object], _Answer[object]] = OrderedDict()

    # ------------------------------------------------------------------ columns

    def column(self, folder: Folder, criterion: str) -> dict[int, object]:
        """The column of ``criterion`` for ``folder`` (a new empty one if none is kept;
        it is kept once :meth:`grew` says it got entries). Read and write it from one
        worker thread at a time per call; dict updates are atomic."""
        with self._lock:
            col = self._columns.get((folder, criterion))
            if col is not None:
                self._columns.move_to_end((folder, criterion))
                return col
            return {}

    def grew(self, folder: Folder, criterion: str, col: dict[int, object], view: Sequence[int]) -> None:
        """``col`` (from :meth:`column`) got entries: keep it, pruned to ``view``'s UIDs
        when it holds more than twice as many, and drop others past the bound."""
        if len(col) > 2 * len(view) + 1000:
            keep = set(view)
            for uid in [u for u in list(col) if u not in keep]:  # list(): one step under the GIL
                col.pop(uid, None)
        with self._lock:
            if self._cost(criterion, col) > self.max_bytes:
                self._columns.pop((folder, criterion), None)
                return
            self._columns[(folder, criterion)] = col
            self._columns.move_to_end((folder, criterion))
            self._trim(keep_column=(folder, criterion))

    # ------------------------------------------------------------------ answers

    def answer(self, folder: Folder, shape: object, view: Sequence[int]) -> object | None:
        """The answer kept for ``shape`` if it was computed on the same view, else None."""
        with self._lock:
            a = self._answers.get((folder, shape))
            if a is None:
                return None
            self._answers.move_to_end((folder, shape))
        return a.result if a.view == view else None

    def keep_answer(self, folder: Folder, shape: object, view: Sequence[int], result: object,
                    size: int) -> None:
        """Keep ``result`` (``size`` numbers) as ``shape``'s answer on ``view``."""
        cost = (len(view) + size) * NUMBER_BYTES
        with self._lock:
            if cost > self.max_bytes // 2:
                self._answers.pop((folder, shape), None)
                return
            self._answers[(folder, shape)] = _Answer(list(view), result, cost)
            self._answers.move_to_end((folder, shape))
            self._trim(keep_answer=(folder, shape))

    # ------------------------------------------------------------------ bound

    def size(self) -> int:
        """The estimated bytes kept."""
        with self._lock:
            return self._total()

    @staticmethod
    def _cost(criterion: str, col: dict[int, object]) -> int:
        return len(col) * ENTRY_BYTES.get(criterion, KEY_BYTES)

    def _total(self) -> int:
        return (sum(self._cost(crit, col) for (_folder, crit), col in self._columns.items())
                + sum(a.size for a in self._answers.values()))

    def _trim(self, keep_column: tuple[Folder, str] | None = None,
              keep_answer: tuple[Folder, object] | None = None) -> None:
        """Drop the least recently used answers, then columns, until within the bound;
        what was just kept goes last."""
        total = self._total()
        for key in [k for k in self._answers if k != keep_answer]:
            if total <= self.max_bytes:
                return
            total -= self._answers.pop(key).size
        for ckey in [k for k in self._columns if k != keep_column]:
            if total <= self.max_bytes:
                return
            total -= self._cost(ckey[1], self._columns.pop(ckey))
        if total > self.max_bytes and keep_answer is not None:
            self._answers.pop(keep_answer, None)

    def clear(self) -> None:
        with self._lock:
            self._columns.clear()
            self._answers.clear()


#: The one of this process.
KEYS = KeyCache()

__all__ = ["KEYS", "Folder", "KeyCache"]
