"""Byte-for-byte tests of the sans-I/O SMTP core (mailserver.smtp.protocol): no sockets.

A ``Client`` feeds bytes, answers every event with a policy (accept everything by default)
and returns what the server wrote, so each test reads as a short transcript. ``codes()``
turns server output into ["250 2.1.0", "354", ...] (one entry per reply, multi-line replies
collapsed) because every reply must carry the right code *and* enhanced status code.
"""

from __future__ import annotations

import base64
import random
import re
from collections.abc import Callable
from dataclasses import dataclass, field

import pytest

from mailserver.address import Address
from mailserver.smtp.protocol import (
    NEED_DATA,
    PAUSED,
    AuthResponse,
    AuthStart,
    ConnectionClosed,
    Event,
    Helo,
    MailFrom,
    MessageReceived,
    ProtocolError,
    RcptTo,
    Reply,
    ServerConnection,
    ServerParams,
    StartTLS,
    State,
    decode_auth_plain,
)

HOST = "mx.example"
Answer = tuple[int, str, str] | str | None  # str: auth_succeeded(user)
Policy = Callable[[Event], Answer]


def accept_all(event: Event) -> Answer:
    if isinstance(event, Helo):
        return (250, "", f"{HOST} hello {event.hostname}")
    if isinstance(event, MailFrom):
        return (250, "2.1.0", "Sender OK")
    if isinstance(event, RcptTo):
        return (250, "2.1.5", "Recipient OK")
    if isinstance(event, MessageReceived):
        return (250, "2.0.0", "Queued")
    if isinstance(event, AuthStart | AuthResponse):
        return (535, "5.7.8", "Authentication credentials invalid")
    return None


def params(**kw: object) -> ServerParams:
    return ServerParams(HOST, **kw)  # type: ignore[arg-type]


@dataclass
class Client:
    conn: ServerConnection
    policy: Policy = accept_all
    auto_tls: bool = False  # call tls_established() as soon as StartTLS is returned
    events: list[Event] = field(default_factory=list)

    @classmethod
    def make(cls, policy: Policy = accept_all, *, auto_tls: bool = False, **kw: object) -> Client:
        return cls(ServerConnection(params(**kw)), policy, auto_tls)

    def feed(self, data: bytes, chunk: int | None = None) -> bytes:
        """Feed ``data`` (in ``chunk``-sized pieces), answering events; return server output."""
        pieces = [data] if chunk is None else [data[i : i + chunk] for i in range(0, len(data), chunk)]
        out = bytearray()
        for piece in pieces:
            self.conn.receive_data(piece)
            out += self.drain()
        return bytes(out)

    def feed_pieces(self, pieces: list[bytes]) -> bytes:
        out = bytearray()
        for piece in pieces:
            self.conn.receive_data(piece)
            out += self.drain()
        return bytes(out)

    def drain(self) -> bytes:
        out = bytearray()
        while True:
            event = self.conn.next_event()
            out += self.conn.data_to_send()
            if event is NEED_DATA or event is PAUSED:
                return bytes(out)
            assert not isinstance(event, type(NEED_DATA))
            self.events.append(event)
            if isinstance(event, ConnectionClosed):
                continue
            if isinstance(event, StartTLS):
                if not self.auto_tls:
                    continue  # next_event says PAUSED until the test calls tls_established()
                self.conn.tls_established()
                continue
            answer = self.policy(event)
            if answer is None:
                continue
            if isinstance(answer, str):
                self.conn.auth_succeeded(answer)
            else:
                self.conn.reply(*answer)
            out += self.conn.data_to_send()

    def of(self, kind: type) -> list:
        return [e for e in self.events if isinstance(e, kind)]


_STATUS = re.compile(r"[245]\.\d{1,3}\.\d{1,3}")


def codes(out: bytes) -> list[str]:
    """Server output -> one "code status" (or "code") per reply; checks the line framing."""
    assert out == b"" or out.endswith(b"\r\n"), out
    result: list[str] = []
    for line in out.decode().split("\r\n")[:-1]:
        assert "\r" not in line and "\n" not in line
        assert re.fullmatch(r"\d{3}[ -].*|\d{3}", line), line
        if line[3:4] == "-":
            continue
        words = line.split(" ")
        if len(words) > 1 and _STATUS.fullmatch(words[1]):
            result.append(f"{words[0]} {words[1]}")
        else:
            result.append(words[0])
    return result


def ready(policy: Policy = accept_all, **kw: object) -> Client:
    """A client that has done EHLO."""
    c = Client.make(policy, **kw)
    assert codes(c.feed(b"EHLO client.example\r\n")) == ["250"]
    return c


def in_transaction(policy: Policy = accept_all, **kw: object) -> Client:
    """EHLO, MAIL and one RCPT accepted."""
    c = ready(policy, **kw)
    out = c.feed(b"MAIL FROM:<s@a.example>\r\nRCPT TO:<r@b.example>\r\n")
    assert codes(out) == ["250 2.1.0", "250 2.1.5"]
    return c


def in_data(**kw: object) -> Client:
    c = in_transaction(**kw)
    assert codes(c.feed(b"DATA\r\n")) == ["354"]
    assert c.conn.in_data
    return c


TXN = b"MAIL FROM:<s@a.example>\r\nRCPT TO:<r@b.example>\r\nDATA\r\n"


# ================================================================== greeting, EHLO, HELO


def test_greeting() -> None:
    conn = ServerConnection(params())
    assert conn.greeting() == b"220 mx.example ESMTP pymaild\r\n"
    assert conn.state is State.CONNECTED
    assert conn.data_to_send() == b""


def test_greeting_text_is_configurable() -> None:
    assert ServerConnection(params(greeting_text="hi")).greeting() == b"220 mx.example hi\r\n"


def ehlo_lines(c: Client) -> list[str]:
    out = c.feed(b"EHLO client.example\r\n").decode()
    lines = out.split("\r\n")[:-1]
    assert all(line.startswith("250-") for line in lines[:-1]) and lines[-1].startswith("250 ")
    return [line[4:] for line in lines]


def test_ehlo_extension_list_exact() -> None:
    c = Client.make(max_message_size=12345)
    assert ehlo_lines(c) == [HOST, "PIPELINING", "SIZE 12345", "8BITMIME", "ENHANCEDSTATUSCODES", "SMTPUTF8"]
    assert c.of(Helo) == [Helo("client.example", True)]
    assert c.conn.extended and c.conn.helo_name == "client.example" and c.conn.state is State.READY


@pytest.mark.parametrize(
    ("kw", "starttls", "auth"),
    [
        ({}, False, None),
        ({"tls_available": True}, True, None),
        ({"tls_available": True, "tls_active": True}, False, None),
        ({"tls_active": True}, False, None),
        ({"auth_mechanisms": ("PLAIN", "LOGIN")}, False, None),  # requires TLS by default
        ({"auth_mechanisms": ("PLAIN", "LOGIN"), "tls_available": True}, True, None),
        ({"auth_mechanisms": ("PLAIN", "LOGIN"), "tls_active": True}, False, "AUTH PLAIN LOGIN"),
        ({"auth_mechanisms": ("PLAIN",), "auth_requires_tls": False}, False, "AUTH PLAIN"),
        ({"auth_mechanisms": ("PLAIN",), "auth_requires_tls": False, "tls_available": True}, True,
         "AUTH PLAIN"),
    ],
)
def test_ehlo_starttls_and_auth_advertising(kw: dict, starttls: bool, auth: str | None) -> None:
    lines = ehlo_lines(Client.make(**kw))
    assert ("STARTTLS" in lines) is starttls
    assert [x for x in lines if x.startswith("AUTH")] == ([auth] if auth else [])


def test_helo_reply_is_the_applications_and_not_extended() -> None:
    c = Client.make()
    out = c.feed(b"HELO client.example\r\n")
    assert out == b"250 mx.example hello client.example\r\n"
    assert c.of(Helo) == [Helo("client.example", False)]
    assert not c.conn.extended and c.conn.state is State.READY


@pytest.mark.parametrize("verb", [b"EHLO", b"HELO", b"ehlo", b"helo", b"EhLo"])
def test_helo_verbs_case_insensitive(verb: bytes) -> None:
    c = Client.make()
    assert codes(c.feed(verb + b" c.example\r\n")) == ["250"]


@pytest.mark.parametrize("name", [b"[192.0.2.1]", b"[IPv6:2001:db8::1]", b"localhost", b"a-b.example"])
def test_ehlo_accepts_names_and_literals(name: bytes) -> None:
    c = Client.make()
    assert codes(c.feed(b"EHLO " + name + b"\r\n")) == ["250"]
    assert c.conn.helo_name == name.decode()


@pytest.mark.parametrize(
    "line",
    [b"EHLO", b"EHLO ", b"HELO", b"EHLO a b", b"EHLO h\xc3\xa4st", b"EHLO " + b"a" * 256, b"HELO a\x01b"],
)
def test_ehlo_syntax_errors(line: bytes) -> None:
    c = Client.make()
    assert codes(c.feed(line + b"\r\n")) == ["501 5.5.4"]
    assert c.of(Helo) == [] and c.conn.state is State.CONNECTED and c.conn.errors == 1


def test_ehlo_twice_resets_the_transaction() -> None:
    c = in_transaction()
    assert len(c.conn.transaction.recipients) == 1
    assert codes(c.feed(b"EHLO again.example\r\n")) == ["250"]
    assert c.conn.state is State.READY and c.conn.transaction.recipients == []
    assert c.conn.helo_name == "again.example"
    assert codes(c.feed(b"RCPT TO:<r@b.example>\r\nDATA\r\n")) == ["503 5.5.1", "503 5.5.1"]


def test_rejected_ehlo_keeps_state_and_counts_an_error() -> None:
    c = Client.make(lambda e: (550, "5.7.1", "go away") if isinstance(e, Helo) else accept_all(e))
    assert c.feed(b"EHLO bad.example\r\n") == b"550 5.7.1 go away\r\n"
    assert c.conn.state is State.CONNECTED and c.conn.errors == 1
    assert codes(c.feed(b"MAIL FROM:<a@b.example>\r\n")) == ["503 5.5.1"]


# ================================================================== command dispatch


@pytest.mark.parametrize(
    ("line", "code"),
    [
        (b"FOO", "500 5.5.1"),
        (b"XYZZY bar", "500 5.5.1"),
        (b"MAILFROM:<a@b.example>", "500 5.5.1"),
        (b"SEND FROM:<a@b.example>", "500 5.5.1"),
        (b"", "500 5.5.2"),
        (b" ", "500 5.5.2"),
        (b"NOOP \xff\xfe", "500 5.5.2"),
        (b"\xc3\x28", "500 5.5.2"),
        (b"EXPN staff", "502 5.5.1"),
        (b"BDAT 10 LAST", "502 5.5.1"),
        (b"ETRN example.org", "502 5.5.1"),
        (b"TURN", "502 5.5.1"),
        (b"expn staff", "502 5.5.1"),
    ],
)
def test_unknown_empty_non_utf8_and_not_implemented(line: bytes, code: str) -> None:
    c = ready()
    assert codes(c.feed(line + b"\r\n")) == [code]
    assert c.conn.errors == 1 and c.conn.state is State.READY


@pytest.mark.parametrize(
    ("line", "code"),
    [
        (b"NOOP", "250 2.0.0"),
        (b"NOOP anything at all", "250 2.0.0"),
        (b"noop", "250 2.0.0"),
        (b"RSET", "250 2.0.0"),
        (b"rset", "250 2.0.0"),
        (b"HELP", "214 2.0.0"),
        (b"HELP MAIL", "214 2.0.0"),
        (b"VRFY postmaster", "252 2.0.0"),
        (b"RSET now", "501 5.5.4"),
        (b"VRFY", "501 5.5.4"),
        (b"DATA now", "501 5.5.4"),
    ],
)
@pytest.mark.parametrize("after_ehlo", [False, True])
def test_commands_allowed_any_time(line: bytes, code: str, after_ehlo: bool) -> None:
    c = ready() if after_ehlo else Client.make()
    state = c.conn.state
    assert codes(c.feed(line + b"\r\n")) == [code]
    assert c.conn.state is state


@pytest.mark.parametrize(
    ("setup", "line", "code"),
    [
        (b"", b"MAIL FROM:<a@b.example>", "503 5.5.1"),
        (b"", b"RCPT TO:<a@b.example>", "503 5.5.1"),
        (b"", b"DATA", "503 5.5.1"),
        (b"EHLO c\r\n", b"RCPT TO:<a@b.example>", "503 5.5.1"),
        (b"EHLO c\r\n", b"DATA", "503 5.5.1"),
        (b"EHLO c\r\nMAIL FROM:<a@b.example>\r\n", b"MAIL FROM:<a@b.example>", "503 5.5.1"),
        (b"EHLO c\r\nMAIL FROM:<a@b.example>\r\nRCPT TO:<x@y.example>\r\n", b"MAIL FROM:<a@b.example>",
         "503 5.5.1"),
        (b"EHLO c\r\nMAIL FROM:<a@b.example>\r\nRSET\r\n", b"RCPT TO:<x@y.example>", "503 5.5.1"),
        # all recipients refused (here: none given) -> RFC 5321 3.3 "no valid recipients"
        (b"EHLO c\r\nMAIL FROM:<a@b.example>\r\n", b"DATA", "554 5.5.1"),
    ],
)
def test_sequence_errors(setup: bytes, line: bytes, code: str) -> None:
    c = Client.make()
    c.feed(setup)
    errors = c.conn.errors
    assert codes(c.feed(line + b"\r\n")) == [code]
    assert c.conn.errors == errors + 1


def test_case_insensitive_verbs_and_keywords() -> None:
    c = Client.make()
    out = c.feed(b"ehlo c\r\nmail from:<a@b.example> size=10 body=8bitmime\r\nRcPt tO:<x@y.example>\r\n"
                 b"data\r\nhi\r\n.\r\nquit\r\n")
    assert codes(out) == ["250", "250 2.1.0", "250 2.1.5", "354", "250 2.0.0", "221 2.0.0"]
    assert c.of(MailFrom)[0].params == {"SIZE": "10", "BODY": "8bitmime"}


# ================================================================== MAIL / RCPT


def test_null_sender() -> None:
    c = ready()
    assert codes(c.feed(b"MAIL FROM:<>\r\n")) == ["250 2.1.0"]
    assert c.of(MailFrom) == [MailFrom(None, {}, "<>")]
    assert c.conn.transaction.mail_from is None and c.conn.state is State.MAIL


def test_null_recipient_refused() -> None:
    c = in_transaction()
    assert codes(c.feed(b"RCPT TO:<>\r\n")) == ["501 5.1.3"]


@pytest.mark.parametrize(
    ("line", "code", "params"),
    [
        (b"MAIL FROM:<a@b.example> SIZE=1000", "250 2.1.0", {"SIZE": "1000"}),
        (b"MAIL FROM:<a@b.example> SIZE=0", "250 2.1.0", {"SIZE": "0"}),
        (b"MAIL FROM:<a@b.example> SIZE=1001", "552 5.3.4", None),
        (b"MAIL FROM:<a@b.example> SIZE=99999999999999999999", "552 5.3.4", None),
        (b"MAIL FROM:<a@b.example> SIZE=999999999999999999999", "501 5.5.4", None),
        (b"MAIL FROM:<a@b.example> SIZE=abc", "501 5.5.4", None),
        (b"MAIL FROM:<a@b.example> SIZE=-1", "501 5.5.4", None),
        (b"MAIL FROM:<a@b.example> SIZE=", "501 5.5.4", None),
        (b"MAIL FROM:<a@b.example> SIZE", "501 5.5.4", None),
        ("MAIL FROM:<a@b.example> SIZE=²".encode(), "501 5.5.4", None),  # str.isdigit() is True
        ("MAIL FROM:<a@b.example> SIZE=١٢".encode(), "501 5.5.4", None),  # int() would accept it
        (b"MAIL FROM:<a@b.example> BODY=8BITMIME", "250 2.1.0", {"BODY": "8BITMIME"}),
        (b"MAIL FROM:<a@b.example> BODY=7bit", "250 2.1.0", {"BODY": "7bit"}),
        (b"MAIL FROM:<a@b.example> BODY=BINARYMIME", "501 5.5.4", None),
        (b"MAIL FROM:<a@b.example> BODY", "501 5.5.4", None),
        (b"MAIL FROM:<a@b.example> SMTPUTF8", "250 2.1.0", {"SMTPUTF8": None}),
        (b"MAIL FROM:<a@b.example> SMTPUTF8=yes", "501 5.5.4", None),
        (b"MAIL FROM:<a@b.example> AUTH=<>", "250 2.1.0", {"AUTH": "<>"}),
        (b"MAIL FROM:<a@b.example> AUTH", "501 5.5.4", None),
        (b"MAIL FROM:<a@b.example> RET=HDRS", "555 5.5.4", None),
        (b"MAIL FROM:<a@b.example> X-FOO", "555 5.5.4", None),
        (b"MAIL FROM:<a@b.example> SIZE=10 SIZE=10", "501 5.5.4", None),
        (b"MAIL FROM:<a@b.example> SIZE=10 size=20", "501 5.5.4", None),
        (b"MAIL FROM:<a@b.example> =10", "501 5.5.4", None),
        (b"MAIL FROM:<a@b.example> SIZE=1=2", "501 5.5.4", None),
        (b"MAIL FROM:<a@b.example> -X", "501 5.5.4", None),
        (b"MAIL FROM:<a@b.example>  SIZE=10   BODY=7BIT ", "250 2.1.0", {"SIZE": "10", "BODY": "7BIT"}),
        (b"MAIL FROM:<a@b.example>SIZE=10", "501 5.1.7", None),
        (b"MAIL FROM:<a@b.example>\tSIZE=10", "501 5.1.7", None),
    ],
)
def test_mail_parameters(line: bytes, code: str, params: dict | None) -> None:
    c = ready(max_message_size=1000)
    assert codes(c.feed(line + b"\r\n")) == [code]
    if params is None:
        assert c.of(MailFrom) == [] and c.conn.state is State.READY
    else:
        assert c.of(MailFrom)[0].params == params and c.conn.state is State.MAIL


@pytest.mark.parametrize("param", [b"NOTIFY=NEVER", b"ORCPT=rfc822;a@b.example", b"SMTPUTF8", b"X"])
def test_rcpt_parameters_not_recognized(param: bytes) -> None:
    c = in_transaction()
    assert codes(c.feed(b"RCPT TO:<x@y.example> " + param + b"\r\n")) == ["555 5.5.4"]
    assert len(c.of(RcptTo)) == 1


def test_rcpt_duplicate_parameter_is_a_syntax_error() -> None:
    c = in_transaction()
    assert codes(c.feed(b"RCPT TO:<x@y.example> A=1 a=2\r\n")) == ["501 5.5.4"]


@pytest.mark.parametrize(
    ("path", "local", "domain"),
    [
        ("<user@Example.ORG>", "user", "example.org"),
        ("<User.Name+tag@example.org>", "User.Name+tag", "example.org"),
        ('<"john doe"@example.org>', "john doe", "example.org"),
        ('<"a@b"@example.org>', "a@b", "example.org"),
        ('<"a>b"@example.org>', "a>b", "example.org"),
        ('<"a\\"b"@example.org>', 'a"b', "example.org"),
        ('<"plain"@example.org>', "plain", "example.org"),
        ("<@relay.example:user@example.org>", "user", "example.org"),
        ("<@a.example,@b.example:user@example.org>", "user", "example.org"),
        ("<user%other.example@example.org>", "user%other.example", "example.org"),
        ("<other.example!user@example.org>", "other.example!user", "example.org"),
        ("<user@[192.0.2.1]>", "user", "[192.0.2.1]"),
        ("<user@[IPv6:2001:DB8::1]>", "user", "[IPv6:2001:db8::1]"),
        ("<" + "a" * 64 + "@example.org>", "a" * 64, "example.org"),
    ],
)
@pytest.mark.parametrize("verb", ["MAIL FROM:", "RCPT TO:"])
def test_paths_resolve_to_the_real_mailbox(path: str, local: str, domain: str, verb: str) -> None:
    c = ready() if verb.startswith("MAIL") else in_transaction()
    expected = "250 2.1.0" if verb.startswith("MAIL") else "250 2.1.5"
    assert codes(c.feed(f"{verb}{path}\r\n".encode())) == [expected]
    event = c.events[-1]
    assert isinstance(event, MailFrom | RcptTo)
    assert event.address == Address(local, domain)
    assert event.raw == path  # logs keep what the client wrote


@pytest.mark.parametrize(
    "path",
    [
        "user@example.org",  # missing brackets
        "<user@example.org",
        "user@example.org>",
        "<user@example.org.>",  # trailing dot
        "<user@>",
        "<@example.org>",
        "<user>",
        "<user@@example.org>",
        "<a b@example.org>",
        "<user@exa mple.org>",
        "<user@-example.org>",
        "<user@example..org>",
        "<.user@example.org>",
        "<user.@example.org>",
        "<us..er@example.org>",
        "<" + "a" * 65 + "@example.org>",  # local part > 64 octets
        "<a@" + ".".join(["b" * 63] * 4) + ">",  # domain > 255 octets
        "<a@" + "b" * 64 + ".org>",  # label > 63
        "<us\x01er@example.org>",
        "<user@example.org\x7f>",
        "<user@[300.1.1.1]>",
        "<user@[1.2.3]>",
        "<user@[IPv6:zz::1]>",
        "<user@[tag:content]>",
        "<user@192.0.2.1>",  # bracketless IP address
        "<@relay.example user@example.org>",
        '<"unterminated@example.org>',
        '<"a"b@example.org>',
        '<""@example.org>',
    ],
)
def test_bad_paths(path: str) -> None:
    c = ready()
    assert codes(c.feed(f"MAIL FROM:{path}\r\n".encode())) == ["501 5.1.7"]
    c = in_transaction()
    assert codes(c.feed(f"RCPT TO:{path}\r\n".encode())) == ["501 5.1.3"]


@pytest.mark.parametrize("line", [b"MAIL FROM <a@b.example>", b"MAIL TO:<a@b.ex>", b"MAIL", b"MAIL FROM"])
def test_mail_syntax(line: bytes) -> None:
    assert codes(ready().feed(line + b"\r\n")) == ["501 5.5.4"]


@pytest.mark.parametrize("line", [b"RCPT <a@b.example>", b"RCPT FROM:<a@b.example>", b"RCPT", b"RCPT TO"])
def test_rcpt_syntax(line: bytes) -> None:
    assert codes(in_transaction().feed(line + b"\r\n")) == ["501 5.5.4"]


def test_space_after_colon_is_tolerated() -> None:
    c = ready()
    out = c.feed(b"MAIL FROM: <a@b.example>\r\nRCPT TO: <c@d.example>\r\n")
    assert codes(out) == ["250 2.1.0", "250 2.1.5"]


def test_smtputf8_addresses() -> None:
    c = ready()
    assert codes(c.feed("MAIL FROM:<jörg@bücher.example>\r\n".encode())) == ["553 5.6.7"]
    assert codes(c.feed("MAIL FROM:<jörg@bücher.example> SMTPUTF8\r\n".encode())) == ["250 2.1.0"]
    assert c.of(MailFrom)[0].address == Address("jörg", "xn--bcher-kva.example")
    assert codes(c.feed("RCPT TO:<用户@例子.example>\r\n".encode())) == ["250 2.1.5"]
    assert c.of(RcptTo)[0].address == Address("用户", "xn--fsqu00a.example")


def test_non_ascii_recipient_needs_smtputf8_on_mail() -> None:
    c = in_transaction()
    assert codes(c.feed("RCPT TO:<jörg@example.org>\r\n".encode())) == ["553 5.6.7"]
    assert codes(c.feed("RCPT TO:<user@bücher.example>\r\n".encode())) == ["553 5.6.7"]


def test_idna_2003_mapping_that_changes_the_domain_is_refused() -> None:
    c = ready()
    # nameprep would turn this into strasse.example (IDNA 2008: xn--strae-oqa.example)
    assert codes(c.feed("MAIL FROM:<a@straße.example> SMTPUTF8\r\n".encode())) == ["501 5.1.7"]


def test_postmaster_without_domain() -> None:
    c = in_transaction()
    assert codes(c.feed(b"RCPT TO:<Postmaster>\r\nRCPT TO:<POSTMASTER>\r\n")) == ["250 2.1.5", "250 2.1.5"]
    assert [e.address for e in c.of(RcptTo)[1:]] == [Address("postmaster", HOST)] * 2
    assert codes(c.feed(b"RCPT TO:<webmaster>\r\n")) == ["501 5.1.3"]
    assert codes(ready().feed(b"MAIL FROM:<Postmaster>\r\n")) == ["501 5.1.7"]


def test_too_many_recipients_is_452_and_not_an_error() -> None:
    c = in_transaction(max_recipients=2, max_errors=2)
    out = c.feed(b"RCPT TO:<r2@b.example>\r\nRCPT TO:<r3@b.example>\r\nRCPT TO:<r4@b.example>\r\n"
                 b"RCPT TO:<r5@b.example>\r\n")
    assert codes(out) == ["250 2.1.5", "452 4.5.3", "452 4.5.3", "452 4.5.3"]
    assert c.conn.errors == 0 and not c.conn.closed
    assert len(c.of(RcptTo)) == 2 and len(c.conn.transaction.recipients) == 2
    assert codes(c.feed(b"DATA\r\nx\r\n.\r\n")) == ["354", "250 2.0.0"]


def test_rejected_rcpt_then_data_is_no_valid_recipients() -> None:
    def policy(e: Event) -> Answer:
        return (550, "5.1.1", "no such user") if isinstance(e, RcptTo) else accept_all(e)

    c = ready(policy)
    out = c.feed(b"MAIL FROM:<s@a.example>\r\nRCPT TO:<x@b.example>\r\nDATA\r\n")
    assert codes(out) == ["250 2.1.0", "550 5.1.1", "554 5.5.1"]
    assert c.conn.state is State.MAIL and not c.conn.in_data
    assert "No valid recipients" in out.decode().split("\r\n")[-2]


def test_some_rcpts_rejected_keep_only_the_accepted() -> None:
    def policy(e: Event) -> Answer:
        if isinstance(e, RcptTo) and e.address.local == "bad":
            return (550, "5.1.1", "no such user")
        return accept_all(e)

    c = ready(policy)
    out = c.feed(b"MAIL FROM:<s@a.example>\r\nRCPT TO:<bad@b.example>\r\nRCPT TO:<ok@b.example>\r\n"
                 b"RCPT TO:<bad@b.example>\r\nDATA\r\nx\r\n.\r\n")
    assert codes(out) == ["250 2.1.0", "550 5.1.1", "250 2.1.5", "550 5.1.1", "354", "250 2.0.0"]
    assert c.of(MessageReceived) == [MessageReceived(b"x\r\n")]


def test_rejected_mail_leaves_no_transaction() -> None:
    c = ready(lambda e: (550, "5.7.1", "no") if isinstance(e, MailFrom) else accept_all(e))
    out = c.feed(b"MAIL FROM:<s@a.example>\r\nRCPT TO:<r@b.example>\r\n")
    assert codes(out) == ["550 5.7.1", "503 5.5.1"]
    assert c.conn.state is State.READY


def test_rset_clears_transaction_and_allows_new_mail() -> None:
    c = in_transaction()
    out = c.feed(b"RSET\r\nMAIL FROM:<n@a.example>\r\n")
    assert codes(out) == ["250 2.0.0", "250 2.1.0"]
    assert c.conn.transaction.mail_from == Address("n", "a.example")
    assert c.conn.transaction.recipients == []


def test_transaction_records_envelope() -> None:
    c = ready()
    c.feed(b"MAIL FROM:<s@a.example> SIZE=5\r\nRCPT TO:<r1@b.example>\r\nRCPT TO:<r2@b.example>\r\n")
    t = c.conn.transaction
    assert t.mail_from == Address("s", "a.example") and t.mail_params == {"SIZE": "5"}
    assert t.recipients == [Address("r1", "b.example"), Address("r2", "b.example")]


# ================================================================== PIPELINING

SESSION = (
    b"EHLO client.example\r\n"
    b"MAIL FROM:<s@a.example> SIZE=30\r\n"
    b"RCPT TO:<r1@b.example>\r\n"
    b"RCPT TO:<bad@b.example>\r\n"
    b"RCPT TO:<r2@b.example>\r\n"
    b"DATA\r\n"
    b"Subject: hi\r\n\r\n..dot\r\nbody\r\n.\r\n"
    b"NOOP\r\n"
    b"MAIL FROM:<>\r\n"
    b"RCPT TO:<r3@b.example>\r\n"
    b"DATA\r\n"
    b".\r\n"
    b"RSET\r\n"
    b"BOGUS\r\n"
    b"QUIT\r\n"
)
SESSION_CODES = ["250", "250 2.1.0", "250 2.1.5", "550 5.1.1", "250 2.1.5", "354", "250 2.0.0", "250 2.0.0",
                 "250 2.1.0", "250 2.1.5", "354", "250 2.0.0", "250 2.0.0", "500 5.5.1", "221 2.0.0"]


def reject_bad(e: Event) -> Answer:
    if isinstance(e, RcptTo) and e.address.local == "bad":
        return (550, "5.1.1", "no such user")
    return accept_all(e)


def test_pipelined_session_in_one_chunk() -> None:
    c = Client.make(reject_bad)
    out = c.feed(SESSION)
    assert codes(out) == SESSION_CODES
    assert c.of(MessageReceived) == [MessageReceived(b"Subject: hi\r\n\r\n.dot\r\nbody\r\n"),
                                     MessageReceived(b"")]
    assert c.events[-1] == ConnectionClosed("quit") and c.conn.closed


@pytest.mark.parametrize("chunk", [1, 2, 3, 7, 64])
def test_pipelining_is_independent_of_fragmentation(chunk: int) -> None:
    whole = Client.make(reject_bad)
    expected = whole.feed(SESSION)
    pieces = Client.make(reject_bad)
    assert pieces.feed(SESSION, chunk=chunk) == expected
    assert pieces.events == whole.events


def test_paused_while_reply_pending_and_replies_stay_ordered() -> None:
    conn = ServerConnection(params())
    conn.receive_data(b"EHLO c\r\nMAIL FROM:<a@b.example>\r\nRCPT TO:<c@d.example>\r\nNOOP\r\n")
    assert isinstance(conn.next_event(), Helo)
    assert conn.next_event() is PAUSED and conn.next_event() is PAUSED
    assert conn.data_to_send() == b""  # nothing may overtake the pending EHLO reply
    conn.reply(250, "", "hi")
    assert isinstance(conn.next_event(), MailFrom)
    assert conn.next_event() is PAUSED
    assert conn.buffered > 0
    conn.reply(451, "4.3.0", "try later")
    # RCPT is now out of sequence (MAIL refused), then NOOP: both answered by the core
    assert conn.next_event() is NEED_DATA
    assert codes(conn.data_to_send()) == ["250", "451 4.3.0", "503 5.5.1", "250 2.0.0"]


def test_reply_without_pending_event_raises() -> None:
    conn = ServerConnection(params())
    with pytest.raises(ProtocolError):
        conn.reply(250, "2.0.0", "OK")
    conn.receive_data(b"NOOP\r\n")
    assert conn.next_event() is NEED_DATA
    with pytest.raises(ProtocolError):
        conn.reply(250, "2.0.0", "OK")
    with pytest.raises(ProtocolError):
        conn.auth_succeeded("alice")


def test_334_only_for_auth() -> None:
    conn = ServerConnection(params())
    conn.receive_data(b"EHLO c\r\n")
    assert isinstance(conn.next_event(), Helo)
    with pytest.raises(ProtocolError):
        conn.reply(334, "", "")
    conn.reply(250, "", "hi")  # still pending after the refused call
    assert conn.state is State.READY


# ================================================================== DATA


def deliver(body: bytes, **kw: object) -> tuple[Client, bytes]:
    c = in_data(**kw)
    return c, c.feed(body)


@pytest.mark.parametrize(
    ("wire", "data"),
    [
        (b".\r\n", b""),
        (b"\r\n.\r\n", b"\r\n"),
        (b"hello\r\n.\r\n", b"hello\r\n"),
        (b"..\r\n.\r\n", b".\r\n"),
        (b"...\r\n.\r\n", b"..\r\n"),
        (b"..hidden\r\n.\r\n", b".hidden\r\n"),
        (b"a\r\n..\r\n.\r\n", b"a\r\n.\r\n"),
        (b"a\r\n..b\r\n...c\r\n.\r\n", b"a\r\n.b\r\n..c\r\n"),
        (b".x\r\n.\r\n", b"x\r\n"),  # a lone (unstuffed) leading dot is dropped too
        (b"a.\r\n.b\r\n.\r\n", b"a.\r\nb\r\n"),
        (b"a .\r\n.\r\n", b"a .\r\n"),
        (b" .\r\n.\r\n", b" .\r\n"),
        (b"\x00\xff\xfe\r\n.\r\n", b"\x00\xff\xfe\r\n"),
        (b"\r\n\r\n\r\n.\r\n", b"\r\n\r\n\r\n"),
    ],
)
def test_data_transparency(wire: bytes, data: bytes) -> None:
    c, out = deliver(wire)
    assert codes(out) == ["250 2.0.0"]
    assert c.of(MessageReceived) == [MessageReceived(data)]
    assert c.conn.state is State.READY and c.conn.transaction.recipients == []


def test_message_not_ending_in_crlf_before_the_dot_does_not_end() -> None:
    c, out = deliver(b"abc.\r\n")
    assert out == b"" and c.conn.in_data
    c, out = deliver(b"abc\r\n. \r\n.\r\n")  # ". " is not the end marker
    assert codes(out) == ["250 2.0.0"] and c.of(MessageReceived) == [MessageReceived(b"abc\r\n \r\n")]
    c, out = deliver(b"abc")
    assert out == b"" and c.conn.in_data
    assert codes(c.feed(b"\r\n.\r\n")) == ["250 2.0.0"]
    assert c.of(MessageReceived) == [MessageReceived(b"abc\r\n")]


SMUGGLE = b"MAIL FROM:<evil@attacker.example>\r\nRCPT TO:<victim@b.example>\r\nDATA\r\nsmuggled\r\n"
NEXT_TXN = b"MAIL FROM:<next@a.example>\r\nRCPT TO:<r@b.example>\r\nDATA\r\nsecond\r\n.\r\n"


@pytest.mark.parametrize(
    "fake_end", [b"\n.\n", b"\r\n.\n", b"\n.\r\n", b"\r.\r\n", b"\r.\r", b"\n.\r", b"\r\n.\r"]
)
@pytest.mark.parametrize("chunk", [None, 1, 5])
def test_smuggling_fake_end_of_data_never_ends_the_message(fake_end: bytes, chunk: int | None) -> None:
    c = in_data()
    stream = b"Subject: x\r\n\r\nhello" + fake_end + SMUGGLE + b"\r\n.\r\n" + NEXT_TXN
    out = c.feed(stream, chunk=chunk)
    assert codes(out) == ["554 5.6.0", "250 2.1.0", "250 2.1.5", "354", "250 2.0.0"]
    assert [e.address for e in c.of(MailFrom)] == [Address("s", "a.example"), Address("next", "a.example")]
    assert c.of(MessageReceived) == [MessageReceived(b"second\r\n")]


@pytest.mark.parametrize(
    "body",
    [
        b"a\nb\r\n",  # bare LF
        b"a\rb\r\n",  # bare CR inside a line
        b"a\r\r\n",
        b"a\n\r\n",
        b"\n",
        b"\r\r\n",
        b"a\r\n\n",
        b"..\n",
    ],
)
def test_bare_cr_or_lf_refuses_the_message(body: bytes) -> None:
    c, out = deliver(body + b".\r\n" if body.endswith(b"\r\n") else body + b"\r\n.\r\n")
    assert codes(out) == ["554 5.6.0"]
    assert c.of(MessageReceived) == [] and c.conn.state is State.READY
    assert c.conn.transaction.recipients == [] and c.conn.errors == 0


def test_bare_newlines_allowed_when_configured_keeps_whole_message() -> None:
    body = b"line1\nline2\r\nx\n.\r\nMAIL FROM:<evil@x.example>\r\nline\r\n"
    c, out = deliver(body + b".\r\n", reject_bare_newlines=False)
    assert codes(out) == ["250 2.0.0"]
    # nothing dropped after the first bare LF, the fake end stays content
    assert c.of(MessageReceived) == [MessageReceived(body)]
    assert len(c.of(MailFrom)) == 1


def test_bare_newline_and_oversize_reports_size() -> None:
    _, out = deliver(b"a\n" + b"x" * 100 + b"\r\n.\r\n", max_message_size=50)
    assert codes(out) == ["552 5.3.4"]


@pytest.mark.parametrize("chunk", [None, 1, 7])
def test_message_exactly_at_size_limit_accepted_one_over_refused(chunk: int | None) -> None:
    limit = 100
    body = b"x" * (limit - 2) + b"\r\n"
    c = in_data(max_message_size=limit)
    assert codes(c.feed(body + b".\r\n", chunk=chunk)) == ["250 2.0.0"]
    assert c.of(MessageReceived) == [MessageReceived(body)]
    c = in_data(max_message_size=limit)
    assert codes(c.feed(b"x" + body + b".\r\n", chunk=chunk)) == ["552 5.3.4"]
    assert c.of(MessageReceived) == []
    # dot-stuffing does not count: the stuffed dot is not part of the message
    c = in_data(max_message_size=limit)
    assert codes(c.feed(b"." + body + b".\r\n", chunk=chunk)) == ["250 2.0.0"]


def test_oversize_message_is_not_kept_in_memory() -> None:
    c = in_data(max_message_size=1000)
    c.feed(b"y" * 50 + b"\r\n")
    assert len(c.conn._data) == 52
    for _ in range(100):
        assert c.feed(b"z" * 98 + b"\r\n") == b""
    assert len(c.conn._data) == 0 and c.conn.buffered < 100
    assert codes(c.feed(b".\r\nNOOP\r\n")) == ["552 5.3.4", "250 2.0.0"]
    assert c.conn.state is State.READY


def test_data_line_length_limit() -> None:
    limit = 100
    ok = b"a" * (limit - 2) + b"\r\n"
    c, out = deliver(ok + b".\r\n", max_line_length=limit)
    assert codes(out) == ["250 2.0.0"]
    c, out = deliver(b"." + ok + b".\r\n", max_line_length=limit)  # stuffed dot not counted
    assert codes(out) == ["250 2.0.0"]
    c, out = deliver(b"a" + ok + b".\r\n", max_line_length=limit)
    assert codes(out) == ["554 5.6.0"] and c.of(MessageReceived) == []


@pytest.mark.parametrize("chunk", [None, 1, 33, 1000])
def test_very_long_data_line_is_not_buffered_and_still_finds_the_end(chunk: int | None) -> None:
    c = in_data(max_line_length=100)
    stream = b"head\r\n" + b"x" * 5000 + b"\r\n.\r\nNOOP\r\n"
    out = c.feed(stream, chunk=chunk)
    assert codes(out) == ["554 5.6.0", "250 2.0.0"]
    assert c.conn.buffered == 0 and len(c.conn._data) == 0


def test_long_line_ending_in_cr_split_across_chunks() -> None:
    c = in_data(max_line_length=100)
    assert c.feed(b"x" * 300 + b"\r") == b""
    assert c.conn.buffered == 1  # the CR may start CRLF.CRLF: kept
    assert codes(c.feed(b"\n.\r\n")) == ["554 5.6.0"]


def test_empty_message() -> None:
    c, out = deliver(b".\r\n")
    assert codes(out) == ["250 2.0.0"] and c.of(MessageReceived) == [MessageReceived(b"")]


def test_message_refused_by_the_application() -> None:
    c = in_transaction(lambda e: (550, "5.7.1", "spam") if isinstance(e, MessageReceived) else accept_all(e))
    assert codes(c.feed(b"DATA\r\nx\r\n.\r\n")) == ["354", "550 5.7.1"]
    assert c.conn.state is State.READY and c.conn.errors == 0


def test_data_event_pauses_until_reply() -> None:
    conn = in_data().conn
    conn.receive_data(b"hi\r\n.\r\nQUIT\r\n")
    assert conn.next_event() == MessageReceived(b"hi\r\n")
    assert conn.state is State.RCPT and conn.next_event() is PAUSED
    conn.reply(250, "2.0.0", "ok")
    assert conn.next_event() == ConnectionClosed("quit")
    assert codes(conn.data_to_send()) == ["250 2.0.0", "221 2.0.0"]


DATA_STREAMS = [
    b"Subject: a\r\n\r\nbody\r\n..stuffed\r\n.\r\nNOOP\r\n",
    b".\r\nNOOP\r\n",
    b"..\r\n.\r\n",
    b"a\r\n.\r\n",
    b"a\n.\nb\r\n.\r\nNOOP\r\n",
    b"a\r\n.\n\r\n.\r\nNOOP\r\n",
    b"x\r.\r\n.\r\n",
    b"\r\n\r\n.\r\n",
    b"x" * 150 + b"\r\n.\r\nNOOP\r\n",
    b"." + b"x" * 120 + b"\r\n.\r\n",
    b"x" * 97 + b"\r\n.\r\n",
    b"x" * 98 + b"\r\n.\r\n",
    b"y" * 60 + b"\r\n" + b"y" * 60 + b"\r\n.\r\n",
    b"big\r\n" * 40 + b".\r\n",
    b"\r\r\r\n\n\n.\r\n\r\n.\r\n",
    b"z" * 120 + b"\r\r\n.\r\n",
]


def data_result(pieces: list[bytes]) -> tuple[bytes, list[Event]]:
    c = in_data(max_line_length=100, max_message_size=150)
    out = c.feed_pieces(pieces)
    return out, c.events


@pytest.mark.parametrize("stream", DATA_STREAMS, ids=[f"stream{i}" for i in range(len(DATA_STREAMS))])
def test_data_fragmentation_property(stream: bytes) -> None:
    expected = data_result([stream])
    assert codes(expected[0])  # the message ended
    for i in range(len(stream) + 1):
        assert data_result([stream[:i], stream[i:]]) == expected, i
    assert data_result([bytes([b]) for b in stream]) == expected
    rng = random.Random(len(stream))
    for _ in range(20):
        cuts = sorted(rng.sample(range(len(stream) + 1), 4))
        pieces = [stream[a:b] for a, b in zip([0, *cuts], [*cuts, len(stream)], strict=True)]
        assert data_result(pieces) == expected, cuts


def test_data_then_next_transaction_in_one_buffer() -> None:
    c = in_data()
    out = c.feed(b"one\r\n.\r\n" + NEXT_TXN + b"QUIT\r\n")
    assert codes(out) == ["250 2.0.0", "250 2.1.0", "250 2.1.5", "354", "250 2.0.0", "221 2.0.0"]
    assert c.of(MessageReceived) == [MessageReceived(b"one\r\n"), MessageReceived(b"second\r\n")]


# ================================================================== command lines


def test_overlong_command_line_then_real_next_line() -> None:
    for chunk in (None, 1, 1000):
        c = ready()
        out = c.feed(b"X" * 70000 + b"\r\nQUIT\r\n", chunk=chunk)
        assert codes(out) == ["500 5.5.6", "221 2.0.0"], chunk
        assert c.conn.errors == 1 and c.conn.closed


def test_overlong_line_tail_is_never_a_command() -> None:
    for chunk in (None, 1, 100):
        c = ready()
        out = c.feed(b"NOOP " + b"X" * 3000 + b"QUIT\r\nNOOP\r\n", chunk=chunk)
        assert codes(out) == ["500 5.5.6", "250 2.0.0"], chunk
        assert not c.conn.closed


def test_overlong_line_answered_once_when_lf_arrives() -> None:
    c = ready()
    assert c.feed(b"A" * 5000) == b""
    assert c.conn.buffered <= 2048
    assert c.feed(b"B" * 5000) == b""
    assert codes(c.feed(b"C\r\nNOOP\r\n")) == ["500 5.5.6", "250 2.0.0"]


def test_command_line_length_boundary() -> None:
    limit = 60
    line = b"NOOP " + b"x" * (limit - 7) + b"\r\n"
    assert len(line) == limit
    c = ready(max_line_length=limit)
    assert codes(c.feed(line)) == ["250 2.0.0"]
    assert codes(c.feed(b"NOOP " + b"x" * (limit - 6) + b"\r\n")) == ["500 5.5.6"]


@pytest.mark.parametrize(
    ("data", "expected"),
    [
        (b"NOOP\n", ["500 5.5.2"]),
        (b"NOOP\nNOOP\r\n", ["500 5.5.2", "250 2.0.0"]),
        (b"NOOP\rQUIT\r\n", ["500 5.5.2"]),
        (b"QUIT\r\r\n", ["500 5.5.2"]),
        (b"NO\rOP\r\nNOOP\r\n", ["500 5.5.2", "250 2.0.0"]),
        (b"\n", ["500 5.5.2"]),
    ],
)
def test_bare_cr_lf_in_commands_refused(data: bytes, expected: list[str]) -> None:
    c = ready()
    assert codes(c.feed(data)) == expected
    assert not c.conn.closed


def test_nul_in_command() -> None:
    assert codes(ready().feed(b"NOOP\x00\r\n")) == ["500 5.5.1"]


# ================================================================== STARTTLS


def test_starttls_discards_pipelined_plaintext() -> None:
    c = ready(tls_available=True)
    out = c.feed(b"STARTTLS\r\nMAIL FROM:<evil@attacker.example>\r\nRCPT TO:<v@b.example>\r\n")
    assert out == b"220 2.0.0 Ready to start TLS\r\n"
    assert c.events[-1] == StartTLS()
    assert c.conn.buffered == 0
    # plaintext arriving before the handshake completes is discarded too
    c.conn.receive_data(b"MAIL FROM:<evil2@attacker.example>\r\n")
    assert c.conn.buffered == 0 and c.conn.next_event() is PAUSED
    c.conn.tls_established()
    assert c.conn.tls and c.conn.state is State.CONNECTED and c.conn.helo_name == ""
    assert c.conn.next_event() is NEED_DATA and c.conn.data_to_send() == b""
    assert c.of(MailFrom) == []


def test_after_tls_ehlo_again_no_starttls_and_second_starttls_refused() -> None:
    c = ready(tls_available=True, auto_tls=True, auth_mechanisms=("PLAIN",))
    assert codes(c.feed(b"STARTTLS\r\n")) == ["220 2.0.0"]
    assert c.conn.tls
    assert codes(c.feed(b"MAIL FROM:<a@b.example>\r\n")) == ["503 5.5.1"]  # EHLO required again
    lines = ehlo_lines(c)
    assert "STARTTLS" not in lines and "AUTH PLAIN" in lines
    assert codes(c.feed(b"STARTTLS\r\n")) == ["503 5.5.1"]
    assert codes(c.feed(b"MAIL FROM:<a@b.example>\r\n")) == ["250 2.1.0"]


def test_starttls_resets_transaction_and_authentication() -> None:
    def policy(e: Event) -> Answer:
        return "alice" if isinstance(e, AuthStart) else accept_all(e)

    c = ready(policy, tls_available=True, auto_tls=True, auth_mechanisms=("PLAIN",), auth_requires_tls=False)
    assert codes(c.feed(b"AUTH PLAIN AGFsaWNlAHB3\r\n")) == ["235 2.7.0"]
    assert c.conn.authenticated_as == "alice"
    assert codes(c.feed(b"STARTTLS\r\n")) == ["220 2.0.0"]
    assert c.conn.authenticated_as is None and c.conn.extended is False


def test_starttls_inside_transaction_refused() -> None:
    c = in_transaction(tls_available=True)
    assert codes(c.feed(b"STARTTLS\r\n")) == ["503 5.5.1"]
    assert c.of(StartTLS) == [] and c.conn.state is State.RCPT


@pytest.mark.parametrize(
    ("kw", "line", "code"),
    [
        ({}, b"STARTTLS", "502 5.5.1"),
        ({"tls_active": True}, b"STARTTLS", "503 5.5.1"),
        ({"tls_available": True}, b"STARTTLS now", "501 5.5.4"),
        ({"tls_available": True}, b"starttls", "220 2.0.0"),
    ],
)
def test_starttls_availability(kw: dict, line: bytes, code: str) -> None:
    assert codes(ready(**kw).feed(line + b"\r\n")) == [code]


def test_starttls_before_ehlo_allowed() -> None:
    c = Client.make(tls_available=True, auto_tls=True)
    assert codes(c.feed(b"STARTTLS\r\nEHLO c\r\n")) == ["220 2.0.0"]  # EHLO was plaintext: dropped
    assert codes(c.feed(b"EHLO c\r\n")) == ["250"]


# ================================================================== AUTH

PLAIN_IR = base64.b64encode(b"\0alice\0secret")


def auth_client(policy: Policy, **kw: object) -> Client:
    kw.setdefault("auth_mechanisms", ("PLAIN", "LOGIN"))
    kw.setdefault("tls_active", True)
    return ready(policy, **kw)


def plain_ok(e: Event) -> Answer:
    if isinstance(e, AuthStart):
        if e.initial_response is None:
            return (334, "", "")
        return "alice" if e.initial_response == b"\0alice\0secret" else (535, "5.7.8", "bad")
    if isinstance(e, AuthResponse):
        return "alice" if e.response == b"\0alice\0secret" else (535, "5.7.8", "bad")
    return accept_all(e)


def test_auth_not_offered() -> None:
    c = ready(tls_active=True)
    assert codes(c.feed(b"AUTH PLAIN " + PLAIN_IR + b"\r\n")) == ["502 5.5.1"]


def test_auth_refused_without_tls() -> None:
    c = ready(auth_mechanisms=("PLAIN",), tls_available=True)
    assert codes(c.feed(b"AUTH PLAIN " + PLAIN_IR + b"\r\n")) == ["538 5.7.11"]
    assert c.of(AuthStart) == []


def test_auth_allowed_without_tls_when_configured() -> None:
    c = auth_client(plain_ok, tls_active=False, auth_requires_tls=False)
    assert codes(c.feed(b"AUTH PLAIN " + PLAIN_IR + b"\r\n")) == ["235 2.7.0"]


def test_auth_sasl_ir_success() -> None:
    c = auth_client(plain_ok)
    assert c.feed(b"AUTH PLAIN " + PLAIN_IR + b"\r\n") == b"235 2.7.0 Authentication successful\r\n"
    assert c.of(AuthStart) == [AuthStart("PLAIN", b"\0alice\0secret")]
    assert c.conn.authenticated_as == "alice" and c.conn.state is State.READY
    assert codes(c.feed(b"AUTH PLAIN " + PLAIN_IR + b"\r\n")) == ["503 5.5.1"]
    assert "AUTH PLAIN LOGIN" not in ehlo_lines(c)


def test_auth_empty_initial_response_is_equals_sign() -> None:
    c = auth_client(lambda e: (535, "5.7.8", "bad") if isinstance(e, AuthStart) else accept_all(e))
    assert codes(c.feed(b"AUTH plain =\r\n")) == ["535 5.7.8"]
    assert c.of(AuthStart) == [AuthStart("PLAIN", b"")]


def test_auth_challenge_then_response() -> None:
    c = auth_client(plain_ok)
    assert c.feed(b"AUTH PLAIN\r\n") == b"334 \r\n"
    assert c.of(AuthStart) == [AuthStart("PLAIN", None)] and c.conn.state is State.AUTH
    assert codes(c.feed(PLAIN_IR + b"\r\n")) == ["235 2.7.0"]
    assert c.of(AuthResponse) == [AuthResponse(b"\0alice\0secret")]


def test_auth_login_multi_step() -> None:
    def login(e: Event) -> Answer:
        if isinstance(e, AuthStart):
            return (334, "", "VXNlcm5hbWU6")
        if isinstance(e, AuthResponse):
            return (334, "", "UGFzc3dvcmQ6") if e.response == b"alice" else "alice"
        return accept_all(e)

    c = auth_client(login)
    out = c.feed(b"AUTH LOGIN\r\n" + base64.b64encode(b"alice") + b"\r\n" + base64.b64encode(b"pw") + b"\r\n")
    assert out == b"334 VXNlcm5hbWU6\r\n334 UGFzc3dvcmQ6\r\n235 2.7.0 Authentication successful\r\n"
    assert [e.response for e in c.of(AuthResponse)] == [b"alice", b"pw"]


def test_auth_response_line_that_looks_like_a_command_is_a_response() -> None:
    c = auth_client(plain_ok)
    c.feed(b"AUTH PLAIN\r\n")
    assert codes(c.feed(b"QUIT\r\n")) == ["535 5.7.8"]  # "QUIT" is valid base64
    assert not c.conn.closed


def test_auth_cancel() -> None:
    c = auth_client(plain_ok)
    c.feed(b"AUTH PLAIN\r\n")
    assert codes(c.feed(b"*\r\n")) == ["501 5.0.0"]
    assert c.conn.state is State.READY and c.conn.authenticated_as is None
    assert codes(c.feed(b"NOOP\r\n")) == ["250 2.0.0"]


@pytest.mark.parametrize("bad", [b"not base64!", b"YWJ", b"YW Jj", b"YWJj\x00", b"\xff"])
def test_auth_bad_base64(bad: bytes) -> None:
    c = auth_client(plain_ok)
    c.feed(b"AUTH PLAIN\r\n")
    assert codes(c.feed(bad + b"\r\n")) == ["501 5.5.2"]
    assert c.conn.state is State.READY and c.of(AuthResponse) == []
    if bad.isascii():
        c = auth_client(plain_ok)
        assert codes(c.feed(b"AUTH PLAIN " + bad + b"\r\n")) == ["501 5.5.2"]
        assert c.of(AuthStart) == []


@pytest.mark.parametrize(
    ("line", "code"),
    [(b"AUTH", "501 5.5.4"), (b"AUTH CRAM-MD5", "504 5.5.4"), (b"AUTH GSSAPI abc=", "504 5.5.4")],
)
def test_auth_mechanism_errors(line: bytes, code: str) -> None:
    assert codes(auth_client(plain_ok).feed(line + b"\r\n")) == [code]


def test_auth_inside_transaction_and_before_ehlo() -> None:
    c = auth_client(plain_ok)
    c.feed(b"MAIL FROM:<a@b.example>\r\n")
    assert codes(c.feed(b"AUTH PLAIN " + PLAIN_IR + b"\r\n")) == ["503 5.5.1"]
    c = Client.make(plain_ok, auth_mechanisms=("PLAIN",), tls_active=True)
    assert codes(c.feed(b"AUTH PLAIN " + PLAIN_IR + b"\r\n")) == ["503 5.5.1"]


def test_auth_failure_counts_as_error() -> None:
    c = auth_client(plain_ok, max_errors=3)
    bad = base64.b64encode(b"\0alice\0wrong")
    out = b"".join(c.feed(b"AUTH PLAIN " + bad + b"\r\n") for _ in range(3))
    assert codes(out) == ["535 5.7.8", "535 5.7.8", "535 5.7.8", "421 4.7.0"]
    assert c.conn.closed


def test_too_many_failed_auths_on_one_connection_close_it() -> None:
    c = auth_client(plain_ok, max_errors=20, max_auth_failures=3)
    bad = base64.b64encode(b"\0alice\0wrong")
    out = b"".join(c.feed(b"AUTH PLAIN " + bad + b"\r\n") for _ in range(2))
    assert codes(out) == ["535 5.7.8", "535 5.7.8"] and not c.conn.closed
    out = c.feed(b"AUTH PLAIN " + bad + b"\r\n")
    assert out.endswith(b"421 4.7.0 mx.example too many failed logins on this connection, closing\r\n")
    assert codes(out) == ["535 5.7.8", "421 4.7.0"] and c.conn.closed


def test_auth_refused_without_tls_leaves_a_notice_for_the_log() -> None:
    c = ready(auth_mechanisms=("PLAIN",), tls_available=True)
    c.feed(b"AUTH PLAIN " + PLAIN_IR + b"\r\n")
    c.feed(b"AUTH X\x01Y\r\n")
    assert c.conn.take_notices() == ["login refused without TLS mechanism=PLAIN code=538",
                                     "login refused without TLS mechanism=? code=538"]
    assert c.conn.take_notices() == []


def test_auth_success_via_reply_is_a_protocol_error_and_keeps_exchange() -> None:
    conn = auth_client(plain_ok).conn
    conn.receive_data(b"AUTH PLAIN " + PLAIN_IR + b"\r\n")
    assert isinstance(conn.next_event(), AuthStart)
    with pytest.raises(ProtocolError):
        conn.reply(235, "2.7.0", "ok")
    conn.auth_succeeded("alice")
    assert conn.authenticated_as == "alice"


def test_overlong_auth_line_aborts_exchange() -> None:
    c = auth_client(plain_ok, max_line_length=100)
    c.feed(b"AUTH PLAIN\r\n")
    assert codes(c.feed(b"A" * 200 + b"\r\nNOOP\r\n")) == ["500 5.5.6", "250 2.0.0"]
    assert c.conn.state is State.READY and c.of(AuthResponse) == []


def test_bare_lf_in_auth_line_aborts_exchange() -> None:
    c = auth_client(plain_ok)
    c.feed(b"AUTH PLAIN\r\n")
    assert codes(c.feed(PLAIN_IR + b"\nNOOP\r\n")) == ["500 5.5.2", "250 2.0.0"]
    assert c.conn.authenticated_as is None


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        (b"\0alice\0secret", ("", "alice", "secret")),
        (b"admin\0alice\0secret", ("admin", "alice", "secret")),
        ("\0jörg\0pässword".encode(), ("", "jörg", "pässword")),
        (b"\0alice\0", ("", "alice", "")),
    ],
)
def test_decode_auth_plain(raw: bytes, expected: tuple[str, str, str]) -> None:
    assert decode_auth_plain(raw) == expected


@pytest.mark.parametrize("raw", [b"", b"alice\0secret", b"\0\0secret", b"a\0b\0c\0d", b"\0\xff\0pw"])
def test_decode_auth_plain_errors(raw: bytes) -> None:
    with pytest.raises(ValueError):
        decode_auth_plain(raw)


# ================================================================== errors, QUIT, close


def test_too_many_errors_closes_with_421() -> None:
    c = ready(max_errors=3)
    out = c.feed(b"BOGUS\r\nMAIL\r\nRCPT TO:<a@b.example>\r\nNOOP\r\n")
    assert codes(out) == ["500 5.5.1", "501 5.5.4", "503 5.5.1", "421 4.7.0"]
    assert c.events[-1] == ConnectionClosed("too many errors")
    assert c.conn.closed and c.conn.buffered == 0
    assert c.feed(b"NOOP\r\n") == b""
    assert c.conn.next_event() is NEED_DATA


def test_application_rejections_count_towards_max_errors() -> None:
    def policy(e: Event) -> Answer:
        return (550, "5.1.1", "no such user") if isinstance(e, RcptTo) else accept_all(e)

    c = ready(policy, max_errors=3)
    out = c.feed(b"MAIL FROM:<a@b.example>\r\n" + b"RCPT TO:<x@y.example>\r\n" * 5)
    assert codes(out) == ["250 2.1.0", "550 5.1.1", "550 5.1.1", "550 5.1.1", "421 4.7.0"]
    assert c.events[-1] == ConnectionClosed("too many errors") and c.conn.closed


def test_accepted_message_resets_error_count() -> None:
    c = ready(max_errors=3)
    c.feed(b"BOGUS\r\nBOGUS\r\n")
    assert c.conn.errors == 2
    c.feed(TXN + b"x\r\n.\r\n")
    assert c.conn.errors == 0
    assert codes(c.feed(b"BOGUS\r\nBOGUS\r\n")) == ["500 5.5.1", "500 5.5.1"]
    assert not c.conn.closed


def test_quit() -> None:
    for setup in (b"", b"EHLO c\r\n", b"EHLO c\r\nMAIL FROM:<a@b.example>\r\n"):
        c = Client.make()
        c.feed(setup)
        assert c.feed(b"QUIT\r\nNOOP\r\n") == b"221 2.0.0 mx.example closing connection\r\n"
        assert c.events[-1] == ConnectionClosed("quit")
        assert c.conn.closed and c.conn.state is State.CLOSED
        assert c.feed(b"NOOP\r\n") == b"" and c.conn.buffered == 0


def test_close_with() -> None:
    c = in_transaction()
    c.conn.close_with(421, "4.4.2", "mx.example Timeout, closing")
    assert c.conn.data_to_send() == b"421 4.4.2 mx.example Timeout, closing\r\n"
    assert c.conn.closed
    assert c.conn.next_event() == ConnectionClosed("mx.example Timeout, closing")
    assert c.conn.next_event() is NEED_DATA
    c.conn.close_with(421, "4.3.2", "again")  # no second unsolicited reply
    c.conn.receive_data(b"NOOP\r\n")
    assert c.conn.data_to_send() == b"" and c.conn.next_event() is NEED_DATA


def test_reply_after_close_is_ignored() -> None:
    conn = ServerConnection(params())
    conn.receive_data(b"EHLO c\r\n")
    assert isinstance(conn.next_event(), Helo)
    conn.close_with(421, "4.3.2", "shutting down")
    conn.reply(250, "", "late")  # the handler finished after the shutdown: harmless
    conn.auth_succeeded("late")
    assert conn.data_to_send() == b"421 4.3.2 shutting down\r\n"


def test_app_reply_421_closes() -> None:
    c = ready(lambda e: (421, "4.7.0", "mx.example go away") if isinstance(e, MailFrom) else accept_all(e))
    out = c.feed(b"MAIL FROM:<a@b.example>\r\nNOOP\r\n")
    assert out == b"421 4.7.0 mx.example go away\r\n"
    assert c.conn.closed and isinstance(c.events[-1], ConnectionClosed)


# ================================================================== Reply encoding


@pytest.mark.parametrize(
    ("reply", "wire"),
    [
        (Reply(250, "2.0.0", "OK"), b"250 2.0.0 OK\r\n"),
        (Reply(220, "", "host ESMTP"), b"220 host ESMTP\r\n"),
        (Reply(354, "", ""), b"354\r\n"),
        (Reply(550, "5.7.1", "one\ntwo"), b"550-5.7.1 one\r\n550 5.7.1 two\r\n"),
        (Reply(250, "", "a\nb\nc"), b"250-a\r\n250-b\r\n250 c\r\n"),
        (Reply(550, "5.7.1", "bad\r\ninject"), b"550-5.7.1 bad\r\n550 5.7.1 inject\r\n"),
        (Reply(550, "5.7.1", "bare\rcr"), b"550 5.7.1 bare cr\r\n"),
        (Reply(550, "5.1.1", "<jörg@x>"), "550 5.1.1 <jörg@x>\r\n".encode()),
    ],
)
def test_reply_encoding(reply: Reply, wire: bytes) -> None:
    assert reply.encode() == wire


def test_auth_challenge_cannot_inject_lines() -> None:
    conn = auth_client(plain_ok).conn
    conn.receive_data(b"AUTH LOGIN\r\n")
    assert isinstance(conn.next_event(), AuthStart)
    conn.reply(334, "", "abc\r\n250 fake")
    assert conn.data_to_send() == b"334 abc250 fake\r\n"


# ================================================================== not an SMTP client


@pytest.mark.parametrize("line", [b"GET / HTTP/1.1\r\n", b"POST /x HTTP/1.0\r\n",
                                  b"CONNECT h:25 HTTP/1.1\r\n", b"USER alice\r\n", b"get /\n"])
def test_http_or_pop3_command_closes_at_once(line: bytes) -> None:
    c = ready()
    out = c.feed(line + b"Host: mx.example\r\nNOOP\r\n")
    assert codes(out) == ["554 5.5.1"] and c.conn.closed
    assert c.of(ConnectionClosed)


def test_unsent_counts_queued_replies() -> None:
    c = Client.make()
    c.conn.receive_data(b"NOOP\r\nNOOP\r\n")
    assert c.conn.next_event() is NEED_DATA
    queued = c.conn.unsent
    assert queued == len(c.conn.data_to_send()) > 0
    assert c.conn.unsent == 0
