"""Asynchronous DNS lookups with a TTL-respecting cache, for every check pymaild makes.

One ``Resolver`` serves the whole daemon: SPF, DKIM, DMARC, MX lookups. It wraps
dnspython's asyncio resolver, so no lookup blocks the event loop, and it keeps a small
LRU cache that honours record TTLs (and remembers NXDOMAIN/NODATA briefly), so the
many lookups about one sending domain during a burst of mail are asked only once.

Libraries that insist on synchronous DNS (pyspf, dkimpy) run in worker threads and
reach this same resolver through ``query_from_thread``: one cache, one set of
nameservers (in tests: the loopback test server, never the system resolver).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import functools
import ipaddress
import logging
import threading
import time
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TypeVar

import dns.asyncresolver
import dns.exception
import dns.name
import dns.nameserver
import dns.rdata
import dns.rdatatype
import dns.resolver
import dns.reversename
from dns.rdtypes.IN.A import A
from dns.rdtypes.IN.AAAA import AAAA
from dns.rdtypes.mxbase import MXBase
from dns.rdtypes.nsbase import NSBase
from dns.rdtypes.txtbase import TXTBase

log = logging.getLogger(__name__)

# EDNS0 with the DNS-flag-day 2020 buffer size: big TXT answers (DKIM keys) fit in one
# UDP datagram more often; larger ones come back truncated and dnspython retries on TCP.
_EDNS_PAYLOAD = 1232


class DNSError(Exception):
    """Base class of the resolver's errors."""


class DNSTempError(DNSError):
    """The answer could not be had now (SERVFAIL, timeout, no reachable nameserver).

    Callers must treat this as "try again later", never as "no such record".
    """


class NameserverSyntaxError(DNSError, ValueError):
    """A configured nameserver is not "host", "host:port", "[v6]" or "[v6]:port"."""


@dataclass(frozen=True, slots=True)
class DNSAnswer:
    """The outcome of one lookup: records (possibly none) and whether the name exists."""

    name: str
    rdtype: str
    records: tuple[dns.rdata.Rdata, ...]
    nxdomain: bool = False  # True: the name does not exist; False + no records: NODATA


def parse_nameserver(spec: str) -> tuple[str, int]:
    """Split "127.0.0.1:5353", "[::1]:53", "::1" or "9.9.9.9" into (address, port).

    >>> parse_nameserver("[::1]:5353")
    ('::1', 5353)
    """
    text = spec.strip()
    host, port = text, 53
    if text.startswith("["):
        end = text.find("]")
        if end < 0:
            raise NameserverSyntaxError(f"nameserver {spec!r}: missing ']'")
        host, rest = text[1:end], text[end + 1 :]
        if rest:
            if not rest.startswith(":"):
                raise NameserverSyntaxError(f"nameserver {spec!r}: junk after ']'")
            port = _port(spec, rest[1:])
    elif text.count(":") == 1:
        host, port_text = text.split(":")
        port = _port(spec, port_text)
    # More than one colon without brackets: a bare IPv6 address, default port.
    try:
        ipaddress.ip_address(host)
    except ValueError:
        raise NameserverSyntaxError(f"nameserver {spec!r}: {host!r} is not an IP address") from None
    return host, port


def _port(spec: str, text: str) -> int:
    if not text.isdigit() or not 0 < int(text) < 65536:
        raise NameserverSyntaxError(f"nameserver {spec!r}: bad port {text!r}")
    return int(text)


def _to_name(name: str | dns.name.Name) -> dns.name.Name:
    if isinstance(name, dns.name.Name):
        return name
    # Absolute always: we never want resolv.conf search domains appended.
    return dns.name.from_text(name, origin=dns.name.root)


class _TTLCache:
    """A bounded LRU map of (name, type) -> (expiry, answer); thread-safe."""

    def __init__(self, size: int) -> None:
        self.size = size
        self._data: OrderedDict[tuple[dns.name.Name, int], tuple[float, DNSAnswer]] = OrderedDict()
        self._lock = threading.Lock()  # the bridge lets several loops/threads share us

    def get(self, key: tuple[dns.name.Name, int]) -> DNSAnswer | None:
        with self._lock:
            entry = self._data.get(key)
            if entry is None:
                return None
            expires, answer = entry
            if expires <= time.monotonic():
                del self._data[key]
                return None
            self._data.move_to_end(key)
            return answer

    def put(self, key: tuple[dns.name.Name, int], answer: DNSAnswer, ttl: float) -> None:
        if ttl <= 0 or self.size <= 0:
            return
        with self._lock:
            self._data[key] = (time.monotonic() + ttl, answer)
            self._data.move_to_end(key)
            while len(self._data) > self.size:
                self._data.popitem(last=False)

    def clear(self) -> None:
        with self._lock:
            self._data.clear()

    def __len__(self) -> int:
        return len(self._data)


class Resolver:
    """Async DNS with a cache. ``nameservers`` empty or None: the system's resolv.conf."""

    def __init__(
        self,
        nameservers: Sequence[str] | None = None,
        *,
        lifetime: float = 10.0,
        attempt_timeout: float = 2.0,
        cache_size: int = 4096,
        max_ttl: float = 3600.0,
        negative_ttl: float = 30.0,
    ) -> None:
        if nameservers:
            self._resolver = dns.asyncresolver.Resolver(configure=False)
            self._resolver.nameservers = [
                dns.nameserver.Do53Nameserver(*parse_nameserver(ns)) for ns in nameservers
            ]
        else:
            # Reads /etc/resolv.conf once, here; never used by tests (they pass nameservers).
            try:
                self._resolver = dns.asyncresolver.Resolver(configure=True)
            except dns.resolver.NoResolverConfiguration:
                # No usable resolv.conf: start anyway; every lookup then raises
                # DNSTempError, which is what the operator should see in the logs.
                self._resolver = dns.asyncresolver.Resolver(configure=False)
        self._resolver.use_edns(0, 0, _EDNS_PAYLOAD)
        self._resolver.lifetime = lifetime
        self._resolver.timeout = min(attempt_timeout, lifetime)
        self._resolver.cache = None  # ours below knows negative answers and is bounded
        self.lifetime = lifetime
        self.max_ttl = max_ttl
        self.negative_ttl = negative_ttl
        self.cache = _TTLCache(cache_size)
        self.upstream_queries = 0  # lookups that went to the network (cache misses)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._inflight: dict[tuple[dns.name.Name, int], asyncio.Task[DNSAnswer]] = {}

    @property
    def nameservers(self) -> list[str]:
        return [str(ns) for ns in self._resolver.nameservers]

    # ----------------------------------------------------------------- core

    async def lookup(
        self,
        name: str | dns.name.Name,
        rdtype: str | int,
        *,
        lifetime: float | None = None,
    ) -> DNSAnswer:
        """Records of one type, following CNAMEs; raises DNSTempError only."""
        self._loop = loop = asyncio.get_running_loop()
        rdt = dns.rdatatype.RdataType.make(rdtype)
        try:
            qname = _to_name(name)
        except dns.exception.DNSException as exc:
            # An impossible name (empty label, label > 63 octets) cannot exist: answer
            # like NXDOMAIN without asking anyone. Callers get "not found", not a crash.
            log.debug("invalid DNS name %r: %s", name, exc)
            return DNSAnswer(str(name), rdt.name, (), nxdomain=True)
        key = (qname, int(rdt))
        cached = self.cache.get(key)
        if cached is not None:
            return cached
        # Coalesce: twenty messages from one domain arriving together ask once, not
        # twenty times. Tasks belong to one loop, so only same-loop callers share.
        task = self._inflight.get(key)
        if task is None or task.get_loop() is not loop:
            task = loop.create_task(self._ask_and_store(key, qname, rdt, lifetime))
            self._inflight[key] = task
            task.add_done_callback(functools.partial(self._landed, key))
        # shield: one caller giving up (timeout, cancel) must not cancel the others' lookup.
        return await asyncio.shield(task)

    async def _ask_and_store(
        self,
        key: tuple[dns.name.Name, int],
        qname: dns.name.Name,
        rdt: dns.rdatatype.RdataType,
        lifetime: float | None,
    ) -> DNSAnswer:
        answer, ttl = await self._ask(qname, rdt, lifetime)
        self.cache.put(key, answer, ttl)
        return answer

    def _landed(self, key: tuple[dns.name.Name, int], task: asyncio.Task[DNSAnswer]) -> None:
        if self._inflight.get(key) is task:
            del self._inflight[key]
        if not task.cancelled():
            task.exception()  # mark retrieved: every waiter may have gone away

    async def _ask(
        self, qname: dns.name.Name, rdt: dns.rdatatype.RdataType, lifetime: float | None
    ) -> tuple[DNSAnswer, float]:
        self.upstream_queries += 1
        text = qname.to_text()
        try:
            result = await self._resolver.resolve(
                qname,
                rdt,
                raise_on_no_answer=False,
                lifetime=self.lifetime if lifetime is None else lifetime,
                search=False,
            )
        except dns.resolver.NXDOMAIN:
            return DNSAnswer(text, rdt.name, (), nxdomain=True), self.negative_ttl
        except dns.resolver.NoNameservers as exc:
            # Every server answered SERVFAIL/REFUSED or was unreachable.
            raise DNSTempError(f"{text}/{rdt.name}: no server could answer ({exc})") from exc
        except dns.exception.Timeout as exc:
            raise DNSTempError(f"{text}/{rdt.name}: timed out") from exc
        except dns.resolver.NoResolverConfiguration as exc:
            raise DNSTempError("no nameservers configured") from exc
        except dns.exception.DNSException as exc:
            # Malformed replies, YXDOMAIN and the like: nothing we can conclude from.
            raise DNSTempError(f"{text}/{rdt.name}: {type(exc).__name__}: {exc}") from exc
        if result.rrset is None:
            return DNSAnswer(text, rdt.name, ()), self.negative_ttl
        # Answer.expiration is the smallest TTL along the CNAME chain.
        ttl = min(max(result.expiration - time.time(), 0.0), self.max_ttl)
        return DNSAnswer(text, rdt.name, tuple(result.rrset)), ttl

    async def query(
        self, name: str | dns.name.Name, rdtype: str | int, *, lifetime: float | None = None
    ) -> list[dns.rdata.Rdata]:
        """Records of one type; [] for NXDOMAIN and NODATA alike."""
        return list((await self.lookup(name, rdtype, lifetime=lifetime)).records)

    # ----------------------------------------------------------------- typed helpers

    async def txt(self, name: str) -> list[str]:
        """Each TXT record's character-strings joined, as text."""
        return [_txt_text(r) for r in await self.query(name, "TXT")]

    async def mx(self, name: str) -> list[tuple[int, str]] | None:
        """(preference, exchange) sorted by preference; None only when the name does not
        exist (so callers can tell "no MX, use the A record" from "no such domain").
        A null MX (RFC 7505) comes back as (0, ".")."""
        answer = await self.lookup(name, "MX")
        if answer.nxdomain:
            return None
        pairs = [(r.preference, r.exchange.to_text(omit_final_dot=True))
                 for r in of_type(answer.records, MXBase)]
        return sorted(pairs)

    async def a(self, name: str) -> list[str]:
        return [r.address for r in of_type(await self.query(name, "A"), A)]

    async def aaaa(self, name: str) -> list[str]:
        return [r.address for r in of_type(await self.query(name, "AAAA"), AAAA)]

    async def ptr(self, ip: str) -> list[str]:
        """Names for an address, without the final dot."""
        rev = dns.reversename.from_address(ip)
        return [r.target.to_text(omit_final_dot=True) for r in of_type(await self.query(rev, "PTR"), NSBase)]

    # ----------------------------------------------------------------- thread bridge

    def query_from_thread(
        self,
        name: str | dns.name.Name,
        rdtype: str | int,
        timeout: float,
        *,
        loop: asyncio.AbstractEventLoop | None = None,
    ) -> DNSAnswer:
        """Synchronous lookup for code running in a worker thread.

        The lookup runs on the event loop (``loop``, else the one this resolver last ran
        on), so the thread shares the cache and nameservers. Raises DNSTempError on
        timeout, DNSError if called from the loop's own thread (that would deadlock).
        """
        target = loop or self._loop
        if target is None or target.is_closed():
            raise DNSTempError("no event loop to run the DNS lookup on")
        try:
            running = asyncio.get_running_loop()
        except RuntimeError:
            running = None
        if running is target:
            raise DNSError("query_from_thread called on the event loop thread")
        lifetime = max(min(timeout, self.lifetime), 0.001)
        try:
            future = asyncio.run_coroutine_threadsafe(self.lookup(name, rdtype, lifetime=lifetime), target)
        except RuntimeError as exc:  # loop closed between the check and the call
            raise DNSTempError(f"event loop unavailable: {exc}") from exc
        try:
            # A little slack over the DNS lifetime so the resolver's own timeout, with
            # its clearer message, normally fires first.
            return future.result(lifetime + 0.5)
        except concurrent.futures.TimeoutError as exc:
            future.cancel()
            raise DNSTempError(f"{name}/{rdtype}: timed out") from exc
        except concurrent.futures.CancelledError as exc:
            raise DNSTempError(f"{name}/{rdtype}: lookup cancelled") from exc


_R = TypeVar("_R", bound=dns.rdata.Rdata)


def of_type(records: Sequence[dns.rdata.Rdata], cls: type[_R]) -> list[_R]:
    """The records of one rdata class (dnspython gives each type its class: ``MXBase``
    for MX, ``NSBase`` for PTR, ``TXTBase`` for TXT): typed access to their fields. An
    answer holds only the asked type, so nothing is dropped in practice."""
    return [r for r in records if isinstance(r, cls)]


def txt_strings(rdata: dns.rdata.Rdata) -> bytes:
    """The character-strings of a TXT record joined (RFC 7208 3.3, RFC 6376 3.6.2.2);
    b"" for a record of another type."""
    return b"".join(rdata.strings) if isinstance(rdata, TXTBase) else b""


def _txt_text(rdata: dns.rdata.Rdata) -> str:
    raw = txt_strings(rdata)
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        # latin-1 maps every byte, so nothing is lost and nothing raises.
        return raw.decode("latin-1")
