"""The MIME structure of a message for SEARCH BODY/TEXT (:mod:`.searcheval`): the email
package's tree of compat32 Message objects, built without the feed parser for plainly
well-formed messages (:class:`_Splitter`) and with it otherwise (:func:`parse_message`)."""

from __future__ import annotations

import bisect
import email
import email.errors
import email.policy
import email.utils
import re
from email.message import Message

from mailserver.message import header_end

# Module switch, for tests and measurements, with searcheval.SHORTCUTS: both on is the normal
# operation, both off is the reference the shortcuts are checked against (results are the
# same either way).
FAST_PARSE = True  # take simple MIME structures apart without the email package's feed parser


# ------------------------------------------------------------------ MIME structure, fast
#
# The email package's feed parser costs ~0.6 ms for a 12 KB message (it pushes every line
# through Python code). _Splitter builds the same tree of compat32 Message objects for the
# messages that are plainly well formed, finding only the lines that start with "--"
# (boundary candidates) with a regex. It mirrors email.feedparser.FeedParser._parsegen step
# by step for that subset, and gives up (_Bail; the caller then runs the real parser)
# on everything it does not mirror: a bare CR (the feed parser splits lines at it), a
# header block with a line that is not "name:" or a continuation (the parser would end the
# header there), no empty line after a header block, message/delivery-status,
# multipart/digest (other default types), a boundary outside a plain character set (so no
# header line can look like a boundary line), a missing start or close delimiter, two
# delimiter lines in a row, more than _MAX_DASH_LINES candidate lines or _MAX_DEPTH levels.
# Header fields are made with the same policy calls the parser makes (header_source_parse,
# set_raw); a leaf's payload is its lines joined, the line break before a delimiter
# removed from the part the parser would remove it from (its "_last" message). So walk(),
# items(), get_payload() and the content-type methods answer exactly as on the parser's tree.

_COMPAT32 = email.policy.compat32
_HEADER_BLOCK = re.compile(rb"(?:[\x21-\x39\x3b-\x7e]+:[^\r\n]*\r?\n(?:[ \t][^\r\n]*\r?\n)*)*")
_FIELD = re.compile(rb"[^\n]*\n(?:[ \t][^\n]*\n)*")
_TOP_FIELD = re.compile(rb"(?im)^content-(?:type|transfer-encoding):[^\n]*\n(?:[ \t][^\n]*\n)*")
# What the feed parser's boundaryre allows after "--" boundary: "--" (the close delimiter),
# blanks, the line break. A line holds at most one LF, at its end, so \Z is its "$".
_DELIMITER_TAIL = re.compile(rb"(--)?[ \t]*(?:\r\n|\r|\n)?\Z")
_SAFE_BOUNDARY = re.compile(r"[0-9A-Za-z'()+_,./=?-]{1,200}")
_MAX_DASH_LINES = 4096
_MAX_DEPTH = 32


class _Bail(Exception):
    """Outside what _Splitter mirrors exactly: use the email package's parser."""


class _Message(Message):
    """A compat32 Message that remembers its parsed header parameters: get_param() re-parses
    Content-Type on every call, and the walk asks several times. Only for _Splitter's
    trees, whose header fields are all set before the first question and never change."""

    def _get_params_preserve(self, failobj: object, header: str) -> object:
        cache = self.__dict__.setdefault("_params_memo", {})
        params = cache.get(header)
        if params is None:
            params = cache[header] = super()._get_params_preserve(  # type: ignore[misc]  # private
                _NO_PARAMS, header)  # (an email.message method, the one this memo exists for)
        return failobj if params is _NO_PARAMS else params


_NO_PARAMS: list[tuple[str, str]] = []  # a sentinel object


class _Splitter:
    __slots__ = ("dashes", "data", "lines")

    def __init__(self, data: bytes) -> None:
        self.data = data
        self.dashes: list[int] = []
        self.lines: list[bytes] = []  # the line at each of dashes
        # Lines that start with "--", the only ones a delimiter can be. A bare CR ends a
        # line for the feed parser: the caller refuses "\r--", and a bare CR inside one
        # of these lines is refused here; elsewhere it only matters in a header block,
        # which _HEADER_BLOCK refuses it in (payload lines are joined back as they were).
        dashes = [0] if data.startswith(b"--") else []
        at = data.find(b"\n--")
        while at >= 0:
            dashes.append(at + 1)
            if len(dashes) > _MAX_DASH_LINES:
                raise _Bail
            at = data.find(b"\n--", at + 3)
        lines = [self._line(at) for at in dashes]
        for line in lines:
            cr = line.find(b"\r")
            if cr >= 0 and cr != len(line) - 2:
                raise _Bail
        self.dashes, self.lines = dashes, lines

    def _line(self, pos: int) -> bytes:
        end = self.data.find(b"\n", pos)
        return self.data[pos:] if end < 0 else self.data[pos : end + 1]

    def _after_line(self, pos: int) -> int:
        end = self.data.find(b"\n", pos)
        if end < 0:
            raise _Bail
        return end + 1

    def _scan(self, pos: int, outer: list[bytes], own: bytes | None) -> tuple[int, re.Match[bytes] | None]:
        """The first line at or after ``pos`` that ends an enclosing part (no match
        returned) or that is an ``own`` delimiter line; (len(data), None) if none is."""
        if not outer and own is None:
            return len(self.data), None
        dashes, lines = self.dashes, self.lines
        for i in range(bisect.bisect_left(dashes, pos), len(dashes)):
            line = lines[i]
            if outer and _delimiter(line, outer):
                return dashes[i], None
            if own is not None and line.startswith(own) and (mo := _DELIMITER_TAIL.match(line, len(own))):
                return dashes[i], mo
        return len(self.data), None

    def entity(self, start: int, stack: list[bytes], depth: int) -> tuple[Message, int, Message]:
        """(message, end, last): the entity whose header starts at ``start``, where its
        lines end (a line an enclosing boundary matches, or the end of the data), and the
        message the feed parser would have made last while reading it."""
        if depth > _MAX_DEPTH:
            raise _Bail
        data = self.data
        if data.startswith(b"\n", start) or data.startswith(b"\r\n", start):
            block_end = start
            body = start + (1 if data[start] == 0x0A else 2)
        else:
            block_end = header_end(data, start)
            if block_end == len(data):  # no empty line
                raise _Bail
            body = block_end + (1 if data[block_end] == 0x0A else 2)
            if not _HEADER_BLOCK.fullmatch(data, start, block_end):
                raise _Bail
        msg = _Message(policy=_COMPAT32)
        # The top level's own fields are never searched as body text: only the two that
        # decide its structure and decoding are needed (Message.get takes the first).
        fields = _TOP_FIELD if depth == 0 else _FIELD
        for f in fields.finditer(data, start, block_end):
            lines = f.group().decode("ascii", "surrogateescape").split("\n")
            name, value = _COMPAT32.header_source_parse([line + "\n" for line in lines[:-1]])
            msg.set_raw(name, value)
        ctype = msg.get_content_type()
        if ctype in ("message/delivery-status", "multipart/digest"):
            raise _Bail
        maintype = ctype.split("/")[0]  # Message.get_content_maintype()
        if maintype == "message":
            child, end, last = self.entity(body, stack, depth + 1)
            msg.attach(child)
            return msg, end, last
        if maintype == "multipart":
            return self._multipart(msg, body, stack, depth)
        end = self._scan(body, stack, None)[0]
        msg.set_payload(data[body:end].decode("ascii", "surrogateescape"))
        return msg, end, msg

    def _multipart(
        self, msg: Message, body: int, stack: list[bytes], depth: int
    ) -> tuple[Message, int, Message]:
        boundary = msg.get_boundary()
        if boundary is None or not _SAFE_BOUNDARY.fullmatch(boundary):
            raise _Bail
        own = b"--" + boundary.encode("ascii")
        inner = [*stack, own]
        data = self.data
        at, mo = self._scan(body, stack, own)
        if mo is None or mo.group(1):
            raise _Bail  # no start delimiter: the parser keeps the text as payload
        while True:
            first = self._after_line(at)
            if first >= len(data):
                raise _Bail
            if _delimiter(self._line(first), inner):
                raise _Bail  # delimiter lines in a row
            child, end, last = self.entity(first, inner, depth + 1)
            msg.attach(child)
            # RFC 2046: the line break before a delimiter belongs to the delimiter
            if last.get_content_maintype() != "multipart":
                # The raw payload, as email.feedparser trims it: get_payload() would
                # re-decode surrogates, set_payload keeps a str as given.
                payload = last._payload  # type: ignore[attr-defined]  # private, not in the stubs
                if isinstance(payload, str) and payload.endswith(("\r", "\n")):  # NLCRE_eol
                    last.set_payload(payload[: -2 if payload.endswith("\r\n") else -1])
            if end >= len(data):
                raise _Bail  # no close delimiter
            line = self._line(end)
            if _delimiter(line, stack):
                raise _Bail  # an enclosing part ends before this one is closed
            mo = _DELIMITER_TAIL.match(line, len(own)) if line.startswith(own) else None
            if mo is None:
                raise _Bail
            if mo.group(1):
                break
            at = end
        after = data.find(b"\n", end)
        end = self._scan(len(data) if after < 0 else after + 1, stack, None)[0]  # the epilogue
        return msg, end, msg


def _delimiter(line: bytes, seps: list[bytes]) -> bool:
    """Is ``line`` a delimiter line of one of the "--boundary" strings ``seps``?"""
    return any(line.startswith(sep) and _DELIMITER_TAIL.match(line, len(sep)) for sep in seps)


def _fast_tree(message: bytes) -> Message | None:
    """The email package's compat32 tree of ``message`` for the simple cases, or None."""
    if not FAST_PARSE or b"\r--" in message:
        return None  # (a bare CR starts a line for the feed parser; see _Splitter.__init__)
    try:
        return _Splitter(message).entity(0, [], 0)[0]
    except Exception:  # _Bail, and anything odd in the header methods: the parser decides
        return None


def parse_message(message: bytes) -> Message:
    """The compat32 tree of a message, as ``email.message_from_bytes`` makes it."""
    tree = _fast_tree(message)
    if tree is None:
        tree = email.message_from_bytes(message, policy=_COMPAT32)
    return tree
