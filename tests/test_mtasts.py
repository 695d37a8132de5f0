"""MTA-STS (RFC 8461): parsing, a real HTTPS fetch through the loopback DNS, and the disk cache."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from mailserver.delivery.mtasts import MTASTS, Policy, PolicyError, parse_policy, parse_txt
from mailserver.dns.resolver import Resolver
from tests.support.ca import TestCA
from tests.support.dnsserver import DNSServer
from tests.support.smtpsink import HTTPResponse, PolicyServer
from tests.support.wait import async_wait_until

pytestmark = pytest.mark.timeout(30)

POLICY = ("version: STSv1\r\nmode: enforce\r\nmx: mx1.example.test\r\nmx: *.backup.example.test\r\n"
          "max_age: 86400\r\n")


# --------------------------------------------------------------------- parsing


def test_parse_policy() -> None:
    p = parse_policy(POLICY, "abc")
    assert p == Policy("enforce", ["mx1.example.test", "*.backup.example.test"], 86400, "abc")
    # LF line ends, extra whitespace, unknown keys (ignored), any order
    p = parse_policy("max_age:600\nfoo: bar\nmode:  testing \nversion: STSv1\nmx: MX.Example.Test\n")
    assert (p.mode, p.mx_patterns, p.max_age) == ("testing", ["mx.example.test"], 600)
    assert parse_policy("version: STSv1\nmode: none\nmax_age: 1\n").mode == "none"


@pytest.mark.parametrize("text", [
    "version: STSv2\nmode: enforce\nmx: a.test\nmax_age: 1\n",
    "mode: enforce\nmx: a.test\nmax_age: 1\n",
    "version: STSv1\nmode: strict\nmx: a.test\nmax_age: 1\n",
    "version: STSv1\nmode: enforce\nmax_age: 1\n",                    # enforce without mx
    "version: STSv1\nmode: enforce\nmx: a.test\nmax_age: 31557601\n",  # over one year
    "version: STSv1\nmode: enforce\nmx: a.test\nmax_age: -1\n",
    "version: STSv1\nmode: enforce\nmx: a.test\n",
    "version: STSv1\nmode: enforce\nmx: a.*.test\nmax_age: 1\n",
    "version: STSv1\nmode: enforce\nmx: a.test\nmax_age: 1\n<html>\n",
    "<html><body>Not found</body></html>",
])
def test_parse_policy_refuses(text: str) -> None:
    with pytest.raises(PolicyError):
        parse_policy(text)


def test_matches_rfc_wildcards() -> None:
    p = Policy("enforce", ["mx1.example.test", "*.example.net"], 1, "x")
    assert p.matches("mx1.example.test") and p.matches("MX1.Example.Test.")
    assert p.matches("a.example.net")
    assert not p.matches("example.net")  # the wildcard needs exactly one label
    assert not p.matches("a.b.example.net")
    assert not p.matches("mx1.example.test.evil.test") and not p.matches("xmx1.example.test")
    assert not p.matches("")


def test_parse_txt() -> None:
    assert parse_txt(["v=STSv1; id=20261101T01"]) == "20261101T01"
    assert parse_txt(["v=spf1 -all", "v=STSv1;id=abc;"]) == "abc"
    assert parse_txt([]) is None
    assert parse_txt(["v=STSv1; id=a", "v=STSv1; id=b"]) is None  # two records: no policy
    assert parse_txt(["v=STSv1; id=bad-id!"]) is None
    assert parse_txt(["v=STSv1"]) is None
    assert parse_txt(["v=STSv10; id=abc"]) is None


# --------------------------------------------------------------------- fetch and cache


@pytest.fixture
def resolver(dns_server: DNSServer) -> Resolver:
    return Resolver([dns_server.nameserver], lifetime=2.0, attempt_timeout=1.0)


@pytest.fixture
async def server(ca: TestCA, dns_server: DNSServer) -> AsyncIterator[PolicyServer]:
    srv = await PolicyServer("127.0.0.9", ca.issue("mta-sts.example.test")).start()
    dns_server.add("mta-sts.example.test", "A", "127.0.0.9")
    dns_server.add("_mta-sts.example.test", "TXT", "v=STSv1; id=one")
    srv.serve_policy(POLICY)
    yield srv
    await srv.stop()


def make(resolver: Resolver, server: PolicyServer, ca: TestCA, tmp_path: Path, **kw: object) -> MTASTS:
    options: dict[str, object] = {"cache_dir": tmp_path / "sts", "ca_file": str(ca.cert_path),
                                  "https_port": server.port, "fetch_timeout": 3}
    options.update(kw)
    return MTASTS(resolver, **options)  # type: ignore[arg-type]


async def test_fetch_and_use(resolver: Resolver, server: PolicyServer, ca: TestCA, tmp_path: Path) -> None:
    sts = make(resolver, server, ca, tmp_path)
    policy = await sts.policy_for("Example.Test")
    assert policy is not None
    assert (policy.mode, policy.id, policy.max_age) == ("enforce", "one", 86400)
    assert policy.matches("mx1.example.test") and policy.matches("b1.backup.example.test")
    head = server.requests[0]
    assert head.startswith("GET /.well-known/mta-sts.txt HTTP/1.1\r\n")
    assert f"Host: mta-sts.example.test:{server.port}\r\n" in head and "Connection: close" in head
    # Same id in DNS: the cached policy is used, no second fetch.
    assert await sts.policy_for("example.test") == policy
    assert len(server.requests) == 1


async def test_no_txt_record_means_no_policy(resolver: Resolver, server: PolicyServer, ca: TestCA,
                                             tmp_path: Path, dns_server: DNSServer) -> None:
    dns_server.remove("_mta-sts.example.test")
    assert await make(resolver, server, ca, tmp_path).policy_for("example.test") is None
    assert server.requests == []


async def test_cache_survives_a_new_object(resolver: Resolver, server: PolicyServer, ca: TestCA,
                                           tmp_path: Path, dns_server: DNSServer) -> None:
    first = await make(resolver, server, ca, tmp_path).policy_for("example.test")
    assert first is not None
    cached = json.loads((tmp_path / "sts" / "example.test.json").read_text())
    assert cached["id"] == "one" and cached["max_age"] == 86400 and cached["fetched_at"] <= time.time()
    # A "restart": new object, policy server gone, TXT record gone (an attacker
    # stripping it must not downgrade us): the cached policy still applies.
    await server.stop()
    dns_server.remove("_mta-sts.example.test")
    resolver.cache.clear()
    assert await make(resolver, server, ca, tmp_path).policy_for("example.test") == first
    assert dns_server.count("_mta-sts.example.test", "TXT") == 2  # really asked, really gone
    # DNS failing altogether: still the cached one.
    dns_server.servfail("_mta-sts.example.test")
    fresh_resolver = Resolver([dns_server.nameserver], lifetime=1.0, attempt_timeout=0.5)
    assert await make(fresh_resolver, server, ca, tmp_path).policy_for("example.test") == first


async def test_new_id_refetches_and_failed_refetch_keeps_cache(
    resolver: Resolver, server: PolicyServer, ca: TestCA, tmp_path: Path, dns_server: DNSServer
) -> None:
    sts = make(resolver, server, ca, tmp_path)
    assert (await sts.policy_for("example.test")).mode == "enforce"  # type: ignore[union-attr]
    dns_server.set("_mta-sts.example.test", "TXT", ["v=STSv1; id=two"])
    resolver.cache.clear()
    server.serve_policy(POLICY.replace("enforce", "testing"))
    policy = await sts.policy_for("example.test")
    assert policy is not None and (policy.mode, policy.id) == ("testing", "two")
    assert len(server.requests) == 2

    dns_server.set("_mta-sts.example.test", "TXT", ["v=STSv1; id=three"])
    resolver.cache.clear()
    server.response = HTTPResponse(status=500)
    assert await sts.policy_for("example.test") == policy  # §5.1: keep using the cached one


async def test_expired_cache_is_not_used(resolver: Resolver, server: PolicyServer, ca: TestCA,
                                         tmp_path: Path, dns_server: DNSServer) -> None:
    await make(resolver, server, ca, tmp_path).policy_for("example.test")
    path = tmp_path / "sts" / "example.test.json"
    entry = json.loads(path.read_text())
    entry["fetched_at"] = time.time() - 86401
    path.write_text(json.dumps(entry))
    await server.stop()
    assert await make(resolver, server, ca, tmp_path).policy_for("example.test") is None


async def test_policy_past_half_life_is_refreshed_in_the_background(
    resolver: Resolver, server: PolicyServer, ca: TestCA, tmp_path: Path
) -> None:
    sts = make(resolver, server, ca, tmp_path)
    first = await sts.policy_for("example.test")
    path = tmp_path / "sts" / "example.test.json"
    entry = json.loads(path.read_text())
    entry["fetched_at"] = time.time() - 86400 * 0.6  # older than max_age / 2
    path.write_text(json.dumps(entry))
    sts = make(resolver, server, ca, tmp_path)  # a fresh object reads the aged cache
    assert await sts.policy_for("example.test") == first  # served at once from the cache

    def refreshed() -> bool:
        return len(server.requests) == 2 and json.loads(path.read_text())["fetched_at"] > entry["fetched_at"]

    await async_wait_until(refreshed, what="a background refresh: a second fetch, a rewritten cache")
    assert json.loads(path.read_text())["fetched_at"] > time.time() - 60  # the cache is renewed
    assert await sts.policy_for("example.test") == first
    assert len(server.requests) == 2  # young again: no further fetch


async def test_corrupt_cache_file_is_ignored(resolver: Resolver, server: PolicyServer, ca: TestCA,
                                             tmp_path: Path) -> None:
    (tmp_path / "sts").mkdir()
    (tmp_path / "sts" / "example.test.json").write_text("{not json")
    policy = await make(resolver, server, ca, tmp_path).policy_for("example.test")
    assert policy is not None and policy.id == "one"


@pytest.mark.parametrize(("response", "reason"), [
    (HTTPResponse(status=301, headers={"Location": "https://evil.test/x"}), "redirect"),
    (HTTPResponse(status=302, headers={"Location": "/.well-known/other.txt", "Content-Type": "text/plain"},
                  body=POLICY.encode()), "redirect"),
    (HTTPResponse(status=404), "status 404"),
    (HTTPResponse(headers={"Content-Type": "text/html"}, body=POLICY.encode()), "Content-Type"),
    (HTTPResponse(headers={}, body=POLICY.encode()), "Content-Type"),
    (HTTPResponse(body=POLICY.encode() + b"x" * 70000), "limit"),
    (HTTPResponse(body=POLICY.encode() + b"x" * 70000, chunked=True), "limit"),
    (HTTPResponse(body=b"\xff\xfe" + POLICY.encode()), "UTF-8"),
])
async def test_fetch_failures(resolver: Resolver, server: PolicyServer, ca: TestCA, tmp_path: Path,
                              response: HTTPResponse, reason: str) -> None:
    server.response = response
    sts = make(resolver, server, ca, tmp_path)
    with pytest.raises(PolicyError, match=reason):
        await sts.fetch("example.test")
    assert await sts.policy_for("example.test") is None  # and policy_for falls back to "no policy"
    assert len(server.requests) == 2  # never followed a Location


async def test_small_size_cap(resolver: Resolver, server: PolicyServer, ca: TestCA, tmp_path: Path) -> None:
    with pytest.raises(PolicyError, match="limit"):
        await make(resolver, server, ca, tmp_path, max_policy_bytes=20).fetch("example.test")


async def test_chunked_response(resolver: Resolver, server: PolicyServer, ca: TestCA, tmp_path: Path) -> None:
    server.response = HTTPResponse(body=POLICY.encode(), chunked=True,
                                   headers={"Content-Type": "text/plain; charset=utf-8"})
    policy = await make(resolver, server, ca, tmp_path).fetch("example.test", "one")
    assert policy.mx_patterns == ["mx1.example.test", "*.backup.example.test"]


async def test_certificate_must_match_policy_host(
    resolver: Resolver, ca: TestCA, tmp_path: Path, dns_server: DNSServer
) -> None:
    srv = await PolicyServer("127.0.0.9", ca.issue("www.example.test")).start()
    try:
        srv.serve_policy(POLICY)
        dns_server.add("mta-sts.example.test", "A", "127.0.0.9")
        with pytest.raises(PolicyError, match="cannot connect"):
            await make(resolver, srv, ca, tmp_path).fetch("example.test")
        assert srv.requests == []
    finally:
        await srv.stop()


async def test_untrusted_ca_fails(resolver: Resolver, server: PolicyServer, tmp_path: Path) -> None:
    other = TestCA(tmp_path / "other-ca")
    with pytest.raises(PolicyError):
        await make(resolver, server, other, tmp_path).fetch("example.test")


async def test_policy_host_without_address(resolver: Resolver, server: PolicyServer, ca: TestCA,
                                           tmp_path: Path, dns_server: DNSServer) -> None:
    dns_server.remove("mta-sts.example.test")
    dns_server.add("mta-sts.example.test", "TXT", "placeholder")  # exists, but no A/AAAA
    with pytest.raises(PolicyError, match="no address"):
        await make(resolver, server, ca, tmp_path).fetch("example.test")


async def test_slow_server_times_out(resolver: Resolver, ca: TestCA, tmp_path: Path,
                                     dns_server: DNSServer) -> None:
    done = asyncio.Event()

    async def silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await done.wait()  # accept TCP, never speak TLS
        writer.close()

    srv = await asyncio.start_server(silent, "127.0.0.9", 0)
    dns_server.add("mta-sts.example.test", "A", "127.0.0.9")
    sts = MTASTS(resolver, cache_dir=tmp_path, ca_file=str(ca.cert_path),
                 https_port=srv.sockets[0].getsockname()[1], fetch_timeout=0.5)
    start = time.monotonic()
    try:
        with pytest.raises(PolicyError, match="timed out"):
            await sts.fetch("example.test")
    finally:
        done.set()
        srv.close()
        await srv.wait_closed()
    assert time.monotonic() - start < 3
