"""IMAP RFC details where Dovecot 2.3 was right and pymaild was not: a real pymaild over
TLS, raw lines. The expected answers were checked against Dovecot 2.3.19 on loopback."""

from __future__ import annotations

import re

import pytest

from tests.support.imap import PASSWORD, RawIMAP, client_ctx, imap_daemon, new_account


@pytest.fixture(scope="module")
def imapd(ca, tmp_path_factory):
    d = imap_daemon(tmp_path_factory.mktemp("imaprfc"), ca)
    yield d
    d.stop()


def _session(imapd, ca) -> RawIMAP:
    user = new_account(imapd)
    raw = RawIMAP(imapd.imaps_port, tls=client_ctx(ca))
    assert raw.cmd(b"L", f'LOGIN "{user}" "{PASSWORD}"'.encode())[-1].startswith(b"L OK")
    return raw


def _ok(raw: RawIMAP, tag: bytes, text: bytes) -> bytes:
    lines = raw.cmd(tag, text)
    assert lines[-1].startswith(tag + b" OK"), lines
    return b"".join(lines)


def _append(raw: RawIMAP, tag: bytes, mailbox: bytes, msg: bytes, flags: bytes = b"") -> bytes:
    raw.send(tag + b" APPEND " + mailbox + (b" (" + flags + b")" if flags else b"") + b" {%d+}\r\n" % len(msg)
             + msg + b"\r\n")
    lines = raw.read_until_tagged(tag)
    assert lines[-1].startswith(tag + b" OK"), lines
    return b"".join(lines)


def _status(raw: RawIMAP, tag: bytes, mailbox: bytes, item: bytes) -> int:
    text = _ok(raw, tag, b"STATUS " + mailbox + b" (" + item + b")")
    m = re.search(item + rb" (\d+)", text)
    assert m, text
    return int(m.group(1))


MSG = b"From: a@example.org\r\nSubject: s\r\n\r\nbody\r\n"


# ---------------------------------------------------------------- UIDVALIDITY


def test_uidvalidity_never_repeats_after_delete_and_create(imapd, ca):
    raw = _session(imapd, ca)
    seen = set()
    for i in range(3):  # all within the same second, usually
        _ok(raw, b"c%d" % i, b"CREATE x")
        _append(raw, b"a%d" % i, b"x", MSG)
        seen.add(_status(raw, b"s%d" % i, b"x", b"UIDVALIDITY"))
        _ok(raw, b"d%d" % i, b"DELETE x")
    assert len(seen) == 3, seen
    raw.close()


def test_uidvalidity_differs_after_rename_and_create(imapd, ca):
    raw = _session(imapd, ca)
    _ok(raw, b"1", b"CREATE x")
    _append(raw, b"2", b"x", MSG)
    old = _status(raw, b"3", b"x", b"UIDVALIDITY")
    _ok(raw, b"4", b"RENAME x y")
    assert _status(raw, b"5", b"y", b"UIDVALIDITY") == old  # a rename keeps the UIDs
    _ok(raw, b"6", b"CREATE x")
    assert _status(raw, b"7", b"x", b"UIDVALIDITY") != old
    raw.close()


# ---------------------------------------------------------------- mailbox names and LIST


def test_create_with_trailing_delimiter(imapd, ca):
    raw = _session(imapd, ca)
    _ok(raw, b"1", b"CREATE foo.")
    listing = _ok(raw, b"2", b'LIST "" "foo*"')
    assert b'* LIST (\\HasNoChildren) "." foo\r\n' in listing
    assert raw.cmd(b"3", b"CREATE foo.")[-1].startswith(b"3 NO [ALREADYEXISTS]")
    raw.close()


def test_lsub_percent_lists_unsubscribed_parent_as_noselect(imapd, ca):
    raw = _session(imapd, ca)
    _ok(raw, b"1", b"CREATE a.b")
    _ok(raw, b"2", b"SUBSCRIBE a.b")
    lsub = _ok(raw, b"3", b'LSUB "" "a%"')
    assert lsub.startswith(b'* LSUB (\\Noselect) "." a\r\n3 OK'), lsub
    lsub = _ok(raw, b"4", b'LSUB "" "a*"')
    assert lsub.startswith(b'* LSUB () "." a.b\r\n4 OK'), lsub
    assert _ok(raw, b"5", b'LSUB "" "a"').startswith(b"5 OK")  # only "%" brings the parent
    raw.close()


def test_delete_keeps_subscription_as_nonexistent(imapd, ca):
    raw = _session(imapd, ca)
    _ok(raw, b"1", b"CREATE gone")
    _ok(raw, b"2", b"SUBSCRIBE gone")
    _ok(raw, b"3", b"DELETE gone")
    listing = _ok(raw, b"4", b'LIST (SUBSCRIBED) "" "gone"')
    assert b'* LIST (\\NonExistent \\Subscribed) "." gone\r\n' in listing
    assert b'* LSUB (\\Noselect) "." gone\r\n' in _ok(raw, b"5", b'LSUB "" "gone"')
    raw.close()


@pytest.mark.parametrize("command", [
    b'LIST (FOO) "" "%"', b'LIST "" "%" RETURN (FOO)', b'LIST (RECURSIVEMATCH) "" "%"',
    b'LIST (REMOTE RECURSIVEMATCH) "" "%"',
])
def test_list_extended_bad_options(imapd, ca, command):
    raw = _session(imapd, ca)
    assert raw.cmd(b"1", command)[-1].startswith(b"1 BAD"), command
    raw.close()


def test_list_extended_childinfo_subscribed(imapd, ca):
    raw = _session(imapd, ca)
    _ok(raw, b"1", b"CREATE p.c")
    _ok(raw, b"2", b"SUBSCRIBE p.c")
    listing = _ok(raw, b"3", b'LIST (SUBSCRIBED RECURSIVEMATCH) "" "p"')
    assert listing.startswith(b'* LIST (\\HasChildren) "." p (CHILDINFO ("SUBSCRIBED"))\r\n3 OK'), listing
    _ok(raw, b"4", b"SUBSCRIBE p")
    listing = _ok(raw, b"5", b'LIST (SUBSCRIBED RECURSIVEMATCH) "" "p"')
    expected = b'* LIST (\\HasChildren \\Subscribed) "." p (CHILDINFO ("SUBSCRIBED"))\r\n5 OK'
    assert listing.startswith(expected), listing
    # without RECURSIVEMATCH an unsubscribed parent is not listed, nor when the child matches
    _ok(raw, b"6", b"UNSUBSCRIBE p")
    assert _ok(raw, b"7", b'LIST (SUBSCRIBED) "" "p"').startswith(b"7 OK")
    listing = _ok(raw, b"8", b'LIST (SUBSCRIBED RECURSIVEMATCH) "" "p*"')
    assert listing.startswith(b'* LIST (\\HasNoChildren \\Subscribed) "." p.c\r\n8 OK'), listing
    raw.close()


# ---------------------------------------------------------------- selected state


def test_esearch_min_max_modseq_is_the_returned_message(imapd, ca):
    raw = _session(imapd, ca)
    _append(raw, b"1", b"INBOX", MSG)
    _append(raw, b"2", b"INBOX", MSG)
    _ok(raw, b"3", b"SELECT INBOX (CONDSTORE)")
    m1 = int(re.search(rb"MODSEQ \((\d+)\)", _ok(raw, b"4", b"STORE 1 +FLAGS (\\Flagged)")).group(1))
    m2 = int(re.search(rb"MODSEQ \((\d+)\)", _ok(raw, b"5", b"STORE 2 +FLAGS (\\Seen)")).group(1))
    assert m2 > m1
    assert b'* ESEARCH (TAG "6") MIN 1 MODSEQ %d\r\n' % m1 in _ok(raw, b"6", b"SEARCH RETURN (MIN) MODSEQ 1")
    assert b'* ESEARCH (TAG "7") MAX 2 MODSEQ %d\r\n' % m2 in _ok(raw, b"7", b"SEARCH RETURN (MAX) MODSEQ 1")
    assert b"MIN 1 MAX 2 MODSEQ %d\r\n" % m2 in _ok(raw, b"8", b"SEARCH RETURN (MIN MAX) MODSEQ 1")
    assert b"COUNT 2 MODSEQ %d\r\n" % m2 in _ok(raw, b"9", b"SEARCH RETURN (COUNT) MODSEQ 1")
    raw.close()


def test_copy_and_move_into_selected_folder_announce_exists(imapd, ca):
    raw = _session(imapd, ca)
    _append(raw, b"1", b"INBOX", MSG)
    _ok(raw, b"2", b"SELECT INBOX")
    copied = _ok(raw, b"3", b"COPY 1 INBOX")
    assert b"* 2 EXISTS\r\n* 2 RECENT\r\n" in copied, copied  # the copy is \Recent too
    moved = raw.cmd(b"4", b"MOVE 1 INBOX")
    assert moved[-1].startswith(b"4 OK"), moved
    # the moved copy is announced after the EXPUNGE of 1 and before the tagged OK
    text = b"".join(moved)
    assert text.index(b"* 1 EXPUNGE\r\n") < text.index(b"* 2 EXISTS\r\n"), moved
    assert _ok(raw, b"5", b"UID SEARCH ALL").startswith(b"* SEARCH 2 3\r\n")
    assert b"EXISTS" not in _ok(raw, b"6", b"NOOP")  # nothing left to announce
    raw.close()


def test_status_recent_is_zero_after_the_read_write_select_closes(imapd, ca):
    raw = _session(imapd, ca)
    _append(raw, b"1", b"INBOX", MSG)
    _append(raw, b"2", b"INBOX", MSG)
    assert _status(raw, b"3", b"INBOX", b"RECENT") == 2
    assert b"* 2 RECENT\r\n" in _ok(raw, b"4", b"SELECT INBOX")
    _ok(raw, b"5", b"CLOSE")
    assert _status(raw, b"6", b"INBOX", b"RECENT") == 0
    raw.close()


def test_flags_and_permanentflags_resent_on_new_keyword(imapd, ca):
    raw = _session(imapd, ca)
    _append(raw, b"1", b"INBOX", MSG)
    _ok(raw, b"2", b"SELECT INBOX")
    stored = _ok(raw, b"3", b"STORE 1 +FLAGS (newkw)")
    flags = stored.index(b"* FLAGS (\\Answered \\Flagged \\Deleted \\Seen \\Draft newkw)\r\n")
    perm = stored.index(b"* OK [PERMANENTFLAGS (\\Answered \\Flagged \\Deleted \\Seen \\Draft newkw \\*)]")
    assert flags < perm < stored.index(b"* 1 FETCH")
    # a keyword already announced is not announced again
    assert b"* FLAGS" not in _ok(raw, b"4", b"STORE 1 -FLAGS (newkw)")
    assert b"* FLAGS" not in _ok(raw, b"5", b"STORE 1 +FLAGS (newkw)")
    # one that arrives by APPEND (another folder view) is announced with its EXISTS
    appended = _append(raw, b"6", b"INBOX", MSG, b"other")
    assert b"* FLAGS (\\Answered \\Flagged \\Deleted \\Seen \\Draft newkw other)\r\n" in appended, appended
    raw.close()


def test_highestmodseq_of_an_empty_folder_is_not_zero(imapd, ca):
    raw = _session(imapd, ca)
    _ok(raw, b"1", b"CREATE empty")
    assert _status(raw, b"2", b"empty", b"HIGHESTMODSEQ") >= 1
    sel = _ok(raw, b"3", b"SELECT empty (CONDSTORE)")
    assert b"[HIGHESTMODSEQ 0]" not in sel and b"[HIGHESTMODSEQ " in sel
    raw.close()


def test_envelope_address_with_comments_inside_addr_spec(imapd, ca):
    raw = _session(imapd, ca)
    msg = (b"From: <user-from (comment)@ (comment) domain.org>\r\n"
           b"To: Name <a (c)@ (d) b.org>, user-from (comment)@ (comment) domain.org\r\n"
           b"Subject: x\r\n\r\nb\r\n")
    _append(raw, b"1", b"INBOX", msg)
    _ok(raw, b"2", b"SELECT INBOX")
    env = _ok(raw, b"3", b"FETCH 1 ENVELOPE")
    assert b'((NIL NIL "user-from" "domain.org"))' in env, env
    assert b'(("Name" NIL "a" "b.org")("comment" NIL "user-from" "domain.org"))' in env, env
    assert _ok(raw, b"4", b"SEARCH FROM user-from").startswith(b"* SEARCH 1\r\n")
    assert _ok(raw, b"5", b"SEARCH FROM user-from@domain.org").startswith(b"* SEARCH 1\r\n")
    raw.close()


def test_copy_into_selected_folder_holds_back_expunges_by_others(imapd, ca):
    user = new_account(imapd)
    a, b = (RawIMAP(imapd.imaps_port, tls=client_ctx(ca)) for _ in range(2))
    for raw in (a, b):
        _ok(raw, b"L", f'LOGIN "{user}" "{PASSWORD}"'.encode())
    _append(a, b"1", b"INBOX", MSG)
    _append(a, b"2", b"INBOX", MSG)
    _ok(a, b"3", b"SELECT INBOX")
    _ok(b, b"4", b"SELECT INBOX")
    _ok(b, b"5", b"STORE 2 +FLAGS.SILENT (\\Deleted)")
    _ok(b, b"6", b"EXPUNGE")
    copied = _ok(a, b"7", b"COPY 1 INBOX")  # sequence numbers in use: no EXPUNGE now
    assert b"EXPUNGE" not in copied and b"* 3 EXISTS\r\n" in copied, copied
    assert b"* 2 EXPUNGE\r\n" in _ok(a, b"8", b"NOOP")
    a.close()
    b.close()
