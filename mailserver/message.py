"""Low-level facts about an RFC 5322 message, shared by every stage (issue 11).

One implementation each, used by SMTP submission, the pipeline (DKIM, DMARC,
Authentication-Results), delivery and IMAP (FETCH, BODYSTRUCTURE, SEARCH):

  ``new_message_id``                  the id used in logs, Received and queue file names
  ``has_long_line``/``transport_problem``  may these octets be relayed as they are
  ``header_end``/``body_start``/``split_header``  where the header section ends (RFC 5322
                                      2.1, 3.5), as offsets or as (header, body)
  ``field_spans``/``field_value``/``field_values``  the fields called NAME (any case,
                                      RFC 5322 2.2) and their unfolded values (2.2.3)
  ``parse_mailbox_list``              the addr-specs of a From mailbox-list (RFC 5322
                                      3.4, RFC 6854 groups); raises FromHeaderError on
                                      shapes a reader and a parser could disagree about

The header helpers scan only the header section, with C-speed searches, so a 10 MiB
message or a flood of short header lines costs the event loop next to nothing.

Not here yet (its rule differs, so moving it would change answers): IMAP SEARCH's
field reader ends the header at a line of only CRs (searchtext ``_header_end``,
``parse_header_fields``).
"""

from __future__ import annotations

import os
import re
import secrets
import time


def new_message_id() -> str:
    """A short, sortable, unique id used in logs, Received headers and queue files."""
    # Time prefix makes ids sort by arrival; the random tail keeps them unique across
    # processes and restarts without shared state.
    return f"{int(time.time() * 1000):x}{os.getpid() & 0xFFFF:04x}{secrets.token_hex(4)}"


# RFC 5322 2.1.1: "Each line of characters MUST be no more than 998 characters ... excluding
# the CRLF". RFC 5321 4.5.3.1.6 says the same of SMTP text lines (1000 with CRLF).
MAX_LINE_OCTETS = 998


def has_long_line(data: bytes, limit: int = MAX_LINE_OCTETS) -> bool:
    """Is any line of ``data`` longer than ``limit`` octets, its CRLF not counted?

    Exact for CRLF line ends (what is relayed); a bare-LF line is allowed one octet more.
    Jumps from the last LF of one ``limit + 2``-octet window to the next, so a message of
    short lines is checked in about len/limit C-level searches, not one step per line.
    """
    span = limit + 2  # the longest allowed line with its CRLF
    n, pos = len(data), 0
    while n - pos > span:
        nl = data.rfind(b"\n", pos, pos + span)
        if nl < 0:
            return True
        pos = nl + 1
    nl = data.rfind(b"\n", pos)
    tail = n - (nl + 1 if nl >= 0 else pos)  # an unterminated last line
    if tail and data.endswith(b"\r"):
        tail -= 1
    return tail > limit


def transport_problem(data: bytes) -> str | None:
    """Why ``data`` must not be handed to another mail server as it is, or None.

    A NUL octet is allowed by no SMTP body type we offer or use (RFC 5321 2.3.8, RFC 6152:
    not even 8BITMIME), and a line over 998 octets breaks RFC 5322 and is cut or refused
    by the next hop. Both checks are C-level scans (``in``, ``rfind``).
    """
    if b"\0" in data:
        return "contains a NUL octet"
    if has_long_line(data):
        return f"has a line longer than {MAX_LINE_OCTETS} octets"
    return None


# ----------------------------------------------------------------- header section

_FIELD_END = re.compile(rb"\n(?![ \t])")  # a line break not followed by folding WSP


# RFC 5322 2.1 and 3.5: the header section is followed by an empty line, then the body.
# The empty line is "\n\n" or "\n\r\n" (CRLF or bare-LF text, as IMAP keeps files
# from Dovecot and mutt), or the very first line (no header at all). Without one the
# whole data is header. Found with two C-level finds, no regex: this runs for every
# message of an IMAP header FETCH.


def header_end(data: bytes, start: int = 0, end: int | None = None) -> int:
    """Where the empty line ending the header in ``data[start:end]`` starts, or ``end``
    (default ``len(data)``) if there is none: the header is ``data[start:header_end]``."""
    if end is None:
        end = len(data)
    if data.startswith((b"\r\n", b"\n"), start, end):
        return start
    i = data.find(b"\n\r\n", start, end)
    j = data.find(b"\n\n", start, end if i < 0 else i + 2)  # the earlier of the two
    if j >= 0:
        return j + 1
    if i >= 0:
        return i + 1
    return end


def body_start(data: bytes, start: int = 0, end: int | None = None) -> int:
    """Offset just past the empty line ending the header in ``data[start:end]``, or
    ``end`` (default ``len(data)``) if there is none."""
    if end is None:
        end = len(data)
    cut = header_end(data, start, end)
    if cut == end:
        return end
    return cut + 1 if data[cut] == 0x0A else cut + 2


def split_header(data: bytes) -> tuple[bytes, bytes]:
    """``(header, body)``: the header includes its terminating empty line (CRLF or LF).

    Without an empty line the whole data is header and the body is empty.
    """
    cut = body_start(data)
    return data[:cut], data[cut:]


def field_spans(data: bytes, name: str, end: int | None = None) -> list[tuple[int, int]]:
    """(start, stop) of every header field called ``name``, folded lines included."""
    end = header_end(data) if end is None else end
    pattern = re.compile(rb"(?im)^" + re.escape(name.encode()) + rb"[ \t]*:")
    spans = []
    for m in pattern.finditer(data, 0, end):
        stop = _FIELD_END.search(data, m.end(), end)
        spans.append((m.start(), stop.end() if stop else end))
    return spans


def field_value(data: bytes, span: tuple[int, int]) -> str:
    """The unfolded value after the colon, as text (UTF-8 per RFC 6532, else replaced)."""
    raw = data[span[0] : span[1]]
    value = raw.split(b":", 1)[1]
    value = re.sub(rb"\r?\n(?=[ \t])", b"", value).rstrip(b"\r\n")
    return value.decode("utf-8", "replace")


def field_values(data: bytes, name: str, end: int | None = None) -> list[str]:
    """The unfolded value of every header field called ``name``, in order."""
    return [field_value(data, span) for span in field_spans(data, name, end)]


# ----------------------------------------------------------------- From addresses


class FromHeaderError(ValueError):
    """The message has no single, usable RFC5322.From address (RFC 7489 §6.6.1)."""


_Item = tuple[str, int, int]  # (kind, start, stop): kind is the character, '"' or '('


def _scan(value: str) -> list[_Item]:
    """The value's characters, with each quoted string and comment as one item.

    Callers look for structure (commas, angle brackets, colons) in the kinds only, so
    they cannot be fooled by "a,b" <x@y> or (comment, with <brackets>).
    """
    out: list[_Item] = []
    i, n = 0, len(value)
    while i < n:
        ch = value[i]
        if ch == '"':
            j = i + 1
            while j < n and value[j] != '"':
                j += 2 if value[j] == "\\" else 1
            if j >= n:
                raise FromHeaderError("unterminated quoted string in From")
            out.append(('"', i, j + 1))
            i = j + 1
        elif ch == "(":
            depth, j = 1, i + 1
            while j < n and depth:
                if value[j] == "\\":
                    j += 1
                elif value[j] == "(":
                    depth += 1
                elif value[j] == ")":
                    depth -= 1
                j += 1
            if depth:
                raise FromHeaderError("unterminated comment in From")
            out.append(("(", i, j))
            i = j
        else:
            out.append((ch, i, i + 1))
            i += 1
    return out


def _text_of(value: str, items: list[_Item]) -> str:
    """The items' text with comments removed and quoted strings kept verbatim."""
    return "".join(value[a:b] for kind, a, b in items if kind != "(")


def _blank(items: list[_Item]) -> bool:
    return all(kind == "(" or kind.isspace() for kind, _, _ in items)


def parse_mailbox_list(value: str) -> list[str]:
    """The addr-specs ("local@domain") of an RFC 5322 mailbox-list (or group).

    Display names (plain, quoted or RFC 2047 encoded) and comments are skipped; an
    address is whatever is inside <...>, or the bare addr-spec. Raises
    FromHeaderError for shapes a human reader and a parser could disagree about.
    """
    items = _scan(value)
    # Group syntax "name: a@b, c@d;" (RFC 6854 allows it in From): use its members.
    depth, colon = 0, -1
    for k, (kind, _, _) in enumerate(items):
        depth += (kind == "<") - (kind == ">")
        if kind == ":" and depth == 0:
            colon = k
            break
    if colon >= 0:
        semi = next((k for k in range(colon + 1, len(items)) if items[k][0] == ";"), -1)
        if semi < 0:
            raise FromHeaderError("group in From is not terminated by ';'")
        if not _blank(items[semi + 1 :]):
            raise FromHeaderError("text after the group in From")
        items = items[colon + 1 : semi]

    addresses: list[str] = []
    for piece in _split_commas(items):
        if _blank(piece):
            continue  # obsolete empty list elements: "a@b, , c@d"
        addresses.append(_mailbox(value, piece))
    return addresses


def _split_commas(items: list[_Item]) -> list[list[_Item]]:
    pieces: list[list[_Item]] = [[]]
    depth = 0
    for item in items:
        kind = item[0]
        if kind == "<":
            depth += 1
        elif kind == ">":
            depth -= 1
            if depth < 0:
                raise FromHeaderError("unbalanced '>' in From")
        if kind == "," and depth == 0:
            pieces.append([])
        else:
            pieces[-1].append(item)
    if depth:
        raise FromHeaderError("unbalanced '<' in From")
    return pieces


def _mailbox(value: str, piece: list[_Item]) -> str:
    opens = [k for k, item in enumerate(piece) if item[0] == "<"]
    if len(opens) > 1:
        raise FromHeaderError("more than one <address> in one From mailbox")
    if opens:
        close = next(k for k, item in enumerate(piece) if item[0] == ">")
        if not _blank(piece[close + 1 :]):
            raise FromHeaderError("text after <address> in From")
        inner = piece[opens[0] + 1 : close]
        if ":" in [kind for kind, _, _ in inner]:  # obsolete source route "<@a,@b:x@y>"
            last = max(k for k, item in enumerate(inner) if item[0] == ":")
            inner = inner[last + 1 :]
    else:
        inner = piece
    # Whitespace between the address's own parts means a display name without <>.
    words = [item for item in inner if item[0] != "("]
    while words and words[0][0].isspace():
        words.pop(0)
    while words and words[-1][0].isspace():
        words.pop()
    if not words:
        raise FromHeaderError("empty address in From")
    if any(kind.isspace() for kind, _, _ in words):
        raise FromHeaderError("From mailbox is not a single address")
    return _text_of(value, words)
