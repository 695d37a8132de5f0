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

import errno
import smtplib
from pathlib import Path

import pytest

from tests.support.daemon import PymaildProcess
from tests.support.faults import FaultControl
from tests.support.imap import imap_daemon, new_account

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
    log = daemon.wait_log(f"errno={err}")
    assert any(f"errno={err}" in line and str(maildir) in line for line in log.splitlines()), log[-2000:]
    # The same daemon delivers the next message.
    code, text = send_to(daemon, user, f"after-{site}-{err}")
    assert code == 250, (code, text)
    assert len(files(maildir / "new")) == 1
