"""The inbound MX end to end: a real pymaild process, real sockets, real TLS, real Maildirs."""

from __future__ import annotations

import smtplib
import socket
import ssl
import time
from email.message import EmailMessage
from pathlib import Path

import pytest

from tests.support.ca import TestCA
from tests.support.daemon import PymaildProcess
from tests.support.wait import wait_until


def maildir_files(root: Path, folder: str = "") -> list[Path]:
    base = root / folder if folder else root
    return sorted((base / "new").iterdir()) if (base / "new").exists() else []


def smtp_client(daemon: PymaildProcess, ca: TestCA | None = None, *, tls: bool = True,
                source: str | None = None) -> smtplib.SMTP:
    client = smtplib.SMTP(daemon.host, daemon.port, local_hostname="client.example.net", timeout=10,
                          source_address=(source, 0) if source else None)
    if tls:
        assert ca is not None
        client._host = daemon.config["hostname"]  # type: ignore[attr-defined]  # verify the MX name
        client.starttls(context=ca.client_context())
    client.ehlo("client.example.net")
    return client


def message(sender: str = "bob@example.net", to: str = "alice@example.test", subject: str = "hello",
            body: str = "Hi Alice,\nthis is a test.\n") -> bytes:
    msg = EmailMessage()
    msg["From"] = sender
    msg["To"] = to
    msg["Subject"] = subject
    msg["Message-ID"] = f"<{time.time_ns()}@example.net>"
    msg.set_content(body)
    return msg.as_bytes().replace(b"\n", b"\r\n")


class RawSMTP:
    """A byte-level client for what smtplib refuses to send."""

    def __init__(self, host: str, port: int, source: str | None = None) -> None:
        self.sock = socket.create_connection((host, port), timeout=10,
                                             source_address=(source, 0) if source else None)
        self.buf = b""
        self.greeting = self.read_reply()

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def read_reply(self) -> bytes:
        while True:
            lines = self.buf.split(b"\r\n")
            for i, line in enumerate(lines[:-1]):
                if len(line) >= 4 and line[3:4] == b" ":
                    reply = b"\r\n".join(lines[: i + 1])
                    self.buf = b"\r\n".join(lines[i + 1 :])
                    return reply
            chunk = self.sock.recv(65536)
            if not chunk:
                raise ConnectionError(f"closed; buffered {self.buf!r}")
            self.buf += chunk

    def cmd(self, line: bytes) -> bytes:
        self.send(line + b"\r\n")
        return self.read_reply()

    def close(self) -> None:
        self.sock.close()


# ---------------------------------------------------------------------------- delivery


def test_delivers_over_starttls_into_maildir(make_daemon, ca):
    d = make_daemon()
    inbox = d.state_dir / "mail/example.test/alice"
    with smtp_client(d, ca) as client:
        assert "starttls" not in client.esmtp_features  # already TLS
        for ext in ("pipelining", "size", "8bitmime", "enhancedstatuscodes", "smtputf8"):
            assert ext in client.esmtp_features, ext
        code, _ = client.mail("bob@example.net")
        assert code == 250
        raw = message()
        client.rcpt("alice@example.test")
        code, reply = client.data(raw)
        assert code == 250 and reply.startswith(b"2.0.0"), reply
    files = maildir_files(inbox)
    assert len(files) == 1
    stored = files[0].read_bytes()
    assert stored.endswith(raw)
    head = stored[: len(stored) - len(raw)]
    assert head.startswith(b"Return-Path: <bob@example.net>\r\nDelivered-To: alice@example.test\r\n")
    assert b"Received: from client.example.net ([127.0.0.1])" in head
    assert b"with ESMTPS" in head and b"(using TLSv1.3" in head
    assert files[0].name.endswith(f",S={len(stored)}")
    assert not list((inbox / "tmp").iterdir())
    log = d.wait_log("outcome=delivered")
    assert "from=<bob@example.net> to=alice@example.test" in log and "outcome=delivered" in log


def test_plaintext_delivery_and_several_recipients(make_daemon):
    d = make_daemon(accounts=("alice@example.test", "carol@example.test"))
    with smtp_client(d, tls=False) as client:
        assert "starttls" in client.esmtp_features
        refused = client.sendmail("bob@example.net", ["alice@example.test", "carol@example.test"], message())
        assert refused == {}
    for user in ("alice", "carol"):
        files = maildir_files(d.state_dir / f"mail/example.test/{user}")
        assert len(files) == 1
        assert f"Delivered-To: {user}@example.test".encode() in files[0].read_bytes()
        assert b"with ESMTP id" in files[0].read_bytes()


def test_plus_addressing_alias_and_postmaster(make_daemon):
    d = make_daemon(start=False)
    from mailserver.auth.store import AccountStore

    store = AccountStore.in_state_dir(d.state_dir)
    store.add_alias("info@example.test", "alice@example.test")
    store.close()
    d.start()
    with smtp_client(d, tls=False) as client:
        for rcpt in ("alice+lists@example.test", "info@example.test", "postmaster@example.test",
                     "abuse@example.test", "ALICE@EXAMPLE.TEST", "Postmaster"):
            code, reply = client.mail("bob@example.net")
            assert code == 250
            code, reply = client.rcpt(rcpt)
            assert code == 250, (rcpt, reply)
            code, reply = client.data(message(to=rcpt))
            assert code == 250, (rcpt, reply)
    assert len(maildir_files(d.state_dir / "mail/example.test/alice")) == 6


def test_unknown_user_is_refused_at_rcpt(make_daemon):
    d = make_daemon()
    with smtp_client(d, tls=False) as client:
        client.mail("bob@example.net")
        code, reply = client.rcpt("nobody@example.test")
        assert code == 550 and reply.startswith(b"5.1.1"), reply
        code, reply = client.docmd("DATA")
        assert code == 554 and reply.startswith(b"5.5.1"), reply


RELAY_TRICKS = [
    "victim@example.com",
    "victim@example.com.",
    "victim%example.com@example.test",  # percent hack: local part, unknown user
    "example.com!victim@example.test",  # bang path: local part, unknown user
    '"victim@example.com"@example.test',  # quoted @: local part, unknown user
    "@example.test:victim@example.com",  # source route ending outside
    "@example.test,@mx.example.test:victim@example.com",
    "victim@[127.0.0.1]",  # address literal
    "victim@example.test.example.com",
    "victim@EXAMPLE.COM",
    "victim@sub.example.test",
    "victim@example.com@example.test",
    "victim@example.com\r\nRCPT TO:<x@example.com>",
]


@pytest.mark.parametrize("rcpt", RELAY_TRICKS)
def test_never_an_open_relay(make_daemon_shared, rcpt):
    d = make_daemon_shared
    raw = RawSMTP(d.host, d.port)
    assert raw.cmd(b"EHLO relay.example.net").startswith(b"250")
    assert raw.cmd(b"MAIL FROM:<spam@example.net>").startswith(b"250")
    reply = raw.cmd(b"RCPT TO:<" + rcpt.encode() + b">")
    assert reply[:1] in (b"5",), reply
    assert reply[:3] in (b"554", b"550", b"501"), reply
    if reply.startswith(b"554"):
        assert b"5.7.1" in reply
    raw.close()
    assert not list((d.state_dir / "mail").glob("*/*/new/*"))


@pytest.fixture(scope="module")
def make_daemon_shared(tmp_path_factory):
    """One daemon for the many relay-trick cases (start-up costs a key generation)."""
    from tests.support.ca import TestCA
    from tests.support.daemon import free_port

    base = tmp_path_factory.mktemp("relay")
    ca = TestCA(base / "ca")
    cert, key = ca.issue("mx.example.test")
    port = free_port()
    d = PymaildProcess(base / "d", {
        "hostname": "mx.example.test", "primary_domain": "example.test",
        "local_domains": ["example.test"], "state_dir": str(base / "d/state"),
        "tls": {"cert": str(cert), "key": str(key)}, "listen": {"smtp": [f"127.0.0.1:{port}"]},
        "checks": {"spf": False, "dkim": False, "dmarc": False},
        "smtp": {"max_errors": 100},
    })
    d.host, d.port = "127.0.0.1", port
    d.add_account("alice@example.test")
    d.start()
    yield d
    d.stop()


# ---------------------------------------------------------------------------- limits


def test_oversize_message_refused(make_daemon):
    d = make_daemon(smtp={"max_message_size": "10K"})
    with smtp_client(d, tls=False) as client:
        assert client.esmtp_features["size"] == str(10 * 1024)
        code, reply = client.docmd("MAIL FROM:<bob@example.net> SIZE=20000")
        assert code == 552 and reply.startswith(b"5.3.4")
        client.mail("bob@example.net")  # no SIZE declared: refused after DATA
        client.rcpt("alice@example.test")
        code, reply = client.data(message(body="x" * 60 + "\n") * 1 + b"y" * 12000 + b"\r\n")
        assert code == 552 and reply.startswith(b"5.3.4"), reply
    assert maildir_files(d.state_dir / "mail/example.test/alice") == []


def test_too_many_recipients(make_daemon):
    d = make_daemon(smtp={"max_recipients": 2}, accounts=("alice@example.test",))
    with smtp_client(d, tls=False) as client:
        client.mail("bob@example.net")
        assert client.rcpt("alice@example.test")[0] == 250
        assert client.rcpt("alice+a@example.test")[0] == 250
        code, reply = client.rcpt("alice+b@example.test")
        assert code == 452 and reply.startswith(b"4.5.3")
        assert client.data(message())[0] == 250
    # alice reached through two addresses gets one copy
    assert len(maildir_files(d.state_dir / "mail/example.test/alice")) == 1


def test_bare_lf_smuggling_is_refused_and_smuggled_mail_not_delivered(make_daemon):
    d = make_daemon()
    raw = RawSMTP(d.host, d.port)
    raw.cmd(b"EHLO attacker.example.net")
    raw.cmd(b"MAIL FROM:<bob@example.net>")
    raw.cmd(b"RCPT TO:<alice@example.test>")
    assert raw.cmd(b"DATA").startswith(b"354")
    smuggled = (b"From: bob@example.net\r\nSubject: outer\r\n\r\nouter body\r\n"
                b"\n.\nMAIL FROM:<admin@example.test>\nRCPT TO:<alice@example.test>\nDATA\n"
                b"From: admin@example.test\nSubject: smuggled\n\nsmuggled\n.\n"
                b"\r\n.\r\n")
    raw.send(smuggled)
    reply = raw.read_reply()
    assert reply.startswith(b"554 5.6.0"), reply
    assert raw.cmd(b"NOOP").startswith(b"250")  # the session is intact, nothing else queued
    raw.close()
    assert maildir_files(d.state_dir / "mail/example.test/alice") == []


@pytest.mark.parametrize("body", [b"line\rwith bare CR\r\n", b"ends with bare LF\n"])
def test_bare_cr_or_lf_refused(make_daemon_shared, body):
    d = make_daemon_shared
    raw = RawSMTP(d.host, d.port)
    raw.cmd(b"EHLO c.example.net")
    raw.cmd(b"MAIL FROM:<bob@example.net>")
    raw.cmd(b"RCPT TO:<alice@example.test>")
    raw.cmd(b"DATA")
    # A dot after a bare LF is content, not the end (smuggling defence): end properly.
    raw.send(b"Subject: x\r\n\r\n" + body + b"\r\n.\r\n")
    assert raw.read_reply().startswith(b"554 5.6.0")
    raw.close()


def test_starttls_injection_is_discarded(make_daemon, ca):
    d = make_daemon()
    raw = RawSMTP(d.host, d.port)
    raw.cmd(b"EHLO c.example.net")
    # The injected MAIL arrives in the same packet, in plaintext, before the handshake.
    raw.send(b"STARTTLS\r\nMAIL FROM:<injected@example.net>\r\n")
    assert raw.read_reply().startswith(b"220")
    assert raw.buf == b""
    raw.sock = ca.client_context().wrap_socket(raw.sock, server_hostname="mx.example.test")
    data = raw.cmd(b"EHLO c.example.net")  # reads until the reply's last line
    # The first reply after the handshake answers our EHLO, not the injected MAIL.
    assert data.startswith(b"250-mx.example.test"), data
    assert b"2.1.0" not in data
    # No MAIL transaction exists; a late reply to the injected MAIL would show up here.
    assert raw.cmd(b"RCPT TO:<alice@example.test>").startswith(b"503 5.5.1")
    raw.close()


def test_silent_client_times_out(make_daemon):
    d = make_daemon(smtp={"command_timeout": "1s"})
    raw = RawSMTP(d.host, d.port)
    started = time.monotonic()
    reply = raw.read_reply()
    assert reply.startswith(b"421 4.4.2"), reply
    assert time.monotonic() - started < 5
    assert raw.sock.recv(10) == b""
    raw.close()


def test_silent_client_in_data_times_out(make_daemon):
    d = make_daemon(smtp={"data_timeout": "1s", "command_timeout": "30s"})
    raw = RawSMTP(d.host, d.port)
    raw.cmd(b"EHLO c.example.net")
    raw.cmd(b"MAIL FROM:<bob@example.net>")
    raw.cmd(b"RCPT TO:<alice@example.test>")
    raw.cmd(b"DATA")
    raw.send(b"Subject: half\r\n\r\nhalf a message")
    assert raw.read_reply().startswith(b"421 4.4.2")
    raw.close()
    assert maildir_files(d.state_dir / "mail/example.test/alice") == []


def test_connection_flood_from_one_ip(make_daemon):
    d = make_daemon(smtp={"max_connections_per_ip": 5})
    clients = [RawSMTP(d.host, d.port) for _ in range(5)]
    assert all(c.greeting.startswith(b"220") for c in clients)
    extra = RawSMTP(d.host, d.port)
    assert extra.greeting.startswith(b"421 4.7.0"), extra.greeting
    extra.close()
    other = RawSMTP(d.host, d.port, source="127.0.0.2")  # another address is unaffected
    assert other.greeting.startswith(b"220")
    other.close()
    clients.pop().close()
    admitted: list[RawSMTP] = []

    def slot_freed() -> bool:
        # The server frees the slot once it has seen the close: until then it answers 421.
        attempt = RawSMTP(d.host, d.port)
        if attempt.greeting.startswith(b"220"):
            admitted.append(attempt)
            return True
        attempt.close()
        return False

    wait_until(slot_freed, interval=0.05, what="the closed connection's slot to be free again")
    for c in [*clients, *admitted]:
        c.close()


def test_overlong_command_line(make_daemon):
    d = make_daemon(smtp={"max_line_length": 512})
    raw = RawSMTP(d.host, d.port)
    raw.send(b"EHLO " + b"a" * 2000 + b"\r\n")
    assert raw.read_reply().startswith(b"500 5.5.6")
    assert raw.cmd(b"EHLO ok.example.net").startswith(b"250")
    raw.close()


def test_loop_protection(make_daemon):
    d = make_daemon(smtp={"max_received_headers": 5})
    hops = b"".join(b"Received: from x by y; Mon, 1 Jan 2024 00:00:00 +0000\r\n" for _ in range(5))
    with smtp_client(d, tls=False) as client:
        client.mail("bob@example.net")
        client.rcpt("alice@example.test")
        code, reply = client.data(hops + message())
        assert code == 554 and reply.startswith(b"5.4.6")


def test_forged_authentication_results_removed(make_daemon):
    d = make_daemon()
    forged = b"Authentication-Results: mx.example.test; dkim=pass header.d=bank.example\r\n"
    foreign = b"Authentication-Results: other.example; spf=pass\r\n"
    with smtp_client(d, tls=False) as client:
        client.sendmail("bob@example.net", ["alice@example.test"], forged + foreign + message())
    stored = maildir_files(d.state_dir / "mail/example.test/alice")[0].read_bytes()
    assert b"header.d=bank.example" not in stored
    assert foreign in stored


def test_ipv6_listener(make_daemon):
    if not socket.has_ipv6:
        pytest.skip("no IPv6")
    try:
        with socket.socket(socket.AF_INET6) as s:
            s.bind(("::1", 0))
    except OSError:
        pytest.skip("no IPv6 loopback")
    d = make_daemon(host="::1")
    with smtplib.SMTP("::1", d.port, local_hostname="c.example.net", timeout=10) as client:
        client.sendmail("bob@example.net", ["alice@example.test"], message())
    stored = maildir_files(d.state_dir / "mail/example.test/alice")[0].read_bytes()
    assert b"([IPv6:::1])" in stored


# ---------------------------------------------------------------------------- lifecycle


def test_sigterm_drains_idle_sessions_with_421(make_daemon):
    d = make_daemon()
    idle = RawSMTP(d.host, d.port)
    idle.cmd(b"EHLO c.example.net")
    busy = RawSMTP(d.host, d.port)
    busy.cmd(b"EHLO c.example.net")
    busy.cmd(b"MAIL FROM:<bob@example.net>")
    busy.cmd(b"RCPT TO:<alice@example.test>")
    busy.cmd(b"DATA")
    busy.send(b"Subject: in flight\r\n\r\nstill")
    d.signal(15)
    assert idle.read_reply().startswith(b"421 4.3.2")
    # The transaction in flight may finish and gets its 250, then 421.
    busy.send(b" writing\r\n.\r\n")
    assert busy.read_reply().startswith(b"250 2.0.0")
    assert busy.read_reply().startswith(b"421 4.3.2")
    assert d.proc is not None and d.proc.wait(10) == 0
    assert len(maildir_files(d.state_dir / "mail/example.test/alice")) == 1


def test_sighup_and_file_watch_reload_certificate(make_daemon, ca):
    d = make_daemon(extra={"tls": {"reload_interval": "1s"}})

    def served_serial() -> int:
        raw = RawSMTP(d.host, d.port)
        raw.cmd(b"EHLO c.example.net")
        raw.cmd(b"STARTTLS")
        tls = ca.client_context().wrap_socket(raw.sock, server_hostname="mx.example.test")
        from cryptography import x509

        serial = x509.load_der_x509_certificate(tls.getpeercert(binary_form=True)).serial_number
        tls.close()
        return serial

    first = served_serial()
    cert, key = ca.issue("mx.example.test", stem="renewed")
    Path(d.config["tls"]["cert"]).write_bytes(cert.read_bytes())
    Path(d.config["tls"]["key"]).write_bytes(key.read_bytes())
    # Noticed by the file watch (reload_interval 1s), no restart.
    wait_until(lambda: served_serial() != first, interval=0.2, what="the file watch to load the renewed cert")
    second = served_serial()
    assert second != first
    cert, key = ca.issue("mx.example.test", stem="renewed2")
    Path(d.config["tls"]["cert"]).write_bytes(cert.read_bytes())
    Path(d.config["tls"]["key"]).write_bytes(key.read_bytes())
    d.signal(1)  # SIGHUP
    # The handler logs this line, then reloads the certificate before the loop serves anything
    # else: the next handshake must show the new one (not left to the file watch's next look).
    wait_until(lambda: "SIGHUP: reloading TLS certificates" in d.log_text(), what="the SIGHUP to be handled")
    assert served_serial() not in (first, second)


def test_tls_below_1_2_refused(make_daemon, ca):
    d = make_daemon()
    raw = RawSMTP(d.host, d.port)
    raw.cmd(b"EHLO c.example.net")
    raw.cmd(b"STARTTLS")
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    try:
        ctx.minimum_version = ssl.TLSVersion.TLSv1
        ctx.maximum_version = ssl.TLSVersion.TLSv1_1
        ctx.set_ciphers("ALL:@SECLEVEL=0")
    except (ValueError, ssl.SSLError):
        pytest.skip("this OpenSSL cannot even offer TLS 1.1")
    with pytest.raises((ssl.SSLError, ConnectionError, OSError)):
        ctx.wrap_socket(raw.sock, server_hostname="mx.example.test")
    raw.close()


def test_first_start_prints_dns_records_once(make_daemon):
    d = make_daemon()
    log = d.log_text()
    for needle in ("example.test.", "IN MX", "v=spf1", "default._domainkey.example.test.",
                   "default-ed25519._domainkey.example.test.", "k=ed25519", "_dmarc.example.test.",
                   "_mta-sts.example.test.", "_smtp._tls.example.test.", "PTR"):
        assert needle in log, needle
    keys = sorted(p.name for p in (d.state_dir / "dkim").iterdir())
    assert keys == ["example.test.default-ed25519.dns", "example.test.default-ed25519.key",
                    "example.test.default.dns", "example.test.default.key"]
    assert ((d.state_dir / "dkim/example.test.default.key").stat().st_mode & 0o777) == 0o600
    d.stop()
    d.log_lines.clear()
    d.start()
    assert "v=spf1" not in d.log_text()  # keys exist: no banner on later starts
