"""pymaild and Dovecot (``quota = maildir``) agree about usage on one Maildir: each reads
the ``maildirsize`` the other keeps, and each counts what the other wrote."""

from __future__ import annotations

import imaplib
from pathlib import Path

import pytest

from mailserver.storage import quota
from mailserver.storage.maildir import MaildirWriter
from mailserver.storage.maildirpp import create_maildirpp
from tests.support import dovecot
from tests.support.ca import TestCA
from tests.support.imap import client_ctx
from tests.support.tools import missing

USER, PASSWORD = "quota@example.test", "quota-test-password"
LIMITS = quota.Limits(1024 * 1024, 100)  # Dovecot's quota_rule below: the same first line

QUOTA_CONFIG = """\
mail_plugins = $mail_plugins quota
protocol imap {
  mail_plugins = $mail_plugins imap_quota
}
plugin {
  quota = maildir:User quota
  quota_rule = *:storage=1M:messages=100
}
"""


def _message(n: int, size: int) -> bytes:
    head = f"From: a@example.test\r\nSubject: m{n}\r\n\r\n".encode()
    return head + (b"y" * 70 + b"\r\n") * ((size - len(head)) // 72)


def _quota(conn: imaplib.IMAP4_SSL) -> bytes:
    typ, data = conn.getquotaroot("INBOX")
    assert typ == "OK", data
    return data[1][0]  # type: ignore[no-any-return]  # imaplib's untyped answer


def test_dovecot_and_pymaild_agree_on_usage(tmp_path: Path, ca: TestCA) -> None:
    if not dovecot.available():
        missing("dovecot not installed (Debian package dovecot-imapd; .ci/run installs it)")
    root = tmp_path / "mail" / "Maildir"
    create_maildirpp(root, durable=False)
    writer = MaildirWriter(fsync=False)
    quota.usage(root, LIMITS)  # pymaild creates maildirsize ...
    for n in range(3):
        writer.deliver(root, None, [_message(n, 3000)])  # ... and appends to it
    ours = quota.usage(root, LIMITS)
    assert ours == quota.measure(root)
    cert, key = ca.issue("127.0.0.1")
    server = dovecot.DovecotServer(tmp_path / "server", cert, key, max_connections=10,
                                   extra_config=QUOTA_CONFIG)
    server.add_user(USER, PASSWORD, root)
    server.start()
    try:
        conn = imaplib.IMAP4_SSL("127.0.0.1", server.imaps_port, ssl_context=client_ctx(ca), timeout=30)
        conn.login(USER, PASSWORD)
        try:
            # Dovecot reads our file: the same usage (KiB rounded up, as ours).
            assert _quota(conn) == b'"User quota" (STORAGE %d 1024 MESSAGE 3 100)' % (
                (ours.storage + 1023) // 1024)
            # Dovecot appends and expunges; pymaild's reading of the file follows.
            assert conn.append("INBOX", None, None, _message(9, 5000))[0] == "OK"
            after_append = quota.usage(root, LIMITS)
            assert after_append == quota.measure(root)
            assert after_append.messages == 4
            conn.select("INBOX")
            conn.store("1", "+FLAGS", "\\Deleted")
            conn.expunge()
            after_expunge = quota.usage(root, LIMITS)
            assert after_expunge == quota.measure(root)
            assert after_expunge.messages == 3
            # And Dovecot follows what pymaild appends.
            writer.deliver(root, None, [_message(10, 2000)])
            final = quota.usage(root, LIMITS)
            assert final == quota.measure(root)
            assert _quota(conn) == b'"User quota" (STORAGE %d 1024 MESSAGE 4 100)' % (
                (final.storage + 1023) // 1024)
        finally:
            conn.logout()
    finally:
        server.stop()
    assert (root / "maildirsize").read_text().startswith(LIMITS.line() + "\n")


if __name__ == "__main__":  # pragma: no cover
    pytest.main([__file__])
