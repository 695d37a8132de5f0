"""mailserver.dns.resolver against the loopback DNS server: answers, cache, errors, bridge."""

from __future__ import annotations

import asyncio
import threading
import time

import pytest

from mailserver.dns.resolver import (
    DNSError,
    DNSTempError,
    NameserverSyntaxError,
    Resolver,
    parse_nameserver,
)
from tests.support.dnsserver import DNSServer
from tests.support.fixtures import dns_resolver_fixture, dns_server_fixture  # noqa: F401
from tests.support.wait import async_wait_until

# ----------------------------------------------------------------- nameserver syntax


@pytest.mark.parametrize(
    ("spec", "expected"),
    [
        ("127.0.0.1:5353", ("127.0.0.1", 5353)),
        ("9.9.9.9", ("9.9.9.9", 53)),
        ("[::1]:53", ("::1", 53)),
        ("[2001:db8::1]:5300", ("2001:db8::1", 5300)),
        ("[::1]", ("::1", 53)),
        ("::1", ("::1", 53)),
        ("2001:db8::53", ("2001:db8::53", 53)),
        (" 127.0.0.1:53 ", ("127.0.0.1", 53)),
    ],
)
def test_parse_nameserver(spec: str, expected: tuple[str, int]) -> None:
    assert parse_nameserver(spec) == expected


@pytest.mark.parametrize(
    "spec",
    ["dns.example.com", "127.0.0.1:0", "127.0.0.1:99999", "127.0.0.1:x", "[::1", "[::1]x", "[::1]:", ""],
)
def test_parse_nameserver_rejects(spec: str) -> None:
    with pytest.raises(NameserverSyntaxError):
        parse_nameserver(spec)


def test_constructor_rejects_bad_nameserver() -> None:
    with pytest.raises(NameserverSyntaxError, match="not an IP address"):
        Resolver(["resolver.example"])


# ----------------------------------------------------------------- answers


async def test_typed_lookups(dns_server: DNSServer, dns_resolver: Resolver) -> None:
    dns_server.add("example.com", "TXT", "v=spf1 -all")
    dns_server.add("example.com", "TXT", ["part one ", "part two"])
    dns_server.add("example.com", "MX", "20 mx2.example.com.")
    dns_server.add("example.com", "MX", "10 mx1.example.com.")
    dns_server.add("mx1.example.com", "A", "127.0.0.2")
    dns_server.add("mx1.example.com", "AAAA", "::2")
    dns_server.add_ptr("127.0.0.2", "mx1.example.com.")
    dns_server.add("nullmx.example.com", "MX", "0 .")
    assert sorted(await dns_resolver.txt("example.com")) == ["part one part two", "v=spf1 -all"]
    assert await dns_resolver.mx("example.com") == [(10, "mx1.example.com"), (20, "mx2.example.com")]
    assert await dns_resolver.mx("nullmx.example.com") == [(0, ".")]
    assert await dns_resolver.a("mx1.example.com") == ["127.0.0.2"]
    assert await dns_resolver.aaaa("mx1.example.com") == ["::2"]
    assert await dns_resolver.ptr("127.0.0.2") == ["mx1.example.com"]
    records = await dns_resolver.query("mx1.example.com.", "A")
    assert [r.address for r in records] == ["127.0.0.2"]


async def test_txt_decodes_non_utf8_without_raising(dns_server: DNSServer, dns_resolver: Resolver) -> None:
    dns_server.add("example.com", "TXT", [b"caf\xe9"])
    dns_server.add("utf8.example.com", "TXT", "café")
    assert await dns_resolver.txt("example.com") == ["café"]  # latin-1 fallback
    assert await dns_resolver.txt("utf8.example.com") == ["café"]


async def test_nxdomain_and_nodata(dns_server: DNSServer, dns_resolver: Resolver) -> None:
    dns_server.add("example.com", "A", "127.0.0.1")
    assert await dns_resolver.txt("nothing.example.com") == []
    assert await dns_resolver.txt("example.com") == []
    assert await dns_resolver.mx("nothing.example.com") is None  # NXDOMAIN
    assert await dns_resolver.mx("example.com") == []  # NODATA
    nx = await dns_resolver.lookup("nothing.example.com", "TXT")
    assert nx.nxdomain and nx.records == ()
    nodata = await dns_resolver.lookup("example.com", "TXT")
    assert not nodata.nxdomain and nodata.records == ()


async def test_cname_followed(dns_server: DNSServer, dns_resolver: Resolver) -> None:
    dns_server.add("alias.example.com", "CNAME", "real.example.com.")
    dns_server.add("real.example.com", "TXT", "hello")
    assert await dns_resolver.txt("alias.example.com") == ["hello"]


async def test_large_txt_over_tcp(dns_server: DNSServer, dns_resolver: Resolver) -> None:
    dns_server.add("big.example.com", "TXT", "k" * 3000)
    assert await dns_resolver.txt("big.example.com") == ["k" * 3000]
    assert [q.proto for q in dns_server.queries] == ["udp", "tcp"]


async def test_invalid_name_is_not_found_without_asking(
    dns_server: DNSServer, dns_resolver: Resolver
) -> None:
    assert await dns_resolver.txt("a" * 64 + ".example.com") == []
    assert await dns_resolver.txt("a..example.com") == []
    assert dns_server.queries == []


# ----------------------------------------------------------------- cache


async def test_cache_hits_do_not_query_again(dns_server: DNSServer, dns_resolver: Resolver) -> None:
    dns_server.add("example.com", "TXT", "v=spf1 -all")
    for _ in range(5):
        assert await dns_resolver.txt("example.com") == ["v=spf1 -all"]
    assert await dns_resolver.txt("EXAMPLE.com.") == ["v=spf1 -all"]  # same key
    assert dns_server.count("example.com", "TXT") == 1
    assert dns_resolver.upstream_queries == 1


async def test_negative_answers_are_cached_briefly(dns_server: DNSServer) -> None:
    resolver = Resolver([dns_server.nameserver], lifetime=2, negative_ttl=0.3)
    for _ in range(3):
        assert await resolver.mx("nothing.example.com") is None
        assert await resolver.txt("nothing.example.com") == []
    assert dns_server.count("nothing.example.com", "MX") == 1
    assert dns_server.count("nothing.example.com", "TXT") == 1
    dns_server.add("nothing.example.com", "MX", "10 mx.example.com.")
    await asyncio.sleep(0.35)  # a real pause: the negative TTL (0.3 s) runs out; no clock to inject
    assert await resolver.mx("nothing.example.com") == [(10, "mx.example.com")]


async def test_ttl_is_respected(dns_server: DNSServer, dns_resolver: Resolver) -> None:
    dns_server.add("short.example.com", "A", "127.0.0.1", ttl=1)
    assert await dns_resolver.a("short.example.com") == ["127.0.0.1"]
    assert await dns_resolver.a("short.example.com") == ["127.0.0.1"]
    assert dns_server.count("short.example.com") == 1
    await asyncio.sleep(1.1)  # a real pause: the record's TTL (1 s) runs out; no clock to inject
    assert await dns_resolver.a("short.example.com") == ["127.0.0.1"]
    assert dns_server.count("short.example.com") == 2


async def test_ttl_zero_is_not_cached(dns_server: DNSServer, dns_resolver: Resolver) -> None:
    dns_server.add("zero.example.com", "A", "127.0.0.1", ttl=0)
    await dns_resolver.a("zero.example.com")
    await dns_resolver.a("zero.example.com")
    assert dns_server.count("zero.example.com") == 2


async def test_cache_is_bounded_lru(dns_server: DNSServer) -> None:
    resolver = Resolver([dns_server.nameserver], lifetime=2, cache_size=2)
    for name in ("a", "b", "a", "c"):  # "b" is least recently used when "c" arrives
        dns_server.add(f"{name}.example.com", "A", "127.0.0.1")
        await resolver.a(f"{name}.example.com")
    assert len(resolver.cache) == 2
    await resolver.a("a.example.com")
    await resolver.a("b.example.com")
    assert dns_server.count("a.example.com") == 1
    assert dns_server.count("b.example.com") == 2


# ----------------------------------------------------------------- failures


async def test_servfail_is_temperror_and_not_cached(dns_server: DNSServer, dns_resolver: Resolver) -> None:
    dns_server.add("example.com", "TXT", "ok")
    dns_server.servfail("example.com")
    with pytest.raises(DNSTempError, match="no server could answer"):
        await dns_resolver.txt("example.com")
    dns_server.heal()
    assert await dns_resolver.txt("example.com") == ["ok"]


async def test_timeout_is_temperror(dns_server: DNSServer) -> None:
    resolver = Resolver([dns_server.nameserver], lifetime=0.4, attempt_timeout=0.2)
    dns_server.drop("example.com")
    t0 = time.monotonic()
    with pytest.raises(DNSTempError, match="timed out"):
        await resolver.mx("example.com")
    assert time.monotonic() - t0 < 2


async def test_dead_nameserver_is_temperror() -> None:
    # Port 9 (discard) on loopback: nothing listens, ICMP refuses or the query times out.
    resolver = Resolver(["127.0.0.1:9"], lifetime=0.5, attempt_timeout=0.2)
    with pytest.raises(DNSTempError):
        await resolver.a("example.com")


async def test_per_call_lifetime(dns_server: DNSServer, dns_resolver: Resolver) -> None:
    dns_server.drop("example.com")
    t0 = time.monotonic()
    with pytest.raises(DNSTempError):
        await dns_resolver.query("example.com", "A", lifetime=0.2)
    assert time.monotonic() - t0 < 1.0


# ----------------------------------------------------------------- thread bridge


async def test_query_from_thread_shares_cache(dns_server: DNSServer, dns_resolver: Resolver) -> None:
    dns_server.add("example.com", "TXT", "v=spf1 -all")
    await dns_resolver.txt("example.com")  # cached on the loop
    loop = asyncio.get_running_loop()
    seen: list[object] = []

    def worker() -> None:
        answer = dns_resolver.query_from_thread("example.com", "TXT", 2.0, loop=loop)
        seen.append(b"".join(answer.records[0].strings))
        seen.append(threading.current_thread() is not threading.main_thread())

    await asyncio.to_thread(worker)
    assert seen == [b"v=spf1 -all", True]
    assert dns_server.count("example.com", "TXT") == 1  # the thread hit the loop's cache


async def test_query_from_thread_uses_last_loop_by_default(
    dns_server: DNSServer, dns_resolver: Resolver
) -> None:
    dns_server.add("example.com", "A", "127.0.0.5")
    await dns_resolver.a("example.com")
    answer = await asyncio.to_thread(dns_resolver.query_from_thread, "example.com", "A", 2.0)
    assert [r.address for r in answer.records] == ["127.0.0.5"]


async def test_query_from_thread_timeout(dns_server: DNSServer, dns_resolver: Resolver) -> None:
    dns_server.drop("slow.example.com")
    loop = asyncio.get_running_loop()
    t0 = time.monotonic()
    with pytest.raises(DNSTempError):
        await asyncio.to_thread(dns_resolver.query_from_thread, "slow.example.com", "A", 0.3, loop=loop)
    assert time.monotonic() - t0 < 1.5


async def test_query_from_thread_refuses_loop_thread(dns_resolver: Resolver) -> None:
    with pytest.raises(DNSError, match="event loop thread"):
        dns_resolver.query_from_thread("example.com", "A", 1.0, loop=asyncio.get_running_loop())


def test_query_from_thread_without_loop_is_temperror(dns_server: DNSServer) -> None:
    resolver = Resolver([dns_server.nameserver])
    with pytest.raises(DNSTempError, match="no event loop"):
        resolver.query_from_thread("example.com", "A", 1.0)


def test_resolver_works_across_event_loops(dns_server: DNSServer) -> None:
    dns_server.add("example.com", "A", "127.0.0.1")
    resolver = Resolver([dns_server.nameserver], lifetime=2)
    assert asyncio.run(resolver.a("example.com")) == ["127.0.0.1"]
    resolver.cache.clear()
    assert asyncio.run(resolver.a("example.com")) == ["127.0.0.1"]
    assert dns_server.count("example.com") == 2


async def test_concurrent_lookups_do_not_block_each_other(
    dns_server: DNSServer, dns_resolver: Resolver
) -> None:
    dns_server.add("slow.example.com", "A", "127.0.0.1")
    dns_server.delay("slow.example.com", 0.5)
    dns_server.add("fast.example.com", "A", "127.0.0.2")
    slow = asyncio.create_task(dns_resolver.a("slow.example.com"))
    await async_wait_until(lambda: dns_server.count("slow.example.com") == 1, interval=0.005,
                           what="the slow query to reach the server")
    t0 = time.monotonic()
    assert await dns_resolver.a("fast.example.com") == ["127.0.0.2"]
    assert time.monotonic() - t0 < 0.3
    assert await slow == ["127.0.0.1"]


async def test_concurrent_identical_lookups_are_coalesced(
    dns_server: DNSServer, dns_resolver: Resolver
) -> None:
    dns_server.add("example.com", "TXT", "v=spf1 -all")
    dns_server.delay("example.com", 0.2)
    results = await asyncio.gather(*(dns_resolver.txt("example.com") for _ in range(10)))
    assert results == [["v=spf1 -all"]] * 10
    assert dns_server.count("example.com", "TXT") == 1


async def test_cancelled_waiter_does_not_cancel_the_others(
    dns_server: DNSServer, dns_resolver: Resolver
) -> None:
    dns_server.add("example.com", "A", "127.0.0.1")
    dns_server.delay("example.com", 0.3)
    first = asyncio.create_task(dns_resolver.a("example.com"))
    second = asyncio.create_task(dns_resolver.a("example.com"))
    # Once the query is at the server both tasks have started: the second waits on the first's.
    await async_wait_until(lambda: dns_server.count("example.com") == 1, interval=0.005,
                           what="the query to reach the server")
    first.cancel()
    assert await second == ["127.0.0.1"]
    assert dns_server.count("example.com") == 1


async def test_coalesced_failure_reaches_every_waiter(dns_server: DNSServer, dns_resolver: Resolver) -> None:
    dns_server.servfail("example.com")
    dns_server.delay("example.com", 0.1)
    results = await asyncio.gather(*(dns_resolver.a("example.com") for _ in range(3)), return_exceptions=True)
    assert all(isinstance(r, DNSTempError) for r in results)
    assert dns_server.count("example.com") == 1
