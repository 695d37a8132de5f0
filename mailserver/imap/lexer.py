"""A byte reader over one complete command (RFC 3501 9 lexical rules).

The input is what the framer assembled: the command lines joined with CRLF and the literal
octets in place (``{n}\\r\\n`` followed by exactly n octets), without the final CRLF.
Every failure raises ``IMAPParseError`` carrying the command's tag.
"""

from __future__ import annotations

import re

from .errors import IMAPParseError

_CTL = frozenset(range(0x00, 0x20)) | {0x7F}
ATOM_SPECIALS = frozenset(b'(){ %*"\\]') | _CTL
ATOM_CHARS = frozenset(range(0x01, 0x80)) - ATOM_SPECIALS
ASTRING_CHARS = ATOM_CHARS | {ord("]")}
LIST_CHARS = ATOM_CHARS | frozenset(b"%*]")
TAG_CHARS = ASTRING_CHARS - {ord("+")}
_QUOTED_SPECIALS = frozenset(b'"\\')

MAX_NUMBER = 4294967295
MAX_NUMBER64 = 9223372036854775807  # mod-sequence-value, RFC 7162

_LITERAL = re.compile(rb"(~?)\{([0-9]+)(\+?)\}\r\n")


def decode_text(data: bytes, tag: str | None, what: str = "string") -> str:
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        raise IMAPParseError(tag, f"{what} is not valid UTF-8") from None


class Reader:
    __slots__ = ("data", "pos", "tag")

    def __init__(self, data: bytes, tag: str | None = None, pos: int = 0) -> None:
        self.data = data
        self.pos = pos
        self.tag = tag

    # ------------------------------------------------------------------ basics

    def error(self, message: str) -> IMAPParseError:
        return IMAPParseError(self.tag, message)

    def peek(self) -> int | None:
        return self.data[self.pos] if self.pos < len(self.data) else None

    def at_end(self) -> bool:
        return self.pos >= len(self.data)

    def end(self) -> None:
        if not self.at_end():
            snippet = self.data[self.pos : self.pos + 20].decode("ascii", "replace")
            raise self.error(f"unexpected extra arguments at {snippet!r}")

    def sp(self) -> None:
        if self.peek() != 0x20:
            raise self.error("expected a single space" if not self.at_end() else "missing arguments")
        self.pos += 1
        if self.peek() == 0x20:
            raise self.error("expected a single space, got several")

    def try_sp(self) -> bool:
        if self.peek() == 0x20:
            self.sp()
            return True
        return False

    def expect(self, char: bytes) -> None:
        if self.data[self.pos : self.pos + len(char)] != char:
            raise self.error(f"expected {char.decode()!r}")
        self.pos += len(char)

    def try_char(self, char: bytes) -> bool:
        if self.data[self.pos : self.pos + len(char)] == char:
            self.pos += len(char)
            return True
        return False

    def take(self, allowed: frozenset[int], what: str) -> bytes:
        start = self.pos
        data = self.data
        n = len(data)
        pos = start
        while pos < n and data[pos] in allowed:
            pos += 1
        if pos == start:
            raise self.error(f"expected {what}")
        self.pos = pos
        return data[start:pos]

    def atom(self) -> str:
        return self.take(ATOM_CHARS, "an atom").decode("ascii")

    def try_keyword(self, word: str) -> bool:
        """Consume ``word`` (case-insensitive) if it is the whole next atom."""
        end = self.pos + len(word)
        if self.data[self.pos : end].upper() != word.encode():
            return False
        if end < len(self.data) and self.data[end] in ATOM_CHARS:
            return False
        self.pos = end
        return True

    def number(self, maximum: int = MAX_NUMBER, *, nonzero: bool = False, what: str = "a number") -> int:
        digits = self.take(frozenset(b"0123456789"), what)
        if len(digits) > 20 or int(digits) > maximum:
            raise self.error(f"{what} is too large")
        value = int(digits)
        if nonzero and value == 0:
            raise self.error(f"{what} must not be 0")
        return value

    # ------------------------------------------------------------------ strings

    def quoted(self) -> bytes:
        self.expect(b'"')
        out = bytearray()
        data = self.data
        n = len(data)
        pos = self.pos
        while True:
            if pos >= n:
                raise self.error("unterminated quoted string")
            c = data[pos]
            if c == 0x22:
                self.pos = pos + 1
                return bytes(out)
            if c == 0x5C:
                if pos + 1 >= n or data[pos + 1] not in _QUOTED_SPECIALS:
                    raise self.error('only \\" and \\\\ may be escaped in a quoted string')
                out.append(data[pos + 1])
                pos += 2
                continue
            if c in (0x00, 0x0D, 0x0A):
                raise self.error("CR, LF or NUL in a quoted string")
            out.append(c)
            pos += 1

    def literal(self, *, allow_literal8: bool = False) -> tuple[bytes, bool]:
        """-> (octets, is_literal8). NUL is refused in a plain literal (CHAR8 is 1-255)."""
        m = _LITERAL.match(self.data, self.pos)
        if not m:
            raise self.error("invalid literal")
        binary = bool(m.group(1))
        if binary and not allow_literal8:
            raise self.error("literal8 (~{n}) is not allowed here")
        size = int(m.group(2))
        start = m.end()
        if start + size > len(self.data):
            raise self.error("literal is shorter than announced")
        value = self.data[start : start + size]
        if not binary and b"\x00" in value:
            raise self.error("NUL in a literal (use literal8)")
        self.pos = start + size
        return value, binary

    def string(self) -> bytes:
        c = self.peek()
        if c == 0x22:
            return self.quoted()
        if c == 0x7B:
            return self.literal()[0]
        raise self.error("expected a quoted string or a literal")

    def astring(self) -> bytes:
        c = self.peek()
        if c in (0x22, 0x7B):
            return self.string()
        return self.take(ASTRING_CHARS, "an astring")

    def astring_text(self, what: str = "string") -> str:
        return decode_text(self.astring(), self.tag, what)

    def nstring(self) -> bytes | None:
        if self.try_keyword("NIL"):
            return None
        return self.string()

    def list_mailbox(self) -> bytes:
        c = self.peek()
        if c in (0x22, 0x7B):
            return self.string()
        return self.take(LIST_CHARS, "a mailbox pattern")

    def mailbox(self) -> str:
        """``mailbox``: INBOX in any case is normalised to ``INBOX``; otherwise the wire name
        (modified UTF-7, or UTF-8 after ENABLE UTF8=ACCEPT) as text."""
        name = self.astring_text("mailbox name")
        return "INBOX" if name.upper() == "INBOX" else name

    def paren_list(self, item: str = "item") -> list[str]:
        """``"(" [atom *(SP atom)] ")"`` -> the atoms upper-cased."""
        self.expect(b"(")
        out: list[str] = []
        if self.try_char(b")"):
            return out
        while True:
            out.append(self.atom().upper())
            if self.try_char(b")"):
                return out
            self.sp()
