"""IMAP command parser: every command, the search grammar, fetch items, and real client input."""

from __future__ import annotations

import datetime as dt

import pytest

from mailserver.imap.commands import (
    Append,
    Authenticate,
    Copy,
    Create,
    Enable,
    Fetch,
    Id,
    List,
    Login,
    Lsub,
    MailboxCommand,
    QResync,
    Rename,
    Search,
    Select,
    SimpleCommand,
    Status,
    Store,
    UidExpunge,
    parse_command,
)
from mailserver.imap.errors import BadCharsetError, IMAPError, IMAPParseError, UnknownCommandError
from mailserver.imap.fetchitems import Attribute, BodySection, Section
from mailserver.imap.format import error_response
from mailserver.imap.searchkeys import (
    AllKey,
    AndKey,
    DateKey,
    FlagKey,
    HeaderKey,
    ModSeqKey,
    NotKey,
    OrKey,
    SequenceKey,
    SizeKey,
    TextKey,
    uses_modseq,
)
from mailserver.imap.seqset import SequenceSet


def p(line: str | bytes):
    data = line.encode() if isinstance(line, str) else line
    return parse_command(data + b"\r\n")


def bad(line: str | bytes) -> IMAPError:
    with pytest.raises(IMAPError) as info:
        p(line)
    return info.value


S = SequenceSet.parse


# ---------------------------------------------------------------------------- simple commands


@pytest.mark.parametrize(
    "name",
    [
        "CAPABILITY",
        "NOOP",
        "LOGOUT",
        "STARTTLS",
        "CHECK",
        "CLOSE",
        "UNSELECT",
        "EXPUNGE",
        "IDLE",
        "NAMESPACE",
    ],
)
@pytest.mark.parametrize("spelling", [str.upper, str.lower, str.title])
def test_simple_commands(name: str, spelling) -> None:
    assert p(f"a1 {spelling(name)}") == SimpleCommand("a1", name)
    err = bad(f"a1 {name} extra")
    assert err.tag == "a1" and err.is_bad


@pytest.mark.parametrize(
    ("line", "tag"),
    [
        ("", None),
        ("a1", "a1"),
        ("a1 ", "a1"),
        ("a+1 NOOP", None),
        ("a(1 NOOP", None),
        ("a{1 NOOP", None),
        ('"a" NOOP', None),
        ("* NOOP", None),
        ("a%b NOOP", None),
        ("a1  NOOP", "a1"),
        (" a1 NOOP", None),
    ],
)
def test_bad_tags_and_missing_command(line: str, tag: str | None) -> None:
    err = bad(line)
    assert err.tag == tag and err.status == "BAD"


def test_tag_may_contain_close_bracket() -> None:
    assert p("a]1 NOOP").tag == "a]1"


@pytest.mark.parametrize("line", ["a1 FROB", "a1 UID NOOP", 'a1 XLIST "" *', "a1 NOOP2", "a1 LOGIN2 a b"])
def test_unknown_command(line: str) -> None:
    err = bad(line)
    assert isinstance(err, IMAPParseError) and err.status == "BAD" and err.tag == "a1"
    if "UID" not in line:
        assert isinstance(err, UnknownCommandError)


def test_missing_crlf() -> None:
    with pytest.raises(IMAPParseError):
        parse_command(b"a1 NOOP")


def test_error_response_line() -> None:
    assert error_response(bad("a1 FROB")) == b"a1 BAD unknown command FROB\r\n"
    assert error_response(bad("+ NOOP")).startswith(b"* BAD ")


# ---------------------------------------------------------------------------- authentication


@pytest.mark.parametrize(
    ("line", "mech", "ir"),
    [
        ("6 AUTHENTICATE PLAIN AGFsaWNlAHB3", "PLAIN", b"\x00alice\x00pw"),
        ("6 authenticate plain", "PLAIN", None),
        ("6 AUTHENTICATE PLAIN =", "PLAIN", b""),
        ("6 AUTHENTICATE XOAUTH2 dXNlcj1h", "XOAUTH2", b"user=a"),
        ("6 AUTHENTICATE SCRAM-SHA-256", "SCRAM-SHA-256", None),
    ],
)
def test_authenticate(line: str, mech: str, ir: bytes | None) -> None:
    cmd = p(line)
    assert isinstance(cmd, Authenticate)
    assert (cmd.mechanism, cmd.initial_response) == (mech, ir)


@pytest.mark.parametrize(
    "line",
    [
        "6 AUTHENTICATE",
        "6 AUTHENTICATE PLAIN AGFsaWNl!",
        "6 AUTHENTICATE PLAIN A",
        "6 AUTHENTICATE PLAIN AGFs aWNl",
        '6 AUTHENTICATE "PLAIN"',
    ],
)
def test_authenticate_rejects(line: str) -> None:
    assert bad(line).tag == "6"


@pytest.mark.parametrize(
    ("line", "user", "password"),
    [
        ("a LOGIN alice secret", "alice", "secret"),
        ('a LOGIN "alice@example.org" "pa ss\\"w\\\\d"', "alice@example.org", 'pa ss"w\\d'),
        (b"a LOGIN {5}\r\nalice {3}\r\np\xc3\xa9", "alice", "pé"),
        ("a LOGIN alice {0}\r\n", "alice", ""),
        ('a LOGIN "" ""', "", ""),
        ("a LOGIN ali]ce x", "ali]ce", "x"),
    ],
)
def test_login(line: str | bytes, user: str, password: str) -> None:
    cmd = p(line)
    assert cmd == Login("a", "LOGIN", user, password)
    assert password not in repr(cmd) or password == ""


@pytest.mark.parametrize(
    "line",
    [
        "a LOGIN alice",
        "a LOGIN",
        "a LOGIN (x) y",
        'a LOGIN "unterminated',
        'a LOGIN "a\\b" c',
        b"a LOGIN \xff x",
        b'a LOGIN "\xff" x',
        "a LOGIN a b c",
        'a LOGIN "a\r" b',
        "a LOGIN {3}\r\nab",
    ],
)
def test_login_rejects(line: str | bytes) -> None:
    assert bad(line).tag == "a"


# ---------------------------------------------------------------------------- mailboxes


@pytest.mark.parametrize(
    ("line", "expected"),
    [
        ('4 SELECT "INBOX" (CONDSTORE)', Select("4", "SELECT", "INBOX", condstore=True)),
        ("4 SELECT inbox", Select("4", "SELECT", "INBOX")),
        ("4 EXAMINE Archive/2024", Select("4", "EXAMINE", "Archive/2024", readonly=True)),
        ('4 SELECT "Entw&APw-rfe"', Select("4", "SELECT", "Entw&APw-rfe")),
        (
            "4 SELECT INBOX (QRESYNC (67890007 20050715194045000 41,43:211,214:541))",
            Select(
                "4", "SELECT", "INBOX", qresync=QResync(67890007, 20050715194045000, S("41,43:211,214:541"))
            ),
        ),
        (
            "4 SELECT INBOX (QRESYNC (67890007 90060115194045000 1:29997 (5000,7500,9000,9990:9999 "
            "15000,22500,27000,29970,29973,29976,29979,29982,29985,29988,29991,29994,29997)))",
            Select(
                "4",
                "SELECT",
                "INBOX",
                qresync=QResync(
                    67890007,
                    90060115194045000,
                    S("1:29997"),
                    (
                        S("5000,7500,9000,9990:9999"),
                        S("15000,22500,27000,29970,29973,29976,29979,29982,29985,29988,29991,29994,29997"),
                    ),
                ),
            ),
        ),
        (
            "4 SELECT INBOX (QRESYNC (1 2 (1:2 3:4)))",
            Select("4", "SELECT", "INBOX", qresync=QResync(1, 2, None, (S("1:2"), S("3:4")))),
        ),
        (
            "4 SELECT INBOX (CONDSTORE QRESYNC (1 2))",
            Select("4", "SELECT", "INBOX", condstore=True, qresync=QResync(1, 2)),
        ),
    ],
)
def test_select(line: str, expected: Select) -> None:
    assert p(line) == expected


@pytest.mark.parametrize(
    "line",
    [
        "4 SELECT",
        "4 SELECT INBOX ()",
        "4 SELECT INBOX (FOO)",
        "4 SELECT INBOX CONDSTORE",
        "4 SELECT INBOX (QRESYNC (0 1))",
        "4 SELECT INBOX (QRESYNC (1 0))",
        "4 SELECT INBOX (QRESYNC (1 2 1:*))",
        "4 SELECT INBOX (QRESYNC (1))",
        "4 SELECT INBOX (CONDSTORE",
        "4 SELECT a b",
    ],
)
def test_select_rejects(line: str) -> None:
    assert bad(line).tag == "4"


@pytest.mark.parametrize("name", ["CREATE", "DELETE", "SUBSCRIBE", "UNSUBSCRIBE", "GETQUOTAROOT"])
def test_mailbox_commands(name: str) -> None:
    kind = Create if name == "CREATE" else MailboxCommand  # CREATE takes USE (RFC 6154 3)
    assert p(f'b {name} "Sent Items"') == kind("b", name, "Sent Items")
    assert p(f"b {name} {{4}}\r\nJunk") == kind("b", name, "Junk")
    assert bad(f"b {name}").tag == "b"
    assert bad(f"b {name} a b").tag == "b"
    assert bad(f"b {name} (a)").tag == "b"


def test_rename() -> None:
    assert p('r RENAME "Old Name" New') == Rename("r", "RENAME", "Old Name", "New")
    assert bad("r RENAME only").tag == "r"


@pytest.mark.parametrize(
    ("line", "expected"),
    [
        ('5 LIST (SPECIAL-USE) "" "*"', List("5", "LIST", "", ("*",), frozenset({"SPECIAL-USE"}))),
        (
            '5 LIST "" "*" RETURN (SPECIAL-USE)',
            List("5", "LIST", "", ("*",), returns=frozenset({"SPECIAL-USE"})),
        ),
        ('5 LIST "" %', List("5", "LIST", "", ("%",))),
        ('5 LIST "" ""', List("5", "LIST", "", ("",))),
        ("5 LIST ~/Mail/ foo%*", List("5", "LIST", "~/Mail/", ("foo%*",))),
        ('5 LIST "" ("INBOX" Sent*)', List("5", "LIST", "", ("INBOX", "Sent*"))),
        ('5 LIST () "" *', List("5", "LIST", "", ("*",))),
        (
            '5 LIST (SUBSCRIBED RECURSIVEMATCH) "" * RETURN (CHILDREN SPECIAL-USE)',
            List(
                "5",
                "LIST",
                "",
                ("*",),
                frozenset({"SUBSCRIBED", "RECURSIVEMATCH"}),
                frozenset({"CHILDREN", "SPECIAL-USE"}),
            ),
        ),
        (
            '5 LIST "" * RETURN (STATUS (MESSAGES UNSEEN))',
            List("5", "LIST", "", ("*",), returns=frozenset({"STATUS"}), status_items=("MESSAGES", "UNSEEN")),
        ),
        ('5 LIST "" * RETURN ()', List("5", "LIST", "", ("*",))),
    ],
)
def test_list(line: str, expected: List) -> None:
    assert p(line) == expected


def test_list_extended_flag() -> None:
    assert not p('5 LIST "" *').extended
    assert p('5 LIST (SPECIAL-USE) "" *').extended


@pytest.mark.parametrize(
    "line",
    [
        '5 LIST ""',
        "5 LIST",
        '5 LIST "" * (SPECIAL-USE)',
        '5 LIST "" * RETURN',
        '5 LIST "" * RETURN (STATUS (BOGUS))',
        '5 LIST (a "" *',
        '5 LIST "" ()',
    ],
)
def test_list_rejects(line: str) -> None:
    assert bad(line).tag == "5"


def test_lsub() -> None:
    assert p('l LSUB "" *') == Lsub("l", "LSUB", "", "*")


@pytest.mark.parametrize(
    ("line", "items"),
    [
        ("s STATUS INBOX (MESSAGES UNSEEN)", ("MESSAGES", "UNSEEN")),
        (
            "s STATUS INBOX (uidnext uidvalidity highestmodseq recent size deleted)",
            ("UIDNEXT", "UIDVALIDITY", "HIGHESTMODSEQ", "RECENT", "SIZE", "DELETED"),
        ),
    ],
)
def test_status(line: str, items: tuple) -> None:
    assert p(line) == Status("s", "STATUS", "INBOX", items)


@pytest.mark.parametrize(
    "line", ["s STATUS INBOX ()", "s STATUS INBOX (FOO)", "s STATUS INBOX MESSAGES", "s STATUS (MESSAGES)"]
)
def test_status_rejects(line: str) -> None:
    assert bad(line).tag == "s"


# ---------------------------------------------------------------------------- APPEND


MSG = b"From: a@example.org\r\nSubject: hi (there)\r\n\r\nbody ) with {3}\r\n"


def test_append_thunderbird_style() -> None:
    raw = b"7 APPEND Sent (\\Seen) {%d+}\r\n" % len(MSG) + MSG
    cmd = p(raw)
    assert cmd == Append("7", "APPEND", "Sent", ("\\Seen",), None, MSG)


def test_append_with_date_and_flags() -> None:
    raw = b'7 APPEND "Drafts" (\\Draft $Label1 \\seen) "17-Jul-1996 02:44:25 -0700" {%d}\r\n' % len(MSG) + MSG
    cmd = p(raw)
    assert isinstance(cmd, Append)
    assert cmd.flags == ("\\Draft", "$Label1", "\\Seen")
    assert cmd.date_time == dt.datetime(1996, 7, 17, 2, 44, 25, tzinfo=dt.timezone(-dt.timedelta(hours=7)))
    assert cmd.message == MSG


def test_append_minimal_empty_and_binary() -> None:
    assert p(b"7 APPEND INBOX {0}\r\n") == Append("7", "APPEND", "INBOX", (), None, b"")
    assert p(b"7 APPEND INBOX () {1}\r\nx").flags == ()
    cmd = p(b"7 APPEND INBOX ~{3}\r\na\x00b")
    assert isinstance(cmd, Append) and cmd.binary and cmd.message == b"a\x00b"


@pytest.mark.parametrize(
    "line",
    [
        b"7 APPEND INBOX",
        b'7 APPEND INBOX "quoted message"',
        b"7 APPEND INBOX {3}\r\nabc {3}\r\ndef",  # MULTIAPPEND
        b"7 APPEND INBOX (\\Seen {1}\r\nx",
        b'7 APPEND INBOX "32-Jul-1996 02:44:25 -0700" {1}\r\nx',
        b"7 APPEND INBOX {3}\r\na\x00b",  # NUL needs literal8
        b"7 APPEND INBOX {5}\r\nabc",  # short literal
        b"7 APPEND INBOX (\\) {1}\r\nx",
    ],
)
def test_append_rejects(line: bytes) -> None:
    assert bad(line).tag == "7"


# ---------------------------------------------------------------------------- SEARCH


FLAG_CASES = [
    ("ANSWERED", FlagKey("\\Answered", True)),
    ("UNANSWERED", FlagKey("\\Answered", False)),
    ("DELETED", FlagKey("\\Deleted", True)),
    ("UNDELETED", FlagKey("\\Deleted", False)),
    ("DRAFT", FlagKey("\\Draft", True)),
    ("UNDRAFT", FlagKey("\\Draft", False)),
    ("FLAGGED", FlagKey("\\Flagged", True)),
    ("UNFLAGGED", FlagKey("\\Flagged", False)),
    ("SEEN", FlagKey("\\Seen", True)),
    ("UNSEEN", FlagKey("\\Seen", False)),
    ("RECENT", FlagKey("\\Recent", True)),
    ("OLD", FlagKey("\\Recent", False)),
    ("NEW", AndKey((FlagKey("\\Recent", True), FlagKey("\\Seen", False)))),
    ("ALL", AllKey()),
    ("KEYWORD $Junk", FlagKey("$Junk", True)),
    ("UNKEYWORD $Junk", FlagKey("$Junk", False)),
    ("BCC bob", HeaderKey("BCC", "bob")),
    ("CC bob", HeaderKey("CC", "bob")),
    ('FROM "Bob Smith"', HeaderKey("FROM", "Bob Smith")),
    ("TO {3}\r\nbob", HeaderKey("TO", "bob")),
    ('SUBJECT ""', HeaderKey("SUBJECT", "")),
    ("HEADER X-Spam yes", HeaderKey("X-SPAM", "yes")),
    ('HEADER "Message-ID" "<a@b>"', HeaderKey("MESSAGE-ID", "<a@b>")),
    ("BODY hello", TextKey("BODY", "hello")),
    ('TEXT "two words"', TextKey("TEXT", "two words")),
    ("BEFORE 1-Feb-1994", DateKey("INTERNAL", "BEFORE", dt.date(1994, 2, 1))),
    ('ON "01-Feb-1994"', DateKey("INTERNAL", "ON", dt.date(1994, 2, 1))),
    ("SINCE 1-feb-1994", DateKey("INTERNAL", "SINCE", dt.date(1994, 2, 1))),
    ("SENTBEFORE 1-Feb-1994", DateKey("SENT", "BEFORE", dt.date(1994, 2, 1))),
    ("SENTON 1-Feb-1994", DateKey("SENT", "ON", dt.date(1994, 2, 1))),
    ("SENTSINCE 1-Feb-1994", DateKey("SENT", "SINCE", dt.date(1994, 2, 1))),
    ("LARGER 1024", SizeKey("LARGER", 1024)),
    ("SMALLER 10", SizeKey("SMALLER", 10)),
    ("UID 1:*", SequenceKey(S("1:*"), uid=True)),
    ("2:4,7", SequenceKey(S("2:4,7"), uid=False)),
    ("*", SequenceKey(S("*"), uid=False)),
    ("$", SequenceKey(S("$"), uid=False)),
    ("NOT SEEN", NotKey(FlagKey("\\Seen", True))),
    ("OR SEEN FLAGGED", OrKey(FlagKey("\\Seen", True), FlagKey("\\Flagged", True))),
    ("(SEEN)", FlagKey("\\Seen", True)),
    ("(SEEN FLAGGED)", AndKey((FlagKey("\\Seen", True), FlagKey("\\Flagged", True)))),
    ("MODSEQ 620162338", ModSeqKey(620162338)),
    ('MODSEQ "/flags/\\\\draft" all 620162338', ModSeqKey(620162338, ("/flags/\\draft", "all"))),
    ("MODSEQ 0", ModSeqKey(0)),
]


@pytest.mark.parametrize(("text", "key"), FLAG_CASES)
def test_search_keys(text: str, key) -> None:
    cmd = p(f"s SEARCH {text}")
    assert isinstance(cmd, Search)
    assert cmd.criteria == key and cmd.uid is False and cmd.charset is None
    # case-insensitive key names
    lowered = p(f"s search {text[0].lower()}{text[1:]}")
    assert isinstance(lowered, Search) and lowered.criteria == key


def test_search_program_is_an_and() -> None:
    cmd = p('s UID SEARCH CHARSET utf-8 OR (FROM "a" NOT SEEN) OR BODY x TEXT y 1:5 UNDELETED')
    assert isinstance(cmd, Search) and cmd.uid and cmd.charset == "UTF-8"
    assert cmd.criteria == AndKey(
        (
            OrKey(
                AndKey((HeaderKey("FROM", "a"), NotKey(FlagKey("\\Seen", True)))),
                OrKey(TextKey("BODY", "x"), TextKey("TEXT", "y")),
            ),
            SequenceKey(S("1:5"), uid=False),
            FlagKey("\\Deleted", False),
        )
    )


def test_search_utf8_literal_and_return() -> None:
    cmd = p(b"s SEARCH RETURN (MIN COUNT) CHARSET UTF-8 SUBJECT {5}\r\n" + "héllo".encode()[:5] + b"")
    assert isinstance(cmd, Search)
    assert cmd.returns == ("MIN", "COUNT")
    assert cmd.criteria == HeaderKey("SUBJECT", "héll")
    assert p("s SEARCH RETURN () ALL").returns == ()


def test_search_modseq_detection() -> None:
    assert uses_modseq(p("s SEARCH OR SEEN NOT (MODSEQ 5)").criteria)
    assert not uses_modseq(p("s SEARCH OR SEEN NOT (FLAGGED)").criteria)


def test_search_bad_charset_is_no() -> None:
    err = bad("s SEARCH CHARSET ISO-8859-1 SUBJECT x")
    assert isinstance(err, BadCharsetError) and err.status == "NO"
    expected = b"s NO [BADCHARSET (US-ASCII UTF-8)] charset ISO-8859-1 is not supported\r\n"
    assert error_response(err) == expected


@pytest.mark.parametrize(
    "text",
    [
        "",
        "FOO",
        "(SEEN",
        "SEEN)",
        "()",
        "OR SEEN",
        "NOT",
        "BEFORE 32-Jan-2000",
        "BEFORE yesterday",
        "LARGER x",
        "LARGER 99999999999999999999",
        "UID",
        "UID 0",
        "UID 1:",
        "0",
        "1:",
        "*:x",
        "HEADER",
        "HEADER X",
        "KEYWORD \\Seen",
        "SUBJECT",
        "(SEEN) )",
        "SEEN  FLAGGED",
        "MODSEQ",
        'MODSEQ "/flags/x" bogus 5',
        'MODSEQ "x" all 5',
        "MODSEQ 9223372036854775808",
        "CHARSET",
        "1,2,",
        "SEEN ",
        "RETURN (FOO) ALL",
        'HEADER "a:b" x',
    ],
)
def test_search_rejects(text: str) -> None:
    err = bad(f"s SEARCH {text}")
    assert err.tag == "s" and err.status == "BAD"


def test_search_nesting_limit() -> None:
    deep = "(" * 200 + "SEEN" + ")" * 200
    assert bad(f"s SEARCH {deep}").status == "BAD"
    assert bad("s SEARCH " + "NOT " * 200 + "SEEN").status == "BAD"
    ok = "(" * 10 + "SEEN" + ")" * 10
    assert p(f"s SEARCH {ok}").criteria == FlagKey("\\Seen", True)


# ---------------------------------------------------------------------------- FETCH


WHOLE = Section()


def body(section: Section = WHOLE, partial=None, peek=False) -> BodySection:
    return BodySection(section, partial, peek=peek)


FETCH_CASES = [
    ("FLAGS", (Attribute("FLAGS"),)),
    ("ALL", tuple(Attribute(n) for n in ("FLAGS", "INTERNALDATE", "RFC822.SIZE", "ENVELOPE"))),
    ("fast", tuple(Attribute(n) for n in ("FLAGS", "INTERNALDATE", "RFC822.SIZE"))),
    ("FULL", tuple(Attribute(n) for n in ("FLAGS", "INTERNALDATE", "RFC822.SIZE", "ENVELOPE", "BODY"))),
    (
        "(UID RFC822.SIZE FLAGS MODSEQ)",
        tuple(Attribute(n) for n in ("UID", "RFC822.SIZE", "FLAGS", "MODSEQ")),
    ),
    (
        "(ENVELOPE BODYSTRUCTURE INTERNALDATE RFC822 RFC822.HEADER RFC822.TEXT BODY)",
        tuple(
            Attribute(n)
            for n in (
                "ENVELOPE",
                "BODYSTRUCTURE",
                "INTERNALDATE",
                "RFC822",
                "RFC822.HEADER",
                "RFC822.TEXT",
                "BODY",
            )
        ),
    ),
    ("BODY[]", (body(),)),
    ("BODY.PEEK[]", (body(peek=True),)),
    ("BODY[]<0.2048>", (body(partial=(0, 2048)),)),
    ("BODY[HEADER]", (body(Section((), "HEADER")),)),
    ("body.peek[text]", (body(Section((), "TEXT"), peek=True),)),
    ("BODY[1]", (body(Section((1,))),)),
    ("BODY[1.2.3]", (body(Section((1, 2, 3))),)),
    ("BODY[1.2.MIME]", (body(Section((1, 2), "MIME")),)),
    ("BODY[3.HEADER]", (body(Section((3,), "HEADER")),)),
    ("BODY[4.2.TEXT]<10.20>", (body(Section((4, 2), "TEXT"), (10, 20)),)),
    ("BODY[HEADER.FIELDS (From Subject)]", (body(Section((), "HEADER.FIELDS", ("From", "Subject"))),)),
    (
        'BODY.PEEK[HEADER.FIELDS.NOT ("X-Spam" References)]',
        (body(Section((), "HEADER.FIELDS.NOT", ("X-Spam", "References")), peek=True),),
    ),
    ("BODY[2.HEADER.FIELDS (DATE)]", (body(Section((2,), "HEADER.FIELDS", ("DATE",))),)),
    ("BINARY[1]", (BodySection(Section((1,)), binary=True),)),
    ("BINARY.PEEK[1.2]<0.100>", (BodySection(Section((1, 2)), (0, 100), peek=True, binary=True),)),
    ("BINARY.SIZE[1]", (BodySection(Section((1,)), binary=True, size_only=True),)),
    ("BINARY[]", (BodySection(Section(), binary=True),)),
]


@pytest.mark.parametrize(("text", "items"), FETCH_CASES)
def test_fetch_items(text: str, items: tuple) -> None:
    cmd = p(f"f FETCH 1:* {text}")
    assert cmd == Fetch("f", "FETCH", False, S("1:*"), items)


def test_fetch_thunderbird_headers() -> None:
    line = (
        "a1 UID FETCH 1:* (UID RFC822.SIZE FLAGS BODY.PEEK[HEADER.FIELDS (From To Cc Bcc Subject Date "
        "Message-ID Priority X-Priority References Newsgroups In-Reply-To Content-Type Reply-To)])"
    )
    cmd = p(line)
    assert isinstance(cmd, Fetch) and cmd.uid and cmd.sequence_set == S("1:*")
    last = cmd.items[-1]
    assert isinstance(last, BodySection) and last.peek and not last.sets_seen
    assert last.section.text == "HEADER.FIELDS" and len(last.section.fields) == 14
    assert last.response_name() == (
        "BODY[HEADER.FIELDS (From To Cc Bcc Subject Date Message-ID Priority "
        "X-Priority References Newsgroups In-Reply-To Content-Type Reply-To)]"
    )


def test_fetch_response_names() -> None:
    item = p('f FETCH 1 BODY.PEEK[1.2.HEADER.FIELDS ("X-Y" a)]<5.10>').items[0]
    assert isinstance(item, BodySection)
    assert item.response_name() == "BODY[1.2.HEADER.FIELDS (X-Y a)]<5>"
    assert str(item) == "BODY.PEEK[1.2.HEADER.FIELDS (X-Y a)]<5.10>"
    assert bad('f FETCH 1 BODY[HEADER.FIELDS ("X Y")]').tag == "f"
    assert p("f FETCH 1 BODY[]").items[0].sets_seen


@pytest.mark.parametrize(
    ("line", "changedsince", "vanished"),
    [
        ("f UID FETCH 1:* (FLAGS) (CHANGEDSINCE 12345)", 12345, False),
        ("f UID FETCH 300:500 (FLAGS) (CHANGEDSINCE 12345 VANISHED)", 12345, True),
        ("f UID FETCH 300:500 (FLAGS) (VANISHED CHANGEDSINCE 1)", 1, True),
        ("f FETCH 1:* FLAGS (CHANGEDSINCE 0)", 0, False),
    ],
)
def test_fetch_modifiers(line: str, changedsince: int, vanished: bool) -> None:
    cmd = p(line)
    assert isinstance(cmd, Fetch)
    assert (cmd.changedsince, cmd.vanished) == (changedsince, vanished)


@pytest.mark.parametrize(
    "text",
    [
        "",
        "1",
        "1:* ",
        "0 FLAGS",
        "1: FLAGS",
        "*:x FLAGS",
        "4294967296 FLAGS",
        "1 (FLAGS",
        "1 FLAGS)",
        "1 ()",
        "1 (ALL)",
        "1 FOO",
        "1 BODY[",
        "1 BODY[HEADER",
        "1 BODY[0]",
        "1 BODY[1.]",
        "1 BODY[.1]",
        "1 BODY[1..2]",
        "1 BODY[MIME]",
        "1 BODY[FOO]",
        "1 BODY[HEADER.FIELDS]",
        "1 BODY[HEADER.FIELDS ()]",
        "1 BODY[HEADER.FIELDS (a:b)]",
        "1 BODY[]<0>",
        "1 BODY[]<0.0>",
        "1 BODY[]<x.1>",
        "1 BINARY[HEADER]",
        "1 BINARY.SIZE[1]<0.1>",
        "1 FLAGS[]",
        "1 FLAGS (CHANGEDSINCE)",
        "1 FLAGS (CHANGEDSINCE 1 VANISHED)",
        "1 FLAGS (FOO 1)",
        "1 FLAGS ()",
        "1 FLAGS (CHANGEDSINCE 99999999999999999999)",
        "1  FLAGS",
        "1 BODY[1.2.3.4.5.6.7.8.9.10.11.12.13.14.15.16.17."
        "18.19.20.21.22.23.24.25.26.27.28.29.30.31.32.33.34]",
    ],
)
def test_fetch_rejects(text: str) -> None:
    assert bad(f"f FETCH {text}").tag == "f"


def test_uid_fetch_vanished_without_changedsince() -> None:
    assert bad("f UID FETCH 1:* FLAGS (VANISHED)").status == "BAD"


# ---------------------------------------------------------------------------- STORE, COPY, MOVE, EXPUNGE


@pytest.mark.parametrize(
    ("line", "expected"),
    [
        ("s STORE 1:3 +FLAGS (\\Deleted)", Store("s", "STORE", False, S("1:3"), "+", False, ("\\Deleted",))),
        (
            "s STORE 1 -FLAGS.SILENT (\\Seen $Junk)",
            Store("s", "STORE", False, S("1"), "-", True, ("\\Seen", "$Junk")),
        ),
        ("s STORE 1 FLAGS ()", Store("s", "STORE", False, S("1"), "", False, ())),
        (
            "s STORE 1 flags.silent \\seen \\FLAGGED",
            Store("s", "STORE", False, S("1"), "", True, ("\\Seen", "\\Flagged")),
        ),
        (
            "s UID STORE 5:7 +FLAGS.SILENT (\\Answered)",
            Store("s", "STORE", True, S("5:7"), "+", True, ("\\Answered",)),
        ),
        (
            "s STORE 1 (UNCHANGEDSINCE 320162338) +FLAGS.SILENT (\\Deleted)",
            Store("s", "STORE", False, S("1"), "+", True, ("\\Deleted",), 320162338),
        ),
        (
            "s UID STORE 1:* (UNCHANGEDSINCE 0) FLAGS (x)",
            Store("s", "STORE", True, S("1:*"), "", False, ("x",), 0),
        ),
        ("s STORE $ +FLAGS (\\Seen)", Store("s", "STORE", False, S("$"), "+", False, ("\\Seen",))),
    ],
)
def test_store(line: str, expected: Store) -> None:
    assert p(line) == expected


@pytest.mark.parametrize(
    "line",
    [
        "s STORE 1 +FLAGS",
        "s STORE 1 *FLAGS (x)",
        "s STORE 1 +FLAG (x)",
        "s STORE 1",
        "s STORE 1 (UNCHANGEDSINCE) FLAGS (x)",
        "s STORE 1 (FOO 1) FLAGS (x)",
        "s STORE 1 +FLAGS (\\Seen",
        "s STORE 1 +FLAGS ((x))",
        "s STORE +FLAGS (x)",
        "s STORE 1 +FLAGS.LOUD (x)",
        's STORE 1 FLAGS ("x")',
    ],
)
def test_store_rejects(line: str) -> None:
    assert bad(line).tag == "s"


@pytest.mark.parametrize("name", ["COPY", "MOVE"])
@pytest.mark.parametrize("uid", [False, True])
def test_copy_move(name: str, uid: bool) -> None:
    prefix = "UID " if uid else ""
    assert p(f'c {prefix}{name} 2:4,9 "Deleted Items"') == Copy("c", name, uid, S("2:4,9"), "Deleted Items")
    assert p(f"c {prefix}{name.lower()} * inbox") == Copy("c", name, uid, S("*"), "INBOX")
    assert bad(f"c {prefix}{name} 1").tag == "c"
    assert bad(f"c {prefix}{name} 0 x").tag == "c"


def test_uid_expunge() -> None:
    assert p("e UID EXPUNGE 3000:3002") == UidExpunge("e", "EXPUNGE", S("3000:3002"))
    assert bad("e UID EXPUNGE").tag == "e"


# ---------------------------------------------------------------------------- ENABLE, ID


def test_enable() -> None:
    assert p("2 ENABLE UTF8=ACCEPT") == Enable("2", "ENABLE", ("UTF8=ACCEPT",))
    assert p("2 ENABLE CONDSTORE qresync") == Enable("2", "ENABLE", ("CONDSTORE", "QRESYNC"))
    assert bad("2 ENABLE").tag == "2"


def test_id() -> None:
    assert p('3 ID ("name" "Thunderbird" "version" "115.0")') == Id(
        "3", "ID", (("name", "Thunderbird"), ("version", "115.0"))
    )
    assert p("3 ID NIL") == Id("3", "ID", None)
    assert p("3 ID ()") == Id("3", "ID", ())
    assert p('3 ID ("os" NIL)') == Id("3", "ID", (("os", None),))
    assert bad('3 ID ("name")').tag == "3"
    assert bad("3 ID (name x)").tag == "3"
    many = " ".join(f'"k{i}" "v"' for i in range(31))
    assert bad(f"3 ID ({many})").tag == "3"


# ---------------------------------------------------------------------------- real clients


REAL = [
    "a1 UID FETCH 1:* (UID RFC822.SIZE FLAGS BODY.PEEK[HEADER.FIELDS (From To Cc Bcc Subject Date Message-ID "
    "Priority X-Priority References Newsgroups In-Reply-To Content-Type Reply-To)])",
    "2 ENABLE UTF8=ACCEPT",
    '3 ID ("name" "Thunderbird" "version" "115.0")',
    '4 SELECT "INBOX" (CONDSTORE)',
    '5 LIST (SPECIAL-USE) "" "*"',
    "6 AUTHENTICATE PLAIN AGFsaWNlAHB3",
    # Thunderbird
    "8 UID fetch 1:* (FLAGS) (CHANGEDSINCE 1234)",
    '9 list "" "%"',
    '10 lsub "" "*"',
    "11 UID STORE 12 +FLAGS (\\Seen)",
    "12 UID fetch 12 (UID RFC822.SIZE BODY.PEEK[])",
    '13 UID MOVE 12 "Trash"',
    '14 getquotaroot "INBOX"',
    "15 UID fetch 4:* (FLAGS)",
    "16 UID FETCH 7 (UID RFC822.SIZE FLAGS BODY.PEEK[HEADER.FIELDS (Content-Type)] BODY.PEEK[TEXT]<0.4096>)",
    '17 STATUS "Drafts" (UIDNEXT MESSAGES UNSEEN RECENT HIGHESTMODSEQ)',
    # mbsync
    "18 SELECT Archive",
    "19 UID FETCH 1:1000000000 (UID FLAGS)",
    "20 UID FETCH 3 (BODY.PEEK[HEADER.FIELDS (X-TUID)])",
    '21 APPEND "Archive" (\\Seen) {5+}\r\nhello',
    "22 UID STORE 3 +FLAGS.SILENT (\\Deleted)",
    "23 UID EXPUNGE 3",
    "24 UID FETCH 1:* (UID FLAGS BODY.PEEK[HEADER.FIELDS (X-TUID)])",
    # mutt
    "a0006 FETCH 1:17 (UID FLAGS INTERNALDATE RFC822.SIZE "
    "BODY.PEEK[HEADER.FIELDS (DATE FROM SENDER SUBJECT TO CC "
    "MESSAGE-ID REFERENCES CONTENT-TYPE CONTENT-DESCRIPTION IN-REPLY-TO REPLY-TO LINES LIST-POST X-LABEL "
    "X-ORIGINAL-TO)])",
    "a0007 UID SEARCH UID 1:* NOT DELETED",
    "a0008 UID FETCH 7 BODY.PEEK[]",
    'a0009 EXAMINE "INBOX"',
    "a0010 UID STORE 7 -FLAGS.SILENT (\\Seen)",
    'a0011 LOGIN "user@example.org" "p@ss w0rd"',
    # Apple Mail / iOS
    "1.2 UID SEARCH 1:* NOT DELETED",
    "3.4 SELECT INBOX (QRESYNC (1234 5678))",
    '5.6 LIST "" "*" RETURN (CHILDREN SPECIAL-USE)',
    # imaplib
    "ABCD1 SEARCH ALL",
    "ABCD2 FETCH 1 (RFC822)",
]


@pytest.mark.parametrize("line", REAL)
def test_real_client_commands_parse(line: str) -> None:
    cmd = p(line)
    assert cmd.tag == line.split(" ")[0]
