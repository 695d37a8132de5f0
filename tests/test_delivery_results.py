"""Delivery results are SMTP replies: what the next hop said, or what we decided.

The queue records ``reply.code``, ``status`` and ``diagnostic`` per recipient and a DSN
quotes them, so these strings are pinned here exactly as the records have always held
them (older queue files and the DSNs built from them must not change).
"""

from __future__ import annotations

import pytest

from mailserver.delivery.results import from_reply, perm, temp
from mailserver.smtpreply import SMTPReply


@pytest.mark.parametrize(
    ("code", "message", "kind", "status", "diagnostic", "wire"),
    [
        (550, "5.1.1 no such user", "perm", "5.1.1", "550 5.1.1 no such user",
         b"550 5.1.1 no such user\r\n"),
        # No enhanced code from the host: the DSN's Status is derived, its words are not.
        (550, "no such user", "perm", "5.0.0", "550 no such user", b"550 no such user\r\n"),
        # An enhanced code of another class is no enhanced code (RFC 3463 2): text.
        (250, "5.1.1 ok", "sent", "2.0.0", "250 5.1.1 ok", b"250 5.1.1 ok\r\n"),
        (250, "2.0.0", "sent", "2.0.0", "250 2.0.0", b"250 2.0.0\r\n"),
        (451, "", "temp", "4.0.0", "451", b"451\r\n"),
        # A multi-line reply becomes one line, whitespace runs one space.
        (421, "4.3.2 shutting\n4.3.2   down now", "temp", "4.3.2", "421 4.3.2 shutting 4.3.2 down now",
         b"421 4.3.2 shutting 4.3.2 down now\r\n"),
        # Replies nobody should send are retried, never taken as sent or bounced.
        (354, "go ahead", "temp", "3.0.0", "354 go ahead", b"354 go ahead\r\n"),
        (600, "4.1.1 odd", "temp", "4.1.1", "600 4.1.1 odd", b"600 4.1.1 odd\r\n"),
    ],
)
def test_from_reply(code: int, message: str, kind: str, status: str, diagnostic: str,
                    wire: bytes) -> None:
    result = from_reply(code, message, "mx.example.net", module="remote")
    assert (result.kind, result.status, result.diagnostic) == (kind, status, diagnostic)
    assert result.reply.encode() == wire
    assert (result.mx, result.received, result.reply.module) == ("mx.example.net", True, "remote")


def test_from_reply_keeps_500_characters_of_the_text() -> None:
    result = from_reply(550, "5.7.1 " + "x" * 1000, "mx.example.net", module="remote")
    assert result.diagnostic == "550 5.7.1 " + "x" * 494


def test_our_own_decisions_record_their_text_alone() -> None:
    # The code is recorded beside the text; the enhanced code only in the Status field.
    result = temp(451, "4.4.3", "MX lookup for example.net failed: timeout", module="routes")
    assert (result.kind, result.status, result.received) == ("temp", "4.4.3", False)
    assert result.diagnostic == "MX lookup for example.net failed: timeout"
    assert result.reply == SMTPReply(451, "4.4.3", "MX lookup for example.net failed: timeout")
    assert result.reply.module == "routes"
    bounce = perm(556, "5.1.10", "domain example.net does not accept mail (null MX)", module="routes")
    assert (bounce.kind, bounce.status, bounce.mx) == ("perm", "5.1.10", "")


@pytest.mark.parametrize(("make", "code", "enhanced"), [
    (temp, 550, "5.1.1"), (temp, 451, "5.1.1"), (perm, 451, "4.4.1"), (perm, 550, "4.1.1"),
    (perm, 250, "2.0.0"),
])
def test_kind_and_reply_class_must_agree(make: object, code: int, enhanced: str) -> None:
    assert callable(make)
    with pytest.raises(ValueError):
        make(code, enhanced, "text", module="test")
