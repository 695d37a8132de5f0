"""The HTTPS listener: MTA-STS policy + Thunderbird autoconfig over real TLS on loopback.

Clients verify the server against the test CA with the SNI name they ask for, so these
also check that one certificate serves every name ``required_names`` lists.
"""

from __future__ import annotations

import asyncio
import ssl
import time
import xml.etree.ElementTree as ET
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from mailserver.config import Config, config_from_dict
from mailserver.delivery.mtasts import MTASTS
from mailserver.dns.records import mta_sts_id, mta_sts_policy
from mailserver.dns.resolver import Resolver
from mailserver.net.http import HTTPError, Response, find_head_end, parse_request
from mailserver.tls import TLSManager
from mailserver.web import WebServer, autoconfig_xml, required_names, uncovered_names
from mailserver.web import main as web_main
from tests.support.ca import TestCA
from tests.support.dnsserver import DNSServer
from tests.support.wait import async_wait_until

POLICY_PATH = "/.well-known/mta-sts.txt"
TIMEOUT = 1.0  # the server's; short so the slowloris tests are quick


def make_cfg(tmp_path: Path, **extra: Any) -> Config:
    raw: dict[str, Any] = {
        "hostname": "mx.example.test",
        "primary_domain": "example.test",
        "local_domains": ["example.test", "other.test"],
        "state_dir": str(tmp_path / "state"),
        "tls": {"self_signed": True},  # the tests build their own TLSManager from the test CA
        "mta_sts": {"mode": "enforce", "max_age": "1d"},
    }
    raw.update(extra)
    return config_from_dict(raw)


@pytest.fixture
def cfg(tmp_path: Path) -> Config:
    return make_cfg(tmp_path)


@pytest.fixture
def tls(ca: TestCA, cfg: Config) -> TLSManager:
    cert, key = ca.issue(*required_names(cfg), stem="web")
    manager = TLSManager(cfg.hostname, cert, key)
    manager.load()
    return manager


@pytest.fixture
async def web(cfg: Config, tls: TLSManager) -> AsyncIterator[WebServer]:
    server = WebServer(cfg, tls.listener_context, timeout=TIMEOUT, max_connections=3)
    await server.listen("127.0.0.1", 0)
    yield server
    await server.close()


def port_of(server: WebServer) -> int:
    return server.sockets[0][1]


async def connect(server: WebServer, ca: TestCA, sni: str = "mta-sts.example.test",
                  ) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    return await asyncio.open_connection("127.0.0.1", port_of(server), ssl=ca.client_context(),
                                         server_hostname=sni)


async def exchange(server: WebServer, ca: TestCA, data: bytes, sni: str = "mta-sts.example.test",
                   ) -> tuple[int, dict[str, str], bytes]:
    """Send raw bytes over TLS, read to EOF: (status, headers, body)."""
    reader, writer = await connect(server, ca, sni)
    writer.write(data)
    raw = await asyncio.wait_for(reader.read(), 5)
    writer.close()
    head, _, body = raw.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    version, status, _ = lines[0].split(" ", 2)
    assert version == "HTTP/1.1"
    headers = {k.lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:])}
    return int(status), headers, body


async def get(server: WebServer, ca: TestCA, path: str, host: str = "mta-sts.example.test",
              method: str = "GET", sni: str | None = None) -> tuple[int, dict[str, str], bytes]:
    request = f"{method} {path} HTTP/1.1\r\nHost: {host}\r\nUser-Agent: test\r\n\r\n".encode()
    return await exchange(server, ca, request, sni=sni or host.partition(":")[0])


# ---------------------------------------------------------------------------- sans-I/O


def test_parse_request_origin_form() -> None:
    req = parse_request(b"GET /mail/config-v1.1.xml?emailaddress=a%40b.test HTTP/1.1\r\n"
                        b"Host: AutoConfig.Example.TEST.:8443\r\nAccept: */*\r\n\r\n")
    assert (req.method, req.path, req.query, req.version) == (
        "GET", "/mail/config-v1.1.xml", "emailaddress=a%40b.test", "HTTP/1.1")
    assert req.host == "autoconfig.example.test"
    assert req.headers["accept"] == "*/*"


def test_parse_request_absolute_form_and_http10() -> None:
    req = parse_request(b"GET https://mta-sts.example.test/.well-known/mta-sts.txt HTTP/1.1\r\n"
                        b"Host: ignored.test\r\n\r\n")
    assert (req.host, req.path) == ("mta-sts.example.test", POLICY_PATH)
    req = parse_request(b"HEAD / HTTP/1.0\n\n")  # bare LF, no Host: fine for 1.0
    assert (req.method, req.host, req.version) == ("HEAD", "", "HTTP/1.0")
    assert parse_request(b"GET / HTTP/1.1\r\nHost: [::1]:443\r\n\r\n").host == "[::1]"


@pytest.mark.parametrize(("head", "status"), [
    (b"POST / HTTP/1.1\r\nHost: a\r\n\r\n", 405),
    (b"DELETE / HTTP/1.1\r\nHost: a\r\n\r\n", 405),
    (b"GET / HTTP/1.1\r\n\r\n", 400),  # no Host
    (b"GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n", 400),
    (b"GET / HTTP/1.1\r\nHost : a\r\n\r\n", 400),  # space before the colon
    (b"GET / HTTP/1.1\r\nHost: a\r\nX: 1\r\n  folded\r\n\r\n", 400),
    (b"GET / HTTP/1.1\r\nHost: a/b\r\n\r\n", 400),
    (b"GET /\xc3\xa9 HTTP/1.1\r\nHost: a\r\n\r\n", 400),
    (b"GET  / HTTP/1.1\r\nHost: a\r\n\r\n", 400),
    (b"GET * HTTP/1.1\r\nHost: a\r\n\r\n", 400),
    (b"GET / HTTP/2.0\r\nHost: a\r\n\r\n", 505),
    (b"GET / FOO/1.1\r\nHost: a\r\n\r\n", 400),
    (b"GET / HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\n\r\n", 413),
    (b"GET / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n", 413),
    (b"GET / HTTP/1.1\r\nHost: a\r\nContent-Length: -1\r\n\r\n", 400),
    (b"\r\n\r\n", 400),
])
def test_parse_request_rejects(head: bytes, status: int) -> None:
    with pytest.raises(HTTPError) as info:
        parse_request(head)
    assert info.value.status == status


def test_parse_request_accepts_zero_content_length() -> None:
    assert parse_request(b"GET / HTTP/1.1\r\nHost: a\r\nContent-Length: 0\r\n\r\n").path == "/"


def test_find_head_end() -> None:
    assert find_head_end(b"GET / HTTP/1.1\r\nHost: a\r\n") == -1
    assert find_head_end(b"GET / HTTP/1.1\r\n\r\nrest") == 18
    assert find_head_end(b"GET / HTTP/1.0\n\n") == 16


def test_response_head_only_keeps_length() -> None:
    resp = Response(200, b"hello")
    assert resp.encode().endswith(b"\r\n\r\nhello")
    head = resp.encode(head_only=True)
    assert head.endswith(b"\r\n\r\n") and b"Content-Length: 5\r\n" in head and b"hello" not in head
    assert b"Connection: close\r\n" in head


def test_required_names(cfg: Config) -> None:
    assert required_names(cfg) == [
        "mx.example.test", "mta-sts.example.test", "autoconfig.example.test",
        "mta-sts.other.test", "autoconfig.other.test",
    ]


def test_uncovered_names(ca: TestCA, cfg: Config) -> None:
    cert, _ = ca.issue("mx.example.test", "*.example.test", stem="wild")
    assert uncovered_names(required_names(cfg), cert.read_bytes()) == [
        "mta-sts.other.test", "autoconfig.other.test"]
    # A wildcard covers exactly one label.
    assert uncovered_names(["a.b.example.test"], cert.read_bytes()) == ["a.b.example.test"]


def _servers(xml_text: str) -> dict[tuple[str, str, str], tuple[str, str, str, str]]:
    root = ET.fromstring(xml_text)
    assert root.tag == "clientConfig" and root.get("version") == "1.1"
    provider = root.find("emailProvider")
    assert provider is not None
    out = {}
    for server in [*provider.findall("incomingServer"), *provider.findall("outgoingServer")]:
        fields = {child.tag: child.text or "" for child in server}
        out[(server.tag, server.get("type") or "", fields["socketType"])] = (
            fields["hostname"], fields["port"], fields["username"], fields["authentication"])
    return out


def test_autoconfig_ports_follow_the_listeners(tmp_path: Path) -> None:
    cfg = make_cfg(tmp_path, listen={"imaps": ["127.0.0.1:1993"], "submission": ["[::1]:2587"]})
    servers = _servers(autoconfig_xml(cfg, "other.test"))
    login = ("%EMAILADDRESS%", "password-cleartext")
    assert servers == {
        ("incomingServer", "imap", "SSL"): ("mx.example.test", "1993", *login),
        ("incomingServer", "imap", "STARTTLS"): ("mx.example.test", "143", *login),
        ("outgoingServer", "smtp", "SSL"): ("mx.example.test", "465", *login),
        ("outgoingServer", "smtp", "STARTTLS"): ("mx.example.test", "2587", *login),
    }


# ---------------------------------------------------------------------------- over TLS


async def test_policy_served_for_each_domain(web: WebServer, ca: TestCA, cfg: Config) -> None:
    for domain in cfg.local_domains:
        status, headers, body = await get(web, ca, POLICY_PATH, host=f"MTA-STS.{domain.upper()}:443")
        assert status == 200
        assert body.decode("utf-8") == mta_sts_policy(cfg)
        assert "mode: enforce\r\n" in body.decode() and "max_age: 86400\r\n" in body.decode()
        assert headers["content-type"] == "text/plain; charset=utf-8"
        assert headers["content-length"] == str(len(body)) and headers["connection"] == "close"


async def test_head_has_headers_and_no_body(web: WebServer, ca: TestCA, cfg: Config) -> None:
    status, headers, body = await get(web, ca, POLICY_PATH, method="HEAD")
    assert status == 200 and body == b""
    assert headers["content-length"] == str(len(mta_sts_policy(cfg).encode()))


async def test_policy_only_on_mta_sts_hosts(web: WebServer, ca: TestCA) -> None:
    for host in ("autoconfig.example.test", "mx.example.test", "mta-sts.evil.test", "example.test"):
        status, _, body = await get(web, ca, POLICY_PATH, host=host, sni="mx.example.test")
        assert status == 404, host
        assert b"STSv1" not in body


async def test_unknown_paths_and_traversal_are_404(web: WebServer, ca: TestCA) -> None:
    for path in ("/", "/etc/passwd", "/../../../../etc/passwd", "/.well-known/../.well-known/mta-sts.txt",
                 "/.well-known/%2e%2e/%2e%2e/etc/passwd", "//.well-known/mta-sts.txt",
                 "/.well-known/mta-sts.txt/", "/.well-known/mta-sts.txt/..", "/.well-known/MTA-STS.TXT",
                 "/.well-known/mta-sts.txt%00", "/mail/../mail/config-v1.1.xml"):
        status, _, body = await get(web, ca, path)
        assert status == 404, path
        assert b"root:" not in body and b"STSv1" not in body


async def test_post_is_405(web: WebServer, ca: TestCA) -> None:
    request = (b"POST /.well-known/mta-sts.txt HTTP/1.1\r\nHost: mta-sts.example.test\r\n"
               b"Content-Length: 3\r\n\r\nabc")
    status, headers, _ = await exchange(web, ca, request)
    assert status == 405 and headers["allow"] == "GET, HEAD"


async def test_oversized_headers_are_431(web: WebServer, ca: TestCA) -> None:
    request = (b"GET /.well-known/mta-sts.txt HTTP/1.1\r\nHost: mta-sts.example.test\r\n"
               b"X-Big: " + b"a" * 9000 + b"\r\n\r\n")
    status, _, _ = await exchange(web, ca, request)
    assert status == 431
    # Just under the limit is fine.
    request = (b"GET /.well-known/mta-sts.txt HTTP/1.1\r\nHost: mta-sts.example.test\r\n"
               b"X-Big: " + b"a" * 7000 + b"\r\n\r\n")
    assert (await exchange(web, ca, request))[0] == 200


async def test_overlong_request_line_is_414(web: WebServer, ca: TestCA) -> None:
    status, _, _ = await exchange(web, ca, b"GET /" + b"a" * 9000)
    assert status == 414


async def test_silent_client_is_dropped_after_the_timeout(web: WebServer, ca: TestCA) -> None:
    reader, writer = await connect(web, ca)
    started = time.monotonic()
    try:
        data = await asyncio.wait_for(reader.read(), 10 * TIMEOUT)
    except (ConnectionError, ssl.SSLError):
        data = b""
    elapsed = time.monotonic() - started
    writer.close()
    assert data == b""  # no response to a request never made
    assert 0.8 * TIMEOUT <= elapsed < 5 * TIMEOUT


async def test_slowloris_gets_408(web: WebServer, ca: TestCA) -> None:
    reader, writer = await connect(web, ca)
    writer.write(b"GET /.well-known/mta-sts.txt HTTP/1.1\r\nHost: mta-sts.example.test\r\n")
    started = time.monotonic()
    raw = await asyncio.wait_for(reader.read(), 10 * TIMEOUT)
    assert raw.startswith(b"HTTP/1.1 408 ")
    assert time.monotonic() - started >= 0.8 * TIMEOUT
    writer.close()


async def test_slow_clients_do_not_block_others(cfg: Config, tls: TLSManager, ca: TestCA) -> None:
    server = WebServer(cfg, tls.listener_context, timeout=30)
    await server.listen("127.0.0.1", 0)
    try:
        slow = [await connect(server, ca) for _ in range(3)]
        for _, writer in slow:
            writer.write(b"GET /.well-known/mta-sts.txt HTTP/1.1\r\nHost: mta-")
        # exchange() gives up after 5 s, long before the slow ones' 30 s run out.
        status, _, body = await get(server, ca, POLICY_PATH)
        assert status == 200 and body.decode() == mta_sts_policy(cfg)
        for _, writer in slow:
            writer.close()
    finally:
        await server.close()


async def test_connection_cap(web: WebServer, ca: TestCA) -> None:
    idle = [await connect(web, ca) for _ in range(3)]  # the fixture's max_connections
    # The server takes them in after the handshake.
    await async_wait_until(lambda: web.listener.active == 3, interval=0.01, what="three open connections")
    status, headers, _ = await get(web, ca, POLICY_PATH)
    assert status == 503 and headers["retry-after"]
    for _, writer in idle:
        writer.close()
    await async_wait_until(lambda: web.listener.active == 0, interval=0.01, what="every connection closed")
    assert (await get(web, ca, POLICY_PATH))[0] == 200


async def test_autoconfig_over_https(web: WebServer, ca: TestCA) -> None:
    for path in ("/mail/config-v1.1.xml?emailaddress=bob%40other.test",
                 "/.well-known/autoconfig/mail/config-v1.1.xml"):
        host = "autoconfig.example.test" if path.startswith("/mail") else "example.test"
        status, headers, body = await exchange(
            web, ca, f"GET {path} HTTP/1.1\r\nHost: {host}\r\n\r\n".encode(), sni="autoconfig.example.test")
        assert status == 200
        assert headers["content-type"] == "application/xml; charset=utf-8"
        root = ET.fromstring(body)
        provider = root.find("emailProvider")
        assert provider is not None
        assert [d.text for d in provider.findall("domain")] == ["example.test", "other.test"]
        expected = "other.test" if "other.test" in path else "example.test"
        assert provider.get("id") == expected
        servers = _servers(body.decode())
        assert servers[("incomingServer", "imap", "SSL")][:2] == ("mx.example.test", "993")
        assert servers[("incomingServer", "imap", "STARTTLS")][1] == "143"
        assert servers[("outgoingServer", "smtp", "SSL")][1] == "465"
        assert servers[("outgoingServer", "smtp", "STARTTLS")][1] == "587"


async def test_autoconfig_ignores_foreign_address(web: WebServer, ca: TestCA) -> None:
    status, _, body = await get(web, ca, "/mail/config-v1.1.xml?emailaddress=%3Cscript%3E%40evil.test",
                                host="autoconfig.example.test")
    assert status == 200 and b"evil" not in body and b"script" not in body
    root = ET.fromstring(body)
    assert root.find("emailProvider").get("id") == "example.test"  # type: ignore[union-attr]


async def test_certificate_serves_every_required_name(web: WebServer, ca: TestCA, cfg: Config) -> None:
    for name in required_names(cfg):
        _, writer = await connect(web, ca, sni=name)  # verifies the name against the CA
        writer.close()


async def test_our_mta_sts_client_accepts_our_policy(web: WebServer, ca: TestCA, cfg: Config,
                                                     tmp_path: Path) -> None:
    """What a sender does: TXT id, then HTTPS fetch with verification (our own fetcher)."""
    with DNSServer() as dns:
        dns.add("mta-sts.example.test.", "A", "127.0.0.1")
        dns.add("_mta-sts.example.test.", "TXT", f"v=STSv1; id={mta_sts_id(mta_sts_policy(cfg))}")
        sts = MTASTS(Resolver([dns.nameserver], lifetime=2.0), cache_dir=tmp_path / "sts",
                     ca_file=str(ca.cert_path), https_port=port_of(web), fetch_timeout=3)
        policy = await sts.policy_for("example.test")
    assert policy is not None
    assert (policy.mode, policy.max_age) == ("enforce", 86400)
    assert policy.matches("mx.example.test") and not policy.matches("mx.evil.test")


def test_policy_under_uvloop(cfg: Config, tls: TLSManager, ca: TestCA) -> None:
    uvloop = pytest.importorskip("uvloop")

    async def main() -> tuple[int, bytes, int]:
        server = WebServer(cfg, tls.listener_context, timeout=TIMEOUT)
        await server.listen("127.0.0.1", 0)
        try:
            status, _, body = await get(server, ca, POLICY_PATH)
            too_big = await exchange(server, ca, b"GET / HTTP/1.1\r\nX: " + b"a" * 9000 + b"\r\n\r\n")
            return status, body, too_big[0]
        finally:
            await server.close()

    assert uvloop.run(main()) == (200, mta_sts_policy(cfg).encode(), 431)


def test_static_files_match_what_is_served(tmp_path: Path, cfg: Config) -> None:
    """For nginx: the same bytes as the listener sends, so the published id still holds."""
    out = tmp_path / "www"
    config = tmp_path / "pymaild.toml"
    config.write_text('hostname = "mx.example.test"\nprimary_domain = "example.test"\n'
                      'local_domains = ["example.test", "other.test"]\n'
                      f'state_dir = "{tmp_path / "state"}"\n[tls]\nself_signed = true\n'
                      '[mta_sts]\nmode = "enforce"\nmax_age = "1d"\n')
    assert web_main(["-c", str(config), str(out)]) == 0
    assert (out / ".well-known/mta-sts.txt").read_bytes() == mta_sts_policy(cfg).encode()
    for path in ("mail/config-v1.1.xml", ".well-known/autoconfig/mail/config-v1.1.xml"):
        assert (out / path).read_text() == autoconfig_xml(cfg, "example.test")
        assert (out / path).parent.stat().st_mode & 0o777 == 0o755
    assert web_main(["-c", str(tmp_path / "missing.toml"), str(out)]) == 2  # config error


async def test_close_ends_open_connections(cfg: Config, tls: TLSManager, ca: TestCA) -> None:
    server = WebServer(cfg, tls.listener_context, timeout=30)
    await server.listen("127.0.0.1", 0)
    port = port_of(server)
    reader, writer = await connect(server, ca)
    writer.write(b"GET / HTTP/1.1\r\n")  # a request in progress, far from its timeout
    await async_wait_until(lambda: server.listener.active == 1, interval=0.01,
                           what="the server to take the connection")
    started = time.monotonic()
    await server.close()
    try:
        data = await asyncio.wait_for(reader.read(), 5)
    except (ConnectionError, ssl.SSLError):
        data = b""
    assert data == b"" and time.monotonic() - started < 3
    writer.close()
    with pytest.raises(OSError):
        await asyncio.open_connection("127.0.0.1", port)


async def test_head_error_has_no_body(web: WebServer, ca: TestCA) -> None:
    status, headers, body = await exchange(web, ca, b"HEAD / HTTP/1.1\r\n\r\n")  # no Host: 400
    assert status == 400 and body == b"" and int(headers["content-length"]) > 0
