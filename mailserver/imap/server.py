"""asyncio transport for IMAP: sockets, TLS (implicit and STARTTLS), timeouts, limits, IDLE.

Bytes go into the sans-I/O framer (``framing.IMAPConnection``); its events go to the
session (``session.IMAPSession``); the session's answer (``Action``) tells this module
what to do with the framer next. Nothing here knows IMAP commands.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
import socket
import ssl
import typing
import zlib
from collections import deque
from collections.abc import Callable, Sequence
from typing import Literal

from mailserver.net.listener import (
    ConnectionTable,
    Entry,
    FlowControl,
    TablePolicy,
    drain_listeners,
    http_request_line,
)

from . import format as fmt
from .backend import IMAPBackend
from .deflate import Deflater, Inflater
from .framing import (
    NEED_DATA,
    PAUSED,
    AuthResponse,
    CommandError,
    CommandReceived,
    ConnectionClosed,
    ContinuationRequest,
    IdleDone,
    IMAPConnection,
)
from .session import Action, IMAPSession, Output

log = logging.getLogger("pymaild.imap")

_MAX_BUFFERED = 256 * 1024  # pause reading above this much unparsed input
_FIRST_LINE = 8192  # how much of the first line is kept to tell an HTTP request
# COMPRESS=DEFLATE (RFC 4978): writes up to this size are compressed on the event loop
# (well under a millisecond); larger ones (a FETCH of whole messages) in a worker thread,
# _DEFLATE_SLICE at a time, waiting for the client to read between slices.
_INLINE_DEFLATE = 16 * 1024
_DEFLATE_SLICE = 256 * 1024
_INFLATE_CHUNK = 64 * 1024  # decompressed octets handed to the framer at a time


class IMAPEndpoint:
    """The IMAP service with its listeners (143 with STARTTLS, 993 with implicit TLS)."""

    def __init__(self, backend: IMAPBackend, *, tls_context: Callable[[], ssl.SSLContext] | None,
                 stress_at: float = 0.8, stress_timeout: float = 10.0) -> None:
        self.backend = backend
        self.tls_context = tls_context
        limits = backend.limits
        # Logged-in sessions (IDLE for hours) are never evicted nor shortened under stress.
        self.table = ConnectionTable(TablePolicy(limits.max_connections, limits.max_connections_per_ip,
                                                 stress_at, stress_timeout))
        self.sessions: set[_IMAPProtocol] = set()
        self.servers: list[asyncio.base_events.Server] = []
        self.draining = False

    async def listen(self, host: str, port: int, *, implicit_tls: bool = False) -> None:
        loop = asyncio.get_running_loop()
        ssl_ctx = self.tls_context() if implicit_tls and self.tls_context else None
        server = await loop.create_server(
            lambda: _IMAPProtocol(self, implicit_tls),
            host, port, ssl=ssl_ctx,
            ssl_handshake_timeout=self.backend.limits.tls_handshake_timeout if ssl_ctx else None,
            reuse_address=True, backlog=512,
        )
        self.servers.append(server)
        self.backend.hub.start()
        log.info("listening imap%s on %s port %d", "s" if ssl_ctx else "", host, port)

    @property
    def sockets(self) -> list[tuple[str, int]]:
        return [s.getsockname()[:2] for srv in self.servers for s in srv.sockets]

    async def drain(self) -> None:
        """Stop accepting; every session gets ``* BYE`` once its current command is done."""
        self.draining = True
        await drain_listeners(self.servers, self.sessions, self.backend.limits.drain_timeout,
                              notify=lambda session: session.shutdown(),
                              abort=lambda session: session.abort())
        await self.backend.hub.stop()


class _IMAPProtocol(asyncio.Protocol, Output):
    def __init__(self, endpoint: IMAPEndpoint, implicit_tls: bool) -> None:
        self.endpoint = endpoint
        self.implicit_tls = implicit_tls
        self.transport: asyncio.Transport | None = None
        self.conn = IMAPConnection(endpoint.backend.limits.framing())
        self.session: IMAPSession | None = None
        self._data = asyncio.Event()
        self._flow = FlowControl()
        self._task: asyncio.Task[None] | None = None
        self._closed = False
        self._paused = False
        self._shutting_down = False
        self._admitted = False
        self._entry: Entry | None = None
        self._first_line: bytearray | None = bytearray()  # None once the first line was seen
        self.id = secrets.token_hex(6)
        # After COMPRESS DEFLATE: the two streams, and the large writes waiting for (or
        # in) the worker that compresses them, in order.
        self._deflater: Deflater | None = None
        self._inflater: Inflater | None = None
        self._deflate_queue: deque[Sequence[bytes]] = deque()
        self._deflate_task: asyncio.Task[None] | None = None

    # ---------------------------------------------------------------- Output

    def write(self, data: bytes) -> None:
        if data and self.transport is not None and not self.transport.is_closing():
            if self._deflater is not None:
                self._write_deflated((data,))
            else:
                self.transport.write(data)

    def writelines(self, pieces: Sequence[bytes]) -> None:
        if pieces and self.transport is not None and not self.transport.is_closing():
            if self._deflater is not None:
                self._write_deflated(pieces)
            else:
                self.transport.writelines(pieces)

    def _write_deflated(self, pieces: Sequence[bytes]) -> None:
        """Compressed and sync-flushed, in the order written: small writes at once, large
        ones (and anything behind them) by the worker task."""
        assert self._deflater is not None and self.transport is not None
        if self._deflate_task is None and sum(map(len, pieces)) <= _INLINE_DEFLATE:
            self.transport.write(self._deflater.compress(b"".join(pieces)))
            return
        self._deflate_queue.append(pieces)
        if self._deflate_task is None:
            self._deflate_task = asyncio.get_running_loop().create_task(self._deflate_worker())

    async def _deflate_worker(self) -> None:
        deflater, transport = self._deflater, self.transport
        assert deflater is not None and transport is not None
        try:
            while self._deflate_queue:
                for piece in self._deflate_queue.popleft():
                    view = memoryview(piece)
                    for start in range(0, len(piece), _DEFLATE_SLICE):
                        out = await asyncio.to_thread(deflater.compress, view[start:start + _DEFLATE_SLICE])
                        if transport.is_closing():
                            return
                        transport.write(out)
                        # The flow-control contract holds inside a write: a slow reader
                        # gets the rest as it reads, and at most a slice waits here.
                        await self._flow.drain()
        except ConnectionError:
            return  # the client is gone; the session's task ends on its own
        finally:
            if transport.is_closing():
                self._deflate_queue.clear()
            self._deflate_task = None

    async def drain(self) -> None:
        """Wait while the transport has paused writing (asyncio's flow-control contract: only
        ``pause_writing()`` starts a wait, only ``resume_writing()`` or the connection's end
        finishes it), and, with COMPRESS, until the compressing worker has sent its queue."""
        try:
            task = self._deflate_task
            if task is not None:
                # Shielded: a cancelled session must not cancel output already promised.
                await asyncio.shield(task)
            await self._flow.drain()
        except ConnectionError:
            # The client is gone: end the session's task, which must not take this for a
            # disk error (an OSError) and answer NO.
            raise asyncio.CancelledError from None

    def pause_writing(self) -> None:
        self._flow.pause_writing()

    def resume_writing(self) -> None:
        self._flow.resume_writing()

    # ---------------------------------------------------------------- asyncio callbacks

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        transport = typing.cast(asyncio.Transport, transport)
        self.transport = transport
        peer = transport.get_extra_info("peername") or ("?", 0)
        ip = str(peer[0])
        endpoint = self.endpoint
        backend = endpoint.backend
        sock = transport.get_extra_info("socket")
        if sock is not None:
            # Thunderbird never logs out and NATs drop flows silently: let the kernel find
            # dead peers so their sessions are reaped.
            with contextlib.suppress(OSError, AttributeError):
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
                # Probe after 5 idle minutes, every minute, give up after 5: a vanished
                # laptop's sessions are gone within ~10 minutes, not the kernel's 2 hours.
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPIDLE, 300)
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPINTVL, 60)
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPCNT, 5)
        self._entry, refusal = endpoint.table.admit_unless(endpoint.draining, ip, self)
        if refusal is not None:
            log.warning("refused connection listener=imap client=%s reason=%r", ip, refusal)
            transport.write(fmt.untagged_status("BYE", f"{refusal}, try again later"))
            transport.close()
            self._closed = True
            return
        self._admitted = True
        endpoint.sessions.add(self)
        listener = "imaps" if self.implicit_tls else "imap"
        backend.metrics.inc("connections_total", listener=listener)
        self.session = IMAPSession(backend, self, client_ip=ip, listener=listener, tls=self.implicit_tls,
                                   starttls_available=endpoint.tls_context is not None, session_id=self.id)
        log.info("connect session=%s listener=%s client=%s:%s", self.id, listener, ip, peer[1])
        self._task = asyncio.get_running_loop().create_task(self._run())

    def data_received(self, data: bytes) -> None:
        if self._closed:
            return
        if self._entry is not None:
            self.endpoint.table.touch(self._entry)
        if self._first_line is not None and not self._check_first_line(data):
            return
        inflater = self._inflater
        if inflater is not None:
            inflater.feed(data)
            if not self._inflate(force=False):
                return
        else:
            self.conn.receive_data(data)
        self._data.set()
        backlog = self.conn.buffered > _MAX_BUFFERED or (
            inflater is not None and inflater.pending > _MAX_BUFFERED)
        if backlog and not self._paused and self.transport is not None:
            self.transport.pause_reading()
            self._paused = True

    def _inflate(self, *, force: bool) -> bool:
        """Decompressed input into the framer, _INFLATE_CHUNK at a time while it holds at
        most _MAX_BUFFERED (``force``: one chunk even above that, because the framer asked
        for data); the rest stays compressed. False when the input is not DEFLATE and the
        connection was closed."""
        inflater = self._inflater
        assert inflater is not None
        conn = self.conn
        try:
            while inflater.has_more and (force or conn.buffered <= _MAX_BUFFERED):
                force = False
                out = inflater.take(_INFLATE_CHUNK)
                if not out:
                    break
                conn.receive_data(out)
        except zlib.error as exc:
            log.info("bad compressed input session=%s client=%s error=%s", self.id,
                     self.session.client_ip if self.session else "?", exc)
            self.write(fmt.untagged_status("BYE", "invalid compressed data"))
            self._close_now()
            return False
        return True

    def _start_compression(self) -> bool:
        """COMPRESS DEFLATE's tagged OK went out uncompressed: from here on both directions
        are DEFLATE (RFC 4978 3). What the client sent after the command is compressed."""
        self._deflater = Deflater()
        self._inflater = Inflater()
        leftover = self.conn.compression_started()
        if leftover:
            self._inflater.feed(leftover)
            return self._inflate(force=False)
        return True

    def eof_received(self) -> bool | None:
        self._closed = True
        self._data.set()
        return None

    def connection_lost(self, exc: Exception | None) -> None:
        self._closed = True
        self._data.set()
        self._flow.connection_lost()
        if self._entry is not None:
            self.endpoint.table.release(self._entry)
            self._entry = None
        if self._admitted:
            self._admitted = False
            self.endpoint.sessions.discard(self)
            if self.session is not None:
                self.session.close()
                log.info("disconnect session=%s user=%s", self.id, self.session.login_name)
            if self._task is not None and not self._task.done():
                self._task.cancel()

    def _check_first_line(self, data: bytes) -> bool:
        """An HTTP request line first (a browser or proxy probe on the IMAP port): say BYE
        and close at once. False when the connection was closed."""
        head = self._first_line
        assert head is not None
        head += data[:_FIRST_LINE]
        end = head.find(b"\n")
        if end < 0 and len(head) < _FIRST_LINE:
            return True
        self._first_line = None
        if not http_request_line(bytes(head[:end + 1] if end >= 0 else head)):
            return True
        log.info("not imap session=%s client=%s: HTTP request line", self.id,
                 self.session.client_ip if self.session else "?")
        self.write(fmt.untagged_status("BYE", "this is an IMAP server"))
        self._close_now()
        return False

    def _close_now(self) -> None:
        if self.transport is not None:
            self.transport.close()
        self._closed = True
        self._data.set()
        if self._task is not None:
            self._task.cancel()

    # ---------------------------------------------------------------- table callbacks

    def wake(self) -> None:
        self._data.set()

    def evict(self) -> None:
        """The connection table is full and this session is the idlest of the busiest address."""
        log.info("evict session=%s client=%s (connection table full)", self.id,
                 self.session.client_ip if self.session else "?")
        if not self._closed:
            self.write(fmt.untagged_status("BYE", "too many connections, closing idle session"))
        self._close_now()
        self.endpoint.backend.metrics.inc("connections_evicted_total", listener="imap")

    # ---------------------------------------------------------------- control

    def shutdown(self) -> None:
        self._shutting_down = True
        self._data.set()

    def abort(self) -> None:
        if self.transport is not None and not self._closed:
            self.write(fmt.untagged_status("BYE", "server shutting down"))
            self.transport.close()
        self._closed = True
        if self._task is not None:
            self._task.cancel()

    async def _wait_input(self) -> None:
        """Until bytes arrive (or the connection ends). The caller cleared ``_data`` right
        after the framer said NEED_DATA, with no await in between, so no wakeup is lost."""
        inflater = self._inflater
        if inflater is not None and inflater.has_more:
            before = self.conn.buffered
            if not self._inflate(force=True):
                return
            if self.conn.buffered != before:
                self._data.set()
        if (self._paused and self.transport is not None
                and (inflater is None or inflater.pending <= _MAX_BUFFERED)):
            self.transport.resume_reading()
            self._paused = False
        if self._closed or self._shutting_down:
            return
        await self._data.wait()

    # ---------------------------------------------------------------- session loop

    async def _run(self) -> None:
        assert self.session is not None and self.transport is not None
        session, conn = self.session, self.conn
        limits = self.endpoint.backend.limits
        try:
            self.write(session.greeting())
            while not self._closed:
                if self._shutting_down and not session.idling:
                    self.write(fmt.untagged_status("BYE", "server shutting down"))
                    break
                event = conn.next_event()
                if event is NEED_DATA:
                    self._data.clear()
                    if session.idling:
                        if not await self._idle_wait(session):
                            self.write(fmt.untagged_status("BYE", "autologout: idle for too long"))
                            break
                        if self._shutting_down:
                            self.write(fmt.untagged_status("BYE", "server shutting down"))
                            break
                        continue
                    timeout = limits.idle_timeout if session.user else limits.login_timeout
                    entry = self._entry
                    if entry is not None:
                        entry.idle = not session.user  # logged-in sessions are never evicted
                        timeout = self.endpoint.table.timeout(entry, timeout)
                    try:
                        await asyncio.wait_for(self._wait_input(), timeout)
                    except TimeoutError:
                        log.info("timeout session=%s client=%s", self.id, session.client_ip)
                        self.write(fmt.untagged_status("BYE", "autologout: idle for too long"))
                        break
                    finally:
                        if entry is not None:
                            entry.idle = False
                    continue
                if event is PAUSED:  # we always tell the framer what to do before looping
                    raise RuntimeError("IMAP framer paused without an answer")
                if isinstance(event, ContinuationRequest):
                    self.write(fmt.continuation("Ready for literal data"))
                    continue
                if isinstance(event, CommandError):
                    self.write(fmt.error_response(event.error))
                    session.errors += 1
                    if session.errors > limits.max_errors:
                        self.write(fmt.untagged_status("BYE", "too many errors"))
                        break
                    continue
                if isinstance(event, ConnectionClosed):
                    self.write(fmt.untagged_status("BYE", event.reason))
                    break
                if isinstance(event, IdleDone):
                    session.idle_done(event.tag)
                    await session.report_if_dirty()
                    continue
                if isinstance(event, AuthResponse):
                    action = await session.auth_response(event.tag, event.data)
                    if not await self._apply(action):
                        break
                    continue
                assert isinstance(event, CommandReceived)
                cmd = event.command
                action = await session.execute(cmd)
                if not await self._apply(action):
                    break
                if action in (Action.NONE, Action.RESUME):
                    await session.after_command(cmd)
                await self.drain()
        except asyncio.CancelledError:
            return
        except Exception:
            log.exception("session=%s internal error", self.id)
            self.write(fmt.untagged_status("BYE", "internal server error"))
        finally:
            task = self._deflate_task
            if task is not None and not self._closed:
                # The last compressed responses (a BYE) before the connection closes.
                with contextlib.suppress(Exception, asyncio.CancelledError):
                    await asyncio.shield(task)
            if self.transport is not None and not self.transport.is_closing():
                self.transport.close()

    async def _idle_wait(self, session: IMAPSession) -> bool:
        """While in IDLE: push changes as they happen and a keepalive at the session's
        deadline until input arrives (the client sent DONE or anything else): True. False
        when the session says the client stayed silent too long (the caller logs it out)."""
        wake = session.begin_idle_wait()
        reader = asyncio.ensure_future(self._wait_input())
        waker: asyncio.Future[Literal[True]] | None = None
        try:
            while True:
                waker = asyncio.ensure_future(wake.wait())
                deadline = session.next_deadline()
                timeout = None if deadline is None else max(0.0, deadline - session.now())
                done, _ = await asyncio.wait((reader, waker), timeout=timeout,
                                             return_when=asyncio.FIRST_COMPLETED)
                waker.cancel()
                if reader in done:
                    return True
                if waker in done:
                    wake.clear()
                    await session.push_changes()
                    continue
                if not session.on_deadline():
                    return False
        finally:
            # Cancelled (the connection dropped, the session task was cancelled) or failed
            # inside the wait: neither helper task may be left pending, or asyncio logs
            # "Task was destroyed but it is pending!" for each when they are collected.
            session.end_idle_wait()
            for task in (reader, waker):
                if task is not None and not task.done():
                    task.cancel()

    async def _apply(self, action: Action) -> bool:
        """Tell the framer what the session answered; False: close the connection."""
        conn = self.conn
        if action is Action.RESUME:
            conn.resume()
        elif action is Action.CONTINUE_AUTH:
            conn.continue_authenticate()
        elif action is Action.IDLE:
            conn.start_idle()
        elif action is Action.STARTTLS:
            return await self._start_tls()
        elif action is Action.COMPRESS:
            return self._start_compression()
        elif action is Action.CLOSE:
            return False
        return True

    async def _start_tls(self) -> bool:
        assert self.transport is not None and self.session is not None
        factory = self.endpoint.tls_context
        if factory is None:
            return False
        loop = asyncio.get_running_loop()
        try:
            new_transport = await loop.start_tls(
                self.transport, self, factory(), server_side=True,
                ssl_handshake_timeout=self.endpoint.backend.limits.tls_handshake_timeout)
        except (OSError, ssl.SSLError, TimeoutError, ConnectionError) as exc:
            log.info("starttls failed session=%s client=%s error=%s", self.id, self.session.client_ip, exc)
            return False
        if new_transport is None:
            return False
        self.transport = new_transport
        # Plaintext pipelined after STARTTLS is thrown away (CVE-2011-0411 class).
        self.conn.tls_established()
        self.session.tls_started()
        return True
