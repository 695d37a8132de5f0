"""SPF checks (pyspf in a thread, DNS through our resolver and the loopback server).

The cases follow RFC 7208's sections; the numbers in the names point at them.
"""

from __future__ import annotations

import asyncio
import threading
import time

import pytest

from mailserver.dns.resolver import Resolver
from mailserver.pipeline import spf as spf_module
from mailserver.pipeline.spf import SPFResult, check_spf
from tests.support.dnsserver import DNSServer
from tests.support.fixtures import dns_resolver_fixture, dns_server_fixture  # noqa: F401

IP = "192.0.2.10"
OTHER_IP = "198.51.100.7"


async def spf(
    resolver: Resolver, record: str | None, ip: str = IP, server: DNSServer | None = None
) -> SPFResult:
    if record is not None and server is not None:
        server.add("example.com", "TXT", record)
    return await check_spf(resolver, ip, "alice@example.com", "mx.sender.example", timeout=5)


@pytest.mark.parametrize(
    ("record", "ip", "expected"),
    [
        ("v=spf1 ip4:192.0.2.0/24 -all", IP, "pass"),
        ("v=spf1 ip4:192.0.2.10 -all", IP, "pass"),
        ("v=spf1 ip4:192.0.2.0/24 -all", OTHER_IP, "fail"),
        ("v=spf1 ip4:192.0.2.0/24 ~all", OTHER_IP, "softfail"),
        ("v=spf1 ip4:192.0.2.0/24 ?all", OTHER_IP, "neutral"),
        ("v=spf1 ip4:192.0.2.0/24", OTHER_IP, "neutral"),  # §4.7 default result
        ("v=spf1 -ip4:192.0.2.10 +all", IP, "fail"),
        ("v=spf1 ip6:2001:db8::/32 -all", "2001:db8::25", "pass"),
        ("v=spf1 ip6:2001:db8::/32 -all", "2001:db9::25", "fail"),
        ("v=spf1 ip4:192.0.2.10 -all", "::ffff:192.0.2.10", "pass"),  # v4-mapped client
        ("v=spf1 ip4:192.0.2.300 -all", IP, "permerror"),  # §4.6 syntax
        ("v=spf1 moo -all", IP, "permerror"),  # unknown mechanism
        ("v=spf1 redirect=a redirect=b", IP, "permerror"),  # §6 twice
        ("v=spf10 -all", IP, "none"),  # not an SPF version 1 record
        ("spf1 -all", IP, "none"),
    ],
)
async def test_record_evaluation(
    dns_server: DNSServer, dns_resolver: Resolver, record: str, ip: str, expected: str
) -> None:
    result = await spf(dns_resolver, record, ip, dns_server)
    assert result.result == expected, result
    assert result.domain == "example.com"
    assert result.identity == "mailfrom" and result.sender == "alice@example.com"
    assert result.ar_property == ("smtp.mailfrom", "alice@example.com")


async def test_no_record_is_none(dns_server: DNSServer, dns_resolver: Resolver) -> None:
    dns_server.add("example.com", "TXT", "google-site-verification=abc")
    assert (await spf(dns_resolver, None)).result == "none"


async def test_nxdomain_is_none(dns_resolver: Resolver) -> None:
    result = await check_spf(dns_resolver, IP, "bob@nowhere.example", "helo.example", timeout=5)
    assert result.result == "none" and result.domain == "nowhere.example"


async def test_two_records_is_permerror(dns_server: DNSServer, dns_resolver: Resolver) -> None:
    dns_server.add("example.com", "TXT", "v=spf1 -all")
    dns_server.add("example.com", "TXT", "v=spf1 +all")
    assert (await spf(dns_resolver, None)).result == "permerror"  # §4.5


async def test_record_split_over_strings(dns_server: DNSServer, dns_resolver: Resolver) -> None:
    dns_server.add("example.com", "TXT", ["v=spf1 ip4:192.0.2.0/24", " -all"])  # §3.3
    assert (await spf(dns_resolver, None)).result == "pass"


async def test_long_record_over_tcp(dns_server: DNSServer, dns_resolver: Resolver) -> None:
    nets = " ".join(f"ip4:10.{i // 250}.{i % 250}.0/24" for i in range(120))
    dns_server.add("example.com", "TXT", f"v=spf1 {nets} ip4:192.0.2.10 -all")
    assert (await spf(dns_resolver, None)).result == "pass"
    assert "tcp" in {q.proto for q in dns_server.queries}


async def test_include(dns_server: DNSServer, dns_resolver: Resolver) -> None:
    dns_server.add("example.com", "TXT", "v=spf1 include:_spf.provider.example -all")
    dns_server.add("_spf.provider.example", "TXT", "v=spf1 ip4:192.0.2.0/24 -all")
    assert (await spf(dns_resolver, None)).result == "pass"
    assert (await spf(dns_resolver, None, OTHER_IP)).result == "fail"


async def test_include_without_record_is_permerror(dns_server: DNSServer, dns_resolver: Resolver) -> None:
    dns_server.add("example.com", "TXT", "v=spf1 include:missing.example -all")
    assert (await spf(dns_resolver, None)).result == "permerror"  # §5.2


async def test_redirect(dns_server: DNSServer, dns_resolver: Resolver) -> None:
    dns_server.add("example.com", "TXT", "v=spf1 redirect=_spf.example.net")
    dns_server.add("_spf.example.net", "TXT", "v=spf1 ip4:192.0.2.10 ~all")
    assert (await spf(dns_resolver, None)).result == "pass"
    assert (await spf(dns_resolver, None, OTHER_IP)).result == "softfail"


async def test_redirect_to_nothing_is_permerror(dns_server: DNSServer, dns_resolver: Resolver) -> None:
    dns_server.add("example.com", "TXT", "v=spf1 redirect=nothing.example")
    assert (await spf(dns_resolver, None)).result == "permerror"  # §6.1


async def test_mx_mechanism(dns_server: DNSServer, dns_resolver: Resolver) -> None:
    dns_server.add("example.com", "TXT", "v=spf1 mx -all")
    dns_server.add("example.com", "MX", "10 mx1.example.com.")
    dns_server.add("example.com", "MX", "20 mx2.example.com.")
    dns_server.add("mx1.example.com", "A", "203.0.113.1")
    dns_server.add("mx2.example.com", "A", "192.0.2.10")
    assert (await spf(dns_resolver, None)).result == "pass"
    assert (await spf(dns_resolver, None, "203.0.113.1")).result == "pass"
    assert (await spf(dns_resolver, None, OTHER_IP)).result == "fail"


async def test_a_mechanism_with_cidr_and_domain(dns_server: DNSServer, dns_resolver: Resolver) -> None:
    dns_server.add("example.com", "TXT", "v=spf1 a a:relay.example.org/28 -all")
    dns_server.add("example.com", "A", "203.0.113.1")
    dns_server.add("relay.example.org", "A", "192.0.2.1")
    assert (await spf(dns_resolver, None, "203.0.113.1")).result == "pass"
    assert (await spf(dns_resolver, None, "192.0.2.14")).result == "pass"  # inside /28
    assert (await spf(dns_resolver, None, "192.0.2.17")).result == "fail"


async def test_aaaa_for_ipv6_clients(dns_server: DNSServer, dns_resolver: Resolver) -> None:
    dns_server.add("example.com", "TXT", "v=spf1 a -all")
    dns_server.add("example.com", "AAAA", "2001:db8::1")
    assert (await spf(dns_resolver, None, "2001:db8::1")).result == "pass"


async def test_exists_with_macro(dns_server: DNSServer, dns_resolver: Resolver) -> None:
    dns_server.add("example.com", "TXT", "v=spf1 exists:%{ir}.%{l}._spf.%{d} -all")
    dns_server.add("10.2.0.192.alice._spf.example.com", "A", "127.0.0.2")
    assert (await spf(dns_resolver, None)).result == "pass"  # §7 macros
    assert (await spf(dns_resolver, None, OTHER_IP)).result == "fail"


async def test_ptr_mechanism(dns_server: DNSServer, dns_resolver: Resolver) -> None:
    dns_server.add("example.com", "TXT", "v=spf1 ptr -all")
    dns_server.add_ptr(IP, "out.example.com.")
    dns_server.add("out.example.com", "A", IP)  # forward-confirmed
    dns_server.add_ptr(OTHER_IP, "liar.example.com.")  # no matching A: not validated
    assert (await spf(dns_resolver, None)).result == "pass"
    assert (await spf(dns_resolver, None, OTHER_IP)).result == "fail"


async def test_cname_in_chain(dns_server: DNSServer, dns_resolver: Resolver) -> None:
    dns_server.add("example.com", "TXT", "v=spf1 a:alias.example.com -all")
    dns_server.add("alias.example.com", "CNAME", "host.example.com.")
    dns_server.add("host.example.com", "A", IP)
    assert (await spf(dns_resolver, None)).result == "pass"


async def test_explanation(dns_server: DNSServer, dns_resolver: Resolver) -> None:
    dns_server.add("example.com", "TXT", "v=spf1 -all exp=why.example.com")
    dns_server.add("why.example.com", "TXT", "%{i} may not send for %{d}")
    result = await spf(dns_resolver, None)
    assert result.result == "fail"
    assert result.explanation == "192.0.2.10 may not send for example.com"


# ----------------------------------------------------------------- limits (§4.6.4)


async def test_more_than_ten_dns_mechanisms_is_permerror(
    dns_server: DNSServer, dns_resolver: Resolver
) -> None:
    mechs = " ".join(f"a:h{i}.example.com" for i in range(11))
    dns_server.add("example.com", "TXT", f"v=spf1 {mechs} ip4:192.0.2.10 -all")
    for i in range(11):
        dns_server.add(f"h{i}.example.com", "A", "203.0.113.1")
    assert (await spf(dns_resolver, None)).result == "permerror"


async def test_ten_dns_mechanisms_are_fine(dns_server: DNSServer, dns_resolver: Resolver) -> None:
    mechs = " ".join(f"a:h{i}.example.com" for i in range(10))
    dns_server.add("example.com", "TXT", f"v=spf1 {mechs} ip4:192.0.2.10 -all")
    for i in range(10):
        dns_server.add(f"h{i}.example.com", "A", "203.0.113.1")
    assert (await spf(dns_resolver, None)).result == "pass"


async def test_void_lookup_limit(dns_server: DNSServer, dns_resolver: Resolver) -> None:
    dns_server.add("example.com", "TXT", "v=spf1 a:v1.example.com a:v2.example.com a:v3.example.com ?all")
    assert (await spf(dns_resolver, None)).result == "permerror"
    dns_server.set("example.com", "TXT", ["v=spf1 a:v1.example.com a:v2.example.com ?all"])
    dns_resolver.cache.clear()
    assert (await spf(dns_resolver, None)).result == "neutral"  # two voids are allowed


async def test_include_loop_is_permerror(dns_server: DNSServer, dns_resolver: Resolver) -> None:
    dns_server.add("example.com", "TXT", "v=spf1 include:loop.example.com -all")
    dns_server.add("loop.example.com", "TXT", "v=spf1 include:example.com -all")
    assert (await spf(dns_resolver, None)).result == "permerror"


# ----------------------------------------------------------------- DNS errors


async def test_servfail_is_temperror(dns_server: DNSServer, dns_resolver: Resolver) -> None:
    dns_server.servfail("example.com")
    result = await spf(dns_resolver, None)
    assert result.result == "temperror"
    assert "DNS" in result.explanation


async def test_servfail_in_include_is_temperror(dns_server: DNSServer, dns_resolver: Resolver) -> None:
    dns_server.add("example.com", "TXT", "v=spf1 include:_spf.provider.example -all")
    dns_server.servfail("_spf.provider.example")
    assert (await spf(dns_resolver, None)).result == "temperror"


async def test_dead_dns_is_temperror_within_budget(dns_server: DNSServer) -> None:
    resolver = Resolver([dns_server.nameserver], lifetime=5, attempt_timeout=0.2)
    dns_server.drop("example.com")
    t0 = time.monotonic()
    result = await check_spf(resolver, IP, "alice@example.com", "helo.example", timeout=0.6)
    assert result.result == "temperror"
    assert time.monotonic() - t0 < 2.5


# ----------------------------------------------------------------- identities (§2.3, §2.4)


async def test_null_sender_checks_helo(dns_server: DNSServer, dns_resolver: Resolver) -> None:
    dns_server.add("mx.sender.example", "TXT", "v=spf1 ip4:192.0.2.10 -all")
    result = await check_spf(dns_resolver, IP, "", "mx.sender.example", timeout=5)
    assert (result.result, result.identity, result.domain) == ("pass", "helo", "mx.sender.example")
    assert result.ar_property == ("smtp.helo", "mx.sender.example")
    result = await check_spf(dns_resolver, OTHER_IP, "", "mx.sender.example", timeout=5)
    assert result.result == "fail"


@pytest.mark.parametrize("helo", ["[192.0.2.10]", "192.0.2.10", "localhost", "", "bad..name"])
async def test_null_sender_with_unusable_helo_is_none(
    dns_server: DNSServer, dns_resolver: Resolver, helo: str
) -> None:
    result = await check_spf(dns_resolver, IP, "", helo, timeout=5)
    assert result.result == "none" and result.identity == "helo"
    assert dns_server.queries == []


async def test_mail_from_without_domain_is_none(dns_server: DNSServer, dns_resolver: Resolver) -> None:
    result = await check_spf(dns_resolver, IP, "postmaster", "helo.example", timeout=5)
    assert result.result == "none"
    assert dns_server.queries == []


async def test_bad_client_ip_is_permerror(dns_resolver: Resolver) -> None:
    result = await check_spf(dns_resolver, "not-an-ip", "a@example.com", "h.example", timeout=5)
    assert result.result == "permerror"


# ----------------------------------------------------------------- plumbing


async def test_repeated_checks_use_the_cache(dns_server: DNSServer, dns_resolver: Resolver) -> None:
    dns_server.add("example.com", "TXT", "v=spf1 mx -all")
    dns_server.add("example.com", "MX", "10 mx1.example.com.")
    dns_server.add("mx1.example.com", "A", IP)
    for _ in range(3):
        assert (await spf(dns_resolver, None)).result == "pass"
    assert len(dns_server.queries) == 3  # TXT, MX, A: once each


async def test_concurrent_checks(dns_server: DNSServer, dns_resolver: Resolver) -> None:
    for i in range(20):
        dns_server.add(f"d{i}.example", "TXT", f"v=spf1 ip4:192.0.2.{i} -all")
    results = await asyncio.gather(
        *(check_spf(dns_resolver, f"192.0.2.{i}", f"x@d{i}.example", "h.example") for i in range(20))
    )
    assert [r.result for r in results] == ["pass"] * 20


def test_unbound_thread_never_reaches_the_system_resolver() -> None:
    # pyspf's module-level lookup is ours; outside check_spf it refuses instead of
    # silently asking resolv.conf's servers.
    import spf as pyspf

    assert pyspf.DNSLookup is spf_module._dns_lookup
    errors: list[Exception] = []

    def worker() -> None:
        try:
            pyspf.DNSLookup("example.com", "TXT", True, 1)
        except pyspf.TempError as exc:
            errors.append(exc)

    t = threading.Thread(target=worker)
    t.start()
    t.join()
    assert errors and "no resolver bound" in str(errors[0])
