"""The ``dovecot-keywords`` file: which Maildir letter ``a``..``z`` means which keyword.

Format (Dovecot's): one ``<n> <name>`` line per keyword, ``n`` in 0..25 standing for
the letter ``chr(ord('a') + n)``. Reading the same file Dovecot writes keeps a folder
movable between the two servers with its keywords intact. Only 26 letters exist; the
index keeps any further keywords itself (see :class:`~mailserver.storage.index.MailboxIndex`).

Keywords match case-insensitively (RFC 3501 flags are case-insensitive); the spelling
first registered is kept. Callers must hold the folder's index lock around
:meth:`assign`, which rewrites the file.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

from mailserver.fsutil import write_file_atomic
from mailserver.storage.maildirpp import FILE_MODE

log = logging.getLogger("pymaild.storage")

KEYWORDS_FILE = "dovecot-keywords"
MAX_LETTERS = 26


class DovecotKeywords:
    def __init__(self, path: Path) -> None:
        self.path = path
        self._names: dict[int, str] = {}  # letter index -> name
        self._by_fold: dict[str, int] = {}
        self._stamp: tuple[int, int, int] | None = None

    def reload(self) -> bool:
        """Re-read the file if it changed (inode, size, mtime); True if it was re-read."""
        try:
            st = os.stat(self.path)
        except FileNotFoundError:
            if self._stamp is not None or self._names:
                self._names, self._by_fold, self._stamp = {}, {}, None
                return True
            return False
        stamp = (st.st_ino, st.st_size, st.st_mtime_ns)
        if stamp == self._stamp:
            return False
        names: dict[int, str] = {}
        with open(self.path, encoding="utf-8", errors="surrogateescape") as f:
            for line in f:
                num, _, name = line.rstrip("\n").partition(" ")
                # Tolerate junk lines rather than lose every keyword of the folder.
                if num.isdigit() and int(num) < MAX_LETTERS and name:
                    names[int(num)] = name
        self._names = names
        self._by_fold = {name.casefold(): n for n, name in names.items()}
        self._stamp = stamp
        return True

    def name(self, letter: str) -> str | None:
        """The keyword of a lower-case letter, or None if the letter is unassigned."""
        return self._names.get(ord(letter) - ord("a"))

    def letter(self, keyword: str) -> str | None:
        n = self._by_fold.get(keyword.casefold())
        return None if n is None else chr(ord("a") + n)

    def assign(self, keywords: list[str]) -> bool:
        """Give free letters to keywords that have none; rewrite the file if any got one.

        Keywords left over when all 26 letters are taken stay letterless (the caller
        stores them in the index). True if any letter was given out.
        """
        free = (n for n in range(MAX_LETTERS) if n not in self._names)
        added = False
        for kw in keywords:
            if kw.casefold() in self._by_fold:
                continue
            n = next(free, None)
            if n is None:
                break
            self._names[n] = kw
            self._by_fold[kw.casefold()] = n
            added = True
        if added:
            self._write()
        return added

    def _write(self) -> None:
        # Atomic and durable: the letters go into message names right after this, and a
        # letter in a name without its line here would be a keyword lost.
        data = "".join(f"{n} {name}\n" for n, name in sorted(self._names.items())).encode(
            "utf-8", "surrogateescape"
        )
        write_file_atomic(self.path, data, FILE_MODE)
        st = os.stat(self.path)
        self._stamp = (st.st_ino, st.st_size, st.st_mtime_ns)
        log.debug("keywords of %s: %s", self.path.parent, self._names)
