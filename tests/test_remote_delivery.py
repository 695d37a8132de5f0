"""Remote delivery against real SMTP sinks on 127.0.0.x, real TLS (test CA) and the loopback DNS server."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import aiosmtplib
import pytest

from mailserver.address import AddressError
from mailserver.delivery.mtasts import MTASTS
from mailserver.delivery.remote import RemoteDelivery, canonical_crlf, check_address, wire_data
from mailserver.dns.resolver import Resolver
from tests.support.ca import TestCA
from tests.support.dnsserver import DNSServer
from tests.support.smtpsink import PolicyServer, SMTPSink, start_sinks

pytestmark = pytest.mark.timeout(30)

MSG = b"From: a@example.org\r\nTo: b@example.test\r\nSubject: hi\r\n\r\nHello.\r\n"

MX1 = (10, "mx1.example.test", "127.0.0.2")
MX2 = (20, "mx2.example.test", "127.0.0.3")

Sinks = Callable[..., Awaitable[list[SMTPSink]]]


@pytest.fixture
def resolver(dns_server: DNSServer) -> Resolver:
    return Resolver([dns_server.nameserver], lifetime=2.0, attempt_timeout=1.0)


@pytest.fixture
async def sinks() -> AsyncIterator[Sinks]:
    started: list[SMTPSink] = []

    async def make(*hosts: str, **options: object) -> list[SMTPSink]:
        group = await start_sinks(hosts, **options)
        started.extend(group)
        return group

    yield make
    for sink in started:
        await sink.stop()


def delivery(resolver: Resolver, port: int, **kw: object) -> RemoteDelivery:
    options: dict[str, object] = {"hostname": "out.example.org", "mx_port": port,
                                  "connect_timeout": 3, "command_timeout": 3, "data_timeout": 3}
    options.update(kw)
    return RemoteDelivery(resolver, **options)  # type: ignore[arg-type]


def mx(dns: DNSServer, domain: str, *records: tuple[int, str, str]) -> None:
    """Publish MX records (preference, host, IPv4) and the hosts' A records."""
    for pref, host, ip in records:
        dns.add(domain, "MX", f"{pref} {host}")
        dns.add(host, "A", ip)


# --------------------------------------------------------------------- routing


async def test_lowest_preference_first(dns_server: DNSServer, resolver: Resolver, sinks: Sinks) -> None:
    s1, s2 = await sinks("127.0.0.2", "127.0.0.3")
    mx(dns_server, "example.test", MX2, MX1)
    res = await delivery(resolver, s1.port).deliver("a@example.org", ["b@example.test"], MSG)
    assert res["b@example.test"].kind == "sent"
    assert res["b@example.test"].mx == "mx1.example.test"
    assert res["b@example.test"].reply.code == 250
    assert len(s1.transactions) == 1 and not s2.transactions
    t = s1.transactions[0]
    assert (t.mail_from, t.rcpts, t.data) == ("a@example.org", ["b@example.test"], MSG)
    assert t.ehlo == "out.example.org"


async def test_falls_back_to_second_mx_when_first_refuses(
    dns_server: DNSServer, resolver: Resolver, sinks: Sinks
) -> None:
    (s2,) = await sinks("127.0.0.3")  # nothing listens on 127.0.0.2: connection refused
    mx(dns_server, "example.test", MX1, MX2)
    res = await delivery(resolver, s2.port).deliver("a@example.org", ["b@example.test"], MSG)
    assert res["b@example.test"].kind == "sent"
    assert res["b@example.test"].mx == "mx2.example.test"
    assert s2.received == [MSG]


async def test_second_mx_used_after_451_greeting_and_4xx_mail(
    dns_server: DNSServer, resolver: Resolver, sinks: Sinks
) -> None:
    s1, s2 = await sinks("127.0.0.2", "127.0.0.3")
    s1.script("GREETING", "421 4.3.2 busy")
    mx(dns_server, "example.test", MX1, MX2)
    res = await delivery(resolver, s1.port).deliver("a@example.org", ["b@example.test"], MSG)
    assert res["b@example.test"].mx == "mx2.example.test" and s2.received == [MSG]

    s1.script("MAIL", "451 4.3.0 later")
    res = await delivery(resolver, s1.port).deliver("a@example.org", ["b@example.test"], MSG)
    assert res["b@example.test"].mx == "mx2.example.test" and len(s2.received) == 2


async def test_all_mx_down_is_temp(dns_server: DNSServer, resolver: Resolver) -> None:
    mx(dns_server, "example.test", MX1)
    res = await delivery(resolver, 1).deliver("a@example.org", ["b@example.test"], MSG)
    r = res["b@example.test"]
    assert (r.kind, r.status) == ("temp", "4.4.1") and "mx1.example.test" in r.reply.text


async def test_implicit_mx(dns_server: DNSServer, resolver: Resolver, sinks: Sinks) -> None:
    (sink,) = await sinks("127.0.0.4")
    dns_server.add("example.test", "A", "127.0.0.4")
    res = await delivery(resolver, sink.port).deliver("a@example.org", ["b@example.test"], MSG)
    assert res["b@example.test"].kind == "sent"
    assert res["b@example.test"].mx == "example.test"
    assert sink.received == [MSG]


async def test_implicit_mx_over_ipv6(dns_server: DNSServer, resolver: Resolver, sinks: Sinks) -> None:
    (sink,) = await sinks("::1")
    dns_server.add("example.test", "AAAA", "::1")
    res = await delivery(resolver, sink.port).deliver("a@example.org", ["b@example.test"], MSG)
    assert res["b@example.test"].kind == "sent" and sink.transactions[0].peer == "::1"


async def test_null_mx_bounces_at_once(dns_server: DNSServer, resolver: Resolver, sinks: Sinks) -> None:
    (sink,) = await sinks("127.0.0.2")
    dns_server.add("example.test", "MX", "0 .")
    dns_server.add("example.test", "A", "127.0.0.2")  # must not be used as implicit MX
    res = await delivery(resolver, sink.port).deliver("a@example.org", ["b@example.test"], MSG)
    r = res["b@example.test"]
    assert (r.kind, r.status) == ("perm", "5.1.10")
    assert sink.connections == 0


async def test_nxdomain_is_permanent(dns_server: DNSServer, resolver: Resolver) -> None:
    dns_server.add("other.test", "A", "127.0.0.2")
    res = await delivery(resolver, 1).deliver("a@example.org", ["b@nowhere.test"], MSG)
    r = res["b@nowhere.test"]
    assert (r.kind, r.status) == ("perm", "5.1.2") and "does not exist" in r.reply.text


async def test_dns_failure_is_temporary(dns_server: DNSServer, resolver: Resolver) -> None:
    dns_server.servfail("example.test")
    res = await delivery(resolver, 1).deliver("a@example.org", ["b@example.test"], MSG)
    assert (res["b@example.test"].kind, res["b@example.test"].status) == ("temp", "4.4.3")


async def test_mx_pointing_to_ourselves_is_a_loop(dns_server: DNSServer, resolver: Resolver) -> None:
    mx(dns_server, "example.test", (10, "out.example.org", "127.0.0.2"))
    res = await delivery(resolver, 1).deliver("a@example.org", ["b@example.test"], MSG)
    assert (res["b@example.test"].kind, res["b@example.test"].status) == ("perm", "5.4.6")


# --------------------------------------------------------------------- replies


async def test_451_is_temp(dns_server: DNSServer, resolver: Resolver, sinks: Sinks) -> None:
    (sink,) = await sinks("127.0.0.2")
    mx(dns_server, "example.test", MX1)
    sink.script("DOT", "451 4.3.0 local problem")
    res = await delivery(resolver, sink.port).deliver("a@example.org", ["b@example.test"], MSG)
    r = res["b@example.test"]
    assert (r.kind, r.reply.code, r.status, r.mx) == ("temp", 451, "4.3.0", "mx1.example.test")
    assert "local problem" in r.reply.text

    sink.script("RCPT", "450 4.2.1 greylisted")
    res = await delivery(resolver, sink.port).deliver("a@example.org", ["b@example.test"], MSG)
    assert (res["b@example.test"].kind, res["b@example.test"].status) == ("temp", "4.2.1")
    assert not sink.transactions


async def test_550_for_one_recipient_250_for_another(
    dns_server: DNSServer, resolver: Resolver, sinks: Sinks
) -> None:
    (sink,) = await sinks("127.0.0.2")
    mx(dns_server, "example.test", MX1)
    sink.rcpt_replies["bad@example.test"] = "550 5.1.1 no such user"
    res = await delivery(resolver, sink.port).deliver(
        "a@example.org", ["good@example.test", "bad@example.test"], MSG)
    assert res["good@example.test"].kind == "sent"
    bad = res["bad@example.test"]
    assert (bad.kind, bad.reply.code, bad.status) == ("perm", 550, "5.1.1")
    assert sink.transactions[0].rcpts == ["good@example.test"]


async def test_5xx_after_data_bounces_accepted_recipients_only(
    dns_server: DNSServer, resolver: Resolver, sinks: Sinks
) -> None:
    (sink,) = await sinks("127.0.0.2")
    mx(dns_server, "example.test", MX1)
    sink.rcpt_replies["c@example.test"] = "452 4.2.2 mailbox full"
    sink.script("DOT", "554 5.7.1 spam")
    res = await delivery(resolver, sink.port).deliver("a@example.org", ["b@example.test", "c@example.test"],
                                                         MSG)
    assert (res["b@example.test"].kind, res["b@example.test"].status) == ("perm", "5.7.1")
    assert (res["c@example.test"].kind, res["c@example.test"].status) == ("temp", "4.2.2")


async def test_hang_mid_data_is_temp_after_timeout(
    dns_server: DNSServer, resolver: Resolver, sinks: Sinks
) -> None:
    (sink,) = await sinks("127.0.0.2")
    mx(dns_server, "example.test", MX1)
    sink.hang.add("DOT")
    start = time.monotonic()
    res = await delivery(resolver, sink.port, data_timeout=0.5).deliver(
        "a@example.org", ["b@example.test"], MSG)
    assert time.monotonic() - start < 3
    r = res["b@example.test"]
    assert r.kind == "temp" and "during DATA" in r.reply.text and "timed out" in r.reply.text


async def test_dropped_connection_is_temp(dns_server: DNSServer, resolver: Resolver) -> None:
    async def rude(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(b"220 hello\r\n")
        await reader.readline()
        writer.close()

    server = await asyncio.start_server(rude, "127.0.0.2", 0)
    port = server.sockets[0].getsockname()[1]
    mx(dns_server, "example.test", MX1)
    try:
        res = await delivery(resolver, port).deliver("a@example.org", ["b@example.test"], MSG)
    finally:
        server.close()
    assert res["b@example.test"].kind == "temp"


# --------------------------------------------------------------------- content and addresses


async def test_dot_lines_and_bare_newlines_arrive_intact(
    dns_server: DNSServer, resolver: Resolver, sinks: Sinks
) -> None:
    (sink,) = await sinks("127.0.0.2")
    mx(dns_server, "example.test", MX1)
    body = (b"Subject: dots\r\n\r\nline\r\n.\r\nMAIL FROM:<evil@example.net>\r\n..two\r\n.three\n"
            b"bare lf\nbare cr\rlast without newline")
    res = await delivery(resolver, sink.port).deliver("a@example.org", ["b@example.test"], body)
    assert res["b@example.test"].kind == "sent"
    assert len(sink.transactions) == 1  # the "." line did not end the message early
    assert sink.received == [canonical_crlf(body)]
    assert sink.received[0].endswith(b"last without newline\r\n")
    assert b"\r\n.\r\nMAIL FROM" in sink.received[0]
    # Whole-command check: nothing after the message was taken as a command.
    assert not any(c.startswith("MAIL FROM:<evil") for c in sink.commands)


def test_canonical_crlf_and_dot_stuffing() -> None:
    assert canonical_crlf(b"a\nb\r\nc\rd") == b"a\r\nb\r\nc\r\nd\r\n"
    assert canonical_crlf(b"a\r\n") == b"a\r\n"
    assert canonical_crlf(b"\r\n\n\r") == b"\r\n\r\n\r\n"
    assert wire_data(b".a\r\n.\r\nb\n..c") == b"..a\r\n..\r\nb\r\n...c\r\n.\r\n"
    assert wire_data(b"") == b"\r\n.\r\n"


async def test_large_message_with_dot_lines(dns_server: DNSServer, resolver: Resolver, sinks: Sinks) -> None:
    (sink,) = await sinks("127.0.0.2")
    mx(dns_server, "example.test", MX1)
    body = b"Subject: big\r\n\r\n" + b".dot line\r\n.\r\nplain line\n" * 120_000  # ~3 MB, threaded path
    res = await delivery(resolver, sink.port).deliver("a@example.org", ["b@example.test"], body)
    assert res["b@example.test"].kind == "sent"
    assert sink.received == [canonical_crlf(body)]


@pytest.mark.parametrize("bad", [
    "b@example.test\r\nRCPT TO:<x@evil.test>", "b@example.test\x00", "@relay.test:b@example.test",
    "<b@example.test>", "b@example.test>", "b example@example.test", "b@[127.0.0.1]", "nodomain", "",
])
def test_check_address_refuses(bad: str) -> None:
    with pytest.raises(AddressError):
        check_address(bad)


async def test_invalid_addresses_are_perm_and_never_sent(
    dns_server: DNSServer, resolver: Resolver, sinks: Sinks
) -> None:
    (sink,) = await sinks("127.0.0.2")
    mx(dns_server, "example.test", MX1)
    evil = "x@example.test>\r\nRCPT TO:<y@example.test"
    routed = "@mx1.example.test:y@example.test"
    res = await delivery(resolver, sink.port).deliver(
        "a@example.org", [evil, routed, '"quoted local"@example.test'], MSG)
    assert (res[evil].kind, res[evil].status) == ("perm", "5.1.3")
    assert (res[routed].kind, res[routed].status) == ("perm", "5.1.3")
    assert res['"quoted local"@example.test'].kind == "sent"
    assert sink.transactions[0].rcpts == ['"quoted local"@example.test']
    assert all("y@example.test" not in c for c in sink.commands)

    res = await delivery(resolver, sink.port).deliver("a@b\r\n@example.org", ["b@example.test"], MSG)
    assert (res["b@example.test"].kind, res["b@example.test"].status) == ("perm", "5.1.7")


async def test_null_sender_and_size_param(dns_server: DNSServer, resolver: Resolver, sinks: Sinks) -> None:
    (sink,) = await sinks("127.0.0.2")
    mx(dns_server, "example.test", MX1)
    res = await delivery(resolver, sink.port).deliver("", ["b@example.test"], MSG + "é".encode())
    assert res["b@example.test"].kind == "sent"
    t = sink.transactions[0]
    assert t.mail_from == ""
    assert f"SIZE={len(MSG) + 4}" in t.mail_params and "BODY=8BITMIME" in t.mail_params


async def test_message_over_advertised_size_is_perm(
    dns_server: DNSServer, resolver: Resolver, sinks: Sinks
) -> None:
    (sink,) = await sinks("127.0.0.2", extensions=["SIZE 10"])
    mx(dns_server, "example.test", MX1)
    res = await delivery(resolver, sink.port).deliver("a@example.org", ["b@example.test"], MSG)
    assert (res["b@example.test"].kind, res["b@example.test"].status) == ("perm", "5.3.4")


# --------------------------------------------------------------------- connections and TLS


async def test_one_connection_for_domains_sharing_an_mx(
    dns_server: DNSServer, resolver: Resolver, sinks: Sinks
) -> None:
    (sink,) = await sinks("127.0.0.2")
    for domain in ("one.test", "two.test", "three.test"):
        mx(dns_server, domain, (10, "mx.hosting.test", "127.0.0.2"))
    sink.rcpt_replies["x@two.test"] = "550 5.1.1 unknown"  # leaves a transaction to RSET
    rcpts = ["a@one.test", "x@two.test", "b@two.test", "c@three.test"]
    res = await delivery(resolver, sink.port).deliver("s@example.org", rcpts, MSG)
    assert [res[r].kind for r in rcpts] == ["sent", "perm", "sent", "sent"]
    assert sink.connections == 1
    delivered = sorted(r for t in sink.transactions for r in t.rcpts)
    assert delivered == ["a@one.test", "b@two.test", "c@three.test"]
    assert sink.commands[-1] == "QUIT"


async def test_opportunistic_starttls_accepts_any_certificate(
    dns_server: DNSServer, resolver: Resolver, sinks: Sinks, ca: TestCA
) -> None:
    (sink,) = await sinks("127.0.0.2", tls=ca.issue("unrelated.example.net"))
    mx(dns_server, "example.test", MX1)
    res = await delivery(resolver, sink.port).deliver("a@example.org", ["b@example.test"], MSG)
    assert res["b@example.test"].kind == "sent"
    assert sink.transactions[0].tls and sink.transactions[0].sni == "mx1.example.test"
    assert sink.commands.count("EHLO out.example.org") == 2  # again after TLS (RFC 3207 §4.2)


async def test_starttls_response_injection_aborts(
    dns_server: DNSServer, resolver: Resolver, sinks: Sinks, ca: TestCA
) -> None:
    (sink,) = await sinks("127.0.0.2", tls=ca.issue("mx1.example.test"))
    sink.inject_after_starttls = b"250 injected\r\n"
    mx(dns_server, "example.test", MX1)
    res = await delivery(resolver, sink.port).deliver("a@example.org", ["b@example.test"], MSG)
    r = res["b@example.test"]
    assert r.kind == "temp" and "injection" in r.reply.text
    assert not sink.transactions and not any(c.startswith("MAIL") for c in sink.commands)


async def test_aiosmtplib_discards_injected_reply(sinks: Sinks, ca: TestCA) -> None:
    """The library fact the defence above builds on: the injected 250 is never read as a reply."""
    (sink,) = await sinks("127.0.0.2", tls=ca.issue("mx1.example.test"),
                          extensions=[])
    sink.inject_after_starttls = b"250 injected\r\n"
    sink.script("EHLO", "250-mx1.example.test\r\n250 STARTTLS", "554 5.7.0 real reply after TLS")
    smtp = aiosmtplib.SMTP(hostname="127.0.0.2", port=sink.port, start_tls=False, validate_certs=False,
                           local_hostname="out.example.org", timeout=3)
    await smtp.connect()
    try:
        await smtp.ehlo()
        await smtp.starttls()
        with pytest.raises(aiosmtplib.SMTPHeloError) as info:
            await smtp.ehlo()
        assert info.value.code == 554  # the real reply, not the injected 250
    finally:
        smtp.close()


async def test_relay_with_auth_over_starttls(
    dns_server: DNSServer, resolver: Resolver, sinks: Sinks, ca: TestCA
) -> None:
    (sink,) = await sinks("127.0.0.5", tls=ca.issue("smarthost.example.net"), auth={"me": "s3cret"})
    dns_server.add("smarthost.example.net", "A", "127.0.0.5")
    relay = delivery(resolver, 1, relay=f"smarthost.example.net:{sink.port}", relay_tls="starttls",
                     relay_username="me", relay_password="s3cret", ca_file=str(ca.cert_path))
    res = await relay.deliver("a@example.org", ["b@one.test", "c@two.test"], MSG)
    assert {r.kind for r in res.values()} == {"sent"}
    assert res["b@one.test"].mx == "smarthost.example.net"
    assert len(sink.transactions) == 1  # one transaction for all domains
    t = sink.transactions[0]
    assert (t.tls, t.auth_user, t.rcpts) == (True, "me", ["b@one.test", "c@two.test"])

    wrong = delivery(resolver, 1, relay=f"smarthost.example.net:{sink.port}", relay_username="me",
                     relay_password="nope", ca_file=str(ca.cert_path))
    res = await wrong.deliver("a@example.org", ["b@one.test"], MSG)
    assert res["b@one.test"].kind == "temp" and "AUTH" in res["b@one.test"].reply.text


async def test_relay_implicit_tls(dns_server: DNSServer, resolver: Resolver, sinks: Sinks,
                                  ca: TestCA) -> None:
    (sink,) = await sinks("127.0.0.5", tls=ca.issue("smarthost.example.net"), implicit_tls=True,
                          auth={"me": "pw"})
    dns_server.add("smarthost.example.net", "A", "127.0.0.5")
    relay = delivery(resolver, 1, relay=f"smarthost.example.net:{sink.port}", relay_tls="implicit",
                     relay_username="me", relay_password="pw", ca_file=str(ca.cert_path))
    res = await relay.deliver("a@example.org", ["b@one.test"], MSG)
    assert res["b@one.test"].kind == "sent"
    assert sink.transactions[0].auth_user == "me" and sink.transactions[0].sni == "smarthost.example.net"


async def test_relay_certificate_is_verified(dns_server: DNSServer, resolver: Resolver, sinks: Sinks,
                                             ca: TestCA) -> None:
    (sink,) = await sinks("127.0.0.5", tls=ca.issue("someone-else.example.net"), auth={"me": "pw"})
    dns_server.add("smarthost.example.net", "A", "127.0.0.5")
    relay = delivery(resolver, 1, relay=f"smarthost.example.net:{sink.port}", relay_username="me",
                     relay_password="pw", ca_file=str(ca.cert_path))
    res = await relay.deliver("a@example.org", ["b@one.test"], MSG)
    assert res["b@one.test"].kind == "temp"
    assert not any(c.startswith("AUTH") for c in sink.commands)  # no password to a wrong host


# --------------------------------------------------------------------- MTA-STS enforcement


@pytest.fixture
async def policy_server(ca: TestCA, dns_server: DNSServer) -> AsyncIterator[PolicyServer]:
    server = await PolicyServer("127.0.0.9", ca.issue("mta-sts.example.test")).start()
    dns_server.add("mta-sts.example.test", "A", "127.0.0.9")
    yield server
    await server.stop()


def sts(resolver: Resolver, server: PolicyServer, ca: TestCA, tmp_path: Path) -> MTASTS:
    return MTASTS(resolver, cache_dir=tmp_path / "sts", ca_file=str(ca.cert_path), https_port=server.port,
                  fetch_timeout=3)


def publish(dns: DNSServer, server: PolicyServer, mode: str, *mx_lines: str) -> None:
    dns.add("_mta-sts.example.test", "TXT", "v=STSv1; id=20261101")
    lines = "".join(f"mx: {m}\r\n" for m in mx_lines)
    server.serve_policy(f"version: STSv1\r\nmode: {mode}\r\n{lines}max_age: 86400\r\n")


async def test_sts_enforce_with_valid_certificate(
    dns_server: DNSServer, resolver: Resolver, sinks: Sinks, ca: TestCA, policy_server: PolicyServer,
    tmp_path: Path,
) -> None:
    (sink,) = await sinks("127.0.0.2", tls=ca.issue("mx1.example.test"))
    mx(dns_server, "example.test", MX1)
    publish(dns_server, policy_server, "enforce", "*.example.test")
    rd = delivery(resolver, sink.port, mta_sts=sts(resolver, policy_server, ca, tmp_path),
                  ca_file=str(ca.cert_path))
    res = await rd.deliver("a@example.org", ["b@example.test"], MSG)
    assert res["b@example.test"].kind == "sent"
    assert sink.transactions[0].tls and sink.transactions[0].sni == "mx1.example.test"


async def test_sts_enforce_wrong_certificate_is_temp_without_plaintext_fallback(
    dns_server: DNSServer, resolver: Resolver, sinks: Sinks, ca: TestCA, policy_server: PolicyServer,
    tmp_path: Path,
) -> None:
    (sink,) = await sinks("127.0.0.2", tls=ca.issue("mx.attacker.test"))
    mx(dns_server, "example.test", MX1)
    publish(dns_server, policy_server, "enforce", "mx1.example.test")
    rd = delivery(resolver, sink.port, mta_sts=sts(resolver, policy_server, ca, tmp_path),
                  ca_file=str(ca.cert_path))
    res = await rd.deliver("a@example.org", ["b@example.test"], MSG)
    r = res["b@example.test"]
    assert (r.kind, r.status) == ("temp", "4.7.5")
    assert not sink.transactions and not any(c.startswith("MAIL") for c in sink.commands)
    assert sink.connections == 1  # and no second, plaintext try


async def test_sts_enforce_without_starttls_is_temp(
    dns_server: DNSServer, resolver: Resolver, sinks: Sinks, ca: TestCA, policy_server: PolicyServer,
    tmp_path: Path,
) -> None:
    (sink,) = await sinks("127.0.0.2")  # no certificate: STARTTLS not offered
    mx(dns_server, "example.test", MX1)
    publish(dns_server, policy_server, "enforce", "mx1.example.test")
    rd = delivery(resolver, sink.port, mta_sts=sts(resolver, policy_server, ca, tmp_path),
                  ca_file=str(ca.cert_path))
    res = await rd.deliver("a@example.org", ["b@example.test"], MSG)
    assert res["b@example.test"].kind == "temp" and not sink.transactions


async def test_sts_enforce_mx_not_in_policy_is_temp(
    dns_server: DNSServer, resolver: Resolver, sinks: Sinks, ca: TestCA, policy_server: PolicyServer,
    tmp_path: Path,
) -> None:
    (sink,) = await sinks("127.0.0.2", tls=ca.issue("mx1.elsewhere.test"))
    mx(dns_server, "example.test", (10, "mx1.elsewhere.test", "127.0.0.2"))
    publish(dns_server, policy_server, "enforce", "*.example.test")
    rd = delivery(resolver, sink.port, mta_sts=sts(resolver, policy_server, ca, tmp_path),
                  ca_file=str(ca.cert_path))
    res = await rd.deliver("a@example.org", ["b@example.test"], MSG)
    assert res["b@example.test"].kind == "temp" and "policy" in res["b@example.test"].reply.text
    assert sink.connections == 0


async def test_sts_enforce_skips_unlisted_mx(
    dns_server: DNSServer, resolver: Resolver, sinks: Sinks, ca: TestCA, policy_server: PolicyServer,
    tmp_path: Path,
) -> None:
    s1, _s2 = await sinks("127.0.0.2", "127.0.0.3", tls=ca.issue("mx1.example.test", "mx2.example.test"))
    mx(dns_server, "example.test", (10, "mx1.evil.test", "127.0.0.2"), (20, "mx2.example.test", "127.0.0.3"))
    publish(dns_server, policy_server, "enforce", "mx2.example.test")
    rd = delivery(resolver, s1.port, mta_sts=sts(resolver, policy_server, ca, tmp_path),
                  ca_file=str(ca.cert_path))
    res = await rd.deliver("a@example.org", ["b@example.test"], MSG)
    assert res["b@example.test"].mx == "mx2.example.test" and s1.connections == 0


async def test_sts_testing_mode_delivers_despite_bad_certificate(
    dns_server: DNSServer, resolver: Resolver, sinks: Sinks, ca: TestCA, policy_server: PolicyServer,
    tmp_path: Path, caplog: pytest.LogCaptureFixture,
) -> None:
    (sink,) = await sinks("127.0.0.2", tls=ca.issue("mx.attacker.test"))
    mx(dns_server, "example.test", MX1)
    publish(dns_server, policy_server, "testing", "mx1.example.test")
    rd = delivery(resolver, sink.port, mta_sts=sts(resolver, policy_server, ca, tmp_path),
                  ca_file=str(ca.cert_path))
    with caplog.at_level("WARNING"):
        res = await rd.deliver("a@example.org", ["b@example.test"], MSG)
    assert res["b@example.test"].kind == "sent" and sink.transactions[0].tls
    assert "MTA-STS testing example.test" in caplog.text and "would have failed" in caplog.text


async def test_source_address_is_used_and_filters_families(
    dns_server: DNSServer, resolver: Resolver, sinks: Sinks
) -> None:
    (sink,) = await sinks("127.0.0.2")
    mx(dns_server, "example.test", MX1)
    dns_server.add("mx1.example.test", "AAAA", "::1")  # unusable from an IPv4 source: skipped
    res = await delivery(resolver, sink.port, source_address="127.0.0.7").deliver(
        "a@example.org", ["b@example.test"], MSG)
    assert res["b@example.test"].kind == "sent"
    assert sink.transactions[0].peer == "127.0.0.7"
