"""asyncio transport for the sans-I/O SMTP core: sockets, TLS, timeouts, limits, draining.

Everything protocol-shaped lives in ``protocol.py``; everything policy-shaped (who may
send to whom, checks, delivery) lives in the endpoint's ``SessionHandler``. This module
moves bytes, enforces the limits that need a clock or a shared counter, and passes the
core's events to the handler (``dispatch``/``give_answer``, which in-process tests of the
handlers use too, without a socket).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import ssl
import typing
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, ParamSpec, Protocol, TypeVar

from ..message import new_message_id
from ..metrics import Metrics
from ..net.listener import (
    ConnectionTable,
    Entry,
    FlowControl,
    PacePolicy,
    TablePolicy,
    TransferPace,
    drain_listeners,
)
from ..smtpreply import SMTPReply
from . import protocol as p

log = logging.getLogger("pymaild.smtp")

__all__ = ["AuthOK", "Clock", "Limits", "SMTPEndpoint", "Session", "SessionHandler", "ThreadRunner",
           "dispatch", "drain_listeners", "give_answer"]

# Pause reading when this much unprocessed input is buffered (a client pipelining while a
# slow check runs, or not reading its replies): bounded memory per connection without
# dropping anything.
_MAX_BUFFERED = 1024 * 1024
# Send queued replies once this much is pending, even amid a pipelined group.
_FLUSH_AT = 64 * 1024


@dataclass
class Session:
    """What a handler may know about the connection."""

    id: str
    listener: str
    client_ip: str
    client_port: int
    conn: p.ServerConnection
    tls_version: str | None = None
    tls_cipher: str | None = None
    started: float = 0.0
    messages: int = 0
    extra: dict[str, object] = field(default_factory=dict)

    @property
    def tls(self) -> bool:
        return self.conn.tls


Answer = SMTPReply  # what a handler answers; the core renders it (mailserver/smtpreply.py)


@dataclass(frozen=True)
class AuthOK:
    """on_auth's answer for a successful SASL exchange: the session is now ``user``."""

    user: str


class SessionHandler(Protocol):
    """The endpoint's policy. Each method returns the reply to send."""

    async def on_connect(self, session: Session) -> Answer | None: ...
    async def on_helo(self, session: Session, event: p.Helo) -> Answer: ...
    async def on_mail(self, session: Session, event: p.MailFrom) -> Answer: ...
    async def on_rcpt(self, session: Session, event: p.RcptTo) -> Answer: ...
    async def on_message(self, session: Session, event: p.MessageReceived) -> Answer: ...
    async def on_auth(
        self, session: Session, event: p.AuthStart | p.AuthResponse
    ) -> Answer | str | AuthOK: ...
    def on_disconnect(self, session: Session) -> None: ...


_P = ParamSpec("_P")
_R = TypeVar("_R")


class ThreadRunner(Protocol):
    """How a handler runs a blocking call (SQLite, a Maildir write with its fsyncs) without
    stopping the event loop: ``asyncio.to_thread`` in the daemon; a test may pass a runner
    that calls inline, so a whole transaction runs in order without threads."""

    def __call__(self, func: Callable[_P, _R], /, *args: _P.args, **kwargs: _P.kwargs) -> Awaitable[_R]: ...


# A handler's stopwatch (seconds, any origin): ``time.perf_counter`` unless a test injects one.
Clock = Callable[[], float]


async def dispatch(handler: SessionHandler, session: Session, event: p.Event) -> Answer | str | AuthOK:
    """Hand one event of the core to the endpoint's policy; its answer goes back to the core
    with :func:`give_answer`. The socket shell below and in-process tests share these two."""
    if isinstance(event, p.Helo):
        return await handler.on_helo(session, event)
    if isinstance(event, p.MailFrom):
        return await handler.on_mail(session, event)
    if isinstance(event, p.RcptTo):
        return await handler.on_rcpt(session, event)
    if isinstance(event, p.MessageReceived):
        session.messages += 1
        return await handler.on_message(session, event)
    if isinstance(event, p.AuthStart | p.AuthResponse):
        return await handler.on_auth(session, event)
    raise p.ProtocolError(f"unexpected event {event!r}")


def give_answer(conn: p.ServerConnection, answer: Answer | str | AuthOK) -> None:
    """A handler's answer to the pending event: a reply, a SASL challenge (RFC 4954 4:
    "334 " and the base64 text) or a finished login (235, from the core)."""
    if isinstance(answer, str):
        conn.reply(334, "", answer)
    elif isinstance(answer, AuthOK):
        conn.auth_succeeded(answer.user)
    else:
        conn.reply(answer.code, answer.enhanced, answer.text)


@dataclass(frozen=True)
class Limits:
    command_timeout: float = 300.0
    data_timeout: float = 600.0
    max_connections: int = 1000
    max_connections_per_ip: int = 20
    tls_handshake_timeout: float = 30.0
    drain_timeout: float = 30.0
    # Under load (see net/listener.py): from stress_at x max_connections on, a connection
    # outside a transaction gets stress_timeout of silence; a full table evicts one.
    stress_at: float = 0.8
    stress_timeout: float = 10.0
    # Wait this long before the 220; a client that talks first is cut off (0: only bytes
    # that arrived before the greeting was written count).
    greeting_delay: float = 0.0
    data_deadline: float = 1800.0  # the whole DATA phase
    data_min_rate: float = 500.0  # bytes/s on average during DATA, after data_rate_grace
    data_rate_grace: float = 30.0

    def table(self) -> TablePolicy:
        return TablePolicy(self.max_connections, self.max_connections_per_ip, self.stress_at,
                           self.stress_timeout)

    def pace(self) -> PacePolicy:
        return PacePolicy(self.data_deadline, self.data_min_rate, self.data_rate_grace)


class SMTPEndpoint:
    """One logical SMTP service (e.g. "mx") with one or more listeners."""

    def __init__(
        self,
        name: str,
        params: p.ServerParams,
        handler: SessionHandler,
        limits: Limits,
        *,
        tls_context: Callable[[], ssl.SSLContext] | None = None,
        metrics: Metrics | None = None,
    ) -> None:
        self.name = name
        self.metrics = metrics or Metrics()
        self.params = params
        self.handler = handler
        self.limits = limits
        self.tls_context = tls_context
        self.table = ConnectionTable(limits.table())
        self.sessions: set[_SMTPProtocol] = set()
        self.servers: list[asyncio.base_events.Server] = []
        self.draining = False

    async def listen(self, host: str, port: int, *, implicit_tls: bool = False) -> None:
        loop = asyncio.get_running_loop()
        ssl_ctx = self.tls_context() if implicit_tls and self.tls_context else None
        server = await loop.create_server(
            lambda: _SMTPProtocol(self, implicit_tls),
            host,
            port,
            ssl=ssl_ctx,
            ssl_handshake_timeout=self.limits.tls_handshake_timeout if ssl_ctx else None,
            reuse_address=True,
            backlog=512,
        )
        self.servers.append(server)
        log.info("listening %s on %s port %d%s", self.name, host, port, " (implicit TLS)" if ssl_ctx else "")

    @property
    def sockets(self) -> list[tuple[str, int]]:
        return [s.getsockname()[:2] for srv in self.servers for s in srv.sockets]

    async def drain(self) -> None:
        """Stop accepting; idle sessions get 421 now, transactions may finish first."""
        self.draining = True
        await drain_listeners(self.servers, self.sessions, self.limits.drain_timeout,
                              notify=lambda session: session.wake(),
                              abort=lambda session: session.abort("4.3.2", "Service shutting down"))


class _SMTPProtocol(asyncio.Protocol):
    def __init__(self, endpoint: SMTPEndpoint, implicit_tls: bool) -> None:
        self.endpoint = endpoint
        self.implicit_tls = implicit_tls
        self.transport: asyncio.Transport | None = None
        self.session: Session | None = None
        self._wakeup = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._closed = False
        self._paused = False
        self._admitted = False
        self._entry: Entry | None = None
        self._flow = FlowControl()
        self._greeted = False
        self._early = False  # bytes arrived before the greeting was written
        self._pace: TransferPace | None = None  # while in DATA
        self._pace_timeout = False  # the running wait ends at the pace's deadline

    # ---------------------------------------------------------------- asyncio callbacks

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports are not asyncio.Transport subclasses: duck-type, don't assert.
        transport = typing.cast(asyncio.Transport, transport)
        self.transport = transport
        peer = transport.get_extra_info("peername") or ("?", 0)
        ip, port = str(peer[0]), int(peer[1])
        endpoint = self.endpoint
        params = endpoint.params
        if self.implicit_tls:
            params = _replace_params(params, tls_active=True, tls_available=False)
        conn = p.ServerConnection(params)
        self.session = Session(new_message_id(), endpoint.name, ip, port, conn,
                               started=asyncio.get_running_loop().time())
        if self.implicit_tls:
            self._note_tls(transport)
        self._entry, refusal = endpoint.table.admit_unless(endpoint.draining, ip, self)
        if refusal is not None:
            log.warning("refused connection listener=%s client=%s reason=%r", endpoint.name, ip, refusal)
            transport.write(p.Reply(421, "4.7.0", f"{params.hostname} {refusal}, try again later").encode())
            transport.close()
            self._closed = True
            return
        self._admitted = True
        endpoint.sessions.add(self)
        endpoint.metrics.inc("connections_total", listener=endpoint.name)
        log.info("connect session=%s listener=%s client=%s:%d tls=%s", self.session.id, endpoint.name,
                 ip, port, self.session.tls_version or "no")
        self._task = asyncio.get_running_loop().create_task(self._run())

    def data_received(self, data: bytes) -> None:
        if self.session is None or self._closed:
            return
        if not self._greeted:
            self._early = True
        if self._entry is not None:
            self.endpoint.table.touch(self._entry)
        if self._pace is not None:
            self._pace.feed(len(data))
        conn = self.session.conn
        conn.receive_data(data)
        self._wakeup.set()
        if conn.buffered > _MAX_BUFFERED and not self._paused and self.transport is not None:
            self.transport.pause_reading()
            self._paused = True

    def eof_received(self) -> bool | None:
        self._closed = True
        self._wakeup.set()
        return None  # close the transport

    def pause_writing(self) -> None:
        self._flow.pause_writing()

    def resume_writing(self) -> None:
        self._flow.resume_writing()

    def connection_lost(self, exc: Exception | None) -> None:
        self._closed = True
        self._wakeup.set()
        self._flow.connection_lost()
        if self._entry is not None:
            self.endpoint.table.release(self._entry)
            self._entry = None
        if self._admitted:
            self._admitted = False
            self.endpoint.sessions.discard(self)
            if self.session is not None:
                elapsed = asyncio.get_running_loop().time() - self.session.started
                log.info("disconnect session=%s client=%s messages=%d seconds=%.1f", self.session.id,
                         self.session.client_ip, self.session.messages, elapsed)
                with contextlib.suppress(Exception):
                    self.endpoint.handler.on_disconnect(self.session)

    # ---------------------------------------------------------------- table callbacks

    def wake(self) -> None:
        self._wakeup.set()

    def evict(self) -> None:
        """The connection table is full and this session is the idlest of the busiest address."""
        if self.session is not None:
            log.info("evict session=%s listener=%s client=%s (connection table full)", self.session.id,
                     self.endpoint.name, self.session.client_ip)
        self.abort("4.7.0", "Too many connections, closing idle session")
        self.endpoint.metrics.inc("connections_evicted_total", listener=self.endpoint.name)

    # ---------------------------------------------------------------- session loop

    def abort(self, status: str, text: str) -> None:
        if self.session is not None and self.transport is not None and not self._closed:
            self.session.conn.close_with(421, status, f"{self.endpoint.params.hostname} {text}")
            self._flush()
            self.transport.close()
        self._closed = True
        if self._task is not None:
            self._task.cancel()

    def _flush(self) -> None:
        assert self.session is not None
        out = self.session.conn.data_to_send()
        if out and self.transport is not None and not self.transport.is_closing():
            self.transport.write(out)

    async def _writable(self) -> bool:
        """Wait while the transport asked us to stop writing (the client does not read its
        replies); input is not processed meanwhile, so reading stops too. False: give up."""
        assert self.session is not None and self.transport is not None
        try:
            await asyncio.wait_for(self._flow.drain(), self.endpoint.limits.command_timeout)
        except TimeoutError:
            log.info("timeout session=%s client=%s: replies not read", self.session.id,
                     self.session.client_ip)
            self.transport.abort()
            self._closed = True
            return False
        except ConnectionError:
            self._closed = True
            return False
        return True

    async def _greet(self) -> bool:
        """The 220, after ``greeting_delay``; False if the client talked first (cut off)."""
        assert self.session is not None and self.transport is not None
        session, conn = self.session, self.session.conn
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.endpoint.limits.greeting_delay
        while not self._early and not self._closed and (left := deadline - loop.time()) > 0:
            self._wakeup.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wakeup.wait(), left)
        if self._closed:
            return False
        if self._early:
            log.info("pregreet session=%s client=%s: talked before the greeting", session.id,
                     session.client_ip)
            self.endpoint.metrics.inc("connections_pregreet_total", listener=self.endpoint.name)
            conn.close_with(554, "5.5.1", f"{self.endpoint.params.hostname} Protocol error: "
                            "talking before the greeting")
            self._flush()
            return False
        self._greeted = True  # no await between this and the write: later bytes are replies to it
        self.transport.write(conn.greeting())
        return True

    def _wait_timeout(self) -> float:
        """Silence allowed now: the DATA pace, or the command timeout (short under stress)."""
        assert self.session is not None
        conn, limits, entry = self.session.conn, self.endpoint.limits, self._entry
        if conn.in_data:
            now = asyncio.get_running_loop().time()
            if self._pace is None:
                self._pace = TransferPace(limits.pace(), now)
            left = self._pace.left(now)
            # Remembered, not recomputed at the timeout: bytes that arrive between the
            # timer and _timed_out (a busy loop) would otherwise hide why it fired.
            self._pace_timeout = left <= limits.data_timeout
            return min(limits.data_timeout, left)
        self._pace = None
        self._pace_timeout = False
        if entry is None:
            return limits.command_timeout
        entry.idle = conn.state in (p.State.CONNECTED, p.State.READY) and conn.authenticated_as is None
        return self.endpoint.table.timeout(entry, limits.command_timeout)

    def _timed_out(self) -> None:
        assert self.session is not None
        session, conn, host = self.session, self.session.conn, self.endpoint.params.hostname
        if self._pace is not None and self._pace_timeout:
            why = self._pace.why(asyncio.get_running_loop().time())
            log.info("timeout session=%s client=%s state=data: %s (%d bytes in %.0fs)", session.id,
                     session.client_ip, why, self._pace.received,
                     asyncio.get_running_loop().time() - self._pace.started)
            text = "Message transfer too slow" if why == "too slow" else "Message transfer took too long"
            conn.close_with(421, "4.4.2", f"{host} {text}, closing")
        else:
            stressed = self._entry is not None and self._entry.idle and self.endpoint.table.stressed
            log.info("timeout session=%s client=%s state=%s%s", session.id, session.client_ip,
                     conn.state.value, " (server busy)" if stressed else "")
            conn.close_with(421, "4.4.2", f"{host} Timeout, closing")
        self._flush()

    async def _run(self) -> None:
        assert self.session is not None and self.transport is not None
        session, conn, handler = self.session, self.session.conn, self.endpoint.handler
        try:
            refusal = await handler.on_connect(session)
            if refusal is not None:
                conn.close_with(refusal.code, refusal.enhanced, refusal.text)
                self._flush()
                self.transport.close()
                return
            if not await self._greet():
                return
            while not self._closed:
                if self._flow.paused and not await self._writable():
                    return
                event = conn.next_event()
                for notice in conn.take_notices():
                    # e.g. AUTH before STARTTLS: a misconfigured client. Not a fail2ban line.
                    log.warning("%s listener=%s session=%s client=%s", notice, self.endpoint.name,
                                session.id, session.client_ip)
                if (event is p.NEED_DATA or not isinstance(event, p.Helo | p.MailFrom | p.RcptTo)
                        or conn.unsent > _FLUSH_AT):
                    # RFC 2920: replies may wait while pipelined commands are still being
                    # processed; send them before waiting for input or doing slow work
                    # (DATA checks, AUTH). Saves a send() per reply under PIPELINING.
                    self._flush()
                if event is p.NEED_DATA:
                    if conn.closed:
                        break
                    if self._flow.paused:
                        continue  # wait for the client to read before reading more
                    if self._paused and self.transport is not None:
                        self.transport.resume_reading()
                        self._paused = False
                    if self.endpoint.draining and conn.state in (p.State.CONNECTED, p.State.READY):
                        host = self.endpoint.params.hostname
                        conn.close_with(421, "4.3.2", f"{host} Service shutting down")
                        self._flush()
                        break
                    self._wakeup.clear()
                    try:
                        await asyncio.wait_for(self._wakeup.wait(), self._wait_timeout())
                    except TimeoutError:
                        self._timed_out()
                        break
                    finally:
                        if self._entry is not None:
                            self._entry.idle = False
                    continue
                if event is p.PAUSED:  # cannot happen: we always answer before looping
                    raise p.ProtocolError("core paused without a pending handler")
                if isinstance(event, p.ConnectionClosed):
                    break
                if isinstance(event, p.StartTLS):
                    if not await self._start_tls():
                        return
                    continue
                answer = await dispatch(handler, session, event)
                give_answer(conn, answer)
                if isinstance(answer, AuthOK):
                    log.info("auth session=%s client=%s user=%s", session.id, session.client_ip, answer.user)
                if conn.closed:
                    self._flush()
                    break
            self._flush()
        except asyncio.CancelledError:
            return
        except Exception:
            log.exception("session=%s internal error", session.id)
            with contextlib.suppress(Exception):
                conn.close_with(421, "4.3.0", f"{self.endpoint.params.hostname} Internal error, closing")
                self._flush()
        finally:
            if self.transport is not None and not self.transport.is_closing():
                self.transport.close()

    async def _start_tls(self) -> bool:
        assert self.session is not None and self.transport is not None
        factory = self.endpoint.tls_context
        if factory is None:  # core only offers STARTTLS when tls_available
            return False
        loop = asyncio.get_running_loop()
        # No await between the core discarding the buffered plaintext and start_tls, so no
        # plaintext byte can be read as if it had come over TLS.
        try:
            new_transport = await loop.start_tls(
                self.transport, self, factory(), server_side=True,
                ssl_handshake_timeout=self.endpoint.limits.tls_handshake_timeout,
            )
        except (OSError, ssl.SSLError, TimeoutError, ConnectionError) as exc:
            log.info("starttls failed session=%s client=%s error=%s", self.session.id,
                     self.session.client_ip, exc)
            self._closed = True
            return False
        if new_transport is None:
            self._closed = True
            return False
        self.transport = new_transport
        self.session.conn.tls_established()
        self._note_tls(new_transport)
        log.info("starttls session=%s client=%s tls=%s cipher=%s", self.session.id,
                 self.session.client_ip, self.session.tls_version, self.session.tls_cipher)
        return True

    def _note_tls(self, transport: asyncio.BaseTransport) -> None:
        assert self.session is not None
        ssl_obj = transport.get_extra_info("ssl_object")
        if ssl_obj is not None:
            self.session.tls_version = ssl_obj.version()
            cipher = ssl_obj.cipher()
            self.session.tls_cipher = cipher[0] if cipher else None


def _replace_params(params: p.ServerParams, **changes: Any) -> p.ServerParams:
    import dataclasses

    return dataclasses.replace(params, **changes)
