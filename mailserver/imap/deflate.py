"""COMPRESS=DEFLATE (RFC 4978): the raw DEFLATE streams of one connection, sans I/O.

Output: each write is compressed and ended with a sync flush (``Z_SYNC_FLUSH``), so the
client can decompress every response the server has sent without waiting for more; the
dictionary carries over, so many small responses still compress well (a flush costs ~5
octets). Input: decompressed ``chunk`` octets at a time (``max_length``), the rest kept
compressed in ``unconsumed_tail`` until the framer has room: a small compressed input
that expands to gigabytes (a decompression bomb) never exists decompressed in memory.
"""

from __future__ import annotations

import zlib

WBITS = -15  # raw DEFLATE, no zlib header or checksum (RFC 4978 4)
LEVEL = 6  # zlib's default: on mail (text, base64) level 1 is barely faster here


class Deflater:
    def __init__(self, level: int = LEVEL) -> None:
        self._c = zlib.compressobj(level, zlib.DEFLATED, WBITS)

    def compress(self, data: bytes | memoryview) -> bytes:
        """``data`` compressed and sync-flushed (may be called from a worker thread, one
        call at a time)."""
        return self._c.compress(data) + self._c.flush(zlib.Z_SYNC_FLUSH)


class Inflater:
    def __init__(self) -> None:
        self._d = zlib.decompressobj(WBITS)
        self._pending = b""  # compressed input not yet decompressed
        self._full = False  # the last take() filled its chunk: zlib may hold more output

    @property
    def pending(self) -> int:
        """Compressed octets waiting (the transport stops reading while there are many)."""
        return len(self._pending)

    def feed(self, data: bytes) -> None:
        self._pending = self._pending + data if self._pending else data

    def take(self, chunk: int) -> bytes:
        """At most ``chunk`` decompressed octets; ``b""`` when all input so far is used.
        Raises ``zlib.error`` for input that is not DEFLATE."""
        if not self._pending and not self._full:
            return b""
        if self._d.eof:  # the client ended its stream: anything after it is ignored
            self._pending = b""
            self._full = False
            return b""
        out = self._d.decompress(self._pending, chunk)
        self._pending = self._d.unconsumed_tail
        self._full = len(out) == chunk
        return out

    @property
    def has_more(self) -> bool:
        return bool(self._pending) or self._full
