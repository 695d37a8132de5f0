"""Remote delivery under uvloop, the loop the daemon runs on.

uvloop calls a protocol's data_received through a cached reference, so checks built on
wrapping it silently do nothing there; this caught a STARTTLS check that refused every
TLS session under uvloop while passing under asyncio.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import pytest

from mailserver.delivery.remote import RemoteDelivery
from mailserver.dns.resolver import Resolver
from tests.support.ca import TestCA
from tests.support.daemon import free_port
from tests.support.dnsserver import DNSServer
from tests.support.smtpsink import SMTPSink

uvloop = pytest.importorskip("uvloop")


def deliver_under_uvloop(inject: bytes | None) -> tuple[str, int]:
    async def main() -> tuple[str, int]:
        ca = TestCA(Path(tempfile.mkdtemp()))
        with DNSServer() as dns:
            port = free_port("127.0.0.4")
            sink = await SMTPSink("127.0.0.4", port, tls=ca.issue("mx.c.test")).start()
            if inject is not None:
                sink.inject_after_starttls = inject
            dns.add("c.test.", "MX", "10 mx.c.test.")
            dns.add("mx.c.test.", "A", "127.0.0.4")
            remote = RemoteDelivery(Resolver([dns.nameserver]), hostname="mx.a.test", mx_port=port,
                                    command_timeout=5)
            result = await remote.deliver("a@a.test", ["d@c.test"], b"Subject: x\r\n\r\nhi\r\n")
            await sink.stop()
            return result["d@c.test"].kind, len(sink.transactions)

    return uvloop.run(main())


def test_starttls_delivery_works_under_uvloop():
    assert deliver_under_uvloop(None) == ("sent", 1)


def test_starttls_injection_is_caught_under_uvloop():
    assert deliver_under_uvloop(b"250 injected\r\n") == ("temp", 0)

