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
import re
from dataclasses import dataclass, field
from typing import Final

from ..address import (
    Address,
    AddressError,
    NeedsSMTPUTF8Error,
    ParameterError,
    parse_path,
    split_path_and_params,
)
from ..smtpreply import SMTPReply


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


# Final: mypy then narrows ``event is PAUSED`` like the enum member itself.
NEED_DATA: Final = _Sentinel.NEED_DATA
PAUSED: Final = _Sentinel.PAUSED


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
    """The core has queued ``220``; send it, then upgrade and call ``tls_established``.

    Until then ``next_event`` returns ``PAUSED`` and ``receive_data`` discards its input:
    nothing that arrived in plaintext after STARTTLS is ever processed.
    """


@dataclass(frozen=True, slots=True)
class AuthStart:
    mechanism: str
    initial_response: bytes | None  # decoded SASL-IR; b"" for "=", None when absent


@dataclass(frozen=True, slots=True)
class AuthResponse:
    response: bytes  # a decoded continuation line


@dataclass(frozen=True, slots=True)
class ConnectionClosed:
    """The session is over (QUIT, too many errors, a 421 reply, ``close_with``): send what
    ``data_to_send`` returns, then close. Returned once; ``next_event`` then says NEED_DATA."""

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
    max_errors: int = 20  # errors (incl. refused RCPTs) before 421, like smtpd_hard_error_limit
    tls_available: bool = False  # offer STARTTLS
    tls_active: bool = False  # connection is already TLS (port 465)
    auth_mechanisms: tuple[str, ...] = ()  # e.g. ("PLAIN", "LOGIN"); empty = no AUTH
    auth_requires_tls: bool = True
    max_auth_failures: int = 3  # failed AUTH exchanges (535) per connection, then 421 and close
    reject_bare_newlines: bool = True
    greeting_text: str = "ESMTP pymaild"


# The core's replies are the project's one reply type (mailserver/smtpreply.py).
Reply = SMTPReply


_KNOWN = {"HELO", "EHLO", "MAIL", "RCPT", "DATA", "RSET", "NOOP", "QUIT", "HELP", "VRFY",
          "EXPN", "STARTTLS", "AUTH", "BDAT", "ETRN", "TURN"}
_NOT_IMPLEMENTED = {"EXPN", "BDAT", "ETRN", "TURN"}
# Verbs only a browser, an HTTP proxy probe or a POP3 client sends (Postfix's
# smtpd_forbidden_commands): the connection is closed at once, not answered with 500s.
_FOREIGN = frozenset({b"GET", b"POST", b"HEAD", b"PUT", b"DELETE", b"OPTIONS", b"PATCH", b"CONNECT",
                      b"USER", b"PASS"})
_SIZE_VALUE = re.compile(r"[0-9]{1,20}")  # ASCII digits only: str.isdigit() accepts "²"
_END_OF_DATA = b"\r\n.\r\n"


class _Skip(enum.Enum):
    SKIP = "SKIP"  # a line was consumed and already answered (error)


_SKIP = _Skip.SKIP


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
        self.auth_failures = 0
        # Things worth a log line that the core decided alone (e.g. AUTH before STARTTLS);
        # the I/O side logs them after next_event() (take_notices).
        self._notices: list[str] = []
        self._in = bytearray()
        self._out: list[bytes] = []
        self._out_size = 0
        self._pending: str | None = None  # name of the event awaiting a reply
        self._pending_event: Event | None = None
        self._close_event: ConnectionClosed | None = None  # to report once from next_event
        self._awaiting_tls = False  # StartTLS returned, tls_established() not called yet
        # DATA phase
        self._data = bytearray()
        self._data_size = 0
        self._data_too_big = False
        self._data_bad_newline = False
        self._data_long_line = False
        self._data_line_len = 0  # octets of the current, still unterminated, line (unstuffed)
        self._data_at_line_start = True  # the last consumed octets were CRLF (or DATA just began)
        self._auth_mechanism: str | None = None
        self._discarding_long_line = False

    # ---------------------------------------------------------------- I/O side

    def greeting(self) -> bytes:
        return Reply(220, "", f"{self.params.hostname} {self.params.greeting_text}").encode()

    def receive_data(self, data: bytes) -> None:
        # Closed: nothing more is read. Awaiting TLS: whatever arrives before the handshake is
        # plaintext the client pipelined after STARTTLS (the CVE-2011-0411 class of injection).
        if self.state is not State.CLOSED and not self._awaiting_tls:
            self._in += data

    def data_to_send(self) -> bytes:
        out = b"".join(self._out)
        self._out.clear()
        self._out_size = 0
        return out

    @property
    def unsent(self) -> int:
        """Octets of replies not yet taken by ``data_to_send()``."""
        return self._out_size

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
        """Process buffered input until an event for the application or lack of input.

        Returns ``PAUSED`` while an event awaits ``reply()`` and between ``StartTLS`` and
        ``tls_established()``. After the session closed (QUIT, too many errors, a 421),
        ``ConnectionClosed`` is returned once, then ``NEED_DATA`` forever.
        """
        while True:
            if self.state is State.CLOSED:
                closed = self._close_event
                self._close_event = None
                return closed if closed is not None else NEED_DATA
            if self._pending is not None or self._awaiting_tls:
                return PAUSED
            if self.state is State.DATA:
                if not self._consume_data():
                    return NEED_DATA
                data_event = self._finish_data()
                if data_event is not None:
                    return data_event
                continue
            line = self._take_line()
            if line is None:
                return NEED_DATA
            if line is _SKIP:
                continue
            event = self._handle_line(line)
            if event is not None:
                return event

    def reply(self, code: int, status: str, text: str) -> None:
        """Answer the pending event. 2xx/3xx accept it; anything else refuses it.

        Refusals of HELO/MAIL/RCPT and failed AUTH exchanges count as errors (421 and close
        at ``max_errors``); an accepted message resets the count. A 421 closes the session.
        A reply after the session was closed (e.g. by ``close_with`` while the application
        was deciding) is ignored.
        """
        if self.state is State.CLOSED:
            return
        pending = self._pending
        if pending is None:
            raise ProtocolError("reply() without a pending event")
        if pending == "AUTH" and 200 <= code < 300:
            raise ProtocolError("use auth_succeeded() to accept an AUTH exchange")
        if code == 334 and pending != "AUTH":
            raise ProtocolError("334 only continues an AUTH exchange")
        event = self._pending_event
        self._pending = None
        self._pending_event = None
        ok = 200 <= code < 300
        count_error = not ok
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
            count_error = False  # a refused message is not a protocol error
            if ok:
                self.errors = 0  # Postfix-style: errors "without delivering mail"
        elif pending == "AUTH":
            if code == 334:
                # A SASL challenge: the next client line is a response, not a command.
                self.state = State.AUTH
                challenge = text.replace("\r", "").replace("\n", "")
                line = f"334 {challenge}\r\n".encode()
                self._out.append(line)
                self._out_size += len(line)
                return
            self.state = State.READY
            self._auth_mechanism = None
        self._send(Reply(code, status, text))
        if code == 421:
            self._close("closing after 421")
            return
        if pending == "AUTH" and code == 535:
            self.auth_failures += 1
            if self.auth_failures >= self.params.max_auth_failures:
                # Like Dovecot and Postfix: a few wrong passwords, then the client must
                # reconnect (and go through the per-address throttle again).
                self._send(Reply(421, "4.7.0", f"{self.params.hostname} too many failed logins"
                                 " on this connection, closing"))
                self._close("too many failed logins")
                return
        if count_error:
            self._count_error()

    def auth_succeeded(self, user: str) -> None:
        """Finish a SASL exchange successfully: replies 235 and marks the session."""
        if self.state is State.CLOSED:
            return
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
        self._awaiting_tls = False
        self.state = State.CONNECTED
        self.extended = False
        self.helo_name = ""
        self.authenticated_as = None
        self._auth_mechanism = None
        self._reset_transaction()
        self._in.clear()
        self._discarding_long_line = False

    def take_notices(self) -> list[str]:
        """Log-worthy decisions the core took on its own since the last call."""
        notices, self._notices = self._notices, []
        return notices

    def close_with(self, code: int, status: str, text: str) -> None:
        """Unsolicited reply then close (timeouts, shutdown): 421 4.4.2 etc. No-op once closed."""
        if self.state is State.CLOSED:
            return
        self._send(Reply(code, status, text))
        self._close(text)

    # ---------------------------------------------------------------- internals

    def _send(self, reply: Reply) -> None:
        data = reply.encode()
        self._out.append(data)
        self._out_size += len(data)

    def _close(self, reason: str) -> None:
        self.state = State.CLOSED
        self._in.clear()
        self._data = bytearray()
        self._pending = None
        self._pending_event = None
        self._awaiting_tls = False
        self._close_event = ConnectionClosed(reason)

    def _count_error(self) -> None:
        self.errors += 1
        if self.errors >= self.params.max_errors:
            self._send(Reply(421, "4.7.0", f"{self.params.hostname} too many errors, closing"))
            self._close("too many errors")

    def _error(self, code: int, status: str, text: str) -> None:
        self._send(Reply(code, status, text))
        self._count_error()

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

    def _take_line(self) -> bytes | _Skip | None:
        """One CRLF-terminated command line without its CRLF, None if incomplete, or _SKIP
        when a bad line was consumed and answered."""
        buf = self._in
        idx = buf.find(b"\n")
        limit = self.params.max_line_length
        if idx < 0:
            if len(buf) > limit:
                # Overlong line: discard what we have and everything up to the next LF, then
                # answer once. The tail is never read as a command; the line after the LF is.
                buf.clear()
                self._discarding_long_line = True
            return None
        line = bytes(buf[: idx + 1])
        del buf[: idx + 1]
        if self.state is not State.AUTH and line.split(b" ", 1)[0].rstrip(b"\r\n").upper() in _FOREIGN:
            self._send(Reply(554, "5.5.1", f"{self.params.hostname} Protocol error: this is an SMTP server"))
            self._close("not an SMTP client")
            return _SKIP
        if self._discarding_long_line or len(line) > limit:
            self._discarding_long_line = False
            if self.state is State.AUTH:
                self._abort_auth()  # RFC 4954 4: the exchange fails with 500 5.5.6
                self._error(500, "5.5.6", "Authentication exchange line is too long")
            else:
                self._error(500, "5.5.6", f"Line too long (limit {limit} octets)")
            return _SKIP
        if not line.endswith(b"\r\n") or b"\r" in line[:-2]:
            if self.state is State.AUTH:
                self._abort_auth()
            self._error(500, "5.5.2", "Bare CR or LF in command: lines must end with CRLF")
            return _SKIP
        return line[:-2]

    def _handle_line(self, raw: bytes) -> Event | None:
        if self.state is State.AUTH:
            return self._auth_line(raw)
        try:
            line = raw.decode("utf-8")
        except UnicodeDecodeError:
            self._error(500, "5.5.2", "Command is not valid UTF-8")
            return None
        verb, _, arg = line.partition(" ")
        verb = verb.upper()
        arg = arg.strip(" ")
        if not verb:
            self._error(500, "5.5.2", "Empty command")
            return None
        if verb not in _KNOWN:
            self._error(500, "5.5.1", f"Command not recognized: {verb[:20]!r}")
            return None
        if verb in _NOT_IMPLEMENTED:
            self._error(502, "5.5.1", f"{verb} not implemented")
            return None
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
        name = arg.strip(" ")
        if not name or " " in name:
            self._error(501, "5.5.4", f"Syntax: {'EHLO' if extended else 'HELO'} hostname")
            return None
        if len(name) > 255 or any(ord(c) < 33 or ord(c) > 126 for c in name):
            self._error(501, "5.5.4", "Invalid host name")
            return None
        return self._need_reply("HELO", Helo(name, extended))

    def _cmd_MAIL(self, arg: str) -> Event | None:
        if self.state is State.CONNECTED:
            self._error(503, "5.5.1", "Send HELO/EHLO first")
            return None
        if self.state in (State.MAIL, State.RCPT):
            self._error(503, "5.5.1", "Nested MAIL command")
            return None
        if arg[:5].upper() != "FROM:":
            self._error(501, "5.5.4", "Syntax: MAIL FROM:<address>")
            return None
        try:
            path, params = split_path_and_params(arg[5:])
            utf8 = "SMTPUTF8" in params
            address = parse_path(path, utf8=utf8, allow_empty=True)
        except ParameterError as exc:
            self._error(501, "5.5.4", f"Bad MAIL parameters: {exc}")
            return None
        except NeedsSMTPUTF8Error:
            self._error(553, "5.6.7", "Non-ASCII sender address requires the SMTPUTF8 parameter")
            return None
        except AddressError as exc:
            self._error(501, "5.1.7", f"Bad sender address syntax: {exc}")
            return None
        if not self._check_mail_params(params):
            return None
        return self._need_reply("MAIL", MailFrom(address, params, path))

    def _check_mail_params(self, params: dict[str, str | None]) -> bool:
        for key, value in params.items():
            if key == "SIZE":
                if value is None or not _SIZE_VALUE.fullmatch(value):
                    self._error(501, "5.5.4", "SIZE needs a number")
                    return False
                if int(value) > self.params.max_message_size:
                    self._error(552, "5.3.4", "Message size exceeds fixed maximum message size")
                    return False
            elif key == "BODY":
                if value is None or value.upper() not in ("7BIT", "8BITMIME"):
                    self._error(501, "5.5.4", "BODY must be 7BIT or 8BITMIME")
                    return False
            elif key == "SMTPUTF8":
                if value is not None:
                    self._error(501, "5.5.4", "SMTPUTF8 takes no value")
                    return False
            elif key == "AUTH":
                # RFC 4954 5: accepted and ignored from untrusted clients, but it has a value.
                if value is None:
                    self._error(501, "5.5.4", "AUTH= needs a value")
                    return False
            else:
                self._error(555, "5.5.4", f"MAIL parameter {key[:20]} not recognized")
                return False
        return True

    def _cmd_RCPT(self, arg: str) -> Event | None:
        if self.state not in (State.MAIL, State.RCPT):
            self._error(503, "5.5.1", "Need MAIL command first")
            return None
        if arg[:3].upper() != "TO:":
            self._error(501, "5.5.4", "Syntax: RCPT TO:<address>")
            return None
        if len(self.transaction.recipients) >= self.params.max_recipients:
            # RFC 5321 4.5.3.1.10: a 452 the client retries later; not a client error.
            self._send(Reply(452, "4.5.3", f"Too many recipients (limit {self.params.max_recipients})"))
            return None
        try:
            path, params = split_path_and_params(arg[3:])
            if path.lower() == "<postmaster>":
                # RFC 5321 4.5.1: "RCPT TO:<Postmaster>" with no domain MUST be accepted; it
                # means this host's postmaster.
                address: Address | None = Address("postmaster", self.params.hostname.lower())
            else:
                utf8 = "SMTPUTF8" in self.transaction.mail_params
                address = parse_path(path, utf8=utf8)
        except ParameterError as exc:
            self._error(501, "5.5.4", f"Bad RCPT parameters: {exc}")
            return None
        except NeedsSMTPUTF8Error:
            self._error(553, "5.6.7", "Non-ASCII recipient address requires SMTPUTF8 in MAIL FROM")
            return None
        except AddressError as exc:
            self._error(501, "5.1.3", f"Bad recipient address syntax: {exc}")
            return None
        assert address is not None
        if params:
            self._error(555, "5.5.4", f"RCPT parameter {next(iter(params))[:20]} not recognized")
            return None
        return self._need_reply("RCPT", RcptTo(address, params, path))

    def _cmd_DATA(self, arg: str) -> Event | None:
        if arg:
            self._error(501, "5.5.4", "Syntax: DATA")
            return None
        if self.state is State.MAIL:
            self._error(554, "5.5.1", "No valid recipients")
            return None
        if self.state is not State.RCPT:
            self._error(503, "5.5.1", "Need RCPT command first")
            return None
        self.state = State.DATA
        self._data = bytearray()
        self._data_size = 0
        self._data_too_big = self._data_bad_newline = self._data_long_line = False
        self._data_line_len = 0
        self._data_at_line_start = True
        self._send(Reply(354, "", "End data with <CR><LF>.<CR><LF>"))
        return None

    def _cmd_RSET(self, arg: str) -> Event | None:
        if arg:
            self._error(501, "5.5.4", "Syntax: RSET")
            return None
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
            self._error(501, "5.5.4", "Syntax: VRFY address")
            return None
        # Never confirm addresses (harvesting), RFC 5321 3.5.3 allows 252.
        self._send(Reply(252, "2.0.0", "Cannot VRFY user, but will accept message and attempt delivery"))
        return None

    def _cmd_QUIT(self, arg: str) -> Event | None:
        self._send(Reply(221, "2.0.0", f"{self.params.hostname} closing connection"))
        self._close("quit")
        return None  # next_event reports ConnectionClosed

    def _cmd_STARTTLS(self, arg: str) -> Event | None:
        if arg:
            self._error(501, "5.5.4", "Syntax: STARTTLS")
            return None
        if self.tls:
            self._error(503, "5.5.1", "TLS already active")
            return None
        if not self.params.tls_available:
            self._error(502, "5.5.1", "STARTTLS not available")
            return None
        # RFC 3207 permits STARTTLS before EHLO (clients rarely do it).
        if self.state in (State.MAIL, State.RCPT):
            self._error(503, "5.5.1", "STARTTLS not allowed inside a transaction")
            return None
        self._send(Reply(220, "2.0.0", "Ready to start TLS"))
        # STARTTLS injection defence (CVE-2011-0411 class): whatever the client pipelined
        # after STARTTLS arrived in plaintext and must never be read as post-TLS input, and
        # neither may anything received before tls_established().
        self._in.clear()
        self._awaiting_tls = True
        return StartTLS()

    def _cmd_AUTH(self, arg: str) -> Event | None:
        if not self.params.auth_mechanisms:
            self._error(502, "5.5.1", "AUTH not available")
            return None
        if self.params.auth_requires_tls and not self.tls:
            mech = arg.partition(" ")[0].upper()
            shown = mech if mech.isalnum() and len(mech) <= 20 else "?"
            self._notices.append(f"login refused without TLS mechanism={shown} code=538")
            self._error(538, "5.7.11", "Encryption required for requested authentication mechanism")
            return None
        if self.state is State.CONNECTED:
            self._error(503, "5.5.1", "Send EHLO first")
            return None
        if self.authenticated_as is not None:
            self._error(503, "5.5.1", "Already authenticated")
            return None
        if self.state is not State.READY:
            self._error(503, "5.5.1", "AUTH not allowed inside a transaction")
            return None
        mech, _, initial = arg.partition(" ")
        mech = mech.upper()
        if not mech:
            self._error(501, "5.5.4", "Syntax: AUTH mechanism [initial-response]")
            return None
        if mech not in self.params.auth_mechanisms:
            self._error(504, "5.5.4", "Unrecognized authentication type")
            return None
        initial_bytes: bytes | None = None
        if initial:
            if initial == "=":
                initial_bytes = b""
            else:
                try:
                    initial_bytes = base64.b64decode(initial, validate=True)
                except (binascii.Error, ValueError):
                    self._error(501, "5.5.2", "Cannot decode base64 initial response")
                    return None
        self._auth_mechanism = mech
        return self._need_reply("AUTH", AuthStart(mech, initial_bytes))

    def _abort_auth(self) -> None:
        self.state = State.READY
        self._auth_mechanism = None

    def _auth_line(self, raw: bytes) -> Event | None:
        if raw == b"*":
            self._abort_auth()
            self._error(501, "5.0.0", "Authentication cancelled")
            return None
        try:
            decoded = base64.b64decode(raw, validate=True)
        except (binascii.Error, ValueError):
            self._abort_auth()
            self._error(501, "5.5.2", "Cannot decode base64 response")
            return None
        self.state = State.READY
        return self._need_reply("AUTH", AuthResponse(decoded))

    # ---------------------------------------------------------------- DATA

    def _consume_data(self) -> bool:
        """Take DATA bytes from the input; True once the end-of-data line has been consumed.

        Only ``CRLF . CRLF`` ends the message (or ``. CRLF`` right after the 354): a
        ``LF . LF``, ``LF . CRLF`` or ``CR . CRLF`` inside the data is content (and, being a
        bare LF/CR, poisons the message) — the SMTP smuggling defence is that the end of data
        is recognised exactly one way. A "line start" (for the end marker and for dot
        unstuffing) is only ever the octet after a CRLF.

        The input is scanned a chunk at a time with C-level searches; only complete lines are
        consumed (the unterminated tail stays buffered unless it is already overlong), so the
        result never depends on how the stream was fragmented.
        """
        buf = self._in
        if not buf:
            return False
        if self._data_at_line_start and buf.startswith(b".\r\n"):
            del buf[:3]
            return True
        end = buf.find(_END_OF_DATA)
        if end >= 0:
            self._absorb_lines(buf[: end + 2])
            del buf[: end + 5]
            return True
        last_lf = buf.rfind(b"\n")
        if last_lf >= 0:
            self._absorb_lines(buf[: last_lf + 1])
            del buf[: last_lf + 1]
        if len(buf) > self.params.max_line_length:
            # Overlong unterminated line: account for it now instead of buffering it. A final
            # CR stays buffered, as it may be the first half of a CRLF (or of CRLF.CRLF).
            take = len(buf) - 1 if buf.endswith(b"\r") else len(buf)
            self._absorb_partial(buf[:take])
            del buf[:take]
        return False

    def _absorb_lines(self, region: bytearray) -> None:
        """Complete lines (``region`` ends with LF): unstuff, check, count, keep."""
        at_start = self._data_at_line_start
        self._data_at_line_start = region.endswith(b"\r\n")
        carry = self._data_line_len
        self._data_line_len = 0
        if self._data_too_big:
            return  # 552 whatever else is wrong: only the end marker matters now
        data = region.replace(b"\r\n.", b"\r\n")  # RFC 5321 4.5.2 transparency
        if at_start and data.startswith(b"."):
            del data[:1]
        n_lf = data.count(b"\n")
        if not self._data_bad_newline and (data.count(b"\r") != n_lf or data.count(b"\r\n") != n_lf):
            self._data_bad_newline = True
        self._data_size += len(data)
        if self._data_size > self.params.max_message_size:
            self._data_too_big = True
            self._data = bytearray()  # stop holding what we will refuse anyway
            return
        if not self._data_long_line and self._has_long_line(data, carry):
            self._data_long_line = True
        if self._refusing():
            self._data = bytearray()
        else:
            self._data += data

    def _has_long_line(self, data: bytearray, carry: int) -> bool:
        """Is any LF-terminated line (the first one continuing ``carry`` octets) too long?

        Jumps to the last LF within each ``limit``-octet window, so a message of short lines
        is checked in len/limit steps rather than one per line.
        """
        limit = self.params.max_line_length
        n = len(data)
        pos = 0
        window = limit - carry
        while pos < n:
            if window <= 0:
                return True
            nl = data.rfind(b"\n", pos, pos + window)
            if nl < 0:
                return True  # no LF within the window: this line has more than `limit` octets
            pos = nl + 1
            window = limit
        return False

    def _absorb_partial(self, chunk: bytearray) -> None:
        """The start (or middle) of a line already longer than the limit (no LF in it)."""
        if self._data_at_line_start and chunk.startswith(b"."):
            del chunk[:1]
        self._data_at_line_start = False
        self._data_line_len += len(chunk)
        self._data_long_line = True  # > limit octets and still no LF
        if b"\r" in chunk:  # never the final octet (kept buffered), so a bare CR
            self._data_bad_newline = True
        self._data_size += len(chunk)
        if self._data_size > self.params.max_message_size:
            self._data_too_big = True
        self._data = bytearray()

    def _refusing(self) -> bool:
        return (self._data_too_big or self._data_long_line
                or (self._data_bad_newline and self.params.reject_bare_newlines))

    def _finish_data(self) -> Event | None:
        """The end marker was consumed: refuse the message here or hand it to the app."""
        self.state = State.RCPT  # the transaction is still open until the reply
        data = bytes(self._data)
        self._data = bytearray()
        if self._data_too_big:
            self._reset_transaction()
            self._send(Reply(552, "5.3.4", "Message size exceeds fixed maximum message size"))
            return None
        if self._data_bad_newline and self.params.reject_bare_newlines:
            self._reset_transaction()
            self._send(Reply(554, "5.6.0", "Message contains bare CR or LF characters;"
                             " lines must end with CRLF (RFC 5321 2.3.8)"))
            return None
        if self._data_long_line:
            self._reset_transaction()
            self._send(Reply(554, "5.6.0", f"Message has a line longer than {self.params.max_line_length}"
                             " octets (RFC 5321 4.5.3.1.6)"))
            return None
        return self._need_reply("DATA", MessageReceived(data))


def decode_auth_plain(response: bytes) -> tuple[str, str, str]:
    """SASL PLAIN (RFC 4616): ``authzid NUL authcid NUL password`` -> (authzid, user, pw)."""
    parts = response.split(b"\0")
    if len(parts) != 3:
        raise ValueError("malformed PLAIN response")
    authzid, user, password = (p.decode("utf-8") for p in parts)
    if not user:
        raise ValueError("empty user name")
    return authzid, user, password
