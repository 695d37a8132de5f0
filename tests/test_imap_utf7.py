"""Modified UTF-7 mailbox names (RFC 3501 5.1.3): canonical round trips, strict decoding."""

from __future__ import annotations

import random

import pytest

from mailserver.imap.errors import MailboxNameError
from mailserver.imap.utf7 import decode_mailbox_name, encode_mailbox_name

PAIRS = [
    ("INBOX", "INBOX"),
    ("", ""),
    ("&", "&-"),
    ("A&B", "A&-B"),
    ("&&", "&-&-"),
    ("Entwürfe", "Entw&APw-rfe"),
    ("Gesendete Objekte", "Gesendete Objekte"),
    ("~peter/mail/台北/日本語", "~peter/mail/&U,BTFw-/&ZeVnLIqe-"),  # RFC 3501's example
    ("Élément", "&AMk-l&AOk-ment"),
    ("日本語", "&ZeVnLIqe-"),
    ("😀", "&2D3eAA-"),  # surrogate pair
    ("a\x7fb", "a&AH8-b"),  # DEL is not printable
    ("tab\there", "tab&AAk-here"),
    ("Корзина", "&BBoEPgRABDcEOAQ9BDA-"),
    ("Sent/2024 & more", "Sent/2024 &- more"),
]


@pytest.mark.parametrize(("name", "wire"), PAIRS)
def test_encode(name: str, wire: str) -> None:
    assert encode_mailbox_name(name) == wire


@pytest.mark.parametrize(("name", "wire"), PAIRS)
def test_decode(name: str, wire: str) -> None:
    assert decode_mailbox_name(wire) == name
    assert decode_mailbox_name(wire.encode("ascii")) == name


@pytest.mark.parametrize(
    "wire",
    [
        "&",  # unterminated
        "abc&",
        "&Jjo",  # no '-'
        "&Jjo!-",  # '!' is not modified base64
        "&Jj/-",  # '/' must be ','
        "&Jjo=-",  # no padding allowed
        "&A-",  # 6 bits: truncated
        "&AGE-",  # base64 for printable 'a'
        "&AOk-&AOk-",  # adjacent shifts: canonical is &AOkA6Q-
        "&AOl-",  # non-zero padding bits
        "&AO-",  # 12 bits: not a whole UTF-16 unit
        "&2D0-",  # lone high surrogate
        "&3gA-",  # lone low surrogate
        "&AAA-",  # U+0000 ok? NUL is not printable, so encoded... see test below
        "caf\u00e9",  # raw 8-bit
        "a\tb",  # raw control character
        "&-&",
    ],
)
def test_decode_rejects(wire: str) -> None:
    if wire == "&AAA-":
        assert decode_mailbox_name(wire) == "\x00"  # valid encoding; the store may still refuse NUL
        return
    with pytest.raises(MailboxNameError):
        decode_mailbox_name(wire)


def test_decode_rejects_8bit_bytes() -> None:
    with pytest.raises(MailboxNameError):
        decode_mailbox_name("café".encode())


def test_encode_rejects_lone_surrogate() -> None:
    with pytest.raises(MailboxNameError):
        encode_mailbox_name("bad\ud800name")


def test_adjacent_non_ascii_runs_are_merged() -> None:
    assert encode_mailbox_name("éé") == "&AOkA6Q-"
    assert decode_mailbox_name("&AOkA6Q-") == "éé"


def test_random_round_trips() -> None:
    rng = random.Random(3501)
    alphabet = "aZ09 &-~/.+,\u00e9\u00fc\u4e2d\u0416\U0001f600\x01\x7f"
    for _ in range(500):
        name = "".join(rng.choice(alphabet) for _ in range(rng.randint(0, 12)))
        wire = encode_mailbox_name(name)
        assert wire.isascii() and all(0x20 <= ord(c) <= 0x7E for c in wire)
        assert decode_mailbox_name(wire) == name
