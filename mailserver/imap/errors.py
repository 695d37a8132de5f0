"""Typed errors of the IMAP parser: each knows the tag and the tagged answer it calls for.

The bottom of the IMAP parser: imports nothing of the package, so ``dates``, ``lexer``,
``seqset`` and ``format`` can all raise these. The answer line itself is
:func:`mailserver.imap.format.error_response`.
"""

from __future__ import annotations

from typing import Literal

Status = Literal["BAD", "NO"]


class IMAPError(Exception):
    """A command the server must refuse: ``status`` is the tagged answer (BAD = syntax or
    protocol error, NO = well-formed but refused), ``code`` an optional response code such as
    ``TOOBIG`` or ``BADCHARSET (US-ASCII UTF-8)``. ``tag`` is None when the line had no valid
    tag: answer with an untagged ``* BAD``."""

    status: Status = "BAD"

    def __init__(self, tag: str | None, message: str, *, code: str | None = None,
                 status: Status | None = None) -> None:
        super().__init__(message)
        self.tag = tag
        self.message = message
        self.code = code
        if status is not None:
            self.status = status

    @property
    def is_bad(self) -> bool:
        return self.status == "BAD"

    def _key(self) -> tuple[object, ...]:
        return (type(self), self.tag, self.status, self.message, self.code)

    def __eq__(self, other: object) -> bool:  # value semantics: events compare in tests
        return isinstance(other, IMAPError) and self._key() == other._key()

    def __hash__(self) -> int:
        return hash(self._key())

    def __repr__(self) -> str:
        return f"{type(self).__name__}(tag={self.tag!r}, {self.status} {self.message!r}, code={self.code!r})"


class IMAPParseError(IMAPError):
    """Syntax error: the answer is ``BAD``."""

    status: Status = "BAD"


class UnknownCommandError(IMAPParseError):
    """A command name the parser does not know: ``BAD``."""


class BadCharsetError(IMAPError):
    """SEARCH with an unsupported CHARSET: ``NO [BADCHARSET (US-ASCII UTF-8)]``."""

    status: Status = "NO"


class SequenceSetError(ValueError):
    """A malformed sequence set (``0``, ``1:``, ``*:x``, numbers over 2^32-1 ...)."""


class MailboxNameError(ValueError):
    """A mailbox name that is not valid (canonical) modified UTF-7."""


class DateError(ValueError):
    """A malformed IMAP date or date-time."""
