"""CREATE-SPECIAL-USE (RFC 6154 3): CREATE name (USE (\\Sent)) through a real pymaild and
on the Maildir++ tree: the use shows in LIST (SPECIAL-USE), a held or unknown use is
NO [USEATTR] with nothing created, the use follows RENAME and goes with DELETE."""

from __future__ import annotations

import pytest

from mailserver.imap.commands import parse_command
from mailserver.imap.errors import IMAPParseError
from mailserver.imap.mailboxes import SPECIAL_USE_FILE, MailboxError, MailboxTree
from mailserver.storage.maildirpp import create_maildirpp
from tests.support.imap import RawIMAP, client_ctx, imap_daemon, new_account


@pytest.fixture
def tree(tmp_path):
    create_maildirpp(tmp_path / "m", durable=False)
    return MailboxTree(tmp_path / "m")


def _uses(tree: MailboxTree) -> dict[str, str]:
    specials = ("\\Sent", "\\Drafts", "\\Trash", "\\Junk", "\\Archive")
    return {i.name: a for i in tree.list() for a in i.attributes if a in specials}


def test_held_use_is_refused_and_nothing_created(tree):
    with pytest.raises(MailboxError) as exc:
        tree.create("Sent Items", use="\\Sent")
    assert exc.value.code == "USEATTR"
    assert not tree.exists("Sent Items")


def test_unknown_or_virtual_use_is_refused(tree):
    for use in ("\\All", "\\Flagged", "\\Bogus"):
        with pytest.raises(MailboxError) as exc:
            tree.create("X", use=use)
        assert exc.value.code == "USEATTR"
    assert not tree.exists("X")


def test_free_use_is_given_and_replaces_the_default_name(tree):
    tree.delete("Sent")
    tree.create("Sent Items", use="\\sent")  # attributes are case-insensitive
    assert _uses(tree)["Sent Items"] == "\\Sent"
    tree.create("Sent")  # a folder named Sent again: no second \Sent
    assert "Sent" not in _uses(tree)
    assert [n for n, u in _uses(tree).items() if u == "\\Sent"] == ["Sent Items"]
    with pytest.raises(MailboxError) as exc:
        tree.create("Other", use="\\Sent")
    assert exc.value.code == "USEATTR"


def test_use_follows_rename_and_goes_with_delete(tree):
    tree.delete("Junk")
    tree.create("Spam", use="\\Junk")
    tree.rename("Spam", "Old.Spam")
    assert _uses(tree)["Old.Spam"] == "\\Junk"
    tree.delete("Old.Spam")
    tree.create("Old.Spam")
    assert "\\Junk" not in _uses(tree).values()
    assert "Junk" not in (tree.root / SPECIAL_USE_FILE).read_text()


def test_parser():
    cmd = parse_command(b"a CREATE Foo (USE (\\Drafts))\r\n")
    assert cmd.use == ("\\Drafts",)  # type: ignore[attr-defined]  # a Create, which Command is not
    assert parse_command(b"a CREATE Foo (USE ())\r\n").use == ()  # type: ignore[attr-defined]  # ditto
    for bad in (b"a CREATE Foo (BAR (x))\r\n", b"a CREATE Foo (USE (Drafts))\r\n",
                b"a CREATE Foo (USE (\\Drafts)\r\n", b"a CREATE Foo ()\r\n"):
        with pytest.raises(IMAPParseError):
            parse_command(bad)


# ---------------------------------------------------------------- through the daemon


@pytest.fixture(scope="module")
def imapd(ca, tmp_path_factory):
    d = imap_daemon(tmp_path_factory.mktemp("csud"), ca)
    yield d
    d.stop()


@pytest.fixture
def raw(imapd, ca):
    r = RawIMAP(imapd.imaps_port, tls=client_ctx(ca))
    ok = r.cmd(b"l", f"LOGIN {new_account(imapd)} password-123456".encode())[-1]
    assert b" CREATE-SPECIAL-USE " in ok
    yield r
    r.close()


def test_create_with_use_then_list_special_use(raw):
    assert raw.cmd(b"a", b"DELETE Drafts")[-1].startswith(b"a OK")
    assert raw.cmd(b"b", b'CREATE "My Drafts" (USE (\\Drafts))')[-1].startswith(b"b OK")
    lines = raw.cmd(b"c", b'LIST (SPECIAL-USE) "" "*"')
    drafts = [line for line in lines if b"\\Drafts" in line]
    assert drafts == [b'* LIST (\\HasNoChildren \\Drafts) "." "My Drafts"\r\n'], lines
    lines = raw.cmd(b"d", b'LIST "" "My Drafts" RETURN (SPECIAL-USE)')
    assert b"\\Drafts" in lines[0], lines
    assert raw.cmd(b"e", b'SELECT "My Drafts"')[-1].startswith(b"e OK")


def test_held_use_is_no_useattr(raw):
    last = raw.cmd(b"a", b"CREATE Outbox (USE (\\Sent))")[-1]
    assert last.startswith(b"a NO [USEATTR]"), last
    assert b"Outbox" not in b"".join(raw.cmd(b"b", b'LIST "" "*"'))


def test_unsupported_and_several_uses_are_no_useattr(raw):
    assert raw.cmd(b"a", b"CREATE V (USE (\\All))")[-1].startswith(b"a NO [USEATTR]")
    raw.cmd(b"x", b"DELETE Archive")
    raw.cmd(b"y", b"DELETE Trash")
    assert raw.cmd(b"b", b"CREATE V (USE (\\Archive \\Trash))")[-1].startswith(b"b NO [USEATTR]")
    assert b'"V"' not in b"".join(raw.cmd(b"c", b'LIST "" "*"'))


def test_unknown_create_parameter_is_bad(raw):
    assert raw.cmd(b"a", b"CREATE V (COLOR (red))")[-1].startswith(b"a BAD")
