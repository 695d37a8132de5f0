"""IMAP end to end: a real pymaild process, real TLS, imaplib and raw sockets."""

from __future__ import annotations

import base64
import imaplib
import re
import socket
import time

import pytest

from tests.support.imap import PASSWORD, RawIMAP, client_ctx, imap_daemon, login, new_account, smtp_deliver
from tests.support.wait import wait_until


@pytest.fixture(scope="module")
def imapd(ca, tmp_path_factory):
    d = imap_daemon(tmp_path_factory.mktemp("imapd"), ca, imap={"max_append_size": "1M"})
    yield d
    d.stop()


def _ok(resp):
    typ, data = resp
    assert typ == "OK", data
    return data


# ---------------------------------------------------------------- TLS and login


def test_plain_143_advertises_logindisabled_and_refuses_login(imapd):
    raw = RawIMAP(imapd.imap_port)
    assert raw.greeting.startswith(b"* OK [CAPABILITY ")
    caps = raw.cmd(b"a", b"CAPABILITY")[0]
    assert b"STARTTLS" in caps and b"LOGINDISABLED" in caps and b"AUTH=" not in caps
    user = new_account(imapd)
    reply = raw.cmd(b"b", f"LOGIN {user} {PASSWORD}".encode())[-1]
    assert reply.startswith(b"b NO [PRIVACYREQUIRED]") and b"STARTTLS" in reply
    token = base64.b64encode(f"\0{user}\0{PASSWORD}".encode())
    assert raw.cmd(b"c", b"AUTHENTICATE PLAIN " + token)[-1].startswith(b"c NO [PRIVACYREQUIRED]")
    assert raw.cmd(b"d", b"SELECT INBOX")[-1].startswith(b"d BAD")
    raw.close()


def test_starttls_then_login(imapd, ca):
    user = new_account(imapd)
    raw = RawIMAP(imapd.imap_port)
    raw.starttls(client_ctx(ca))
    caps = raw.cmd(b"a", b"CAPABILITY")[0]
    assert b"AUTH=PLAIN" in caps and b"STARTTLS" not in caps and b"LOGINDISABLED" not in caps
    reply = raw.cmd(b"b", f'LOGIN "{user}" "{PASSWORD}"'.encode())[-1]
    assert reply.startswith(b"b OK [CAPABILITY IMAP4rev1") and b"IDLE" in reply and b"MOVE" in reply
    raw.close()


def test_starttls_injection_is_discarded(imapd, ca):
    raw = RawIMAP(imapd.imap_port)
    raw.send(b"S1 STARTTLS\r\nX1 CAPABILITY\r\n")  # the second command must never be answered
    assert raw.readline().startswith(b"S1 OK")
    raw.sock = client_ctx(ca).wrap_socket(raw.sock)
    raw.buf = b""
    lines = raw.cmd(b"X2", b"NOOP")
    assert all(not line.startswith(b"X1") for line in lines) and b"CAPABILITY" not in b"".join(lines)
    raw.close()


def test_imaplib_starttls_login(imapd, ca):
    user = new_account(imapd)
    m = imaplib.IMAP4("127.0.0.1", imapd.imap_port, timeout=10)
    m.starttls(ssl_context=client_ctx(ca))
    _ok(m.login(user, PASSWORD))
    _ok(m.select("INBOX"))
    m.logout()


def test_authenticate_plain_inline_two_step_and_authzid(imapd, ca):
    user = new_account(imapd)
    ctx = client_ctx(ca)
    # SASL-IR inline, authzid = login name (mbsync does this)
    raw = RawIMAP(imapd.imaps_port, tls=ctx)
    token = base64.b64encode(f"{user}\0{user}\0{PASSWORD}".encode())
    assert raw.cmd(b"a", b"AUTHENTICATE PLAIN " + token)[-1].startswith(b"a OK")
    raw.close()
    # two steps
    raw = RawIMAP(imapd.imaps_port, tls=ctx)
    raw.send(b"a AUTHENTICATE PLAIN\r\n")
    assert raw.readline().startswith(b"+")
    raw.send(base64.b64encode(f"\0{user}\0{PASSWORD}".encode()) + b"\r\n")
    assert raw.read_until_tagged(b"a")[-1].startswith(b"a OK")
    raw.close()
    # a different authzid is refused
    raw = RawIMAP(imapd.imaps_port, tls=ctx)
    token = base64.b64encode(f"postmaster@example.test\0{user}\0{PASSWORD}".encode())
    assert raw.cmd(b"a", b"AUTHENTICATE PLAIN " + token)[-1].startswith(b"a NO")
    # cancelled exchange
    raw.send(b"b AUTHENTICATE PLAIN\r\n")
    assert raw.readline().startswith(b"+")
    raw.send(b"*\r\n")
    assert raw.read_until_tagged(b"b")[-1].startswith(b"b BAD")
    assert raw.cmd(b"c", b"NOOP")[-1].startswith(b"c OK")
    raw.close()


def test_wrong_password(imapd, ca):
    user = new_account(imapd)
    m = imaplib.IMAP4_SSL("127.0.0.1", imapd.imaps_port, ssl_context=client_ctx(ca), timeout=10)
    with pytest.raises(imaplib.IMAP4.error, match="AUTHENTICATIONFAILED"):
        m.login(user, "wrong-password")
    with pytest.raises(imaplib.IMAP4.error, match="AUTHENTICATIONFAILED"):
        m.login("nobody@example.test", "wrong-password")
    line = "auth failed client=127.0.0.1 user=" + user
    assert line in imapd.wait_log(line)


# ---------------------------------------------------------------- the Thunderbird flow


def test_thunderbird_first_connect(imapd, ca):
    """What Thunderbird does on first connect, in its order."""
    user = new_account(imapd)
    smtp_deliver(imapd, user, "first")
    smtp_deliver(imapd, user, "second")
    raw = RawIMAP(imapd.imaps_port, tls=client_ctx(ca))
    caps = raw.cmd(b"1", b"CAPABILITY")[0]
    for cap in (b"IDLE", b"ID", b"ENABLE", b"LITERAL+", b"SASL-IR", b"AUTH=PLAIN", b"IMAP4rev1"):
        assert cap in caps
    assert raw.cmd(b"2", b'ID ("name" "Thunderbird" "version" "128.0")')[0].startswith(b"* ID (")
    token = base64.b64encode(f"\0{user}\0{PASSWORD}".encode())
    caps = raw.cmd(b"3", b"AUTHENTICATE PLAIN " + token)[-1]
    assert caps.startswith(b"3 OK [CAPABILITY ")  # the post-login list, so clients need not ask
    for cap in (b"IDLE", b"UIDPLUS", b"MOVE", b"SPECIAL-USE", b"CONDSTORE", b"QRESYNC", b"NAMESPACE",
                b"UNSELECT", b"CHILDREN", b"ESEARCH", b"APPENDLIMIT=1048576"):
        assert cap in caps
    assert raw.cmd(b"4", b"NAMESPACE")[0] == b'* NAMESPACE (("" ".")) NIL NIL\r\n'
    assert raw.cmd(b"5", b"ENABLE CONDSTORE")[0].startswith(b"* ENABLED CONDSTORE")
    listing = b"".join(raw.cmd(b"6", b'LIST (SPECIAL-USE) "" "*"'))
    for name, attr in ((b"Sent", b"\\Sent"), (b"Drafts", b"\\Drafts"), (b"Trash", b"\\Trash"),
                       (b"Junk", b"\\Junk"), (b"Archive", b"\\Archive")):
        pattern = rb"\* LIST \([^)]*" + re.escape(attr) + rb"[^)]*\) \".\" " + name + rb"\r\n"
        assert re.search(pattern, listing)
    assert b"INBOX" not in listing  # not special-use
    listing = b"".join(raw.cmd(b"7", b'LIST "" "*"'))
    assert b'* LIST (\\HasNoChildren) "." INBOX\r\n' in listing
    sel = b"".join(raw.cmd(b"8", b"SELECT INBOX (CONDSTORE)"))
    assert b"* 2 EXISTS" in sel and b"[UIDVALIDITY " in sel and b"[HIGHESTMODSEQ " in sel
    assert b"[PERMANENTFLAGS (" in sel and b"8 OK [READ-WRITE]" in sel
    fetch = raw.cmd(b"9", b"UID FETCH 1:* (UID RFC822.SIZE FLAGS BODY.PEEK[HEADER.FIELDS (From To Cc Subject "
                          b"Date Message-ID References In-Reply-To Content-Type)])")
    assert len(fetch) == 3 and fetch[-1].startswith(b"9 OK")
    assert b"Subject: first" in fetch[0] and b"Subject: second" in fetch[1]
    assert b"\\Seen" not in fetch[0]  # PEEK
    assert b"Received:" not in fetch[0]
    # IDLE, then new mail must arrive within a second
    raw.send(b"10 IDLE\r\n")
    assert raw.readline().startswith(b"+ ")
    started = time.monotonic()
    smtp_deliver(imapd, user, "third")
    line = raw.readline()
    assert line == b"* 3 EXISTS\r\n" and time.monotonic() - started < 1.5
    raw.send(b"DONE\r\n")
    assert raw.read_until_tagged(b"10")[-1].startswith(b"10 OK")
    # move the first to Trash, mark the second read, append to Sent
    moved = b"".join(raw.cmd(b"11", b"UID MOVE 1 Trash"))
    assert b"[COPYUID " in moved and b"* 1 EXPUNGE" in moved and b"11 OK" in moved
    stored = b"".join(raw.cmd(b"12", b"UID STORE 2 +FLAGS (\\Seen)"))
    assert re.search(rb"\* 1 FETCH \(UID 2 FLAGS \((\\Recent )?\\Seen\) MODSEQ \(\d+\)\)", stored), stored
    msg = b"From: " + user.encode() + b"\r\nTo: x@elsewhere.example\r\nSubject: sent\r\n\r\nhi\r\n"
    raw.send(b"13 APPEND Sent (\\Seen) {%d}\r\n" % len(msg))
    assert raw.readline().startswith(b"+")
    raw.send(msg + b"\r\n")
    appended = raw.read_until_tagged(b"13")[-1]
    assert re.match(rb"13 OK \[APPENDUID \d+ 1\]", appended), appended
    status = raw.cmd(b"14", b"STATUS Trash (MESSAGES UNSEEN UIDNEXT)")[0]
    assert status.startswith(b"* STATUS Trash (MESSAGES 1 UNSEEN 1 UIDNEXT 2)")
    assert raw.cmd(b"15", b"LOGOUT")[0].startswith(b"* BYE")
    raw.close()


# ---------------------------------------------------------------- commands


def test_fetch_items(imapd, ca):
    user = new_account(imapd)
    m = login(imapd, ca, user)
    body = (b"From: \"Ann Example\" <ann@example.org>\r\nTo: a@example.test, b@example.test\r\n"
            b"Subject: =?utf-8?q?caf=C3=A9?=\r\nDate: Mon, 23 Nov 2026 10:00:00 +0000\r\n"
            b"Message-ID: <m1@example.org>\r\nMIME-Version: 1.0\r\n"
            b"Content-Type: multipart/mixed; boundary=\"b1\"\r\n\r\n"
            b"--b1\r\nContent-Type: text/plain; charset=utf-8\r\n\r\nhello world\r\n"
            b"--b1\r\nContent-Type: application/pdf; name=x.pdf\r\nContent-Disposition: attachment; "
            b"filename=x.pdf\r\nContent-Transfer-Encoding: base64\r\n\r\nAAAA\r\n--b1--\r\n")
    _ok(m.append("INBOX", "(\\Flagged)", imaplib.Time2Internaldate(1700000000), body))
    _ok(m.select("INBOX"))
    data = _ok(m.fetch("1", "(FLAGS INTERNALDATE RFC822.SIZE ENVELOPE)"))
    text = data[0] if isinstance(data[0], bytes) else data[0][0]
    assert b"\\Flagged" in text and b"RFC822.SIZE %d" % len(body) in text
    assert b'(("Ann Example" NIL "ann" "example.org"))' in text
    assert b'"<m1@example.org>"' in text
    data = _ok(m.fetch("1", "(BODYSTRUCTURE)"))
    assert b'("TEXT" "PLAIN" ("CHARSET" "utf-8")' in data[0] and b'"MIXED"' in data[0]
    data = _ok(m.fetch("1", "(BODY.PEEK[1] BODY.PEEK[2.MIME] BODY.PEEK[HEADER.FIELDS (SUBJECT)])"))
    flat = b"".join(x if isinstance(x, bytes) else b"".join(x) for x in data)
    assert b"hello world" in flat and b"filename=x.pdf" in flat and b"Subject: =?utf-8?q?caf=C3=A9?=" in flat
    data = _ok(m.fetch("1", "(BODY.PEEK[]<0.40>)"))
    assert data[0][0].endswith(b"BODY[]<0> {40}") and data[0][1] == body[:40]
    # a non-PEEK fetch sets \Seen and reports it
    data = _ok(m.fetch("1", "(BODY[TEXT])"))
    assert b"\\Seen" in b"".join(x if isinstance(x, bytes) else x[0] for x in data[1:])
    data = _ok(m.fetch("1", "(RFC822)"))
    assert data[0][1] == body
    m.logout()


def test_search(imapd, ca):
    user = new_account(imapd)
    m = login(imapd, ca, user)
    for i, (subj, text) in enumerate([("alpha", "one"), ("beta", "two café"), ("gamma", "three")]):
        msg = f"From: a{i}@example.org\r\nSubject: {subj}\r\nDate: Mon, {20 + i} Nov 2026 10:00:00 +0000\r\n"
        msg += f"Content-Type: text/plain; charset=utf-8\r\n\r\n{text}\r\n"
        _ok(m.append("INBOX", "(\\Seen)" if i == 0 else None, None, msg.encode()))
    _ok(m.select("INBOX"))
    assert _ok(m.search(None, "UNSEEN")) == [b"2 3"]
    assert _ok(m.search(None, "SUBJECT", "beta")) == [b"2"]
    assert _ok(m.search(None, "OR", "SUBJECT", "alpha", "FROM", "a2@")) == [b"1 3"]
    assert _ok(m.search(None, "NOT", "(UNSEEN FROM a1)")) == [b"1 3"]
    assert _ok(m.search(None, "SENTSINCE", "21-Nov-2026")) == [b"2 3"]
    assert _ok(m.uid("SEARCH", "BODY", "three")) == [b"3"]
    m.logout()


def test_search_utf8_literal(imapd, ca):
    user = new_account(imapd)
    m = login(imapd, ca, user)
    text = "Subject: s\r\nContent-Type: text/plain; charset=utf-8\r\n\r\ncafé au lait\r\n"
    _ok(m.append("INBOX", None, None, text.encode()))
    _ok(m.select("INBOX"))
    m.literal = "café".encode()
    assert _ok(m.search("UTF-8", "BODY")) == [b"1"]
    m.logout()


def test_mailbox_management(imapd, ca):
    user = new_account(imapd)
    m = login(imapd, ca, user)
    _ok(m.create("Projects.2026"))
    names = b"".join(_ok(m.list()))
    assert b'(\\HasChildren) "." Projects' in names and b'(\\HasNoChildren) "." Projects.2026' in names
    _ok(m.rename("Projects", "Work"))
    names = b"".join(_ok(m.list()))
    assert b"Work.2026" in names and b"Projects" not in names
    typ, _data = m.delete("Work")
    assert typ == "NO"  # has children
    _ok(m.delete("Work.2026"))
    _ok(m.delete("Work"))
    _ok(m.subscribe("Sent"))
    _ok(m.create("&ZeVnLIqe-"))  # modified UTF-7 (Japanese)
    assert b"&ZeVnLIqe-" in b"".join(_ok(m.list()))
    assert m.create("INBOX")[0] == "NO"
    assert m.delete("INBOX")[0] == "NO"
    # INBOX rename moves its mail, INBOX stays
    _ok(m.append("INBOX", None, None, b"Subject: x\r\n\r\nx\r\n"))
    _ok(m.rename("INBOX", "Old"))
    assert _ok(m.status("INBOX", "(MESSAGES)"))[0].endswith(b"(MESSAGES 0)")
    assert _ok(m.status("Old", "(MESSAGES)"))[0].endswith(b"(MESSAGES 1)")
    subs = b"".join(_ok(m.lsub()))
    assert b"Sent" in subs
    m.logout()


@pytest.mark.parametrize("name", ["../bob", "a/b", "a..b", ".hidden", "x..", "&Jjo", "&AGE-", "a*b"])
def test_bad_mailbox_names(imapd, ca, name):
    user = new_account(imapd)
    m = login(imapd, ca, user)
    assert m.create(f'"{name}"')[0] == "NO"
    assert m.select(f'"{name}"')[0] == "NO"
    m.logout()


def test_nul_in_mailbox_name(imapd, ca):
    user = new_account(imapd)
    raw = RawIMAP(imapd.imaps_port, tls=client_ctx(ca))
    raw.cmd(b"a", f"LOGIN {user} {PASSWORD}".encode())
    raw.send(b"b CREATE {3}\r\n")
    line = raw.readline()
    if line.startswith(b"+"):
        raw.send(b"a\0b\r\n")
        line = raw.read_until_tagged(b"b")[-1]
    assert line.startswith((b"b NO", b"b BAD"))
    assert raw.cmd(b"c", b"NOOP")[-1].startswith(b"c OK")
    raw.close()


def test_cannot_reach_another_users_mail(imapd, ca):
    alice, bob = new_account(imapd), new_account(imapd)
    smtp_deliver(imapd, bob, "secret")
    m = login(imapd, ca, alice)
    for name in ("../" + bob.split("@")[0], f"../../example.test/{bob.split('@')[0]}", "..", "INBOX/.."):
        assert m.select(f'"{name}"')[0] == "NO"
    names = b"".join(_ok(m.list('""', "*")))
    assert bob.split("@")[0].encode() not in names
    m.logout()


def test_bad_input(imapd, ca):
    user = new_account(imapd)
    raw = RawIMAP(imapd.imaps_port, tls=client_ctx(ca))
    assert raw.cmd(b"a", b"FROB")[-1].startswith(b"a BAD")
    assert raw.cmd(b"b", b"FETCH 1 FLAGS")[-1].startswith(b"b BAD")  # not authenticated
    raw.cmd(b"c", f"LOGIN {user} {PASSWORD}".encode())
    assert raw.cmd(b"d", b"FETCH 1 FLAGS")[-1].startswith(b"d BAD")  # nothing selected
    raw.cmd(b"e", b"SELECT INBOX")
    assert raw.cmd(b"f", b"FETCH 1:x FLAGS")[-1].startswith(b"f BAD")
    assert raw.cmd(b"g", b"FETCH 1 (FLAGS")[-1].startswith(b"g BAD")
    assert raw.cmd(b"h", b"FETCH 5 FLAGS")[-1].startswith(b"h BAD")  # empty mailbox
    assert raw.cmd(b"i", b"SEARCH ((((FLAGGED)")[-1].startswith(b"i BAD")
    # a literal above max_append_size (1M): NO [TOOBIG] before a byte of it is sent
    raw.send(b"j APPEND INBOX {2000000}\r\n")
    assert raw.readline().startswith(b"j NO [TOOBIG]")
    # LITERAL+ too big: BAD, the octets are discarded, the session goes on
    raw.send(b"k APPEND INBOX {1100000+}\r\n" + b"x" * 1100000 + b"\r\n")
    assert raw.read_until_tagged(b"k")[-1].startswith(b"k BAD [TOOBIG]")
    raw.send(b"l NOOP " + b"x" * 70000 + b"\r\n")  # overlong line
    assert raw.read_until_tagged(b"l")[-1].startswith(b"l BAD")
    raw.send(b"m NOOP\nn NOOP\r\n")  # bare LF
    lines = raw.read_until_tagged(b"n")
    assert any(line.startswith(b"m BAD") or line.startswith(b"* BAD") for line in lines)
    assert raw.cmd(b"o", b"UID FETCH 1:* FLAGS")[-1].startswith(b"o OK")  # empty mailbox: OK
    assert raw.cmd(b"p", b"NOOP")[-1].startswith(b"p OK")
    raw.close()


def test_enable_unknown_is_ignored_and_list_root(imapd, ca):
    user = new_account(imapd)
    raw = RawIMAP(imapd.imaps_port, tls=client_ctx(ca))
    raw.cmd(b"a", f"LOGIN {user} {PASSWORD}".encode())
    lines = raw.cmd(b"b", b"ENABLE UTF8=ACCEPT")
    assert lines[0] == b"* ENABLED\r\n" and lines[-1].startswith(b"b OK")
    lines = raw.cmd(b"c", b'LIST "" ""')
    assert lines[0] == b'* LIST (\\Noselect) "." ""\r\n'
    raw.close()


def test_examine_is_read_only(imapd, ca):
    user = new_account(imapd)
    smtp_deliver(imapd, user)
    m = login(imapd, ca, user)
    typ, _ = m.select("INBOX", readonly=True)
    assert typ == "OK"
    assert m.store("1", "+FLAGS", "\\Seen")[0] == "NO"
    m.fetch("1", "(BODY[])")
    m.close()
    m.select("INBOX")
    assert b"\\Seen" not in _ok(m.fetch("1", "(FLAGS)"))[0]
    m.logout()


def test_uidplus_copy_expunge_and_condstore(imapd, ca):
    user = new_account(imapd)
    for i in range(5):
        smtp_deliver(imapd, user, f"m{i}")
    raw = RawIMAP(imapd.imaps_port, tls=client_ctx(ca))
    raw.cmd(b"a", f"LOGIN {user} {PASSWORD}".encode())
    sel = b"".join(raw.cmd(b"b", b"SELECT INBOX (CONDSTORE)"))
    modseq = int(re.search(rb"HIGHESTMODSEQ (\d+)", sel).group(1))
    copied = raw.cmd(b"c", b"UID COPY 2:4 Archive")[-1]
    assert re.match(rb"c OK \[COPYUID \d+ 2:4 1:3\]", copied), copied
    raw.cmd(b"d", b"UID STORE 1,3 +FLAGS.SILENT (\\Deleted)")
    out = b"".join(raw.cmd(b"e", b"UID FETCH 1:* (FLAGS) (CHANGEDSINCE %d)" % modseq))
    assert out.count(b"* ") == 2 and b"MODSEQ" in out
    # UNCHANGEDSINCE fails for a message changed since
    out = raw.cmd(b"f", b"UID STORE 1 (UNCHANGEDSINCE %d) +FLAGS (\\Flagged)" % modseq)[-1]
    assert out.startswith(b"f OK [MODIFIED 1]"), out
    out = b"".join(raw.cmd(b"g", b"UID EXPUNGE 3"))
    assert b"* 3 EXPUNGE" in out and b"* 1 EXPUNGE" not in out
    out = b"".join(raw.cmd(b"h", b"EXPUNGE"))
    assert b"* 1 EXPUNGE" in out
    assert raw.cmd(b"i", b"SEARCH ALL")[0] == b"* SEARCH 1 2 3\r\n"
    esearch = raw.cmd(b"j", b"UID SEARCH RETURN (MIN MAX COUNT) ALL")[0]
    assert esearch == b'* ESEARCH (TAG "j") UID MIN 2 MAX 5 COUNT 3\r\n'
    raw.close()


def test_qresync(imapd, ca):
    user = new_account(imapd)
    for i in range(4):
        smtp_deliver(imapd, user, f"m{i}")
    raw = RawIMAP(imapd.imaps_port, tls=client_ctx(ca))
    raw.cmd(b"a", f"LOGIN {user} {PASSWORD}".encode())
    raw.cmd(b"b", b"ENABLE QRESYNC")
    sel = b"".join(raw.cmd(b"c", b"SELECT INBOX"))
    validity = int(re.search(rb"UIDVALIDITY (\d+)", sel).group(1))
    modseq = int(re.search(rb"HIGHESTMODSEQ (\d+)", sel).group(1))
    raw.cmd(b"d", b"UID STORE 2 +FLAGS (\\Seen)")
    out = b"".join(raw.cmd(b"e", b"UID STORE 3 +FLAGS (\\Deleted)") + raw.cmd(b"f", b"EXPUNGE"))
    assert b"* VANISHED 3" in out
    raw.cmd(b"g", b"UNSELECT")
    out = b"".join(raw.cmd(b"h", b"SELECT INBOX (QRESYNC (%d %d 1:4))" % (validity, modseq)))
    assert b"* VANISHED (EARLIER) 3" in out
    assert re.search(rb"\* 2 FETCH \(UID 2 FLAGS \(\\Seen\) MODSEQ", out), out
    raw.close()


# ---------------------------------------------------------------- concurrency


def test_two_sessions_see_each_others_changes(imapd, ca):
    user = new_account(imapd)
    for i in range(3):
        smtp_deliver(imapd, user, f"m{i}")
    a = RawIMAP(imapd.imaps_port, tls=client_ctx(ca))
    b = RawIMAP(imapd.imaps_port, tls=client_ctx(ca))
    for c in (a, b):
        c.cmd(b"l", f"LOGIN {user} {PASSWORD}".encode())
        c.cmd(b"s", b"SELECT INBOX")
    a.cmd(b"a1", b"STORE 2 +FLAGS (\\Flagged)")
    out = b"".join(b.cmd(b"b1", b"NOOP"))
    assert re.search(rb"\* 2 FETCH \(UID \d+ FLAGS \(\\Flagged\)\)", out), out
    # b IDLEs; a expunges message 1 and appends: b hears both at once
    b.send(b"b2 IDLE\r\n")
    assert b.readline().startswith(b"+")
    a.cmd(b"a2", b"STORE 1 +FLAGS (\\Deleted)")
    a.cmd(b"a3", b"EXPUNGE")
    seen = b""
    deadline = time.monotonic() + 3
    while b"* 1 EXPUNGE" not in seen and time.monotonic() < deadline:
        seen += b.readline()
    assert b"* 1 EXPUNGE" in seen and b"EXISTS" not in seen  # EXISTS never reports a shrink
    a.cmd(b"a3b", b"APPEND INBOX {12+}\r\nSubject: x\r\n")
    while b"EXISTS" not in seen and time.monotonic() < deadline:
        seen += b.readline()
    assert b"* 3 EXISTS" in seen
    b.send(b"DONE\r\n")
    b.read_until_tagged(b"b2")
    # FETCH by sequence number must not be disturbed by a's expunge until b asks (NOOP)
    a.cmd(b"a4", b"STORE 1 +FLAGS (\\Deleted)")
    a.cmd(b"a5", b"EXPUNGE")
    out = b"".join(b.cmd(b"b3", b"FETCH 1:2 (UID)"))
    assert b"EXPUNGE" not in out and b"* 2 FETCH" in out
    out = b"".join(b.cmd(b"b4", b"NOOP"))
    assert b"* 1 EXPUNGE" in out
    a.close()
    b.close()


def test_twenty_sessions_per_user(imapd, ca):
    user = new_account(imapd)
    sessions = [login(imapd, ca, user) for _ in range(20)]
    for m in sessions:
        _ok(m.select("INBOX"))
    for m in sessions:
        m.logout()


def test_session_limit_and_dead_sessions_are_reaped(ca, tmp_path):
    d = imap_daemon(tmp_path / "d", ca, imap={"max_sessions_per_user": 3, "login_timeout": "1s"})
    try:
        user = new_account(d)
        socks = [login(d, ca, user) for _ in range(3)]
        with pytest.raises(imaplib.IMAP4.error, match="LIMIT"):
            login(d, ca, user)
        # a client that vanishes without LOGOUT frees its slot
        socks[0].sock.shutdown(socket.SHUT_RDWR)
        socks[0].sock.close()
        def can_log_in() -> bool:
            try:
                login(d, ca, user).logout()
            except imaplib.IMAP4.error:
                return False
            return True

        wait_until(can_log_in, timeout=5, what="the vanished client's session slot to be freed")
        # the login timeout closes a silent unauthenticated connection
        raw = RawIMAP(d.imaps_port, tls=client_ctx(ca))
        assert raw.readline().startswith(b"* BYE")
    finally:
        d.stop()


def test_uids_survive_restart(ca, tmp_path):
    d = imap_daemon(tmp_path / "d", ca)
    try:
        user = new_account(d)
        for i in range(3):
            smtp_deliver(d, user, f"m{i}")
        m = login(d, ca, user)
        m.select("INBOX")
        before = _ok(m.fetch("1:*", "(UID FLAGS)"))
        validity = _ok(m.status("INBOX", "(UIDVALIDITY)"))
        m.store("2", "+FLAGS", "\\Answered")
        m.logout()
        d.stop()
        d.start()
        m = login(d, ca, user)
        m.select("INBOX")
        after = _ok(m.fetch("1:*", "(UID)"))
        assert [re.search(rb"UID (\d+)", x).group(1) for x in before] == \
               [re.search(rb"UID (\d+)", x).group(1) for x in after]
        assert _ok(m.status("INBOX", "(UIDVALIDITY)")) == validity
        assert b"\\Answered" in _ok(m.fetch("2", "(FLAGS)"))[0]
        m.logout()
    finally:
        d.stop()


def test_literal_plus_append_and_internaldate(imapd, ca):
    user = new_account(imapd)
    raw = RawIMAP(imapd.imaps_port, tls=client_ctx(ca))
    raw.cmd(b"a", f"LOGIN {user} {PASSWORD}".encode())
    msg = b"Subject: lp\r\n\r\nliteral plus\r\n"
    raw.send(b'b APPEND Drafts (\\Draft $Label1) "01-Jan-2020 10:00:00 +0100" {%d+}\r\n' % len(msg)
             + msg + b"\r\n")
    assert raw.read_until_tagged(b"b")[-1].startswith(b"b OK [APPENDUID ")
    raw.cmd(b"c", b"SELECT Drafts")
    out = b"".join(raw.cmd(b"d", b"FETCH 1 (FLAGS INTERNALDATE)"))
    assert b"\\Draft" in out and b"$Label1" in out and b'INTERNALDATE "01-Jan-2020' in out
    assert raw.cmd(b"e", b"APPEND Nowhere {1+}\r\nx")[-1].startswith(b"e NO [TRYCREATE]")
    raw.close()


def test_imapclient_session(imapd, ca):
    imapclient = pytest.importorskip("imapclient")
    user = new_account(imapd)
    smtp_deliver(imapd, user, "via imapclient", "line one\r\nline two\r\n")
    with imapclient.IMAPClient("127.0.0.1", port=imapd.imaps_port, ssl=True, ssl_context=client_ctx(ca),
                               timeout=10) as c:
        c.login(user, PASSWORD)
        assert c.find_special_folder(b"\\Sent") == "Sent"
        assert c.find_special_folder(b"\\Trash") == "Trash"
        info = c.select_folder("INBOX")
        assert info[b"EXISTS"] == 1 and info[b"UIDVALIDITY"] > 0
        uids = c.search(["SUBJECT", "imapclient"])
        assert len(uids) == 1
        data = c.fetch(uids, ["ENVELOPE", "BODYSTRUCTURE", "RFC822.SIZE", "FLAGS"])[uids[0]]
        assert data[b"ENVELOPE"].subject == b"via imapclient"
        assert data[b"BODYSTRUCTURE"][0] == b"TEXT"
        c.add_flags(uids, [imapclient.FLAGGED])
        assert imapclient.FLAGGED in c.get_flags(uids)[uids[0]]
        c.move(uids, "Archive")
        assert c.folder_status("Archive", ["MESSAGES"])[b"MESSAGES"] == 1
        assert c.select_folder("INBOX")[b"EXISTS"] == 0
        c.create_folder("Lists.python")
        assert ("Lists.python" in [f[2] for f in c.list_folders()])
        c.idle()
        smtp_deliver(imapd, user, "during idle")
        responses = c.idle_check(timeout=5)
        c.idle_done()
        assert (1, b"EXISTS") in responses


def test_expunge_racing_appends_loses_nothing(imapd, ca):
    """One session appends while another expunges: every surviving message keeps its UID
    and nothing appended is lost or numbered twice."""
    import threading

    user = new_account(imapd)
    a = login(imapd, ca, user)
    for i in range(10):
        a.append("INBOX", "(\\Deleted)" if i % 2 else None, None, f"Subject: old {i}\r\n\r\nx\r\n".encode())
    appended: list[int] = []

    def appender() -> None:
        c = login(imapd, ca, user)
        for i in range(40):
            _typ, data = c.append("INBOX", None, None, f"Subject: new {i}\r\n\r\nx\r\n".encode())
            appended.append(int(re.search(rb"APPENDUID \d+ (\d+)", data[0]).group(1)))
        c.logout()

    t = threading.Thread(target=appender)
    a.select("INBOX")
    t.start()
    for _ in range(10):
        a.expunge()
        a.store("1:*", "+FLAGS", "\\Flagged")
    t.join()
    a.noop()
    uids = [int(x) for x in _ok(a.uid("SEARCH", "ALL"))[0].split()]
    assert len(appended) == 40 and len(set(appended)) == 40
    assert set(appended) <= set(uids)
    assert len(uids) == 45 and uids == sorted(uids)
    subjects = _ok(a.fetch("1:*", "(BODY.PEEK[HEADER.FIELDS (SUBJECT)])"))
    assert sum(1 for x in subjects if isinstance(x, tuple)) == 45
    a.logout()


def test_deleting_a_selected_mailbox_closes_it_for_others(imapd, ca):
    user = new_account(imapd)
    a, b = login(imapd, ca, user), login(imapd, ca, user)
    _ok(a.create("Temp"))
    _ok(a.append("Temp", None, None, b"Subject: t\r\n\r\nt\r\n"))
    _ok(b.select("Temp"))
    _ok(a.delete("Temp"))
    typ, _data = b.noop()
    assert typ == "OK"
    with pytest.raises(imaplib.IMAP4.error, match="SELECT first"):  # no longer selected
        b.fetch("1", "(FLAGS)")
    _ok(b.select("INBOX"))
    a.logout()
    b.logout()


def test_idle_keepalive_and_autologout(ca, tmp_path):
    d = imap_daemon(tmp_path / "d", ca, imap={"idle_timeout": "3s", "idle_keepalive": "1s"})
    try:
        user = new_account(d)
        raw = RawIMAP(d.imaps_port, tls=client_ctx(ca))
        raw.cmd(b"a", f"LOGIN {user} {PASSWORD}".encode())
        raw.cmd(b"b", b"SELECT INBOX")
        raw.send(b"c IDLE\r\n")
        assert raw.readline().startswith(b"+")
        assert raw.readline() == b"* OK Still here\r\n"
        # re-arming: DONE + IDLE again resets the autologout clock; DONE goes after the
        # second keepalive, 2 s into the 3 s, so an autologout still counted from the first
        # IDLE would come within a second of the second one
        assert raw.readline() == b"* OK Still here\r\n"
        raw.send(b"DONE\r\n")
        raw.read_until_tagged(b"c")
        raw.send(b"d IDLE\r\n")
        assert raw.readline().startswith(b"+")
        started = time.monotonic()
        lines = []
        while not lines or not lines[-1].startswith(b"* BYE"):
            line = raw.readline()
            assert line, lines
            lines.append(line)
        assert 2.0 < time.monotonic() - started < 6 and b"autologout" in lines[-1]
        raw.close()
    finally:
        d.stop()


def test_failed_logins_are_throttled(ca, tmp_path):
    d = imap_daemon(tmp_path / "d", ca, submission={"max_auth_failures_per_ip": 3})
    try:
        user = new_account(d)
        raw = RawIMAP(d.imaps_port, tls=client_ctx(ca))
        for i in range(3):
            assert raw.cmd(b"a%d" % i, f"LOGIN {user} wrong{i}".encode())[-1].startswith(
                b"a%d NO [AUTHENTICATIONFAILED]" % i)
        assert raw.readline() == b"* BYE too many failed logins\r\n"  # 3 on one connection
        raw.close()
        # now even the right password is refused from this address
        raw = RawIMAP(d.imaps_port, tls=client_ctx(ca))
        assert raw.cmd(b"b", f"LOGIN {user} {PASSWORD}".encode())[-1].startswith(b"b NO [UNAVAILABLE]")
        assert "auth throttled client=127.0.0.1" in d.wait_log("auth throttled client=127.0.0.1")
        raw.close()
    finally:
        d.stop()


def test_list_extended_and_list_status(imapd, ca):
    user = new_account(imapd)
    smtp_deliver(imapd, user)
    raw = RawIMAP(imapd.imaps_port, tls=client_ctx(ca))
    raw.cmd(b"a", f"LOGIN {user} {PASSWORD}".encode())
    lines = raw.cmd(b"b", b'LIST "" "*" RETURN (SUBSCRIBED CHILDREN STATUS (MESSAGES UNSEEN))')
    assert lines[0].startswith(b'* LIST (\\HasNoChildren) "." INBOX')
    assert lines[1] == b"* STATUS INBOX (MESSAGES 1 UNSEEN 1)\r\n"
    assert any(line.startswith(b'* LIST (\\HasNoChildren \\Sent \\Subscribed) "." Sent') for line in lines)
    lines = raw.cmd(b"c", b'LIST (SUBSCRIBED) "" "*"')
    assert all(b"\\Subscribed" in line for line in lines[:-1]) and len(lines) == 6
    raw.close()


def test_header_sync_is_the_same_cold_warm_and_after_cache_loss(imapd, ca):
    user = new_account(imapd)
    for i in range(3):
        smtp_deliver(imapd, user, f"s{i}")
    query = b"UID FETCH 1:* (UID BODY.PEEK[HEADER.FIELDS (From Subject Message-ID)])"
    results = []
    for _ in range(2):
        raw = RawIMAP(imapd.imaps_port, tls=client_ctx(ca))
        raw.cmd(b"a", f"LOGIN {user} {PASSWORD}".encode())
        raw.cmd(b"b", b"SELECT INBOX")
        results.append(raw.cmd(b"c", query))
        raw.cmd(b"d", b"LOGOUT")
        raw.close()
    cache = imapd.state_dir / "mail/example.test" / user.split("@")[0] / "pymaild-cache.sqlite"
    assert cache.exists()
    assert results[0] == results[1] and len(results[0]) == 4
    assert b"Subject: s0\r\n" in results[0][0] and b"Date:" not in results[0][0]


NESTED = (b"From: a@example.org\r\nTo: b@example.test\r\nCc: c@example.test\r\nBcc: d@example.test\r\n"
          b"Subject: nested\r\nDate: Tue, 10 Nov 2026 09:00:00 +0100\r\nMIME-Version: 1.0\r\n"
          b"Content-Type: multipart/mixed; boundary=XX\r\n\r\npreamble\r\n"
          b"--XX\r\nContent-Type: text/plain\r\n\r\nouter text\r\n"
          b"--XX\r\nContent-Type: message/rfc822\r\n\r\n"
          b"From: inner@example.org\r\nSubject: inner\r\n\r\ninner body\r\n"
          b"--XX--\r\n")


def test_rfc3501_fetch_and_search_coverage(imapd, ca):
    user = new_account(imapd)
    raw = RawIMAP(imapd.imaps_port, tls=client_ctx(ca))
    raw.cmd(b"a", f"LOGIN {user} {PASSWORD}".encode())
    raw.send(b'b APPEND INBOX (\\Answered $Work) "10-Nov-2026 09:00:00 +0100" {%d+}\r\n' % len(NESTED)
             + NESTED + b"\r\n")
    raw.read_until_tagged(b"b")
    small = b"Subject: small\r\nX-Tag: yes\r\n\r\nx\r\n"
    raw.send(b'c APPEND INBOX (\\Draft) {%d+}\r\n' % len(small) + small + b"\r\n")
    raw.read_until_tagged(b"c")
    raw.cmd(b"d", b"SELECT INBOX")
    out = b"".join(raw.cmd(b"e", b"FETCH 1 FAST"))
    assert b"FLAGS (" in out and b"INTERNALDATE" in out and b"RFC822.SIZE %d" % len(NESTED) in out
    out = b"".join(raw.cmd(b"f", b"FETCH 1 FULL"))
    assert b"ENVELOPE (" in out and b"BODY (" in out and b"BODYSTRUCTURE" not in out
    out = b"".join(raw.cmd(b"g", b"FETCH 1 ALL"))
    assert b"ENVELOPE (" in out and b"BODY (" not in out
    out = b"".join(raw.cmd(b"h", b"FETCH 1 (BODY.PEEK[2.HEADER] BODY.PEEK[2.TEXT] BODY.PEEK[1.MIME] BODY.PEEK"
                                 b"[HEADER.FIELDS.NOT (Bcc Cc To From Date MIME-Version Content-Type)])"))
    # The CRLF before a boundary belongs to the boundary (RFC 2046), not to the inner body.
    assert b"Subject: inner\r\n\r\n" in out and b"BODY[2.TEXT] \"inner body\"" in out
    assert b"Content-Type: text/plain\r\n\r\n" in out and b"Subject: nested\r\n\r\n" in out
    out = b"".join(raw.cmd(b"i", b"FETCH 1 (RFC822.HEADER BODY.PEEK[TEXT]<0.8>)"))
    assert b"RFC822.HEADER {" in out and b'BODY[TEXT]<0> "preamble"' in out
    out = b"".join(raw.cmd(b"j", b"FETCH 1 (BODY.PEEK[3] BODY.PEEK[1.2.3])"))  # no such parts
    assert b'BODY[3] ""' in out and b'BODY[1.2.3] ""' in out
    out = b"".join(raw.cmd(b"k", b"FETCH 1 (BODYSTRUCTURE)"))
    assert b'("MESSAGE" "RFC822" NIL NIL NIL "7BIT"' in out
    searches = {
        b"ANSWERED": b"1", b"UNANSWERED": b"2", b"DRAFT": b"2", b"UNDRAFT": b"1",
        b"KEYWORD $Work": b"1", b"UNKEYWORD $Work": b"2", b"LARGER 100": b"1", b"SMALLER 100": b"2",
        b"HEADER X-Tag yes": b"2", b"HEADER X-Tag \"\"": b"2", b"BCC d@example": b"1", b"CC c@": b"1",
        b"TO b@example.test": b"1", b"SENTON 10-Nov-2026": b"1", b"ON 10-Nov-2026": b"1",
        b"BEFORE 10-Nov-2026": b"", b"SINCE 1-Jan-2026": b"1 2", b"UID 2": b"2", b"2:*": b"2",
        b"RECENT": b"1 2", b"NEW": b"1 2", b"OLD": b"", b"BODY \"inner body\"": b"1", b"TEXT x-tag": b"2",
        b"OR DRAFT ANSWERED": b"1 2", b"NOT (OR DRAFT ANSWERED)": b"", b"ALL": b"1 2",
        b"CHARSET UTF-8 SUBJECT nested": b"1", b"UNSEEN DELETED": b"",
    }
    for i, (criteria, expect) in enumerate(searches.items()):
        line = raw.cmd(b"s%d" % i, b"SEARCH " + criteria)[0]
        assert line == b"* SEARCH" + (b" " + expect if expect else b"") + b"\r\n", (criteria, line)
    assert raw.cmd(b"t", b"SEARCH CHARSET KOI8-R ALL")[-1].startswith(b"t NO [BADCHARSET")
    # STORE variants
    out = b"".join(raw.cmd(b"u", b"STORE 1 FLAGS (\\Flagged)"))
    assert b"FLAGS (\\Flagged \\Recent)" in out
    out = b"".join(raw.cmd(b"v", b"STORE 1 -FLAGS.SILENT (\\Flagged)"))
    assert b"FETCH" not in out
    raw.cmd(b"w", b"STORE 2 +FLAGS (\\Deleted)")
    assert raw.cmd(b"x", b"CHECK")[-1].startswith(b"x OK")
    assert raw.cmd(b"y", b"CLOSE")[-1].startswith(b"y OK")  # expunges message 2 silently
    out = b"".join(raw.cmd(b"z", b"EXAMINE INBOX"))
    assert b"* 1 EXISTS" in out and b"[READ-ONLY]" in out and b"[PERMANENTFLAGS ()]" in out
    assert raw.cmd(b"z1", b"STORE 1 +FLAGS (\\Seen)")[-1].startswith(b"z1 NO")
    assert raw.cmd(b"z2", b"EXPUNGE")[-1].startswith(b"z2 NO")
    raw.close()


def test_sigterm_says_bye_to_idle_and_waiting_clients(ca, tmp_path):
    import signal as _signal

    d = imap_daemon(tmp_path / "d", ca)
    user = new_account(d)
    idler = RawIMAP(d.imaps_port, tls=client_ctx(ca))
    idler.cmd(b"a", f"LOGIN {user} {PASSWORD}".encode())
    idler.cmd(b"b", b"SELECT INBOX")
    idler.send(b"c IDLE\r\n")
    assert idler.readline().startswith(b"+")
    waiting = RawIMAP(d.imaps_port, tls=client_ctx(ca))
    d.signal(_signal.SIGTERM)
    assert idler.readline().startswith(b"* BYE")
    assert waiting.readline().startswith(b"* BYE")
    assert d.proc.wait(15) == 0
    idler.close()
    waiting.close()


def test_disk_error_fails_the_command_not_the_session(imapd, ca):
    user = new_account(imapd)
    folder = imapd.state_dir / "mail/example.test" / user.split("@")[0] / ".Drafts"
    (folder / "tmp").rmdir()
    (folder / "tmp").write_bytes(b"")  # APPEND's write to tmp/ now fails with an OSError
    raw = RawIMAP(imapd.imaps_port, tls=client_ctx(ca))
    raw.cmd(b"a", f"LOGIN {user} {PASSWORD}".encode())
    reply = raw.cmd(b"b", b"APPEND Drafts {12+}\r\nSubject: x\r\n")[-1]
    assert reply.startswith(b"b NO [SERVERBUG]"), reply
    assert raw.cmd(b"c", b"SELECT INBOX")[-1].startswith(b"c OK")
    raw.close()
