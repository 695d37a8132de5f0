"""Who has which folder selected, and telling them when it changes.

Three sources of change reach a selected folder: another IMAP session of this daemon
(it calls :meth:`MailboxHub.changed` after STORE/EXPUNGE/APPEND/COPY), a delivery by this
daemon's SMTP side (the Maildir writer's hook calls :meth:`changed`), and other programs
writing the Maildir (mbsync, a Dovecot sharing the store): for those, folders with a
session in IDLE are polled by their directory mtimes, once per ``poll_interval`` and
per folder, not per session, so a thousand IDLE connections cost a few stat() calls.

The hub only flags sessions; the session itself re-syncs its index (in a worker thread)
at the next point the RFC lets it send updates.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING

from mailserver.storage.api import ChangeListener

Listener = ChangeListener  # (the name this module used before storage/api.py)


def _stamp(folder: str) -> tuple[int, int]:
    try:
        return (os.stat(folder + "/new").st_mtime_ns, os.stat(folder + "/cur").st_mtime_ns)
    except OSError:
        return (0, 0)


class MailboxHub:
    """The in-process :class:`mailserver.storage.api.ChangeNotifier`."""

    def __init__(self, poll_interval: float = 1.0) -> None:
        self.poll_interval = poll_interval
        self._selected: dict[str, set[Listener]] = {}
        self._stamps: dict[str, tuple[int, int]] = {}
        self._task: asyncio.Task[None] | None = None

    @staticmethod
    def key(folder_dir: Path | str) -> str:
        return os.path.realpath(folder_dir)

    def register(self, folder_dir: Path | str, listener: Listener) -> str:
        key = self.key(folder_dir)
        self._selected.setdefault(key, set()).add(listener)
        self._stamps.setdefault(key, _stamp(key))
        return key

    def unregister(self, key: str, listener: Listener) -> None:
        listeners = self._selected.get(key)
        if listeners is None:
            return
        listeners.discard(listener)
        if not listeners:
            del self._selected[key]
            self._stamps.pop(key, None)

    def changed(self, folder_dirs: Iterable[Path | str], origin: Listener | None = None) -> None:
        """Tell every session with one of these folders selected (but ``origin``)."""
        for folder in folder_dirs:
            for listener in list(self._selected.get(self.key(folder), ())):
                if listener is not origin:
                    listener.mailbox_changed()

    def selected_count(self) -> int:
        return sum(len(s) for s in self._selected.values())

    # ---------------------------------------------------------------- polling

    def start(self) -> None:
        if self._task is None and self.poll_interval > 0:
            self._task = asyncio.get_running_loop().create_task(self._poll())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    async def _poll(self) -> None:
        while True:
            await asyncio.sleep(self.poll_interval)
            self.poll_once()

    def poll_once(self) -> None:
        # stat() of two directories is a few microseconds: cheap enough for the loop.
        for key, listeners in list(self._selected.items()):
            if not any(listener.idling for listener in listeners):
                continue
            stamp = _stamp(key)
            if stamp != self._stamps.get(key):
                self._stamps[key] = stamp
                for listener in list(listeners):
                    listener.mailbox_changed()


if TYPE_CHECKING:
    # mypy checks that the hub still offers the storage interface's change notification.
    from mailserver.storage.api import ChangeNotifier

    _conforms: type[ChangeNotifier] = MailboxHub
