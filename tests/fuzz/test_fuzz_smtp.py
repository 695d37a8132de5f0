"""Property tests of the sans-I/O SMTP core and the address parser (see checks.py)."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from mailserver.smtp.protocol import MessageReceived, ServerParams
from tests.fuzz import checks, grammar
from tests.fuzz.profiles import FUZZ


@FUZZ
@given(grammar.smtp_params, grammar.smtp_session(), grammar.chunk_sizes)
def test_smtp_session_any_split(params: ServerParams, stream: bytes, sizes: list[int]) -> None:
    """Replies always have a code and an enhanced code, the state machine stays consistent,
    DATA never carries bare CR/LF, and the transcript does not depend on the split."""
    checks.check_smtp(params, stream, sizes)


@FUZZ
@given(grammar.smtp_params, st.binary(max_size=300), grammar.chunk_sizes)
def test_smtp_random_bytes(params: ServerParams, stream: bytes, sizes: list[int]) -> None:
    checks.check_smtp(
        params, b"EHLO c.example\r\nMAIL FROM:<a@b.example>\r\nRCPT TO:<c@d.example>\r\n" + stream, sizes
    )


_LINES = st.lists(
    st.sampled_from([b"", b".", b"..", b".x", b"a", b"x" * 50, b"\xc3\xa9", b" .", b"\t"]), max_size=10
)


@FUZZ
@given(_LINES, grammar.chunk_sizes)
def test_smtp_data_transparency(lines: list[bytes], sizes: list[int]) -> None:
    """Content dot-stuffed by the client comes out exactly as it went in (RFC 5321 4.5.2)."""
    content = b"".join(line + b"\r\n" for line in lines)
    stuffed = b"".join((b"." + line if line.startswith(b".") else line) + b"\r\n" for line in lines)
    stream = (
        b"EHLO c.example\r\nMAIL FROM:<a@b.example>\r\nRCPT TO:<c@d.example>\r\nDATA\r\n"
        + stuffed
        + b".\r\nQUIT\r\n"
    )
    events, _out = checks.smtp_transcript(ServerParams("mx.example"), checks.split(stream, sizes))
    received = [e.data for e in events if isinstance(e, MessageReceived)]
    assert received == [content]


@FUZZ
@given(grammar.paths(), st.booleans(), st.booleans())
def test_address_grammar(text: str, utf8: bool, allow_empty: bool) -> None:
    checks.check_address(text, utf8=utf8, allow_empty=allow_empty)


@FUZZ
@given(st.text(max_size=40), st.booleans())
def test_address_random_text(text: str, utf8: bool) -> None:
    checks.check_address(text, utf8=utf8, allow_empty=True)
    checks.check_address(f"<{text}>", utf8=utf8, allow_empty=True)
