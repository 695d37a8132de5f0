"""MailboxTree: IMAP names <-> Maildir++ folders, LIST patterns, CREATE/DELETE/RENAME."""

from __future__ import annotations

import pytest

from mailserver.imap.mailboxes import MailboxError, MailboxTree, check_name, pattern_matches
from mailserver.storage.maildirpp import create_maildirpp


@pytest.fixture
def tree(tmp_path):
    create_maildirpp(tmp_path / "m", durable=False)
    return MailboxTree(tmp_path / "m")


@pytest.mark.parametrize("name", ["Sent", "a.b.c", "&ZeVnLIqe-", "x y",
                                  "INBOX.sub", "[Gmail]"])
def test_good_names(name):
    assert check_name(name)


@pytest.mark.parametrize("name", ["", "a/b", "..", "a..b", ".a", "a.", "a\x00b", "a\nb", "*", "a%",
                                  "&Jjo", "&AGE-", "x" * 201, ".".join("a" * 17), "a\\b"])
def test_bad_names(name):
    with pytest.raises(MailboxError):
        check_name(name)


def test_inbox_case_is_canonical():
    assert check_name("inbox") == "INBOX"
    assert check_name("Inbox.Sub") == "INBOX.Sub"


@pytest.mark.parametrize(("ref", "pattern", "name", "hit"), [
    ("", "*", "a.b", True), ("", "%", "a.b", False), ("", "%", "a", True), ("", "a.%", "a.b", True),
    ("a.", "%", "a.b", True), ("", "inbox", "INBOX", True), ("", "IN*", "INBOX", True),
    ("", "S*", "Sent", True), ("", "s*", "Sent", False),
])
def test_patterns(ref, pattern, name, hit):
    assert pattern_matches(ref, pattern, name) is hit


def test_default_tree_lists_special_use(tree):
    infos = {i.name: i for i in tree.list()}
    assert next(iter(infos)) == "INBOX"
    assert "\\Sent" in infos["Sent"].attributes and infos["Sent"].subscribed
    assert "\\HasNoChildren" in infos["INBOX"].attributes


def test_create_makes_parents_and_delete_needs_no_children(tree):
    tree.create("a.b.c")
    assert tree.exists("a") and tree.exists("a.b") and tree.exists("a.b.c")
    assert (tree.root / ".a.b.c" / "maildirfolder").exists()
    with pytest.raises(MailboxError) as exc:
        tree.delete("a.b")
    assert exc.value.code == "INUSE"
    tree.delete("a.b.c")
    tree.delete("a.b")
    assert not tree.exists("a.b")
    with pytest.raises(MailboxError) as exc:
        tree.create("a")
    assert exc.value.code == "ALREADYEXISTS"
    with pytest.raises(MailboxError):
        tree.delete("INBOX")


def test_missing_parent_is_noselect(tree):
    (tree.root / ".x.y" / "cur").mkdir(parents=True)
    infos = {i.name: i for i in tree.list()}
    assert "\\Noselect" in infos["x"].attributes and not infos["x"].selectable
    assert "\\HasChildren" in infos["x"].attributes


def test_rename_moves_children_and_subscriptions(tree):
    tree.create("p.q")
    tree.subscribe("p.q")
    tree.rename("p", "r.s")
    assert tree.exists("r.s.q") and not tree.exists("p.q")
    assert "r.s.q" in tree.subscriptions() and "p.q" not in tree.subscriptions()
    with pytest.raises(MailboxError):
        tree.rename("r", "r.inner")


def test_rename_inbox_moves_mail(tree):
    (tree.root / "new" / "1.a.host").write_bytes(b"x")
    (tree.root / "cur" / "2.b.host:2,S").write_bytes(b"y")
    tree.rename("INBOX", "Old")
    assert sorted(p.name for p in (tree.root / ".Old" / "cur").iterdir()) == ["1.a.host:2,", "2.b.host:2,S"]
    assert not list((tree.root / "cur").iterdir()) and not list((tree.root / "new").iterdir())


def test_unknown_directories_are_not_listed(tree):
    (tree.root / "..deleted-x" / "cur").mkdir(parents=True)
    (tree.root / ".bad&Jjo" / "cur").mkdir(parents=True)
    (tree.root / "notafolder").mkdir()
    names = tree.names()
    assert all(not n.startswith(".") and "&Jjo" not in n for n in names)


def test_dovecot_subscriptions_format(tree):
    (tree.root / "subscriptions").write_text("V\t2\n\nSent\nLists\tpython\n")
    assert tree.subscriptions() == ["Sent", "Lists.python"]
