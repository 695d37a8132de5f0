"""asyncio transport for the sans-I/O SMTP core: sockets, TLS, timeouts, limits, draining.

Everything protocol-shaped lives in ``protocol.py``; everything policy-shaped (who may
send to whom, checks, delivery) lives in the endpoint's ``SessionHandler``. This module only
moves bytes and enforces the limits that need a clock or a shared counter.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import ssl
import typing
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol

from ..message import new_message_id
from ..metrics import Metrics
from . import protocol as p

log = logging.getLogger("pymaild.smtp")
S = typing.TypeVar("S")

# Pause reading when this much unprocessed input is buffered (a client pipelining while a
# slow check runs): bounded memory per connection without dropping anything.
_MAX_BUFFERED = 1024 * 1024
_MAX_UNSENT = 1024 * 1024


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


Answer = tuple[int, str, str]  # (code, enhanced status, text)


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


@dataclass(frozen=True)
class Limits:
    command_timeout: float = 300.0
    data_timeout: float = 600.0
    max_connections: int = 1000
    max_connections_per_ip: int = 20
    tls_handshake_timeout: float = 30.0
    drain_timeout: float = 30.0


class ConnectionLimiter:
    """Counts open connections in total and per client IP across one endpoint's listeners."""

    def __init__(self, max_total: int, max_per_ip: int) -> None:
        self.max_total = max_total
        self.max_per_ip = max_per_ip
        self.total = 0
        self.per_ip: dict[str, int] = {}

    def acquire(self, ip: str) -> str | None:
        """None if admitted, else the reason to refuse."""
        if self.total >= self.max_total:
            return "too many connections"
        if self.per_ip.get(ip, 0) >= self.max_per_ip:
            return "too many connections from your address"
        self.total += 1
        self.per_ip[ip] = self.per_ip.get(ip, 0) + 1
        return None

    def release(self, ip: str) -> None:
        self.total -= 1
        left = self.per_ip.get(ip, 1) - 1
        if left <= 0:
            self.per_ip.pop(ip, None)
        else:
            self.per_ip[ip] = left


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
        self.limiter = ConnectionLimiter(limits.max_connections, limits.max_connections_per_ip)
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


async def drain_listeners(servers: list[asyncio.base_events.Server], sessions: set[S], timeout: float, *,
                          notify: Callable[[S], None], abort: Callable[[S], None]) -> None:
    """The shutdown of one service (SMTP or IMAP): stop accepting, ``notify`` every session
    (they finish what they are doing and say goodbye), wait up to ``timeout`` for them to
    go, ``abort`` the rest."""
    for server in servers:
        server.close()
    for session in list(sessions):
        notify(session)
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while sessions and loop.time() < deadline:
        await asyncio.sleep(0.05)
    for session in list(sessions):
        abort(session)
    for server in servers:
        with contextlib.suppress(Exception):
            await asyncio.wait_for(server.wait_closed(), 1)


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
        self._admitted_ip: str | None = None

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
        refusal = "Service shutting down" if endpoint.draining else endpoint.limiter.acquire(ip)
        if refusal is not None:
            log.warning("refused connection listener=%s client=%s reason=%r", endpoint.name, ip, refusal)
            transport.write(p.Reply(421, "4.7.0", f"{params.hostname} {refusal}, try again later").encode())
            transport.close()
            self._closed = True
            return
        self._admitted_ip = ip
        endpoint.sessions.add(self)
        endpoint.metrics.inc("connections_total", listener=endpoint.name)
        log.info("connect session=%s listener=%s client=%s:%d tls=%s", self.session.id, endpoint.name,
                 ip, port, self.session.tls_version or "no")
        self._task = asyncio.get_running_loop().create_task(self._run())

    def data_received(self, data: bytes) -> None:
        if self.session is None or self._closed:
            return
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

    def connection_lost(self, exc: Exception | None) -> None:
        self._closed = True
        self._wakeup.set()
        if self._admitted_ip is not None:
            self.endpoint.limiter.release(self._admitted_ip)
            self._admitted_ip = None
            self.endpoint.sessions.discard(self)
            if self.session is not None:
                elapsed = asyncio.get_running_loop().time() - self.session.started
                log.info("disconnect session=%s client=%s messages=%d seconds=%.1f", self.session.id,
                         self.session.client_ip, self.session.messages, elapsed)
                with contextlib.suppress(Exception):
                    self.endpoint.handler.on_disconnect(self.session)

    # ---------------------------------------------------------------- session loop

    def wake(self) -> None:
        self._wakeup.set()

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
            if self.transport.get_write_buffer_size() > _MAX_UNSENT:
                # A client that pipelines but never reads replies: don't buffer for it.
                self.transport.abort()
                self._closed = True

    async def _run(self) -> None:
        assert self.session is not None and self.transport is not None
        session, conn, handler = self.session, self.session.conn, self.endpoint.handler
        limits = self.endpoint.limits
        try:
            refusal = await handler.on_connect(session)
            if refusal is not None:
                conn.close_with(*refusal)
                self._flush()
                self.transport.close()
                return
            self.transport.write(conn.greeting())
            while not self._closed:
                event = conn.next_event()
                for notice in conn.take_notices():
                    # e.g. AUTH before STARTTLS: a misconfigured client. Not a fail2ban line.
                    log.warning("%s listener=%s session=%s client=%s", notice, self.endpoint.name,
                                session.id, session.client_ip)
                if event is p.NEED_DATA or not isinstance(event, p.Helo | p.MailFrom | p.RcptTo):
                    # RFC 2920: replies may wait while pipelined commands are still being
                    # processed; send them before waiting for input or doing slow work
                    # (DATA checks, AUTH). Saves a send() per reply under PIPELINING.
                    self._flush()
                if event is p.NEED_DATA:
                    if conn.closed:
                        break
                    if self._paused and self.transport is not None:
                        self.transport.resume_reading()
                        self._paused = False
                    if self.endpoint.draining and conn.state in (p.State.CONNECTED, p.State.READY):
                        host = self.endpoint.params.hostname
                        conn.close_with(421, "4.3.2", f"{host} Service shutting down")
                        self._flush()
                        break
                    self._wakeup.clear()
                    timeout = limits.data_timeout if conn.in_data else limits.command_timeout
                    try:
                        await asyncio.wait_for(self._wakeup.wait(), timeout)
                    except TimeoutError:
                        log.info("timeout session=%s client=%s state=%s", session.id, session.client_ip,
                                 conn.state.value)
                        conn.close_with(421, "4.4.2", f"{self.endpoint.params.hostname} Timeout, closing")
                        self._flush()
                        break
                    continue
                if event is p.PAUSED:  # cannot happen: we always answer before looping
                    raise p.ProtocolError("core paused without a pending handler")
                if isinstance(event, p.ConnectionClosed):
                    break
                if isinstance(event, p.StartTLS):
                    if not await self._start_tls():
                        return
                    continue
                answer = await self._dispatch(event)
                if isinstance(answer, str):  # SASL continuation
                    conn.reply(334, "", answer)
                elif isinstance(answer, AuthOK):
                    conn.auth_succeeded(answer.user)
                    log.info("auth session=%s client=%s user=%s", session.id, session.client_ip, answer.user)
                elif answer is not None:
                    conn.reply(*answer)
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

    async def _dispatch(self, event: p.Event) -> Answer | str | AuthOK | None:
        assert self.session is not None
        handler, session = self.endpoint.handler, self.session
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


def _replace_params(params: p.ServerParams, **changes: object) -> p.ServerParams:
    import dataclasses

    return dataclasses.replace(params, **changes)  # type: ignore[arg-type]
