"""Group commit for directory fsyncs: one fsync covers every rename made before it began.

Ten concurrent deliveries into the same Maildir each rename a file into ``new/`` and
must fsync ``new/`` before answering 250. Each fsync of a directory forces a journal
commit, and they queue up behind each other. A rename is durable once *any* fsync of the
directory that started after the rename has returned, so concurrent callers can share
one: the first caller fsyncs, the others wait for it, and whoever arrived while it
was running shares the next one.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from mailserver.fsutil import fsync_dir


@dataclass
class _DirState:
    requested: int = 0  # tickets handed out (one per caller, after its rename)
    done: int = 0  # every ticket <= done is durable
    running: bool = False
    cond: threading.Condition = field(default_factory=threading.Condition)


class DirectorySync:
    """``sync(path)``: returns once an fsync of ``path`` that began after the call has returned."""

    def __init__(self, fsync: Callable[[Path], None] = fsync_dir) -> None:
        self._fsync = fsync
        self._lock = threading.Lock()
        self._dirs: dict[Path, _DirState] = {}
        self.fsyncs = 0  # how many were really done (for tests and benchmarks)

    def _state(self, path: Path) -> _DirState:
        with self._lock:
            state = self._dirs.get(path)
            if state is None:
                if len(self._dirs) > 10_000:
                    # Idle entries only: a running one is in use and must stay.
                    self._dirs = {p: s for p, s in self._dirs.items() if s.running}
                state = self._dirs[path] = _DirState()
            return state

    def sync(self, path: Path) -> None:
        state = self._state(path)
        with state.cond:
            state.requested += 1
            ticket = state.requested
            while state.done < ticket:
                if state.running:
                    state.cond.wait()
                    continue
                # Our rename happened before we took the ticket, so an fsync that starts
                # now covers every ticket handed out so far.
                covers = state.requested
                state.running = True
                state.cond.release()
                try:
                    self._fsync(path)
                    self.fsyncs += 1
                except BaseException:
                    state.cond.acquire()
                    state.running = False
                    state.cond.notify_all()  # someone else retries; we report the error
                    raise
                state.cond.acquire()
                state.running = False
                state.done = max(state.done, covers)
                state.cond.notify_all()
