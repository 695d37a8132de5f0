"""Property tests of the DKIM, DMARC and SPF record handling and DNS TXT rendering."""

from __future__ import annotations

from typing import Any

import dkim
from hypothesis import given
from hypothesis import strategies as st

from tests.fuzz import checks, grammar, keys
from tests.fuzz.profiles import FUZZ

_KEYS = keys.public_keys()


@FUZZ
@given(grammar.dkim_signature(), grammar.dkim_key_record(_KEYS))
def test_dkim_tag_lists(sig: bytes, key: bytes) -> None:
    """Malformed signatures and key records are verdicts, never exceptions."""
    checks.check_dkim_tags(sig, key)


@FUZZ
@given(st.binary(max_size=200), st.binary(max_size=200))
def test_dkim_tag_lists_random(sig: bytes, key: bytes) -> None:
    checks.check_dkim_tags(b"v=1; a=rsa-sha256; d=x.example; s=s; h=from; bh=AA==; b=AA==; " + sig, key)
    checks.check_dkim_tags(sig, key)


@FUZZ
@given(grammar.dkim_bodies, st.sampled_from(["simple", "relaxed"]), st.one_of(st.none(), st.integers(0, 200)))
def test_dkim_body_hash_matches_dkimpy(body: bytes, canon: str, limit: int | None) -> None:
    checks.check_dkim_body_hash(body, canon, limit)


_MESSAGE = b"From: a@example.org\r\nTo: b@example.net\r\nSubject: hi\r\n\r\nHello\r\n.\r\n\r\n"


@FUZZ
@given(st.sampled_from([b"simple/simple", b"relaxed/relaxed", b"relaxed/simple"]), st.data())
def test_dkim_signed_message(canon: bytes, data: Any) -> None:
    """A message signed by dkimpy passes; mutated copies and mutated signatures give a
    verdict (never an exception)."""
    sig = dkim.sign(
        _MESSAGE,
        b"sel",
        b"example.org",
        keys.rsa_private_pem(),
        canonicalize=tuple(canon.split(b"/")),
        include_headers=[b"from", b"to", b"subject"],
    )
    key = {"sel._domainkey.example.org": b"v=DKIM1; k=rsa; p=" + _KEYS["rsa"]}
    signed = sig + _MESSAGE
    assert [r.result for r in checks.check_dkim_message(signed, key)] == ["pass"]
    mutated = data.draw(grammar.mutate(signed, 3))
    results = checks.check_dkim_message(mutated, key)
    if mutated == signed:
        assert [r.result for r in results] == ["pass"]
    extra = data.draw(grammar.dkim_signature())
    checks.check_dkim_message(b"DKIM-Signature: " + extra + b"\r\n" + signed, key)


@FUZZ
@given(grammar.dmarc_record())
def test_dmarc_record(txt: str) -> None:
    checks.check_dmarc_record(txt)


@FUZZ
@given(st.text(max_size=60))
def test_dmarc_record_random(txt: str) -> None:
    checks.check_dmarc_record("v=DMARC1; " + txt)
    checks.check_dmarc_record(txt)


@FUZZ
@given(st.one_of(grammar.from_value(), st.binary(max_size=60)))
def test_dmarc_from_header(value: bytes) -> None:
    checks.check_from_header(value)


@FUZZ
@given(
    grammar.spf_record(),
    grammar.spf_extra,
    st.sampled_from(["192.0.2.1", "192.0.2.99", "2001:db8::1", "::ffff:192.0.2.1", "bogus"]),
    st.sampled_from(["a@example.org", "postmaster@example.org", "x@%{d}.example.org"]),
    st.sampled_from(["mx.example.org", "[192.0.2.1]", ""]),
)
def test_spf_wrapper(record: bytes, extra: dict[Any, Any], ip: str, sender: str, helo: str) -> None:
    """pyspf through our DNS dispatcher: every record gives one of the RFC 7208 results."""
    checks.check_spf(record, extra, ip, sender, helo)


@FUZZ
@given(st.text(max_size=600))
def test_txt_rendering(value: str) -> None:
    checks.check_txt_rendering(value)


@FUZZ
@given(st.binary(max_size=200), grammar.dkim_signature())
def test_dkim_random_header_section(junk: bytes, sig: bytes) -> None:
    """Whatever the header section looks like, verify_dkim gives verdicts, not exceptions."""
    key = {"sel._domainkey.example.org": b"v=DKIM1; k=rsa; p=" + _KEYS["rsa"]}
    checks.check_dkim_message(b"DKIM-Signature: " + sig + b"\r\n" + junk + b"\r\n\r\nbody\r\n", key)
    checks.check_dkim_message(junk + b"\r\nDKIM-Signature: " + sig + b"\r\n\r\nbody\r\n", key)
