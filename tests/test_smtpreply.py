"""mailserver/smtpreply.SMTPReply: the one SMTP reply type (RFC 5321 4.2, RFC 3463, RFC 2034)."""

from __future__ import annotations

import pytest

from mailserver.smtp.protocol import Reply
from mailserver.smtpreply import SMTPReply


def test_the_core_uses_the_shared_type() -> None:
    assert Reply is SMTPReply


@pytest.mark.parametrize(
    ("reply", "wire"),
    [
        (SMTPReply(550, "5.7.1", "no"), b"550 5.7.1 no\r\n"),
        (SMTPReply(354, "", ""), b"354\r\n"),
        (SMTPReply(451, "4.7.1", "a\nb"), b"451-4.7.1 a\r\n451 4.7.1 b\r\n"),
    ],
)
def test_encode(reply: SMTPReply, wire: bytes) -> None:
    assert reply.encode() == wire


def test_temporary_follows_the_code() -> None:
    assert SMTPReply(451, "4.3.0", "x").temporary
    assert SMTPReply(452, "4.3.1", "x").temporary
    assert not SMTPReply(550, "5.7.1", "x").temporary
    assert SMTPReply(550, "5.7.1", "x").permanent
    assert SMTPReply(250, "2.0.0", "x").positive


def test_as_temporary_keeps_subject_detail_and_text() -> None:
    reply = SMTPReply(550, "5.7.24", "SPF check", module="inbound")
    temp = reply.as_temporary()
    assert (temp.code, temp.enhanced, temp.text, temp.module) == (451, "4.7.24", "SPF check", "inbound")
    with pytest.raises(ValueError):
        reply.as_temporary(550)


def test_module_is_not_part_of_equality_and_str_is_one_line() -> None:
    assert SMTPReply(550, "5.7.1", "x", module="mx") == SMTPReply(550, "5.7.1", "x")
    assert str(SMTPReply(550, "5.7.1", "a\r\nb")) == "550 5.7.1 a / b"
    assert str(SMTPReply(354, "", "")) == "354"
