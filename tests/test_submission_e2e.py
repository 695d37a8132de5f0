"""Submission on 587 (STARTTLS) and 465 (implicit TLS) against a real daemon process."""

from __future__ import annotations

import base64
import smtplib
import ssl

import pytest

from tests.support.daemon import free_port
from tests.test_mx_e2e import RawSMTP, maildir_files

PASSWORD = "password-123456"  # what PymaildProcess.add_account sets


@pytest.fixture
def sub(make_daemon):
    d = make_daemon(
        accounts=("alice@example.test", "bob@example.test"),
        extra={"listen": {"submission": [f"127.0.0.1:{free_port()}"],
                          "submissions": [f"127.0.0.1:{free_port()}"]},
               "submission": {"max_auth_failures_per_ip": 4}},
        start=False,
    )
    from mailserver.auth.store import AccountStore

    store = AccountStore.in_state_dir(d.state_dir)
    store.add_alias("info@example.test", "alice@example.test")
    store.close()
    d.start()
    d.sub_port = int(d.config["listen"]["submission"][0].rsplit(":", 1)[1])
    d.subs_port = int(d.config["listen"]["submissions"][0].rsplit(":", 1)[1])
    return d


def starttls_client(d, ca) -> smtplib.SMTP:
    client = smtplib.SMTP(d.host, d.sub_port, local_hostname="laptop.example.net", timeout=10)
    client._host = "mx.example.test"  # type: ignore[attr-defined]  # verify the certificate name
    client.starttls(context=ca.client_context())
    client.ehlo("laptop.example.net")
    return client


def test_starttls_auth_plain_and_local_delivery(sub, ca):
    with starttls_client(sub, ca) as client:
        assert "PLAIN" in client.esmtp_features["auth"] and "LOGIN" in client.esmtp_features["auth"]
        client.login("alice@example.test", PASSWORD)
        msg = b"From: Alice <alice@example.test>\r\nTo: bob@example.test\r\nSubject: hi\r\n\r\nhello\r\n"
        refused = client.sendmail("alice@example.test", ["bob@example.test"], msg)
        assert refused == {}
    (stored,) = [f.read_bytes() for f in maildir_files(sub.state_dir / "mail/example.test/bob")]
    head = stored.split(b"\r\n\r\n", 1)[0]
    assert b"Received: from authenticated-user" in head and b"127.0.0.1" not in head
    assert b"with ESMTPSA" in head
    assert b"\r\nMessage-ID: <" in head and b"\r\nDate: " in head  # added (RFC 6409 8)
    assert stored.endswith(msg)
    assert "auth session=" in sub.wait_log("outcome=accepted")


def test_implicit_tls_465_and_auth_login(sub, ca):
    ctx = ca.client_context()
    with smtplib.SMTP_SSL(sub.host, sub.subs_port, local_hostname="laptop.example.net", timeout=10,
                          context=_ctx_for(ctx)) as client:
        client.ehlo()
        client.user, client.password = "alice@example.test", PASSWORD
        code, _ = client.auth("LOGIN", client.auth_login, initial_response_ok=False)
        assert code == 235
        client.sendmail("info@example.test", ["bob@example.test"],
                        b"From: info@example.test\r\nTo: bob@example.test\r\nSubject: as alias\r\n\r\nx\r\n")
    assert len(maildir_files(sub.state_dir / "mail/example.test/bob")) == 1


def _ctx_for(ctx: ssl.SSLContext) -> ssl.SSLContext:
    # SMTP_SSL checks the name it connected to (127.0.0.1); our certificate names the MX.
    ctx.check_hostname = False
    return ctx


def test_no_auth_before_tls_on_587(sub):
    raw = RawSMTP(sub.host, sub.sub_port)
    ehlo = raw.cmd(b"EHLO laptop.example.net")
    assert b"STARTTLS" in ehlo and b"AUTH" not in ehlo
    token = base64.b64encode(b"\0alice@example.test\0" + PASSWORD.encode())
    assert raw.cmd(b"AUTH PLAIN " + token).startswith(b"538 5.7.11")
    assert raw.cmd(b"MAIL FROM:<alice@example.test>").startswith(b"530 5.7.0")
    raw.close()


def test_unauthenticated_mail_is_refused(sub, ca):
    with starttls_client(sub, ca) as client:
        code, reply = client.mail("alice@example.test")
        assert code == 530 and reply.startswith(b"5.7.0")


def test_wrong_password_then_throttle(sub, ca):
    # max_auth_failures_per_ip = 4: three 535s (then 421: three per connection), and on a
    # new connection the fourth failure closes with 421.
    with starttls_client(sub, ca) as client:
        for attempt in range(3):
            token = base64.b64encode(f"\0alice@example.test\0wrong-{attempt}".encode()).decode()
            code, reply = client.docmd("AUTH", "PLAIN " + token)
            assert (code, reply[:5]) == (535, b"5.7.8"), (attempt, code, reply)
        assert client.getreply()[0] == 421
    with starttls_client(sub, ca) as client:
        token = base64.b64encode(b"\0alice@example.test\0wrong-3").decode()
        code, reply = client.docmd("AUTH", "PLAIN " + token)
        assert (code, reply[:5]) == (421, b"4.7.0"), (code, reply)
    # The address is now throttled: refused at connect, even with the right password.
    raw = RawSMTP(sub.host, sub.sub_port)
    assert raw.greeting.startswith(b"421 4.7.0")
    raw.close()
    assert "auth failed client=127.0.0.1 user=alice@example.test" in sub.wait_log("auth failed")
    # Another address is unaffected.
    client = smtplib.SMTP(sub.host, sub.sub_port, local_hostname="x", timeout=10,
                          source_address=("127.0.0.2", 0))
    client._host = "mx.example.test"  # type: ignore[attr-defined]
    client.starttls(context=ca.client_context())
    client.login("alice@example.test", PASSWORD)
    client.quit()


def test_authzid_must_equal_login(sub, ca):
    with starttls_client(sub, ca) as client:
        token = base64.b64encode(b"bob@example.test\0alice@example.test\0" + PASSWORD.encode()).decode()
        code, reply = client.docmd("AUTH", "PLAIN " + token)
        assert code == 535 and reply.startswith(b"5.7.8")
        same = base64.b64encode(b"alice@example.test\0alice@example.test\0" + PASSWORD.encode()).decode()
        code, _ = client.docmd("AUTH", "PLAIN " + same)  # mbsync-style authzid = login: fine
        assert code == 235


@pytest.mark.parametrize(("mail_from", "from_header", "expected"), [
    ("bob@example.test", "bob@example.test", "553 5.7.1"),  # not alice's
    ("alice@example.test", "bob@example.test", "553 5.7.1"),  # From not owned
    ("alice@example.test", "Alice <alice@example.test>, bob@example.test", "553 5.7.1"),
    ("alice@example.test", '"alice@example.test" <mallory@evil.example>', "553 5.7.1"),
    ("alice@example.test", "=?utf-8?q?alice=40example.test?= <mallory@evil.example>", "553 5.7.1"),
    ("alice@example.test", "<=?utf-8?q?alice=40example.test?=>", "553 5.7.1"),
    ("alice+lists@example.test", "alice+lists@example.test", "250"),
    ("info@example.test", "Info <info@example.test>", "250"),
    # An unquoted address as the display name reads as the sender to a human: refused,
    # even though the address in brackets is alice's own.
    ("alice@example.test", "ceo@bank.example <alice@example.test>", "553 5.7.1"),
    ("alice@example.test", '"Alice, at work" <alice@example.test>', "250"),
    # Shapes a reader and a parser could disagree about (the parser DMARC uses refuses them).
    ("alice@example.test", "Alice <alice@example.test", "553 5.7.1"),
    ("alice@example.test", "alice@example.test>", "553 5.7.1"),
])
def test_sender_ownership(sub, ca, mail_from, from_header, expected):
    with starttls_client(sub, ca) as client:
        client.login("alice@example.test", PASSWORD)
        code, reply = client.mail(mail_from)
        if code != 250:
            assert f"{code} {reply.decode()[:5]}" == expected
            return
        assert client.rcpt("bob@example.test")[0] == 250
        body = f"From: {from_header}\r\nTo: bob@example.test\r\nSubject: s\r\n\r\nx\r\n"
        code, reply = client.data(body.encode())
        assert f"{code} {reply.decode()[:5]}".startswith(expected), reply


def test_two_from_headers_and_null_sender_refused(sub, ca):
    with starttls_client(sub, ca) as client:
        client.login("alice@example.test", PASSWORD)
        code, reply = client.docmd("MAIL FROM:<>")
        assert code == 553 and reply.startswith(b"5.7.1")
        client.mail("alice@example.test")
        client.rcpt("bob@example.test")
        code, reply = client.data(b"From: alice@example.test\r\nFrom: alice@example.test\r\n\r\nx\r\n")
        assert code == 553 and reply.startswith(b"5.7.1")
    assert maildir_files(sub.state_dir / "mail/example.test/bob") == []


def test_unknown_local_recipient_refused_at_rcpt(sub, ca):
    with starttls_client(sub, ca) as client:
        client.login("alice@example.test", PASSWORD)
        client.mail("alice@example.test")
        code, reply = client.rcpt("nobody@example.test")
        assert code == 550 and reply.startswith(b"5.1.1")


def test_submission_is_not_reachable_as_relay_without_auth_on_25(sub):
    raw = RawSMTP(sub.host, sub.port)  # the MX port never relays, AUTH or not
    ehlo = raw.cmd(b"EHLO x.example.net")
    assert b"AUTH" not in ehlo
    raw.cmd(b"MAIL FROM:<alice@example.test>")
    assert raw.cmd(b"RCPT TO:<someone@elsewhere.example>").startswith(b"554 5.7.1")
    raw.close()


def test_extra_senders_per_account(sub, ca):
    import subprocess
    import sys

    def pymaild(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "mailserver.cli", *args, "-c", str(sub.config_path)],
                              capture_output=True, text=True, timeout=30)

    def try_send(sender: str) -> int:
        with starttls_client(sub, ca) as client:
            client.login("alice@example.test", PASSWORD)
            code, _ = client.mail(sender)
            return code

    assert try_send("team@example.test") == 553
    assert pymaild("sender", "allow", "alice@example.test", "team@example.test").returncode == 0
    assert pymaild("sender", "allow", "alice@example.test", "@other.example").returncode == 0
    assert try_send("team@example.test") == 250  # applies at the next login
    assert try_send("anyone@other.example") == 250
    assert try_send("bob@example.test") == 553  # still not bob's address
    listed = pymaild("sender", "list", "alice@example.test").stdout
    assert "team@example.test" in listed and "info@example.test" in listed
    assert pymaild("sender", "deny", "alice@example.test", "team@example.test").returncode == 0
    assert try_send("team@example.test") == 553
    missing = pymaild("sender", "allow", "nobody@example.test", "x@example.test")
    assert missing.returncode == 1 and "no account" in missing.stderr


def test_user_name_cannot_forge_log_lines(sub, ca):
    forged = "x\n2026-01-01T00:00:00 WARNING pymaild.submission: auth failed client=10.9.8.7 user=y"
    with starttls_client(sub, ca) as client:
        token = base64.b64encode(b"\0" + forged.encode() + b"\0wrong").decode()
        code, _ = client.docmd("AUTH", "PLAIN " + token)
        assert code == 535
    log = sub.wait_log("auth failed client=127.0.0.1")
    assert not any(line.startswith("2026-01-01") for line in log.splitlines())
    import re

    # What fail2ban would match: a line whose own message is a failure from 10.9.8.7.
    assert re.search(r"^\S+ WARNING pymaild\.submission: auth failed client=10\.9\.8\.7", log, re.M) is None
    assert "\\x0a" in log  # the newline is shown escaped, on the same line
