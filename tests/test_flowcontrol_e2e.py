"""Every writer follows asyncio's flow control: a client that reads slowly gets every byte.

Before, IMAP's writer waited for a ``resume_writing()`` whenever its transport's buffer was
large, whether or not the transport had paused it: a large FETCH to a slow reader over TLS
stopped for ever after a few MB. SMTP dropped a client whose pipelined replies it did not
read at once; now it stops reading from it instead, until the client catches up.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import socket
import ssl
import threading
import time
from collections.abc import Iterator

import pytest

from mailserver.net.http import HTTPListener, Response
from tests.support.ca import TestCA
from tests.support.daemon import PymaildProcess
from tests.support.imap import PASSWORD, client_ctx, new_account
from tests.test_flood_e2e import flood_daemon

# Many small messages: the server renders a FETCH 500 messages at a time, so each write is
# a few hundred KB, below the TLS transport's own high-water mark (the old writer then
# waited for a resume_writing() that never came).
MESSAGES = 8000
@pytest.fixture(scope="module")
def slowd(ca: TestCA, tmp_path_factory: pytest.TempPathFactory) -> Iterator[PymaildProcess]:
    d = flood_daemon(tmp_path_factory.mktemp("slowd"), ca, stress={})
    yield d
    d.stop()


def slow_read_until(sock: socket.socket, done: re.Pattern[bytes], *, chunk: int = 4096, pause: float = 0.001,
                    limit: float = 60.0) -> bytes:
    """Read in small chunks with short pauses (a phone, a slow link) until ``done`` matches
    the tail; fails (socket timeout) if the server stops sending."""
    data = bytearray()
    deadline = time.monotonic() + limit
    while not done.search(data[-300:]):
        assert time.monotonic() < deadline, f"only {len(data)} bytes in {limit}s"
        try:
            piece = sock.recv(chunk)
        except TimeoutError:
            raise AssertionError(f"the server stopped sending after {len(data)} bytes") from None
        assert piece, f"connection closed after {len(data)} bytes: {bytes(data[-200:])!r}"
        data += piece
        time.sleep(pause)  # the slow reader under test, not a wait for anything
    return bytes(data)


def _fill_maildir(d: PymaildProcess, user: str) -> int:
    """MESSAGES files of 500-1,000 bytes straight into the account's Maildir: about 6 MB."""
    new = _maildir(d, user) / "new"
    total = 0
    for i in range(MESSAGES):
        body = b"y" * 60 + b"\r\n"
        data = (f"From: <a@elsewhere.example>\r\nTo: <{user}>\r\nSubject: small {i}\r\n"
                f"Message-ID: <s{i}@elsewhere.example>\r\n\r\n").encode() + body * (5 + i % 8)
        (new / f"{1700000000 + i}.M{i}P1.flowtest").write_bytes(data)
        total += len(data)
    return total


def _maildir(d: PymaildProcess, user: str):  # type: ignore[no-untyped-def]
    from mailserver.auth.store import AccountStore

    store = AccountStore.in_state_dir(d.state_dir)
    try:
        return store.maildir_path(user)
    finally:
        store.close()


@pytest.mark.parametrize("kind", ["imaps", "imap"])
def test_large_fetch_reaches_a_slow_reader(slowd: PymaildProcess, ca: TestCA, kind: str) -> None:
    user = new_account(slowd)
    total = _fill_maildir(slowd, user)
    ctx = client_ctx(ca)
    port = slowd.ports[kind]  # type: ignore[attr-defined]
    sock = socket.create_connection(("127.0.0.1", port), timeout=10)
    if kind == "imaps":
        sock = ctx.wrap_socket(sock)
    else:  # 143: STARTTLS (a log-in on plain 143 is refused: LOGINDISABLED)
        sock.recv(4096)
        sock.sendall(b"s STARTTLS\r\n")
        assert slow_read_until(sock, re.compile(rb"s OK[^\r]*\r\n")).find(b"s OK") >= 0
        sock = ctx.wrap_socket(sock)
        sock.sendall(b"c NOOP\r\n")
    sock.settimeout(10)
    sock.sendall(f"a LOGIN {user} {PASSWORD}\r\nb SELECT INBOX\r\nf UID FETCH 1:* (BODY.PEEK[])\r\n".encode())
    data = slow_read_until(sock, re.compile(rb"\r\nf (OK|NO|BAD)[^\r]*\r\n"))
    sock.close()
    assert re.search(rb"\r\nf OK", data), data[-300:]
    literals = [int(n) for n in re.findall(rb"BODY\[\] \{(\d+)\}\r\n", data)]
    assert len(literals) == MESSAGES and sum(literals) == total


def _pipeline_without_reading(sock: socket.socket, count: int) -> tuple[bytes, float]:
    """Send ``count`` EHLOs and a QUIT in one go without reading; read the replies only after a
    pause, slowly. The replies are far more than any buffer between us and the server."""
    burst = b"EHLO client.example\r\n" * count + b"QUIT\r\n"
    sender = threading.Thread(target=sock.sendall, args=(burst,), daemon=True)
    sender.start()
    # A real pause: the client that reads late, the behaviour under test. The server has
    # long filled every buffer by then and must stop reading from us, not drop us.
    time.sleep(1.0)
    started = time.monotonic()
    data = slow_read_until(sock, re.compile(rb"221 [^\r]*\r\n$"), chunk=65536, pause=0.0005, limit=120)
    sender.join(10)
    return data, time.monotonic() - started


@pytest.mark.parametrize("kind", ["smtp", "submissions"])
def test_pipelined_replies_reach_a_client_that_reads_late(slowd: PymaildProcess, ca: TestCA,
                                                          kind: str) -> None:
    count = 100_000  # 100,000 EHLO replies: about 15 MB, input about 2 MB
    sock = socket.socket()
    sock.settimeout(20)
    # A small receive window, as on a slow link: the kernel cannot soak up the replies.
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 32768)
    sock.connect(("127.0.0.1", slowd.ports[kind]))  # type: ignore[attr-defined]
    if kind == "submissions":
        sock = client_ctx(ca).wrap_socket(sock)
    assert sock.recv(4096).startswith(b"220 ")
    data, _took = _pipeline_without_reading(sock, count)
    sock.close()
    assert data.count(b"250 SMTPUTF8\r\n") + data.count(b"\r\n250 ") >= count
    assert data.count(b"-PIPELINING\r\n") == count, data[-300:]


# ---------------------------------------------------------------------------- HTTPS


class _TinyBuffers(HTTPListener):
    """The real HTTP listener, with a transport that pauses its writer above 1 KiB."""

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.transport.set_write_buffer_limits(high=1024, low=256)
        await super()._serve(reader, writer)


@pytest.mark.parametrize("tls", [True, False])
def test_https_writer_waits_for_a_slow_reader(ca: TestCA, tls: bool) -> None:
    body = bytes(range(256)) * (3 * 1024 * 1024 // 256)  # 3 MiB: far above the 1 KiB limit
    cert, key = ca.issue("localhost", stem="web-slow")

    def context() -> ssl.SSLContext:
        ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        ctx.load_cert_chain(str(cert), str(key))
        return ctx

    listener = _TinyBuffers("test", lambda request: Response(200, body, content_type="application/x-test"),
                            tls_context=context if tls else None, timeout=60)
    loop = asyncio.new_event_loop()
    ready = threading.Event()
    port: list[int] = []

    def serve() -> None:
        async def main() -> None:
            await listener.listen("127.0.0.1", 0)
            port.append(listener.sockets[0][1])
            ready.set()
            await asyncio.Event().wait()

        with contextlib.suppress(asyncio.CancelledError, RuntimeError):
            loop.run_until_complete(main())

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    assert ready.wait(10)
    try:
        sock = socket.create_connection(("127.0.0.1", port[0]), timeout=10)
        if tls:
            sock = ca.client_context().wrap_socket(sock, server_hostname="localhost")
        sock.sendall(b"GET /big HTTP/1.1\r\nHost: localhost\r\n\r\n")
        data = bytearray()
        while piece := sock.recv(16384):
            data += piece
            time.sleep(0.0002)  # the slow reader under test: the writer must wait for it
        sock.close()
        head, _, got = bytes(data).partition(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 200") and got == body
    finally:
        loop.call_soon_threadsafe(lambda: [t.cancel() for t in asyncio.all_tasks(loop)])
        thread.join(10)
