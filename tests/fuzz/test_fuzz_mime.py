"""Property tests of BODYSTRUCTURE, ENVELOPE and BODY[section] (imap/mime.py)."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from tests.fuzz import checks, grammar
from tests.fuzz.profiles import FUZZ


@FUZZ
@given(grammar.mime_message(), grammar.section_paths, grammar.field_names)
def test_mime_structure(data: bytes, paths: list[tuple[int, ...]], fields: list[str]) -> None:
    """Valid IMAP syntax (balanced parentheses and quotes, exact literals), the body grammar
    of RFC 3501, bounded depth, sizes equal to the section octets."""
    checks.check_mime(data, paths, fields)


@FUZZ
@given(st.binary(max_size=400))
def test_mime_random_bytes(data: bytes) -> None:
    checks.check_mime(b"Content-Type: multipart/mixed; boundary=b\r\n\r\n--b\r\n" + data)
    checks.check_mime(data)
