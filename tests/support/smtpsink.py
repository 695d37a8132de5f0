"""Scriptable SMTP sinks (and a tiny HTTPS server for MTA-STS policies) for delivery tests.

A sink is a real asyncio SMTP server on a loopback address, written with asyncio streams,
that records every transaction and answers as the test scripts it:

    sink = SMTPSink("127.0.0.2", port, tls=ca.issue("mx1.example.test"))
    sink.script("MAIL", "451 4.3.0 try later", "250 ok")   # first MAIL 451, then 250
    sink.rcpt_replies["bob@example.test"] = "550 5.1.1 no such user"
    sink.hang.add("DOT")                                     # never answer the final dot
                                                             # (sink.hung once it happens)
    sink.inject_after_starttls = b"250 injected\\r\\n"         # same packet as the 220
    await sink.start()
    ... sink.transactions[0].data ...

Stages: "GREETING", "EHLO", "STARTTLS", "MAIL", "RCPT", "DATA" (the 354 or a refusal),
"DOT" (the reply after the message), "RSET", "AUTH". ``start_sinks`` starts several
sinks on different 127.0.0.x addresses with one common port (what ``mx_port`` needs).
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import errno
import ssl
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path

from .ports import free_port  # race-free (see ports.py); re-exported for the tests


@dataclass
class Transaction:
    mail_from: str
    mail_params: list[str]
    rcpts: list[str]
    data: bytes = b""  # un-dot-stuffed, CRLF line ends, final CRLF included
    tls: bool = False
    sni: str | None = None
    auth_user: str | None = None
    ehlo: str = ""
    peer: str = ""


@dataclass
class _Session:
    peer: str
    tls: bool = False
    sni: str | None = None
    ehlo: str = ""
    auth_user: str | None = None
    mail_from: str | None = None
    mail_params: list[str] = field(default_factory=list)
    rcpts: list[str] = field(default_factory=list)


def _server_context(tls: tuple[Path, Path] | ssl.SSLContext | None,
                    sni_seen: list[str | None]) -> ssl.SSLContext | None:
    if tls is None or isinstance(tls, ssl.SSLContext):
        return tls
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(str(tls[0]), str(tls[1]))

    def remember(sslobj: ssl.SSLObject, name: str | None, _ctx: ssl.SSLContext) -> None:
        sni_seen.append(name)

    ctx.sni_callback = remember  # type: ignore[assignment]
    return ctx


class SMTPSink:
    """One scriptable SMTP server; see the module docstring."""

    def __init__(
        self,
        host: str = "127.0.0.1",
        port: int = 0,
        *,
        tls: tuple[Path, Path] | ssl.SSLContext | None = None,
        implicit_tls: bool = False,
        offer_starttls: bool = True,
        auth: dict[str, str] | None = None,
        name: str = "sink.example.test",
        extensions: Iterable[str] = ("8BITMIME", "SIZE 10485760", "ENHANCEDSTATUSCODES"),
    ) -> None:
        self.host, self.port = host, port
        self._sni: list[str | None] = []
        self.ssl_context = _server_context(tls, self._sni)
        self.implicit_tls = implicit_tls
        self.offer_starttls = offer_starttls and self.ssl_context is not None and not implicit_tls
        self.auth = auth  # user -> password; AUTH PLAIN offered (over TLS only) when set
        self.name = name
        self.extensions = list(extensions)
        self.scripts: dict[str, list[str]] = {}
        self.rcpt_replies: dict[str, str] = {}
        self.hang: set[str] = set()
        self.inject_after_starttls: bytes = b""
        self.transactions: list[Transaction] = []
        self.commands: list[str] = []
        self.connections = 0
        self.auth_failures = 0
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._hung = asyncio.Event()

    # ----------------------------------------------------------------- control

    def script(self, stage: str, *replies: str) -> None:
        """Replies for the next uses of ``stage``, in order; afterwards the default."""
        self.scripts.setdefault(stage.upper(), []).extend(replies)

    async def start(self) -> SMTPSink:
        self._server = await asyncio.start_server(
            self._client, self.host, self.port, ssl=self.ssl_context if self.implicit_tls else None,
            reuse_address=True,
        )
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
        for task in list(self._tasks):
            task.cancel()
        for task in list(self._tasks):
            with contextlib.suppress(BaseException):
                await task
        if self._server is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._server.wait_closed(), 2)
            self._server = None

    async def __aenter__(self) -> SMTPSink:
        return await self.start()

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    @property
    def received(self) -> list[bytes]:
        return [t.data for t in self.transactions]

    @property
    def hung(self) -> bool:
        """True once a session has reached a stage in ``hang`` and gone silent: what a
        test waits for before acting on a peer stuck mid-transaction."""
        return self._hung.is_set()

    # ----------------------------------------------------------------- protocol

    def _reply_for(self, stage: str, default: str) -> str:
        queue = self.scripts.get(stage)
        return queue.pop(0) if queue else default

    async def _client(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        self.connections += 1
        peer = writer.get_extra_info("peername")
        session = _Session(peer=str(peer[0]) if peer else "", tls=self.implicit_tls)
        if self.implicit_tls:
            session.sni = self._sni[-1] if self._sni else None
        try:
            await self._converse(reader, writer, session)
        except (ConnectionError, asyncio.IncompleteReadError, ssl.SSLError, OSError):
            pass
        except asyncio.CancelledError:
            pass  # stop(): end quietly (asyncio logs an error for a cancelled handler task)
        finally:
            self._tasks.discard(task)
            writer.close()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(writer.wait_closed(), 1)

    async def _send(self, writer: asyncio.StreamWriter, stage: str, reply: str) -> bool:
        """Write a reply; False (and silence until the client leaves) when the stage hangs."""
        if stage in self.hang:
            self._hung.set()
            await asyncio.Event().wait()  # cancelled at stop(); the client gives up first
        writer.write(reply.encode() + b"\r\n")
        await writer.drain()
        return True

    async def _converse(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                        session: _Session) -> None:
        await self._send(writer, "GREETING", self._reply_for("GREETING", f"220 {self.name} ESMTP sink"))
        while True:
            line = await reader.readuntil(b"\r\n")
            text = line[:-2].decode("utf-8", "surrogateescape")
            self.commands.append(text)
            verb, _, arg = text.partition(" ")
            verb = verb.upper()
            if verb in ("EHLO", "HELO"):
                session.ehlo = arg
                session.mail_from, session.rcpts = None, []
                default = self._ehlo_reply(session) if verb == "EHLO" else f"250 {self.name}"
                await self._send(writer, "EHLO", self._reply_for("EHLO", default))
            elif verb == "STARTTLS" and self.offer_starttls and not session.tls:
                reply = self._reply_for("STARTTLS", "220 2.0.0 go ahead")
                if not reply.startswith("220"):
                    await self._send(writer, "STARTTLS", reply)
                    continue
                if "STARTTLS" in self.hang:
                    await self._send(writer, "STARTTLS", reply)
                # The injection goes out in the same write (one packet on loopback).
                writer.write(reply.encode() + b"\r\n" + self.inject_after_starttls)
                await writer.drain()
                assert self.ssl_context is not None
                before = len(self._sni)
                await writer.start_tls(self.ssl_context)
                session.tls = True
                session.sni = self._sni[-1] if len(self._sni) > before else None
                session.ehlo, session.mail_from, session.rcpts = "", None, []
            elif verb == "AUTH" and self.auth is not None and session.tls:
                await self._auth(reader, writer, session, arg)
            elif verb == "MAIL":
                path, params = _path_and_params(arg, "FROM:")
                reply = self._reply_for("MAIL", "250 2.1.0 sender ok")
                if reply.startswith("250"):
                    session.mail_from, session.mail_params, session.rcpts = path, params, []
                await self._send(writer, "MAIL", reply)
            elif verb == "RCPT":
                path, _ = _path_and_params(arg, "TO:")
                if session.mail_from is None:
                    await self._send(writer, "RCPT", "503 5.5.1 MAIL first")
                    continue
                reply = self.rcpt_replies.get(path) or self._reply_for("RCPT", "250 2.1.5 recipient ok")
                if reply.startswith("25"):
                    session.rcpts.append(path)
                await self._send(writer, "RCPT", reply)
            elif verb == "DATA":
                if session.mail_from is None or not session.rcpts:
                    await self._send(writer, "DATA", "503 5.5.1 no valid recipients")
                    continue
                reply = self._reply_for("DATA", "354 end with <CRLF>.<CRLF>")
                await self._send(writer, "DATA", reply)
                if not reply.startswith("354"):
                    continue
                data = await _read_data(reader)
                final = self._reply_for("DOT", "250 2.0.0 queued")
                if final.startswith("250"):
                    self.transactions.append(Transaction(
                        session.mail_from, session.mail_params, list(session.rcpts), data, session.tls,
                        session.sni, session.auth_user, session.ehlo, session.peer))
                session.mail_from, session.rcpts = None, []
                await self._send(writer, "DOT", final)
            elif verb == "RSET":
                session.mail_from, session.rcpts = None, []
                await self._send(writer, "RSET", self._reply_for("RSET", "250 2.0.0 ok"))
            elif verb == "NOOP":
                await self._send(writer, "NOOP", "250 2.0.0 ok")
            elif verb == "QUIT":
                writer.write(b"221 2.0.0 bye\r\n")
                await writer.drain()
                return
            else:
                await self._send(writer, "OTHER", "502 5.5.2 command not implemented")

    def _ehlo_reply(self, session: _Session) -> str:
        lines = [self.name, *self.extensions]
        if self.offer_starttls and not session.tls:
            lines.append("STARTTLS")
        if self.auth is not None and session.tls:
            lines.append("AUTH PLAIN")
        return "\r\n".join(f"250{'-' if i < len(lines) - 1 else ' '}{text}" for i, text in enumerate(lines))

    async def _auth(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                    session: _Session, arg: str) -> None:
        mechanism, _, initial = arg.partition(" ")
        if mechanism.upper() != "PLAIN":
            await self._send(writer, "AUTH", "504 5.5.4 mechanism not supported")
            return
        if not initial:
            await self._send(writer, "AUTH", "334 ")
            initial = (await reader.readuntil(b"\r\n"))[:-2].decode()
        try:
            _authzid, user, password = base64.b64decode(initial, validate=True).decode().split("\0")
        except ValueError:
            await self._send(writer, "AUTH", "501 5.5.2 malformed AUTH PLAIN")
            return
        assert self.auth is not None
        if self.auth.get(user) == password:
            session.auth_user = user
            await self._send(writer, "AUTH", self._reply_for("AUTH", "235 2.7.0 authenticated"))
        else:
            self.auth_failures += 1
            await self._send(writer, "AUTH", "535 5.7.8 bad credentials")


def _path_and_params(arg: str, prefix: str) -> tuple[str, list[str]]:
    rest = (arg[len(prefix):] if arg.upper().startswith(prefix) else arg).strip()
    end, quoted = len(rest) - 1, False
    for i, c in enumerate(rest):  # the '>' that closes the path, outside a quoted local part
        if c == '"':
            quoted = not quoted
        elif c == ">" and not quoted:
            end = i
            break
    path, params = rest[: end + 1], rest[end + 1 :]
    return path.removeprefix("<").removesuffix(">"), params.split()


async def _read_data(reader: asyncio.StreamReader) -> bytes:
    lines: list[bytes] = []
    while True:
        line = await reader.readuntil(b"\r\n")
        if line == b".\r\n":
            return b"".join(lines)
        lines.append(line[1:] if line.startswith(b".") else line)


async def start_sinks(hosts: Iterable[str], **options: object) -> list[SMTPSink]:
    """Sinks on several loopback addresses sharing one port (RemoteDelivery.mx_port)."""
    hosts = list(hosts)
    for _ in range(50):
        port = free_port(hosts[0])
        sinks: list[SMTPSink] = []
        try:
            for host in hosts:
                sinks.append(await SMTPSink(host, port, **options).start())  # type: ignore[arg-type]
        except OSError as exc:
            for sink in sinks:
                await sink.stop()
            if exc.errno != errno.EADDRINUSE:
                raise
            continue
        return sinks
    raise OSError("no port free on all of " + ", ".join(hosts))


# --------------------------------------------------------------------- HTTPS for MTA-STS


@dataclass
class HTTPResponse:
    status: int = 200
    headers: dict[str, str] = field(default_factory=lambda: {"Content-Type": "text/plain"})
    body: bytes = b""
    chunked: bool = False


class PolicyServer:
    """HTTPS on a loopback address answering every GET with ``response`` (or ``handler()``).

    Serves ``/.well-known/mta-sts.txt`` for MTA-STS tests; ``requests`` records request heads.
    """

    def __init__(self, host: str, cert: tuple[Path, Path], port: int = 0) -> None:
        self.host, self.port = host, port
        self.ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        self.ctx.load_cert_chain(str(cert[0]), str(cert[1]))
        self.response = HTTPResponse()
        self.handler: Callable[[], HTTPResponse] | None = None
        self.requests: list[str] = []
        self._server: asyncio.Server | None = None

    def serve_policy(self, text: str, **kw: object) -> None:
        self.response = HTTPResponse(body=text.encode(), **kw)  # type: ignore[arg-type]

    async def start(self) -> PolicyServer:
        self._server = await asyncio.start_server(self._client, self.host, self.port, ssl=self.ctx)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._server.wait_closed(), 2)

    async def _client(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            head = await reader.readuntil(b"\r\n\r\n")
            self.requests.append(head.decode("latin-1"))
            resp = self.handler() if self.handler else self.response
            lines = [f"HTTP/1.1 {resp.status} X"]
            headers = dict(resp.headers)
            if resp.chunked:
                headers["Transfer-Encoding"] = "chunked"
                body = b"".join(b"%x\r\n%s\r\n" % (len(resp.body[i:i + 7]), resp.body[i:i + 7])
                                for i in range(0, len(resp.body), 7)) + b"0\r\n\r\n"
            else:
                headers.setdefault("Content-Length", str(len(resp.body)))
                body = resp.body
            lines += [f"{k}: {v}" for k, v in headers.items()]
            writer.write(("\r\n".join(lines) + "\r\n\r\n").encode() + body)
            await writer.drain()
        except (ConnectionError, asyncio.IncompleteReadError, ssl.SSLError, OSError):
            pass
        finally:
            writer.close()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(writer.wait_closed(), 1)
