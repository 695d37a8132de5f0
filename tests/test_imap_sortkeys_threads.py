"""Sort keys (RFC 5256 2.1/2.2/3, RFC 5957, RFC 5051) and THREAD trees (RFC 5256 3-4).

The answers Dovecot gives for the same inputs are the reference where the RFC leaves
room (see the module docstrings of imap/sortkeys.py and imap/mailthreads.py).
"""

from __future__ import annotations

import pytest

from mailserver.imap.mailthreads import message_ids, thread, thread_input
from mailserver.imap.sortkeys import base_subject, casemap, display_name, first_mailbox, sent_date

# ---------------------------------------------------------------- base subject


@pytest.mark.parametrize(("raw", "base", "marked"), [
    ("hello", "HELLO", False),
    ("Re: hello", "HELLO", True),
    ("RE: Re: re: hello", "HELLO", True),
    ("Fwd: hello", "HELLO", True),
    ("Fw: hello", "HELLO", True),
    ("hello (fwd)", "HELLO", True),
    ("hello (fwd) (FWD)  ", "HELLO", True),
    ("[fwd: hello]", "HELLO", True),
    ("[Fwd: Re: [list] hello (fwd)]", "HELLO", True),
    ("Re[2]: hello", "HELLO", True),  # subj-refwd may carry a blob before ":"
    ("Re : hello", "HELLO", True),  # *WSP before ":"
    ("[list] hello", "HELLO", False),  # step 4: a leading blob goes ...
    ("[list]", "[LIST]", False),  # ... unless nothing would be left
    ("[list] [tag] Re: hello", "HELLO", True),
    ("Re: [list] Re: hello", "HELLO", True),
    ("Re: [foo]: bar", ": BAR", True),  # "[foo]:" is no subj-refwd (no re/fw)
    ("Reply: hello", "REPLY: HELLO", False),
    ("\tRe:\t  hello\r\n world", "HELLO WORLD", True),  # step 1: white space runs
    ("=?utf-8?q?Re=3A_caf=C3=A9?=", "CAFE\u0301", True),  # decoded first, then NFKD
    ("=?iso-8859-1?q?=E9t=E9?= plan", "E\u0301TE\u0301 PLAN", False),
    ("", "", False),
    (None, "", False),
])
def test_base_subject(raw: str | None, base: str, marked: bool) -> None:
    got = base_subject(raw)
    assert (got.text, got.reply_or_forward) == (base, marked)


def test_casemap_is_titlecase_then_nfkd() -> None:
    assert casemap("abc") == "ABC"
    # titlecase (ǅ), not uppercase (Ǆ), then NFKD: "D", "z", combining caron
    assert casemap("ǆemal") == casemap("Ǆemal") == "Dz\u030cEMAL"
    # the ligature has no simple titlecase (its full one, "Fi", is two characters), so it
    # is kept, then NFKD splits it; Dovecot's unicode_rfc5051_normalize does the same
    assert casemap("ﬁ") == "fi"
    assert casemap("straße") == "STRAßE"  # no simple titlecase for ß: kept
    assert casemap("Å") == casemap("A\u030a") == "A\u030a"


# ---------------------------------------------------------------- address keys and dates


def test_address_keys() -> None:
    assert first_mailbox(b'"Zed" <alice@example.org>, bob@example.org') == "ALICE"
    # a group's start is an ENVELOPE address named after the group (RFC 3501 7.4.2)
    assert first_mailbox(b"team: carol@example.org, dan@example.org;") == "TEAM"
    assert first_mailbox(b"undisclosed-recipients:;") == "UNDISCLOSED-RECIPIENTS"
    assert display_name(b"team: carol@example.org;") == "TEAM"
    assert first_mailbox(None) == ""
    assert display_name(b"=?utf-8?q?J=C3=B6rg?= <j@example.org>") == "JO\u0308RG"
    assert display_name(b"<j@example.org>") == "J@EXAMPLE.ORG"  # RFC 5957 3: no name
    assert display_name(b'"" <j@example.org>') == "J@EXAMPLE.ORG"


def test_sent_date_falls_back_to_internaldate() -> None:
    assert sent_date("Mon, 1 Jan 2024 10:00:00 +0100", 5.0) == 1704099600  # in UTC
    assert sent_date("Mon, 1 Jan 2024 09:00:00 +0000", 5.0) == 1704099600
    assert sent_date("not a date", 1234.9) == 1234
    assert sent_date(None, 77.0) == 77


def test_message_ids() -> None:
    assert message_ids("<a@x> junk <no-at> <b@\r\n y>") == ["a@x", "b@y"]
    assert message_ids(None) == []
    assert message_ids("a@x") == []


# ---------------------------------------------------------------- THREAD


def _msg(n: int, date: int, subject: str, mid: str | None, refs: str | None = None,
         irt: str | None = None):
    return thread_input(n, date, base_subject(subject), mid, refs, irt)


def test_orderedsubject_groups_and_orders_by_first_date() -> None:
    msgs = [
        _msg(1, 300, "b", "<1@x>"),
        _msg(2, 100, "Re: b", "<2@x>"),
        _msg(3, 200, "a", "<3@x>"),
        _msg(4, 400, "b", "<4@x>"),
        _msg(5, 500, "a", "<5@x>"),
        _msg(6, 50, "c", "<6@x>"),
    ]
    # (RFC 5256 3) first message of a subject is the parent of all the others
    assert thread(msgs, "ORDEREDSUBJECT") == "(6)(2 (1)(4))(3 5)"


def test_references_chain_and_siblings() -> None:
    msgs = [
        _msg(1, 100, "topic", "<a@x>"),
        _msg(2, 200, "Re: topic", "<b@x>", "<a@x>"),
        _msg(3, 300, "Re: topic", "<c@x>", "<a@x> <b@x>"),
        _msg(4, 250, "Re: topic", "<d@x>", None, "<a@x>"),  # In-Reply-To only
        _msg(5, 150, "other", "<e@x>"),
    ]
    assert thread(msgs, "REFERENCES") == "(1 (2 3)(4))(5)"


def test_references_dummy_parent_and_subject_merge() -> None:
    msgs = [
        _msg(1, 100, "Re: lost", "<a@x>", "<gone@x>"),
        _msg(2, 200, "Re: lost", "<b@x>", "<gone@x>"),
        _msg(3, 300, "hello", "<c@x>"),
        _msg(4, 400, "hello", "<d@x>"),  # same subject, no reply: a new dummy holds both
        _msg(5, 500, "Re: hello", "<e@x>"),  # a reply: a child of the dummy
    ]
    assert thread(msgs, "REFERENCES") == "((1)(2))((3)(4)(5))"


def test_references_reply_hangs_under_original_by_subject() -> None:
    msgs = [
        _msg(1, 100, "plan", "<a@x>"),
        _msg(2, 200, "Re: plan", "<b@x>"),  # no headers link them: the subject does
    ]
    assert thread(msgs, "REFERENCES") == "(1 2)"
    assert thread(msgs, "REFS") == "(1)(2)"  # REFS never merges by subject


def test_references_duplicates_loops_and_missing_ids() -> None:
    msgs = [
        _msg(1, 100, "x1", "<a@x>"),
        _msg(2, 200, "x2", "<a@x>", "<a@x>"),  # duplicate ID: threaded as if it had none
        _msg(3, 300, "x3", "<b@x>", "<c@x>"),  # b under c ...
        _msg(4, 400, "x4", "<c@x>", "<b@x>"),  # ... and c under b would loop: refused
        _msg(5, 500, "x5", None, "<a@x>"),  # no Message-ID, still a reply
        _msg(6, 600, "x6", "<self@x>", "<self@x>"),  # references itself
    ]
    assert thread(msgs, "REFERENCES") == "(1 (2)(5))(4 3)(6)"


def test_refs_orders_threads_by_newest_message() -> None:
    msgs = [
        _msg(1, 100, "a", "<a@x>"),
        _msg(2, 200, "b", "<b@x>"),
        _msg(3, 900, "Re: a", "<c@x>", "<a@x>"),
    ]
    assert thread(msgs, "REFERENCES") == "(1 3)(2)"
    assert thread(msgs, "REFS") == "(2)(1 3)"


def test_deep_chain_has_no_recursion_limit() -> None:
    n = 5000
    msgs = [_msg(1, 1, "deep", "<m1@x>")]
    for i in range(2, n + 1):
        msgs.append(_msg(i, i, "Re: deep", f"<m{i}@x>", f"<m{i - 1}@x>"))
    assert thread(msgs, "REFERENCES") == "(" + " ".join(str(i) for i in range(1, n + 1)) + ")"


def test_empty_mailbox() -> None:
    assert thread([], "REFERENCES") == ""
    assert thread([], "REFS") == ""
    assert thread([], "ORDEREDSUBJECT") == ""


# ---------------------------------------------------------------- the commands


def test_sort_and_thread_commands_parse() -> None:
    from mailserver.imap.commands import Sort, Thread, parse_command
    from mailserver.imap.searchkeys import AllKey

    cmd = parse_command(b"a UID SORT (REVERSE DATE subject) utf-8 ALL\r\n")
    assert isinstance(cmd, Sort)
    assert (cmd.uid, cmd.keys, cmd.charset, cmd.criteria) == (
        True, (("DATE", True), ("SUBJECT", False)), "UTF-8", AllKey())
    cmd = parse_command(b"a SORT RETURN (MIN COUNT PARTIAL -1:-50) (DISPLAYFROM) US-ASCII ALL\r\n")
    assert isinstance(cmd, Sort)
    assert (cmd.returns, cmd.partial) == (("MIN", "COUNT", "PARTIAL"), (-1, -50))
    cmd = parse_command(b'b THREAD refs "UTF-8" ALL\r\n')
    assert isinstance(cmd, Thread)
    assert (cmd.algorithm, cmd.charset) == ("REFS", "UTF-8")


@pytest.mark.parametrize(("line", "error"), [
    (b"a SORT (BOGUS) UTF-8 ALL\r\n", "IMAPParseError"),
    (b"a SORT () UTF-8 ALL\r\n", "IMAPParseError"),
    (b"a SORT DATE UTF-8 ALL\r\n", "IMAPParseError"),  # criteria need parentheses
    (b"a SORT (DATE) KOI8-R ALL\r\n", "BadCharsetError"),
    (b"a SORT (DATE) ALL\r\n", "BadCharsetError"),  # RFC 5256: the charset is required
    (b"a SORT RETURN (SAVE) (DATE) UTF-8 ALL\r\n", "IMAPParseError"),
    (b"a SORT RETURN (PARTIAL 0:5) (DATE) UTF-8 ALL\r\n", "IMAPParseError"),
    (b"a THREAD JWZ UTF-8 ALL\r\n", "IMAPParseError"),
    (b"a THREAD REFERENCES UTF-8\r\n", "IMAPParseError"),
])
def test_sort_and_thread_errors(line: bytes, error: str) -> None:
    from mailserver.imap.commands import parse_command

    with pytest.raises(Exception) as info:
        parse_command(line)
    assert type(info.value).__name__ == error


# ---------------------------------------------------------------- SORT over header blocks


def _fields(seq: int, header: str, size: int = 100, arrival: float = 1000.0):
    from mailserver.imap.sorting import MessageFields

    return MessageFields.parse(seq, seq + 100, size, arrival, header.encode())


def test_sort_orders_by_each_key_with_ties_in_mailbox_order() -> None:
    from mailserver.imap.sorting import sort

    crlf = "\r\n"
    msgs = [
        _fields(1, crlf.join(["Subject: Re: beta", "From: Zed <zed@x.org>",
                              "Date: Tue, 2 Jan 2024 10:00:00 +0000", "", ""]), 300, 50),
        _fields(2, crlf.join(["Subject: alpha", "From: amy@x.org", "To: bob@x.org",
                              "Date: Mon, 1 Jan 2024 10:00:00 +0000", "", ""]), 100, 70),
        _fields(3, crlf.join(["Subject: =?utf-8?q?=C3=A9t=C3=A9?=", 'From: "Amy" <mia@x.org>',
                              "Date: broken", "", ""]), 200, 60),
        _fields(4, crlf.join(["Subject: [list] Beta", "From: bob@x.org",
                              "Date: Mon, 1 Jan 2024 11:00:00 +0100", "", ""]), 100, 40),
    ]

    def order(*criteria: tuple[str, bool]) -> list[int]:
        return [m.seq for m in sort(msgs, criteria)]

    assert order(("SUBJECT", False)) == [2, 1, 4, 3]  # ALPHA, BETA (1 and 4 tie), ÉTÉ
    assert order(("DATE", False)) == [3, 2, 4, 1]  # 3: no date -> INTERNALDATE 60; 4 == 2's time
    assert order(("ARRIVAL", False)) == [4, 1, 3, 2]
    assert order(("SIZE", True)) == [1, 3, 2, 4]  # REVERSE SIZE; 2 and 4 tie: mailbox order
    assert order(("FROM", False)) == [2, 4, 3, 1]  # AMY BOB MIA ZED (local parts)
    assert order(("DISPLAYFROM", False)) == [3, 2, 4, 1]  # Amy, amy@x.org, bob@x.org, Zed
    assert order(("TO", False)) == [1, 3, 4, 2]  # no To sorts as "", first
    assert order(("SUBJECT", True), ("SIZE", False)) == [3, 4, 1, 2]


def test_esort_response() -> None:
    from mailserver.imap.sorting import esort_response, sort_response

    numbers = [5, 6, 7, 2, 9, 3]
    assert sort_response(numbers) == b"* SORT 5 6 7 2 9 3\r\n"
    assert sort_response([]) == b"* SORT\r\n"
    assert esort_response("a1", True, numbers, ("MIN", "MAX", "COUNT", "ALL"), None) == (
        b'* ESEARCH (TAG "a1") UID MIN 5 MAX 3 ALL 5:7,2,9,3 COUNT 6\r\n')
    assert esort_response("a", False, numbers, ("PARTIAL",), (2, 4)) == (
        b'* ESEARCH (TAG "a") PARTIAL (2:4 6:7,2)\r\n')
    assert esort_response("a", False, numbers, ("PARTIAL",), (-1, -2)) == (
        b'* ESEARCH (TAG "a") PARTIAL (-1:-2 9,3)\r\n')
    assert esort_response("a", False, numbers, ("PARTIAL",), (7, 9)) == (
        b'* ESEARCH (TAG "a") PARTIAL (7:9 NIL)\r\n')
    assert esort_response("a", False, [], ("MIN", "COUNT"), None) == b'* ESEARCH (TAG "a") COUNT 0\r\n'


def test_stored_keys_round_trip() -> None:
    """What the FETCH cache keeps gives the same order and threads as the parsed keys."""
    from mailserver.imap.sorting import MessageFields, encode_key, key_value, order, thread_input_of

    header = ("Subject: Re: =?utf-8?q?caf=C3=A9?= [x]\r\nFrom: \"Zoë\" <zoe@x.org>\r\nTo: a@b\r\n"
              "Cc: team: c@d;\r\nDate: Mon, 1 Jan 2024 10:00:00 +0100\r\nMessage-ID: <m@x>\r\n"
              "References: <a@x>\r\n <b@x>\r\nIn-Reply-To: <b@x>\r\n\r\n").encode()
    full = MessageFields.parse(3, 30, 123, 99.0, header)
    assert key_value("DATE", encode_key("DATE", full)) == full.date
    assert key_value("SUBJECT", encode_key("SUBJECT", full)) == full.subject.text.encode()
    assert key_value("DISPLAYFROM", encode_key("DISPLAYFROM", full)) == full.display_from.encode()
    assert key_value("CC", encode_key("CC", full)) == b"TEAM"
    assert thread_input_of(3, encode_key("THREAD", full)) == full.thread_input(False)
    no_refs = MessageFields.parse(1, 1, 1, 5.0, b"Subject: x\r\n\r\n", frozenset({"THREAD"}))
    assert thread_input_of(1, encode_key("THREAD", no_refs)) == no_refs.thread_input(False)
    # bytes of the casemapped text order as the text does (UTF-8 keeps code point order)
    texts = ["ÉTÉ", "ZEBRA", "APPLE", "Ω", "ÄRGER", ""]
    assert [texts[i] for i in order(6, [([t.encode() for t in texts], False)])] == sorted(texts)
    assert order(4, [([2, 1, 2, 1], True), ([1, 1, 1, 1], False)]) == [0, 2, 1, 3]  # ties keep order
    for criterion, junk in (("DATE", b"soon"), ("SUBJECT", b"?x")):
        with pytest.raises(ValueError):
            key_value(criterion, junk)
    for junk in (b"[1]", b'["x", 0, "s", null, []]', b"not json"):
        with pytest.raises(ValueError):
            thread_input_of(1, junk)


def test_fast_base_subject_is_the_general_one() -> None:
    """base_subject's shortcut for plain ASCII subjects gives what every step of RFC 5256
    2.1 gives, on subjects built from the pieces that trip it (markers, blobs, trailers,
    white space, encoded words)."""
    import random

    from mailserver.imap.sortkeys import _base_subject

    pieces = ["Re:", "RE: ", "re: ", "Fwd: ", "FW: ", "fw:", "fwd", "Re", "[list]", "[", "]", " ", "  ",
              "\t", "(fwd)", "(FWD)", ")", "(", ":", "hello", "World", "a:b", "=?utf-8?q?caf=C3=A9?=", "=?",
              "é", "x", "Re: ", "[fwd: ", "Fwd:Re:"]
    rng = random.Random(5256)
    checked = 0
    for _ in range(20000):
        raw = "".join(rng.choice(pieces) for _ in range(rng.randint(1, 6)))
        assert base_subject(raw) == _base_subject(raw), raw
        checked += raw.isascii()
    assert checked > 10000  # most of them went the shortcut's way or near it


def test_fast_sent_date_is_email_utils() -> None:
    """sent_date's regular expression gives what email.utils gives, out-of-range fields
    and odd zones included ("-0000" means local time there, so it is left to it)."""
    import random

    from mailserver.imap.sortkeys import _COMMON_DATE, _sent_date

    rng = random.Random(5322)
    fast = 0
    for _ in range(20000):
        day = rng.choice(["Mon, ", "Sun, ", "", "xyz, "])
        raw = (f"{day}{rng.randint(0, 40)} {rng.choice(['Jan', 'feb', 'MAR', 'Dec', 'Foo', 'sep'])} "
               f"{rng.choice([1969, 1970, 2000, 2024, 2038, 9999, 1600])} "
               f"{rng.randint(0, 25):02d}:{rng.randint(0, 61):02d}:{rng.randint(0, 61):02d} "
               f"{rng.choice('+-')}{rng.randint(0, 16):02d}{rng.choice([0, 30, 45, 60, 99]):02d}")
        assert sent_date(raw, 7) == _sent_date(raw, 7), raw
        fast += _COMMON_DATE.fullmatch(raw) is not None
    assert fast > 10000


@pytest.mark.parametrize("criteria", [("DATE",), ("SUBJECT",), ("THREAD",), ("DATE", "SUBJECT"),
                                      ("DATE", "SUBJECT", "THREAD"), ("FROM", "THREAD"), ("CC", "DATE")])
def test_encode_keys_is_encode_key(criteria: tuple[str, ...]) -> None:
    """The direct computation of stored keys (encode_keys) gives what MessageFields and
    encode_key give, and decodes to what the stored form decodes to."""
    from mailserver.imap.sorting import MessageFields, encode_key, encode_keys, key_value, thread_fields_of

    headers = [
        b"Subject: Re: [list] Hello\r\nDate: Mon, 1 Jan 2024 10:00:00 +0100\r\nFrom: A <a@x.test>\r\n"
        b"Message-ID: <1@x>\r\nReferences: <0@x>\r\n <00@x>\r\nCc: c@x.test\r\n\r\n",
        b"Subject: =?utf-8?q?caf=C3=A9?= (fwd)\r\nDate: 1 Feb 2024 10:00:00 -0000\r\n"
        b"In-Reply-To: <9@x>\r\n\r\n",
        b"Subject: plain\r\nDate: not a date\r\n\r\n",
        b"X-Other: y\r\n\r\n",
        b"",
    ]
    for header in headers:
        m = MessageFields.parse(0, 0, 0, 1234.5, header, frozenset(criteria))
        got = encode_keys(header, 1234.5, criteria)
        for crit, (stored, decoded) in zip(criteria, got, strict=True):
            assert stored == encode_key(crit, m), (crit, header)
            assert decoded == (thread_fields_of(stored) if crit == "THREAD" else key_value(crit, stored))
