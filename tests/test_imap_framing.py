"""IMAPConnection: the sans-I/O framer, byte for byte (no sockets).

``drive`` feeds chunks and collects events, answering pauses with a fixed policy, so the
same input gives the same transcript however it is split.
"""

from __future__ import annotations

import random
from collections.abc import Callable

import pytest

from mailserver.imap.commands import Append, Authenticate, Login, SimpleCommand, parse_command
from mailserver.imap.format import error_response
from mailserver.imap.framing import (
    NEED_DATA,
    PAUSED,
    AuthResponse,
    CommandError,
    CommandReceived,
    ConnectionClosed,
    ContinuationRequest,
    Event,
    IdleDone,
    IMAPConnection,
    Limits,
    ProtocolError,
)


def default_policy(conn: IMAPConnection) -> None:
    reason = conn.paused_for
    if reason == "AUTHENTICATE":
        conn.continue_authenticate()
    elif reason == "IDLE":
        conn.start_idle()
    else:  # AUTH-RESPONSE: final answer sent; STARTTLS: refused
        conn.resume()


def drive(
    data: bytes | list[bytes],
    limits: Limits | None = None,
    *,
    policy: Callable[[IMAPConnection], None] = default_policy,
    conn: IMAPConnection | None = None,
) -> list[Event]:
    conn = conn or IMAPConnection(limits)
    chunks = [data] if isinstance(data, bytes) else data
    events: list[Event] = []
    for chunk in chunks:
        conn.receive_data(chunk)
        while True:
            ev = conn.next_event()
            if ev is NEED_DATA:
                break
            if ev is PAUSED:
                policy(conn)
                continue
            events.append(ev)  # type: ignore[arg-type]
    return events


def commands(events: list[Event]) -> list:
    return [e.command for e in events if isinstance(e, CommandReceived)]


def errors(events: list[Event]) -> list[tuple[str | None, str, str | None]]:
    return [(e.error.tag, e.error.status, e.error.code) for e in events if isinstance(e, CommandError)]


def splits(data: bytes, seed: int) -> list[bytes]:
    rng = random.Random(seed)
    out, i = [], 0
    while i < len(data):
        n = rng.randint(1, 7)
        out.append(data[i : i + n])
        i += n
    return out


SMALL = Limits(max_line_length=64, max_literal=100, max_small_literal=20, max_discard=1000)
MSG = b"Subject: x\r\n\r\nline with ) and {3}\r\nand CRLF\r\n"

STREAMS = [
    b"a1 NOOP\r\na2 CAPABILITY\r\n",
    b"a1 LOGIN {5}\r\nalice {6+}\r\nsecret\r\na2 SELECT INBOX\r\n",
    b"7 APPEND Sent (\\Seen) {%d+}\r\n" % len(MSG) + MSG + b"\r\n8 NOOP\r\n",
    b"7 APPEND Sent {%d}\r\n" % len(MSG) + MSG + b"\r\n8 NOOP\r\n",
    b"a1 APPEND INBOX {0}\r\n\r\na2 NOOP\r\n",
    b"a1 FROB\r\na2 NOOP\r\n",
    b"a1 LOGIN {500+}\r\n" + b"x" * 500 + b"\r\na2 NOOP\r\n",  # over the small-literal limit: discarded
    b"a1 APPEND INBOX {101}\r\na2 NOOP\r\n",  # sync over the limit: NO, the client sends no octets
    b"a1 NOOP " + b"x" * 100 + b"\r\na2 NOOP\r\n",  # overlong line
    b"a1 NOOP " + b"x" * 100 + b" {5+}\r\nb LOG\r\na2 NOOP\r\n",  # overlong line ending in a literal
    b"a1 NOOP\na2 NOOP\r\n",  # bare LF
    b"a1 AUTHENTICATE PLAIN\r\nAGFsaWNlAHB3\r\na2 NOOP\r\n",
    b"a1 AUTHENTICATE PLAIN\r\n*\r\na2 NOOP\r\n",
    b"a1 IDLE\r\nDONE\r\na2 NOOP\r\n",
    b"a1 IDLE\r\nNOOP\r\na2 NOOP\r\n",
    b"\r\na1 NOOP\r\n",
    b"a1 SEARCH SUBJECT {3}\r\n)\r\n FLAGGED\r\n",
    b"a1 STARTTLS\r\na2 NOOP\r\n",
]


@pytest.mark.parametrize("stream", STREAMS)
def test_any_split_gives_the_same_events(stream: bytes) -> None:
    whole = drive(stream, SMALL)
    assert whole  # every stream produces something
    assert drive([bytes([b]) for b in stream], SMALL) == whole
    for seed in range(5):
        assert drive(splits(stream, seed), SMALL) == whole


def test_pipelined_commands() -> None:
    events = drive(b"a1 NOOP\r\na2 CAPABILITY\r\na3 LOGOUT\r\n")
    assert commands(events) == [
        SimpleCommand("a1", "NOOP"),
        SimpleCommand("a2", "CAPABILITY"),
        SimpleCommand("a3", "LOGOUT"),
    ]


def test_incomplete_line_waits() -> None:
    conn = IMAPConnection()
    conn.receive_data(b"a1 NOO")
    assert conn.next_event() is NEED_DATA
    conn.receive_data(b"P\r")
    assert conn.next_event() is NEED_DATA
    conn.receive_data(b"\n")
    assert conn.next_event() == CommandReceived(SimpleCommand("a1", "NOOP"))


# ---------------------------------------------------------------------------- literals


def test_sync_literal_asks_for_continuation_before_reading() -> None:
    conn = IMAPConnection()
    conn.receive_data(b"a1 LOGIN {5}\r\n")
    assert conn.next_event() == ContinuationRequest("a1", 5)
    assert conn.next_event() is NEED_DATA
    conn.receive_data(b"alice {2}\r\n")
    assert conn.next_event() == ContinuationRequest("a1", 2)
    conn.receive_data(b"pw\r\n")
    assert conn.next_event() == CommandReceived(Login("a1", "LOGIN", "alice", "pw"))


def test_nonsync_literal_needs_no_continuation() -> None:
    events = drive(b"a1 LOGIN {5+}\r\nalice {2+}\r\npw\r\n")
    assert events == [CommandReceived(Login("a1", "LOGIN", "alice", "pw"))]


def test_zero_length_literals() -> None:
    events = drive(b"a1 LOGIN {0}\r\n {0+}\r\n\r\n")
    assert events == [ContinuationRequest("a1", 0), CommandReceived(Login("a1", "LOGIN", "", ""))]


def test_literal_containing_crlf_and_parentheses() -> None:
    events = drive(b"7 APPEND Sent (\\Seen) {%d+}\r\n" % len(MSG) + MSG + b"\r\n")
    assert commands(events) == [Append("7", "APPEND", "Sent", ("\\Seen",), None, MSG)]


def test_literal_that_looks_like_commands_is_data() -> None:
    payload = b"x LOGOUT\r\ny NOOP\r\n"
    events = drive(b"a SEARCH BODY {%d+}\r\n" % len(payload) + payload + b"\r\n")
    assert len(commands(events)) == 1 and not errors(events)


@pytest.mark.parametrize("sync", [True, False])
def test_literal_exactly_at_the_limit(sync: bool) -> None:
    data = b"m" * 100
    marker = b"{100}" if sync else b"{100+}"
    events = drive(b"a APPEND INBOX " + marker + b"\r\n" + data + b"\r\n", SMALL)
    assert commands(events) == [Append("a", "APPEND", "INBOX", (), None, data)]
    assert (ContinuationRequest("a", 100) in events) is sync


def test_sync_literal_one_over_the_limit_is_refused_with_no() -> None:
    events = drive(b"a APPEND INBOX {101}\r\nb NOOP\r\n", SMALL)
    assert errors(events) == [("a", "NO", "TOOBIG")]
    assert not any(isinstance(e, ContinuationRequest) for e in events)
    assert commands(events) == [SimpleCommand("b", "NOOP")]
    err = next(e for e in events if isinstance(e, CommandError)).error
    assert error_response(err).startswith(b"a NO [TOOBIG] ")


def test_nonsync_literal_over_the_limit_is_bad_and_discarded() -> None:
    smuggled = b"z DELETE INBOX\r\n" * 7  # 112 octets of literal that must never run
    stream = b"a APPEND INBOX {112+}\r\n" + smuggled + b"\r\nb NOOP\r\n"
    for chunks in ([stream], [bytes([c]) for c in stream]):
        events = drive(chunks, SMALL)
        assert errors(events) == [("a", "BAD", "TOOBIG")]
        assert commands(events) == [SimpleCommand("b", "NOOP")]


def test_discard_covers_the_rest_of_the_command_and_further_literals() -> None:
    stream = b"a APPEND INBOX (\\Seen) {200+}\r\n" + b"y" * 200 + b" {4+}\r\nc NO\r\nb NOOP\r\n"
    events = drive(stream, SMALL)
    assert errors(events) == [("a", "BAD", "TOOBIG")]
    assert commands(events) == [SimpleCommand("b", "NOOP")]


def test_nonsync_literal_beyond_max_discard_closes() -> None:
    conn = IMAPConnection(SMALL)
    events = drive(b"a APPEND INBOX {1001+}\r\nxxxx", conn=conn)
    assert errors(events) == [("a", "BAD", "TOOBIG")]
    assert isinstance(events[-1], ConnectionClosed)
    assert conn.closed
    conn.receive_data(b"b NOOP\r\n")
    assert conn.next_event() is NEED_DATA


def test_absurd_literal_size() -> None:
    events = drive(b"a APPEND INBOX {99999999999999999999999999+}\r\n", SMALL)
    assert isinstance(events[-1], ConnectionClosed)
    events = drive(b"a APPEND INBOX {99999999999999999999999999}\r\nb NOOP\r\n", SMALL)
    assert errors(events) == [("a", "NO", "TOOBIG")]
    assert commands(events) == [SimpleCommand("b", "NOOP")]


def test_small_literal_limit_applies_to_non_append() -> None:
    assert errors(drive(b"a LOGIN {21}\r\n", SMALL)) == [("a", "NO", "TOOBIG")]
    assert ContinuationRequest("a", 20) in drive(b"a LOGIN {20}\r\n", SMALL)
    assert ContinuationRequest("a", 100) in drive(b"a APPEND INBOX {100}\r\n", SMALL)


def test_command_size_limit_counts_all_literals() -> None:
    limits = Limits(max_line_length=64, max_literal=100, max_small_literal=60, max_command_size=100)
    events = drive(b"a LOGIN {50+}\r\n" + b"u" * 50 + b" {50+}\r\n" + b"p" * 50 + b"\r\nb NOOP\r\n", limits)
    assert errors(events) == [("a", "BAD", "TOOBIG")]
    assert commands(events) == [SimpleCommand("b", "NOOP")]


def test_unknown_command_with_literal_is_refused_before_continuation() -> None:
    events = drive(b"a FROB {5}\r\nb NOOP\r\n")
    assert errors(events) == [("a", "BAD", None)]
    assert not any(isinstance(e, ContinuationRequest) for e in events)
    assert commands(events) == [SimpleCommand("b", "NOOP")]
    events = drive(b"a FROB {5+}\r\nc X\r\n\r\nb NOOP\r\n")
    assert errors(events) == [("a", "BAD", None)]
    assert commands(events) == [SimpleCommand("b", "NOOP")]


def test_bad_tag_with_literal() -> None:
    events = drive(b"+a LOGIN {3+}\r\nx Y\r\nb NOOP\r\n")
    assert errors(events) == [(None, "BAD", None)]
    assert commands(events) == [SimpleCommand("b", "NOOP")]


def test_marker_inside_quotes_is_not_a_literal() -> None:
    events = drive(b'a SEARCH SUBJECT "x {3}\r\nb NOOP\r\n')
    assert errors(events) == [("a", "BAD", None)]
    assert commands(events) == [SimpleCommand("b", "NOOP")]
    # an escaped quote does not end the string
    events = drive(b'a SEARCH SUBJECT "x\\" {3}\r\nb NOOP\r\n')
    assert errors(events) == [("a", "BAD", None)]
    # a closed quoted string before the marker: a real literal
    events = drive(b'a SEARCH HEADER "X-A" {3}\r\nabc\r\n')
    assert commands(events) and not errors(events)


def test_literal_then_parse_error_reports_tag() -> None:
    events = drive(b"a LOGIN {3+}\r\nabc\r\n")
    assert errors(events) == [("a", "BAD", None)]


# ---------------------------------------------------------------------------- lines


def test_line_exactly_at_the_limit() -> None:
    line = b"a SEARCH SUBJECT " + b"x" * (64 - 19) + b"\r\n"
    assert len(line) == 64
    events = drive(line, SMALL)
    assert len(commands(events)) == 1


def test_line_one_over_the_limit() -> None:
    line = b"a SEARCH SUBJECT " + b"x" * (64 - 18) + b"\r\n"
    for chunks in ([line + b"b NOOP\r\n"], [bytes([c]) for c in line + b"b NOOP\r\n"]):
        events = drive(chunks, SMALL)
        assert errors(events) == [("a", "BAD", None)]
        assert commands(events) == [SimpleCommand("b", "NOOP")]


def test_tail_of_overlong_line_is_never_a_command() -> None:
    evil = b"a NOOP " + b"x" * 200 + b"\r\nz LOGOUT\r\n"
    # even when the overlong part arrives without its LF, the rest is discarded
    events = drive([evil[:100], evil[100:150], evil[150:]], SMALL)
    assert errors(events) == [("a", "BAD", None)]
    assert commands(events) == [SimpleCommand("z", "LOGOUT")]
    sneaky = b"a NOOP " + b"x" * 200 + b" z LOGOUT\r\nb NOOP\r\n"
    events = drive([bytes([c]) for c in sneaky], SMALL)
    assert commands(events) == [SimpleCommand("b", "NOOP")]


def test_overlong_line_ending_in_nonsync_literal_discards_it() -> None:
    stream = b"a NOOP " + b"x" * 200 + b" {16+}\r\nz DELETE INBOX\r\n\r\nb NOOP\r\n"
    events = drive([stream[:30], stream[30:]], SMALL)
    assert errors(events) == [("a", "BAD", None)]
    assert commands(events) == [SimpleCommand("b", "NOOP")]


def test_overlong_line_in_the_middle_of_a_command_uses_its_tag() -> None:
    stream = b"a7 LOGIN {2+}\r\nab " + b"y" * 100 + b"\r\nb NOOP\r\n"
    events = drive(stream, SMALL)
    assert errors(events) == [("a7", "BAD", None)]
    assert commands(events) == [SimpleCommand("b", "NOOP")]


@pytest.mark.parametrize("stream", [b"a NOOP\nb NOOP\r\n", b"a NO\rOP\r\nb NOOP\r\n"])
def test_bare_newlines(stream: bytes) -> None:
    events = drive(stream)
    assert errors(events) == [("a", "BAD", None)]
    assert commands(events) == [SimpleCommand("b", "NOOP")]


def test_empty_line_is_untagged_bad() -> None:
    events = drive(b"\r\nb NOOP\r\n")
    assert errors(events) == [(None, "BAD", None)]
    err = next(e for e in events if isinstance(e, CommandError)).error
    assert error_response(err).startswith(b"* BAD ")


# ---------------------------------------------------------------------------- AUTHENTICATE


def test_authenticate_exchange() -> None:
    conn = IMAPConnection()
    conn.receive_data(b"a AUTHENTICATE PLAIN\r\nAGFsaWNlAHB3\r\nb NOOP\r\n")
    assert conn.next_event() == CommandReceived(Authenticate("a", "AUTHENTICATE", "PLAIN", None))
    assert conn.next_event() is PAUSED
    assert conn.next_event() is PAUSED  # stays paused; the pipelined lines wait
    conn.continue_authenticate()
    assert conn.next_event() == AuthResponse("a", b"\x00alice\x00pw")
    assert conn.next_event() is PAUSED
    conn.resume()
    assert conn.next_event() == CommandReceived(SimpleCommand("b", "NOOP"))


def test_authenticate_multi_step_and_empty_response() -> None:
    conn = IMAPConnection()
    conn.receive_data(b"a AUTHENTICATE LOGIN\r\n")
    assert isinstance(conn.next_event(), CommandReceived)
    conn.continue_authenticate()
    conn.receive_data(b"YWxpY2U=\r\n")
    assert conn.next_event() == AuthResponse("a", b"alice")
    conn.continue_authenticate()
    conn.receive_data(b"\r\n")
    assert conn.next_event() == AuthResponse("a", b"")


def test_authenticate_sasl_ir_finished_at_once() -> None:
    conn = IMAPConnection()
    conn.receive_data(b"6 AUTHENTICATE PLAIN AGFsaWNlAHB3\r\n7 NOOP\r\n")
    ev = conn.next_event()
    assert isinstance(ev, CommandReceived) and ev.command.initial_response == b"\x00alice\x00pw"
    conn.resume()  # tagged OK sent at once
    assert conn.next_event() == CommandReceived(SimpleCommand("7", "NOOP"))


def test_authenticate_cancel_and_bad_base64() -> None:
    events = drive(b"a AUTHENTICATE PLAIN\r\n*\r\nb NOOP\r\n")
    assert events[1] == AuthResponse("a", None)
    assert commands(events)[-1] == SimpleCommand("b", "NOOP")
    events = drive(b"a AUTHENTICATE PLAIN\r\n!!!\r\nb NOOP\r\n")
    assert errors(events) == [("a", "BAD", None)]
    assert commands(events)[-1] == SimpleCommand("b", "NOOP")


def test_overlong_sasl_response_fails_the_exchange() -> None:
    events = drive(b"a AUTHENTICATE PLAIN\r\n" + b"A" * 100 + b"\r\nb NOOP\r\n", SMALL)
    assert errors(events) == [("a", "BAD", None)]
    assert commands(events)[-1] == SimpleCommand("b", "NOOP")


# ---------------------------------------------------------------------------- IDLE, STARTTLS


@pytest.mark.parametrize("done", [b"DONE", b"done", b"Done"])
def test_idle_done(done: bytes) -> None:
    events = drive(b"i IDLE\r\n" + done + b"\r\nb NOOP\r\n")
    assert events == [
        CommandReceived(SimpleCommand("i", "IDLE")),
        IdleDone("i"),
        CommandReceived(SimpleCommand("b", "NOOP")),
    ]


def test_idle_other_line_is_bad_and_ends_idle() -> None:
    events = drive(b"i IDLE\r\nx NOOP\r\nb NOOP\r\n")
    assert errors(events) == [("i", "BAD", None)]
    assert commands(events)[-1] == SimpleCommand("b", "NOOP")


def test_idle_refused_by_the_server() -> None:
    def refuse(conn: IMAPConnection) -> None:
        conn.resume()

    events = drive(b"i IDLE\r\nb NOOP\r\n", policy=refuse)
    assert commands(events) == [SimpleCommand("i", "IDLE"), SimpleCommand("b", "NOOP")]


def test_starttls_discards_pipelined_plaintext() -> None:
    conn = IMAPConnection()
    conn.receive_data(b"s STARTTLS\r\nx LOGIN evil injected\r\n")
    assert conn.next_event() == CommandReceived(SimpleCommand("s", "STARTTLS"))
    assert conn.next_event() is PAUSED
    conn.receive_data(b"y DELETE INBOX\r\n")  # still plaintext, before the handshake
    conn.tls_established()
    assert conn.buffered == 0
    assert conn.next_event() is NEED_DATA
    conn.receive_data(b"a CAPABILITY\r\n")
    assert conn.next_event() == CommandReceived(SimpleCommand("a", "CAPABILITY"))


def test_misuse_raises() -> None:
    conn = IMAPConnection()
    for call in (conn.resume, conn.start_idle, conn.continue_authenticate, conn.tls_established):
        with pytest.raises(ProtocolError):
            call()
    conn.receive_data(b"i IDLE\r\n")
    conn.next_event()
    with pytest.raises(ProtocolError):
        conn.continue_authenticate()
    with pytest.raises(ProtocolError):
        conn.tls_established()
    conn.start_idle()


def test_events_match_parse_command() -> None:
    stream = b"a1 UID FETCH 1:* (FLAGS) (CHANGEDSINCE 5)\r\n"
    assert commands(drive(stream)) == [parse_command(stream)]


def test_random_garbage_never_crashes() -> None:
    rng = random.Random(7888)
    alphabet = [
        b"a",
        b" ",
        b"{",
        b"}",
        b"+",
        b"1",
        b"3",
        b"\r\n",
        b"\n",
        b"\r",
        b"(",
        b")",
        b'"',
        b"\\",
        b"NOOP",
        b"LOGIN",
        b"APPEND",
        b"IDLE",
        b"DONE",
        b"*",
        b"~",
        b"\x00",
        b"\xff",
        b"{2+}\r\n",
    ]
    for _ in range(300):
        stream = b"".join(rng.choice(alphabet) for _ in range(rng.randint(1, 60)))
        whole = drive(stream, SMALL)
        assert drive([bytes([c]) for c in stream], SMALL) == whole
