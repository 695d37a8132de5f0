"""Keywords are capped per message and per folder (NO [LIMIT]); 2,000 on one message were
accepted before. Past Dovecot's 26 keyword letters the index keeps them, so the caps are
what bounds the index rows and the FLAGS response."""

from __future__ import annotations

from pathlib import Path

import pytest

from mailserver.storage.index import MailboxIndex
from mailserver.storage.indextypes import KeywordLimit
from mailserver.storage.maildir import MaildirWriter
from mailserver.storage.maildirpp import create_maildirpp
from tests.support.imap import imap_daemon, login, new_account, smtp_deliver


@pytest.fixture
def ix(tmp_path: Path) -> MailboxIndex:
    root = tmp_path / "bob"
    create_maildirpp(root, durable=False)
    writer = MaildirWriter(fsync=False)
    for i in range(3):
        writer.deliver(root, None, [f"Subject: {i}\r\n\r\nbody\r\n".encode()])
    index = MailboxIndex(root)
    index.sync()
    return index


def test_per_message_cap_on_store_and_append(ix: MailboxIndex, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(MailboxIndex, "max_keywords_per_message", 30)
    uid = ix.uids[0]
    with pytest.raises(KeywordLimit, match="at most 30 keywords"):
        ix.store_flags([uid], [f"k{i}" for i in range(2000)], "add")
    assert ix.flags(uid) == frozenset()  # nothing changed
    # 30 is fine (26 letters + 4 in the index); one more added later is not.
    ix.store_flags([uid], [f"k{i}" for i in range(30)], "add")
    assert len(ix.flags(uid)) == 30
    with pytest.raises(KeywordLimit):
        ix.store_flags([uid], ["one-more"], "add")
    assert len(ix.flags(uid)) == 30
    ix.store_flags([uid], ["k0", "\\Seen"], "add")  # already there: no growth, allowed
    with pytest.raises(KeywordLimit):
        ix.append(b"Subject: x\r\n\r\n", [f"a{i}" for i in range(31)])
    ix.store_flags([uid], ["k0"], "remove")  # removing is always allowed
    ix.store_flags([uid], [f"r{i}" for i in range(30)], "replace")


def test_per_folder_cap_on_store_append_and_copy(ix: MailboxIndex, tmp_path: Path,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(MailboxIndex, "max_keywords_per_message", 40)
    monkeypatch.setattr(MailboxIndex, "max_keywords_per_folder", 60)
    a, b, c = ix.uids
    ix.store_flags([a], [f"a{i}" for i in range(40)], "add")
    ix.store_flags([b], [f"b{i}" for i in range(20)], "add")  # 60 distinct now
    with pytest.raises(KeywordLimit, match="at most 60 distinct keywords"):
        ix.store_flags([c], ["brand-new"], "add")
    with pytest.raises(KeywordLimit):
        ix.append(b"Subject: x\r\n\r\n", ["another-new"])
    ix.store_flags([c], ["a1", "B2"], "add")  # known keywords (any case) are fine
    assert len(ix.keywords()) == 60
    other_root = tmp_path / "other"
    create_maildirpp(other_root, durable=False)
    other = MailboxIndex(other_root)
    other.sync()
    monkeypatch.setattr(MailboxIndex, "max_keywords_per_folder", 50)
    with pytest.raises(KeywordLimit):
        ix.copy_to(other, [a, b])  # 60 distinct would land in a folder capped at 50
    assert ix.copy_to(other, [a]) != []  # 40 fit


def test_imap_store_of_2000_keywords_is_no_limit(ca, tmp_path: Path) -> None:
    d = imap_daemon(tmp_path, ca, imap={"max_keywords_per_message": 20, "max_keywords_per_folder": 25})
    try:
        user = new_account(d)
        smtp_deliver(d, user)
        smtp_deliver(d, user)
        m = login(d, ca, user)
        m.select("INBOX")
        typ, data = m.store("1", "+FLAGS", "(" + " ".join(f"kw{i}" for i in range(2000)) + ")")
        assert typ == "NO" and data[0].startswith(b"[LIMIT]"), data
        typ, _ = m.store("1", "+FLAGS", "(" + " ".join(f"kw{i}" for i in range(20)) + ")")
        assert typ == "OK"
        typ, data = m.store("2", "+FLAGS", "(" + " ".join(f"new{i}" for i in range(6)) + ")")
        assert typ == "NO" and b"[LIMIT]" in data[0] and b"25 distinct" in data[0], data
        typ, data = m.append("INBOX", "(" + " ".join(f"ap{i}" for i in range(21)) + ")", None,
                             b"Subject: x\r\n\r\nbody\r\n")
        assert typ == "NO" and b"[LIMIT]" in data[0], data
        assert m.noop()[0] == "OK"  # the session goes on
        m.logout()
    finally:
        d.stop()
