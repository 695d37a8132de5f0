"""Minimal failing examples the fuzzers found, as explicit test cases (one per fix)."""

from __future__ import annotations

from mailserver.imap import framing
from tests.fuzz import checks


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
