"""Fault injection at every durable write of a running daemon.

The daemon is the real ``pymaild run`` process; ``tests/support/faults.py`` is loaded into
it at interpreter start and fails chosen ``os`` calls (write, fsync, rename, link, open)
on chosen paths with ENOSPC or EIO, switched on and off while it runs. Each case checks
the client's answer (452 4.3.1 / 451 4.3.0 for SMTP, tagged NO for IMAP; never 250 or
OK), that no file is left in ``new/``, ``cur/``, ``tmp/`` or the queue, that the log
names the path and the errno, and that once the fault is gone the same daemon serves
the next transaction. SQLite's own I/O is not reachable from Python:
``tests/test_faults_fullfs.py`` gives the whole state directory a real full file system.
"""

from __future__ import annotations

import asyncio
import errno
import os
import smtplib
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.daemon import REPO, PymaildProcess, write_config
from tests.support.faults import FaultControl
from tests.support.imap import PASSWORD, RawIMAP, client_ctx, imap_daemon, new_account
from tests.support.smtpsink import SMTPSink
from tests.support.wait import wait_until

ENOSPC, EIO = errno.ENOSPC, errno.EIO
REPLY = {ENOSPC: (452, b"4.3.1"), EIO: (451, b"4.3.0")}


def start_with_faults(d: PymaildProcess) -> FaultControl:
    faults = FaultControl(d.directory)
    d.env.update(faults.environment())
    d.start()
    return faults


def message(subject: str) -> bytes:
    return (f"From: sender@example.net\r\nTo: alice@example.test\r\nSubject: {subject}\r\n"
            f"Message-ID: <{subject}@example.net>\r\n\r\nbody of {subject}\r\n").encode()


def files(d: Path) -> list[str]:
    return sorted(p.name for p in d.iterdir()) if d.is_dir() else []


def send_to(d: PymaildProcess, rcpt: str, subject: str) -> tuple[int, bytes]:
    with smtplib.SMTP(d.host, d.port, local_hostname="c.example.net", timeout=10) as client:
        client.ehlo()
        client.mail("sender@example.net")
        client.rcpt(rcpt)
        code, text = client.data(message(subject))
        return code, text


@pytest.fixture(scope="module")
def daemon(tmp_path_factory: pytest.TempPathFactory, ca):
    d = imap_daemon(tmp_path_factory.mktemp("faults"), ca, start=False)
    faults = start_with_faults(d)
    d.faults = faults  # type: ignore[attr-defined]
    yield d
    faults.clear()
    d.stop()


def wait_line(d: PymaildProcess, *needles: str, timeout: float = 5.0) -> str:
    """The first log line holding every needle (the log is read by a thread)."""
    deadline = time.monotonic() + timeout
    while True:
        for line in d.log_lines:
            if all(n in line for n in needles):
                return line
        if time.monotonic() > deadline:
            raise AssertionError(f"no log line with {needles}:\n" + d.log_text()[-3000:])
        time.sleep(0.02)


def check_clean(maildir: Path) -> None:
    for sub in ("new", "cur", "tmp"):
        assert files(maildir / sub) == [], f"{sub}/ of {maildir} is not empty"


# ------------------------------------------------------------------ inbound MX


MX_SITES = {
    # op, path pattern (re.search over the absolute path)
    "create": ("open", r"/{user}/tmp/"),
    "write": ("write", r"/{user}/tmp/"),
    "fsync": ("fsync", r"/{user}/tmp/."),
    "rename": ("rename", r"/{user}/new/."),
    "dir-fsync": ("fsync", r"/{user}/new$"),
}


@pytest.mark.parametrize("err", [ENOSPC, EIO], ids=["ENOSPC", "EIO"])
@pytest.mark.parametrize("site", list(MX_SITES))
def test_mx_delivery_fault(daemon: PymaildProcess, site: str, err: int) -> None:
    faults: FaultControl = daemon.faults  # type: ignore[attr-defined]
    user = new_account(daemon)
    local = user.split("@")[0]
    maildir = daemon.state_dir / "mail/example.test" / local
    op, pattern = MX_SITES[site]
    faults.reset_hits()
    faults.fail(op, pattern.format(user=local), err)
    code, text = send_to(daemon, user, f"{site}-{err}")
    faults.clear()
    assert faults.hits(), "the fault was never met"
    assert (code, text.split()[0]) == REPLY[err], (code, text)
    check_clean(maildir)
    wait_line(daemon, f"to={user}", f"errno={err}", f"path={maildir}/")
    # The same daemon delivers the next message.
    code, text = send_to(daemon, user, f"after-{site}-{err}")
    assert code == 250, (code, text)
    assert len(files(maildir / "new")) == 1


# ------------------------------------------------------------------ submission


def submit(d: PymaildProcess, ca, user: str, rcpts: list[str], subject: str) -> tuple[int, bytes]:
    with smtplib.SMTP(d.host, d.sub_port, local_hostname="laptop.example.net",  # type: ignore[attr-defined]
                      timeout=10) as client:
        client._host = "mx.example.test"  # type: ignore[attr-defined]  # verify the certificate name
        client.starttls(context=ca.client_context())
        client.ehlo("laptop.example.net")
        client.login(user, PASSWORD)
        client.mail(user)
        for rcpt in rcpts:
            assert client.rcpt(rcpt)[0] == 250
        msg = (f"From: <{user}>\r\nTo: {', '.join(rcpts)}\r\nSubject: {subject}\r\n\r\n"
               f"body of {subject}\r\n").encode()
        code, text = client.data(msg)
        return code, text


def queue_files(d: PymaildProcess) -> list[str]:
    return [n for n in files(d.state_dir / "queue") if n.endswith((".eml", ".json"))
            or n.startswith(".")]


QUEUE_SITES = {
    "data-create": ("open", r"/queue/[^/.]+\.eml$"),
    "data-write": ("write", r"/queue/[^/.]+\.eml$"),
    "data-fsync": ("fsync", r"/queue/[^/.]+\.eml$"),
    "state-write": ("write", r"/queue/\.[^/]+\.json\."),
    "state-fsync": ("fsync", r"/queue/\.[^/]+\.json\."),
    "state-rename": ("rename", r"/queue/[^/.]+\.json$"),
    "dir-fsync": ("fsync", r"/queue$"),
}


@pytest.mark.parametrize("err", [ENOSPC, EIO], ids=["ENOSPC", "EIO"])
@pytest.mark.parametrize("site", list(QUEUE_SITES))
def test_submission_enqueue_fault(daemon: PymaildProcess, ca, site: str, err: int) -> None:
    """Mail to another domain: the queue write fails, nothing is queued, 452/451."""
    faults: FaultControl = daemon.faults  # type: ignore[attr-defined]
    user = new_account(daemon)
    before = queue_files(daemon)
    op, pattern = QUEUE_SITES[site]
    faults.reset_hits()
    faults.fail(op, pattern, err)
    code, text = submit(daemon, ca, user, ["someone@remote.example"], f"q-{site}-{err}")
    faults.clear()
    assert faults.hits(), "the fault was never met"
    assert (code, text.split()[0]) == REPLY[err], (code, text)
    assert queue_files(daemon) == before
    wait_line(daemon, f"user={user}", "reason=queue", f"errno={err}", f"path={daemon.state_dir}/queue")
    code, text = submit(daemon, ca, user, ["someone@remote.example"], f"q-after-{site}-{err}")
    assert code == 250, (code, text)
    assert len(queue_files(daemon)) == len(before) + 2


@pytest.mark.parametrize("err", [ENOSPC, EIO], ids=["ENOSPC", "EIO"])
@pytest.mark.parametrize("site", ["write", "rename", "dir-fsync"])
def test_submission_local_copy_fault_takes_the_queued_copy_back(
        daemon: PymaildProcess, ca, site: str, err: int) -> None:
    """A local and a remote recipient: the local copy fails, the queued one is removed."""
    faults: FaultControl = daemon.faults  # type: ignore[attr-defined]
    user, friend = new_account(daemon), new_account(daemon)
    maildir = daemon.state_dir / "mail/example.test" / friend.split("@")[0]
    before = queue_files(daemon)
    op, pattern = MX_SITES[site]
    faults.reset_hits()
    faults.fail(op, pattern.format(user=friend.split("@")[0]), err)
    code, text = submit(daemon, ca, user, [friend, "someone@remote.example"], f"l-{site}-{err}")
    faults.clear()
    assert faults.hits(), "the fault was never met"
    assert (code, text.split()[0]) == REPLY[err], (code, text)
    assert queue_files(daemon) == before
    check_clean(maildir)
    code, text = submit(daemon, ca, user, [friend, "someone@remote.example"], f"l-after-{site}-{err}")
    assert code == 250, (code, text)
    assert len(files(maildir / "new")) == 1


# ------------------------------------------------------------------ IMAP

IMAP_NO = {ENOSPC: b"NO [OVERQUOTA]", EIO: b"NO [SERVERBUG]"}


def imap_user(d: PymaildProcess, ca) -> tuple[str, Path, RawIMAP]:
    user = new_account(d)
    raw = RawIMAP(d.imaps_port, tls=client_ctx(ca))  # type: ignore[attr-defined]
    assert raw.cmd(b"L", f"LOGIN {user} {PASSWORD}".encode())[-1].startswith(b"L OK")
    return user, d.state_dir / "mail/example.test" / user.split("@")[0], raw


def tagged(lines: list[bytes]) -> bytes:
    return lines[-1].split(b" ", 1)[1]


def append(raw: RawIMAP, tag: bytes, folder: str, subject: str) -> bytes:
    msg = f"From: a@example.net\r\nSubject: {subject}\r\n\r\nhello\r\n".encode()
    return tagged(raw.cmd(tag, f"APPEND {folder} {{{len(msg)}+}}\r\n".encode() + msg))


APPEND_SITES = {
    "create": ("open", r"/{user}/tmp/"),
    "write": ("write", r"/{user}/tmp/"),
    "fsync": ("fsync", r"/{user}/tmp/."),
    "rename": ("rename", r"/{user}/cur/."),
    "dir-fsync": ("fsync", r"/{user}/cur$"),
}


@pytest.mark.parametrize("err", [ENOSPC, EIO], ids=["ENOSPC", "EIO"])
@pytest.mark.parametrize("site", list(APPEND_SITES))
def test_imap_append_fault(daemon: PymaildProcess, ca, site: str, err: int) -> None:
    faults: FaultControl = daemon.faults  # type: ignore[attr-defined]
    user, maildir, raw = imap_user(daemon, ca)
    op, pattern = APPEND_SITES[site]
    faults.reset_hits()
    faults.fail(op, pattern.format(user=maildir.name), err)
    reply = append(raw, b"A1", "INBOX", f"{site}-{err}")
    faults.clear()
    assert faults.hits(), "the fault was never met"
    assert reply.startswith(IMAP_NO[err]), reply
    check_clean(maildir)
    wait_line(daemon, f"user={user}", "APPEND", f"errno={err}", f"path={maildir}/")
    # The same session goes on: the message is not there, the next APPEND works.
    lines = raw.cmd(b"A2", b"SELECT INBOX")
    assert b"* 0 EXISTS\r\n" in lines and tagged(lines).startswith(b"OK"), lines
    assert append(raw, b"A3", "INBOX", "after").startswith(b"OK [APPENDUID")
    assert len(files(maildir / "cur")) == 1
    raw.close()


COPY_SITES = {
    "link": ("link", r"/\.Drafts/tmp/."),
    "rename": ("rename", r"/\.Drafts/cur/."),
    "dir-fsync": ("fsync", r"/\.Drafts/cur$"),
}


@pytest.mark.parametrize("err", [ENOSPC, EIO], ids=["ENOSPC", "EIO"])
@pytest.mark.parametrize("command", ["COPY", "MOVE"])
@pytest.mark.parametrize("site", list(COPY_SITES))
def test_imap_copy_move_fault(daemon: PymaildProcess, ca, site: str, command: str, err: int) -> None:
    faults: FaultControl = daemon.faults  # type: ignore[attr-defined]
    _user, maildir, raw = imap_user(daemon, ca)
    assert append(raw, b"A0", "INBOX", "to-copy").startswith(b"OK")
    assert tagged(raw.cmd(b"A1", b"SELECT INBOX")).startswith(b"OK")
    op, pattern = COPY_SITES[site]
    faults.reset_hits()
    faults.fail(op, pattern, err)
    reply = tagged(raw.cmd(b"A2", f"{command} 1 Drafts".encode()))
    faults.clear()
    assert faults.hits(), "the fault was never met"
    assert reply.startswith(IMAP_NO[err]), reply
    check_clean(maildir / ".Drafts")
    assert len(files(maildir / "cur")) == 1  # the source is untouched
    lines = raw.cmd(b"A3", b"STATUS Drafts (MESSAGES)")
    assert b"(MESSAGES 0)" in lines[0], lines
    assert tagged(raw.cmd(b"A4", f"{command} 1 Drafts".encode())).startswith(b"OK")
    assert len(files(maildir / ".Drafts" / "cur")) == 1
    assert len(files(maildir / "cur")) == (0 if command == "MOVE" else 1)
    raw.close()


@pytest.mark.parametrize("err", [ENOSPC, EIO], ids=["ENOSPC", "EIO"])
@pytest.mark.parametrize("site", ["rename", "dir-fsync"])
def test_imap_store_fault(daemon: PymaildProcess, ca, site: str, err: int) -> None:
    faults: FaultControl = daemon.faults  # type: ignore[attr-defined]
    _user, maildir, raw = imap_user(daemon, ca)
    assert append(raw, b"A0", "INBOX", "to-flag").startswith(b"OK")
    assert tagged(raw.cmd(b"A1", b"SELECT INBOX")).startswith(b"OK")
    before = files(maildir / "cur")
    op, pattern = {"rename": ("rename", r"/{user}/cur/."), "dir-fsync": ("fsync", r"/{user}/cur$")}[site]
    faults.reset_hits()
    faults.fail(op, pattern.format(user=maildir.name), err)
    reply = tagged(raw.cmd(b"A2", b"STORE 1 +FLAGS (\\Flagged)"))
    faults.clear()
    assert faults.hits(), "the fault was never met"
    assert reply.startswith(IMAP_NO[err]), reply
    assert files(maildir / "cur") == before  # not flagged on disk either
    lines = raw.cmd(b"A3", b"FETCH 1 FLAGS")
    assert b"\\Flagged" not in b"".join(lines) and tagged(lines).startswith(b"OK"), lines
    lines = raw.cmd(b"A4", b"STORE 1 +FLAGS (\\Flagged)")
    assert b"\\Flagged" in b"".join(lines) and tagged(lines).startswith(b"OK"), lines
    assert files(maildir / "cur")[0].endswith(":2,F")
    raw.close()


@pytest.mark.parametrize("err", [ENOSPC, EIO], ids=["ENOSPC", "EIO"])
def test_imap_expunge_fault(daemon: PymaildProcess, ca, err: int) -> None:
    faults: FaultControl = daemon.faults  # type: ignore[attr-defined]
    _user, maildir, raw = imap_user(daemon, ca)
    assert append(raw, b"A0", "INBOX", "to-delete").startswith(b"OK")
    assert tagged(raw.cmd(b"A1", b"SELECT INBOX")).startswith(b"OK")
    assert tagged(raw.cmd(b"A2", b"STORE 1 +FLAGS.SILENT (\\Deleted)")).startswith(b"OK")
    faults.reset_hits()
    faults.fail("fsync", f"/{maildir.name}/cur$", err)
    reply = tagged(raw.cmd(b"A3", b"EXPUNGE"))
    faults.clear()
    assert faults.hits(), "the fault was never met"
    assert reply.startswith(IMAP_NO[err]), reply
    # The unlink itself cannot be taken back: the session reports the expunge next.
    lines = raw.cmd(b"A4", b"EXPUNGE")
    assert tagged(lines).startswith(b"OK"), lines
    assert b"* 1 EXPUNGE\r\n" in lines, lines
    check_clean(maildir)
    assert tagged(raw.cmd(b"A5", b"NOOP")).startswith(b"OK")
    raw.close()


# ------------------------------------------------------------------ DKIM keys at first start


@pytest.mark.parametrize("err", [ENOSPC, EIO], ids=["ENOSPC", "EIO"])
@pytest.mark.parametrize("op", ["write", "fsync", "link"])
def test_first_start_dkim_key_fault(tmp_path: Path, ca, op: str, err: int) -> None:
    """The first start makes the DKIM keys: a failing write stops it with one line naming
    the file and the error, no key file (whole or partial) is left, and the next start
    makes them."""
    d = imap_daemon(tmp_path, ca, start=False)
    faults = FaultControl(d.directory)
    faults.fail(op, r"/state/dkim/", err)
    d.env.update(faults.environment())
    with pytest.raises(RuntimeError):
        d.start(timeout=20)
    assert d.proc is not None and d.proc.wait(10) == 1
    assert faults.hits(), "the fault was never met"
    errors = [line for line in d.log_lines if line.startswith("pymaild: ")]
    assert len(errors) == 1 and "/state/dkim/" in errors[0] and os.strerror(err) in errors[0], d.log_text()
    assert files(d.state_dir / "dkim") == []
    faults.clear()
    d.start()
    assert any(n.endswith(".key") for n in files(d.state_dir / "dkim"))
    d.stop()


# ------------------------------------------------------------------ queue: delivery attempts


@pytest.fixture
def sink() -> Iterator[SMTPSink]:
    """A scriptable SMTP server on its own event loop thread (the daemon's smarthost)."""
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    server = asyncio.run_coroutine_threadsafe(SMTPSink(offer_starttls=False).start(), loop).result(10)
    yield server
    asyncio.run_coroutine_threadsafe(server.stop(), loop).result(10)
    loop.call_soon_threadsafe(loop.stop)
    thread.join(5)


@pytest.mark.parametrize("err", [ENOSPC, EIO], ids=["ENOSPC", "EIO"])
@pytest.mark.parametrize("op", ["write", "fsync", "rename"])
def test_queue_state_update_fault(tmp_path: Path, ca, sink: SMTPSink, op: str, err: int) -> None:
    """After a deferred attempt the queue rewrites the message's state: when that write
    fails the message stays queued (old state file, no tmp left), and once the disk is
    back a flush delivers it, once, and removes it."""
    d = imap_daemon(tmp_path, ca, start=False)
    d.config["delivery"] = {"relay": f"127.0.0.1:{sink.port}", "relay_tls": "none"}
    write_config(d.config_path, d.config)
    faults = start_with_faults(d)
    try:
        user = new_account(d)
        sink.script("RCPT", "451 4.7.1 try again later")
        # The enqueue's own state write passes; the one after the attempt fails.
        path = r"/queue/[^/.]+\.json$" if op == "rename" else r"/queue/\.[^/]+\.json\."
        faults.fail(op, path, err, after=1)
        code, text = submit(d, ca, user, ["someone@remote.example"], f"queued-{op}-{err}")
        assert code == 250, (code, text)
        wait_until(faults.hits, what="the injected fault to be hit")
        line = wait_line(d, "processing failed")
        assert "retrying" in line
        faults.clear()
        queue = d.state_dir / "queue"
        names = queue_files(d)
        assert len([n for n in names if n.endswith(".json")]) == 1, names  # still queued
        assert not [n for n in names if n.startswith(".") and n != ".lock"], names  # no tmp state file
        assert sink.transactions == []
        r = subprocess.run([sys.executable, "-m", "mailserver.cli", "-c", str(d.config_path),
                            "queue", "flush"], capture_output=True, text=True, cwd=REPO, timeout=60)
        assert r.returncode == 0, r
        wait_until(lambda: len(sink.transactions) == 1 and queue_files(d) in ([], [".lock"]),
                   what="the flushed message to be delivered and leave the queue")
        assert f"queued-{op}-{err}".encode() in sink.transactions[0].data
        assert files(queue / "corrupt") == []
    finally:
        faults.clear()
        d.stop()


@pytest.mark.parametrize("err", [ENOSPC, EIO], ids=["ENOSPC", "EIO"])
def test_imap_move_fault_on_the_source_side_keeps_the_message(daemon: PymaildProcess, ca, err: int) -> None:
    """MOVE copies, then expunges from the source: if that second half fails the client
    hears NO and the message is in both folders - never in neither."""
    faults: FaultControl = daemon.faults  # type: ignore[attr-defined]
    _user, maildir, raw = imap_user(daemon, ca)
    assert append(raw, b"A0", "INBOX", "to-move").startswith(b"OK")
    assert tagged(raw.cmd(b"A1", b"SELECT INBOX")).startswith(b"OK")
    faults.reset_hits()
    faults.fail("fsync", f"/{maildir.name}/cur$", err)
    reply = tagged(raw.cmd(b"A2", b"MOVE 1 Drafts"))
    faults.clear()
    assert faults.hits(), "the fault was never met"
    assert reply.startswith(IMAP_NO[err]), reply
    assert len(files(maildir / "cur")) == 1 and len(files(maildir / ".Drafts" / "cur")) == 1
    lines = raw.cmd(b"A3", b"FETCH 1 FLAGS")
    assert tagged(lines).startswith(b"OK") and b"\\Deleted" not in lines[0], lines
    raw.close()
