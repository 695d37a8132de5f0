"""UIDVALIDITY never repeats for a folder name (per-account counter, Dovecot's values);
HIGHESTMODSEQ is never 0."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from mailserver.imap.mailboxes import MailboxTree
from mailserver.storage import indexrefresh
from mailserver.storage.index import MailboxIndex
from mailserver.storage.indexstore import INDEX_FILE
from mailserver.storage.maildirpp import create_maildirpp
from mailserver.storage.uidvalidity import UIDVALIDITY_FILE

NOW = 1_800_000_000.0


@pytest.fixture
def tree(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> MailboxTree:
    create_maildirpp(tmp_path / "m", durable=False)
    # Every index is created "in the same second": the clock cannot tell them apart.
    monkeypatch.setattr(indexrefresh.time, "time", lambda: NOW)
    return MailboxTree(tmp_path / "m")


def _uidvalidity(tree: MailboxTree, name: str) -> int:
    ix = MailboxIndex(tree.path(name))
    try:
        ix.sync()
        return ix.uidvalidity
    finally:
        ix.close()


def test_delete_and_create_in_the_same_second(tree: MailboxTree) -> None:
    tree.create("x")
    first = _uidvalidity(tree, "x")
    tree.delete("x")
    tree.create("x")
    second = _uidvalidity(tree, "x")
    assert second > first
    assert int((tree.root / UIDVALIDITY_FILE).read_text()) == second


def test_rename_then_create(tree: MailboxTree) -> None:
    tree.create("x")
    old = _uidvalidity(tree, "x")
    tree.rename("x", "y")
    assert _uidvalidity(tree, "y") == old
    tree.create("x")
    assert _uidvalidity(tree, "x") > old


def test_lost_index_and_lock_file_rebuilt(tree: MailboxTree) -> None:
    tree.create("x")
    old = _uidvalidity(tree, "x")
    for name in (INDEX_FILE, indexrefresh.LOCK_FILE):
        (tree.path("x") / name).unlink()
    assert _uidvalidity(tree, "x") > old
    inbox = _uidvalidity(tree, "INBOX")  # INBOX is the root itself: same counter
    assert inbox > old


def test_dovecot_uidlist_and_uidvalidity_are_not_reused(tree: MailboxTree) -> None:
    tree.create("x")
    future = int(NOW) + 1000
    (tree.path("x") / "dovecot-uidlist").write_text(f"3 V{future} N5 G3085f01b7f11094c501100008c4a11c1\n")
    assert _uidvalidity(tree, "x") == future + 1
    (tree.root / "dovecot-uidvalidity").write_text(f"{future + 50:08x}")
    tree.create("z")
    assert _uidvalidity(tree, "z") == future + 51
    (tree.path("Sent") / "dovecot-uidlist").write_text(f"1 {future + 100} 7\n")  # version 1 format
    assert _uidvalidity(tree, "Sent") == future + 101


def test_clock_still_leads_when_ahead(tmp_path: Path) -> None:
    create_maildirpp(tmp_path / "m", durable=False)
    tree = MailboxTree(tmp_path / "m")
    assert abs(_uidvalidity(tree, "INBOX") - time.time()) < 5


def test_highestmodseq_is_never_zero_even_for_an_old_empty_index(tree: MailboxTree) -> None:
    from mailserver.storage.indexstore import IndexStore

    path = tree.path("Junk")
    assert _highestmodseq(path) == 1  # a new index starts at 1
    store = IndexStore(path / INDEX_FILE)  # an index from before: HIGHESTMODSEQ 0
    store.connect()
    meta = store.read_meta()
    assert meta is not None
    meta.highestmodseq = 0
    with store.transaction():
        store.set_meta(meta)
    store.close()
    assert _highestmodseq(path) == 1
    assert _highestmodseq(path, read_only=True) == 1


def _highestmodseq(path: Path, read_only: bool = False) -> int:
    ix = MailboxIndex(path, read_only=read_only)
    try:
        ix.sync()
        return ix.highestmodseq
    finally:
        ix.close()
