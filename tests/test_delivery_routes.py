"""delivery/routes.py against the loopback DNS server: which hosts, in which order, and
the failures that stop a domain's mail before any connection (RFC 5321 5.1, RFC 7505).

MTA-STS policies are applied through RemoteDelivery in tests/test_remote_delivery.py
(real policy server over HTTPS); here the policy is absent.
"""

from __future__ import annotations

import random

import pytest

from mailserver.delivery.results import DeliveryResult
from mailserver.delivery.routes import Route, host_addresses, mx_route, order
from mailserver.dns.resolver import DNSTempError, Resolver
from tests.support.dnsserver import DNSServer

pytestmark = pytest.mark.timeout(30)


@pytest.fixture
def resolver(dns_server: DNSServer) -> Resolver:
    return Resolver([dns_server.nameserver], lifetime=2.0, attempt_timeout=1.0)


async def route(resolver: Resolver, domain: str = "example.test") -> Route | DeliveryResult:
    return await mx_route(resolver, domain, own_hostname="Out.Example.Org.", mta_sts=None)


async def test_hosts_by_preference_up_to_ourselves(dns_server: DNSServer, resolver: Resolver) -> None:
    dns_server.add("example.test", "MX", "20 OUT.example.org.")
    dns_server.add("example.test", "MX", "30 mx3.example.test.")
    dns_server.add("example.test", "MX", "10 MX1.Example.Test.")
    # We are an MX at 20: only the better host may get the mail (RFC 5321 5.1).
    assert await route(resolver) == Route(("mx1.example.test",), "opportunistic")


async def test_no_mx_means_the_domain_itself(dns_server: DNSServer, resolver: Resolver) -> None:
    dns_server.add("example.test", "A", "127.0.0.2")
    assert await route(resolver) == Route(("example.test",), "opportunistic")


@pytest.mark.parametrize(("setup", "kind", "code", "status"), [
    ("null", "perm", 556, "5.1.10"),
    ("loop", "perm", 554, "5.4.6"),
    ("nxdomain", "perm", 550, "5.1.2"),
    ("servfail", "temp", 451, "4.4.3"),
])
async def test_failures_before_any_connection(
    dns_server: DNSServer, resolver: Resolver, setup: str, kind: str, code: int, status: str
) -> None:
    if setup == "null":
        dns_server.add("example.test", "MX", "0 .")
        dns_server.add("example.test", "A", "127.0.0.2")  # not an implicit MX then
    elif setup == "loop":
        dns_server.add("example.test", "MX", "10 out.example.org")
    elif setup == "nxdomain":
        dns_server.add("other.test", "A", "127.0.0.2")
    else:
        dns_server.servfail("example.test")
    result = await route(resolver)
    assert isinstance(result, DeliveryResult)
    assert (result.kind, result.reply.code, result.status) == (kind, code, status)
    assert (result.reply.module, result.received, result.mx) == ("routes", False, "")


async def test_host_addresses(dns_server: DNSServer, resolver: Resolver) -> None:
    dns_server.add("mx.example.test", "A", "127.0.0.2")
    dns_server.add("mx.example.test", "AAAA", "::1")
    assert await host_addresses(resolver, "mx.example.test", source_address=None) == ["::1", "127.0.0.2"]
    assert await host_addresses(resolver, "mx.example.test", source_address="127.0.0.1") == ["127.0.0.2"]
    assert await host_addresses(resolver, "mx.example.test", source_address="::1") == ["::1"]
    assert await host_addresses(resolver, "192.0.2.7", source_address=None) == ["192.0.2.7"]
    dns_server.servfail("down.example.test")
    with pytest.raises(DNSTempError):
        await host_addresses(resolver, "down.example.test", source_address=None)


def test_order_shuffles_only_among_equal_preferences() -> None:
    random.seed(7)
    records = [(20, "c.test"), (10, "A.test."), (10, "b.test"), (10, "a.test"), (5, "z.test")]
    seen = set()
    for _ in range(50):
        hosts = order(records)
        assert hosts[0] == "z.test" and hosts[3] == "c.test" and len(hosts) == 4
        seen.add(tuple(hosts[1:3]))
    assert seen == {("a.test", "b.test"), ("b.test", "a.test")}
