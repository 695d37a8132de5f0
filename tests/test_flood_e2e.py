"""Connection floods and slow clients, end to end: a real pymaild, real sockets, real TLS.

A flood of connections that say nothing after the greeting fills the connection table of
one service; a real client from an address with no other connection must still get its
transaction through at once (the idlest flood connection is evicted for it), on every
port: 25, 587 (STARTTLS), 465, 143 (STARTTLS) and 993. Under stress the flood's silence
is cut short; pregreeting and HTTP clients are cut off at once; a DATA drip is cut off.
"""

from __future__ import annotations

import contextlib
import imaplib
import smtplib
import socket
import ssl
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.support.ca import TestCA
from tests.support.daemon import PymaildProcess, free_port
from tests.support.imap import PASSWORD, client_ctx, new_account

FRESH = "127.0.0.200"  # the real client's address: no other connection from it
LIMIT = 100  # max_connections of each service in these tests (CI-friendly)
PER_IP = 20


def flood_daemon(directory: Path, ca: TestCA, *, stress: dict[str, Any], smtp: dict[str, Any] | None = None,
                 imap: dict[str, Any] | None = None) -> PymaildProcess:
    cert, key = ca.issue("mx.example.test", "localhost", stem=f"flood-{directory.name}")
    kinds = ("smtp", "submission", "submissions", "imap", "imaps")
    ports = {k: free_port() for k in kinds}
    config: dict[str, Any] = {
        "hostname": "mx.example.test",
        "primary_domain": "example.test",
        "local_domains": ["example.test"],
        "state_dir": str(directory / "state"),
        "tls": {"cert": str(cert), "key": str(key)},
        "listen": {k: [f"127.0.0.1:{p}"] for k, p in ports.items()},
        "checks": {"spf": False, "dkim": False, "dmarc": False},
        "dns": {"nameservers": ["127.0.0.1:9"], "timeout": "3s"},
        "smtp": {"max_connections": LIMIT, "max_connections_per_ip": PER_IP, **(smtp or {})},
        "imap": {"max_connections": LIMIT, "max_connections_per_ip": PER_IP, **(imap or {})},
        "submission": {"max_auth_failures_per_ip": 1000, "max_auth_failures_per_account": 1000},
        "stress": stress,
    }
    d = PymaildProcess(directory, config)
    d.host, d.port = "127.0.0.1", ports["smtp"]
    d.ports = ports  # type: ignore[attr-defined]
    d.add_account("alice@example.test")
    d.start()
    return d


@pytest.fixture(scope="module")
def floodd(ca: TestCA, tmp_path_factory: pytest.TempPathFactory) -> Iterator[PymaildProcess]:
    # A long stress timeout: the table stays full, so only eviction lets the real client in.
    d = flood_daemon(tmp_path_factory.mktemp("floodd"), ca, stress={"threshold": 0.8, "idle_timeout": "60s"})
    yield d
    d.stop()


class Flood:
    """Connections from several loopback addresses that read the greeting, then say nothing."""

    def __init__(self, port: int, tls: ssl.SSLContext | None, addresses: int, per_address: int) -> None:
        self.socks: list[socket.socket] = []
        for a in range(addresses):
            for _ in range(per_address):
                s = socket.create_connection(("127.0.0.1", port), timeout=10,
                                             source_address=(f"127.0.3.{a + 1}", 0))
                self.socks.append(tls.wrap_socket(s) if tls else s)
        # Every connection has been through admission once its first bytes arrive.
        self.first = [s.recv(4096) for s in self.socks]

    def close(self) -> None:
        for s in self.socks:
            with contextlib.suppress(OSError):
                s.close()


class _FromFresh:
    def _create_socket(self, timeout: float | None) -> socket.socket:  # imaplib's hook
        return socket.create_connection((self.host, self.port), timeout,  # type: ignore[attr-defined]
                                        source_address=(FRESH, 0))


class FreshIMAP(_FromFresh, imaplib.IMAP4):
    pass


class FreshIMAPS(imaplib.IMAP4_SSL):
    def _create_socket(self, timeout: float | None) -> socket.socket:
        sock = socket.create_connection((self.host, self.port), timeout, source_address=(FRESH, 0))
        return self.ssl_context.wrap_socket(sock, server_hostname=self.host)


def message(sender: str) -> bytes:
    return (f"From: <{sender}>\r\nTo: <alice@example.test>\r\nSubject: flood\r\n"
            f"Message-ID: <{time.time_ns()}@elsewhere.example>\r\n\r\nstill here\r\n").encode()


def real_transaction(d: PymaildProcess, kind: str, ctx: ssl.SSLContext, user: str) -> None:
    port = d.ports[kind]  # type: ignore[attr-defined]
    if kind == "smtp":
        with smtplib.SMTP("127.0.0.1", port, timeout=10, source_address=(FRESH, 0)) as s:
            s.sendmail("a@elsewhere.example", ["alice@example.test"], message("a@elsewhere.example"))
    elif kind == "submission":
        with smtplib.SMTP("127.0.0.1", port, timeout=10, source_address=(FRESH, 0)) as s:
            s.starttls(context=ctx)
            s.login(user, PASSWORD)
            s.sendmail(user, ["alice@example.test"], message(user))
    elif kind == "submissions":
        with smtplib.SMTP_SSL("127.0.0.1", port, timeout=10, source_address=(FRESH, 0), context=ctx) as s:
            s.login(user, PASSWORD)
            s.sendmail(user, ["alice@example.test"], message(user))
    else:
        if kind == "imap":
            m: imaplib.IMAP4 = FreshIMAP("127.0.0.1", port, timeout=10)
            m.starttls(ctx)
        else:
            m = FreshIMAPS("127.0.0.1", port, ssl_context=ctx, timeout=10)
        assert m.login(user, PASSWORD)[0] == "OK"
        assert m.select("INBOX")[0] == "OK"
        assert m.noop()[0] == "OK"
        m.logout()


@pytest.mark.parametrize("kind", ["smtp", "submission", "submissions", "imap", "imaps"])
def test_real_client_gets_through_a_full_table_at_once(floodd: PymaildProcess, ca: TestCA, kind: str) -> None:
    ctx = client_ctx(ca)
    user = new_account(floodd)
    tls = ctx if kind in ("submissions", "imaps") else None
    # 6 addresses x 20 for a table of 100.
    flood = Flood(floodd.ports[kind], tls, 6, PER_IP)  # type: ignore[attr-defined]
    try:
        refused = [f for f in flood.first if f.startswith((b"421", b"* BYE"))]
        # The table is full; the 6th address took slots from the 5 others until it held
        # as many as they do, then was refused like them.
        assert len(flood.socks) - len(refused) >= LIMIT and refused
        started = time.monotonic()
        real_transaction(floodd, kind, ctx, user)
        elapsed = time.monotonic() - started
        print(f"{kind}: real transaction during the flood took {elapsed:.3f}s")
        assert elapsed < 1.0, f"{kind}: the real transaction took {elapsed:.2f}s"
        assert "evict session=" in floodd.wait_log("evict session=")
    finally:
        flood.close()


def test_logged_in_idle_session_survives_a_flood(floodd: PymaildProcess, ca: TestCA) -> None:
    ctx = client_ctx(ca)
    user = new_account(floodd)
    port = floodd.ports["imaps"]  # type: ignore[attr-defined]
    sock = ctx.wrap_socket(socket.create_connection(("127.0.0.1", port), timeout=10,
                                                    source_address=("127.0.4.1", 0)))
    f = sock.makefile("rb")
    assert f.readline().startswith(b"* OK")
    sock.sendall(f"a LOGIN {user} {PASSWORD}\r\nb SELECT INBOX\r\nc IDLE\r\n".encode())
    while not (line := f.readline()).startswith(b"+ "):
        assert line, "connection closed before IDLE"
    # 120 flood connections from 6 addresses, plus a burst of 100 more from 10 others:
    # the table stays full and evicts a lot, but never the logged-in session.
    flood = Flood(port, ctx, 6, PER_IP)
    more = Flood(port, ctx, 10, 10)
    try:
        sock.sendall(b"DONE\r\n")
        while not (line := f.readline()).startswith(b"c "):
            assert line, "the IDLE session was closed"
        assert line.startswith(b"c OK"), line
    finally:
        flood.close()
        more.close()
        sock.close()
