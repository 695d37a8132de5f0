"""The loopback test DNS server, checked with dnspython's plain (sync) query functions."""

from __future__ import annotations

import socket
import time

import dns.exception
import dns.flags
import dns.message
import dns.query
import dns.rcode
import pytest

from tests.support.dnsserver import DNSServer
from tests.support.fixtures import dns_server_fixture  # noqa: F401


def ask(
    server: DNSServer, name: str, rdtype: str, *, tcp: bool = False, edns: int = -1
) -> dns.message.Message:
    q = dns.message.make_query(name, rdtype, use_edns=edns)
    if tcp:
        return dns.query.tcp(q, "127.0.0.1", port=server.port, timeout=2)
    return dns.query.udp(q, "127.0.0.1", port=server.port, timeout=2)


def texts(msg: dns.message.Message) -> list[str]:
    return [r.to_text() for rrset in msg.answer for r in rrset]


def test_answers_each_type(dns_server: DNSServer) -> None:
    dns_server.add("example.com.", "TXT", "v=spf1 ip4:127.0.0.1 -all")
    dns_server.add("example.com", "MX", "10 mx.example.com.")
    dns_server.add("example.com", "MX", "20 mx2.example.com")  # no final dot: still absolute
    dns_server.add("mx.example.com", "A", "127.0.0.2")
    dns_server.add("mx.example.com", "AAAA", "::1")
    dns_server.add_ptr("127.0.0.2", "mx.example.com.")
    assert texts(ask(dns_server, "example.com", "TXT")) == ['"v=spf1 ip4:127.0.0.1 -all"']
    assert sorted(texts(ask(dns_server, "example.com", "MX"))) == [
        "10 mx.example.com.",
        "20 mx2.example.com.",
    ]
    assert texts(ask(dns_server, "MX.Example.COM", "A")) == ["127.0.0.2"]  # case-insensitive
    assert texts(ask(dns_server, "mx.example.com", "AAAA")) == ["::1"]
    assert texts(ask(dns_server, "2.0.0.127.in-addr.arpa", "PTR")) == ["mx.example.com."]
    reply = ask(dns_server, "example.com", "TXT")
    assert reply.flags & dns.flags.AA


def test_nxdomain_and_nodata(dns_server: DNSServer) -> None:
    dns_server.add("a.b.example.com", "A", "127.0.0.3")
    assert ask(dns_server, "nothing.example.com", "A").rcode() == dns.rcode.NXDOMAIN
    nodata = ask(dns_server, "a.b.example.com", "TXT")
    assert nodata.rcode() == dns.rcode.NOERROR and not nodata.answer
    # An empty non-terminal exists too (RFC 8020): NODATA, not NXDOMAIN.
    assert ask(dns_server, "b.example.com", "A").rcode() == dns.rcode.NOERROR


def test_cname_is_followed(dns_server: DNSServer) -> None:
    dns_server.add("alias.example.com", "CNAME", "target.example.com.")
    dns_server.add("target.example.com", "A", "127.0.0.9")
    reply = ask(dns_server, "alias.example.com", "A")
    assert texts(reply) == ["target.example.com.", "127.0.0.9"]
    dns_server.add("dangling.example.com", "CNAME", "gone.example.com.")
    assert ask(dns_server, "dangling.example.com", "A").rcode() == dns.rcode.NXDOMAIN


def test_long_txt_is_split_into_255_byte_strings(dns_server: DNSServer) -> None:
    dns_server.add("long.example.com", "TXT", "k" * 600)
    reply = ask(dns_server, "long.example.com", "TXT", tcp=True)
    (rdata,) = reply.answer[0]
    assert [len(s) for s in rdata.strings] == [255, 255, 90]
    dns_server.add("multi.example.com", "TXT", ["v=spf1 ", "-all"])
    (rdata,) = ask(dns_server, "multi.example.com", "TXT").answer[0]
    assert rdata.strings == (b"v=spf1 ", b"-all")


def test_large_answer_sets_tc_then_tcp_serves_it(dns_server: DNSServer) -> None:
    dns_server.add("big.example.com", "TXT", "x" * 3000)
    udp = ask(dns_server, "big.example.com", "TXT", edns=0)  # offers 1232 bytes
    assert udp.flags & dns.flags.TC and not udp.answer
    tcp = ask(dns_server, "big.example.com", "TXT", tcp=True)
    assert len(b"".join(tcp.answer[0][0].strings)) == 3000
    assert [q.proto for q in dns_server.queries] == ["udp", "tcp"]


def test_plain_udp_limit_is_512_without_edns(dns_server: DNSServer) -> None:
    dns_server.add("mid.example.com", "TXT", "y" * 700)
    assert ask(dns_server, "mid.example.com", "TXT").flags & dns.flags.TC
    assert not ask(dns_server, "mid.example.com", "TXT", edns=0).flags & dns.flags.TC


def test_udp_limit_forces_truncation() -> None:
    with DNSServer(udp_limit=512) as server:
        server.add("mid.example.com", "TXT", "y" * 700)
        assert ask(server, "mid.example.com", "TXT", edns=0).flags & dns.flags.TC


def test_remove_clear_and_set(dns_server: DNSServer) -> None:
    dns_server.add("example.com", "TXT", "one")
    dns_server.add("example.com", "A", "127.0.0.1")
    dns_server.set("example.com", "TXT", ["two", "three"])
    assert sorted(texts(ask(dns_server, "example.com", "TXT"))) == ['"three"', '"two"']
    dns_server.remove("example.com", "TXT")
    assert not ask(dns_server, "example.com", "TXT").answer
    dns_server.remove("example.com")
    assert ask(dns_server, "example.com", "A").rcode() == dns.rcode.NXDOMAIN
    dns_server.add("example.com", "A", "127.0.0.1")
    dns_server.clear()
    assert ask(dns_server, "example.com", "A").rcode() == dns.rcode.NXDOMAIN
    assert len(dns_server.queries) == 1  # clear() also forgot the earlier queries


def test_ttl(dns_server: DNSServer) -> None:
    dns_server.add("example.com", "A", "127.0.0.1", ttl=7)
    assert ask(dns_server, "example.com", "A").answer[0].ttl == 7


def test_servfail_and_heal(dns_server: DNSServer) -> None:
    dns_server.add("example.com", "A", "127.0.0.1")
    dns_server.servfail("example.com")
    assert ask(dns_server, "example.com", "A").rcode() == dns.rcode.SERVFAIL
    assert ask(dns_server, "example.com", "A", tcp=True).rcode() == dns.rcode.SERVFAIL
    dns_server.heal("example.com")
    assert texts(ask(dns_server, "example.com", "A")) == ["127.0.0.1"]


def test_drop_never_answers(dns_server: DNSServer) -> None:
    dns_server.add("example.com", "A", "127.0.0.1")
    dns_server.drop("example.com")
    q = dns.message.make_query("example.com", "A")
    with pytest.raises(dns.exception.Timeout):
        dns.query.udp(q, "127.0.0.1", port=dns_server.port, timeout=0.3)
    with pytest.raises(dns.exception.Timeout):
        dns.query.tcp(q, "127.0.0.1", port=dns_server.port, timeout=0.3)
    assert dns_server.count("example.com", "A") == 2


def test_delay(dns_server: DNSServer) -> None:
    dns_server.add("example.com", "A", "127.0.0.1")
    dns_server.delay("example.com", 0.3)
    t0 = time.monotonic()
    assert texts(ask(dns_server, "example.com", "A")) == ["127.0.0.1"]
    assert time.monotonic() - t0 >= 0.3


def test_counts_queries(dns_server: DNSServer) -> None:
    dns_server.add("example.com", "A", "127.0.0.1")
    for _ in range(3):
        ask(dns_server, "example.com", "A")
    ask(dns_server, "example.com", "TXT")
    assert dns_server.count("example.com") == 4
    assert dns_server.count("example.com.", "a") == 3
    dns_server.reset_queries()
    assert dns_server.count("example.com") == 0


def test_garbage_is_ignored_and_server_keeps_serving(dns_server: DNSServer) -> None:
    dns_server.add("example.com", "A", "127.0.0.1")
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.sendto(b"\x00\x01garbage", ("127.0.0.1", dns_server.port))
    assert texts(ask(dns_server, "example.com", "A")) == ["127.0.0.1"]


def test_nameserver_string_and_restart() -> None:
    server = DNSServer()
    server.start()
    try:
        host, port = server.nameserver.split(":")
        assert host == "127.0.0.1" and int(port) == server.port > 0
    finally:
        server.stop()
    server.start()  # a stopped server can be started again, on a new port
    server.add("example.com", "A", "127.0.0.1")
    try:
        assert texts(ask(server, "example.com", "A")) == ["127.0.0.1"]
    finally:
        server.stop()


def test_ipv6_loopback() -> None:
    if not socket.has_ipv6:
        pytest.skip("no IPv6")
    try:
        server = DNSServer("::1").start()
    except OSError:
        pytest.skip("no IPv6 loopback")
    try:
        server.add("example.com", "A", "127.0.0.1")
        assert server.nameserver.startswith("[::1]:")
        q = dns.message.make_query("example.com", "A")
        reply = dns.query.udp(q, "::1", port=server.port, timeout=2)
        assert texts(reply) == ["127.0.0.1"]
    finally:
        server.stop()
