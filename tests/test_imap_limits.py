"""Counts with no cap before: LIST pattern wildcards (regex backtracking), mailboxes and
subscriptions per account."""

from __future__ import annotations

import random
import re
from pathlib import Path

import pytest

from mailserver.imap.mailboxes import MailboxError, MailboxTree, pattern_matches
from mailserver.storage.maildirpp import create_maildirpp
from tests.support.imap import imap_daemon, login, new_account


def regex_reference(pattern: str, name: str) -> bool:
    """The old implementation: right, but exponential on many wildcards."""
    rx = "".join(".*" if c == "*" else "[^.]*" if c == "%" else re.escape(c) for c in pattern)
    return re.fullmatch(rx, name, re.DOTALL) is not None


def test_list_pattern_matcher_agrees_with_the_regex() -> None:
    rng = random.Random(7)
    for _ in range(20000):
        pattern = "".join(rng.choice("ab.*%") for _ in range(rng.randrange(0, 7)))
        name = "".join(rng.choice("ab.") for _ in range(rng.randrange(0, 7)))
        assert pattern_matches("", pattern, name) == regex_reference(pattern, name), (pattern, name)
    assert pattern_matches("Work.", "%", "Work.Reports")
    assert not pattern_matches("Work.", "%", "Work.Reports.2026")
    assert pattern_matches("", "inbox", "INBOX")


@pytest.mark.timeout(20)
def test_list_pattern_with_many_wildcards_does_not_backtrack() -> None:
    # With the regex, 8 stars against 60 characters took 30 s; this took for ever.
    assert not pattern_matches("", "*a" * 40 + "b", "a" * 200)
    assert not pattern_matches("", "%a" * 40 + "b", "a" * 200)
    assert pattern_matches("", "*a" * 40 + "*", "a" * 200)
    assert not pattern_matches("", "*%" * 20000 + "x", "a" * 200)


def test_mailboxes_and_subscriptions_are_capped(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    create_maildirpp(tmp_path, durable=False)  # with the special-use folders
    tree = MailboxTree(tmp_path)
    base = len(tree.names()) - 1
    monkeypatch.setattr(MailboxTree, "max_folders", base + 4)
    tree.create("Work.Reports")  # two: Work and Work.Reports
    tree.create("Lists")
    with pytest.raises(MailboxError) as exc:
        tree.create("A.B")  # two more would be one too many
    assert exc.value.code == "LIMIT"
    tree.create("Family")  # the last one
    with pytest.raises(MailboxError):
        tree.create("Other")
    assert len(tree.names()) == 1 + base + 4
    monkeypatch.setattr(MailboxTree, "max_folders", len(tree.subscriptions()) + 2)
    tree.subscribe("x1")
    tree.subscribe("x2")
    with pytest.raises(MailboxError) as exc:
        tree.subscribe("x3")
    assert exc.value.code == "LIMIT"
    tree.subscribe("x1")  # already subscribed: fine


def test_imap_create_past_max_folders_is_no_limit(ca, tmp_path: Path) -> None:
    d = imap_daemon(tmp_path, ca, imap={"max_folders": 7})  # 5 special-use folders + 2
    try:
        user = new_account(d)
        m = login(d, ca, user)
        typ, folders = m.list()
        assert typ == "OK" and len(folders) == 6, folders  # INBOX Archive Drafts Junk Sent Trash
        assert m.create("One")[0] == "OK"
        assert m.create("Two")[0] == "OK"
        typ, data = m.create("Three")
        assert typ == "NO" and data[0].startswith(b"[LIMIT]"), data
        assert m.noop()[0] == "OK"
        m.logout()
    finally:
        d.stop()


def events_of(conn, data: bytes) -> list:
    from mailserver.imap.framing import NEED_DATA

    conn.receive_data(data)
    out = []
    while (event := conn.next_event()) is not NEED_DATA:
        out.append(event)
    return out


def test_literals_per_command_are_capped_and_the_rest_is_discarded() -> None:
    from mailserver.imap.framing import CommandError, CommandReceived, IMAPConnection, Limits

    conn = IMAPConnection(Limits(max_literals=10))
    ok = b"a SEARCH" + b" SUBJECT {1+}\r\nx" * 10 + b"\r\n"
    (event,) = events_of(conn, ok)
    assert isinstance(event, CommandReceived)
    too_many = b"b SEARCH" + b" SUBJECT {1+}\r\nx" * 5000 + b"\r\nc NOOP\r\n"
    events = events_of(conn, too_many)
    assert isinstance(events[0], CommandError) and events[0].error.code == "LIMIT"
    assert "more than 10 literals" in str(events[0].error)
    # Nothing of the refused command is read as a command; the next one is.
    assert [e.command.name for e in events[1:] if isinstance(e, CommandReceived)] == ["NOOP"]
    assert all(isinstance(e, CommandReceived) for e in events[1:]), events[1:]


def test_commands_other_than_append_have_their_own_size_cap() -> None:
    from mailserver.imap.framing import CommandError, CommandReceived, IMAPConnection, Limits

    conn = IMAPConnection(Limits(max_line_length=8192, max_small_command=64 * 1024, max_literals=10_000))
    line = b" SUBJECT " + b"y" * 4000
    big = b"a SEARCH" + (line + b" SUBJECT {0+}\r\n") * 40 + b"ALL\r\nb NOOP\r\n"  # 160 KB of criteria
    events = events_of(conn, big)
    assert isinstance(events[0], CommandError) and events[0].error.code == "TOOBIG"
    assert [e.command.name for e in events if isinstance(e, CommandReceived)] == ["NOOP"]
    # APPEND keeps the big limit.
    msg = b"z" * 200_000
    (event,) = events_of(conn, b"c APPEND INBOX {%d+}\r\n" % len(msg) + msg + b"\r\n")
    assert isinstance(event, CommandReceived)


def test_id_fields_and_values_are_bounded_as_rfc_2971_says() -> None:
    from mailserver.imap.commands import parse_command
    from mailserver.imap.errors import IMAPParseError

    assert parse_command(b'a ID ("name" "' + b"v" * 1024 + b'")\r\n').params[0][1] == "v" * 1024
    for bad in (b'a ID ("name" "' + b"v" * 1025 + b'")\r\n', b'a ID ("' + b"n" * 31 + b'" "x")\r\n',
                b'a ID ("name" {5000+}\r\n' + b"v" * 5000 + b")\r\n"):
        with pytest.raises(IMAPParseError, match="RFC 2971"):
            parse_command(bad)


def test_search_criteria_are_capped() -> None:
    from mailserver.imap.commands import parse_command
    from mailserver.imap.errors import IMAPParseError
    from mailserver.imap.searchkeys import MAX_KEYS

    parse_command(b"a SEARCH" + b" SEEN" * MAX_KEYS + b"\r\n")
    with pytest.raises(IMAPParseError, match="search criteria"):
        parse_command(b"a SEARCH" + b" SEEN" * (MAX_KEYS + 1) + b"\r\n")
    with pytest.raises(IMAPParseError, match="search criteria"):
        parse_command(b"a SEARCH" + b" (OR SEEN DRAFT)" * 400 + b"\r\n")  # 1,200 with the ORs
