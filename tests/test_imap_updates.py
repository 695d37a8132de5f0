"""When a session hears of other sessions' changes (RFC 3501 7.4.1, RFC 9051 7.5.1).

Each test has two sessions on one INBOX: ``a`` changes it, ``b`` must hear of it only
inside the response to a command, before that command's tagged line, and EXPUNGE never
during FETCH, STORE, SEARCH or COPY by sequence number.
"""

from __future__ import annotations

import re

import pytest

from tests.support.imap import PASSWORD, RawIMAP, client_ctx, imap_daemon, new_account


@pytest.fixture(scope="module")
def imapd(ca, tmp_path_factory):
    d = imap_daemon(tmp_path_factory.mktemp("imapd"), ca)
    yield d
    d.stop()


def _pair(imapd, ca, messages: int = 3) -> tuple[RawIMAP, RawIMAP]:
    user = new_account(imapd)
    a = RawIMAP(imapd.imaps_port, tls=client_ctx(ca))
    b = RawIMAP(imapd.imaps_port, tls=client_ctx(ca))
    a.cmd(b"l", f"LOGIN {user} {PASSWORD}".encode())
    a.cmd(b"c", b"CREATE Other")
    for i in range(messages):
        body = f"Subject: m{i}\r\n\r\nbody {i}\r\n".encode()
        a.cmd(b"p", b"APPEND INBOX {%d+}\r\n" % len(body) + body)
    b.cmd(b"l", f"LOGIN {user} {PASSWORD}".encode())
    for c in (a, b):
        c.cmd(b"s", b"SELECT INBOX")
    return a, b


def _expunge_first(a: RawIMAP) -> None:
    a.cmd(b"a1", b"STORE 1 +FLAGS.SILENT (\\Deleted)")
    assert any(b"EXPUNGE" in line for line in a.cmd(b"a2", b"EXPUNGE"))


def _nothing_more(c: RawIMAP) -> bytes:
    """What the server sent after the last tagged response (nothing, if it obeys 7.4.1)."""
    c.sock.settimeout(0.3)
    try:
        return c.buf + c.sock.recv(65536)
    except TimeoutError:
        return c.buf
    finally:
        c.sock.settimeout(10)


@pytest.mark.parametrize("command", [b'LIST "" "*"', b"STATUS Other (MESSAGES)",
                                     b"APPEND Other {11+}\r\nSubject: \r\n", b"NOOP", b"CHECK",
                                     b"UID FETCH 1:* (FLAGS)"])
def test_expunge_comes_before_the_tagged_response_never_after(imapd, ca, command):
    a, b = _pair(imapd, ca)
    _expunge_first(a)
    lines = b.cmd(b"b1", command)
    assert b"* 1 EXPUNGE\r\n" in lines[:-1], lines
    assert lines[-1].startswith(b"b1 OK"), lines
    assert _nothing_more(b) == b""
    # The next command by number sees the numbers it was told about: 2 messages now.
    lines = b.cmd(b"b2", b"FETCH 1:2 (UID)")
    assert lines[-1].startswith(b"b2 OK") and b"EXPUNGE" not in b"".join(lines), lines
    a.close()
    b.close()


@pytest.mark.parametrize("command", [b"FETCH 1:3 (UID FLAGS)", b"STORE 2 +FLAGS (\\Flagged)",
                                     b"SEARCH ALL", b"COPY 2 Other", b"COPY 2 INBOX", b"MOVE 3 Other"])
def test_expunges_are_held_during_commands_by_sequence_number(imapd, ca, command):
    a, b = _pair(imapd, ca)
    _expunge_first(a)
    body = b"Subject: new\r\n\r\nnew\r\n"
    a.cmd(b"a3", b"APPEND INBOX {%d+}\r\n" % len(body) + body)  # EXISTS may come, EXPUNGE not
    lines = b.cmd(b"b1", command)
    text = b"".join(lines)
    assert lines[-1].startswith(b"b1 OK"), lines
    if command.startswith(b"MOVE"):
        assert re.findall(rb"\* (\d+) EXPUNGE", text) == [b"3"], text  # its own, numbered in b's view
    else:
        assert b"EXPUNGE" not in text, text
    # 3 in b's view (one expunged elsewhere, held) + the append, + COPY to INBOX, - MOVE
    exists = 5 if command == b"COPY 2 INBOX" else 3 if command.startswith(b"MOVE") else 4
    assert b"* %d EXISTS" % exists in text, text
    assert _nothing_more(b) == b""
    lines = b.cmd(b"b2", b"NOOP")
    assert b"* 1 EXPUNGE\r\n" in lines, lines  # now, at a command that allows it
    a.close()
    b.close()


def test_fetch_and_store_of_a_message_expunged_elsewhere(imapd, ca):
    """Like Dovecot: the index still answers UID and FLAGS; content that is gone is left
    out with OK [EXPUNGEISSUED]; a STORE to it is ignored (RFC 2180 4.1.1, 4.2.1)."""
    a, b = _pair(imapd, ca)
    uid1 = re.search(rb"UID (\d+)", b"".join(b.cmd(b"b0", b"FETCH 1 (UID)"))).group(1)
    _expunge_first(a)
    lines = b.cmd(b"b1", b"FETCH 1 (UID FLAGS)")
    assert re.search(rb"\* 1 FETCH \(UID " + uid1 + rb" FLAGS \(", b"".join(lines)), lines
    lines = b.cmd(b"b2", b"FETCH 1:2 (BODY.PEEK[TEXT])")
    assert lines[-1].startswith(b"b2 OK [EXPUNGEISSUED]"), lines
    text = b"".join(lines)
    assert b"* 2 FETCH" in text and b"* 1 FETCH" not in text, lines
    lines = b.cmd(b"b3", b"STORE 1:2 +FLAGS (\\Flagged)")
    text = b"".join(lines)
    assert lines[-1].startswith(b"b3 OK") and b"* 2 FETCH" in text and b"* 1 FETCH" not in text, lines
    assert b"* 1 EXPUNGE" in b"".join(b.cmd(b"b4", b"NOOP"))
    a.close()
    b.close()


def test_qresync_vanished_is_held_and_earlier_never_names_the_view(imapd, ca):
    a, b = _pair(imapd, ca)
    b.cmd(b"e", b"ENABLE QRESYNC")
    lines = b.cmd(b"s", b"SELECT INBOX")
    modseq = re.search(rb"HIGHESTMODSEQ (\d+)", b"".join(lines)).group(1)
    uid1 = re.search(rb"UID (\d+)", b"".join(b.cmd(b"b0", b"FETCH 1 (UID)"))).group(1)
    _expunge_first(a)
    text = b"".join(b.cmd(b"b1", b"FETCH 1:3 (FLAGS)"))
    assert b"VANISHED" not in text, text
    lines = b.cmd(b"b2", b"UID FETCH 1:* (FLAGS) (CHANGEDSINCE " + modseq + b" VANISHED)")
    text = b"".join(lines)
    assert b"VANISHED (EARLIER)" not in text, text  # uid1 is in b's view until now
    assert b"* VANISHED " + uid1 + b"\r\n" in lines[:-1], lines
    a.close()
    b.close()
