"""Property tests of the IMAP framer, command parser, modified UTF-7, sequence sets and dates."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from mailserver.imap import framing
from mailserver.imap.commands import Append, Login
from tests.fuzz import checks, grammar
from tests.fuzz.profiles import FUZZ


@FUZZ
@given(grammar.imap_limits, grammar.imap_stream(), grammar.chunk_sizes)
def test_imap_framer_any_split(limits: framing.Limits, stream: bytes, sizes: list[int]) -> None:
    """Same events for any split, bounded buffers, answerable errors."""
    checks.check_imap_framer(limits, stream, sizes)


@FUZZ
@given(grammar.imap_command())
def test_imap_parser(command: bytes) -> None:
    checks.check_imap_parser(command if command.endswith(b"\r\n") else command + b"\r\n")


@FUZZ
@given(st.binary(max_size=80))
def test_imap_parser_random_bytes(data: bytes) -> None:
    checks.check_imap_parser(b"a1 " + data + b"\r\n")
    checks.check_imap_parser(data + b"\r\n")


@FUZZ
@given(st.binary(max_size=300), st.sampled_from([b"{%d}", b"{%d+}"]), grammar.chunk_sizes)
def test_imap_literal_sizes_honoured(message: bytes, marker: bytes, sizes: list[int]) -> None:
    """An APPEND literal is exactly the announced octets, whatever they contain (even what
    looks like commands or CRLFs), and the next command is read after it."""
    stream = b"a1 APPEND INBOX " + marker % len(message) + b"\r\n" + message + b"\r\na2 NOOP\r\n"
    events = checks.check_imap_framer(framing.Limits(), stream, sizes)
    commands = [e.command for e in events if isinstance(e, framing.CommandReceived)]
    if b"\0" in message:
        assert [c.tag for c in commands] == ["a2"]  # NUL needs literal8: the APPEND is BAD
    else:
        assert isinstance(commands[0], Append) and commands[0].message == message
        assert [c.tag for c in commands] == ["a1", "a2"]


@FUZZ
@given(st.integers(33, 200), st.sampled_from([b"", b" {20+}", b" {5}", b' "{5+}"']), grammar.chunk_sizes)
def test_imap_line_limit(length: int, tail: bytes, sizes: list[int]) -> None:
    """An overlong line is one BAD; its tail and any {n+} literal it announced are never
    read as commands; the next command is."""
    limits = framing.Limits(max_line_length=32)
    line = b"a1 LOGIN " + b"x" * length + tail + b"\r\n"
    # The literal, then the rest of the (discarded) command line.
    literal = b"z9 LOGOUT\r\n" + b"." * 9 + b" z8 NOOP\r\n" if tail == b" {20+}" else b""
    stream = line + literal + b"a2 NOOP\r\n"
    events = checks.check_imap_framer(limits, stream, sizes)
    errors = [e for e in events if isinstance(e, framing.CommandError)]
    commands = [e.command for e in events if isinstance(e, framing.CommandReceived)]
    assert len(errors) == 1 and errors[0].error.status == "BAD"
    assert [c.tag for c in commands] == ["a2"], commands


@FUZZ
@given(st.text(max_size=20), st.text(max_size=20))
def test_imap_login_strings(user: str, password: str) -> None:
    """Any UTF-8 user name and password, sent as a literal, parse back unchanged."""
    u, p = user.encode("utf-8", "surrogatepass"), password.encode("utf-8", "surrogatepass")
    cmd = checks.check_imap_parser(b"a LOGIN {%d}\r\n%s {%d}\r\n%s\r\n" % (len(u), u, len(p), p))
    valid = "\0" not in user + password and not any(0xD800 <= ord(c) <= 0xDFFF for c in user + password)
    if valid:
        assert isinstance(cmd, Login) and (cmd.username, cmd.password) == (user, password)


@FUZZ
@given(st.text(max_size=30))
def test_utf7_roundtrip(name: str) -> None:
    checks.check_utf7_roundtrip(name)


@FUZZ
@given(st.one_of(st.text("&-+,ABCabc019 /", max_size=20), st.binary(max_size=20)))
def test_utf7_decode_is_canonical(wire: str | bytes) -> None:
    checks.check_utf7_decode(wire)


@FUZZ
@given(
    st.one_of(grammar.seqsets, st.text("0123456789:*,$", max_size=20), st.binary(max_size=10)),
    st.integers(0, 5000),
)
def test_seqset(text: str | bytes, largest: int) -> None:
    checks.check_seqset(text, largest)


@FUZZ
@given(
    st.one_of(
        st.from_regex(
            r"( ?[0-9]{1,2})-[A-Za-z]{3}-[0-9]{4}( [0-9]{2}:[0-9]{2}:[0-9]{2} [+-][0-9]{4})?", fullmatch=True
        ),
        st.text(max_size=30),
    )
)
def test_dates(text: str) -> None:
    checks.check_dates(text)
