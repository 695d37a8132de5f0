"""Pytest fixtures around the loopback DNS server.

The fixtures are registered under the names ``dns_server`` and ``dns_resolver``; the
functions are called ``*_fixture`` so that a test module can import them explicitly
without its test parameters shadowing the import (ruff F811)::

    from tests.support.fixtures import dns_resolver_fixture, dns_server_fixture  # noqa: F401

    def test_x(dns_server: DNSServer, dns_resolver: Resolver) -> None: ...

conftest.py may import ``dns_server`` / ``dns_resolver`` (aliases of the same fixtures).

``dns_server`` is a started ``DNSServer`` (empty zone, fresh per test);
``dns_resolver`` is a ``mailserver.dns.resolver.Resolver`` that asks only that server,
with short timeouts so failure-injection tests stay quick.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from mailserver.dns.resolver import Resolver
from tests.support.dnsserver import DNSServer


@pytest.fixture(name="dns_server")
def dns_server_fixture() -> Iterator[DNSServer]:
    with DNSServer() as server:
        yield server


@pytest.fixture(name="dns_resolver")
def dns_resolver_fixture(dns_server: DNSServer) -> Resolver:
    return Resolver([dns_server.nameserver], lifetime=2.0, attempt_timeout=1.0)


# Names for conftest.py's re-export.
dns_server = dns_server_fixture
dns_resolver = dns_resolver_fixture
