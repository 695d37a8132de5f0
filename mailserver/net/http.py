"""A tiny HTTP/1.1 server: the sans-I/O request parser and response encoder, and
``HTTPListener`` (one request per connection, GET/HEAD, limits on size, time and
concurrency).

Shared by :mod:`mailserver.web` (HTTPS for MTA-STS and autoconfig) and
:mod:`mailserver.metrics` (plain-HTTP ``/metrics``); it knows neither. See
:mod:`mailserver.web` for why there is no framework. Logs as ``pymaild.web``.
"""

from __future__ import annotations

import asyncio
import contextlib
import email.utils
import logging
import re
import ssl
from collections.abc import Callable
from dataclasses import dataclass

log = logging.getLogger("pymaild.web")

MAX_HEAD = 8 * 1024  # request line + headers; nginx's default large_client_header_buffers is 8k
TIMEOUT = 10.0  # seconds for the TLS handshake, and again for the request + the response
MAX_CONNECTIONS = 100

REASONS = {
    200: "OK", 400: "Bad Request", 404: "Not Found", 405: "Method Not Allowed",
    408: "Request Timeout", 413: "Content Too Large", 414: "URI Too Long",
    431: "Request Header Fields Too Large", 500: "Internal Server Error", 503: "Service Unavailable",
    505: "HTTP Version Not Supported",
}


# ---------------------------------------------------------------------------- sans-I/O


class HTTPError(Exception):
    """A request we answer with an error status (and then close)."""

    def __init__(self, status: int, detail: str = "") -> None:
        super().__init__(f"{status} {detail or REASONS.get(status, '')}")
        self.status = status
        self.detail = detail


@dataclass(frozen=True)
class Request:
    method: str
    target: str  # as sent, for the log
    path: str  # without the query; *not* normalised: "/a/../b" stays as is and matches nothing
    query: str
    version: str  # "HTTP/1.1" or "HTTP/1.0"
    headers: dict[str, str]  # lower-case names
    host: str  # lower case, without port and trailing dot; "" if none was sent (HTTP/1.0)


@dataclass(frozen=True)
class Response:
    status: int
    body: bytes = b""
    content_type: str = "text/plain; charset=utf-8"
    headers: tuple[tuple[str, str], ...] = ()

    def encode(self, *, head_only: bool = False) -> bytes:
        """The bytes on the wire. HEAD gets the same Content-Length as GET (RFC 9110 9.3.2)."""
        lines = [
            f"HTTP/1.1 {self.status} {REASONS.get(self.status, 'Unknown')}",
            f"Date: {email.utils.formatdate(usegmt=True)}",  # an origin server with a clock MUST
            f"Content-Type: {self.content_type}",
            f"Content-Length: {len(self.body)}",
            "X-Content-Type-Options: nosniff",
            "Connection: close",
            *(f"{name}: {value}" for name, value in self.headers),
        ]
        head = ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")
        return head if head_only else head + self.body


def error_response(status: int, detail: str = "") -> Response:
    extra: tuple[tuple[str, str], ...] = ()
    if status == 405:
        extra = (("Allow", "GET, HEAD"),)  # RFC 9110 15.5.6: a 405 MUST list what is allowed
    text = f"{status} {REASONS.get(status, '')}\n" + (f"{detail}\n" if detail else "")
    return Response(status, text.encode(), headers=extra)


def find_head_end(buf: bytes | bytearray) -> int:
    """Offset just past the blank line ending the head, or -1. Bare LF is tolerated
    (RFC 9112 2.2 allows a recipient to), so ``printf 'GET / HTTP/1.0\\n\\n'`` works."""
    crlf, lf = buf.find(b"\r\n\r\n"), buf.find(b"\n\n")
    ends = [i + n for i, n in ((crlf, 4), (lf, 2)) if i >= 0]
    return min(ends) if ends else -1


_TOKEN = re.compile(rb"^[!#$%&'*+.^_`|~0-9A-Za-z-]+$")
_VERSION = re.compile(r"^HTTP/(\d)\.(\d)$")
_HOST = re.compile(r"^(\[[0-9a-fA-F:.]+\]|[A-Za-z0-9.-]*)(?::(\d*))?$")
_TARGET_CHARS = re.compile(r"^[\x21-\x7e]+$")  # visible ASCII: no spaces, controls or raw UTF-8


def normalize_host(value: str) -> str:
    """``MTA-STS.Example.org:443`` -> ``mta-sts.example.org``; ValueError if not a host."""
    m = _HOST.match(value.strip())
    if not m:
        raise ValueError(f"bad host {value!r}")
    return m.group(1).lower().rstrip(".")


def parse_request(head: bytes) -> Request:
    """Parse a request head (request line + headers, up to and including the blank line).

    Raises ``HTTPError`` (400, 405, 413, 505) for what we will not serve. Strict where
    leniency has caused request smuggling elsewhere (whitespace before the colon,
    obs-fold, duplicate Host), although with one request per connection there is nothing
    to smuggle into.
    """
    lines = head.replace(b"\r\n", b"\n").split(b"\n")
    while lines and lines[-1] == b"":
        lines.pop()
    if not lines:
        raise HTTPError(400, "empty request")
    try:
        request_line = lines[0].decode("ascii")
    except UnicodeDecodeError:
        raise HTTPError(400, "request line is not ASCII") from None
    parts = request_line.split(" ")
    if len(parts) != 3 or not all(parts):
        raise HTTPError(400, "malformed request line")
    method, target, version = parts
    if not _TOKEN.match(method.encode()):
        raise HTTPError(400, "malformed method")
    m = _VERSION.match(version)
    if not m:
        raise HTTPError(400, "malformed HTTP version")
    if m.group(1) != "1":
        raise HTTPError(505)
    version = "HTTP/1.0" if m.group(2) == "0" else "HTTP/1.1"
    if not _TARGET_CHARS.match(target):
        raise HTTPError(400, "malformed request target")

    headers: dict[str, str] = {}
    host_values: list[str] = []
    for raw in lines[1:]:
        if raw[:1] in (b" ", b"\t"):
            raise HTTPError(400, "obsolete header line folding")
        name, colon, value = raw.partition(b":")
        if not colon or not _TOKEN.match(name):
            raise HTTPError(400, "malformed header line")
        key = name.decode("ascii").lower()
        text = value.strip(b" \t").decode("latin-1")
        if key == "host":
            host_values.append(text)
        headers[key] = f"{headers[key]}, {text}" if key in headers else text

    if method not in ("GET", "HEAD"):
        raise HTTPError(405)
    length = headers.get("content-length")
    if length is not None and not length.isdigit():
        raise HTTPError(400, "bad Content-Length")
    if "transfer-encoding" in headers or (length and int(length) > 0):
        # GET and HEAD carry no body we would read; refusing one keeps the framing trivial.
        raise HTTPError(413, "a GET or HEAD request has no body")

    # Request target: origin-form "/path?q", or absolute-form "https://host/path?q" whose
    # authority then replaces Host (RFC 9112 3.2.2).
    host_text: str | None = host_values[0] if len(host_values) == 1 else None
    if len(host_values) > 1:
        raise HTTPError(400, "more than one Host header")
    path_query = target
    scheme, sep, rest = target.partition("://")
    if sep and scheme.lower() in ("http", "https"):
        authority, slash, tail = rest.partition("/")
        host_text = authority.rpartition("@")[2]
        path_query = slash + tail or "/"
    elif not target.startswith("/"):
        raise HTTPError(400, "unsupported request target")
    if host_text is None and version == "HTTP/1.1":
        raise HTTPError(400, "HTTP/1.1 request without Host")  # RFC 9112 3.2: MUST respond 400
    try:
        host = normalize_host(host_text or "")
    except ValueError:
        raise HTTPError(400, "malformed Host") from None
    path, _, query = path_query.partition("?")
    path = path.partition("#")[0]
    return Request(method, target, path, query, version, headers, host)


# ---------------------------------------------------------------------------- listener


Handler = Callable[[Request], Response]


class HTTPListener:
    """A minimal HTTP/1.1 server: one request per connection, GET/HEAD, limits.

    ``handler`` is a plain function of the parsed request: everything it needs is in memory,
    so it cannot block the loop. TLS is optional (``tls_context`` factory, called once per
    ``listen``; the TLSManager's context switches to the current certificate by itself).
    """

    def __init__(
        self,
        name: str,
        handler: Handler,
        *,
        tls_context: Callable[[], ssl.SSLContext] | None = None,
        timeout: float = TIMEOUT,
        max_connections: int = MAX_CONNECTIONS,
        max_head: int = MAX_HEAD,
        log_level: int = logging.INFO,
    ) -> None:
        self.name = name
        self.log_level = log_level
        self.handler = handler
        self.tls_context = tls_context
        self.timeout = timeout
        self.max_connections = max_connections
        self.max_head = max_head
        self.servers: list[asyncio.Server] = []
        self._tasks: set[asyncio.Task[None]] = set()
        self._refusing = False

    async def listen(self, host: str, port: int) -> None:
        ssl_ctx = self.tls_context() if self.tls_context is not None else None
        server = await asyncio.start_server(
            self._serve, host, port, ssl=ssl_ctx,
            # Bounds connections stuck in the handshake; the counting below starts after it.
            ssl_handshake_timeout=self.timeout if ssl_ctx else None,
            reuse_address=True, backlog=256,
        )
        self.servers.append(server)
        bound = server.sockets[0].getsockname()[1] if server.sockets else port  # port 0: the real one
        log.info("listening %s on %s port %d%s", self.name, host, bound, " (TLS)" if ssl_ctx else "")

    @property
    def sockets(self) -> list[tuple[str, int]]:
        return [s.getsockname()[:2] for srv in self.servers for s in srv.sockets]

    @property
    def active(self) -> int:
        """Connections being served now (after their TLS handshake)."""
        return len(self._tasks)

    async def close(self) -> None:
        for server in self.servers:
            server.close()
        # Python 3.11's wait_closed does not wait for open connections: end them here.
        for task in list(self._tasks):
            task.cancel()
        if self._tasks:
            await asyncio.wait(list(self._tasks), timeout=2)
        for server in self.servers:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(server.wait_closed(), 1)
        self.servers.clear()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        peer = writer.get_extra_info("peername") or ("?", 0)
        client = str(peer[0])
        if len(self._tasks) >= self.max_connections:
            if not self._refusing:  # one line per overload episode, not one per connection
                log.warning("%s: %d connections open, refusing new ones", self.name, len(self._tasks))
                self._refusing = True
            await self._finish(writer, Response(503, b"busy\n", headers=(("Retry-After", "10"),)), False)
            return
        self._refusing = False
        assert task is not None
        self._tasks.add(task)
        try:
            await self._exchange(reader, writer, client)
        except asyncio.CancelledError:  # close(): don't leave the socket to the GC
            writer.transport.abort()
            raise
        finally:
            self._tasks.discard(task)

    async def _exchange(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, client: str
    ) -> None:
        buf = bytearray()
        request: Request | None = None
        response: Response | None = None
        try:
            async with asyncio.timeout(self.timeout):  # the whole request: no slowloris
                response, request = await self._read_and_answer(reader, buf)
        except TimeoutError:
            # Nothing sent at all (an idle or preconnected socket): close silently, as
            # nginx does; a partial request gets a 408 so a real client knows why.
            response = error_response(408) if buf else None
        except OSError:  # resets, TLS errors (ssl.SSLError is an OSError)
            response = None
        if response is None:
            # Silent, reset or timed out before sending anything: drop the connection at
            # once (no TLS close_notify exchange with a peer that may never answer).
            writer.transport.abort()
            log.debug("%s client=%s closed without a complete request (%d bytes)", self.name,
                      client, len(buf))
            return
        host = request.host if request else "-"
        if request is not None:
            line = f"{request.method} {request.target}"
        else:  # unparseable: log what came, as far as the first line goes
            line = bytes(buf[:200]).partition(b"\n")[0].rstrip(b"\r").decode("latin-1")
        # %r: host and request line come from the client; repr keeps them on one log line.
        log.log(self.log_level, "%s client=%s host=%r request=%r status=%d bytes=%d", self.name,
                client, host[:100], line[:200], response.status, len(response.body))
        # HEAD gets no body, also with an error found before the request was parsed.
        await self._finish(writer, response, bytes(buf[:5]) == b"HEAD ")

    async def _read_and_answer(
        self, reader: asyncio.StreamReader, buf: bytearray
    ) -> tuple[Response | None, Request | None]:
        while (end := find_head_end(buf)) < 0:
            if len(buf) > self.max_head:
                # No line break at all: the request line itself is too long.
                status = 414 if b"\n" not in buf else 431
                return error_response(status), None
            chunk = await reader.read(4096)
            if not chunk:
                return None, None  # client went away
            buf += chunk
        if end > self.max_head:
            return error_response(431), None
        try:
            request = parse_request(bytes(buf[:end]))
        except HTTPError as exc:
            return error_response(exc.status, exc.detail), None
        try:
            return self.handler(request), request
        except Exception:
            log.exception("%s: handler failed for %r", self.name, request.path)
            return error_response(500), request

    async def _finish(self, writer: asyncio.StreamWriter, response: Response, head_only: bool) -> None:
        try:
            writer.write(response.encode(head_only=head_only))
            async with asyncio.timeout(self.timeout):
                await writer.drain()
                writer.close()
                await writer.wait_closed()  # includes the TLS close_notify exchange
        except (TimeoutError, OSError):
            writer.transport.abort()
