"""mbsync (Debian isync) round trip against a running pymaild: a real client's full sync."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

from tests.support.imap import PASSWORD, imap_daemon, login, new_account, smtp_deliver
from tests.support.tools import needs_tool

pytestmark = needs_tool("mbsync", "isync")


def _mbsync_config(tmp: Path, port: int, user: str, cafile: Path, local: Path) -> Path:
    version = subprocess.run(["mbsync", "--version"], capture_output=True, text=True).stdout
    tls_key = "SSLType" if " 1.4" in version or " 1.3" in version else "TLSType"
    conf = tmp / "mbsyncrc"
    conf.write_text(f"""
IMAPAccount test
Host localhost
Port {port}
User {user}
Pass {PASSWORD}
{tls_key} IMAPS
CertificateFile {cafile}
AuthMechs PLAIN

IMAPStore remote
Account test

MaildirStore local
Path {local}/
Inbox {local}/INBOX
SubFolders Verbatim

Channel test
Far :remote:
Near :local:
Patterns *
Create Both
Expunge Both
SyncState *
""")
    return conf


def _run(conf: Path) -> str:
    proc = subprocess.run(["mbsync", "-c", str(conf), "-a"], capture_output=True, text=True, timeout=60,
                          env=dict(os.environ, HOME=str(conf.parent)))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return proc.stdout + proc.stderr


def _files(d: Path) -> list[Path]:
    return sorted(p for sub in ("cur", "new") for p in (d / sub).glob("*") if p.is_file())


def test_mbsync_round_trip(ca, tmp_path):
    d = imap_daemon(tmp_path / "d", ca)
    try:
        user = new_account(d)
        for i in range(3):
            smtp_deliver(d, user, f"message {i}")
        local = tmp_path / "local"
        local.mkdir()
        conf = _mbsync_config(tmp_path, d.imaps_port, user, ca.cert_path, local)
        _run(conf)
        inbox = _files(local / "INBOX")
        assert len(inbox) == 3
        assert all((local / name).is_dir() for name in ("Sent", "Drafts", "Trash", "Junk", "Archive"))
        assert b"Subject: message 0" in b"".join(p.read_bytes() for p in inbox)

        # Local changes go up: a flag, a deletion, a new folder with a message.
        first = inbox[0]
        base, _, flags = first.name.partition(":2,")
        first.rename(first.with_name(f"{base}:2,{''.join(sorted(flags + 'F'))}"))
        inbox[1].unlink()
        (local / "Notes" / "cur").mkdir(parents=True)
        (local / "Notes" / "new").mkdir()
        (local / "Notes" / "tmp").mkdir()
        (local / "Notes" / "new" / "1700000000.1.local").write_bytes(b"Subject: note\r\n\r\nremember\r\n")
        # A remote change comes down.
        smtp_deliver(d, user, "message 3")
        _run(conf)

        m = login(d, ca, user)
        typ, data = m.select("INBOX")
        assert data == [b"3"]  # 3 delivered - 1 deleted + 1 new
        typ, data = m.search(None, "FLAGGED")
        assert len(data[0].split()) == 1
        typ, data = m.select("Notes")
        assert typ == "OK" and data == [b"1"]
        m.logout()
        assert len(_files(local / "INBOX")) == 3

        # A second run with nothing changed is a no-op and changes nothing.
        _run(conf)
        assert len(_files(local / "INBOX")) == 3
    finally:
        d.stop()
