"""Deliver one queued message to its remote recipients over SMTP (aiosmtplib).

``RemoteDelivery.deliver()`` makes one attempt and reports, per recipient, "sent", "temp"
(the queue retries) or "perm" (the queue bounces). It never raises for network or
protocol trouble: every failure becomes a result.

Route per domain: the smarthost if one is configured, else what ``routes.mx_route``
finds (the MX hosts in RFC 5321 §5.1 order and the TLS their MTA-STS policy requires);
each host's IPv6 then IPv4 addresses (``routes.host_addresses``), until one accepts the
transaction.

How aiosmtplib is used, and why (see shared/library-notes.md):

- We connect the TCP socket ourselves (our resolver, our address order, our connect
  timeout, optional source address) and hand it over with ``sock=``, passing the host
  *name* as ``hostname``: TLS then verifies against the name although we dialled an IP.
- MAIL and RCPT go through ``execute_command`` with paths we validated and formatted
  ourselves, because ``SMTP.mail()``/``rcpt()`` rewrite addresses through
  ``email.utils.parseaddr``. DATA is dot-stuffed here (``wire_data``), not by
  ``SMTP.data()``, whose regex passes stall the event loop on large messages.
- STARTTLS: aiosmtplib discards bytes buffered after the 220 (response injection, the
  "NO STARTTLS" attacks). We go further and abort the session when any such bytes were
  received: a server that does this is broken or being tampered with, and the message
  must not be handed over on that connection.
- Opportunistic TLS (no policy) does not verify certificates, as RFC 7435 intends; an
  MTA-STS ``enforce`` policy and the smarthost require a certificate valid for the name.
  A failed TLS handshake is never followed by a plaintext retry.
- A message with a NUL octet or a line over 998 octets is never sent: it fails
  permanently (554 5.6.0) and the sender gets a bounce (``transport_problem``).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import re
import socket
import ssl
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import aiosmtplib

from mailserver.address import AddressError, parse_mailbox
from mailserver.delivery.mtasts import MTASTS
from mailserver.delivery.results import DeliveryResult, from_reply, perm, temp
from mailserver.delivery.routes import Route, TLSMode, host_addresses, mx_route
from mailserver.dns.resolver import DNSTempError, Resolver
from mailserver.message import transport_problem

log = logging.getLogger(__name__)

# The results made here name this module (SMTPReply.module, for logs).
_temp = functools.partial(temp, module="remote")
_perm = functools.partial(perm, module="remote")
_from_reply = functools.partial(from_reply, module="remote")

RelayTLS = Literal["starttls", "implicit", "none"]

MAX_ADDRESSES = 10  # per domain and attempt, like Postfix's smtp_mx_address_limit (5) x 2
_QUIT_TIMEOUT = 5.0
_THREAD_BYTES = 1 << 20  # messages above this are canonicalised/dot-stuffed off the event loop
_LINE_ENDS = re.compile(rb"\r\n|\r|\n")


class _TryNext(Exception):
    """This address failed before the message was handed over: try the next one."""

    def __init__(self, result: DeliveryResult, *, tls_failure: bool = False) -> None:
        super().__init__(result.diagnostic)
        self.result = result
        self.tls_failure = tls_failure


@dataclass
class _Conn:
    smtp: aiosmtplib.SMTP
    name: str  # host name the session was opened for (EHLO/TLS identity)
    verified_for: str | None  # host name the certificate was verified against
    dirty: bool = False  # a transaction was left open: RSET before the next MAIL


@dataclass
class _Slot:
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    conn: _Conn | None = None


def canonical_crlf(data: bytes) -> bytes:
    """Every line ending as CRLF and a final CRLF: what goes on the wire and what SIZE counts."""
    crlf = data.count(b"\r\n")
    if data.count(b"\n") != crlf or data.count(b"\r") != crlf:  # count() is C-fast; the regex is not
        data = _LINE_ENDS.sub(b"\r\n", data)
    if not data.endswith(b"\r\n"):
        data += b"\r\n"
    return data


def wire_data(data: bytes) -> bytes:
    """The DATA payload: CRLF-canonical, dot-stuffed (RFC 5321 §4.5.2), with the final ``.``.

    Done here rather than by ``SMTP.data()``: aiosmtplib's two regex passes stall the event
    loop for about 300 ms per 10 MB; two ``bytes.replace`` calls take a few ms, and
    large messages are prepared in a worker thread anyway. After canonicalisation a line
    can only start at offset 0 or after CRLF, so a lone "." line inside the message
    becomes ".." and cannot end the message early.
    """
    data = canonical_crlf(data)
    if data.startswith(b"."):
        data = b"." + data
    return data.replace(b"\r\n.", b"\r\n..") + b".\r\n"


def check_address(address: str, *, allow_empty: bool = False) -> str:
    """The address as it will appear between ``<>``; raises AddressError.

    The queue hands us addresses we accepted earlier; this is the last line of defence
    before they reach a command line: no CR/LF/NUL or other controls, no source route,
    nothing aiosmtplib or a remote parser could read differently.
    """
    if address == "" and allow_empty:
        return ""
    if any(ord(c) < 32 or ord(c) == 127 for c in address):
        raise AddressError("control character in address")
    if address.startswith("@"):
        raise AddressError("source routes are not sent")
    if address.startswith("<") or address.endswith(">"):
        raise AddressError("address must be given without <>")
    parsed = parse_mailbox(address, utf8=not address.isascii())
    if parsed.is_literal:
        raise AddressError("address literals are not delivered remotely")
    return str(parsed)


class RemoteDelivery:
    def __init__(
        self,
        resolver: Resolver,
        *,
        hostname: str,
        mx_port: int = 25,
        relay: str = "",
        relay_tls: RelayTLS = "starttls",
        relay_username: str = "",
        relay_password: str = "",
        mta_sts: MTASTS | None = None,
        ca_file: str | None = None,
        connect_timeout: float = 30,
        command_timeout: float = 300,
        data_timeout: float = 600,
        source_address: str | None = None,
    ) -> None:
        if relay_tls not in ("starttls", "implicit", "none"):
            raise ValueError(f"relay_tls must be starttls, implicit or none, not {relay_tls!r}")
        self.resolver = resolver
        self.hostname = hostname
        self.mx_port = mx_port
        self.relay = _split_hostport(relay) if relay else None
        self.relay_tls: RelayTLS = relay_tls
        self.relay_username = relay_username
        self.relay_password = relay_password
        self.mta_sts = mta_sts
        self.ca_file = ca_file
        self.connect_timeout = connect_timeout
        self.command_timeout = command_timeout
        self.data_timeout = data_timeout
        self.source_address = source_address
        self._verified_ctx: ssl.SSLContext | None = None
        self._opportunistic_ctx: ssl.SSLContext | None = None

    # ----------------------------------------------------------------- public

    async def deliver(
        self, mail_from: str, recipients: Sequence[str], data: bytes
    ) -> dict[str, DeliveryResult]:
        """One delivery attempt; a result for every recipient (keys as given), never raises.

        ``mail_from`` "" is the null sender (bounces). Domains are handled concurrently;
        connections are shared between domains with the same MX address and closed
        (QUIT) before returning.
        """
        results: dict[str, DeliveryResult] = {}
        try:
            sender = check_address(mail_from, allow_empty=True)
        except AddressError as exc:
            bad = _perm(553, "5.1.7", f"invalid sender address: {exc}")
            return dict.fromkeys(recipients, bad)
        groups: dict[str, dict[str, str]] = {}  # domain -> {original: canonical}
        for rcpt in recipients:
            try:
                canonical = check_address(rcpt)
            except AddressError as exc:
                results[rcpt] = _perm(553, "5.1.3", f"invalid recipient address: {exc}")
                continue
            key = "" if self.relay else canonical.rpartition("@")[2]
            groups.setdefault(key, {})[rcpt] = canonical
        if not groups:
            return results
        if len(data) < _THREAD_BYTES:
            data = canonical_crlf(data)
            unsendable = transport_problem(data)
        else:
            data = await asyncio.to_thread(canonical_crlf, data)
            unsendable = await asyncio.to_thread(transport_problem, data)
        if unsendable is not None:
            # Last line of defence (submission refuses such messages, DSNs are 7-bit with
            # short lines): never hand the next hop a NUL or a line over 998 octets. A
            # permanent failure, so the sender gets a bounce that says why.
            log.warning("delivery refused for %s: the message %s", ", ".join(recipients), unsendable)
            bad = _perm(554, "5.6.0", f"not sent: the message {unsendable} (RFC 5322 2.1.1)")
            return {**results, **dict.fromkeys((r for g in groups.values() for r in g), bad)}
        slots: dict[tuple[str, int], _Slot] = {}
        try:
            outcomes = await asyncio.gather(
                *(self._deliver_group(domain, rcpts, sender, data, slots) for domain, rcpts in groups.items())
            )
        finally:
            await asyncio.gather(*(self._close(s.conn) for s in slots.values() if s.conn))
        for outcome in outcomes:
            results.update(outcome)
        for rcpt, result in results.items():
            log.info("delivery to <%s> via %s: %s %s", rcpt, result.mx or "-", result.kind, result.diagnostic)
        return results

    # ----------------------------------------------------------------- per domain

    async def _deliver_group(
        self, domain: str, rcpts: dict[str, str], sender: str, data: bytes,
        slots: dict[tuple[str, int], _Slot],
    ) -> dict[str, DeliveryResult]:
        try:
            return await self._route_group(domain, rcpts, sender, data, slots)
        except Exception:
            # A bug here must cost a retry, not the queue runner or the other domains.
            log.exception("delivery for %s failed unexpectedly", domain or "relay")
            return dict.fromkeys(rcpts, _temp(451, "4.3.0", "internal error during delivery"))

    async def _route_group(
        self, domain: str, rcpts: dict[str, str], sender: str, data: bytes,
        slots: dict[tuple[str, int], _Slot],
    ) -> dict[str, DeliveryResult]:
        route: Route | DeliveryResult
        if self.relay:
            host, port = self.relay
            modes: dict[str, TLSMode] = {"starttls": "verify", "implicit": "implicit", "none": "none"}
            route = Route((host,), modes[self.relay_tls])
        else:
            port = self.mx_port
            route = await mx_route(self.resolver, domain, own_hostname=self.hostname, mta_sts=self.mta_sts)
        if isinstance(route, DeliveryResult):
            return dict.fromkeys(rcpts, route)
        mode = route.tls
        failures: list[DeliveryResult] = []
        tried = 0
        for host in route.hosts:
            try:
                addresses = await host_addresses(self.resolver, host, source_address=self.source_address)
            except DNSTempError as exc:
                failures.append(_temp(451, "4.4.3", f"address lookup for {host} failed: {exc}", host))
                continue
            if not addresses:
                failures.append(_temp(451, "4.4.4", f"{host} has no usable address", host))
                continue
            for address in addresses:
                if tried >= MAX_ADDRESSES:
                    break
                tried += 1
                slot = slots.setdefault((address, port), _Slot())
                try:
                    async with slot.lock:
                        return await self._via(slot, host, address, port, mode, domain, rcpts, sender, data)
                except _TryNext as exc:
                    log.info("delivery for %s: %s [%s]: %s", domain, host, address, exc.result.diagnostic)
                    failures.append(exc.result)
        if not failures:
            return dict.fromkeys(rcpts, _temp(451, "4.4.4", f"no address to deliver to for {domain}"))
        last = failures[-1]
        # Only when every host refused us outright is the failure permanent.
        if all(f.kind == "perm" for f in failures):
            return dict.fromkeys(rcpts, last)
        if last.kind == "perm":
            last = next(f for f in reversed(failures) if f.kind == "temp")
        return dict.fromkeys(rcpts, last)

    # ----------------------------------------------------------------- one address

    async def _via(
        self, slot: _Slot, host: str, address: str, port: int, mode: TLSMode,
        domain: str, rcpts: dict[str, str], sender: str, data: bytes,
    ) -> dict[str, DeliveryResult]:
        conn = slot.conn
        if conn is not None and not _reusable(conn, host, mode):
            await self._close(conn)
            conn = slot.conn = None
        if conn is None:
            if mode == "testing":
                try:
                    conn = await self._open(host, address, port, "verify")
                except _TryNext as exc:
                    if not exc.tls_failure:
                        raise
                    log.warning("MTA-STS testing %s: TLS to %s would have failed: %s",
                                domain, host, exc.result.diagnostic)
                    conn = await self._open(host, address, port, "opportunistic")
            else:
                conn = await self._open(host, address, port, mode)
            slot.conn = conn
        try:
            return await self._transaction(conn, host, rcpts, sender, data)
        finally:
            if not conn.smtp.is_connected:
                slot.conn = None

    async def _open(self, host: str, address: str, port: int, mode: TLSMode) -> _Conn:
        where = f"{host}[{address}]:{port}"
        sock = await self._connect_socket(host, address, port)
        implicit = mode == "implicit"
        smtp = aiosmtplib.SMTP(
            hostname=host, sock=sock, local_hostname=self.hostname, timeout=self.command_timeout,
            use_tls=implicit, start_tls=False, tls_context=self._verified() if implicit else None,
        )
        verified_for: str | None = host if implicit else None
        try:
            try:
                await smtp.connect(timeout=self.connect_timeout)
            except aiosmtplib.SMTPResponseException as exc:
                raise _TryNext(_from_reply(exc.code, f"greeting: {exc.message}", host)) from None
            await self._ehlo(smtp)
            if mode in ("verify", "opportunistic"):
                if smtp.supports_extension("starttls"):
                    await self._starttls(smtp, host, verify=mode == "verify")
                    verified_for = host if mode == "verify" else None
                    await self._ehlo(smtp)
                elif mode == "verify":
                    raise _TryNext(_temp(451, "4.7.4", f"{where} does not offer STARTTLS, which is required",
                                        host), tls_failure=True)
            if self.relay and self.relay_username:
                if smtp.get_transport_info("sslcontext") is None:
                    raise _TryNext(_temp(451, "4.7.0", "refusing to send relay credentials without TLS",
                                         host))
                try:
                    await smtp.login(self.relay_username, self.relay_password)
                except aiosmtplib.SMTPResponseException as exc:
                    raise _TryNext(_temp(451, "4.7.8", f"relay AUTH failed: {exc.code} {exc.message}",
                                        host)) from None
        except _TryNext:
            smtp.close()
            raise
        except ssl.SSLError as exc:
            smtp.close()
            failed = _temp(451, "4.7.5", f"TLS with {where} failed: {exc}", host)
            raise _TryNext(failed, tls_failure=True) from None
        except (aiosmtplib.SMTPException, OSError, TimeoutError) as exc:
            smtp.close()
            failed = _temp(451, "4.4.2", f"session with {where} failed: {_describe(exc)}", host)
            raise _TryNext(failed) from None
        except BaseException:
            smtp.close()
            raise
        return _Conn(smtp, host, verified_for)

    async def _connect_socket(self, host: str, address: str, port: int) -> socket.socket:
        family = socket.AF_INET6 if ":" in address else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_STREAM)
        sock.setblocking(False)
        try:
            if self.source_address:
                sock.bind((self.source_address, 0))
            async with asyncio.timeout(self.connect_timeout):
                await asyncio.get_running_loop().sock_connect(sock, (address, port))
        except (OSError, TimeoutError) as exc:
            sock.close()
            reason = "timed out" if isinstance(exc, TimeoutError) else str(exc)
            raise _TryNext(_temp(451, "4.4.1", f"cannot connect to {host}[{address}]:{port}: {reason}",
                                host)) from None
        except BaseException:
            sock.close()
            raise
        return sock

    async def _ehlo(self, smtp: aiosmtplib.SMTP) -> None:
        try:
            await smtp.ehlo(hostname=self.hostname)
        except aiosmtplib.SMTPHeloError as exc:
            if not smtp.is_connected or 400 <= exc.code < 500:
                raise
            await smtp.helo(hostname=self.hostname)  # a pre-ESMTP server

    async def _starttls(self, smtp: aiosmtplib.SMTP, host: str, *, verify: bool) -> None:
        """STARTTLS, refusing the session if the server sent anything after its 220.

        aiosmtplib already discards bytes buffered behind the 220 (RFC 3207 4.2); we go
        further and abort, because a server that does it is broken or tampered with. The
        check runs right after the 220 is parsed and before aiosmtplib clears its buffer:
        ``read_response`` is looked up on the instance, so wrapping it works on asyncio
        and on uvloop alike (uvloop calls ``data_received`` through a cached reference,
        which a spy on it never sees). ``_buffer`` is aiosmtplib's (pinned to 5.x).
        """
        protocol = smtp.protocol
        assert protocol is not None
        leftover = bytearray()
        original = protocol.read_response

        async def read_and_check(*args: Any, **kwargs: Any) -> Any:
            response = await original(*args, **kwargs)
            leftover.extend(getattr(protocol, "_buffer", b""))
            return response

        # Wrapped on this one connection: aiosmtplib has no hook for it.
        protocol.read_response = read_and_check  # type: ignore[method-assign]  # see above
        try:
            await smtp.starttls(
                server_hostname=host, timeout=self.command_timeout,
                tls_context=self._verified() if verify else self._opportunistic(),
            )
        finally:
            with contextlib.suppress(AttributeError):
                del protocol.read_response
        if leftover:
            raise _TryNext(_temp(451, "4.7.0", f"{host} sent data after its STARTTLS reply "
                                "(possible response injection); session aborted", host), tls_failure=True)

    # ----------------------------------------------------------------- one transaction

    async def _transaction(
        self, conn: _Conn, host: str, rcpts: dict[str, str], sender: str, data: bytes
    ) -> dict[str, DeliveryResult]:
        smtp = conn.smtp
        results: dict[str, DeliveryResult] = {}
        try:
            if conn.dirty:
                await smtp.execute_command(b"RSET", timeout=self.command_timeout)
                conn.dirty = False
            size_limit = smtp.esmtp_extensions.get("size", "")
            if size_limit.isdigit() and 0 < int(size_limit) < len(data):
                return dict.fromkeys(rcpts, _perm(552, "5.3.4", f"message of {len(data)} bytes exceeds "
                                                 f"{host}'s limit of {size_limit}", host))
            utf8 = smtp.supports_extension("smtputf8")
            if not sender.isascii() and not utf8:
                return dict.fromkeys(rcpts, _perm(553, "5.6.7", f"{host} does not support SMTPUTF8", host))
            todo: dict[str, str] = {}
            for rcpt, canonical in rcpts.items():
                if canonical.isascii() or utf8:
                    todo[rcpt] = canonical
                else:
                    results[rcpt] = _perm(553, "5.6.7", f"{host} does not support SMTPUTF8", host)
            if not todo:
                return results
            params = []
            if smtp.supports_extension("size"):
                params.append(b"SIZE=%d" % len(data))
            if smtp.supports_extension("8bitmime") and not data.isascii():
                params.append(b"BODY=8BITMIME")
            needs_utf8 = not (sender.isascii() and all(c.isascii() for c in todo.values()))
            if needs_utf8:
                params.append(b"SMTPUTF8")
            conn.dirty = True
            reply = await smtp.execute_command(b"MAIL", b"FROM:<%s>" % sender.encode(), *params,
                                               timeout=self.command_timeout)
            if reply.code != 250:
                result = _from_reply(reply.code, reply.message, host)
                if result.kind == "perm":
                    return {**results, **dict.fromkeys(todo, result)}
                raise _TryNext(result)
            accepted: list[str] = []
            for rcpt, canonical in todo.items():
                reply = await smtp.execute_command(b"RCPT", b"TO:<%s>" % canonical.encode(),
                                                   timeout=self.command_timeout)
                if reply.code in (250, 251):
                    accepted.append(rcpt)
                else:
                    results[rcpt] = _from_reply(reply.code, reply.message, host)
            if not accepted:
                return results
        except aiosmtplib.SMTPException as exc:
            # Nothing was handed over yet: another address may do better.
            smtp.close()
            raise _TryNext(_temp(451, "4.4.2", f"{host}: {_describe(exc)} before DATA", host)) from None
        except (OSError, TimeoutError) as exc:
            smtp.close()
            raise _TryNext(_temp(451, "4.4.2", f"{host}: {_describe(exc)} before DATA", host)) from None
        try:
            reply = await self._data(smtp, data)
            final = _from_reply(reply.code, reply.message, host)
            conn.dirty = False
        except aiosmtplib.SMTPResponseException as exc:
            final = _from_reply(exc.code, exc.message, host)
            if final.kind == "sent":  # a 2xx where 354 was due is still not an acceptance
                final = _temp(451, "4.5.0", f"{host}: unexpected reply {exc.code} to DATA", host)
        except (aiosmtplib.SMTPException, OSError, TimeoutError) as exc:
            # The message may or may not have arrived: retrying risks a duplicate, which
            # RFC 5321 §6.1 prefers to a loss.
            smtp.close()
            final = _temp(451, "4.4.2", f"{host}: {_describe(exc)} during DATA", host)
        for rcpt in accepted:
            results[rcpt] = final
        return results

    async def _data(self, smtp: aiosmtplib.SMTP, data: bytes) -> aiosmtplib.SMTPResponse:
        """DATA with our own dot-stuffing (see ``wire_data``); raises like ``SMTP.data()``."""
        payload = wire_data(data) if len(data) < _THREAD_BYTES else await asyncio.to_thread(wire_data, data)
        reply = await smtp.execute_command(b"DATA", timeout=self.command_timeout)
        if reply.code != 354:
            raise aiosmtplib.SMTPDataError(reply.code, reply.message)
        protocol = smtp.protocol
        if protocol is None:
            raise aiosmtplib.SMTPServerDisconnected("connection lost")
        # No await between write() and read_response(): the reply cannot slip past.
        protocol.write(payload)
        try:
            return await protocol.read_response(timeout=self.data_timeout)
        except (aiosmtplib.SMTPServerDisconnected, aiosmtplib.SMTPTimeoutError):
            smtp.close()
            raise

    # ----------------------------------------------------------------- helpers

    async def _close(self, conn: _Conn | None) -> None:
        if conn is None:
            return
        if conn.smtp.is_connected:
            with contextlib.suppress(Exception):
                await conn.smtp.quit(timeout=_QUIT_TIMEOUT)
        conn.smtp.close()

    def _verified(self) -> ssl.SSLContext:
        if self._verified_ctx is None:
            ctx = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=self.ca_file)
            ctx.minimum_version = ssl.TLSVersion.TLSv1_2
            self._verified_ctx = ctx
        return self._verified_ctx

    def _opportunistic(self) -> ssl.SSLContext:
        if self._opportunistic_ctx is None:
            # RFC 7435: encrypt with whatever the server has, self-signed or expired;
            # TLS 1.0+ because a weak cipher still beats plaintext for passive observers.
            ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
            ctx.check_hostname = False
            ctx.verify_mode = ssl.CERT_NONE
            self._opportunistic_ctx = ctx
        return self._opportunistic_ctx


def _reusable(conn: _Conn, host: str, mode: TLSMode) -> bool:
    if not conn.smtp.is_connected:
        return False
    if mode in ("verify", "testing", "implicit"):
        return conn.verified_for == host
    return True


def _describe(exc: BaseException) -> str:
    if isinstance(exc, TimeoutError):
        return "timed out"
    if isinstance(exc, aiosmtplib.SMTPServerDisconnected):
        return "connection lost"
    return f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__


def _split_hostport(spec: str) -> tuple[str, int]:
    """"smtp.example.net:587" / "[2001:db8::1]:465" -> (host, port); ValueError otherwise."""
    text = spec.strip()
    if text.startswith("["):
        host, _, rest = text[1:].partition("]")
        port_text = rest[1:] if rest.startswith(":") else ""
    else:
        host, _, port_text = text.rpartition(":")
    if not host or not port_text.isdigit() or not 0 < int(port_text) < 65536:
        raise ValueError(f"relay must be host:port, not {spec!r}")
    return host.lower(), int(port_text)
