"""pipeline/trace.py: where the header ends for the hop count and the From check."""

from __future__ import annotations

import pytest

from mailserver.pipeline.trace import count_received, header_section


@pytest.mark.parametrize("eol", [b"\r\n", b"\n"])
def test_received_fields_are_counted_in_the_header_only(eol: bytes) -> None:
    # RFC 5321 6.3 counts Received fields; a quoted message in the body has its own.
    lines = [b"Received: from a", b"received : from b", b"\tby c", b"Subject: s", b"",
             b"Received: from quoted", b"Received: from quoted"]
    data = eol.join(lines) + eol
    assert count_received(data) == 2
    assert header_section(data) == eol.join(lines[:4]) + eol


def test_header_section_edges() -> None:
    # No empty line: all of it is header. An empty first line: there is no header.
    assert header_section(b"Subject: s\r\nX: 1") == b"Subject: s\r\nX: 1"
    assert header_section(b"\r\nReceived: x\r\n\r\nbody\r\n") == b""
    assert count_received(b"\r\nReceived: x\r\n\r\nbody\r\n") == 0
    # A bare-LF line before a CRLF empty line: the header ends there, as it does for the
    # next hop once every line end is CRLF (remote delivery's canonical_crlf).
    assert header_section(b"Subject: s\nReceived: x\n\r\nReceived: y\r\n") == b"Subject: s\nReceived: x\n"
