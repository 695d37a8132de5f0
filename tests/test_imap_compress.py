"""COMPRESS=DEFLATE (RFC 4978) through a real pymaild over TLS, with a small client of
our own (imaplib has no COMPRESS): every byte of a large message through both streams
to a slow reader, pipelined input after the command, COMPRESSIONACTIVE, the states, a
decompression bomb that must not grow the daemon, and input that is not DEFLATE."""

from __future__ import annotations

import base64
import os
import re
import socket
import time
import zlib
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.ca import TestCA
from tests.support.daemon import PymaildProcess
from tests.support.imap import PASSWORD, client_ctx, imap_daemon, new_account


class DeflateClient:
    """IMAP over TLS; after :meth:`compress` both directions are raw DEFLATE."""

    def __init__(self, d: PymaildProcess, ca: TestCA) -> None:
        port = d.imaps_port  # type: ignore[attr-defined]  # set by imap_daemon
        sock = socket.create_connection(("127.0.0.1", port), timeout=20)
        self.sock = client_ctx(ca).wrap_socket(sock)
        self.buf = b""
        self.c: zlib._Compress | None = None
        self.d: zlib._Decompress | None = None
        self.received_compressed = 0
        self.greeting = self.readline()

    def packet(self, data: bytes) -> bytes:
        """What goes on the wire for ``data`` (compressed once COMPRESS is on)."""
        if self.c is None:
            return data
        return self.c.compress(data) + self.c.flush(zlib.Z_SYNC_FLUSH)

    def send(self, data: bytes) -> None:
        self.sock.sendall(self.packet(data))

    def _fill(self, size: int = 65536, pause: float = 0.0) -> None:
        piece = self.sock.recv(size)
        if not piece:
            raise ConnectionError(f"closed; buffered {self.buf[-200:]!r}")
        if self.d is not None:
            self.received_compressed += len(piece)
            piece = self.d.decompress(piece)
        self.buf += piece
        if pause:
            time.sleep(pause)  # the slow reader under test, not a wait for anything

    def readline(self, size: int = 65536, pause: float = 0.0) -> bytes:
        while b"\r\n" not in self.buf:
            self._fill(size, pause)
        line, self.buf = self.buf.split(b"\r\n", 1)
        return line + b"\r\n"

    def read_until_tagged(self, tag: bytes, size: int = 65536, pause: float = 0.0) -> list[bytes]:
        lines = []
        while True:
            line = self.readline(size, pause)
            m = re.search(rb"\{(\d+)\}\r\n$", line)
            if m:
                n = int(m.group(1))
                while len(self.buf) < n:
                    self._fill(size, pause)
                line += self.buf[:n]
                self.buf = self.buf[n:]
                line += self.readline(size, pause)
            lines.append(line)
            if line.startswith(tag + b" "):
                return lines

    def cmd(self, tag: bytes, text: bytes, size: int = 65536, pause: float = 0.0) -> list[bytes]:
        self.send(tag + b" " + text + b"\r\n")
        return self.read_until_tagged(tag, size, pause)

    def compress(self, tag: bytes = b"z") -> bytes:
        self.sock.sendall(tag + b" COMPRESS DEFLATE\r\n")
        ok = self.readline()  # the tagged OK comes uncompressed
        if ok.startswith(tag + b" OK"):
            assert not self.buf
            self.c = zlib.compressobj(6, zlib.DEFLATED, -15)
            self.d = zlib.decompressobj(-15)
        return ok

    def close(self) -> None:
        self.sock.close()


@pytest.fixture(scope="module")
def imapd(ca: TestCA, tmp_path_factory: pytest.TempPathFactory) -> Iterator[PymaildProcess]:
    d = imap_daemon(tmp_path_factory.mktemp("compressd"), ca)
    yield d
    d.stop()


def _login(d: PymaildProcess, ca: TestCA) -> tuple[DeflateClient, str]:
    user = new_account(d)
    client = DeflateClient(d, ca)
    ok = client.cmd(b"l", f"LOGIN {user} {PASSWORD}".encode())[-1]
    assert ok.startswith(b"l OK"), ok
    return client, user


def _peak_rss(d: PymaildProcess) -> int:
    """The daemon's peak resident memory so far (VmHWM): a spike freed again still shows."""
    assert d.proc is not None
    for line in Path(f"/proc/{d.proc.pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no VmHWM")


def test_capability_only_after_login(imapd: PymaildProcess, ca: TestCA) -> None:
    client = DeflateClient(imapd, ca)
    assert b"COMPRESS" not in client.greeting
    last = client.cmd(b"a", b"COMPRESS DEFLATE")[-1]
    assert last.startswith(b"a BAD"), last  # not before authentication (RFC 4978 3)
    user = new_account(imapd)
    ok = client.cmd(b"l", f"LOGIN {user} {PASSWORD}".encode())[-1]
    assert b" COMPRESS=DEFLATE " in ok
    client.close()


def test_large_message_both_ways_to_a_slow_reader(imapd: PymaildProcess, ca: TestCA) -> None:
    client, _user = _login(imapd, ca)
    assert client.compress() == b"z OK DEFLATE active\r\n"
    # ~6 MB: base64 of random octets (compresses to ~3/4) and text (to almost nothing).
    body = base64.encodebytes(os.urandom(3_000_000)).replace(b"\n", b"\r\n")
    body += b"plain text line\r\n" * 100_000
    message = b"Subject: big\r\nContent-Type: text/plain\r\n\r\n" + body
    client.send(b"a APPEND INBOX {%d+}\r\n" % len(message) + message + b"\r\n")
    assert client.read_until_tagged(b"a")[-1].startswith(b"a OK")
    assert client.cmd(b"s", b"SELECT INBOX")[-1].startswith(b"s OK")
    client.received_compressed = 0
    lines = client.cmd(b"f", b"FETCH 1 BODY.PEEK[]", size=4096, pause=0.0005)
    assert lines[-1].startswith(b"f OK"), lines[-1]
    m = re.match(rb"\* 1 FETCH \(BODY\[\] \{(\d+)\}\r\n", lines[0])
    assert m and int(m.group(1)) == len(message)
    assert lines[0][m.end():m.end() + len(message)] == message
    assert client.received_compressed < 0.85 * len(message)  # it was compressed
    # Small responses after the large one: each arrives whole (sync flush).
    assert client.cmd(b"n", b"NOOP")[-1] == b"n OK NOOP completed\r\n"
    client.close()


def test_many_small_responses_are_flushed(imapd: PymaildProcess, ca: TestCA) -> None:
    client, _user = _login(imapd, ca)
    client.compress()
    for i in range(30):
        tag = b"t%d" % i
        assert client.cmd(tag, b"NOOP")[-1].startswith(tag + b" OK")
    # IDLE's continuation, and the answer to DONE, each reach the client on their own.
    client.send(b"i IDLE\r\n")
    assert client.readline().startswith(b"+ ")
    client.send(b"DONE\r\n")
    assert client.read_until_tagged(b"i")[-1].startswith(b"i OK")
    client.close()


def test_compress_twice_is_compressionactive(imapd: PymaildProcess, ca: TestCA) -> None:
    client, _user = _login(imapd, ca)
    client.compress()
    last = client.cmd(b"b", b"COMPRESS DEFLATE")[-1]  # asked and answered compressed
    assert last.startswith(b"b NO [COMPRESSIONACTIVE]"), last
    assert client.cmd(b"c", b"LIST \"\" INBOX")[-1].startswith(b"c OK")
    client.close()


def test_unknown_mechanism_is_no(imapd: PymaildProcess, ca: TestCA) -> None:
    client, _user = _login(imapd, ca)
    assert client.cmd(b"a", b"COMPRESS LZMA")[-1].startswith(b"a NO")
    assert client.cmd(b"b", b"NOOP")[-1].startswith(b"b OK")  # still uncompressed
    client.close()


def test_commands_pipelined_after_compress(imapd: PymaildProcess, ca: TestCA) -> None:
    """What the client sends right behind COMPRESS is already compressed."""
    client, _user = _login(imapd, ca)
    c = zlib.compressobj(6, zlib.DEFLATED, -15)
    client.sock.sendall(b"z COMPRESS DEFLATE\r\n" + c.compress(b"n NOOP\r\n") + c.flush(zlib.Z_SYNC_FLUSH))
    assert client.readline() == b"z OK DEFLATE active\r\n"
    client.c, client.d = c, zlib.decompressobj(-15)
    assert client.read_until_tagged(b"n")[-1].startswith(b"n OK")
    client.close()


def test_decompression_bomb_stays_small(imapd: PymaildProcess, ca: TestCA) -> None:
    """200 MB of one line in ~200 KB: answered as a line too long, in bounded memory."""
    client, _user = _login(imapd, ca)
    client.compress()
    before = _peak_rss(imapd)
    c = client.c
    assert c is not None
    block = b"A" * (1 << 20)
    wire = b"".join(c.compress(block) for _ in range(200)) + c.flush(zlib.Z_SYNC_FLUSH)
    assert len(wire) < 1_000_000
    client.sock.sendall(wire)
    client.send(b"\r\nb NOOP\r\n")
    bad = client.readline()
    assert bad.startswith(b"* BAD") or b"BAD" in bad, bad
    assert b"too long" in bad
    assert client.read_until_tagged(b"b")[-1].startswith(b"b OK")
    grown = _peak_rss(imapd) - before
    assert grown < 16 * 1024 * 1024, f"the daemon grew by {grown >> 20} MB"
    client.close()


def test_input_that_is_not_deflate_closes(imapd: PymaildProcess, ca: TestCA) -> None:
    client, _user = _login(imapd, ca)
    client.compress()
    client.sock.sendall(b"\xff" * 64)  # an invalid block type
    with pytest.raises((ConnectionError, zlib.error, OSError)):
        for _ in range(100):
            client.readline()
    client.close()


# ---------------------------------------------------------------- the streams alone


def test_inflater_hands_out_bounded_chunks_and_all_of_them() -> None:
    from mailserver.imap.deflate import Deflater, Inflater

    data = os.urandom(1000) + b"x" * 5_000_000 + os.urandom(1000)
    inflater = Inflater()
    inflater.feed(Deflater().compress(data))
    out = bytearray()
    while inflater.has_more:
        piece = inflater.take(65536)
        assert len(piece) <= 65536
        if not piece:
            break
        out += piece
    assert bytes(out) == data


def test_inflater_output_ending_on_a_chunk_boundary_is_not_held_back() -> None:
    """All input consumed by a take() that filled its chunk exactly: zlib may still hold
    output, which the next take() must give without new input."""
    from mailserver.imap.deflate import Deflater, Inflater

    data = b"y" * (4 * 65536)
    inflater = Inflater()
    inflater.feed(Deflater().compress(data))
    got = b""
    for _ in range(10):
        got += inflater.take(65536)
    assert got == data and not inflater.has_more
