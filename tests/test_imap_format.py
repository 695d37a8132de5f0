"""Response formatting, and round trips through the parser (format a value, parse it back)."""

from __future__ import annotations

import datetime as dt
import random

import pytest

from mailserver.imap import format as fmt
from mailserver.imap.commands import Append, Login, parse_command
from mailserver.imap.seqset import SequenceSet
from mailserver.imap.utf7 import encode_mailbox_name


@pytest.mark.parametrize(
    ("value", "wire"),
    [
        ("hello", b'"hello"'),
        ("", b'""'),
        ('say "hi"', b'"say \\"hi\\""'),
        ("back\\slash", b'"back\\\\slash"'),
        ("two\r\nlines", b"{10}\r\ntwo\r\nlines"),
        ("nul\x00", b"{4}\r\nnul\x00"),
        ("caf\u00e9", b"{5}\r\ncaf\xc3\xa9"),
        (b"\xff", b"{1}\r\n\xff"),
        ("x" * 1025, b"{1025}\r\n" + b"x" * 1025),
        ("tab\there", b"{8}\r\ntab\there"),
    ],
)
def test_string_quoted_or_literal(value: str | bytes, wire: bytes) -> None:
    assert fmt.string(value) == wire


def test_utf8_quoted_after_enable() -> None:
    assert fmt.string("café", utf8=True) == '"café"'.encode()
    assert fmt.string(b"\xff", utf8=True) == b"{1}\r\n\xff"  # not UTF-8: literal
    assert fmt.string("a\nb", utf8=True) == b"{3}\r\na\nb"


def test_quoted_refuses_unsafe_octets() -> None:
    for bad in ("a\r", "a\n", "a\x00"):
        with pytest.raises(ValueError):
            fmt.quoted(bad)


@pytest.mark.parametrize(
    ("value", "wire"),
    [
        ("INBOX", b"INBOX"),
        ("Sent", b"Sent"),
        ("a]b", b"a]b"),
        ("NIL", b'"NIL"'),
        ("nil", b'"nil"'),
        ("", b'""'),
        ("Sent Items", b'"Sent Items"'),
        ("a*", b'"a*"'),
        ("a%", b'"a%"'),
        ("(x)", b'"(x)"'),
        ('q"', b'"q\\""'),
    ],
)
def test_astring(value: str, wire: bytes) -> None:
    assert fmt.astring(value) == wire


def test_nstring_and_values() -> None:
    assert fmt.nstring(None) == b"NIL"
    assert fmt.nstring("x") == b'"x"'
    value = [None, 5, "s", fmt.Atom("\\Seen"), [1, [2]], fmt.Raw(b"RAW"), fmt.Literal8(b"\x00")]
    assert fmt.format_value(value) == b'(NIL 5 "s" \\Seen (1 (2)) RAW ~{1}\r\n\x00)'
    when = dt.datetime(1996, 7, 17, 2, 44, 25, tzinfo=dt.timezone(-dt.timedelta(hours=7)))
    assert fmt.format_value(when) == b'"17-Jul-1996 02:44:25 -0700"'
    for bad in (True, -1, 1.5, fmt.Atom("a b"), fmt.Atom("")):
        with pytest.raises((TypeError, ValueError)):
            fmt.format_value(bad)  # type: ignore[arg-type]


def test_flags() -> None:
    assert fmt.flags(["\\Seen", "$Junk", "\\Answered"]) == b"(\\Seen $Junk \\Answered)"
    assert fmt.flags([]) == b"()"
    assert fmt.flags(["\\*"]) == b"(\\*)"
    for bad in ("a b", "", "\\", "x(", 'q"'):
        with pytest.raises(ValueError):
            fmt.flags([bad])


def test_tagged_and_untagged() -> None:
    assert fmt.tagged("a1", "OK", "done", code=fmt.code_uidnext(42)) == b"a1 OK [UIDNEXT 42] done\r\n"
    assert (
        fmt.tagged("a1", "no", "x", code=fmt.code_appenduid(38505, 3955))
        == b"a1 NO [APPENDUID 38505 3955] x\r\n"
    )
    assert (
        fmt.tagged(
            "a", "OK", "moved", code=fmt.code_copyuid(38505, [304, 319, 320, 321], [3956, 3957, 3958, 3959])
        )
        == b"a OK [COPYUID 38505 304,319:321 3956:3959] moved\r\n"
    )
    assert fmt.tagged("a", "BAD", "x", code="CLIENTBUG") == b"a BAD [CLIENTBUG] x\r\n"
    assert fmt.tagged("*", "BAD", "no tag") == b"* BAD no tag\r\n"
    assert (
        fmt.untagged_status("OK", "ok", code=fmt.code_highestmodseq(715194045007))
        == b"* OK [HIGHESTMODSEQ 715194045007] ok\r\n"
    )
    assert fmt.untagged_status("BYE", "") == b"* BYE done\r\n"
    assert fmt.untagged("5", "EXISTS") == b"* 5 EXISTS\r\n"
    with pytest.raises(ValueError):
        fmt.tagged("a b", "OK", "x")
    with pytest.raises(ValueError):
        fmt.tagged("a", "MAYBE", "x")
    with pytest.raises(ValueError):
        fmt.tagged("a", "OK", "x", code="BAD]CODE")
    with pytest.raises(ValueError):
        fmt.code_copyuid(1, [1, 2], [3])


def test_response_text_cannot_inject() -> None:
    line = fmt.tagged("a", "BAD", "bad input 'x\r\n* OK [ALERT] pwned'")
    assert line.count(b"\r\n") == 1 and line.endswith(b"\r\n")
    assert fmt.tagged("a", "NO", "[ALERT] fake") == b"a NO (ALERT] fake\r\n"
    assert fmt.tagged("a", "NO", "caf\u00e9") == b"a NO caf?\r\n"
    assert fmt.continuation("x\r\ny") == b"+ x??y\r\n"


def test_untagged_data() -> None:
    assert fmt.exists(23) == b"* 23 EXISTS\r\n"
    assert fmt.recent(0) == b"* 0 RECENT\r\n"
    assert fmt.expunge(3) == b"* 3 EXPUNGE\r\n"
    assert fmt.vanished([41, 43, 44, 45, 60]) == b"* VANISHED 41,43:45,60\r\n"
    assert (
        fmt.vanished(SequenceSet.parse("300:310,405"), earlier=True)
        == b"* VANISHED (EARLIER) 300:310,405\r\n"
    )
    assert fmt.continuation() == b"+ Ready\r\n"
    assert fmt.continuation("") == b"+ \r\n"
    assert fmt.capability(["IMAP4rev1", "IDLE"]) == b"* CAPABILITY IMAP4rev1 IDLE\r\n"
    assert fmt.flags_response(["\\Seen"]) == b"* FLAGS (\\Seen)\r\n"
    assert fmt.search_response([2, 84, 882]) == b"* SEARCH 2 84 882\r\n"
    assert fmt.search_response([], modseq=None) == b"* SEARCH\r\n"
    assert fmt.search_response([2, 5], modseq=917162500) == b"* SEARCH 2 5 (MODSEQ 917162500)\r\n"
    assert (
        fmt.list_response(["\\HasNoChildren", "\\Sent"], "/", "Sent Items")
        == b'* LIST (\\HasNoChildren \\Sent) "/" "Sent Items"\r\n'
    )
    assert fmt.list_response([], None, "INBOX", command="LSUB") == b"* LSUB () NIL INBOX\r\n"
    assert (
        fmt.status_response("INBOX", [("MESSAGES", 2), ("UIDNEXT", 44)])
        == b"* STATUS INBOX (MESSAGES 2 UIDNEXT 44)\r\n"
    )
    assert fmt.code_permanentflags(["\\Seen", "\\*"]) == "PERMANENTFLAGS (\\Seen \\*)"
    assert fmt.code_modified([7, 9]) == "MODIFIED 7,9"
    with pytest.raises(ValueError):
        fmt.expunge(0)


def test_fetch_response() -> None:
    body = b"Subject: x\r\n\r\nhi\r\n"
    line = fmt.fetch_response(
        12,
        [
            ("UID", 4827313),
            ("FLAGS", fmt.Raw(fmt.flags(["\\Seen"]))),
            ("MODSEQ", [624140003]),
            ("BODY[HEADER.FIELDS (From)]", "From: a@b\r\n\r\n"),
            ("BODY[]<0>", body),
            ("INTERNALDATE", dt.datetime(2020, 1, 2, 3, 4, 5, tzinfo=dt.UTC)),
        ],
    )
    assert line == (
        b"* 12 FETCH (UID 4827313 FLAGS (\\Seen) MODSEQ (624140003) "
        b"BODY[HEADER.FIELDS (From)] {13}\r\nFrom: a@b\r\n\r\n BODY[]<0> {18}\r\n"
        + body
        + b' INTERNALDATE "02-Jan-2020 03:04:05 +0000")\r\n'
    )
    with pytest.raises(ValueError):
        fmt.fetch_response(0, [])


# ---------------------------------------------------------------------------- round trips


ROUND_TRIP_STRINGS = [
    "plain",
    "",
    "with space",
    'q"uote',
    "back\\slash",
    "line\r\nbreak",
    "nul\x00x",
    "ünïcödé",
    "(paren)",
    "{5}",
    "NIL",
    "x" * 2000,
    "]",
    "%*",
    "\t",
    "a\rb",
]


@pytest.mark.parametrize("value", ROUND_TRIP_STRINGS)
@pytest.mark.parametrize("formatter", [fmt.string, fmt.astring])
def test_round_trip_through_login(value: str, formatter) -> None:
    if "\x00" in value:  # NUL is not allowed in a literal (CHAR8): the parser refuses it
        with pytest.raises(Exception):  # noqa: B017
            parse_command(b"t LOGIN " + formatter(value) + b" " + formatter("pw") + b"\r\n")
        return
    cmd = parse_command(b"t LOGIN " + formatter(value) + b" " + formatter(value) + b"\r\n")
    assert cmd == Login("t", "LOGIN", value, value)


def test_round_trip_random_strings() -> None:
    rng = random.Random(9051)
    alphabet = 'ab "\\\r\n(){}*%]é€😀~+'
    for _ in range(300):
        value = "".join(rng.choice(alphabet) for _ in range(rng.randint(0, 30)))
        for utf8 in (False, True):
            wire = fmt.astring(value, utf8=utf8)
            assert parse_command(b"t LOGIN " + wire + b" x\r\n") == Login("t", "LOGIN", value, "x")


@pytest.mark.parametrize("name", ["INBOX", "Entwürfe", "Sent Items", "A&B", "日本語/子", "NIL"])
def test_round_trip_mailbox_names(name: str) -> None:
    wire = encode_mailbox_name(name)
    cmd = parse_command(b"t SELECT " + fmt.mailbox(wire) + b"\r\n")
    assert cmd.mailbox == wire  # type: ignore[attr-defined]


def test_round_trip_append_message_and_flags() -> None:
    msg = b"From: a\r\n\r\n)\r\n{3}\r\n"
    flags = ["\\Seen", "$Forwarded"]
    when = dt.datetime(2024, 2, 29, 23, 59, 1, tzinfo=dt.timezone(dt.timedelta(hours=-3, minutes=-30)))
    raw = (
        b"t APPEND "
        + fmt.mailbox("Sent")
        + b" "
        + fmt.flags(flags)
        + b" "
        + fmt.format_value(when)
        + b" "
        + fmt.literal(msg)
        + b"\r\n"
    )
    assert parse_command(raw) == Append("t", "APPEND", "Sent", tuple(flags), when, msg)


@pytest.mark.parametrize("numbers", [[1], [1, 2, 3], [5, 1, 9, 10, 11, 20], list(range(1, 1000, 2))])
def test_round_trip_sequence_sets(numbers: list[int]) -> None:
    s = SequenceSet.from_numbers(numbers)
    cmd = parse_command(b"t UID FETCH " + str(s).encode() + b" UID\r\n")
    assert list(cmd.sequence_set.iter(max(numbers))) == sorted(set(numbers))  # type: ignore[attr-defined]
