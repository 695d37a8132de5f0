"""A small authoritative DNS server on loopback that answers from a mutable dict.

Tests point pymaild's resolver (``[dns] nameservers``) at it, so no test ever asks the
system resolver or the Internet. It speaks UDP and TCP on the same random port, sets the
TC bit when an answer does not fit the client's UDP size (clients then retry over TCP,
like a real server does for a 4096-bit DKIM key), and runs in background threads so it
serves sync tests, async tests and worker threads alike, whatever event loop they use.

Answers are built with dnspython, so what goes over the wire is real DNS.
"""

from __future__ import annotations

import contextlib
import socket
import socketserver
import struct
import threading
import time
import traceback
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from types import TracebackType

import dns.exception
import dns.flags
import dns.message
import dns.name
import dns.rcode
import dns.rdata
import dns.rdataclass
import dns.rdatatype
import dns.rdtypes.ANY.TXT
import dns.reversename
import dns.rrset

_IN = dns.rdataclass.IN
_MAX_CNAME_CHAIN = 8  # enough for tests; a loop must not spin forever
_PLAIN_UDP_LIMIT = 512  # RFC 1035 size for clients that send no EDNS


@dataclass(frozen=True, slots=True)
class Query:
    """One question the server received, recorded for assertions about caching."""

    name: str  # lowercase, absolute ("example.com.")
    rdtype: str  # "TXT", "MX", ...
    proto: str  # "udp" or "tcp"
    at: float  # time.monotonic() when it arrived


def _name(name: str | dns.name.Name) -> dns.name.Name:
    if isinstance(name, dns.name.Name):
        return name
    # Relative names are taken as absolute: tests write "example.com" and mean the FQDN.
    return dns.name.from_text(name, origin=dns.name.root)


def _rdtype(rdtype: str | int) -> dns.rdatatype.RdataType:
    return dns.rdatatype.RdataType.make(rdtype)


def _txt_rdata(value: str | bytes | Iterable[str | bytes]) -> dns.rdata.Rdata:
    """A TXT rdata; one long value is split into 255-byte character-strings (RFC 7208 §3.3)."""
    if isinstance(value, str | bytes):
        raw = value.encode() if isinstance(value, str) else value
        strings = [raw[i : i + 255] for i in range(0, len(raw), 255)] or [b""]
    else:
        strings = [s.encode() if isinstance(s, str) else s for s in value]
    return dns.rdtypes.ANY.TXT.TXT(_IN, dns.rdatatype.TXT, strings)


def _make_rdata(
    rdtype: dns.rdatatype.RdataType, value: str | bytes | Iterable[str | bytes]
) -> dns.rdata.Rdata:
    if rdtype == dns.rdatatype.TXT:
        return _txt_rdata(value)
    if not isinstance(value, str):
        raise TypeError(f"{rdtype.name} value must be a str in zone-file syntax")
    # origin=root: "10 mx.example.com" without the final dot still means the FQDN.
    return dns.rdata.from_text(_IN, rdtype, value, origin=dns.name.root, relativize=False)


class DNSServer:
    """Authoritative answers from ``records``; NXDOMAIN for unknown names.

    >>> with DNSServer() as srv:
    ...     srv.add("example.com.", "TXT", "v=spf1 ip4:127.0.0.1 -all")
    ...     nameserver = srv.nameserver   # "127.0.0.1:PORT"
    """

    def __init__(
        self,
        host: str = "127.0.0.1",
        *,
        default_ttl: int = 300,
        udp_limit: int | None = None,
    ) -> None:
        self.host = host
        self.port = 0
        self.default_ttl = default_ttl
        # Caps the UDP answer size below what the client offers, to force TC + TCP retry.
        self.udp_limit = udp_limit
        self.queries: list[Query] = []
        self._lock = threading.Lock()
        self._records: dict[tuple[dns.name.Name, dns.rdatatype.RdataType], list[dns.rdata.Rdata]]
        self._records = {}
        self._ttls: dict[tuple[dns.name.Name, dns.rdatatype.RdataType], int] = {}
        self._servfail: set[dns.name.Name] = set()
        self._drop: set[dns.name.Name] = set()
        self._delay: dict[dns.name.Name, float] = {}
        self._udp: socketserver.ThreadingUDPServer | None = None
        self._tcp: socketserver.ThreadingTCPServer | None = None
        self._threads: list[threading.Thread] = []

    # ----------------------------------------------------------------- lifecycle

    def start(self) -> DNSServer:
        udp, tcp = self._bind_pair()
        self._udp, self._tcp = udp, tcp
        self.port = udp.server_address[1]
        for srv in (udp, tcp):
            t = threading.Thread(
                target=srv.serve_forever,
                kwargs={"poll_interval": 0.05},
                name=f"test-dns-{type(srv).__name__}",
                daemon=True,
            )
            t.start()
            self._threads.append(t)
        return self

    def stop(self) -> None:
        for srv in (self._udp, self._tcp):
            if srv is not None:
                srv.shutdown()
                srv.server_close()
        for t in self._threads:
            t.join(timeout=5)
        self._threads.clear()
        self._udp = self._tcp = None

    def __enter__(self) -> DNSServer:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def _bind_pair(self) -> tuple[socketserver.ThreadingUDPServer, socketserver.ThreadingTCPServer]:
        """UDP and TCP on one free port: the OS picks it for UDP, TCP may find it taken."""
        server = self
        for _ in range(50):
            udp = _UDPServer((self.host, 0), _UDPHandler, server)
            port = udp.server_address[1]
            try:
                tcp = _TCPServer((self.host, port), _TCPHandler, server)
            except OSError:
                udp.server_close()
                continue
            return udp, tcp
        raise OSError("no free port for both UDP and TCP on " + self.host)

    @property
    def nameserver(self) -> str:
        """The "host:port" string pymaild's config and Resolver take."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{host}:{self.port}"

    # ----------------------------------------------------------------- records

    def add(
        self,
        name: str,
        rdtype: str,
        value: str | bytes | Iterable[str | bytes],
        *,
        ttl: int | None = None,
    ) -> None:
        """Add one record. TXT takes a str (split at 255 bytes) or a list of strings."""
        key = (_name(name), _rdtype(rdtype))
        rdata = _make_rdata(key[1], value)
        with self._lock:
            self._records.setdefault(key, []).append(rdata)
            if ttl is not None or key not in self._ttls:
                self._ttls[key] = self.default_ttl if ttl is None else ttl

    def set(
        self,
        name: str,
        rdtype: str,
        values: Iterable[str | bytes | Iterable[str | bytes]],
        *,
        ttl: int | None = None,
    ) -> None:
        """Replace all records of that name and type."""
        self.remove(name, rdtype)
        for value in values:
            self.add(name, rdtype, value, ttl=ttl)

    def add_ptr(self, ip: str, target: str, *, ttl: int | None = None) -> None:
        self.add(dns.reversename.from_address(ip).to_text(), "PTR", target, ttl=ttl)

    def remove(self, name: str, rdtype: str | None = None) -> None:
        """Remove the name's records of one type, or all of them."""
        n = _name(name)
        with self._lock:
            for key in list(self._records):
                if key[0] == n and (rdtype is None or key[1] == _rdtype(rdtype)):
                    del self._records[key]
                    self._ttls.pop(key, None)

    def clear(self) -> None:
        """Forget every record, fault and recorded query."""
        with self._lock:
            self._records.clear()
            self._ttls.clear()
            self._servfail.clear()
            self._drop.clear()
            self._delay.clear()
            self.queries.clear()

    # ----------------------------------------------------------------- faults

    def servfail(self, name: str) -> None:
        """Answer SERVFAIL for every question about this name."""
        with self._lock:
            self._servfail.add(_name(name))

    def drop(self, name: str) -> None:
        """Never answer questions about this name: the client times out."""
        with self._lock:
            self._drop.add(_name(name))

    def delay(self, name: str, seconds: float) -> None:
        """Answer questions about this name only after a pause (per request thread)."""
        with self._lock:
            self._delay[_name(name)] = seconds

    def heal(self, name: str | None = None) -> None:
        """Remove injected faults for one name, or for all names."""
        with self._lock:
            if name is None:
                self._servfail.clear()
                self._drop.clear()
                self._delay.clear()
                return
            n = _name(name)
            self._servfail.discard(n)
            self._drop.discard(n)
            self._delay.pop(n, None)

    # ----------------------------------------------------------------- assertions

    def count(self, name: str, rdtype: str | None = None) -> int:
        """How many questions about name (and type) arrived, over UDP and TCP together."""
        wanted = _name(name).to_text().lower()
        with self._lock:
            return sum(
                1 for q in self.queries if q.name == wanted and (rdtype is None or q.rdtype == rdtype.upper())
            )

    def reset_queries(self) -> None:
        with self._lock:
            self.queries.clear()

    # ----------------------------------------------------------------- answering

    def handle_wire(self, wire: bytes, proto: str) -> bytes | None:
        """Answer one DNS message; None means send nothing."""
        try:
            query = dns.message.from_wire(wire)
        except dns.exception.DNSException:
            return None  # garbage: a real server would drop it too
        if len(query.question) != 1:
            response = dns.message.make_response(query)
            response.set_rcode(dns.rcode.FORMERR)
            return response.to_wire()
        question = query.question[0]
        qname, qtype = question.name, dns.rdatatype.RdataType.make(question.rdtype)
        with self._lock:
            self.queries.append(Query(qname.to_text().lower(), qtype.name, proto, time.monotonic()))
            dropped = qname in self._drop
            pause = self._delay.get(qname, 0.0)
            failing = qname in self._servfail
        if dropped:
            return None
        if pause:
            time.sleep(pause)  # a slow server on purpose (delay()): what the test is about
        response = dns.message.make_response(query)
        response.flags |= dns.flags.AA
        if failing:
            response.set_rcode(dns.rcode.SERVFAIL)
            return response.to_wire()
        try:
            self._fill(response, qname, qtype)
            if proto == "tcp":
                # Explicit: to_wire() would otherwise cap at the EDNS size the query offered.
                return response.to_wire(max_size=65535)
            return self._udp_wire(query, response)
        except Exception:
            # A bug in a test's data must show up, not look like a network timeout.
            traceback.print_exc()
            failed = dns.message.make_response(query)
            failed.set_rcode(dns.rcode.SERVFAIL)
            return failed.to_wire()

    def _fill(
        self, response: dns.message.Message, qname: dns.name.Name, qtype: dns.rdatatype.RdataType
    ) -> None:
        with self._lock:
            current = qname
            for _ in range(_MAX_CNAME_CHAIN):
                rdatas = self._records.get((current, qtype))
                if rdatas:
                    self._add_rrset(response, current, qtype, rdatas)
                    return
                cname = self._records.get((current, dns.rdatatype.CNAME))
                if cname and qtype != dns.rdatatype.CNAME:
                    self._add_rrset(response, current, dns.rdatatype.CNAME, cname)
                    current = cname[0].target  # type: ignore[attr-defined]
                    continue
                if not self._exists(current):
                    response.set_rcode(dns.rcode.NXDOMAIN)
                return  # NOERROR with an empty answer: NODATA

    def _exists(self, name: dns.name.Name) -> bool:
        # A name exists if it owns records or is an empty non-terminal above one that does.
        return any(owner.is_subdomain(name) for owner, _ in self._records)

    def _add_rrset(
        self,
        response: dns.message.Message,
        owner: dns.name.Name,
        rdtype: dns.rdatatype.RdataType,
        rdatas: list[dns.rdata.Rdata],
    ) -> None:
        ttl = self._ttls.get((owner, rdtype), self.default_ttl)
        rrset = dns.rrset.from_rdata_list(owner, ttl, rdatas)
        response.answer.append(rrset)

    def _udp_wire(self, query: dns.message.Message, response: dns.message.Message) -> bytes:
        limit = max(_PLAIN_UDP_LIMIT, query.payload) if query.edns >= 0 else _PLAIN_UDP_LIMIT
        if self.udp_limit is not None:
            limit = min(limit, self.udp_limit)
        # Measured ourselves: dnspython's to_wire(max_size=...) never goes below 512.
        wire = response.to_wire(max_size=65535)
        if len(wire) <= limit:
            return wire
        # Send the question only, with TC set: the client must ask again over TCP.
        truncated = dns.message.make_response(query)
        truncated.flags |= dns.flags.AA | dns.flags.TC
        return truncated.to_wire()


class _UDPServer(socketserver.ThreadingUDPServer):
    daemon_threads = True
    block_on_close = False

    def __init__(
        self,
        address: tuple[str, int],
        handler: type[socketserver.BaseRequestHandler],
        dns_server: DNSServer,
    ) -> None:
        if ":" in address[0]:
            self.address_family = socket.AF_INET6
        self.dns_server = dns_server
        super().__init__(address, handler)


class _TCPServer(socketserver.ThreadingTCPServer):
    daemon_threads = True
    block_on_close = False

    def __init__(
        self,
        address: tuple[str, int],
        handler: type[socketserver.BaseRequestHandler],
        dns_server: DNSServer,
    ) -> None:
        if ":" in address[0]:
            self.address_family = socket.AF_INET6
        self.dns_server = dns_server
        super().__init__(address, handler)


class _UDPHandler(socketserver.BaseRequestHandler):
    def handle(self) -> None:
        wire, sock = self.request
        answer = self.server.dns_server.handle_wire(wire, "udp")  # type: ignore[attr-defined]
        if answer is not None:
            with contextlib.suppress(OSError):
                sock.sendto(answer, self.client_address)


class _TCPHandler(socketserver.BaseRequestHandler):
    def handle(self) -> None:
        sock: socket.socket = self.request
        # A dropped question keeps the connection open without an answer; the timeout
        # only frees this thread once the client has long given up.
        sock.settimeout(30)
        with contextlib.suppress(OSError):
            for wire in _frames(sock):
                answer = self.server.dns_server.handle_wire(wire, "tcp")  # type: ignore[attr-defined]
                if answer is not None:
                    sock.sendall(struct.pack("!H", len(answer)) + answer)


def _frames(sock: socket.socket) -> Iterator[bytes]:
    """DNS-over-TCP messages: each prefixed with a 2-byte length (RFC 1035 §4.2.2)."""
    while True:
        header = _recv_exact(sock, 2)
        if header is None:
            return
        body = _recv_exact(sock, struct.unpack("!H", header)[0])
        if body is None:
            return
        yield body


def _recv_exact(sock: socket.socket, n: int) -> bytes | None:
    buf = b""
    while len(buf) < n:
        chunk = sock.recv(n - len(buf))
        if not chunk:
            return None
        buf += chunk
    return buf
