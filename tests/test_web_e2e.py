"""The daemon's HTTPS listener (MTA-STS policy, autoconfig) and metrics, end to end."""

from __future__ import annotations

import smtplib
import socket
import urllib.request
import xml.etree.ElementTree as ET

from mailserver.config import load_config
from mailserver.dns.records import mta_sts_policy
from tests.support.daemon import free_port
from tests.test_mx_e2e import message


def test_https_policy_autoconfig_and_metrics(make_daemon, ca):
    cert, key = ca.issue("mx.example.test", "mta-sts.example.test", "autoconfig.example.test",
                         stem="web")
    https, metrics = free_port(), free_port()
    d = make_daemon(extra={
        "tls": {"cert": str(cert), "key": str(key)},
        "listen": {"https": [f"127.0.0.1:{https}"], "metrics": [f"127.0.0.1:{metrics}"]},
        "mta_sts": {"mode": "enforce", "max_age": "1d"},
    })
    assert "does not cover" not in d.log_text()

    def get(host: str, path: str) -> tuple[int, bytes]:
        """GET over TLS to the loopback port, with SNI and certificate check for ``host``."""
        raw = socket.create_connection(("127.0.0.1", https), timeout=10)
        with ca.client_context().wrap_socket(raw, server_hostname=host) as tls:
            tls.sendall(f"GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n".encode())
            data = b""
            while chunk := tls.recv(65536):
                data += chunk
        head, _, body = data.partition(b"\r\n\r\n")
        return int(head.split()[1]), body

    status, body = get("mta-sts.example.test", "/.well-known/mta-sts.txt")
    assert status == 200
    assert body.decode() == mta_sts_policy(load_config(d.config_path))
    assert "mode: enforce" in body.decode() and "max_age: 86400" in body.decode()
    status, body = get("autoconfig.example.test", "/mail/config-v1.1.xml?emailaddress=alice@example.test")
    assert status == 200
    root = ET.fromstring(body)
    assert root.find("emailProvider/outgoingServer/hostname").text == "mx.example.test"  # type: ignore[union-attr]
    assert get("mta-sts.example.test", "/../../etc/passwd")[0] == 404

    with smtplib.SMTP(d.host, d.port, local_hostname="c.example.net", timeout=10) as client:
        client.sendmail("bob@example.net", ["alice@example.test"], message())
    text = urllib.request.urlopen(f"http://127.0.0.1:{metrics}/metrics", timeout=10).read().decode()
    assert 'pymaild_messages_total{direction="in",result="delivered"} 1' in text
    assert 'pymaild_connections_total{listener="smtp"} 1' in text
    assert "pymaild_queue_messages 0" in text


def test_thunderbird_autoconfig_gives_a_working_account(make_daemon, ca):
    """What Thunderbird does with the autoconfig document: try each server it lists, with
    the socket type and user name it says, and log in. Every entry must work."""
    import imaplib

    cert, key = ca.issue("mx.example.test", "autoconfig.example.test", stem="autoconf")
    ports = {k: free_port() for k in ("https", "imap", "imaps", "submission", "submissions")}
    make_daemon(extra={
        "tls": {"cert": str(cert), "key": str(key)},
        "listen": {k: [f"127.0.0.1:{p}"] for k, p in ports.items()},
    })
    raw = socket.create_connection(("127.0.0.1", ports["https"]), timeout=10)
    with ca.client_context().wrap_socket(raw, server_hostname="autoconfig.example.test") as tls:
        tls.sendall(b"GET /mail/config-v1.1.xml?emailaddress=alice%40example.test HTTP/1.1\r\n"
                    b"Host: autoconfig.example.test\r\nConnection: close\r\n\r\n")
        data = b""
        while chunk := tls.recv(65536):
            data += chunk
    root = ET.fromstring(data.partition(b"\r\n\r\n")[2])
    servers = root.findall("emailProvider/incomingServer") + root.findall("emailProvider/outgoingServer")
    assert [s.get("type") for s in servers] == ["imap", "imap", "smtp", "smtp"]
    ctx = ca.client_context()
    ctx.check_hostname = False  # we dial 127.0.0.1 for mx.example.test; the chain is verified
    for server in servers:
        host = server.findtext("hostname")
        port = int(server.findtext("port") or 0)
        socket_type = server.findtext("socketType")
        user = (server.findtext("username") or "").replace("%EMAILADDRESS%", "alice@example.test")
        assert host == "mx.example.test" and server.findtext("authentication") == "password-cleartext"
        if server.get("type") == "imap":
            if socket_type == "SSL":
                m: imaplib.IMAP4 = imaplib.IMAP4_SSL("127.0.0.1", port, ssl_context=ctx, timeout=10)
            else:
                assert socket_type == "STARTTLS"
                m = imaplib.IMAP4("127.0.0.1", port, timeout=10)
                m.starttls(ssl_context=ctx)
            assert m.login(user, "password-123456")[0] == "OK"
            assert m.select("INBOX")[0] == "OK"
            m.logout()
        else:
            if socket_type == "SSL":
                s: smtplib.SMTP = smtplib.SMTP_SSL("127.0.0.1", port, context=ctx, timeout=10)
            else:
                s = smtplib.SMTP("127.0.0.1", port, timeout=10)
                s.starttls(context=ctx)
            s.login(user, "password-123456")
            s.quit()
