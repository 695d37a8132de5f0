"""A real full file system under a running daemon (a small tmpfs as its state directory).

The injector in ``tests/test_faults.py`` cannot reach SQLite, whose I/O is in C; here
every write fails honestly with ENOSPC, SQLite's included: the folder indexes, the
accounts database, the queue, the Maildirs and the DKIM keys at first start. Each test
fills the file system, checks the answer (452 4.3.1 / NO [OVERQUOTA] / a one-line
error), that nothing partial is left, then frees the space and checks that the same
daemon serves again. Needs root (mount); skipped otherwise.
"""

from __future__ import annotations

import contextlib
import os
import smtplib
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.daemon import REPO, PymaildProcess
from tests.support.imap import PASSWORD, RawIMAP, client_ctx, imap_daemon, new_account

SIZE = "24m"


def mount_tmpfs(path: Path) -> None:
    path.mkdir(parents=True, exist_ok=True)
    try:
        subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={SIZE},mode=0750", "tmpfs", str(path)],
                       check=True, capture_output=True)
    except (OSError, subprocess.CalledProcessError) as exc:
        pytest.skip(f"cannot mount a tmpfs here: {exc}")


def umount(path: Path) -> None:
    subprocess.run(["umount", "-l", str(path)], check=False, capture_output=True)


@contextlib.contextmanager
def disk_full(path: Path) -> Iterator[None]:
    """Fill the file system holding ``path`` to the last byte; free it on exit."""
    filler = path / ".filler"
    fd = os.open(filler, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        for chunk in (1 << 20, 4096, 1):
            block = b"\0" * chunk
            while True:
                try:
                    if os.write(fd, block) < chunk:
                        break
                except OSError:
                    break
    finally:
        os.close(fd)
    try:
        yield
    finally:
        filler.unlink()


def tree(root: Path) -> list[str]:
    """Every file under ``root`` except the filler and SQLite's side files."""
    out = []
    for dirpath, _dirs, names in os.walk(root):
        for name in names:
            if name != ".filler":
                out.append(os.path.relpath(os.path.join(dirpath, name), root))
    return sorted(out)


def mail_files(maildir: Path) -> list[str]:
    return sorted(f"{sub}/{p.name}" for sub in ("new", "cur", "tmp") for p in (maildir / sub).iterdir())


@pytest.fixture(scope="module")
def fulld(tmp_path_factory: pytest.TempPathFactory, ca) -> Iterator[PymaildProcess]:
    if os.geteuid() != 0:
        pytest.skip("needs root to mount a tmpfs")
    directory = tmp_path_factory.mktemp("fullfs")
    mount_tmpfs(directory / "state")
    d = imap_daemon(directory, ca, start=False)
    try:
        d.start()
        yield d
    finally:
        d.stop()
        umount(directory / "state")


def tagged(lines: list[bytes]) -> bytes:
    return lines[-1].split(b" ", 1)[1]


def append(raw: RawIMAP, tag: bytes, folder: str, subject: str) -> bytes:
    msg = f"From: a@example.net\r\nSubject: {subject}\r\n\r\nhello\r\n".encode()
    return tagged(raw.cmd(tag, f"APPEND {folder} {{{len(msg)}+}}\r\n".encode() + msg))


def mx_send(d: PymaildProcess, rcpt: str, subject: str) -> tuple[int, bytes]:
    """The reply to RCPT if it is not 250, else the reply to DATA."""
    msg = f"From: s@example.net\r\nTo: {rcpt}\r\nSubject: {subject}\r\n\r\nbody\r\n".encode()
    with smtplib.SMTP(d.host, d.port, local_hostname="c.example.net", timeout=10) as client:
        client.ehlo()
        client.mail("s@example.net")
        code, text = client.rcpt(rcpt)
        if code != 250:
            return code, text
        code, text = client.data(msg)
        return code, text


def test_inbound_mail_on_a_full_disk(fulld: PymaildProcess) -> None:
    user, other = new_account(fulld), new_account(fulld)
    maildir = fulld.state_dir / "mail/example.test" / user.split("@")[0]
    assert mx_send(fulld, user, "before")[0] == 250  # the recipient lookup is cached now
    before = mail_files(maildir)
    with disk_full(fulld.state_dir):
        code, text = mx_send(fulld, user, "full")
        assert (code, text.split()[0]) == (452, b"4.3.1"), (code, text)
        assert mail_files(maildir) == before
        # An uncached recipient: SQLite cannot even open the accounts database (WAL needs
        # its -shm file to grow): a 4xx at RCPT, not a dropped connection.
        code, text = mx_send(fulld, other, "full")
        assert code in (451, 452) and text.startswith(b"4.3."), (code, text)
    assert "errno=28 (ENOSPC)" in fulld.wait_log("errno=28")
    for rcpt in (user, other):
        code, text = mx_send(fulld, rcpt, "room again")
        assert code == 250, (code, text)
    assert len(mail_files(maildir)) == len(before) + 1


def test_imap_on_a_full_disk(fulld: PymaildProcess, ca) -> None:
    """APPEND (file and index), STORE (index only: SQLite's journal), SELECT of a folder
    whose index does not exist yet: each a tagged NO [OVERQUOTA], the session goes on."""
    user = new_account(fulld)
    maildir = fulld.state_dir / "mail/example.test" / user.split("@")[0]
    raw = RawIMAP(fulld.imaps_port, tls=client_ctx(ca))  # type: ignore[attr-defined]
    assert tagged(raw.cmd(b"L", f"LOGIN {user} {PASSWORD}".encode())).startswith(b"OK")
    assert append(raw, b"A0", "INBOX", "before").startswith(b"OK")
    assert tagged(raw.cmd(b"A1", b"SELECT INBOX")).startswith(b"OK")
    before = mail_files(maildir)
    with disk_full(fulld.state_dir):
        reply = append(raw, b"B1", "INBOX", "full")
        assert reply.startswith(b"NO [OVERQUOTA]"), reply
        # A STORE may fit in pages SQLite already has: either done, or NO and undone.
        reply = tagged(raw.cmd(b"B2", b"STORE 1 +FLAGS (\\Flagged)"))
        if reply.startswith(b"OK"):
            assert [n.rsplit(",", 1)[1] for n in mail_files(maildir)] == ["F"]
            assert tagged(raw.cmd(b"B2b", b"STORE 1 -FLAGS (\\Flagged)")).startswith(b"OK")
        else:
            assert reply.startswith(b"NO [OVERQUOTA]"), reply
        assert mail_files(maildir) == before  # nothing new, and the name kept its flags
        reply = tagged(raw.cmd(b"B3", b"SELECT Junk"))  # no index yet: SQLite must create one
        assert reply.startswith(b"NO"), reply
        reply = tagged(raw.cmd(b"B4", b"SELECT INBOX"))
        assert reply.startswith(b"OK"), reply
    assert tagged(raw.cmd(b"C1", b"STORE 1 +FLAGS (\\Flagged)")).startswith(b"OK")
    assert append(raw, b"C2", "INBOX", "room again").startswith(b"OK [APPENDUID")
    assert tagged(raw.cmd(b"C3", b"SELECT Junk")).startswith(b"OK")
    raw.close()


def cli(d: PymaildProcess, *args: str, stdin: str = "") -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "mailserver.cli", "-c", str(d.config_path), *args],
                          input=stdin, capture_output=True, text=True, cwd=REPO, timeout=60)


def test_accounts_database_on_a_full_disk(fulld: PymaildProcess) -> None:
    user = new_account(fulld)
    before = tree(fulld.state_dir / "mail")
    with disk_full(fulld.state_dir):
        r = cli(fulld, "creds", "create", "newcomer@example.test", "--password-stdin",
                stdin="a-long-password-1\n")
        assert r.returncode == 1, r
        lines = r.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("pymaild: ") and "no space left" in lines[0], r.stderr
        r = cli(fulld, "creds", "password", user, "--password-stdin", stdin="another-password-2\n")
        assert r.returncode == 1, r
        lines = r.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("pymaild: ") and "no space left" in lines[0], r.stderr
    # No account, and nothing with content under mail/ (the mailbox is made first and may
    # be left as empty directories, which the next create reuses).
    added = set(tree(fulld.state_dir / "mail")) - set(before)
    assert all(os.path.basename(f) == "maildirfolder" for f in added), added
    # The daemon still knows the old password, and the commands work with room again.
    assert user in cli(fulld, "creds", "list").stdout
    assert "newcomer" not in cli(fulld, "creds", "list").stdout
    r = cli(fulld, "creds", "create", "newcomer@example.test", "--password-stdin",
            stdin="a-long-password-1\n")
    assert r.returncode == 0, r
    code, _text = mx_send(fulld, "newcomer@example.test", "welcome")
    assert code == 250


def test_first_start_on_a_full_disk_fails_cleanly(tmp_path: Path, ca) -> None:
    """SQLite cannot even open the accounts database (WAL needs its -shm file): one line,
    exit 1, nothing half-made (DKIM keys come after it; tests/test_faults.py fails their
    writes directly), and the next start with room works."""
    if os.geteuid() != 0:
        pytest.skip("needs root to mount a tmpfs")
    mount_tmpfs(tmp_path / "state")
    try:
        d = imap_daemon(tmp_path, ca, start=False)
        d.add_account("first@example.test")
        with disk_full(d.state_dir):
            with pytest.raises(RuntimeError):
                d.start(timeout=20)
            assert d.proc is not None and d.proc.wait(10) == 1
            errors = [line for line in d.log_lines if line.startswith("pymaild: ")]
            assert len(errors) == 1, d.log_text()[-2000:]
            dkim = d.state_dir / "dkim"
            assert (sorted(p.name for p in dkim.iterdir()) if dkim.is_dir() else []) == []
        d.start()  # with room: keys made, serving
        assert any(p.suffix == ".key" for p in (d.state_dir / "dkim").iterdir())
        d.stop()
    finally:
        umount(tmp_path / "state")
