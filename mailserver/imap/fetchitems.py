"""FETCH data items (RFC 3501 6.4.5 / 9 ``fetch-att``, RFC 3516 BINARY, RFC 7162 MODSEQ).

Macros are expanded (ALL, FAST, FULL). ``BODY[...]``/``BINARY[...]`` become ``BodySection``;
everything else is an ``Attribute`` with its upper-case name. ``response_name()`` gives the
name the server must echo in the ``* n FETCH`` response (no ``.PEEK``, ``<origin>`` only).
"""

from __future__ import annotations

from dataclasses import dataclass

from .lexer import ASTRING_CHARS, Reader, decode_text

SIMPLE_ATTRIBUTES = frozenset({
    "ENVELOPE", "FLAGS", "INTERNALDATE", "RFC822", "RFC822.HEADER", "RFC822.SIZE", "RFC822.TEXT",
    "BODY", "BODYSTRUCTURE", "UID", "MODSEQ",
})
MACROS = {
    "ALL": ("FLAGS", "INTERNALDATE", "RFC822.SIZE", "ENVELOPE"),
    "FAST": ("FLAGS", "INTERNALDATE", "RFC822.SIZE"),
    "FULL": ("FLAGS", "INTERNALDATE", "RFC822.SIZE", "ENVELOPE", "BODY"),
}
_SECTION_TEXTS = ("HEADER", "HEADER.FIELDS", "HEADER.FIELDS.NOT", "TEXT", "MIME")
_SECTION_CHARS = frozenset(b"0123456789.ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz")
MAX_PART_DEPTH = 32


@dataclass(frozen=True, slots=True)
class Attribute:
    name: str  # ENVELOPE, FLAGS, INTERNALDATE, RFC822*, BODY, BODYSTRUCTURE, UID, MODSEQ

    def response_name(self) -> str:
        return self.name


@dataclass(frozen=True, slots=True)
class Section:
    part: tuple[int, ...] = ()  # (1, 2) for "1.2"; () = the whole message
    text: str | None = None  # HEADER, HEADER.FIELDS, HEADER.FIELDS.NOT, TEXT, MIME, or None
    fields: tuple[str, ...] = ()  # for HEADER.FIELDS(.NOT), as the client wrote them

    def __str__(self) -> str:
        parts = [".".join(map(str, self.part))] if self.part else []
        if self.text:
            parts.append(self.text)
        spec = ".".join(parts)
        if self.fields:
            spec += " (" + " ".join(_astring(f) for f in self.fields) + ")"
        return spec


def _astring(value: str) -> str:
    raw = value.encode("utf-8")
    if raw and all(b in ASTRING_CHARS for b in raw):
        return value
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


@dataclass(frozen=True, slots=True)
class BodySection:
    """``BODY[section]<partial>``, ``BODY.PEEK[...]``, ``BINARY[part]``, ``BINARY.PEEK``,
    ``BINARY.SIZE[part]`` (``size_only``)."""

    section: Section = Section()
    partial: tuple[int, int] | None = None  # (origin, length)
    peek: bool = False
    binary: bool = False
    size_only: bool = False

    @property
    def name(self) -> str:
        if self.size_only:
            return "BINARY.SIZE"
        return ("BINARY" if self.binary else "BODY") + (".PEEK" if self.peek else "")

    @property
    def sets_seen(self) -> bool:
        """A non-PEEK BODY[]/BINARY[] fetch sets \\Seen (RFC 3501 6.4.5)."""
        return not self.peek and not self.size_only

    def response_name(self) -> str:
        base = "BINARY.SIZE" if self.size_only else ("BINARY" if self.binary else "BODY")
        name = f"{base}[{self.section}]"
        if self.partial is not None:
            name += f"<{self.partial[0]}>"
        return name

    def __str__(self) -> str:
        text = f"{self.name}[{self.section}]"
        if self.partial is not None:
            text += f"<{self.partial[0]}.{self.partial[1]}>"
        return text


FetchItem = Attribute | BodySection


def _read_section(r: Reader, *, binary: bool) -> Section:
    r.expect(b"[")
    if r.try_char(b"]"):
        return Section()
    raw = r.take(_SECTION_CHARS, "a section").decode("ascii")
    pieces = raw.split(".")
    part: list[int] = []
    while pieces and pieces[0].isdigit():
        p = pieces.pop(0)
        if p.startswith("0") or len(p) > 10 or int(p) > 4294967295:
            raise r.error(f"invalid section part number {p!r}")
        part.append(int(p))
    if len(part) > MAX_PART_DEPTH:
        raise r.error("section part nested too deeply")
    text = ".".join(pieces).upper() if pieces else None
    if text is not None and (text not in _SECTION_TEXTS or "" in pieces):
        raise r.error(f"invalid section {raw[:40]!r}")
    if binary and text is not None:
        raise r.error("BINARY sections take part numbers only")
    if text == "MIME" and not part:
        raise r.error("MIME needs a part number")
    if raw.endswith(".") or raw.startswith("."):
        raise r.error(f"invalid section {raw[:40]!r}")
    fields: tuple[str, ...] = ()
    if text in ("HEADER.FIELDS", "HEADER.FIELDS.NOT"):
        r.sp()
        r.expect(b"(")
        names: list[str] = []
        while True:
            name = decode_text(r.astring(), r.tag, "header field name")
            if not name or any(not (33 <= ord(ch) <= 126) or ch == ":" for ch in name):
                raise r.error("invalid header field name")
            names.append(name)
            if r.try_char(b")"):
                break
            r.sp()
        fields = tuple(names)
    r.expect(b"]")
    return Section(tuple(part), text, fields)


def _read_partial(r: Reader) -> tuple[int, int] | None:
    if not r.try_char(b"<"):
        return None
    origin = r.number(what="partial origin")
    r.expect(b".")
    length = r.number(nonzero=True, what="partial length")
    r.expect(b">")
    return origin, length


def read_fetch_att(r: Reader) -> FetchItem:
    name = r.take(frozenset(b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789.-"),
                  "a fetch item").decode("ascii").upper()
    if r.peek() == 0x5B:  # "["
        if name in ("BODY", "BODY.PEEK"):
            section = _read_section(r, binary=False)
            return BodySection(section, _read_partial(r), peek=name == "BODY.PEEK")
        if name in ("BINARY", "BINARY.PEEK", "BINARY.SIZE"):
            section = _read_section(r, binary=True)
            if name == "BINARY.SIZE":
                return BodySection(section, None, size_only=True, binary=True)
            return BodySection(section, _read_partial(r), peek=name == "BINARY.PEEK", binary=True)
        raise r.error(f"{name[:30]} takes no section")
    if name in SIMPLE_ATTRIBUTES:
        return Attribute(name)
    raise r.error(f"unknown fetch item {name[:30]}")


def read_fetch_items(r: Reader) -> tuple[FetchItem, ...]:
    """``"ALL" / "FULL" / "FAST" / fetch-att / "(" fetch-att *(SP fetch-att) ")"``."""
    if r.try_char(b"("):
        items = [read_fetch_att(r)]
        while not r.try_char(b")"):
            r.sp()
            items.append(read_fetch_att(r))
        return tuple(items)
    for macro, expansion in MACROS.items():
        if r.try_keyword(macro):
            return tuple(Attribute(n) for n in expansion)
    return (read_fetch_att(r),)
