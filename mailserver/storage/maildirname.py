"""Maildir file names: split into base and info, read the fields, map flag letters.

A message file is ``<base>`` in ``new/`` and ``<base>:2,<letters>`` in ``cur/``
(cr.yp.to/proto/maildir.html). The base never changes for the life of the message, so
it is the key the index uses to recognise a file after any flag rename. The letters are
sorted in ASCII order: upper case for the system flags (D F P R S T), lower case for
Dovecot's keyword letters (``dovecot-keywords`` maps ``a``..``z`` to names).

Our own names (see :mod:`mailserver.storage.maildir`) look like
``<secs>.M<usecs>P<pid>Q<n>R<rand>.<host>,S=<size>``; Dovecot adds ``,W=<vsize>`` (the
size with CRLF line ends, which is what IMAP's RFC822.SIZE means).
"""

from __future__ import annotations

import itertools
import os
import re
import secrets
import threading
import time

INFO_PREFIX = ":2,"

# IMAP system flag <-> Maildir letter. P (passed/forwarded) has no IMAP system flag: it
# is kept in the name untouched, like any other upper-case letter we do not know.
FLAG_TO_LETTER: dict[str, str] = {
    "\\Draft": "D",
    "\\Flagged": "F",
    "\\Answered": "R",
    "\\Seen": "S",
    "\\Deleted": "T",
}
LETTER_TO_FLAG: dict[str, str] = {v: k for k, v in FLAG_TO_LETTER.items()}
_FLAG_BY_FOLD: dict[str, str] = {k.casefold(): k for k in FLAG_TO_LETTER}

# <secs>.M<usecs>... : Dovecot's and our names; plain "<secs>.<unique>.<host>" also works.
_TIME_RE = re.compile(r"^(\d{1,12})(?:\.M(\d{1,6}))?")
# IMAP atom-specials plus what a keyword may not contain (RFC 3501 flag-keyword = atom).
_BAD_KEYWORD = re.compile(r'[\x00-\x20\x7f-\uffff(){%*"\\\]]')


def split_name(name: str) -> tuple[str, str]:
    """``(base, suffix)``: the suffix is everything from the first ``:`` ("" if none)."""
    i = name.find(":")
    return (name, "") if i < 0 else (name[:i], name[i:])


def letters_of(suffix: str) -> str:
    """The flag letters of a ``:2,...`` suffix; "" for no info or an unknown info kind."""
    return suffix[len(INFO_PREFIX) :] if suffix.startswith(INFO_PREFIX) else ""


def make_suffix(letters: str) -> str:
    """``:2,`` plus the letters deduplicated and sorted, as the Maildir spec requires."""
    return INFO_PREFIX + "".join(sorted(set(letters)))


def name_time(base: str) -> tuple[int, int] | None:
    """``(secs, usecs)`` from the start of the name, or None for a foreign format."""
    m = _TIME_RE.match(base)
    if not m:
        return None
    return int(m[1]), int(m[2] or 0)


def name_field(base: str, key: str) -> int | None:
    """An integer ``,<key>=<n>`` field of the base name (``S`` size, ``W`` vsize)."""
    prefix = key + "="
    for field in base.split(",")[1:]:
        if field.startswith(prefix) and field[len(prefix) :].isdigit():
            return int(field[len(prefix) :])
    return None


def imap_size(base: str) -> int | None:
    """RFC822.SIZE from the name: ``W=`` (CRLF size) if present, else ``S=``."""
    size = None
    for field in base.split(",")[1:]:  # one pass: this runs for every new file
        key, value = field[:2], field[2:]
        if key == "W=" and value.isdigit():
            return int(value)
        if key == "S=" and size is None and value.isdigit():
            size = int(value)
    return size


def normalize_flag(flag: str) -> str:
    """Canonical spelling of a flag: system flags as in RFC 3501, keywords as given.

    Raises ValueError for ``\\Recent`` (a client cannot set it), unknown ``\\`` flags and
    keywords that are not IMAP atoms.
    """
    if flag.startswith("\\"):
        canon = _FLAG_BY_FOLD.get(flag.casefold())
        if canon is None:
            raise ValueError(f"flag {flag!r} cannot be stored")
        return canon
    if not flag or _BAD_KEYWORD.search(flag):
        raise ValueError(f"invalid keyword {flag!r}")
    return flag


class NameMaker:
    """Fresh base names in the same format as :class:`MaildirWriter` uses."""

    def __init__(self, hostname: str) -> None:
        self.hostname = hostname
        self._counter = itertools.count(1)
        self._lock = threading.Lock()

    def make(self, size: int, vsize: int | None = None) -> str:
        """A unique base for a file of ``size`` bytes (``vsize``: its CRLF size, if other)."""
        with self._lock:
            n = next(self._counter)
        secs, usecs = divmod(time.time_ns() // 1000, 1_000_000)
        name = f"{secs}.M{usecs}P{os.getpid()}Q{n}R{secrets.token_hex(8)}.{self.hostname},S={size}"
        return name if vsize is None or vsize == size else f"{name},W={vsize}"
