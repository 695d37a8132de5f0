"""Authentication-Results: building, quoting, folding, and stripping forged ones."""

from __future__ import annotations

import email
import email.policy

import pytest

from mailserver.message import field_spans, field_value, header_end
from mailserver.pipeline.authresults import (
    ResInfo,
    authserv_id,
    build_authentication_results,
    format_header,
    pvalue,
    strip_forged,
)
from mailserver.pipeline.dkim_verify import DKIMResult
from mailserver.pipeline.dmarc import DMARCRecord, DMARCResult
from mailserver.pipeline.spf import SPFResult

HOST = "mx.example.org"

SPF_PASS = SPFResult("pass", "example.com", "mailfrom", "alice@example.com", "sender SPF authorized")
DKIM_PASS = DKIMResult("pass", "example.com", "sel1", "rsa-sha256", "AbC/dEf+GhI1")
DMARC_PASS = DMARCResult(
    "pass", "example.com", "example.com", DMARCRecord(p="reject"), "reject", "none", True, True
)


def unfold(header: bytes) -> str:
    return header.decode().replace("\r\n\t", " ").replace("\r\n", "")


def lines(header: bytes) -> list[str]:
    assert header.endswith(b"\r\n")
    return header.decode().split("\r\n")[:-1]


# ----------------------------------------------------------------- values


@pytest.mark.parametrize(
    ("raw", "out"),
    [
        ("example.com", "example.com"),
        ("rsa-sha256", "rsa-sha256"),
        ("alice@example.com", "alice@example.com"),
        ("@example.com", "@example.com"),
        ("a.b+tag@example.com", "a.b+tag@example.com"),
        ("AbC/dEf+GhI1", '"AbC/dEf+GhI1"'),  # "/" is a tspecial
        ("has space", '"has space"'),
        ('say "hi"\\', '"say \\"hi\\"\\\\"'),
        ("evil\r\nX-Injected: yes", '"evil X-Injected: yes"'),
        ("tab\there", '"tab here"'),
        ("", '""'),
        ("a" * 300, "a" * 256),
        ('"quoted"@example.com', '"\\"quoted\\"@example.com"'),
    ],
)
def test_pvalue(raw: str, out: str) -> None:
    assert pvalue(raw) == out


# ----------------------------------------------------------------- building


def test_full_header() -> None:
    header = build_authentication_results(HOST, spf=SPF_PASS, dkim=[DKIM_PASS], dmarc=DMARC_PASS)
    assert lines(header) == [
        "Authentication-Results: mx.example.org;",
        "\tspf=pass smtp.mailfrom=alice@example.com;",
        "\tdkim=pass header.d=example.com header.s=sel1 header.a=rsa-sha256",
        '\t  header.b="AbC/dEf+GhI1";',
        "\tdmarc=pass (p=reject dis=none) header.from=example.com",
    ]


def test_header_parses_as_one_field() -> None:
    header = build_authentication_results(HOST, spf=SPF_PASS, dkim=[DKIM_PASS, DKIM_PASS], dmarc=DMARC_PASS)
    parsed = email.message_from_bytes(header + b"Subject: x\r\n\r\nbody", policy=email.policy.default)
    values = parsed.get_all("Authentication-Results")
    assert len(values) == 1
    assert " ".join(values[0].split()).startswith("mx.example.org; spf=pass")
    assert values[0].count("dkim=pass") == 2
    assert parsed["Subject"] == "x"


def test_unsigned_is_dkim_none_and_off_checks_are_absent() -> None:
    header = build_authentication_results(HOST, spf=None, dkim=[], dmarc=None)
    assert unfold(header) == "Authentication-Results: mx.example.org; dkim=none"
    header = build_authentication_results(HOST, spf=SPF_PASS, dkim=None, dmarc=None)
    assert "dkim" not in unfold(header) and "dmarc" not in unfold(header)


def test_nothing_checked_is_none() -> None:
    assert build_authentication_results(HOST, spf=None, dkim=None, dmarc=None) == (
        b"Authentication-Results: mx.example.org; none\r\n"
    )


def test_helo_identity_and_reasons() -> None:
    spf = SPFResult("fail", "helo.example", "helo", "helo.example", "SPF fail - not authorized")
    dkim = DKIMResult("fail", "example.com", "s", "ed25519-sha256", "xyz", "body hash mismatch")
    dmarc = DMARCResult("fail", "example.com", "example.com", DMARCRecord(p="reject"), "reject", "reject")
    text = unfold(build_authentication_results(HOST, spf=spf, dkim=[dkim], dmarc=dmarc))
    assert 'spf=fail reason="SPF fail - not authorized" smtp.helo=helo.example;' in text
    assert 'dkim=fail reason="body hash mismatch" header.d=example.com' in text
    assert "dmarc=fail (p=reject dis=reject)" in text


def test_dmarc_without_record_has_no_comment() -> None:
    dmarc = DMARCResult("none", "example.com", reason="no DMARC record")
    text = unfold(build_authentication_results(HOST, spf=None, dkim=None, dmarc=dmarc))
    expected = 'dmarc=none reason="no DMARC record" header.from=example.com'
    assert text == "Authentication-Results: mx.example.org; " + expected


def test_folding_keeps_lines_short() -> None:
    domain, selector = "a-rather-long-signing-domain.example.com", "selector-2026-november"
    dkim = DKIMResult("fail", domain, selector, "rsa-sha256", "AbCdEfGhIjKl", "signature did not verify")
    header = build_authentication_results(HOST, spf=SPF_PASS, dkim=[dkim, dkim], dmarc=DMARC_PASS)
    for line in lines(header):
        assert len(line.expandtabs(8)) <= 78, line
    assert unfold(header).count("header.s=selector-2026-november") == 2


def test_attacker_data_cannot_inject_headers() -> None:
    sender = "a@x.example\r\nAuthentication-Results: mx.example.org; dkim=pass"
    spf = SPFResult("fail", "x.example", "mailfrom", sender, "exp\r\n\r\nbody")
    dkim = DKIMResult("fail", "d.example\r\nX: y", "s\n", "rsa-sha256", "b\r", "why (not)\\")
    header = build_authentication_results(HOST, spf=spf, dkim=[dkim], dmarc=None)
    raw = header.decode()
    # Every line break is ours: CRLF followed by a tab (folding) or the final CRLF.
    assert raw.count("\r\n") == raw.count("\r\n\t") + 1
    assert "\n" not in raw.replace("\r\n", "")
    assert "\r" not in raw.replace("\r\n", "")
    parsed = email.message_from_bytes(header + b"\r\nbody", policy=email.policy.default)
    assert len(parsed.get_all("Authentication-Results")) == 1
    assert parsed.get("X") is None


def test_comment_cannot_be_broken() -> None:
    info = ResInfo("dmarc", "fail", comment="p=reject) dkim=pass (x")
    assert "(p=reject  dkim=pass  x)" in format_header(HOST, [info]).decode()


# ----------------------------------------------------------------- header helpers


def test_header_end() -> None:
    assert header_end(b"A: 1\r\nB: 2\r\n\r\nbody") == 12
    assert header_end(b"A: 1\nB: 2\n\nbody") == 10
    assert header_end(b"\r\nbody") == 0
    assert header_end(b"A: 1\r\n") == 6  # no body at all


def test_field_spans_and_values() -> None:
    data = b"From: a@example.com\r\nSubject: one\r\n two\r\nfrom : b@x\r\n\r\nFrom: body@not.header\r\n"
    spans = field_spans(data, "From")
    assert len(spans) == 2
    assert field_value(data, spans[0]) == " a@example.com"
    assert field_value(data, field_spans(data, "Subject")[0]) == " one two"
    assert data[slice(*spans[1])] == b"from : b@x\r\n"


# ----------------------------------------------------------------- authserv-id


@pytest.mark.parametrize(
    ("value", "ident"),
    [
        (" mx.example.org; spf=pass", "mx.example.org"),
        (" mx.example.org 1; spf=pass", "mx.example.org"),  # with version
        ("mx.example.org;none", "mx.example.org"),
        (' "mx.example.org"; none', "mx.example.org"),
        (" (comment) mx.example.org; none", "mx.example.org"),
        (" (nested (comment)) mx.example.org; none", "mx.example.org"),
        (" MX.Example.ORG; none", "MX.Example.ORG"),
        (" (unterminated mx.example.org; none", None),
        ("   ", None),
    ],
)
def test_authserv_id(value: str, ident: str | None) -> None:
    assert authserv_id(value) == ident


# ----------------------------------------------------------------- stripping


def test_strip_forged_removes_only_ours() -> None:
    data = (
        b"Received: from x\r\n"
        b"Authentication-Results: mx.example.org; dkim=pass header.d=bank.example\r\n"
        b"Authentication-Results: other.example; spf=fail\r\n"
        b"authentication-results : MX.EXAMPLE.ORG.;\r\n"
        b"\tdmarc=pass header.from=bank.example\r\n"
        b'Authentication-Results: (sneaky) "mx.example.org"; dkim=pass\r\n'
        b"Subject: hi\r\n"
        b"\r\n"
        b"Authentication-Results: mx.example.org; this is the body\r\n"
    )
    out = strip_forged(data, HOST)
    assert out == (
        b"Received: from x\r\n"
        b"Authentication-Results: other.example; spf=fail\r\n"
        b"Subject: hi\r\n"
        b"\r\n"
        b"Authentication-Results: mx.example.org; this is the body\r\n"
    )


def test_strip_forged_first_and_last_header() -> None:
    data = (
        b"Authentication-Results: mx.example.org; none\r\n"
        b"Subject: x\r\n"
        b"Authentication-Results: mx.example.org;\r\n none\r\n"
        b"\r\nbody"
    )
    assert strip_forged(data, HOST) == b"Subject: x\r\n\r\nbody"


def test_strip_forged_without_body() -> None:
    data = b"Subject: x\r\nAuthentication-Results: mx.example.org; none\r\n"
    assert strip_forged(data, HOST) == b"Subject: x\r\n"


def test_strip_forged_keeps_similar_hosts() -> None:
    data = (
        b"Authentication-Results: mx.example.org.evil; none\r\n"
        b"Authentication-Results: xmx.example.org; none\r\n"
        b"X-Authentication-Results: mx.example.org; none\r\n"
        b"\r\n"
    )
    assert strip_forged(data, HOST) == data


def test_strip_forged_returns_same_object_when_nothing_to_do() -> None:
    data = b"Subject: x\r\n\r\n" + b"y" * 1000
    assert strip_forged(data, HOST) is data


def test_strip_forged_unparsable_but_ours() -> None:
    data = b"Authentication-Results: mx.example.org (unterminated; dkim=pass\r\n\r\nbody"
    assert strip_forged(data, HOST) == b"\r\nbody"


def test_strip_then_prepend_roundtrip() -> None:
    original = b"Authentication-Results: mx.example.org; dkim=pass\r\nFrom: a@example.com\r\n\r\nbody\r\n"
    ours = build_authentication_results(HOST, spf=SPF_PASS, dkim=[], dmarc=None)
    final = ours + strip_forged(original, HOST)
    parsed = email.message_from_bytes(final, policy=email.policy.default)
    (value,) = parsed.get_all("Authentication-Results")
    assert "spf=pass" in value and "dkim=none" in value
