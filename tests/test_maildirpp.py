"""Maildir++ layout creation and folder-name mapping."""

from __future__ import annotations

import stat
from pathlib import Path

import pytest

from mailserver.storage.maildirpp import (
    DEFAULT_FOLDERS,
    create_maildirpp,
    ensure_maildir,
    folder_path,
    make_dirs,
)


def _mode(p: Path) -> int:
    return stat.S_IMODE(p.stat().st_mode)


def test_layout(tmp_path: Path) -> None:
    root = tmp_path / "mail" / "example.org" / "bob"
    create_maildirpp(root)
    for sub in ("cur", "new", "tmp"):
        assert (root / sub).is_dir()
        assert _mode(root / sub) == 0o700
    assert _mode(root) == 0o700
    assert _mode(tmp_path / "mail") == 0o700  # parents too: other users must not list them
    assert not (root / "maildirfolder").exists()  # INBOX is no subfolder
    for name in ("Sent", "Drafts", "Trash", "Junk", "Archive"):
        folder = root / f".{name}"
        for sub in ("cur", "new", "tmp"):
            assert (folder / sub).is_dir()
        assert (folder / "maildirfolder").is_file()
        assert (folder / "maildirfolder").stat().st_size == 0
        assert _mode(folder) == 0o700
    subs = (root / "subscriptions").read_text()
    assert subs.splitlines() == list(DEFAULT_FOLDERS)
    assert subs.endswith("\n")
    assert _mode(root / "subscriptions") == 0o600
    assert not [p for p in root.iterdir() if p.name.endswith(".tmp")]


def test_idempotent_and_never_destructive(tmp_path: Path) -> None:
    root = tmp_path / "bob"
    create_maildirpp(root)
    (root / "cur" / "1.M1P1.host,S=3:2,S").write_bytes(b"hi\n")
    (root / ".Junk" / "new" / "2.M2P2.host,S=4").write_bytes(b"spam")
    (root / "subscriptions").write_text("Sent\nMyFolder\n")  # the user's own choice
    create_maildirpp(root)
    create_maildirpp(root, folders=["Sent", "Lists/Rust"])
    assert (root / "cur" / "1.M1P1.host,S=3:2,S").read_bytes() == b"hi\n"
    assert (root / ".Junk" / "new" / "2.M2P2.host,S=4").read_bytes() == b"spam"
    assert (root / "subscriptions").read_text() == "Sent\nMyFolder\n"
    assert (root / ".Lists.Rust" / "maildirfolder").is_file()


def test_ensure_maildir_reports_creation(tmp_path: Path) -> None:
    assert ensure_maildir(tmp_path / "m") is True
    assert ensure_maildir(tmp_path / "m") is False
    assert ensure_maildir(tmp_path / "m" / ".X", is_folder=True) is True
    assert ensure_maildir(tmp_path / "m" / ".X", is_folder=True) is False


def test_make_dirs_refuses_a_file_in_the_way(tmp_path: Path) -> None:
    (tmp_path / "f").write_text("x")
    with pytest.raises(OSError):
        make_dirs(tmp_path / "f" / "sub")
    with pytest.raises(FileExistsError):
        make_dirs(tmp_path / "f")


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        (None, ""),
        ("INBOX", ""),
        ("inbox", ""),
        ("Junk", ".Junk"),
        ("a/b", ".a.b"),
        ("a.b", ".a.b"),
        ("a/b/c", ".a.b.c"),
        ("Entwürfe", ".Entwürfe"),
        ("&AMQ-hnliches", ".&AMQ-hnliches"),  # modified UTF-7, as IMAP sends it
        ("with space", ".with space"),
    ],
)
def test_folder_path(tmp_path: Path, name: str | None, expected: str) -> None:
    assert folder_path(tmp_path, name) == (tmp_path / expected if expected else tmp_path)


@pytest.mark.parametrize(
    "name",
    [
        "",
        ".",
        "..",
        "../x",
        "x/..",
        "a/../b",
        "a..b",
        "a//b",
        "/a",
        "a/",
        ".a",
        "a.",
        ".hidden/x",
        "a\x00b",
        "a\rb",
        "a\nb",
        "a\tb",
        "a\x7fb",
        "x" * 300,
    ],
)
def test_folder_path_rejects(tmp_path: Path, name: str) -> None:
    with pytest.raises(ValueError):
        folder_path(tmp_path, name)


@pytest.mark.parametrize("name", ["a", "a/b", "x.y.z", "../", "...", "a/./b", "/", "\\..\\"])
def test_folder_path_never_escapes(tmp_path: Path, name: str) -> None:
    """Whatever is accepted is a direct child of the root, named with a leading dot."""
    try:
        p = folder_path(tmp_path, name)
    except ValueError:
        return
    assert p.parent == tmp_path
    assert p.name.startswith(".") and p.name not in (".", "..")
    assert "/" not in p.name
