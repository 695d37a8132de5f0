"""Sans-I/O IMAP connection framer, in the style of ``smtp/protocol.py``.

``IMAPConnection`` is fed bytes (``receive_data``) and yields events (``next_event``):
complete, parsed commands, typed errors to answer, requests to send ``+`` for a
synchronizing literal, SASL responses and IDLE's DONE. It never writes: the server formats
answers with ``format``. Rules that live here and are tested byte for byte:

* Literals. ``{n}`` (synchronizing): ``ContinuationRequest`` is emitted before the octets
  are read, after checking the command name and size; too big -> ``NO [TOOBIG]`` and the
  command is dropped (the client never sends the octets: it waits for ``+``).
  ``{n+}`` (LITERAL+, RFC 7888): too big -> ``BAD [TOOBIG]``; the client has already sent
  the octets, so RFC 7888 4 leaves two choices: read and discard them, or close. We discard
  the literal *and the rest of the command* (further lines and literals) so none of it is
  read as a command, unless the literal exceeds ``Limits.max_discard``: then
  ``ConnectionClosed`` (send ``* BYE`` and close) rather than reading gigabytes.
  APPEND literals are bounded by ``max_literal``, every other command's by
  ``max_small_literal`` (a LOGIN password needs no 64 MiB).
* Lines. Each line of a command (CRLF included) is at most ``max_line_length``; an
  overlong line is answered once (``BAD``) and discarded up to its LF, and if it ended in a
  ``{n+}`` marker its literal is discarded too: the tail is never read as a command.
  Lines must end in CRLF; a bare LF or CR is ``BAD``.
* Mode changes. After ``AUTHENTICATE``, ``IDLE``, ``STARTTLS`` and ``COMPRESS`` commands ``next_event``
  returns ``PAUSED`` until the application says what it answered:
  ``continue_authenticate()`` (sent a ``+`` challenge: the next line is a SASL response),
  ``start_idle()`` (sent ``+ idling``: the next line must be ``DONE``), ``tls_established()``
  (discards everything received in plaintext after STARTTLS), ``compression_started()``
  (hands back what was received after COMPRESS, to be decompressed), or ``resume()`` (sent the
  tagged completion: read commands again). Pipelined input stays buffered meanwhile.
"""

from __future__ import annotations

import base64
import binascii
import enum
import re
from collections import deque
from dataclasses import dataclass

from .commands import (
    COMMAND_NAMES,
    Authenticate,
    Command,
    Compress,
    SimpleCommand,
    parse_command,
    split_tag_and_name,
)
from .errors import IMAPError, IMAPParseError


class _Sentinel(enum.Enum):
    NEED_DATA = "NEED_DATA"
    PAUSED = "PAUSED"


NEED_DATA = _Sentinel.NEED_DATA
PAUSED = _Sentinel.PAUSED


class ProtocolError(Exception):
    """The application used the connection wrongly (e.g. ``start_idle`` with no IDLE)."""


@dataclass(frozen=True)
class Limits:
    max_line_length: int = 8192  # one line of a command, CRLF included
    max_literal: int = 64 * 1024 * 1024  # APPEND message literal
    max_small_literal: int = 64 * 1024  # a literal in any other command
    max_command_size: int | None = None  # lines + literals of one command; None: max_literal + 1 MiB
    max_discard: int = 128 * 1024 * 1024  # a too-big {n+} above this closes instead of discarding
    # Every command but APPEND: lines + literals. Without it a SEARCH could be 65 MB of
    # 64 KiB lines joined by {0+} literals: millions of criteria for the parser.
    max_small_command: int = 1024 * 1024
    max_literals: int = 1000  # literals in one command (an APPEND has one, a LOGIN two)

    @property
    def command_size(self) -> int:
        return self.max_command_size if self.max_command_size is not None else self.max_literal + (1 << 20)

    def size_limit(self, name: str | None) -> int:
        """Lines + literals allowed for a command called ``name``."""
        return self.command_size if name == "APPEND" else min(self.command_size, self.max_small_command)


# ---------------------------------------------------------------------------- events


@dataclass(frozen=True, slots=True)
class CommandReceived:
    command: Command


@dataclass(frozen=True, slots=True)
class CommandError:
    """Answer with ``format.error_response(error)`` (tagged, or ``* BAD`` when the tag was invalid)."""

    error: IMAPError


@dataclass(frozen=True, slots=True)
class ContinuationRequest:
    """A synchronizing literal was accepted: send ``+ Ready for literal data`` now."""

    tag: str
    size: int


@dataclass(frozen=True, slots=True)
class AuthResponse:
    """One SASL response line, base64-decoded; ``data is None``: the client sent ``*``
    (cancelled: answer ``tag BAD``; the connection already reads commands again)."""

    tag: str
    data: bytes | None


@dataclass(frozen=True, slots=True)
class IdleDone:
    """DONE ended the IDLE: send the tagged OK. Commands are read again."""

    tag: str


@dataclass(frozen=True, slots=True)
class ConnectionClosed:
    """Unrecoverable framing (a too-big non-synchronizing literal beyond ``max_discard``):
    send ``* BYE`` and close. Nothing more is read."""

    reason: str


Event = CommandReceived | CommandError | ContinuationRequest | AuthResponse | IdleDone | ConnectionClosed


class _Mode(enum.Enum):
    COMMAND = "command"
    LITERAL = "literal"
    DISCARD_LINE = "discard-line"
    DISCARD_LITERAL = "discard-literal"
    PAUSED = "paused"
    AUTH = "auth"
    IDLE = "idle"
    CLOSED = "closed"


_MARKER = re.compile(rb"~?\{([0-9]+)(\+?)\}\Z")
_TAIL = 64  # octets kept from a discarded line: enough to see a literal marker at its end
_HUGE = 1 << 64


def _literal_marker(line: bytes, *, check_quotes: bool = True) -> tuple[int, bool] | None:
    """(size, non-synchronizing) if the line (without CRLF) ends with a literal marker that
    is not inside a quoted string. Absurd sizes (> 19 digits) come back as 2**64."""
    m = _MARKER.search(line)
    if not m:
        return None
    if check_quotes:
        in_quote = False
        i = 0
        end = m.start()
        while i < end:
            c = line[i]
            if in_quote and c == 0x5C:
                i += 2
                continue
            if c == 0x22:
                in_quote = not in_quote
            i += 1
        if in_quote:
            return None
    digits = m.group(1)
    size = int(digits) if len(digits) <= 19 else _HUGE
    return size, bool(m.group(2))


class IMAPConnection:
    """One IMAP session's input side; see the module docstring."""

    def __init__(self, limits: Limits | None = None) -> None:
        self.limits = limits or Limits()
        self._in = bytearray()
        self._mode = _Mode.COMMAND
        self._events: deque[Event] = deque()
        self._cmd = bytearray()
        self._cmd_tag: str | None = None
        self._cmd_name: str | None = None
        self._remaining = 0  # literal octets still to read or discard
        self._literals = 0  # literals of the command being read
        self._tail = b""  # end of the line being discarded
        self._paused_for: str | None = None  # AUTHENTICATE, AUTH-RESPONSE, IDLE, STARTTLS, COMPRESS
        self._exchange_tag = ""

    # ---------------------------------------------------------------- I/O side

    def receive_data(self, data: bytes) -> None:
        if self._mode is not _Mode.CLOSED:
            self._in += data

    @property
    def buffered(self) -> int:
        return len(self._in)

    @property
    def closed(self) -> bool:
        return self._mode is _Mode.CLOSED

    @property
    def paused_for(self) -> str | None:
        return self._paused_for

    def next_event(self) -> Event | _Sentinel:
        while True:
            if self._events:
                return self._events.popleft()
            mode = self._mode
            if mode is _Mode.CLOSED:
                return NEED_DATA
            if mode is _Mode.PAUSED:
                return PAUSED
            if mode is _Mode.LITERAL:
                if not self._read_literal():
                    return NEED_DATA
                continue
            if mode is _Mode.DISCARD_LITERAL:
                take = min(self._remaining, len(self._in))
                del self._in[:take]
                self._remaining -= take
                if self._remaining:
                    return NEED_DATA
                self._mode = _Mode.DISCARD_LINE
                self._tail = b""
                continue
            if mode is _Mode.DISCARD_LINE:
                idx = self._in.find(b"\n")
                if idx < 0:
                    self._tail = (self._tail + bytes(self._in))[-_TAIL:]
                    self._in.clear()
                    return NEED_DATA
                line = (self._tail + bytes(self._in[:idx]))[-_TAIL:]
                del self._in[: idx + 1]
                self._tail = b""
                self._after_discarded_line(line.rstrip(b"\r"), check_quotes=False)
                continue
            taken = self._take_line()
            if taken is None:
                if self._events or self._mode is not mode:
                    continue
                return NEED_DATA
            line = taken
            if mode is _Mode.AUTH:
                self._auth_line(line)
            elif mode is _Mode.IDLE:
                self._idle_line(line)
            else:
                self._command_line(line)

    # ---------------------------------------------------------------- application side

    def _require_pause(self, *allowed: str) -> None:
        if self._mode is not _Mode.PAUSED or self._paused_for not in allowed:
            raise ProtocolError(f"not paused for {' or '.join(allowed)} (paused for {self._paused_for})")

    def continue_authenticate(self) -> None:
        """A ``+`` challenge was sent: the next line is a SASL response."""
        self._require_pause("AUTHENTICATE", "AUTH-RESPONSE")
        self._paused_for = None
        self._mode = _Mode.AUTH

    def start_idle(self) -> None:
        """``+ idling`` was sent: the next line must be DONE."""
        self._require_pause("IDLE")
        self._paused_for = None
        self._mode = _Mode.IDLE

    def tls_established(self) -> None:
        """The TLS handshake after STARTTLS is done: plaintext received after the command is
        thrown away (RFC 3501 6.2.1, the CVE-2011-0411 class of injection)."""
        self._require_pause("STARTTLS")
        self._in.clear()
        self._paused_for = None
        self._mode = _Mode.COMMAND

    def compression_started(self) -> bytes:
        """The tagged OK of COMPRESS was sent (RFC 4978 3): what was received after the
        command is compressed, so it is handed back, to go through the decompressor and
        :meth:`receive_data` again."""
        self._require_pause("COMPRESS")
        pending = bytes(self._in)
        self._in.clear()
        self._paused_for = None
        self._mode = _Mode.COMMAND
        return pending

    def resume(self) -> None:
        """The tagged response of the pausing command was sent: read commands again."""
        self._require_pause("AUTHENTICATE", "AUTH-RESPONSE", "IDLE", "STARTTLS", "COMPRESS")
        self._paused_for = None
        self._mode = _Mode.COMMAND

    def close(self) -> None:
        self._mode = _Mode.CLOSED
        self._in.clear()
        self._cmd = bytearray()

    # ---------------------------------------------------------------- internals

    def _tag_for_errors(self, line: bytes | None = None, *, overlong: bool = False) -> str | None:
        if self._mode in (_Mode.AUTH, _Mode.IDLE):
            return self._exchange_tag
        if self._cmd:
            return self._cmd_tag
        if line is None:
            return None
        if overlong:
            # Only what every split of the input shows: the first max_line_length + 1 octets,
            # and a tag only once the space after it is there (else a tag cut short by the
            # limit would be answered as if it were the client's).
            line = line[: self.limits.max_line_length + 1]
            tag = split_tag_and_name(line)[0]
            return tag if tag is not None and line[len(tag) : len(tag) + 1] == b" " else None
        return split_tag_and_name(line)[0]

    def _take_line(self) -> bytes | None:
        """A complete CRLF line without its CRLF, or None (need data, or an error was
        queued and the mode changed)."""
        buf = self._in
        limit = self.limits.max_line_length
        idx = buf.find(b"\n")
        if idx < 0:
            if len(buf) > limit:
                tag = self._tag_for_errors(bytes(buf[: limit + 1]), overlong=True)
                self._tail = bytes(buf[-_TAIL:])
                buf.clear()
                self._fail(IMAPParseError(tag, f"line too long (limit {limit} octets)"), None)
            return None
        line = bytes(buf[: idx + 1])
        del buf[: idx + 1]
        if len(line) > limit:
            self._fail(IMAPParseError(self._tag_for_errors(line, overlong=True),
                                      f"line too long (limit {limit} octets)"),
                       line.rstrip(b"\r\n"))
            return None
        if not line.endswith(b"\r\n") or b"\r" in line[:-2]:
            self._fail(IMAPParseError(self._tag_for_errors(line), "bare CR or LF: lines must end with CRLF"),
                       line.rstrip(b"\r\n"))
            return None
        return line[:-2]

    def _fail(self, error: IMAPError, line: bytes | None, *, check_quotes: bool = False) -> None:
        """Queue the error, drop the command, and discard whatever of it is still coming:
        the rest of this line (``line is None``) or a literal announced at its end."""
        self._events.append(CommandError(error))
        self._cmd = bytearray()
        self._cmd_tag = self._cmd_name = None
        if self._mode in (_Mode.AUTH, _Mode.IDLE):
            self._mode = _Mode.COMMAND  # the exchange is over: the error is its completion
        if line is None:
            self._mode = _Mode.DISCARD_LINE
            return
        self._mode = _Mode.COMMAND
        self._after_discarded_line(line, check_quotes=check_quotes)

    def _after_discarded_line(self, line: bytes, *, check_quotes: bool) -> None:
        marker = _literal_marker(line, check_quotes=check_quotes)
        if marker is None or not marker[1]:
            # No literal, or a synchronizing one the client will not send without "+".
            self._mode = _Mode.COMMAND
            return
        size = marker[0]
        if size > self.limits.max_discard:
            self._events.append(ConnectionClosed(f"non-synchronizing literal of {size} octets is too large"))
            self.close()
            return
        self._remaining = size
        self._mode = _Mode.DISCARD_LITERAL

    def _read_literal(self) -> bool:
        take = min(self._remaining, len(self._in))
        if take:
            self._cmd += self._in[:take]
            del self._in[:take]
            self._remaining -= take
        if self._remaining:
            return False
        self._mode = _Mode.COMMAND
        return True

    def _command_line(self, line: bytes) -> None:
        first = not self._cmd
        if first:
            if not line:
                self._events.append(CommandError(IMAPParseError(None, "empty command line")))
                return
            self._cmd_tag, self._cmd_name = split_tag_and_name(line)
        if first:
            self._literals = 0
        if len(self._cmd) + len(line) + 2 > self.limits.size_limit(self._cmd_name):
            error = IMAPParseError(self._cmd_tag, "command too long", code="TOOBIG")
            self._fail(error, line, check_quotes=True)
            return
        marker = _literal_marker(line)
        if marker is not None:
            self._literals += 1
            if self._literals > self.limits.max_literals:
                error = IMAPParseError(self._cmd_tag, f"more than {self.limits.max_literals} literals"
                                       " in one command", code="LIMIT")
                self._fail(error, line, check_quotes=True)
                return
        self._cmd += line
        self._cmd += b"\r\n"
        if marker is None:
            raw = bytes(self._cmd)
            self._cmd = bytearray()
            self._cmd_tag = self._cmd_name = None
            self._dispatch(raw)
            return
        size, nonsync = marker
        tag, name = self._cmd_tag, self._cmd_name
        if tag is None:
            self._fail(IMAPParseError(None, "missing or invalid tag"), line)
            return
        if name not in COMMAND_NAMES:
            self._fail(IMAPParseError(tag, f"unknown command {(name or '')[:30]}"), line)
            return
        limit = self.limits.max_literal if name == "APPEND" else self.limits.max_small_literal
        if size > limit or len(self._cmd) + size > self.limits.size_limit(name):
            text = f"literal of {size} octets is too large (limit {limit})"
            if nonsync:
                self._fail(IMAPParseError(tag, text, code="TOOBIG"), line)
            else:
                self._fail(IMAPError(tag, text, code="TOOBIG", status="NO"), line)
            return
        self._remaining = size
        self._mode = _Mode.LITERAL
        if not nonsync:
            self._events.append(ContinuationRequest(tag, size))

    def _dispatch(self, raw: bytes) -> None:
        try:
            command = parse_command(raw)
        except IMAPError as exc:
            self._events.append(CommandError(exc))
            return
        self._events.append(CommandReceived(command))
        pause = None
        if isinstance(command, Authenticate):
            pause = "AUTHENTICATE"
        elif isinstance(command, SimpleCommand) and command.name in ("IDLE", "STARTTLS"):
            pause = command.name
        elif isinstance(command, Compress):
            pause = "COMPRESS"
        if pause is not None:
            self._mode = _Mode.PAUSED
            self._paused_for = pause
            self._exchange_tag = command.tag

    def _auth_line(self, line: bytes) -> None:
        tag = self._exchange_tag
        if line == b"*":
            self._mode = _Mode.COMMAND
            self._events.append(AuthResponse(tag, None))
            return
        try:
            data = base64.b64decode(line, validate=True)
        except binascii.Error:
            self._mode = _Mode.COMMAND
            self._events.append(CommandError(IMAPParseError(tag, "invalid base64 in the SASL response")))
            return
        self._mode = _Mode.PAUSED
        self._paused_for = "AUTH-RESPONSE"
        self._events.append(AuthResponse(tag, data))

    def _idle_line(self, line: bytes) -> None:
        tag = self._exchange_tag
        if line.upper() == b"DONE":
            self._mode = _Mode.COMMAND
            self._events.append(IdleDone(tag))
            return
        self._fail(IMAPParseError(tag, "expected DONE"), line, check_quotes=True)
