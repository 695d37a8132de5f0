"""Minimal failing examples the fuzzers found, as explicit test cases (one per fix)."""

from __future__ import annotations

import pytest

from mailserver.imap import framing
from mailserver.pipeline import dmarc
from tests.fuzz import checks, keys


def test_overlong_line_tag_does_not_depend_on_the_split() -> None:
    """Found by fuzzing: with a line limit below the tag length the BAD carried the tag cut
    at the limit when the line arrived in pieces, the whole tag when it arrived at once."""
    limits = framing.Limits(max_line_length=32)
    stream = b"x" * 40 + b" UID EXPUNGE 1\r\n"
    whole = checks.imap_transcript(limits, [stream])
    assert checks.imap_transcript(limits, checks.split(stream, [1])) == whole
    assert [e.error.tag for e in whole] == [None]
    short = checks.imap_transcript(limits, checks.split(b"a1 NOOP " + b"y" * 40 + b"\r\n", [1]))
    assert [e.error.tag for e in short] == ["a1"]


@pytest.mark.parametrize(
    "txt",
    ["v=DMARC1; p=reject; pct=\u00b2", "v=DMARC1; p=reject; ri=\u00b2", "v=DMARC1; p=reject; pct=\u0661"],
)
def test_dmarc_unicode_digits_are_not_numbers(txt: str) -> None:
    """Found by fuzzing: pct=\u00b2 passed str.isdigit() and then int() raised ValueError, out of
    the DMARC check of every message from a domain publishing such a record."""
    checks.check_dmarc_record(txt)
    if "pct" in txt:
        with pytest.raises(dmarc.DMARCRecordError):
            dmarc.parse_dmarc_record(txt)
    else:
        assert dmarc.parse_dmarc_record(txt).ri == 86400


def test_dkim_header_section_starting_with_whitespace() -> None:
    """Found by fuzzing: a header section whose first line starts with a space made dkimpy's
    parser raise IndexError, out of verify_dkim and out of the inbound checks."""
    key = {"sel._domainkey.example.org": b"v=DKIM1; k=rsa; p=" + keys.public_keys()["rsa"]}
    results = checks.check_dkim_message(b" \r\nDKIM-Signature: \r\n\r\nbody\r\n", key)
    assert [(r.result, r.reason) for r in results] == [("permerror", "malformed header section")]
