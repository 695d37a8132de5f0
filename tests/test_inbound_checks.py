"""The composed inbound stage: real SPF/DKIM/DMARC against the loopback DNS server."""

from __future__ import annotations

import asyncio
import base64
import time

import dkim
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from mailserver.dns.resolver import Resolver
from mailserver.pipeline.dmarc import DMARCRecord, DMARCResult
from mailserver.pipeline.inbound import InboundPolicy, InboundVerdict, decide, run_inbound_checks
from mailserver.pipeline.spf import SPFResult
from tests.support.dnsserver import DNSServer
from tests.support.fixtures import dns_resolver_fixture, dns_server_fixture  # noqa: F401

HOST = "mx.example.org"
GOOD_IP = "192.0.2.10"
BAD_IP = "203.0.113.66"
MESSAGE = (
    b"From: Alice <alice@example.com>\r\n"
    b"To: bob@example.org\r\n"
    b"Subject: hello\r\n"
    b"Message-ID: <1@example.com>\r\n"
    b"\r\n"
    b"Hi Bob.\r\n"
)


@pytest.fixture(scope="module")
def rsa_key() -> tuple[bytes, str]:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.TraditionalOpenSSL,
        serialization.NoEncryption(),
    )
    der = key.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return pem, f"v=DKIM1; k=rsa; p={base64.b64encode(der).decode()}"


@pytest.fixture
def world(dns_server: DNSServer, rsa_key: tuple[bytes, str]) -> DNSServer:
    """example.com publishes SPF (GOOD_IP), a DKIM key and DMARC p=reject."""
    dns_server.add("example.com", "TXT", f"v=spf1 ip4:{GOOD_IP} -all")
    dns_server.add("sel._domainkey.example.com", "TXT", rsa_key[1])
    dns_server.add("_dmarc.example.com", "TXT", "v=DMARC1; p=reject")
    return dns_server


def signed(rsa_key: tuple[bytes, str], msg: bytes = MESSAGE) -> bytes:
    return dkim.sign(msg, b"sel", b"example.com", rsa_key[0]) + msg


async def run(
    resolver: Resolver,
    data: bytes,
    *,
    ip: str = GOOD_IP,
    mail_from: str = "alice@example.com",
    helo: str = "mail.example.com",
    **policy: object,
) -> InboundVerdict:
    return await run_inbound_checks(
        resolver,
        data=data,
        client_ip=ip,
        helo=helo,
        mail_from=mail_from,
        hostname=HOST,
        policy=InboundPolicy(**policy),  # type: ignore[arg-type]
    )


def ar(verdict: InboundVerdict) -> str:
    return " ".join(verdict.header.decode().split())


# ----------------------------------------------------------------- accept


async def test_all_pass(world: DNSServer, dns_resolver: Resolver, rsa_key: tuple[bytes, str]) -> None:
    v = await run(dns_resolver, signed(rsa_key))
    assert (v.action, v.reply.code) == ("accept", 250)
    assert v.summary == "spf=pass dkim=pass dmarc=pass from=example.com"
    text = ar(v)
    assert text.startswith(
        "Authentication-Results: mx.example.org; spf=pass smtp.mailfrom=alice@example.com;"
    )
    assert "dkim=pass header.d=example.com header.s=sel header.a=rsa-sha256 header.b=" in text
    assert text.endswith("dmarc=pass (p=reject dis=none) header.from=example.com")
    assert v.header.endswith(b"\r\n") and v.spf and v.dkim and v.dmarc
    assert v.dmarc.spf_aligned and v.dmarc.dkim_aligned


async def test_forwarded_mail_passes_on_dkim(
    world: DNSServer, dns_resolver: Resolver, rsa_key: tuple[bytes, str]
) -> None:
    v = await run(dns_resolver, signed(rsa_key), ip=BAD_IP)  # SPF fails, DKIM survives
    assert (v.action, v.spf.result, v.dmarc.result) == ("accept", "fail", "pass")


async def test_unsigned_from_domain_without_dmarc(dns_server: DNSServer, dns_resolver: Resolver) -> None:
    v = await run(dns_resolver, MESSAGE, ip=BAD_IP)
    assert v.action == "accept"
    assert v.summary == "spf=none dkim=none dmarc=none from=example.com"
    assert "dkim=none" in ar(v)


# ----------------------------------------------------------------- DMARC dispositions


async def test_dmarc_reject(world: DNSServer, dns_resolver: Resolver) -> None:
    v = await run(dns_resolver, MESSAGE, ip=BAD_IP, mail_from="spoofer@evil.example")
    assert (v.action, v.reply.code, v.reply.enhanced) == ("reject", 550, "5.7.1")
    assert v.reply.text == "DMARC policy of example.com rejects this message"
    assert "dmarc=fail (p=reject dis=reject)" in ar(v)


async def test_dmarc_reject_mapped_to_junk(world: DNSServer, dns_resolver: Resolver) -> None:
    v = await run(dns_resolver, MESSAGE, ip=BAD_IP, dmarc_reject_action="junk")
    assert (v.action, v.reply.code) == ("junk", 250)


async def test_dmarc_quarantine_is_junk(world: DNSServer, dns_resolver: Resolver) -> None:
    world.set("_dmarc.example.com", "TXT", ["v=DMARC1; p=quarantine"])
    v = await run(dns_resolver, MESSAGE, ip=BAD_IP)
    assert (v.action, v.reply.code) == ("junk", 250)
    v = await run(dns_resolver, MESSAGE, ip=BAD_IP, dmarc_quarantine_action="reject")
    assert (v.action, v.reply.code, v.reply.enhanced) == ("reject", 550, "5.7.1")
    assert "quarantines" in v.reply.text


async def test_dmarc_none_policy_accepts(world: DNSServer, dns_resolver: Resolver) -> None:
    world.set("_dmarc.example.com", "TXT", ["v=DMARC1; p=none"])
    v = await run(dns_resolver, MESSAGE, ip=BAD_IP)
    assert (v.action, v.dmarc.result) == ("accept", "fail")


async def test_bad_dkim_signature_is_rejected_by_dmarc(
    world: DNSServer, dns_resolver: Resolver, rsa_key: tuple[bytes, str]
) -> None:
    tampered = signed(rsa_key).replace(b"Hi Bob.", b"Pay me.")
    v = await run(dns_resolver, tampered, ip=BAD_IP)
    assert v.action == "reject"
    assert 'dkim=fail reason="body hash mismatch"' in ar(v)


async def test_subdomain_uses_sp(world: DNSServer, dns_resolver: Resolver) -> None:
    world.set("_dmarc.example.com", "TXT", ["v=DMARC1; p=reject; sp=quarantine"])
    msg = MESSAGE.replace(b"alice@example.com>", b"alice@news.example.com>")
    v = await run(dns_resolver, msg, ip=BAD_IP)
    assert v.action == "junk" and v.dmarc.policy_domain == "example.com"


# ----------------------------------------------------------------- From header


@pytest.mark.parametrize(
    ("headers", "reason"),
    [
        (b"To: bob@example.org\r\n", "no From header"),
        (b"From: a@example.com\r\nFrom: b@evil.example\r\n", "more than one From header"),
        (b"From: a@example.com, b@evil.example\r\n", "more than one address"),
    ],
)
async def test_unusable_from_is_rejected(
    world: DNSServer, dns_resolver: Resolver, headers: bytes, reason: str
) -> None:
    v = await run(dns_resolver, headers + b"Subject: x\r\n\r\nbody\r\n")
    assert (v.action, v.reply.code, v.reply.enhanced) == ("reject", 550, "5.7.1")
    assert reason in v.reply.text and v.dmarc.result == "permerror"
    assert "dmarc=permerror" in ar(v)


async def test_unusable_from_ignored_when_dmarc_off(world: DNSServer, dns_resolver: Resolver) -> None:
    v = await run(dns_resolver, b"Subject: x\r\n\r\nbody\r\n", dmarc=False)
    assert v.action == "accept" and v.dmarc is None


# ----------------------------------------------------------------- SPF actions


async def test_spf_fail_action(dns_server: DNSServer, dns_resolver: Resolver) -> None:
    dns_server.add("example.com", "TXT", f"v=spf1 ip4:{GOOD_IP} -all")  # no DMARC record
    v = await run(dns_resolver, MESSAGE, ip=BAD_IP)
    assert v.action == "accept"  # default: DMARC decides
    v = await run(dns_resolver, MESSAGE, ip=BAD_IP, spf_fail_action="reject")
    assert (v.action, v.reply.code, v.reply.enhanced) == ("reject", 550, "5.7.23")
    assert "example.com" in v.reply.text
    v = await run(dns_resolver, MESSAGE, ip=BAD_IP, spf_fail_action="junk")
    assert v.action == "junk"


async def test_spf_fail_does_not_override_dmarc_pass(
    world: DNSServer, dns_resolver: Resolver, rsa_key: tuple[bytes, str]
) -> None:
    v = await run(dns_resolver, signed(rsa_key), ip=BAD_IP, spf_fail_action="reject")
    assert v.action == "accept"


async def test_spf_temperror_matters_only_if_spf_fail_would(
    dns_server: DNSServer, dns_resolver: Resolver
) -> None:
    dns_server.servfail("example.com")
    v = await run(dns_resolver, MESSAGE, dmarc=False)
    assert (v.action, v.spf.result) == ("accept", "temperror")
    v = await run(dns_resolver, MESSAGE, dmarc=False, spf_fail_action="reject")
    assert (v.action, v.reply.code, v.reply.enhanced) == ("tempfail", 451, "4.7.24")
    assert v.reply.encode().startswith(b"451 4.7.24 SPF check of ")


# ----------------------------------------------------------------- temporary errors


async def test_dmarc_dns_failure_is_tempfail(world: DNSServer, dns_resolver: Resolver) -> None:
    world.servfail("_dmarc.example.com")
    v = await run(dns_resolver, MESSAGE)
    assert (v.action, v.reply.code, v.reply.enhanced) == ("tempfail", 451, "4.7.1")
    assert v.reply.encode().startswith(b"451 4.7.1 ") and "try again later" in v.reply.text
    assert "dmarc=temperror" in ar(v)


async def test_dmarc_dns_failure_accepted_when_configured(world: DNSServer, dns_resolver: Resolver) -> None:
    world.servfail("_dmarc.example.com")
    v = await run(dns_resolver, MESSAGE, dns_temperror_action="accept")
    assert v.action == "accept" and v.dmarc.result == "temperror"


async def test_dkim_key_tempfail_with_reject_policy_is_tempfail(
    world: DNSServer, dns_resolver: Resolver, rsa_key: tuple[bytes, str]
) -> None:
    world.servfail("sel._domainkey.example.com")
    v = await run(dns_resolver, signed(rsa_key), ip=BAD_IP)  # SPF fails; DKIM might have passed
    assert (v.action, v.dmarc.result) == ("tempfail", "temperror")
    assert "dkim=temperror" in ar(v)


async def test_temperror_harmless_under_p_none(
    world: DNSServer, dns_resolver: Resolver, rsa_key: tuple[bytes, str]
) -> None:
    world.set("_dmarc.example.com", "TXT", ["v=DMARC1; p=none"])
    world.servfail("sel._domainkey.example.com")
    v = await run(dns_resolver, signed(rsa_key), ip=BAD_IP)
    assert (v.action, v.dmarc.result) == ("accept", "temperror")


async def test_overall_timeout_is_tempfail(world: DNSServer, dns_server: DNSServer) -> None:
    resolver = Resolver([dns_server.nameserver], lifetime=5, attempt_timeout=5)
    world.drop("example.com")  # SPF lookup never answered
    t0 = time.monotonic()
    v = await run(resolver, MESSAGE, timeout=0.5)
    assert time.monotonic() - t0 < 2.0
    assert (v.action, v.reply.code, v.reply.enhanced) == ("tempfail", 451, "4.7.1")
    assert "timed out" in v.reply.text
    assert v.spf.result == "temperror"
    v = await run(resolver, MESSAGE, timeout=0.5, dns_temperror_action="accept")
    assert v.action == "accept"


async def test_slow_dmarc_lookup_times_out(world: DNSServer, dns_resolver: Resolver) -> None:
    world.delay("_dmarc.example.com", 1.0)
    v = await run(dns_resolver, MESSAGE, timeout=0.5)
    assert v.action == "tempfail" and v.dmarc.result == "temperror"


# ----------------------------------------------------------------- checks off


async def test_checks_off_are_absent(
    world: DNSServer, dns_resolver: Resolver, rsa_key: tuple[bytes, str]
) -> None:
    v = await run(dns_resolver, signed(rsa_key), spf=False, dmarc=False)
    assert ar(v).startswith("Authentication-Results: mx.example.org; dkim=pass")
    assert "spf=" not in ar(v) and "dmarc=" not in ar(v)
    assert v.summary == "spf=off dkim=pass dmarc=off"
    v = await run(dns_resolver, MESSAGE, spf=False, dkim=False, dmarc=False)
    assert v.header == b"Authentication-Results: mx.example.org; none\r\n"
    assert v.action == "accept"
    assert world.count("example.com") == 0  # SPF never asked when off


async def test_dmarc_without_spf_check_can_pass_on_dkim(
    world: DNSServer, dns_resolver: Resolver, rsa_key: tuple[bytes, str]
) -> None:
    v = await run(dns_resolver, signed(rsa_key), spf=False)
    assert v.dmarc.result == "pass" and v.action == "accept"
    v = await run(dns_resolver, MESSAGE, spf=False)
    assert v.action == "reject"  # nothing aligned can pass without DKIM


# ----------------------------------------------------------------- identities


async def test_null_sender_uses_helo(world: DNSServer, dns_resolver: Resolver) -> None:
    world.add("mail.example.com", "TXT", f"v=spf1 ip4:{GOOD_IP} -all")
    v = await run(dns_resolver, MESSAGE, mail_from="", helo="mail.example.com")
    assert (v.spf.result, v.spf.identity) == ("pass", "helo")
    assert "smtp.helo=mail.example.com" in ar(v)
    assert v.action == "accept"  # HELO domain aligns relaxed with example.com


async def test_repeat_checks_hit_the_cache(
    world: DNSServer, dns_resolver: Resolver, rsa_key: tuple[bytes, str]
) -> None:
    data = signed(rsa_key)
    await run(dns_resolver, data)
    asked = len(world.queries)
    t0 = time.perf_counter()
    for _ in range(20):
        assert (await run(dns_resolver, data)).action == "accept"
    per_check = (time.perf_counter() - t0) / 20
    assert len(world.queries) == asked  # no DNS at all the second time round
    print(f"\ncached inbound check (spf+dkim rsa-2048+dmarc): {per_check * 1000:.2f} ms")


# ----------------------------------------------------------------- the event loop stays free


async def test_event_loop_ticks_during_10mib_verification(
    world: DNSServer, dns_resolver: Resolver, rsa_key: tuple[bytes, str]
) -> None:
    body = b"".join(b"%08d " % i + b"x" * 68 + b"\r\n" for i in range(10 * 1024 * 1024 // 79))
    big = signed(rsa_key, MESSAGE.replace(b"Hi Bob.\r\n", body))
    assert len(big) > 10 * 1024 * 1024
    gaps: list[float] = []
    stop = asyncio.Event()

    async def ticker() -> None:
        last = time.perf_counter()
        while not stop.is_set():
            await asyncio.sleep(0.005)  # the tick: a real pause, its lateness is what we measure
            now = time.perf_counter()
            gaps.append(now - last)
            last = now

    tick = asyncio.create_task(ticker())
    t0 = time.perf_counter()
    v = await run(dns_resolver, big)
    elapsed = time.perf_counter() - t0
    stop.set()
    await tick
    assert v.action == "accept" and v.dkim[0].result == "pass"
    stall_ms = max(gaps) * 1000
    print(f"\n10 MiB inbound check: {elapsed:.3f} s, {len(gaps)} ticks, longest loop stall {stall_ms:.1f} ms")
    # Generous bounds: the point is "the loop kept running", not a benchmark.
    assert len(gaps) >= 5
    assert max(gaps) < 0.5


# ----------------------------------------------------------------- decide() (pure)


def test_policy_validation() -> None:
    with pytest.raises(ValueError, match="dmarc_reject_action"):
        InboundPolicy(dmarc_reject_action="drop")
    with pytest.raises(ValueError, match="dns_temperror_action"):
        InboundPolicy(dns_temperror_action="reject")
    with pytest.raises(ValueError, match="timeout"):
        InboundPolicy(timeout=0)


def test_strongest_outcome_wins() -> None:
    spf = SPFResult("fail", "example.com", "mailfrom", "a@example.com")
    dmarc = DMARCResult(
        "fail", "example.com", "example.com", DMARCRecord(p="quarantine"), "quarantine", "quarantine"
    )
    out = decide(InboundPolicy(spf_fail_action="reject"), spf, dmarc)
    assert (out.action, out.reply.enhanced) == ("reject", "5.7.23")
    out = decide(InboundPolicy(spf_fail_action="junk"), spf, dmarc, timed_out=True)
    assert out.action == "tempfail"
    out = decide(InboundPolicy(dmarc_reject_action="reject"), spf, dmarc, from_error="x", timed_out=True)
    assert out.action == "reject"


def test_reply_text_is_one_printable_line() -> None:
    spf = SPFResult("fail", "evil.example\r\n250 ok", "mailfrom", "a@evil.example")
    out = decide(InboundPolicy(spf_fail_action="reject"), spf, None)
    assert out.reply.encode() == (
        b"550 5.7.23 SPF of evil.example??250 ok does not allow this host to send its mail\r\n"
    )


def test_accept_outcome() -> None:
    out = decide(InboundPolicy(), None, None)
    assert (out.action, out.reply.code, out.reply.enhanced) == ("accept", 250, "2.6.0")
