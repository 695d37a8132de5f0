"""SEARCH evaluation: every key's semantics, content decoding, laziness, caching, speed."""

from __future__ import annotations

import base64
import datetime as dt
import random
import re
import time
import zoneinfo

import pytest

from mailserver.imap import searcheval
from mailserver.imap.lexer import Reader
from mailserver.imap.search import (
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
    read_search_program,
)
from mailserver.imap.searcheval import (
    Candidate,
    MessageContent,
    SearchContext,
    content_needed,
    decode_bytes,
    decode_encoded_words,
    matches,
    normalize,
    normalize_needle,
    parse_header_fields,
    parse_sent_date,
    search,
    split_message,
)
from mailserver.imap.seqset import SequenceSet

UTC = dt.UTC


def P(text: str):
    """A SEARCH program as the command parser produces it (bare non-ASCII words quoted)."""
    text = re.sub(r'(?<= )([^\s"()]*[^\x00-\x7f][^\s"()]*)(?=[ )]|$)', r'"\1"', text)
    return read_search_program(Reader(text.encode()))


def ts(y: int, mo: int, d: int, h: int = 0, mi: int = 0, s: int = 0, tz: dt.tzinfo = UTC) -> float:
    return dt.datetime(y, mo, d, h, mi, s, tzinfo=tz).timestamp()


def cand(
    seq: int = 1,
    uid: int | None = None,
    flags: tuple[str, ...] = (),
    recent: bool = False,
    size: int = 1000,
    internal_date: float | None = None,
    modseq: int = 1,
) -> Candidate:
    return Candidate(
        seq=seq,
        uid=seq if uid is None else uid,
        flags=frozenset(flags),
        recent=recent,
        size=size,
        internal_date=ts(2024, 1, 15, 12) if internal_date is None else internal_date,
        modseq=modseq,
    )


def ctx(max_seq: int = 10, max_uid: int = 10, **kw) -> SearchContext:
    return SearchContext(max_seq=max_seq, max_uid=max_uid, tz=kw.pop("tz", UTC), **kw)


def m(program: str | object, c: Candidate | None = None, context: SearchContext | None = None,
      **content: bytes | None) -> bool:
    key = P(program) if isinstance(program, str) else program
    return matches(key, c or cand(), context or ctx(), **content)


# ------------------------------------------------------------------ sample messages

QP_LATIN1 = (
    b"Return-Path: <f@example.org>\r\n"
    b"Received: from a.example by b.example; Mon, 1 Jan 2024 23:30:05 -0800\r\n"
    b"Received: from c.example by d.example (relay-7); Mon, 1 Jan 2024 23:30:01 -0800\r\n"
    b"From: =?iso-8859-1?q?Fran=E7ois?= Dupont <f@example.org>\r\n"
    b'To: a@example.com, "Bob Smith" <b@example.com>\r\n'
    b"Subject: =?utf-8?B?Q2Fmw6kgbWVldGluZw==?= on\r\n"
    b"\tfriday afternoon\r\n"
    b"Date: Mon, 1 Jan 2024 23:30:00 -0800\r\n"
    b"X-Spam-Flag: \r\n"
    b"MIME-Version: 1.0\r\n"
    b"Content-Type: text/plain; charset=iso-8859-1\r\n"
    b"Content-Transfer-Encoding: quoted-printable\r\n"
    b"\r\n"
    b"Un caf=E9 cr=E8me, s'il vous pla=EEt. Une tr=\r\n"
    b"=E8s longue ligne.\r\n"
    b"The quick brown\r\n"
    b"   fox jumps.\r\n"
)

PLAIN_B64 = base64.encodebytes("Grüße aus Berlin\nStraße 5\n".encode()).replace(b"\n", b"\r\n")
MULTIPART = (
    b"From: sender@example.net\r\n"
    b"To: rcpt@example.com\r\n"
    b"Subject: multipart test\r\n"
    b"Date: Tue, 2 Jan 2024 08:00:00 +0100\r\n"
    b"MIME-Version: 1.0\r\n"
    b'Content-Type: multipart/mixed; boundary="XX"\r\n'
    b"\r\n"
    b"This is a multi-part message in MIME format.\r\n"
    b"--XX\r\n"
    b'Content-Type: multipart/alternative; boundary="YY"\r\n'
    b"\r\n"
    b"--YY\r\n"
    b"Content-Type: text/plain; charset=utf-8\r\n"
    b"Content-Transfer-Encoding: base64\r\n"
    b"\r\n" + PLAIN_B64 + b"--YY\r\n"
    b"Content-Type: text/html; charset=utf-8\r\n"
    b"\r\n"
    b"<html><style>p {color: red}</style><p>Na&iuml;ve <b>HTML</b>\r\ncaf&eacute;</p></html>\r\n"
    b"--YY--\r\n"
    b"--XX\r\n"
    b'Content-Type: application/octet-stream; name="report.pdf"\r\n'
    b'Content-Disposition: attachment; filename="=?utf-8?q?R=C3=A9sum=C3=A9?=.pdf"\r\n'
    b"Content-Transfer-Encoding: base64\r\n"
    b"\r\n" + base64.encodebytes(b"secretpayload").replace(b"\n", b"\r\n") + b"--XX\r\n"
    b"Content-Type: message/rfc822\r\n"
    b"\r\n"
    b"From: inner@example.org\r\n"
    b"Subject: Forwarded thing\r\n"
    b"\r\n"
    b"Inner body words\r\n"
    b"--XX--\r\n"
)


def header_of(message: bytes) -> bytes:
    return split_message(message)[0]


# ------------------------------------------------------------------ content_needed


@pytest.mark.parametrize(
    ("program", "need"),
    [
        ("ALL", "none"),
        ("SEEN UNDELETED KEYWORD $Junk", "none"),
        ("UID 1:* 2:4 LARGER 5 SMALLER 9 MODSEQ 4", "none"),
        ("BEFORE 1-Jan-2024 ON 1-Jan-2024 SINCE 1-Jan-2024", "none"),
        ("SENTBEFORE 1-Jan-2024", "header"),
        ("SENTON 1-Jan-2024", "header"),
        ("SENTSINCE 1-Jan-2024", "header"),
        ("FROM x", "header"),
        ('HEADER X-Foo ""', "header"),
        ("NOT SUBJECT x", "header"),
        ("OR SEEN TO x", "header"),
        ("BODY x", "full"),
        ("TEXT x", "full"),
        ("SEEN (FROM a OR SEEN NOT (BODY x))", "full"),
        ("NEW", "none"),
    ],
)
def test_content_needed(program: str, need: str) -> None:
    assert content_needed(P(program)) == need


def test_content_needed_of_built_keys() -> None:
    assert content_needed(AndKey(())) == "none"
    assert content_needed(TextKey("BODY", "")) == "full"  # by key kind, whatever the value
    assert content_needed(OrKey(HeaderKey("X", ""), NotKey(TextKey("TEXT", "a")))) == "full"


# ------------------------------------------------------------------ flags


def test_system_flags() -> None:
    c = cand(flags=("\\Seen", "\\Flagged"))
    assert m("SEEN", c) and m("FLAGGED", c) and not m("UNSEEN", c)
    assert m("UNANSWERED UNDELETED UNDRAFT", c)
    assert not m("ANSWERED", c) and not m("DELETED", c) and not m("DRAFT", c)
    d = cand(flags=("\\Answered", "\\Deleted", "\\Draft"))
    assert m("ANSWERED DELETED DRAFT UNSEEN UNFLAGGED", d)


def test_system_flags_case_insensitive() -> None:
    assert m(FlagKey("\\SEEN", True), cand(flags=("\\Seen",)))
    assert m(FlagKey("\\seen", False), cand(flags=("\\Flagged",)))
    # a stored flag in odd case (another program wrote it) still counts
    assert m("SEEN", cand(flags=("\\SEEN",)))
    assert not m("UNSEEN", cand(flags=("\\seen",)))


def test_keywords_case_insensitive() -> None:
    c = cand(flags=("$Junk", "Work"))
    assert m("KEYWORD $junk", c) and m("KEYWORD $JUNK", c) and m("KEYWORD work", c)
    assert not m("UNKEYWORD $junk", c)
    assert m("UNKEYWORD $NotJunk", c) and not m("KEYWORD $NotJunk", c)
    assert m("KEYWORD STRASSE", cand(flags=("straße",)))  # casefold, not lower()


def test_recent_comes_from_candidate_not_flags() -> None:
    assert m("RECENT", cand(recent=True)) and not m("OLD", cand(recent=True))
    assert m("OLD", cand(recent=False)) and not m("RECENT", cand(recent=False))
    # \Recent in flags (a caller bug) is ignored: the recent field decides
    assert not m("RECENT", cand(flags=("\\Recent",), recent=False))
    assert m(FlagKey("\\RECENT", True), cand(recent=True))


def test_new_is_recent_and_unseen() -> None:
    assert m("NEW", cand(recent=True))
    assert not m("NEW", cand(recent=True, flags=("\\Seen",)))
    assert not m("NEW", cand(recent=False))


def test_flag_memo_per_flag_set_is_correct_across_objects() -> None:
    context = ctx()
    key = P("UNSEEN")
    for i in range(200):
        flags = ("\\Seen",) if i % 3 == 0 else ("$x", "\\Answered")
        c = Candidate(i + 1, i + 1, frozenset(flags), False, 1, 0.0, 1)  # new frozenset each time
        assert matches(key, c, context) is (i % 3 != 0)


# ------------------------------------------------------------------ header keys


def test_address_and_subject_keys() -> None:
    h = header_of(QP_LATIN1)
    assert m("FROM dupont", header=h) and m("FROM F@EXAMPLE.ORG", header=h)
    assert m("TO bob", header=h) and m('TO "bob smith"', header=h)
    assert not m("CC bob", header=h) and not m("BCC bob", header=h)
    assert m("NOT CC bob", header=h)
    assert m("SUBJECT friday", header=h)
    assert not m("FROM bob", header=h)


def test_header_rfc2047_decoded_and_raw() -> None:
    h = header_of(QP_LATIN1)
    assert m("FROM françois", header=h) and m("FROM FRANÇOIS", header=h)
    assert m('FROM "=?iso-8859-1?q?fran=e7ois?="', header=h)  # the raw value is tried too
    assert m('SUBJECT "café meeting"', header=h)
    assert m('SUBJECT "café meeting on friday"', header=h)  # decoded + unfolded
    assert not m("FROM fran=e7ois?=x", header=h)


def test_header_unfolding_and_whitespace() -> None:
    h = header_of(QP_LATIN1)
    assert m('SUBJECT "on friday afternoon"', header=h)  # spans the fold (CRLF TAB)
    assert m('SUBJECT "on    friday   afternoon"', header=h)  # runs of spaces in the needle
    h2 = b"Subject: a\r\n  b\r\n\r\n"
    assert m('SUBJECT "a b"', header=h2)


def test_header_every_occurrence() -> None:
    h = header_of(QP_LATIN1)
    assert m('HEADER Received "relay-7"', header=h)  # second Received
    assert m('HEADER Received "a.example"', header=h)  # first
    assert not m('HEADER Received "relay-8"', header=h)


def test_header_presence_with_empty_value() -> None:
    h = header_of(QP_LATIN1)
    assert m('HEADER X-Spam-Flag ""', header=h)  # present with an empty value
    assert m('HEADER MIME-Version ""', header=h)
    assert not m('HEADER X-Absent ""', header=h)
    assert m('NOT HEADER X-Absent ""', header=h)


def test_header_field_names_case_insensitive() -> None:
    h = b"x-mailer: Foo Mail 3\r\nSUBJECT: Hi\r\n\r\n"
    assert m('HEADER X-MAILER "foo mail"', header=h)
    assert m(HeaderKey("x-Mailer", "FOO"), header=h)
    assert m("SUBJECT hi", header=h)


def test_header_8bit_utf8_and_garbage_bytes() -> None:
    h = "Subject: Grüße aus Köln\r\nFrom: Jörg <j@exämple.de>\r\n\r\n".encode()
    assert m("SUBJECT köln", header=h) and m("SUBJECT GRÜSSE", header=h)
    assert m("FROM exämple", header=h)
    bad = b"Subject: caf\xe9 \xff\xfe ok\r\n\r\n"
    assert m('SUBJECT "ok"', header=bad)
    assert m("SUBJECT caf", header=bad)


def test_header_encoded_word_split_across_words() -> None:
    # "é" is C3 A9 in UTF-8, split over two adjacent encoded-words
    h = b"Subject: =?utf-8?Q?caf=C3?= =?utf-8?Q?=A9?= =?utf-8?B?IGNyw6htZQ==?=\r\n\r\n"
    assert m('SUBJECT "café crème"', header=h)


def test_header_tolerates_junk_lines() -> None:
    h = (b"From sender@example.org Mon Jan  1 10:00:00 2024\r\n"  # mbox separator
         b" orphan continuation\r\n"
         b"no colon here\r\n"
         b"Subject : spaced name\r\n"
         b"To: x@example.com\r\n\r\nFrom: not-a-header@example.org\r\n")
    assert m("SUBJECT spaced", header=h)
    assert not m("FROM not-a-header", header=h)  # after the empty line: body
    assert not m("FROM sender", header=h)
    assert parse_header_fields(h) == {"subject": ["spaced name"], "to": ["x@example.com"]}


def test_header_without_terminating_blank_line() -> None:
    assert m("SUBJECT end", header=b"Subject: the end")


def test_decode_encoded_words_edge_cases() -> None:
    assert decode_encoded_words("plain") == "plain"
    assert decode_encoded_words("=?UTF-8?b?w6k=?=") == "é"
    assert decode_encoded_words("=?utf-8*fr?q?caf=C3=A9?=") == "café"  # RFC 2231 language
    assert decode_encoded_words("a =?utf-8?q?x?=  =?iso-8859-1?q?=E9?= b") == "a xé b"
    assert decode_encoded_words("=?utf-8?b?w6k?=") == "é"  # missing padding
    assert decode_encoded_words("=?x-unknown?q?caf=E9?=") == "café"  # unknown -> latin-1
    assert decode_encoded_words("=?utf-8?q?a_b?=") == "a b"
    assert decode_encoded_words("x=?utf-8?q?=C3=A9?=y") == "xéy"  # inside a word (broken mailers)


def test_decode_bytes_fallbacks() -> None:
    assert decode_bytes(b"caf\xe9", "iso-8859-1") == "café"
    assert decode_bytes(b"\x80", "ISO-8859-1") == "€"  # the windows-1252 that is meant
    assert decode_bytes("café".encode(), None) == "café"
    assert decode_bytes(b"caf\xe9", None) == "café"
    assert decode_bytes("café".encode(), "us-ascii") == "café"
    assert decode_bytes(b"caf\xe9", "no-such-charset") == "café"
    assert decode_bytes(b"abc", "base64") == "abc"  # not a text encoding
    assert decode_bytes(b"abc", '"UTF-8"') == "abc"


# ------------------------------------------------------------------ text keys


def test_body_qp_latin1() -> None:
    assert m("BODY café", message=QP_LATIN1)
    assert m("BODY CAFÉ", message=QP_LATIN1)
    assert m('BODY "très longue"', message=QP_LATIN1)  # across a QP soft line break
    assert not m("BODY caf=E9", message=QP_LATIN1)


def test_body_whitespace_across_lines() -> None:
    assert m('BODY "brown fox"', message=QP_LATIN1)
    assert m('BODY "quick  brown\tfox"', message=QP_LATIN1)


def test_body_vs_text() -> None:
    assert not m("BODY dupont", message=QP_LATIN1)
    assert m("TEXT dupont", message=QP_LATIN1)
    assert m("TEXT françois", message=QP_LATIN1)  # decoded header
    assert m('TEXT "café meeting"', message=QP_LATIN1)
    assert m("TEXT café", message=QP_LATIN1)  # body
    assert not m("TEXT nowhere", message=QP_LATIN1)


def test_multipart_walk() -> None:
    assert m("BODY GRÜSSE", message=MULTIPART)  # base64 UTF-8, casefold
    assert m("BODY strasse", message=MULTIPART)
    assert m('BODY "naïve html café"', message=MULTIPART)  # tags stripped, entities decoded
    assert m('BODY "<b>HTML</b>"', message=MULTIPART)  # the raw HTML too
    assert m("BODY report.pdf", message=MULTIPART)  # part headers
    assert m("BODY résumé", message=MULTIPART)  # decoded encoded-word in a part header
    assert m('BODY "forwarded thing"', message=MULTIPART)  # nested message header
    assert m('BODY "inner body words"', message=MULTIPART)
    assert not m("BODY secretpayload", message=MULTIPART)  # non-text parts are not searched
    assert not m("BODY c2VjcmV0", message=MULTIPART)  # nor their encoded form
    assert not m('BODY "multipart test"', message=MULTIPART)  # top header is not body
    assert m('TEXT "multipart test"', message=MULTIPART)


def test_text_needs_full_and_derives_header() -> None:
    assert m("TEXT dupont", message=QP_LATIN1, header=None)
    assert m("FROM dupont BODY café", message=QP_LATIN1)


def test_empty_needle_matches_everything_without_content() -> None:
    assert m('BODY ""')  # no content given and none read
    assert m('TEXT ""')
    assert not m('NOT TEXT ""')


@pytest.mark.parametrize(
    "message",
    [
        b"",
        b"\xff\xfe\x00garbage without header",
        b"Subject: x\r\nContent-Type: multipart/mixed\r\n\r\nno boundary needle here\r\n",
        b'Subject: x\r\nContent-Type: multipart/mixed; boundary="B"\r\n\r\n--B\r\nneedle in unterminated',
        b"Content-Type: text/plain; charset=nonsense-42\r\n\r\nneedle caf\xe9\r\n",
        b"Content-Type: text/plain; charset=\"\r\n\r\nneedle\r\n",
        b"Content-Type: text/plain\r\nContent-Transfer-Encoding: base64\r\n\r\n!!!!needle!!!\r\n",
        b"Content-Type: text/plain\r\nContent-Transfer-Encoding: quoted-printable\r\n\r\nneedle=ZZ=\r\n",
        b"Content-Type: text/plain; charset=utf-7\r\n\r\nneedle +AGEAYgBj-\r\n",
        b"Content-Type: \x00\xff/\x01; charset*=''\r\n\r\nneedle\r\n",
        b"Content-Type: text/plain; charset*=utf-8''%FF%FE\r\n\r\nneedle\r\n",
        b"Content-Type: message/global\r\n\r\nSubject: inner\r\n\r\nneedle\r\n",
        b"\r\nneedle with empty header\r\n",
        b"\nneedle with bare-LF empty header\n",
        b"Subject: only a header, no body\r\n",
    ],
)
def test_malformed_messages_never_raise(message: bytes) -> None:
    found = m("BODY needle", message=message)
    m("TEXT x", message=message)
    m('HEADER Subject ""', message=message)
    m("SENTON 1-Jan-2024", message=message)
    if b"needle" in message:
        assert found


def test_deeply_nested_multipart_falls_back_to_raw() -> None:
    depth = 3000
    parts = [b"Subject: deep\r\n"]
    for i in range(depth):
        parts.append(b'Content-Type: multipart/mixed; boundary="b%d"\r\n\r\n--b%d\r\n' % (i, i))
    parts.append(b"Content-Type: text/plain\r\n\r\nthe bottom needle\r\n")
    message = b"".join(parts)
    assert m('BODY "bottom needle"', message=message)


@pytest.mark.parametrize(
    "body",
    [
        b"<" * 400_000,
        b"<script" * 60_000,
        b"=?x?q?" * 60_000,
        b"<a" + b" x" * 300_000,
    ],
)
def test_hostile_bodies_take_linear_time(body: bytes) -> None:
    message = b"Subject: " + body[:100_000] + b"\r\nContent-Type: text/html\r\n\r\n" + body
    start = time.perf_counter()
    assert not m("TEXT needle", message=message)
    assert time.perf_counter() - start < 2.0


def test_parser_failure_falls_back_to_raw_body(monkeypatch: pytest.MonkeyPatch) -> None:
    def boom(message: bytes) -> str:
        raise RuntimeError("parser bug")

    monkeypatch.setattr(searcheval, "body_text", boom)
    assert m("BODY cr=E8me", message=QP_LATIN1)  # raw bytes, undecoded
    assert not m("BODY dupont", message=QP_LATIN1)  # still only the body


def test_text_decoded_once_per_message(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[int] = []
    real = searcheval.body_text

    def counting(message: bytes) -> str:
        calls.append(1)
        return real(message)

    monkeypatch.setattr(searcheval, "body_text", counting)
    key = P("OR BODY nothing-1 OR BODY nothing-2 (TEXT nothing-3 NOT BODY café)")
    assert not matches(key, cand(), ctx(), message=QP_LATIN1)
    assert len(calls) == 1


def test_missing_content_is_a_caller_error() -> None:
    with pytest.raises(ValueError, match="header"):
        m("FROM x")
    with pytest.raises(ValueError, match="whole message"):
        m("BODY x", header=header_of(QP_LATIN1))
    # the header alone serves header keys
    assert m("FROM dupont", header=header_of(QP_LATIN1))


def test_normalization() -> None:
    # casefold, NFKC (fullwidth letters, the fi ligature), NBSP as white space
    assert normalize("  Straße\r\n\t \uff21\uff22\uff23\u00a0\ufb01x  ") == "strasse abc fix"
    assert normalize_needle(" Foo  Bar ") == " foo bar "
    assert normalize_needle("foo\t") == "foo "
    assert normalize_needle("   ") == " "
    assert normalize_needle("") == ""
    assert normalize("Cafe\u0301") == normalize("Café")  # decomposed vs composed


def test_needle_edge_whitespace_is_kept() -> None:
    h = b"Subject: xfoo bar\r\n\r\n"
    assert not m('SUBJECT " foo"', header=h)
    assert m('SUBJECT " bar"', header=h)
    assert m('SUBJECT " "', header=h)
    assert not m('SUBJECT " "', header=b"Subject: word\r\n\r\n")


def test_split_message() -> None:
    assert split_message(b"A: 1\r\n\r\nbody") == (b"A: 1\r\n\r\n", b"body")
    assert split_message(b"A: 1\n\nbody\n\nmore") == (b"A: 1\n\n", b"body\n\nmore")
    assert split_message(b"A: 1\r\n") == (b"A: 1\r\n", b"")
    assert split_message(b"\r\nbody") == (b"\r\n", b"body")


# ------------------------------------------------------------------ dates


def test_internal_date_ops_and_midnight_boundaries() -> None:
    context = ctx(tz=UTC)
    midnight = ts(2024, 1, 2)
    at = cand(internal_date=midnight)
    just_before = cand(internal_date=midnight - 0.001)
    assert m("ON 2-Jan-2024", at, context) and m("SINCE 2-Jan-2024", at, context)
    assert not m("BEFORE 2-Jan-2024", at, context)
    assert m("BEFORE 2-Jan-2024", just_before, context) and m("ON 1-Jan-2024", just_before, context)
    assert not m("SINCE 2-Jan-2024", just_before, context)
    assert not m("ON 2-Jan-2024", just_before, context)
    last = cand(internal_date=ts(2024, 1, 2, 23, 59, 59))
    assert m("ON 2-Jan-2024", last, context) and not m("ON 3-Jan-2024", last, context)


def test_internal_date_uses_context_zone() -> None:
    c = cand(internal_date=ts(2024, 1, 1, 23, 30))  # 23:30 UTC = 09:30 next day in +10
    assert m("ON 1-Jan-2024", c, ctx(tz=UTC))
    plus10 = dt.timezone(dt.timedelta(hours=10))
    assert m("ON 2-Jan-2024", c, ctx(tz=plus10)) and not m("ON 1-Jan-2024", c, ctx(tz=plus10))
    minus5 = dt.timezone(dt.timedelta(hours=-5))
    assert m("ON 1-Jan-2024", c, ctx(tz=minus5))


def test_internal_date_default_is_local_time() -> None:
    context = SearchContext(max_seq=1, max_uid=1)
    stamp = ts(2024, 6, 15, 12)
    local_day = dt.datetime.fromtimestamp(stamp).date()
    key = DateKey("INTERNAL", "ON", local_day)
    assert matches(key, cand(internal_date=stamp), context)
    assert not matches(DateKey("INTERNAL", "ON", local_day + dt.timedelta(days=1)), cand(internal_date=stamp),
                       context)


@pytest.mark.parametrize(
    ("zone", "days"),
    [
        ("America/Sao_Paulo", [dt.date(2018, 11, 3), dt.date(2018, 11, 4), dt.date(2019, 2, 16),
                               dt.date(2019, 2, 17)]),  # DST changes at midnight
        ("Europe/Berlin", [dt.date(2024, 3, 31), dt.date(2024, 10, 27)]),
        # 30-Dec-2011 did not happen in Samoa: nothing is ON it
        ("Pacific/Apia", [dt.date(2011, 12, 29), dt.date(2011, 12, 30), dt.date(2011, 12, 31)]),
    ],
)
def test_internal_date_thresholds_match_per_message_days(zone: str, days: list[dt.date]) -> None:
    tz = zoneinfo.ZoneInfo(zone)
    context = ctx(tz=tz)
    first = dt.datetime.combine(days[0] - dt.timedelta(days=1), dt.time(), UTC).timestamp()
    stamps = [first + i * 900 for i in range(4 * 24 * (len(days) + 3))]
    stamps += [dt.datetime.combine(d, dt.time(), tz).timestamp() + delta
               for d in days for delta in (-1, -0.001, 0, 0.001, 1)]
    for day in days:
        for op, rule in (("BEFORE", day.__gt__), ("ON", day.__eq__), ("SINCE", day.__le__)):
            key = DateKey("INTERNAL", op, day)  # type: ignore[arg-type]
            for stamp in stamps:
                expected = rule(dt.datetime.fromtimestamp(stamp, tz).date())
                assert matches(key, cand(internal_date=stamp), context) is expected, (zone, op, day, stamp)


def test_extreme_dates_do_not_raise() -> None:
    c = cand()
    for tz in (UTC, None):
        context = SearchContext(max_seq=1, max_uid=1, tz=tz)
        assert not matches(DateKey("INTERNAL", "BEFORE", dt.date(1, 1, 1)), c, context)
        assert matches(DateKey("INTERNAL", "SINCE", dt.date(1, 1, 1)), c, context)
        assert not matches(DateKey("INTERNAL", "ON", dt.date(9999, 12, 31)), c, context)
        assert matches(DateKey("INTERNAL", "BEFORE", dt.date(9999, 12, 31)), c, context)
        assert not matches(DateKey("INTERNAL", "SINCE", dt.date(9999, 12, 31)), c, context)
    assert ctx().day_of(1e20) == dt.date.max and ctx().day_of(-1e20) == dt.date.min


def test_sent_date_in_the_headers_own_zone() -> None:
    h = header_of(QP_LATIN1)  # Date: Mon, 1 Jan 2024 23:30:00 -0800 (= 2 Jan 07:30 UTC)
    c = cand(internal_date=ts(2024, 3, 1))
    assert m("SENTON 1-Jan-2024", c, header=h)
    assert not m("SENTON 2-Jan-2024", c, header=h)
    assert m("SENTBEFORE 2-Jan-2024", c, header=h) and not m("SENTBEFORE 1-Jan-2024", c, header=h)
    assert m("SENTSINCE 1-Jan-2024", c, header=h) and not m("SENTSINCE 2-Jan-2024", c, header=h)
    # the context zone does not matter for SENT
    plus10 = dt.timezone(dt.timedelta(hours=10))
    assert m("SENTON 1-Jan-2024", c, ctx(tz=plus10), header=h)


@pytest.mark.parametrize(
    "header",
    [
        b"Subject: no date\r\n\r\n",
        b"Date: yesterday-ish\r\nSubject: bad date\r\n\r\n",
        b"Date: Mon, 31 Feb 2024 10:00:00 +0000\r\n\r\n",
        b"Date: \r\n\r\n",
    ],
)
def test_sent_date_missing_or_unparseable_falls_back_to_internal_date(header: bytes) -> None:
    c = cand(internal_date=ts(2023, 7, 4, 12))
    assert m("SENTON 4-Jul-2023", c, header=header)
    assert m("SENTSINCE 4-Jul-2023 SENTBEFORE 5-Jul-2023", c, header=header)
    assert not m("SENTON 1-Jan-1970", c, header=header)
    assert not m("SENTBEFORE 4-Jul-2023", c, header=header)


def test_sent_date_first_date_header_counts() -> None:
    h = b"Date: Tue, 2 Jan 2024 10:00:00 +0000\r\nDate: Wed, 3 Jan 2024 10:00:00 +0000\r\n\r\n"
    assert m("SENTON 2-Jan-2024", header=h) and not m("SENTON 3-Jan-2024", header=h)


@pytest.mark.parametrize(
    ("value", "day"),
    [
        ("Mon, 1 Jan 2024 23:30:00 -0800 (PST)", dt.date(2024, 1, 1)),
        ("1 Jan 99 10:00 GMT", dt.date(1999, 1, 1)),
        ("Mon, 01 Jan 2024 00:00:00 +1400", dt.date(2024, 1, 1)),
        ("Mon, 1 Jan 2024", dt.date(2024, 1, 1)),
        ("Tue, 5 March 2024 10:00:00 +0100", dt.date(2024, 3, 5)),
        ("2024-03-05 10:00", dt.date(2024, 3, 5)),
        ("garbage", None),
        ("", None),
        ("Mon, 31 Feb 2024 10:00:00 +0000", None),
    ],
)
def test_parse_sent_date(value: str, day: dt.date | None) -> None:
    assert parse_sent_date(value) == day


# ------------------------------------------------------------------ size, modseq


def test_size() -> None:
    c = cand(size=1000)
    assert m("LARGER 999", c) and not m("LARGER 1000", c)
    assert m("SMALLER 1001", c) and not m("SMALLER 1000", c)
    assert m(SizeKey("LARGER", 0), cand(size=1)) and not m(SizeKey("SMALLER", 0), cand(size=0))


def test_modseq() -> None:
    c = cand(modseq=620162338)
    assert m("MODSEQ 620162338", c) and m("MODSEQ 1", c) and m("MODSEQ 0", c)
    assert not m("MODSEQ 620162339", c)
    assert m('MODSEQ "/flags/\\\\draft" all 620162338', c)  # entry parsed, then ignored
    assert not m(ModSeqKey(620162339, ("/flags/\\seen", "priv")), c)


# ------------------------------------------------------------------ sequence sets


def numbers_matching(program: str, context: SearchContext, n: int, *,
                     uids: list[int] | None = None) -> list[int]:
    uids = uids or list(range(1, n + 1))
    cands = [cand(seq=i + 1, uid=u) for i, u in enumerate(uids)]
    key = P(program)
    return [c.uid if "UID" in program else c.seq for c in search(key, cands, context)]


def test_message_number_sets() -> None:
    context = ctx(max_seq=10, max_uid=50)
    assert numbers_matching("2:4,7", context, 10) == [2, 3, 4, 7]
    assert numbers_matching("*", context, 10) == [10]
    assert numbers_matching("8:*", context, 10) == [8, 9, 10]
    assert numbers_matching("*:8", context, 10) == [8, 9, 10]
    assert numbers_matching("4:2", context, 10) == [2, 3, 4]
    assert numbers_matching("1:*", context, 10) == list(range(1, 11))
    assert numbers_matching("9:20", context, 10) == [9, 10]  # clamped


def test_uid_sets() -> None:
    uids = [3, 7, 8, 20, 21]
    context = ctx(max_seq=5, max_uid=21)
    assert numbers_matching("UID 1:7", context, 5, uids=uids) == [3, 7]
    assert numbers_matching("UID *", context, 5, uids=uids) == [21]
    assert numbers_matching("UID 8:*", context, 5, uids=uids) == [8, 20, 21]
    assert numbers_matching("UID 22:*", context, 5, uids=uids) == [21]  # * is the largest: 21:22
    assert numbers_matching("UID 100:*", context, 5, uids=uids) == [21]
    assert numbers_matching("UID 100:200", context, 5, uids=uids) == []


def test_uid_star_range_beyond_largest_uid() -> None:
    context = ctx(max_seq=3, max_uid=3)
    assert numbers_matching("UID 5:*", context, 3) == [3]  # RFC 3501: n:* is *:n
    assert numbers_matching("UID 4:5", context, 3) == []


def test_empty_mailbox() -> None:
    context = SearchContext(max_seq=0, max_uid=0, tz=UTC)
    for program in ("UID *", "UID 1:*", "*", "1:*", "UID 5:*", "ALL", "SEEN"):
        assert search(P(program), [], context) == []
    assert not matches(P("UID *"), cand(uid=1), context)  # * names no message at all
    assert not matches(P("1:*"), cand(seq=1), context)
    assert matches(P("UID 1"), cand(uid=1), context)  # an explicit UID is still a UID


def test_saved_result() -> None:
    c3, c4 = cand(seq=1, uid=3), cand(seq=2, uid=4)
    context = ctx(saved=[4, 9])
    assert search(P("$"), [c3, c4], context) == [c4]
    assert search(P("UID $"), [c3, c4], context) == [c4]
    assert search(P("$"), [c3, c4], ctx()) == []  # no saved result: empty


def test_sequence_paths_agree_with_seqset() -> None:
    rng = random.Random(7)
    for _ in range(200):
        largest = rng.choice([1, 5, 100, 5000, 100000])
        elements = []
        for _ in range(rng.randint(1, 6)):
            a = rng.choice(["*", str(rng.randint(1, largest + 10))])
            b = rng.choice(["", ":*", f":{rng.randint(1, largest + 10)}", f":{rng.randint(1, 200000)}"])
            elements.append(a + b)
        text = ",".join(elements)
        seqset = SequenceSet.parse(text)
        context = ctx(max_seq=largest, max_uid=largest)
        probe = sorted({1, largest, largest + 1, *(rng.randint(1, largest + 20) for _ in range(200))})
        for uid in (True, False):
            key = SequenceKey(seqset, uid=uid)
            got = [n for n in probe if matches(key, cand(seq=n, uid=n), context)]
            want = [n for n in probe if seqset.contains(n, largest) and (uid or n <= largest)]
            assert got == want, (text, uid, largest)


# ------------------------------------------------------------------ boolean structure


def test_not_or_and_all() -> None:
    seen = cand(flags=("\\Seen",))
    unseen = cand()
    assert m("ALL", seen) and m("ALL", unseen)
    assert not m("NOT ALL", seen)
    assert m("OR SEEN FLAGGED", seen) and not m("OR SEEN FLAGGED", unseen)
    assert m("OR FLAGGED NOT SEEN", unseen)
    assert m("SEEN ALL", seen) and not m("SEEN UNSEEN", seen)
    assert m("NOT NOT SEEN", seen)
    assert m(AndKey(()), seen)  # the empty AND is true
    assert m("(ALL) (SEEN (ALL))", seen)
    assert m("NOT (SEEN UNSEEN)", seen)


def _reference(key, c: Candidate, context: SearchContext) -> bool:
    """A direct, uncompiled reading of the content-free keys, to check the compiler."""
    if isinstance(key, AllKey):
        return True
    if isinstance(key, FlagKey):
        if key.flag.casefold() == "\\recent":
            return c.recent == key.present
        return any(f.casefold() == key.flag.casefold() for f in c.flags) == key.present
    if isinstance(key, SizeKey):
        return c.size > key.size if key.op == "LARGER" else c.size < key.size
    if isinstance(key, ModSeqKey):
        return c.modseq >= key.modseq
    if isinstance(key, SequenceKey):
        if key.uid:
            return key.set.contains(c.uid, context.max_uid)
        return c.seq <= context.max_seq and key.set.contains(c.seq, context.max_seq)
    if isinstance(key, NotKey):
        return not _reference(key.key, c, context)
    if isinstance(key, OrKey):
        return _reference(key.left, c, context) or _reference(key.right, c, context)
    if isinstance(key, AndKey):
        return all(_reference(k, c, context) for k in key.keys)
    raise AssertionError(key)


def _random_program(rng: random.Random, depth: int = 0) -> str:
    leaves = ["SEEN", "UNSEEN", "FLAGGED", "DELETED", "RECENT", "OLD", "NEW", "KEYWORD $junk",
              "UNKEYWORD work", "ALL", "LARGER 500", "SMALLER 300", "MODSEQ 5", "1:10", "*",
              "UID 5:*", "UID 2,4,6:9", "3:2,8"]
    roll = rng.random()
    if depth > 4 or roll < 0.45:
        return rng.choice(leaves)
    if roll < 0.6:
        return "NOT " + _random_program(rng, depth + 1)
    if roll < 0.8:
        return f"OR {_random_program(rng, depth + 1)} {_random_program(rng, depth + 1)}"
    return "(" + " ".join(_random_program(rng, depth + 1) for _ in range(rng.randint(1, 4))) + ")"


def test_random_programs_agree_with_reference() -> None:
    rng = random.Random(3501)
    pool = [(), ("\\Seen",), ("\\Seen", "\\Flagged"), ("$Junk",), ("\\Deleted", "WORK"), ("\\Seen", "$junk")]
    cands = [cand(seq=i, uid=i * 2, flags=rng.choice(pool), recent=rng.random() < 0.3,
                  size=rng.randint(0, 1000), modseq=rng.randint(1, 9)) for i in range(1, 21)]
    for _ in range(400):
        program = " ".join(_random_program(rng) for _ in range(rng.randint(1, 3)))
        key = P(program)
        context = ctx(max_seq=20, max_uid=40)
        want = [c for c in cands if _reference(key, c, context)]
        assert search(key, cands, context) == want, program
        assert [c for c in cands if matches(key, c, context)] == want, program


# ------------------------------------------------------------------ search(): laziness


def _mailbox() -> tuple[list[Candidate], dict[int, bytes]]:
    messages = {
        1: QP_LATIN1,
        2: MULTIPART,
        3: b"From: x@example.org\r\nSubject: cafe without accent\r\n\r\nplain body\r\n",
    }
    cands = [cand(seq=1, uid=1, flags=("\\Seen",)), cand(seq=2, uid=2), cand(seq=3, uid=3, flags=("\\Seen",))]
    return cands, messages


def test_search_loads_only_what_cheap_keys_leave_open() -> None:
    cands, messages = _mailbox()
    calls: list[tuple[int, str]] = []

    def load(c: Candidate, need: str) -> tuple[bytes | None, bytes | None]:
        calls.append((c.uid, need))
        return None, messages[c.uid]

    # the text key is written first, but the flag key runs first
    got = search(P("BODY café SEEN"), cands, ctx(), load)
    assert [c.uid for c in got] == [1]
    assert calls == [(1, "full"), (3, "full")]

    calls.clear()
    got = search(P("OR SEEN BODY café"), cands, ctx(), load)  # the cheap side decides 1 and 3
    assert [c.uid for c in got] == [1, 2, 3]
    assert calls == [(2, "full")]

    calls.clear()
    got = search(P("UID 2 (FROM sender OR BODY café TEXT strasse)"), cands, ctx(), load)
    assert [c.uid for c in got] == [2]
    assert calls == [(2, "full")]  # once, though three content keys read it


def test_search_header_only_load() -> None:
    cands, messages = _mailbox()
    calls: list[str] = []

    def load(c: Candidate, need: str) -> tuple[bytes | None, bytes | None]:
        calls.append(need)
        return header_of(messages[c.uid]), None

    got = search(P('FROM "example.org"'), cands, ctx(), load)
    assert [c.uid for c in got] == [1, 3]
    assert calls == ["header"] * 3
    got = search(P("SENTON 1-Jan-2024"), cands, ctx(), load)
    assert [c.uid for c in got] == [1]


def test_search_vanished_message_reads_as_empty() -> None:
    cands, _ = _mailbox()

    def load(c: Candidate, need: str) -> tuple[bytes | None, bytes | None]:
        return None, None

    assert search(P("BODY x"), cands, ctx(), load) == []
    assert search(P("NOT FROM x"), cands, ctx(), load) == cands
    assert search(P('NOT HEADER Subject ""'), cands, ctx(), load) == cands


def test_search_without_load_for_content_program() -> None:
    cands, _ = _mailbox()
    with pytest.raises(ValueError, match="load"):
        search(P("BODY x"), cands, ctx())
    assert search(P("SEEN"), cands, ctx()) == [cands[0], cands[2]]


def test_search_keeps_candidate_order() -> None:
    cands = [cand(seq=i, uid=i) for i in (5, 1, 3)]
    assert search(P("ALL"), cands, ctx()) == cands


def test_message_content_object_is_shared() -> None:
    content = MessageContent(message=QP_LATIN1)
    assert content.field_values("subject") is content.field_values("subject")
    assert content.body_text() is content.body_text()
    assert content.field_values("x-absent") is None


# ------------------------------------------------------------------ compilation cache, speed


def test_sequence_set_resolved_once_per_context(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[int] = []
    real = SequenceSet.resolve

    def counting(self: SequenceSet, largest: int, *, clamp: bool = False) -> list[tuple[int, int]]:
        calls.append(largest)
        return real(self, largest, clamp=clamp)

    monkeypatch.setattr(SequenceSet, "resolve", counting)
    key = P("UID 1:5,9,20:* NOT 3:4")
    context = ctx(max_seq=100, max_uid=100)
    for i in range(1, 101):
        matches(key, cand(seq=i, uid=i), context)
    search(key, [cand(seq=i, uid=i) for i in range(1, 101)], context)
    assert len(calls) == 2  # one per SequenceKey
    ctx2 = ctx(max_seq=100, max_uid=100)  # a new SEARCH resolves afresh
    matches(key, cand(), ctx2)
    assert len(calls) == 4


def _big_mailbox(n: int) -> list[Candidate]:
    pool = [frozenset(), frozenset({"\\Seen"}), frozenset({"\\Seen", "\\Answered"}),
            frozenset({"\\Seen", "$Junk"}), frozenset({"\\Flagged"}), frozenset({"\\Seen", "\\Deleted"})]
    base = ts(2020, 1, 1)
    return [Candidate(i, i * 3, pool[i % len(pool)], i % 97 == 0, 500 + i % 5000, base + i * 600, i)
            for i in range(1, n + 1)]


@pytest.mark.parametrize(
    "program",
    [
        "UNSEEN",
        "UID 150000:*",
        "UID 1:1000,5000:6000,90000:*",
        "UNDELETED UNSEEN NOT KEYWORD $junk",
        "OR FLAGGED LARGER 4000 SINCE 1-Mar-2020 MODSEQ 10",
    ],
)
def test_cheap_programs_over_100k_candidates_agree_with_matches(program: str) -> None:
    # Speed is measured in bench/ (not here); this checks the precompiled fast paths give
    # exactly what evaluating every candidate on its own gives.
    cands = _big_mailbox(100_000)
    key = P(program)
    context = SearchContext(max_seq=len(cands), max_uid=cands[-1].uid, tz=UTC)
    result = search(key, cands, context)
    assert result  # something matched
    slow = SearchContext(max_seq=len(cands), max_uid=cands[-1].uid, tz=UTC)
    assert [c.uid for c in result] == [c.uid for c in cands if matches(key, c, slow)]
