"""IMAP test helpers: a pymaild with IMAP listeners, and a raw line-level client."""

from __future__ import annotations

import contextlib
import imaplib
import itertools
import re
import socket
import ssl
import time
from pathlib import Path
from typing import Any

from .ca import TestCA
from .daemon import PymaildProcess, free_port

PASSWORD = "password-123456"
_counter = itertools.count(1)


def imap_daemon(directory: Path, ca: TestCA, *, imap: dict[str, Any] | None = None,
                submission: dict[str, Any] | None = None, quota: dict[str, Any] | None = None,
                start: bool = True) -> PymaildProcess:
    """A pymaild with MX, submission, IMAP (STARTTLS) and IMAPS on free loopback ports."""
    cert, key = ca.issue("mx.example.test", "localhost", stem=f"imapd{next(_counter)}")
    ports = {k: free_port() for k in ("smtp", "submission", "imap", "imaps")}
    config: dict[str, Any] = {
        "hostname": "mx.example.test",
        "primary_domain": "example.test",
        "local_domains": ["example.test"],
        "state_dir": str(directory / "state"),
        "tls": {"cert": str(cert), "key": str(key)},
        "listen": {k: [f"127.0.0.1:{p}"] for k, p in ports.items()},
        "checks": {"spf": False, "dkim": False, "dmarc": False},
        "dns": {"nameservers": ["127.0.0.1:9"], "timeout": "3s"},
        "imap": imap or {},
        "quota": quota or {},
        "submission": submission or {"max_auth_failures_per_ip": 1000, "max_auth_failures_per_account": 1000},
    }
    d = PymaildProcess(directory, config)
    d.host, d.port = "127.0.0.1", ports["smtp"]
    d.imap_port, d.imaps_port, d.sub_port = ports["imap"], ports["imaps"], ports["submission"]  # type: ignore[attr-defined]
    if start:
        d.start()
    return d


def client_ctx(ca: TestCA) -> ssl.SSLContext:
    ctx = ca.client_context()
    ctx.check_hostname = False  # we connect to 127.0.0.1; the chain is still verified
    return ctx


def login(d: PymaildProcess, ca: TestCA, user: str, password: str = PASSWORD) -> imaplib.IMAP4_SSL:
    m = imaplib.IMAP4_SSL("127.0.0.1", d.imaps_port, ssl_context=client_ctx(ca), timeout=15)  # type: ignore[attr-defined]
    m.login(user, password)
    return m


def new_account(d: PymaildProcess, prefix: str = "user") -> str:
    address = f"{prefix}{next(_counter)}@example.test"
    d.add_account(address)
    return address


def smtp_deliver(d: PymaildProcess, rcpt: str, subject: str = "hello", body: str = "body\r\n") -> None:
    import smtplib

    msg = (f"From: sender@elsewhere.example\r\nTo: {rcpt}\r\nSubject: {subject}\r\n"
           f"Message-ID: <{time.time_ns()}@elsewhere.example>\r\nDate: Mon, 23 Nov 2026 10:00:00 +0000\r\n"
           f"\r\n{body}").encode()
    with smtplib.SMTP(d.host, d.port, timeout=10) as s:
        s.sendmail("sender@elsewhere.example", [rcpt], msg)


class RawIMAP:
    """Line-level IMAP client for byte-exact tests."""

    def __init__(self, port: int, *, tls: ssl.SSLContext | None = None, host: str = "127.0.0.1") -> None:
        sock = socket.create_connection((host, port), timeout=10)
        self.sock: socket.socket = tls.wrap_socket(sock) if tls else sock
        self.buf = b""
        self.greeting = self.readline()

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def readline(self) -> bytes:
        while b"\r\n" not in self.buf:
            chunk = self.sock.recv(65536)
            if not chunk:
                line, self.buf = self.buf, b""
                return line
            self.buf += chunk
        line, self.buf = self.buf.split(b"\r\n", 1)
        return line + b"\r\n"

    def read_until_tagged(self, tag: bytes) -> list[bytes]:
        """Every line up to and including the tagged completion of ``tag`` (literals inline)."""
        lines = []
        while True:
            line = self.readline()
            if not line:
                raise ConnectionError("closed; got: " + repr(lines))
            m = re.search(rb"\{(\d+)\}\r\n$", line)
            if m:
                n = int(m.group(1))
                while len(self.buf) < n:
                    chunk = self.sock.recv(65536)
                    if not chunk:
                        break
                    self.buf += chunk
                line += self.buf[:n]
                self.buf = self.buf[n:]
                line += self.readline()
            lines.append(line)
            if line.startswith(tag + b" "):
                return lines

    def cmd(self, tag: bytes, text: bytes) -> list[bytes]:
        self.send(tag + b" " + text + b"\r\n")
        return self.read_until_tagged(tag)

    def starttls(self, ctx: ssl.SSLContext) -> None:
        lines = self.cmd(b"S1", b"STARTTLS")
        assert lines[-1].startswith(b"S1 OK"), lines
        self.sock = ctx.wrap_socket(self.sock)
        self.buf = b""

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self.sock.close()
