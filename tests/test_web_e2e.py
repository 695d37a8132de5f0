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
