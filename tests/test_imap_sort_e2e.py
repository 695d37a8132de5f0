"""SORT and THREAD through a real pymaild: capabilities, search criteria, UID forms,
ESORT, CONDSTORE's MODSEQ, errors, and the RFC 3501 7.4.1 rule on EXPUNGE.

Whether the orders are right is checked against Dovecot on a corpus made to trip them
(tests/test_imap_sort_thread_dovecot.py); this file checks the command around them.
"""

from __future__ import annotations

import imaplib
import re

import pytest

from tests.support.imap import RawIMAP, client_ctx, imap_daemon, login, new_account


@pytest.fixture(scope="module")
def imapd(ca, tmp_path_factory):
    d = imap_daemon(tmp_path_factory.mktemp("sortd"), ca)
    yield d
    d.stop()


def _append(m: imaplib.IMAP4, subject: str, date: str, frm: str, *, msgid: str = "", refs: str = "",
            flags: str = "") -> None:
    head = f"From: {frm}\r\nSubject: {subject}\r\nDate: {date}\r\n"
    if msgid:
        head += f"Message-ID: <{msgid}>\r\n"
    if refs:
        head += f"References: {refs}\r\n"
    typ, data = m.append("INBOX", flags or None, None, (head + "\r\nbody\r\n").encode())
    assert typ == "OK", data


@pytest.fixture()
def mailbox(imapd, ca):
    user = new_account(imapd)
    m = login(imapd, ca, user)
    _append(m, "Re: zebra", "Tue, 2 Jan 2024 10:00:00 +0000", "bob@x.test", msgid="b@x", refs="<a@x>")
    _append(m, "zebra", "Mon, 1 Jan 2024 10:00:00 +0000", "amy@x.test", msgid="a@x", flags=r"(\Seen)")
    _append(m, "apple", "Wed, 3 Jan 2024 10:00:00 +0000", "Carl <carl@x.test>", msgid="c@x")
    _append(m, "[list] mango", "Wed, 3 Jan 2024 09:00:00 +0000", "dan@x.test", msgid="d@x",
            flags=r"(\Seen)")
    m.select("INBOX")
    yield user, m
    m.logout()


def _data(resp: tuple[str, list]) -> str:
    typ, data = resp
    assert typ == "OK", data
    return (data[0] or b"").decode()


def test_capabilities_after_login(imapd, ca):
    m = login(imapd, ca, new_account(imapd))
    caps = set(_data(m.capability()).split())
    assert {"SORT", "SORT=DISPLAY", "ESORT", "THREAD=REFERENCES", "THREAD=REFS",
            "THREAD=ORDEREDSUBJECT"} <= caps
    m.logout()


def test_sort_with_search_criteria_and_uids(mailbox):
    _user, m = mailbox
    assert _data(m.sort("(SUBJECT)", "UTF-8", "ALL")) == "3 4 1 2"  # apple mango zebra(1, 2 tie)
    assert _data(m.sort("(DATE)", "UTF-8", "ALL")) == "2 1 4 3"
    assert _data(m.sort("(REVERSE DATE)", "UTF-8", "UNSEEN")) == "3 1"
    assert _data(m.sort("(FROM)", "UTF-8", "SEEN")) == "2 4"
    _typ, data = m.uid("SEARCH", None, "ALL")
    uids = data[0].split()
    assert _data(m.uid("SORT", "(DATE)", "UTF-8", "ALL")).split() == [uids[1].decode(), uids[0].decode(),
                                                                       uids[3].decode(), uids[2].decode()]
    assert _data(m.sort("(SUBJECT)", "UTF-8", "SUBJECT", "nothing-matches")) == ""


def test_thread(mailbox):
    _user, m = mailbox
    assert _data(m.thread("REFERENCES", "UTF-8", "ALL")) == "(2 1)(4)(3)"
    assert _data(m.thread("ORDEREDSUBJECT", "UTF-8", "ALL")) == "(2 1)(4)(3)"
    assert _data(m.thread("REFS", "UTF-8", "ALL")) == "(2 1)(4)(3)"
    assert _data(m.thread("REFERENCES", "UTF-8", "SUBJECT", "nothing-matches")) == ""


def test_esort_and_modseq(imapd, ca, mailbox):
    raw_user, _m = mailbox
    raw = RawIMAP(imapd.imaps_port, tls=client_ctx(ca))
    raw.cmd(b"l", f"LOGIN {raw_user} password-123456".encode())
    raw.cmd(b"s", b"SELECT INBOX")
    lines = raw.cmd(b"e", b"SORT RETURN (MIN MAX COUNT ALL) (DATE) UTF-8 ALL")
    assert lines[0] == b'* ESEARCH (TAG "e") MIN 2 MAX 3 ALL 2,1,4,3 COUNT 4\r\n', lines
    lines = raw.cmd(b"p", b"UID SORT RETURN (PARTIAL -1:-2) (DATE) UTF-8 ALL")
    assert re.match(rb'\* ESEARCH \(TAG "p"\) UID PARTIAL \(-1:-2 \d+,\d+\)\r\n', lines[0]), lines
    lines = raw.cmd(b"n", b"SORT RETURN (COUNT) (DATE) UTF-8 SUBJECT nothing-matches")
    assert lines[0] == b'* ESEARCH (TAG "n") COUNT 0\r\n', lines
    lines = raw.cmd(b"m", b"SORT (DATE) UTF-8 MODSEQ 1")  # RFC 7162 3.1.5
    assert re.match(rb"\* SORT 2 1 4 3 \(MODSEQ \d+\)\r\n", lines[0]), lines
    raw.close()


@pytest.mark.parametrize(("command", "answer"), [
    (b"SORT (BOGUS) UTF-8 ALL", b"BAD"),
    (b"SORT DATE UTF-8 ALL", b"BAD"),
    (b"SORT (DATE) KOI8-R ALL", b"NO [BADCHARSET (US-ASCII UTF-8)]"),
    (b"THREAD JWZ UTF-8 ALL", b"BAD"),
    (b"THREAD REFERENCES UTF-8", b"BAD"),
])
def test_errors(imapd, ca, mailbox, command, answer):
    user, _m = mailbox
    raw = RawIMAP(imapd.imaps_port, tls=client_ctx(ca))
    raw.cmd(b"l", f"LOGIN {user} password-123456".encode())
    raw.cmd(b"s", b"SELECT INBOX")
    assert raw.cmd(b"x", command)[-1].startswith(b"x " + answer)
    raw.close()


def test_not_selected_is_refused(imapd, ca):
    raw = RawIMAP(imapd.imaps_port, tls=client_ctx(ca))
    user = new_account(imapd)
    raw.cmd(b"l", f"LOGIN {user} password-123456".encode())
    assert raw.cmd(b"x", b"SORT (DATE) UTF-8 ALL")[-1].startswith(b"x BAD")
    assert raw.cmd(b"y", b"THREAD REFS UTF-8 ALL")[-1].startswith(b"y BAD")
    raw.close()


def test_no_expunge_during_sort_by_number(imapd, ca, mailbox):
    """RFC 3501 7.4.1: another session's EXPUNGE waits for a command that may carry it."""
    user, m = mailbox
    raw = RawIMAP(imapd.imaps_port, tls=client_ctx(ca))
    raw.cmd(b"l", f"LOGIN {user} password-123456".encode())
    raw.cmd(b"s", b"SELECT INBOX")
    m.store("1", "+FLAGS", r"(\Deleted)")
    m.expunge()
    for tag, command in ((b"a", b"SORT (DATE) UTF-8 ALL"), (b"b", b"THREAD REFS UTF-8 ALL")):
        lines = raw.cmd(tag, command)
        assert not any(b"EXPUNGE" in line for line in lines), lines
    lines = raw.cmd(b"c", b"SORT (DATE) UTF-8 ALL")
    assert sorted(lines[0].split()[2:]) == [b"1", b"2", b"3", b"4"], lines  # the numbers it knows
    lines = raw.cmd(b"n", b"NOOP")
    assert b"* 1 EXPUNGE\r\n" in lines
    lines = raw.cmd(b"d", b"UID SORT (DATE) UTF-8 ALL")  # nothing left to announce
    assert len([ln for ln in lines if ln.startswith(b"* SORT")]) == 1
    raw.close()


@pytest.fixture(scope="module")
def imapd_no_memory(ca, tmp_path_factory):
    """Keys and answers are not kept in memory: every SORT reads the FETCH cache."""
    d = imap_daemon(tmp_path_factory.mktemp("sortd0"), ca, imap={"sort_cache_size": 0})
    yield d
    d.stop()


def test_keys_are_kept_and_damage_is_repaired(imapd_no_memory, ca):
    """A SORT keeps each message's key in the folder's FETCH cache; the next reads it. A
    stored value that is not ours is computed again, and the answer stays right."""
    import sqlite3
    from pathlib import Path

    imapd = imapd_no_memory
    user = new_account(imapd)
    m = login(imapd, ca, user)
    for day in (2, 1, 3, 4):
        _append(m, "s", f"{day} Jan 2024 10:00:00 +0000", "a@x.test")
    m.select("INBOX")
    local = user.split("@")[0]
    first = _data(m.sort("(REVERSE DATE)", "UTF-8", "ALL"))
    caches = [p for p in Path(imapd.directory).rglob("pymaild-cache.sqlite") if local in str(p)]
    assert len(caches) == 1, caches
    with sqlite3.connect(caches[0]) as db:
        rows = db.execute("SELECT base, data FROM fields WHERE key = 'SORT2:DATE'").fetchall()
        assert len(rows) == 4
        # SUBJECT's keys come from the same read of each header block (sorting.COMPANIONS)
        assert db.execute("SELECT count(*) FROM fields WHERE key = 'SORT2:SUBJECT'").fetchone() == (4,)
        assert db.execute("SELECT count(*) FROM fields WHERE key = 'SORT2:FROM'").fetchone() == (0,)
        db.execute("UPDATE fields SET data = x'00ff' WHERE key = 'SORT2:DATE' AND base = ?", (rows[0][0],))
    assert _data(m.sort("(REVERSE DATE)", "UTF-8", "ALL")) == first
    with sqlite3.connect(caches[0]) as db:
        assert db.execute("SELECT data FROM fields WHERE key = 'SORT2:DATE' AND base = ?",
                          (rows[0][0],)).fetchone()[0] == rows[0][1]


def test_kept_answers_follow_the_view(imapd, ca, mailbox):
    """The answers kept in memory (sortcache) are given back only for the same view: a
    new message, an expunge and sequence numbers against UIDs each get a new answer."""
    user, m = mailbox
    other = login(imapd, ca, user)
    assert _data(m.sort("(REVERSE DATE)", "UTF-8", "ALL")) == "3 4 1 2"
    assert _data(m.thread("REFERENCES", "UTF-8", "ALL")) == "(2 1)(4)(3)"
    _append(other, "Re: apple", "Thu, 4 Jan 2024 10:00:00 +0000", "eve@x.test", msgid="e@x", refs="<c@x>")
    m.noop()
    assert _data(m.sort("(REVERSE DATE)", "UTF-8", "ALL")) == "5 3 4 1 2"
    assert _data(m.thread("REFERENCES", "UTF-8", "ALL")) == "(2 1)(4)(3 5)"
    _typ, data = m.uid("SEARCH", None, "ALL")
    uids = data[0].decode().split()
    by_uid = _data(m.uid("SORT", "(REVERSE DATE)", "UTF-8", "ALL")).split()
    assert by_uid == [uids[i] for i in (4, 2, 3, 0, 1)]
    other.select("INBOX")
    other.store("3", "+FLAGS", r"(\Deleted)")
    other.expunge()
    other.logout()
    m.noop()
    assert _data(m.sort("(REVERSE DATE)", "UTF-8", "ALL")) == "4 3 1 2"
    assert _data(m.thread("REFERENCES", "UTF-8", "ALL")) == "(2 1)(3)(4)"  # 5 (now 4) lost its parent


def test_a_folder_made_again_is_sorted_again(imapd, ca):
    """A folder deleted and created again under the same name has new messages under the
    same UIDs: nothing kept for the old one may answer for the new one."""
    m = login(imapd, ca, new_account(imapd))
    for rounds, dates in enumerate(((1, 2, 3), (3, 2, 1))):
        assert m.create("Box")[0] == "OK"
        for day in dates:
            text = f"Subject: d{day}\r\nDate: {day} Jan 2024 10:00:00 +0000\r\n\r\nx\r\n"
            assert m.append("Box", None, None, text.encode())[0] == "OK"
        m.select("Box")
        expected = "3 2 1" if rounds == 0 else "1 2 3"
        assert _data(m.sort("(REVERSE DATE)", "UTF-8", "ALL")) == expected
        assert _data(m.uid("SORT", "(REVERSE DATE)", "UTF-8", "ALL")) == expected
        assert _data(m.sort("(SUBJECT)", "UTF-8", "ALL")) == ("1 2 3" if rounds == 0 else "3 2 1")
        m.close()
        assert m.delete("Box")[0] == "OK"
    m.logout()
