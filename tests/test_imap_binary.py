"""FETCH BINARY (RFC 3516) through a real pymaild: decoded base64 with NULs as literal8,
quoted-printable, parts of an encapsulated message, partial ranges, BINARY.SIZE,
UNKNOWN-CTE, the whole message, \\Seen, and the unit rules of the decoder."""

from __future__ import annotations

import base64
import re

import pytest

from mailserver.imap.binarypart import UnknownCTE, binary_section, decode, decode_base64
from mailserver.imap.fetchitems import Section
from tests.support.imap import RawIMAP, client_ctx, imap_daemon, login, new_account

PAYLOAD = bytes(range(256)) * 8  # 2048 octets, NULs and every other octet
INNER_TEXT = "Grüße aus dem Anhang\r\n".encode()
QP_BODY = b"caf=C3=A9 a=3Db soft=\r\nbreak\r\nline two\r\n"
QP_DECODED = "café a=b softbreak\r\nline two".encode()  # the CRLF before a boundary is the boundary's


def _b64(data: bytes) -> bytes:
    text = base64.b64encode(data)
    return b"\r\n".join(text[i:i + 76] for i in range(0, len(text), 76)) + b"\r\n"


MULTIPART = (
    b"From: a@example.test\r\nTo: b@example.test\r\nSubject: binary\r\nMIME-Version: 1.0\r\n"
    b'Content-Type: multipart/mixed; boundary="outer"\r\n\r\n'
    b"--outer\r\nContent-Type: text/plain; charset=utf-8\r\n"
    b"Content-Transfer-Encoding: quoted-printable\r\n\r\n"
    + QP_BODY +
    b"--outer\r\nContent-Type: application/octet-stream\r\nContent-Transfer-Encoding: base64\r\n\r\n"
    + _b64(PAYLOAD) +
    b"--outer\r\nContent-Type: message/rfc822\r\n\r\n"
    b"Subject: inner\r\nMIME-Version: 1.0\r\n"
    b'Content-Type: multipart/alternative; boundary="inner"\r\n\r\n'
    b"--inner\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Transfer-Encoding: BASE64\r\n\r\n"
    + _b64(INNER_TEXT) +
    b"--inner\r\nContent-Type: text/html\r\nContent-Transfer-Encoding: 7bit\r\n\r\n<p>hi</p>\r\n"
    b"--inner--\r\n"
    b"--outer\r\nContent-Type: application/octet-stream\r\nContent-Transfer-Encoding: x-uuencode\r\n\r\n"
    b"begin 644 x\r\n#86)C\r\n`\r\nend\r\n"
    b"--outer--\r\n"
)
SINGLE = (b"From: a@example.test\r\nSubject: single\r\nMIME-Version: 1.0\r\n"
          b"Content-Type: application/octet-stream\r\nContent-Transfer-Encoding: base64\r\n\r\n"
          + _b64(PAYLOAD[:300]))
SINGLE_HEADER = SINGLE[:SINGLE.index(b"\r\n\r\n") + 4]


@pytest.fixture(scope="module")
def imapd(ca, tmp_path_factory):
    d = imap_daemon(tmp_path_factory.mktemp("binaryd"), ca)
    yield d
    d.stop()


@pytest.fixture(scope="module")
def raw(imapd, ca):
    """A session on a mailbox with MULTIPART (1) and SINGLE (2), both \\Seen-less."""
    user = new_account(imapd)
    m = login(imapd, ca, user)
    for message in (MULTIPART, SINGLE):
        typ, data = m.append("INBOX", None, None, message)
        assert typ == "OK", data
    m.logout()
    r = RawIMAP(imapd.imaps_port, tls=client_ctx(ca))
    assert r.cmd(b"l", f"LOGIN {user} password-123456".encode())[-1].startswith(b"l OK")
    assert r.cmd(b"s", b"SELECT INBOX")[-1].startswith(b"s OK")
    yield r
    r.close()


def _item(lines: list[bytes], name: bytes) -> tuple[bytes, bytes]:
    """(the literal's marker ``~{`` / ``{`` / ``"``, the value) of item ``name`` in a FETCH."""
    assert lines[-1].split(b" ")[1] == b"OK", lines
    text = b"".join(lines[:-1])
    at = text.index(name + b" ") + len(name) + 1
    m = re.compile(rb"(~?\{)(\d+)\}\r\n").match(text, at)
    if m:
        start = m.end()
        return m.group(1), text[start:start + int(m.group(2))]
    if text[at:at + 1] == b'"':
        end = text.index(b'"', at + 1)
        return b'"', text[at + 1:end]
    m = re.compile(rb"\d+").match(text, at)
    assert m, text
    return b"", m.group()


def test_capability_after_login_only(imapd, ca):
    r = RawIMAP(imapd.imaps_port, tls=client_ctx(ca))
    assert b"BINARY" not in r.cmd(b"c", b"CAPABILITY")[0].split()
    user = new_account(imapd)
    ok = r.cmd(b"l", f"LOGIN {user} password-123456".encode())[-1]
    assert b" BINARY " in ok
    r.close()


def test_base64_with_nul_is_literal8(raw):
    marker, value = _item(raw.cmd(b"a", b"FETCH 1 BINARY.PEEK[2]"), b"BINARY[2]")
    assert marker == b"~{"
    assert value == PAYLOAD


def test_binary_size_is_decoded_size(raw):
    lines = raw.cmd(b"a", b"FETCH 1 (BINARY.SIZE[2] BINARY.SIZE[1] BINARY.SIZE[3.1])")
    assert _item(lines, b"BINARY.SIZE[2]") == (b"", str(len(PAYLOAD)).encode())
    assert _item(lines, b"BINARY.SIZE[1]") == (b"", str(len(QP_DECODED)).encode())
    assert _item(lines, b"BINARY.SIZE[3.1]") == (b"", str(len(INNER_TEXT)).encode())


def test_quoted_printable_decoded_without_nul_is_a_plain_literal(raw):
    marker, value = _item(raw.cmd(b"a", b"FETCH 1 BINARY.PEEK[1]"), b"BINARY[1]")
    assert marker == b"{"
    assert value == QP_DECODED


def test_part_of_encapsulated_message(raw):
    """3 is message/rfc822 holding a multipart: 3.1 and 3.2 are that multipart's parts."""
    lines = raw.cmd(b"a", b"FETCH 1 (BINARY.PEEK[3.1] BINARY.PEEK[3.2])")
    assert _item(lines, b"BINARY[3.1]")[1] == INNER_TEXT
    assert _item(lines, b"BINARY[3.2]")[1] == b"<p>hi</p>"


def test_message_and_multipart_sections_are_sent_as_they_are(raw):
    """A message/rfc822 or multipart section has an identity CTE (RFC 2045 6.4): BINARY
    gives what BODY gives; the leaves inside keep their encodings."""
    lines = raw.cmd(b"a", b"FETCH 1 (BINARY.PEEK[3] BODY.PEEK[3])")
    body = _item(lines, b"BODY[3]")[1]
    assert _item(lines, b"BINARY[3]")[1] == body
    assert base64.b64encode(INNER_TEXT)[:40] in body


def test_partial_counts_decoded_octets(raw):
    lines = raw.cmd(b"a", b"FETCH 1 BINARY.PEEK[2]<250.50>")
    assert b"BINARY[2]<250> " in lines[0]
    assert _item(lines, b"BINARY[2]<250>") == (b"~{", PAYLOAD[250:300])
    # A range without a NUL in it: a plain string.
    lines = raw.cmd(b"b", b"FETCH 1 BINARY.PEEK[2]<65.10>")
    marker, value = _item(lines, b"BINARY[2]<65>")
    assert marker != b"~{" and value == PAYLOAD[65:75]
    lines = raw.cmd(b"c", b"FETCH 1 BINARY.PEEK[2]<5000.10>")
    assert _item(lines, b"BINARY[2]<5000>") == (b'"', b"")


def test_unknown_cte_is_no_unknown_cte(raw):
    for i, item in enumerate((b"BINARY.PEEK[4]", b"BINARY.SIZE[4]")):
        tag = b"u%d" % i
        last = raw.cmd(tag, b"FETCH 1 " + item)[-1]
        assert last.startswith(tag + b" NO [UNKNOWN-CTE]"), last
    # BODY of the same part is fine: it is not decoded.
    assert raw.cmd(b"v", b"FETCH 1 BODY.PEEK[4]")[-1].startswith(b"v OK")


def test_whole_message(raw):
    lines = raw.cmd(b"a", b"FETCH 2 BINARY.PEEK[]")
    assert _item(lines, b"BINARY[]") == (b"~{", SINGLE_HEADER + PAYLOAD[:300])
    lines = raw.cmd(b"b", b"FETCH 1 (BINARY.PEEK[] BODY.PEEK[])")
    assert _item(lines, b"BINARY[]")[1] == _item(lines, b"BODY[]")[1] == MULTIPART


def test_missing_part_is_empty(raw):
    assert _item(raw.cmd(b"a", b"FETCH 1 BINARY.PEEK[9]"), b"BINARY[9]") == (b'"', b"")


def test_binary_sets_seen_and_peek_does_not(raw):
    lines = raw.cmd(b"a", b"FETCH 2 (BINARY.PEEK[1] FLAGS)")
    assert b"\\Seen" not in lines[0]
    lines = raw.cmd(b"b", b"FETCH 2 BINARY[1]")
    assert b"\\Seen" in b"".join(lines)


def test_uid_fetch_binary(raw):
    lines = raw.cmd(b"a", b"UID FETCH 1:* (BINARY.PEEK[2])")
    assert b"UID 1 " in lines[0]
    assert _item(lines, b"BINARY[2]") == (b"~{", PAYLOAD)


def test_append_literal8_then_binary(imapd, ca):
    """APPEND takes literal8 (RFC 3516 4.4); what went in comes out of BINARY."""
    user = new_account(imapd)
    r = RawIMAP(imapd.imaps_port, tls=client_ctx(ca))
    r.cmd(b"l", f"LOGIN {user} password-123456".encode())
    message = (b"Subject: bin\r\nContent-Type: application/octet-stream\r\n"
               b"Content-Transfer-Encoding: binary\r\n\r\n" + b"\x00\x01\xff\r\n")
    r.send(b"a APPEND INBOX ~{%d+}\r\n" % len(message) + message + b"\r\n")
    assert r.read_until_tagged(b"a")[-1].startswith(b"a OK")
    r.cmd(b"s", b"SELECT INBOX")
    assert _item(r.cmd(b"f", b"FETCH 1 BINARY.PEEK[1]"), b"BINARY[1]") == (b"~{", b"\x00\x01\xff\r\n")
    r.close()


# ---------------------------------------------------------------- the decoder alone


def test_base64_is_lenient():
    assert decode_base64(b"aGVs\r\nbG8=\r\n") == b"hello"
    assert decode_base64(b"aGVs bG8") == b"hello"  # no padding
    assert decode_base64(b"aGVsbG8=junk after pad") == b"hello"
    assert decode_base64(b"a") == b""


def test_decode_encodings():
    assert decode(b"a=3Db", b"QUOTED-PRINTABLE") == b"a=b"
    assert decode(b"x\x00y", b"BINARY") == b"x\x00y"
    with pytest.raises(UnknownCTE):
        decode(b"x", b"X-UUENCODE")


def test_binary_section_unit():
    assert binary_section(MULTIPART, Section((2,))) == PAYLOAD
    assert binary_section(MULTIPART, Section((1,))) == QP_DECODED
    assert binary_section(SINGLE, Section((1,))) == PAYLOAD[:300]
    assert binary_section(SINGLE, Section((7,))) == b""
