"""Sans-I/O SMTP server protocol (RFC 5321 + ESMTP extensions), in the style of h11.

The ``ServerConnection`` is fed bytes (``receive_data``) and yields events
(``next_event``); the application answers the events that need a decision (``reply``) and
sends whatever ``data_to_send`` returns. No sockets, no clocks, no asyncio: every rule
about syntax, sequencing, limits, pipelining, DATA transparency, bare CR/LF and STARTTLS
buffer discarding lives here and is unit-tested byte for byte.

Events that need an application reply: ``Helo``, ``MailFrom``, ``RcptTo``, ``MessageReceived``,
``AuthStart``/``AuthResponse``. While one is outstanding, ``next_event`` returns
``PAUSED``; commands the client pipelined stay buffered and are processed in order after
the reply, which keeps replies in command order (RFC 2920).

Everything else (NOOP, RSET, QUIT, HELP, VRFY, syntax and sequence errors, oversize
lines, DATA framing) is answered by the core itself.
"""

from __future__ import annotations

import base64
import binascii
import enum
from dataclasses import dataclass, field

from .address import Address, AddressError, parse_path, split_path_and_params


class State(enum.Enum):
    CONNECTED = "connected"  # greeting sent, no HELO yet
    READY = "ready"  # HELO/EHLO done, no transaction
    MAIL = "mail"  # MAIL accepted, waiting for RCPT
    RCPT = "rcpt"  # at least one RCPT accepted
    DATA = "data"  # reading message content
    AUTH = "auth"  # inside a SASL exchange
    CLOSED = "closed"


class _Sentinel(enum.Enum):
    NEED_DATA = "NEED_DATA"  # feed more bytes
    PAUSED = "PAUSED"  # waiting for the application's reply


NEED_DATA = _Sentinel.NEED_DATA
PAUSED = _Sentinel.PAUSED


# ---------------------------------------------------------------------------- events


@dataclass(frozen=True, slots=True)
class Helo:
    hostname: str
    extended: bool  # EHLO vs HELO


@dataclass(frozen=True, slots=True)
class MailFrom:
    address: Address | None  # None = null reverse-path <>
    params: dict[str, str | None]
    raw: str  # the path as the client wrote it, for logs


@dataclass(frozen=True, slots=True)
class RcptTo:
    address: Address
    params: dict[str, str | None]
    raw: str


@dataclass(frozen=True, slots=True)
class MessageReceived:
    """A complete message: CRLF line endings, dot-unstuffed, without the final ``.``."""

    data: bytes


@dataclass(frozen=True, slots=True)
class StartTLS:
    """The core has queued ``220``; send it, then upgrade and call ``tls_established``."""


@dataclass(frozen=True, slots=True)
class AuthStart:
    mechanism: str
    initial_response: bytes | None  # decoded SASL-IR; b"" for "=", None when absent


@dataclass(frozen=True, slots=True)
class AuthResponse:
    response: bytes  # a decoded continuation line


@dataclass(frozen=True, slots=True)
class ConnectionClosed:
    """QUIT answered or the core gave up (too many errors): close after sending."""

    reason: str


Event = Helo | MailFrom | RcptTo | MessageReceived | StartTLS | AuthStart | AuthResponse | ConnectionClosed


class ProtocolError(Exception):
    """The application used the core wrongly (e.g. a reply with no pending event)."""


# ---------------------------------------------------------------------------- config


@dataclass(frozen=True)
class ServerParams:
    hostname: str
    max_message_size: int = 25 * 1024 * 1024
    max_recipients: int = 100
    max_line_length: int = 2048  # commands and DATA lines, CRLF included
    max_errors: int = 10  # syntax/sequence errors before 421
    tls_available: bool = False  # offer STARTTLS
    tls_active: bool = False  # connection is already TLS (port 465)
    auth_mechanisms: tuple[str, ...] = ()  # e.g. ("PLAIN", "LOGIN"); empty = no AUTH
    auth_requires_tls: bool = True
    reject_bare_newlines: bool = True
    greeting_text: str = "ESMTP pymaild"


@dataclass(frozen=True, slots=True)
class Reply:
    code: int
    status: str  # enhanced status code, "" for replies without one (220, 221 greeting...)
    text: str

    def encode(self) -> bytes:
        lines = self.text.split("\n") if self.text else [""]
        prefix = f"{self.status} " if self.status else ""
        out = []
        for i, line in enumerate(lines):
            sep = " " if i == len(lines) - 1 else "-"
            out.append(f"{self.code}{sep}{prefix}{line}".rstrip(" "))
        return ("\r\n".join(out) + "\r\n").encode("utf-8", "replace")


# Commands allowed before HELO (RFC 5321 4.1.4 lets NOOP/QUIT/RSET/HELP/VRFY anywhere).
_ANYTIME = {"NOOP", "QUIT", "RSET", "HELP", "VRFY"}
_KNOWN = {"HELO", "EHLO", "MAIL", "RCPT", "DATA", "RSET", "NOOP", "QUIT", "HELP", "VRFY",
          "EXPN", "STARTTLS", "AUTH", "BDAT", "ETRN", "TURN"}
_NOT_IMPLEMENTED = {"EXPN", "BDAT", "ETRN", "TURN"}


@dataclass
class _Transaction:
    mail_from: Address | None = None
    mail_params: dict[str, str | None] = field(default_factory=dict)
    recipients: list[Address] = field(default_factory=list)


class ServerConnection:
    """One SMTP server session's protocol state; see the module docstring."""

    def __init__(self, params: ServerParams) -> None:
        self.params = params
        self.state = State.CONNECTED
        self.tls = params.tls_active
        self.extended = False
        self.helo_name = ""
        self.authenticated_as: str | None = None
        self.transaction = _Transaction()
        self.errors = 0
        self._in = bytearray()
        self._out: list[bytes] = []
        self._pending: str | None = None  # name of the event awaiting a reply
        self._pending_event: Event | None = None
        # DATA phase
        self._data = bytearray()
        self._data_size = 0
        self._data_too_big = False
        self._data_bad_newline = False
        self._data_long_line = False
        self._data_line_len = 0
        self._data_prev_cr = False
        self._data_at_line_start = True
        self._auth_mechanism: str | None = None
        self._closing = False
        self._discarding_long_line = False

    # ---------------------------------------------------------------- I/O side

    def greeting(self) -> bytes:
        return Reply(220, "", f"{self.params.hostname} {self.params.greeting_text}").encode()

    def receive_data(self, data: bytes) -> None:
        if self.state is not State.CLOSED:
            self._in += data

    def data_to_send(self) -> bytes:
        out = b"".join(self._out)
        self._out.clear()
        return out

    @property
    def buffered(self) -> int:
        return len(self._in)

    @property
    def in_data(self) -> bool:
        return self.state is State.DATA

    @property
    def closed(self) -> bool:
        return self.state is State.CLOSED

    def next_event(self) -> Event | _Sentinel:
        """Process buffered input until an event for the application or lack of input."""
        while True:
            if self.state is State.CLOSED:
                return NEED_DATA
            if self._pending is not None:
                return PAUSED
            if self.state is State.DATA:
                event = self._consume_data()
                if event is None:
                    return NEED_DATA
                if event is _CONTINUE:
                    continue
                return event  # type: ignore[return-value]
            line = self._take_line()
            if line is None:
                return NEED_DATA
            if line is _CONTINUE:
                continue
            event = self._handle_line(line)  # type: ignore[arg-type]
            if event is not None:
                return event

    def reply(self, code: int, status: str, text: str) -> None:
        """Answer the pending event. 2xx/3xx accept it; anything else refuses it."""
        pending = self._pending
        if pending is None:
            raise ProtocolError("reply() without a pending event")
        event = self._pending_event
        self._pending = None
        self._pending_event = None
        ok = 200 <= code < 300
        if pending == "HELO" and ok:
            assert isinstance(event, Helo)
            self._reset_transaction()
            self.extended = event.extended
            self.helo_name = event.hostname
            self.state = State.READY
            if event.extended:
                self._send(Reply(250, "", "\n".join([self.params.hostname, *self._extensions()])))
                return
        elif pending == "MAIL" and ok:
            assert isinstance(event, MailFrom)
            self.transaction = _Transaction(event.address, event.params)
            self.state = State.MAIL
        elif pending == "RCPT" and ok:
            assert isinstance(event, RcptTo)
            self.transaction.recipients.append(event.address)
            self.state = State.RCPT
        elif pending == "DATA":
            self._reset_transaction()
        elif pending == "AUTH":
            if code == 334:
                # A SASL challenge: the next client line is a response, not a command.
                self.state = State.AUTH
                self._out.append(f"334 {text}\r\n".encode())
                return
            if ok:
                raise ProtocolError("use auth_succeeded() to accept an AUTH exchange")
            self.state = State.READY
            self._auth_mechanism = None
        elif not ok:
            self._count_error()
        self._send(Reply(code, status, text))
        if code == 421:
            self._close("closing after 421")

    def auth_succeeded(self, user: str) -> None:
        """Finish a SASL exchange successfully: replies 235 and marks the session."""
        if self._pending != "AUTH":
            raise ProtocolError("no AUTH exchange pending")
        self._pending = None
        self._pending_event = None
        self.state = State.READY
        self._auth_mechanism = None
        self.authenticated_as = user
        self._send(Reply(235, "2.7.0", "Authentication successful"))

    def tls_established(self) -> None:
        """The transport is now TLS: RFC 3207 4.2 says forget everything from before."""
        self.tls = True
        self.state = State.CONNECTED
        self.extended = False
        self.helo_name = ""
        self._reset_transaction()
        self._in.clear()

    def close_with(self, code: int, status: str, text: str) -> None:
        """Unsolicited reply then close (timeouts, shutdown): 421 4.4.2 etc."""
        self._send(Reply(code, status, text))
        self._close(text)

    # ---------------------------------------------------------------- internals

    def _send(self, reply: Reply) -> None:
        self._out.append(reply.encode())

    def _close(self, reason: str) -> None:
        self.state = State.CLOSED
        self._in.clear()
        self._pending = None
        self._closing = True

    def _count_error(self) -> None:
        self.errors += 1

    def _error(self, code: int, status: str, text: str) -> ConnectionClosed | None:
        self._send(Reply(code, status, text))
        self.errors += 1
        if self.errors >= self.params.max_errors:
            self._send(Reply(421, "4.7.0", f"{self.params.hostname} too many errors, closing"))
            self._close("too many errors")
            return ConnectionClosed("too many errors")
        return None

    def _reset_transaction(self) -> None:
        self.transaction = _Transaction()
        if self.state in (State.MAIL, State.RCPT, State.DATA):
            self.state = State.READY

    def _extensions(self) -> list[str]:
        ext = [
            "PIPELINING",
            f"SIZE {self.params.max_message_size}",
            "8BITMIME",
            "ENHANCEDSTATUSCODES",
            "SMTPUTF8",
        ]
        if self.params.tls_available and not self.tls:
            ext.append("STARTTLS")
        auth_allowed = self.tls or not self.params.auth_requires_tls
        if self.params.auth_mechanisms and auth_allowed and self.authenticated_as is None:
            ext.append("AUTH " + " ".join(self.params.auth_mechanisms))
        return ext

    def _take_line(self) -> bytes | object | None:
        """One CRLF-terminated command line, or None if incomplete."""
        buf = self._in
        idx = buf.find(b"\n")
        limit = self.params.max_line_length
        if idx < 0:
            if len(buf) > limit:
                # Overlong line: discard what we have and everything up to the next LF,
                # then answer once (library notes: never treat the tail as a new line).
                self._in.clear()
                self._discarding_long_line = True
            return None
        line = bytes(buf[: idx + 1])
        del buf[: idx + 1]
        if self._discarding_long_line or len(line) > limit:
            self._discarding_long_line = False
            closed = self._error(500, "5.5.6", f"Line too long (limit {limit} octets)")
            return closed if closed is not None else _CONTINUE
        if not line.endswith(b"\r\n") or b"\r" in line[:-2]:
            closed = self._error(500, "5.5.2", "Bare CR or LF in command: lines must end with CRLF")
            return closed if closed is not None else _CONTINUE
        return line[:-2]

    def _handle_line(self, raw: bytes) -> Event | None:
        if isinstance(raw, ConnectionClosed):
            return raw
        if self.state is State.AUTH:
            return self._auth_line(raw)
        try:
            line = raw.decode("utf-8")
        except UnicodeDecodeError:
            return self._error(500, "5.5.2", "Command is not valid UTF-8")
        verb, _, arg = line.partition(" ")
        verb = verb.upper()
        arg = arg.strip(" ")
        if not verb:
            return self._error(500, "5.5.2", "Empty command")
        if verb not in _KNOWN:
            return self._error(500, "5.5.1", f"Command not recognized: {verb[:20]!r}")
        if verb in _NOT_IMPLEMENTED:
            return self._error(502, "5.5.1", f"{verb} not implemented")
        handler = getattr(self, f"_cmd_{verb}")
        result: Event | None = handler(arg)
        return result

    def _need_reply(self, kind: str, event: Event) -> Event:
        self._pending = kind
        self._pending_event = event
        return event

    # ---------------------------------------------------------------- commands

    def _cmd_HELO(self, arg: str) -> Event | None:
        return self._helo(arg, extended=False)

    def _cmd_EHLO(self, arg: str) -> Event | None:
        return self._helo(arg, extended=True)

    def _helo(self, arg: str, *, extended: bool) -> Event | None:
        name = arg.strip()
        if not name or " " in name:
            return self._error(501, "5.5.4", f"Syntax: {'EHLO' if extended else 'HELO'} hostname")
        if len(name) > 255 or any(ord(c) < 33 or ord(c) > 126 for c in name):
            return self._error(501, "5.5.4", "Invalid host name")
        return self._need_reply("HELO", Helo(name, extended))

    def _cmd_MAIL(self, arg: str) -> Event | None:
        if self.state is State.CONNECTED:
            return self._error(503, "5.5.1", "Send HELO/EHLO first")
        if self.state in (State.MAIL, State.RCPT):
            return self._error(503, "5.5.1", "Nested MAIL command")
        if arg[:5].upper() != "FROM:":
            return self._error(501, "5.5.4", "Syntax: MAIL FROM:<address>")
        try:
            path, params = split_path_and_params(arg[5:])
            utf8 = "SMTPUTF8" in params
            address = parse_path(path, utf8=utf8, allow_empty=True)
        except AddressError as exc:
            return self._error(501, "5.1.7", f"Bad sender address syntax: {exc}")
        problem = self._check_mail_params(params)
        if problem is not None:
            return problem
        return self._need_reply("MAIL", MailFrom(address, params, path))

    def _check_mail_params(self, params: dict[str, str | None]) -> Event | None:
        for key, value in params.items():
            if key == "SIZE":
                if value is None or not value.isdigit():
                    return self._error(501, "5.5.4", "SIZE needs a number")
                if int(value) > self.params.max_message_size:
                    return self._error(552, "5.3.4", "Message size exceeds fixed maximum message size")
            elif key == "BODY":
                if value is None or value.upper() not in ("7BIT", "8BITMIME"):
                    return self._error(501, "5.5.4", "BODY must be 7BIT or 8BITMIME")
            elif key == "SMTPUTF8":
                if value is not None:
                    return self._error(501, "5.5.4", "SMTPUTF8 takes no value")
            elif key == "AUTH":
                continue  # RFC 4954 5: accepted and ignored from untrusted clients
            else:
                return self._error(555, "5.5.4", f"MAIL parameter {key} not recognized")
        return None

    def _cmd_RCPT(self, arg: str) -> Event | None:
        if self.state not in (State.MAIL, State.RCPT):
            return self._error(503, "5.5.1", "Need MAIL command first")
        if arg[:3].upper() != "TO:":
            return self._error(501, "5.5.4", "Syntax: RCPT TO:<address>")
        if len(self.transaction.recipients) >= self.params.max_recipients:
            self._send(Reply(452, "4.5.3", f"Too many recipients (limit {self.params.max_recipients})"))
            return None
        try:
            path, params = split_path_and_params(arg[3:])
            utf8 = "SMTPUTF8" in self.transaction.mail_params
            address = parse_path(path, utf8=utf8)
        except AddressError as exc:
            return self._error(501, "5.1.3", f"Bad recipient address syntax: {exc}")
        assert address is not None
        if params:
            return self._error(555, "5.5.4", f"RCPT parameter {next(iter(params))} not recognized")
        return self._need_reply("RCPT", RcptTo(address, params, path))

    def _cmd_DATA(self, arg: str) -> Event | None:
        if arg:
            return self._error(501, "5.5.4", "Syntax: DATA")
        if self.state is State.MAIL:
            return self._error(554, "5.5.1", "No valid recipients")
        if self.state is not State.RCPT:
            return self._error(503, "5.5.1", "Need RCPT command first")
        self.state = State.DATA
        self._data = bytearray()
        self._data_size = 0
        self._data_too_big = self._data_bad_newline = self._data_long_line = False
        self._data_line_len = 0
        self._data_prev_cr = False
        self._data_at_line_start = True
        self._send(Reply(354, "", "End data with <CR><LF>.<CR><LF>"))
        return None

    def _cmd_RSET(self, arg: str) -> Event | None:
        if arg:
            return self._error(501, "5.5.4", "Syntax: RSET")
        self._reset_transaction()
        self._send(Reply(250, "2.0.0", "Reset OK"))
        return None

    def _cmd_NOOP(self, arg: str) -> Event | None:
        self._send(Reply(250, "2.0.0", "OK"))
        return None

    def _cmd_HELP(self, arg: str) -> Event | None:
        self._send(Reply(214, "2.0.0", "See RFC 5321"))
        return None

    def _cmd_VRFY(self, arg: str) -> Event | None:
        if not arg:
            return self._error(501, "5.5.4", "Syntax: VRFY address")
        # Never confirm addresses (harvesting), RFC 5321 3.5.3 allows 252.
        self._send(Reply(252, "2.5.2", "Cannot VRFY user, but will accept message and attempt delivery"))
        return None

    def _cmd_QUIT(self, arg: str) -> Event | None:
        self._send(Reply(221, "2.0.0", f"{self.params.hostname} closing connection"))
        self._close("quit")
        return ConnectionClosed("quit")

    def _cmd_STARTTLS(self, arg: str) -> Event | None:
        if arg:
            return self._error(501, "5.5.4", "Syntax: STARTTLS")
        if self.tls:
            return self._error(503, "5.5.1", "TLS already active")
        if not self.params.tls_available:
            return self._error(502, "5.5.1", "STARTTLS not available")
        if self.state is State.CONNECTED:
            pass  # RFC 3207 permits STARTTLS before EHLO (clients rarely do it)
        if self.state in (State.MAIL, State.RCPT):
            return self._error(503, "5.5.1", "STARTTLS not allowed inside a transaction")
        self._send(Reply(220, "2.0.0", "Ready to start TLS"))
        # STARTTLS injection defence (CVE-2011-0411 class): whatever the client pipelined
        # after STARTTLS arrived in plaintext and must never be read as post-TLS input.
        self._in.clear()
        return StartTLS()

    def _cmd_AUTH(self, arg: str) -> Event | None:
        if not self.params.auth_mechanisms:
            return self._error(502, "5.5.1", "AUTH not available")
        if self.params.auth_requires_tls and not self.tls:
            return self._error(538, "5.7.11", "Encryption required for requested authentication mechanism")
        if self.state is State.CONNECTED:
            return self._error(503, "5.5.1", "Send EHLO first")
        if self.authenticated_as is not None:
            return self._error(503, "5.5.1", "Already authenticated")
        if self.state is not State.READY:
            return self._error(503, "5.5.1", "AUTH not allowed inside a transaction")
        mech, _, initial = arg.partition(" ")
        mech = mech.upper()
        if mech not in self.params.auth_mechanisms:
            return self._error(504, "5.5.4", "Unrecognized authentication type")
        initial_bytes: bytes | None = None
        if initial:
            if initial == "=":
                initial_bytes = b""
            else:
                try:
                    initial_bytes = base64.b64decode(initial, validate=True)
                except (binascii.Error, ValueError):
                    return self._error(501, "5.5.2", "Cannot decode base64 initial response")
        self._auth_mechanism = mech
        return self._need_reply("AUTH", AuthStart(mech, initial_bytes))

    def _auth_line(self, raw: bytes) -> Event | None:
        if raw == b"*":
            self.state = State.READY
            self._auth_mechanism = None
            return self._error(501, "5.0.0", "Authentication cancelled")
        try:
            decoded = base64.b64decode(raw, validate=True)
        except (binascii.Error, ValueError):
            self.state = State.READY
            self._auth_mechanism = None
            return self._error(501, "5.5.2", "Cannot decode base64 response")
        self.state = State.READY
        return self._need_reply("AUTH", AuthResponse(decoded))

    # ---------------------------------------------------------------- DATA

    def _consume_data(self) -> Event | object | None:
        """Stream DATA bytes: unstuff dots, count size, spot bare CR/LF, find <CRLF>.<CRLF>.

        Only ``CRLF . CRLF`` ends the message: a ``LF . LF`` or ``LF . CRLF`` inside the
        data is content (and, being a bare LF, poisons the message) — the SMTP smuggling
        defence is that the end of data is recognised exactly one way.
        """
        buf = self._in
        if not buf:
            return None
        limit = self.params.max_line_length
        pos = 0
        n = len(buf)
        while pos < n:
            nl = buf.find(b"\n", pos)
            if nl < 0:
                # Incomplete line: keep it buffered unless it is already too long.
                if n - pos > limit:
                    self._data_long_line = True
                    self._append_data(bytes(buf[pos:]), partial=True)
                    del buf[:]
                    return None
                break
            line = bytes(buf[pos : nl + 1])
            pos = nl + 1
            if line == b".\r\n" and self._data_at_line_start:
                del buf[:pos]
                return self._finish_data()
            self._append_data(line, partial=False)
        del buf[:pos]
        return None

    def _append_data(self, chunk: bytes, *, partial: bool) -> None:
        if self._data_at_line_start and chunk.startswith(b"."):
            chunk = chunk[1:]  # RFC 5321 4.5.2 transparency
        if not partial:
            body = chunk[:-1]
            if not body.endswith(b"\r") or b"\r" in body[:-1]:
                self._data_bad_newline = True
            elif len(chunk) + self._data_line_len > self.params.max_line_length:
                self._data_long_line = True
            self._data_line_len = 0
            self._data_at_line_start = True
        else:
            if b"\r" in chunk[:-1]:
                self._data_bad_newline = True
            self._data_line_len += len(chunk)
            self._data_at_line_start = False
        self._data_size += len(chunk)
        if self._data_size > self.params.max_message_size:
            if not self._data_too_big:
                self._data = bytearray()  # stop holding what we will refuse anyway
            self._data_too_big = True
        if not (self._data_too_big or self._data_bad_newline or self._data_long_line):
            self._data += chunk

    def _finish_data(self) -> Event | object:
        self.state = State.READY if self.helo_name else State.CONNECTED
        data = bytes(self._data)
        self._data = bytearray()
        if self._data_too_big:
            self._reset_transaction()
            self._send(Reply(552, "5.3.4", "Message size exceeds fixed maximum message size"))
            return _CONTINUE
        if self._data_bad_newline and self.params.reject_bare_newlines:
            self._reset_transaction()
            self._send(Reply(554, "5.6.0", "Message contains bare CR or LF characters;"
                             " lines must end with CRLF (RFC 5321 2.3.8)"))
            return _CONTINUE
        if self._data_long_line:
            self._reset_transaction()
            self._send(Reply(554, "5.6.0", f"Message has a line longer than {self.params.max_line_length}"
                             " octets (RFC 5321 4.5.3.1.6)"))
            return _CONTINUE
        self.state = State.RCPT  # the transaction is still open until the reply
        return self._need_reply("DATA", MessageReceived(data))


_CONTINUE = object()


def decode_auth_plain(response: bytes) -> tuple[str, str, str]:
    """SASL PLAIN (RFC 4616): ``authzid NUL authcid NUL password`` -> (authzid, user, pw)."""
    parts = response.split(b"\0")
    if len(parts) != 3:
        raise ValueError("malformed PLAIN response")
    authzid, user, password = (p.decode("utf-8") for p in parts)
    if not user:
        raise ValueError("empty user name")
    return authzid, user, password
