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
from tests.support.wait import wait_until

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
        self.received = list(self.first)  # everything read so far, per connection

    def goodbyes(self) -> int:
        """How many flood connections have been told, so far, that they are closed to make
        room (reads what has arrived without waiting for more; poll it with wait_until)."""
        for i, s in enumerate(self.socks):
            s.settimeout(0.001)
            with contextlib.suppress(OSError):
                while piece := s.recv(4096):
                    self.received[i] += piece
        return sum(b"closing idle session" in data for data in self.received)

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
        # Evicted with a word, not a silent close.
        wait_until(lambda: flood.goodbyes() > 0, interval=0.05, what="an evicted flood connection's goodbye")
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
        real_transaction(floodd, "imaps", ctx, new_account(floodd))  # the flood gives way to it
        sock.sendall(b"DONE\r\n")
        while not (line := f.readline()).startswith(b"c "):
            assert line, "the IDLE session was closed"
        assert line.startswith(b"c OK"), line
    finally:
        flood.close()
        more.close()
        sock.close()


# ---------------------------------------------------------------------------- stress timeouts, bad clients


@pytest.fixture(scope="module")
def stressd(ca: TestCA, tmp_path_factory: pytest.TempPathFactory) -> Iterator[PymaildProcess]:
    d = flood_daemon(tmp_path_factory.mktemp("stressd"), ca, stress={"threshold": 0.5, "idle_timeout": "1s"},
                     smtp={"max_connections": 40, "greeting_delay": "300ms", "data_deadline": "4s",
                           "data_min_rate": 1000, "data_rate_grace": "1s"},
                     imap={"max_connections": 40})
    yield d
    d.stop()


def _closed_within(sock: socket.socket, seconds: float) -> bytes:
    """Everything the server sends until it closes, failing if that takes over ``seconds``."""
    sock.settimeout(seconds)
    data = b""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        try:
            piece = sock.recv(4096)
        except TimeoutError:
            break
        if not piece:
            return data
        data += piece
    raise AssertionError(f"still open after {seconds}s; got {data!r}")


@pytest.mark.parametrize("kind", ["smtp", "imaps"])
def test_under_stress_silent_connections_get_a_short_timeout(stressd: PymaildProcess, ca: TestCA,
                                                             kind: str) -> None:
    port = stressd.ports[kind]  # type: ignore[attr-defined]
    tls = client_ctx(ca) if kind == "imaps" else None
    busy = None
    if kind == "smtp":  # a connection inside a transaction keeps the normal timeout
        busy = socket.create_connection(("127.0.0.1", port), timeout=10, source_address=("127.0.5.1", 0))
        bf = busy.makefile("rb")
        assert bf.readline().startswith(b"220 ")
        busy.sendall(b"EHLO busy.example\r\n")
        while not bf.readline().startswith(b"250 "):
            pass
        busy.sendall(b"MAIL FROM:<a@elsewhere.example>\r\n")
        assert bf.readline().startswith(b"250 ")
    flood = Flood(port, tls, 2, 15)  # 30 of 40: stress from 20 on
    try:
        started = time.monotonic()
        for s in flood.socks:
            goodbye = _closed_within(s, 5.0)  # not the 5-minute command timeout
            assert b"421 4.4.2" in goodbye or b"* BYE" in goodbye, goodbye
        assert time.monotonic() - started < 5.0
        if busy is not None:
            busy.sendall(b"RSET\r\n")
            assert bf.readline().startswith(b"250 "), "a connection in a transaction was cut off"
    finally:
        flood.close()
        if busy is not None:
            busy.close()


def test_smtp_client_talking_before_the_greeting_is_cut_off(stressd: PymaildProcess) -> None:
    sock = socket.create_connection(("127.0.0.1", stressd.port), timeout=10)
    sock.sendall(b"EHLO spambot.example\r\n")  # no wait for the 220
    reply = _closed_within(sock, 3.0)
    sock.close()
    assert reply.startswith(b"554 5.5.1 ") and b"220" not in reply, reply


@pytest.mark.parametrize("first", [b"GET / HTTP/1.1\r\nHost: mx.example.test\r\n\r\n",
                                   b"CONNECT 10.0.0.1:25 HTTP/1.1\r\n\r\n", b"USER alice\r\n"])
def test_smtp_http_or_pop3_first_line_is_cut_off(stressd: PymaildProcess, first: bytes) -> None:
    sock = socket.create_connection(("127.0.0.1", stressd.port), timeout=10)
    f = sock.makefile("rb")
    assert f.readline().startswith(b"220 ")
    sock.sendall(first)
    reply = _closed_within(sock, 2.0)
    sock.close()
    assert reply.startswith(b"554 5.5.1 ") and reply.count(b"\r\n") == 1, reply


@pytest.mark.parametrize("kind", ["imap", "imaps"])
def test_imap_http_first_line_is_cut_off(stressd: PymaildProcess, ca: TestCA, kind: str) -> None:
    sock = socket.create_connection(("127.0.0.1", stressd.ports[kind]), timeout=10)  # type: ignore[attr-defined]
    if kind == "imaps":
        sock = client_ctx(ca).wrap_socket(sock)
    f = sock.makefile("rb")
    assert f.readline().startswith(b"* OK")
    sock.sendall(b"GET /favicon.ico HTTP/1.1\r\nHost: mx.example.test\r\n\r\n")
    reply = _closed_within(sock, 2.0)
    sock.close()
    assert reply.startswith(b"* BYE") and reply.count(b"\r\n") == 1, reply


def _start_data(port: int) -> tuple[socket.socket, Any]:
    sock = socket.create_connection(("127.0.0.1", port), timeout=10)
    f = sock.makefile("rb")
    assert f.readline().startswith(b"220 ")
    sock.sendall(b"EHLO slow.example\r\n")
    while not f.readline().startswith(b"250 "):
        pass
    for command in (b"MAIL FROM:<a@elsewhere.example>", b"RCPT TO:<alice@example.test>", b"DATA"):
        sock.sendall(command + b"\r\n")
        assert f.readline()[:1] in (b"2", b"3")
    return sock, f


def _drip(sock: socket.socket, piece: bytes, every: float, limit: float) -> tuple[bytes, float]:
    """Send ``piece`` every ``every`` seconds until the server answers; (answer, seconds).
    The pauses are the behaviour under test: a client dripping its message."""
    started = time.monotonic()
    sock.setblocking(False)
    while time.monotonic() - started < limit:
        try:
            answer = sock.recv(4096)
            return answer, time.monotonic() - started
        except BlockingIOError:
            pass
        with contextlib.suppress(BlockingIOError, BrokenPipeError, ConnectionResetError):
            sock.send(piece)
        time.sleep(every)
    raise AssertionError(f"DATA still open after {limit}s")


def test_data_drip_is_cut_off_by_the_minimum_rate(stressd: PymaildProcess) -> None:
    sock, _f = _start_data(stressd.port)
    answer, took = _drip(sock, b"x", 0.2, 15.0)  # 5 bytes/s against a minimum of 1000 after 1s
    sock.close()
    assert answer.startswith(b"421 4.4.2 ") and b"too slow" in answer, answer
    assert took < 4.0


def test_data_total_deadline(stressd: PymaildProcess) -> None:
    sock, _f = _start_data(stressd.port)
    answer, took = _drip(sock, b"y" * 78 + b"\r\n", 0.01, 15.0)  # 8 KB/s: fast enough, but endless
    sock.close()
    assert answer.startswith(b"421 4.4.2 ") and b"too long" in answer, answer
    assert 3.0 < took < 8.0
