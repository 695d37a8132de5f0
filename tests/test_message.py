"""mailserver.message: the one header cut, field reader and From parser every stage uses."""

from __future__ import annotations

import itertools
import re

from mailserver.message import body_start, field_values, header_end, split_header

_BLANK = re.compile(rb"\n\r?\n")


def _reference(data: bytes, start: int, end: int) -> tuple[int, int]:
    """(header end, body start) by the rule written as a regex: the first line, or the
    first "\\n\\n" / "\\n\\r\\n", is the empty line."""
    if data.startswith(b"\r\n", start, end):
        return start, start + 2
    if data.startswith(b"\n", start, end):
        return start, start + 1
    m = _BLANK.search(data, start, end)
    return (m.start() + 1, m.end()) if m else (end, end)


def test_header_cut_matches_the_rule_on_every_short_string() -> None:
    for n in range(7):
        for t in itertools.product((b"a", b"\r", b"\n", b" "), repeat=n):
            data = b"".join(t)
            for start in range(n + 1):
                for end in range(start, n + 1):
                    want = _reference(data, start, end)
                    assert (header_end(data, start, end), body_start(data, start, end)) == want
            cut = _reference(data, 0, n)[1]
            assert split_header(data) == (data[:cut], data[cut:])


def test_field_values() -> None:
    head = b"From: a@b\r\nSubject: x\r\n\ty\r\nfrom : c@d\r\n\r\nFrom: body@x\r\n"
    assert field_values(head, "From") == [" a@b", " c@d"]
    assert field_values(head, "subject") == [" x\ty"]
    assert field_values(head, "Date") == []
    # end= reads exactly that much as header (submission passes an already-cut block)
    assert field_values(b"\r\nFrom: a@b\r\n", "From") == []
    assert field_values(b"\r\nFrom: a@b\r\n", "From", 13) == [" a@b"]
