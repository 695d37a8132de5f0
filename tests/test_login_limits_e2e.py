"""Failed-login limits over real sockets, against a real daemon: submission (587,
STARTTLS) and IMAP (993). The account owner is never locked out by someone else's
guesses; guessing is cut off per address, per (address, account), per connection, and
spaced out per account; a login refused for want of TLS is logged (not for fail2ban);
a password changed by the CLI (another process) invalidates the cache of good logins."""

from __future__ import annotations

import base64
import smtplib
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator

import pytest

from tests.support.ca import TestCA
from tests.support.daemon import REPO, PymaildProcess
from tests.support.imap import client_ctx, imap_daemon
from tests.test_fail2ban import python_matches
from tests.test_mx_e2e import RawSMTP

PASSWORD = "password-123456"  # what PymaildProcess.add_account sets
LIMITS = {  # the defaults, except a short failure delay to keep the tests quick
    "max_auth_failures_per_ip": 10, "max_auth_failures_per_ip_account": 5,
    "max_auth_failures_per_account": 10, "auth_failure_delay": "50ms",
}


@pytest.fixture(scope="module")
def d(tmp_path_factory: pytest.TempPathFactory, ca: TestCA) -> Iterator[PymaildProcess]:
    daemon = imap_daemon(tmp_path_factory.mktemp("limits"), ca, submission=dict(LIMITS), start=False)
    for user in ("carol", "dan", "erin", "frank", "gina", "hugo", "ivan", "judy", "kate", "liam"):
        daemon.add_account(f"{user}@example.test")
    daemon.start()
    yield daemon
    daemon.stop()


def plain(user: str, password: str) -> str:
    return base64.b64encode(f"\0{user}\0{password}".encode()).decode()


def smtp_client(d: PymaildProcess, ca: TestCA, source: str) -> smtplib.SMTP:
    client = smtplib.SMTP(d.host, d.sub_port, local_hostname="laptop.example.net", timeout=10,  # type: ignore[attr-defined]
                          source_address=(source, 0))
    client._host = "mx.example.test"  # type: ignore[attr-defined]  # the certificate's name
    client.starttls(context=ca.client_context())
    client.ehlo("laptop.example.net")
    return client


def smtp_guesses(d: PymaildProcess, ca: TestCA, source: str, user: str, n: int) -> list[int]:
    """``n`` wrong AUTH PLAIN attempts from ``source``, reconnecting whenever the server
    closes; the reply codes (0: refused at connect)."""
    codes: list[int] = []
    client: smtplib.SMTP | None = None
    while len(codes) < n:
        try:
            if client is None:
                client = smtp_client(d, ca, source)
            code = client.docmd("AUTH", "PLAIN " + plain(user, f"guess-{len(codes)}"))[0]
        except (smtplib.SMTPServerDisconnected, smtplib.SMTPConnectError, ConnectionError):
            client = None
            codes.append(0)
            continue
        codes.append(code)
        if code == 421:
            client.close()
            client = None
    if client is not None:
        client.close()
    return codes


def smtp_owner_login(d: PymaildProcess, ca: TestCA, source: str, user: str) -> float:
    with smtp_client(d, ca, source) as client:
        started = time.monotonic()
        code, reply = client.docmd("AUTH", "PLAIN " + plain(user, PASSWORD))
        elapsed = time.monotonic() - started
        assert code == 235, (code, reply)
    return elapsed


class IMAPS:
    def __init__(self, d: PymaildProcess, ca: TestCA, source: str) -> None:
        raw = socket.create_connection(("127.0.0.1", d.imaps_port), timeout=10,  # type: ignore[attr-defined]
                                       source_address=(source, 0))
        self.sock = client_ctx(ca).wrap_socket(raw)
        self.buf = b""
        self.greeting = self.line()

    def line(self) -> bytes:
        while b"\r\n" not in self.buf:
            chunk = self.sock.recv(4096)
            if not chunk:
                line, self.buf = self.buf, b""
                return line
            self.buf += chunk
        line, self.buf = self.buf.split(b"\r\n", 1)
        return line

    def cmd(self, tag: str, text: str) -> list[bytes]:
        self.sock.sendall(f"{tag} {text}\r\n".encode())
        lines = []
        while True:
            line = self.line()
            if not line:
                return lines
            lines.append(line)
            if line.startswith(tag.encode() + b" "):
                return lines

    def close(self) -> None:
        self.sock.close()


def imap_guesses(d: PymaildProcess, ca: TestCA, source: str, user: str, n: int) -> list[bytes]:
    """``n`` wrong LOGINs from ``source``, one connection each; the tagged answers."""
    out: list[bytes] = []
    for i in range(n):
        conn = IMAPS(d, ca, source)
        lines = conn.cmd(f"g{i}", f"LOGIN {user} guess-{i}")
        conn.close()
        out.append(lines[-1] if lines else b"")
    return out


def imap_owner_login(d: PymaildProcess, ca: TestCA, source: str, user: str) -> float:
    conn = IMAPS(d, ca, source)
    started = time.monotonic()
    lines = conn.cmd("a", f"LOGIN {user} {PASSWORD}")
    elapsed = time.monotonic() - started
    conn.close()
    assert lines[-1].startswith(b"a OK"), lines
    return elapsed


# ---------------------------------------------------------------------------- no lockout


def test_smtp_ten_guesses_from_one_address_do_not_lock_the_owner_out(d, ca) -> None:  # type: ignore[no-untyped-def]
    codes = smtp_guesses(d, ca, "127.0.1.1", "carol@example.test", 10)
    assert 235 not in codes and codes[0] == 535
    assert smtp_owner_login(d, ca, "127.0.1.2", "carol@example.test") < 1.0


def test_smtp_three_guesses_from_each_of_twenty_addresses_do_not_lock_the_owner_out(d, ca) -> None:  # type: ignore[no-untyped-def]
    for i in range(20):
        smtp_guesses(d, ca, f"127.0.2.{i + 1}", "dan@example.test", 3)
    assert smtp_owner_login(d, ca, "127.0.2.99", "dan@example.test") < 1.0


def test_imap_ten_guesses_from_one_address_do_not_lock_the_owner_out(d, ca) -> None:  # type: ignore[no-untyped-def]
    answers = imap_guesses(d, ca, "127.0.3.1", "erin@example.test", 10)
    assert answers[0].startswith(b"g0 NO [AUTHENTICATIONFAILED]")
    assert imap_owner_login(d, ca, "127.0.3.2", "erin@example.test") < 1.0


def test_imap_three_guesses_from_each_of_twenty_addresses_do_not_lock_the_owner_out(d, ca) -> None:  # type: ignore[no-untyped-def]
    for i in range(20):
        imap_guesses(d, ca, f"127.0.4.{i + 1}", "frank@example.test", 3)
    assert imap_owner_login(d, ca, "127.0.4.99", "frank@example.test") < 1.0


def test_distributed_guessing_gets_few_password_checks(d, ca) -> None:  # type: ignore[no-untyped-def]
    # 20 addresses, 5 guesses each, all at once on IMAP and submission.
    def imap_worker(i: int) -> None:
        imap_guesses(d, ca, f"127.0.5.{i + 1}", "gina@example.test", 5)

    def smtp_worker(i: int) -> None:
        smtp_guesses(d, ca, f"127.0.6.{i + 1}", "gina@example.test", 5)

    threads = [threading.Thread(target=w, args=(i,)) for i in range(10) for w in (imap_worker, smtp_worker)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    text = d.log_text()
    checked = text.count("auth failed client=127.0.5.") + text.count("auth failed client=127.0.6.")
    refused = text.count("auth throttled client=127.0.5.") + text.count("auth throttled client=127.0.6.")
    # 100 guesses: one password check per address (20), then the account's suspect lane
    # lets through a couple more; every other guess was refused without a hash.
    assert checked <= 20 + 3, (checked, refused)
    assert imap_owner_login(d, ca, "127.0.5.99", "gina@example.test") < 1.0
    assert smtp_owner_login(d, ca, "127.0.6.99", "gina@example.test") < 1.0


def test_address_over_budget_costs_no_hash_and_is_refused_at_connect(d, ca) -> None:  # type: ignore[no-untyped-def]
    # max_auth_failures_per_ip = 10: two accounts x 5, then the address is out.
    for user in ("kate", "liam"):
        imap_guesses(d, ca, "127.0.7.1", f"{user}@example.test", 5)
    answers = imap_guesses(d, ca, "127.0.7.1", "hugo@example.test", 2)
    assert all(a.endswith(b"too many failed logins, try again later") for a in answers), answers
    raw = RawSMTP(d.host, d.sub_port, source="127.0.7.1")  # type: ignore[attr-defined]
    assert raw.greeting.startswith(b"421 4.7.0")
    raw.close()
    assert d.log_text().count("auth failed client=127.0.7.1 ") == 10


# ---------------------------------------------------------------------------- per connection


def test_imap_closes_the_connection_after_three_failed_logins(d, ca) -> None:  # type: ignore[no-untyped-def]
    conn = IMAPS(d, ca, "127.0.8.1")
    assert conn.cmd("a", "LOGIN ivan@example.test x1")[-1].startswith(b"a NO [AUTHENTICATIONFAILED]")
    assert conn.cmd("b", "LOGIN ivan@example.test x2")[-1].startswith(b"b NO [AUTHENTICATIONFAILED]")
    lines = conn.cmd("c", "LOGIN ivan@example.test x3")
    assert lines[-1].startswith(b"c NO [AUTHENTICATIONFAILED]")
    rest = [conn.line(), conn.line()]
    assert rest == [b"* BYE too many failed logins", b""], rest  # then the server hangs up
    conn.close()


def test_smtp_closes_the_connection_after_three_failed_auths(d, ca) -> None:  # type: ignore[no-untyped-def]
    client = smtp_client(d, ca, "127.0.8.2")
    replies = [client.docmd("AUTH", "PLAIN " + plain("ivan@example.test", f"x{i}")) for i in range(3)]
    assert [r[0] for r in replies] == [535, 535, 535]
    code, text = client.getreply()  # unsolicited, before the server closes
    assert code == 421 and b"too many failed logins on this connection" in text
    with pytest.raises(smtplib.SMTPServerDisconnected):
        client.noop()


# ---------------------------------------------------------------------------- logging


def test_login_without_tls_is_logged_but_not_for_fail2ban(d, ca) -> None:  # type: ignore[no-untyped-def]
    sock = socket.create_connection(("127.0.0.1", d.imap_port), timeout=10,  # type: ignore[attr-defined]
                                    source_address=("127.0.9.1", 0))
    sock.recv(4096)
    sock.sendall(b"a LOGIN judy@example.test secret\r\n")
    assert b"a NO [PRIVACYREQUIRED]" in sock.recv(4096)
    sock.close()
    raw = RawSMTP(d.host, d.sub_port, source="127.0.9.2")  # type: ignore[attr-defined]
    raw.cmd(b"EHLO laptop.example.net")
    assert raw.cmd(b"AUTH PLAIN " + plain("judy@example.test", "secret").encode()).startswith(b"538 5.7.11")
    raw.close()
    text = d.wait_log("login refused without TLS mechanism=PLAIN")
    lines = [line for line in text.splitlines() if "login refused without TLS" in line]
    assert any("client=127.0.9.1" in line and "command=LOGIN" in line for line in lines), lines
    assert any("client=127.0.9.2" in line and "code=538" in line for line in lines), lines
    assert "secret" not in text
    assert python_matches(lines, "aggressive") == {}


# ---------------------------------------------------------------------------- the cache


def test_password_change_by_the_cli_invalidates_the_cache(d, ca) -> None:  # type: ignore[no-untyped-def]
    imap_owner_login(d, ca, "127.0.10.1", "judy@example.test")
    imap_owner_login(d, ca, "127.0.10.1", "judy@example.test")  # from the cache
    subprocess.run([sys.executable, "-m", "mailserver.cli", "creds", "password", "judy@example.test",
                    "--password-stdin", "-c", str(d.config_path)],
                   input="a-new-password-77\n", text=True, check=True, cwd=REPO, capture_output=True)
    conn = IMAPS(d, ca, "127.0.10.1")
    assert conn.cmd("a", f"LOGIN judy@example.test {PASSWORD}")[-1].startswith(b"a NO [AUTHENTICATIONFAILED]")
    assert conn.cmd("b", "LOGIN judy@example.test a-new-password-77")[-1].startswith(b"b OK")
    conn.close()
