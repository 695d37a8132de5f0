"""DSNs (RFC 3464) parsed back with the stdlib ``email`` package, field by field."""

from __future__ import annotations

import email
import email.policy
import email.utils
from email.message import Message

import pytest

from mailserver.delivery.dsn import RecipientFailure, build_dsn, format_reply

ORIGINAL = (
    b"From: Alice <alice@example.org>\r\n"
    b"To: bob@example.net\r\n"
    b"Subject: lunch?\r\n"
    b"Message-ID: <m1@example.org>\r\n"
    b"\r\n"
    b"SECRET BODY LINE\r\n"
)
ARRIVAL = 1_700_000_000.0
NOW = ARRIVAL + 5 * 3600


def parse(raw: bytes) -> Message:
    return email.message_from_bytes(raw, policy=email.policy.compat32)


def status_groups(msg: Message) -> list[Message]:
    part = msg.get_payload()[1]
    assert part.get_content_type() == "message/delivery-status"
    # The email package parses each field group as one header block.
    return part.get_payload()


def failure(**kw) -> RecipientFailure:
    args = dict(recipient="bob@example.net", status="5.1.1", code=550,
                text="5.1.1 <bob@example.net>: no such user", remote_mta="mx.example.net",
                last_attempt=NOW - 60)
    args.update(kw)
    return RecipientFailure(**args)


def build(**kw) -> bytes:
    args = dict(reporting_mta="mx1.example.org", original_sender="alice@example.org",
                failures=[failure()], original=ORIGINAL, kind="failure", arrival_date=ARRIVAL,
                message_id_domain="mx1.example.org", now=NOW)
    args.update(kw)
    return build_dsn(**args)


def test_failure_dsn_every_field():
    raw = build()
    assert raw.isascii()
    assert b"\n" not in raw.replace(b"\r\n", b"")  # CRLF only
    assert all(len(line) <= 998 for line in raw.split(b"\r\n"))
    msg = parse(raw)
    assert msg["From"] == "Mail Delivery System <MAILER-DAEMON@mx1.example.org>"
    assert msg["To"] == "<alice@example.org>"
    assert msg["Subject"] == "Undelivered Mail Returned to Sender"
    assert msg["Auto-Submitted"] == "auto-replied"
    assert email.utils.parsedate_to_datetime(msg["Date"]).timestamp() == NOW
    assert msg["Message-ID"].startswith("<") and msg["Message-ID"].endswith("@mx1.example.org>")
    assert msg.get_content_type() == "multipart/report"
    assert msg.get_param("report-type") == "delivery-status"
    human, _status, headers = msg.get_payload()
    assert human.get_content_type() == "text/plain"
    text = human.get_payload(decode=True).decode()
    assert "could not\r\nbe delivered" in text
    assert "<bob@example.net>: host mx.example.net said: 550 5.1.1 <bob@example.net>: no such user" \
        in text

    per_message, per_rcpt = status_groups(msg)
    assert per_message["Reporting-MTA"] == "dns; mx1.example.org"
    assert email.utils.parsedate_to_datetime(per_message["Arrival-Date"]).timestamp() == ARRIVAL
    assert per_rcpt["Final-Recipient"] == "rfc822; bob@example.net"
    assert per_rcpt["Action"] == "failed"
    assert per_rcpt["Status"] == "5.1.1"
    assert per_rcpt["Remote-MTA"] == "dns; mx.example.net"
    # The reply text already carried its code: it must not appear twice.
    assert per_rcpt["Diagnostic-Code"] == "smtp; 550 5.1.1 <bob@example.net>: no such user"
    assert email.utils.parsedate_to_datetime(per_rcpt["Last-Attempt-Date"]).timestamp() == NOW - 60
    assert per_rcpt["Will-Retry-Until"] is None

    assert headers.get_content_type() == "text/rfc822-headers"
    returned = headers.get_payload(decode=True)
    assert b"Subject: lunch?\r\n" in returned
    assert b"Message-ID: <m1@example.org>" in returned
    assert b"SECRET BODY" not in raw  # the body is never returned


def test_delayed_dsn_has_will_retry_until_and_warning():
    until = ARRIVAL + 5 * 86400
    raw = build(kind="delayed", failures=[
        failure(status="4.7.1", code=451, text="greylisted, try later", will_retry_until=until),
    ])
    msg = parse(raw)
    assert msg["Subject"] == "Delayed Mail (still being retried)"
    _per_message, rcpt = status_groups(msg)
    assert rcpt["Action"] == "delayed"
    assert rcpt["Status"] == "4.7.1"
    assert rcpt["Diagnostic-Code"] == "smtp; 451 greylisted, try later"
    assert email.utils.parsedate_to_datetime(rcpt["Will-Retry-Until"]).timestamp() == until
    text = msg.get_payload()[0].get_payload(decode=True).decode()
    assert "THIS IS A WARNING ONLY" in text
    assert "for 5.0 hours" in text


def test_several_recipients_and_no_remote_reply():
    raw = build(failures=[
        failure(),
        failure(recipient="carol@example.com", status="4.4.7", code=0, remote_mta="",
                text="message expired; last error: DNS lookup of example.com timed out",
                last_attempt=None),
    ])
    groups = status_groups(parse(raw))
    assert len(groups) == 3
    carol = groups[2]
    assert carol["Final-Recipient"] == "rfc822; carol@example.com"
    assert carol["Status"] == "4.4.7"
    assert carol["Remote-MTA"] is None
    assert carol["Last-Attempt-Date"] is None
    assert carol["Diagnostic-Code"].startswith("X-pymaild; message expired")


def test_non_ascii_is_encoded_and_output_stays_7bit():
    original = ("From: Jürgen <j@example.org>\r\nSubject: Grüße\r\n\r\nbody\r\n").encode()
    raw = build(original=original, failures=[
        failure(recipient="jörg@example.net", text="5.1.1 Benutzer unbekannt \u2013 ungültig",
                remote_mta="mx.example.net"),
    ])
    assert raw.isascii()
    msg = parse(raw)
    human, _status, headers = msg.get_payload()
    assert human["Content-Transfer-Encoding"] == "quoted-printable"
    assert human.get_content_charset() == "utf-8"
    assert "<jörg@example.net>" in human.get_payload(decode=True).decode("utf-8")
    rcpt = status_groups(msg)[1]
    assert rcpt["Final-Recipient"] == "utf-8; j\\x{F6}rg@example.net"
    assert rcpt["Diagnostic-Code"] == "smtp; 550 5.1.1 Benutzer unbekannt ? ung?ltig"
    assert headers["Content-Transfer-Encoding"] == "quoted-printable"
    assert "Subject: Grüße" in headers.get_payload(decode=True).decode("utf-8")


def test_long_and_multiline_diagnostics_are_folded_not_broken():
    text = "5.7.1 " + " ".join(f"word{i}" for i in range(60)) + "\r\n550-second line"
    raw = build(failures=[failure(text=text, status="5.7.1")])
    status_part = raw.split(b"message/delivery-status")[1].split(b"text/rfc822-headers")[0]
    assert all(len(line) <= 78 for line in status_part.split(b"\r\n"))
    rcpt = status_groups(parse(raw))[1]
    unfolded = " ".join(rcpt["Diagnostic-Code"].split())
    assert unfolded.startswith("smtp; 550 5.7.1 word0 word1")
    assert unfolded.endswith("word59 550-second line")


def test_header_only_original_and_lf_only_original():
    raw = build(original=b"Subject: no body at all\nX-Other: 1\n")
    headers = parse(raw).get_payload()[2].get_payload(decode=True)
    assert headers == b"Subject: no body at all\r\nX-Other: 1\r\n"


@pytest.mark.parametrize(("original", "returned"), [
    (ORIGINAL, b"From: Alice <alice@example.org>\r\nTo: bob@example.net\r\nSubject: lunch?\r\n"
               b"Message-ID: <m1@example.org>\r\n"),
    (b"Subject: s\nX: 1\n\nSECRET BODY LINE\n", b"Subject: s\r\nX: 1\r\n"),
    # A bare-LF line, then a CRLF empty line: sent with CRLF line ends, the header
    # ended there for the next hop, so the body behind it is not returned.
    (b"Subject: s\r\nX: 1\n\r\nSECRET BODY LINE\r\n", b"Subject: s\r\nX: 1\r\n"),
    # An empty first line: no header at all (RFC 5322 2.1), nothing of the body returned.
    (b"\r\nSubject: SECRET BODY LINE\r\n\r\nmore\r\n", b"\r\n"),
])
def test_only_the_header_section_is_returned(original: bytes, returned: bytes) -> None:
    raw = build(original=original)
    assert b"SECRET" not in raw
    assert parse(raw).get_payload()[2].get_payload(decode=True) == returned


def test_null_sender_and_bad_status_rejected():
    with pytest.raises(ValueError):
        build(failures=[])
    with pytest.raises(ValueError):
        build(failures=[failure(status="550")])
    with pytest.raises(ValueError):
        build(kind="bogus")


def test_format_reply():
    assert format_reply(550, "5.1.1 no") == "550 5.1.1 no"
    assert format_reply(550, "550 5.1.1 no") == "550 5.1.1 no"
    assert format_reply(0, "timeout") == "timeout"
