"""DMARC: record parser, organizational domain, alignment, From header, evaluation, discovery."""

from __future__ import annotations

import pytest

from mailserver.dns.resolver import Resolver
from mailserver.message import FromHeaderError, parse_mailbox_list
from mailserver.pipeline.dkim_verify import DKIMResult
from mailserver.pipeline.dmarc import (
    DMARCRecord,
    DMARCRecordError,
    aligned,
    author_domain,
    check_dmarc,
    evaluate,
    is_dmarc_record,
    normalize_domain,
    organizational_domain,
    parse_dmarc_record,
)
from mailserver.pipeline.spf import SPFResult
from tests.support.dnsserver import DNSServer
from tests.support.fixtures import dns_resolver_fixture, dns_server_fixture  # noqa: F401

# ----------------------------------------------------------------- record parser


def test_minimal_record_defaults() -> None:
    rec = parse_dmarc_record("v=DMARC1; p=reject")
    assert rec == DMARCRecord(p="reject")
    assert (rec.sp, rec.subdomain_policy, rec.pct, rec.adkim, rec.aspf) == (None, "reject", 100, "r", "r")
    assert (rec.rua, rec.ruf, rec.fo, rec.rf, rec.ri) == ((), (), ("0",), ("afrf",), 86400)


def test_full_record() -> None:
    rec = parse_dmarc_record(
        "v=DMARC1; p=quarantine; sp=none; pct=25; adkim=s; aspf=s; "
        "rua=mailto:agg@example.com,mailto:agg2@example.net!10m; ruf=mailto:f@example.com; "
        "fo=1:d; rf=afrf; ri=3600"
    )
    assert rec == DMARCRecord(
        p="quarantine",
        sp="none",
        pct=25,
        adkim="s",
        aspf="s",
        rua=("mailto:agg@example.com", "mailto:agg2@example.net!10m"),
        ruf=("mailto:f@example.com",),
        fo=("1", "d"),
        rf=("afrf",),
        ri=3600,
    )
    assert rec.subdomain_policy == "none"


@pytest.mark.parametrize(
    ("txt", "field", "value"),
    [
        ("v=DMARC1;p=none", "p", "none"),  # no spaces
        ("v=DMARC1 ; p = reject ; ", "p", "reject"),  # spaces around = and ;, trailing ;
        ("v=DMARC1; p=REJECT", "p", "reject"),  # values case-insensitive
        ("v=DMARC1; P=reject", "p", "reject"),  # tag names too
        ("v=DMARC1;\tp=reject;\tsp=quarantine", "sp", "quarantine"),
        ("v=DMARC1; p=reject;; pct=50", "pct", 50),  # empty tag between ;;
        ("v=DMARC1; p=reject; pct=0", "pct", 0),
        ("v=DMARC1; p=reject; ADKIM=S", "adkim", "s"),
        ("v=DMARC1; p=reject; unknown=whatever; np=reject", "p", "reject"),  # unknown tags ignored
        ("v=DMARC1; p=reject; rua=bogus uri", "rua", ()),  # reporting typo: dropped
        ("v=DMARC1; p=reject; ri=soon", "ri", 86400),
        ("v=DMARC1; p=reject; fo=x", "fo", ("0",)),
    ],
)
def test_record_variants(txt: str, field: str, value: object) -> None:
    assert getattr(parse_dmarc_record(txt), field) == value


@pytest.mark.parametrize(
    "txt",
    [
        "v=DMARC2; p=reject",
        "v=dmarc1; p=reject",  # version value is case-sensitive (RFC 7489 §6.4)
        "p=reject; v=DMARC1",  # v must come first
        "v=DMARC1p=reject",
        "",
        "v=spf1 -all",
        "v=DMARC1; p=reject; p=none",  # duplicate tag
        "v=DMARC1; p",  # tag without =
        "v=DMARC1; p=reject; 1x=y",  # bad tag name
        "v=DMARC1; p=reject; pct=101",
        "v=DMARC1; p=reject; pct=-1",
        "v=DMARC1; p=reject; pct=half",
        "v=DMARC1; p=reject; adkim=x",
        "v=DMARC1; p=reject; aspf=relaxed",
        "v=DMARC1",  # no p and no rua
        "v=DMARC1; p=block",  # invalid p, no rua
        "v=DMARC1; p=reject; sp=maybe",  # invalid sp, no rua
        "v=DMARC1; p=reject; rua=not a uri; sp=bad",
    ],
)
def test_invalid_records(txt: str) -> None:
    with pytest.raises(DMARCRecordError):
        parse_dmarc_record(txt)


def test_missing_p_with_rua_means_none() -> None:
    # RFC 7489 §6.6.3: a record with a valid rua but no valid p acts as p=none.
    for txt in ("v=DMARC1; rua=mailto:a@example.com", "v=DMARC1; p=bogus; rua=mailto:a@example.com"):
        rec = parse_dmarc_record(txt)
        assert (rec.p, rec.sp, rec.p_inferred) == ("none", None, True)


@pytest.mark.parametrize(
    ("txt", "expected"),
    [
        ("v=DMARC1; p=none", True),
        ("v=DMARC1", True),
        ("  v = DMARC1 ;p=none", True),
        ("v=DMARC10; p=none", False),
        ("v=spf1 -all", False),
        ("x v=DMARC1", False),
    ],
)
def test_is_dmarc_record(txt: str, expected: bool) -> None:
    assert is_dmarc_record(txt) is expected


# ----------------------------------------------------------------- domains


@pytest.mark.parametrize(
    ("domain", "org"),
    [
        ("example.com", "example.com"),
        ("mail.example.com", "example.com"),
        ("a.b.c.example.com", "example.com"),
        ("example.co.uk", "example.co.uk"),
        ("mail.example.co.uk", "example.co.uk"),
        ("co.uk", "co.uk"),  # a public suffix is its own org domain
        ("com", "com"),
        ("Mail.Example.COM.", "example.com"),
        ("user.github.io", "user.github.io"),  # private-section suffix
        ("x.user.github.io", "user.github.io"),
        ("xn--bcher-kva.example", "xn--bcher-kva.example"),
        ("sub.example.test", "example.test"),  # unknown TLD treated as a suffix
    ],
)
def test_organizational_domain(domain: str, org: str) -> None:
    assert organizational_domain(domain) == org


@pytest.mark.parametrize(
    ("a", "b", "mode", "expected"),
    [
        ("example.com", "example.com", "s", True),
        ("example.com", "example.com", "r", True),
        ("mail.example.com", "example.com", "r", True),
        ("mail.example.com", "example.com", "s", False),
        ("example.com", "news.example.com", "r", True),
        ("a.example.com", "b.example.com", "r", True),
        ("a.example.com", "b.example.com", "s", False),
        ("example.com", "example.net", "r", False),
        ("example.co.uk", "other.co.uk", "r", False),  # same public suffix is not enough
        ("user1.github.io", "user2.github.io", "r", False),
        ("EXAMPLE.com.", "example.COM", "s", True),
        ("bücher.example", "xn--bcher-kva.example", "s", True),  # IDN forms compare equal
        ("", "example.com", "r", False),
        ("bad..name", "example.com", "r", False),
    ],
)
def test_alignment(a: str, b: str, mode: str, expected: bool) -> None:
    assert aligned(a, b, mode) is expected  # type: ignore[arg-type]


def test_normalize_domain() -> None:
    assert normalize_domain("Bücher.Example.") == "xn--bcher-kva.example"
    with pytest.raises(ValueError):
        normalize_domain("")
    with pytest.raises(ValueError):
        normalize_domain("a" * 64 + ".com")


# ----------------------------------------------------------------- From header


@pytest.mark.parametrize(
    ("value", "addresses"),
    [
        ("alice@example.com", ["alice@example.com"]),
        ("<alice@example.com>", ["alice@example.com"]),
        ("Alice <alice@example.com>", ["alice@example.com"]),
        ('"Alice Liddell" <alice@example.com>', ["alice@example.com"]),
        ('"bank@paypal.com" <x@evil.example>', ["x@evil.example"]),  # display name is not the address
        ('"a, b <c@d.e>" <x@evil.example>', ["x@evil.example"]),
        ("=?utf-8?q?Alice_=3Cceo=40bank=2Ecom=3E?= <x@evil.example>", ["x@evil.example"]),
        ("=?utf-8?b?QWxpY2U=?= <alice@example.com>", ["alice@example.com"]),
        ("alice@example.com (Alice, <fake@x.y>)", ["alice@example.com"]),  # comment
        ("Alice (the (nested) one) <alice@example.com>", ["alice@example.com"]),
        ('"quoted local"@example.com', ['"quoted local"@example.com']),
        ('Alice <"a@b"@example.com>', ['"a@b"@example.com']),
        ("<@relay.example:alice@example.com>", ["alice@example.com"]),  # obsolete route
        ("a@example.com, b@example.net", ["a@example.com", "b@example.net"]),
        ("a@example.com, , b@example.net", ["a@example.com", "b@example.net"]),
        ("Team: a@example.com, b@example.com;", ["a@example.com", "b@example.com"]),
        ("undisclosed-recipients:;", []),
        ("Ålice Ünïcode <alice@bücher.example>", ["alice@bücher.example"]),
        ("  ", []),
    ],
)
def test_parse_mailbox_list(value: str, addresses: list[str]) -> None:
    assert parse_mailbox_list(value) == addresses


@pytest.mark.parametrize(
    "value",
    [
        "Alice alice@example.com",  # display name without angle brackets
        "<a@example.com> <b@example.net>",
        "<a@example.com> trailing",
        "Alice <alice@example.com",
        "Alice alice@example.com>",
        '"unterminated <a@example.com>',
        "(unterminated <a@example.com>",
        "Team: a@example.com",  # group without ;
        "Team: a@example.com; extra@example.net",
        "<>",
    ],
)
def test_parse_mailbox_list_rejects(value: str) -> None:
    with pytest.raises(FromHeaderError):
        parse_mailbox_list(value)


def msg(*headers: str, body: str = "body\r\n") -> bytes:
    return ("\r\n".join(headers) + "\r\n\r\n" + body).encode()


@pytest.mark.parametrize(
    ("data", "domain"),
    [
        (msg("From: alice@example.com"), "example.com"),
        (msg("Subject: x", "FROM: Alice <alice@Mail.Example.COM>"), "mail.example.com"),
        (msg("From:\r\n Alice\r\n\t<alice@example.com>"), "example.com"),  # folded
        (msg("From: Alice <alice@bücher.example>"), "xn--bcher-kva.example"),
        (msg("From: Alice <alice@example.com.>"), "example.com"),
        (msg("From: a@example.com", body="From: b@evil.example\r\n"), "example.com"),  # body ignored
        (msg("Resent-From: x@evil.example", "From: a@example.com"), "example.com"),
        (msg("X-From: x@evil.example", "From: a@example.com"), "example.com"),
    ],
)
def test_author_domain(data: bytes, domain: str) -> None:
    assert author_domain(data) == domain


@pytest.mark.parametrize(
    ("data", "reason"),
    [
        (msg("Subject: no from"), "no From"),
        (msg("From: a@example.com", "From: b@evil.example"), "more than one From header"),
        (msg("From: a@example.com", "from : b@example.com"), "more than one From header"),
        (msg("From: a@example.com, b@example.com"), "more than one address"),
        (msg("From: undisclosed:;"), "no address"),
        (msg("From: Alice <alice>"), "no domain"),
        (msg("From: alice@[192.0.2.1]"), "address literal"),
        (msg("From: alice@bad..domain"), "invalid domain"),
        (msg("From: Alice alice@example.com"), "not a single address"),
    ],
)
def test_author_domain_errors(data: bytes, reason: str) -> None:
    with pytest.raises(FromHeaderError, match=reason):
        author_domain(data)


# ----------------------------------------------------------------- evaluation (pure)


def spf(result: str, domain: str = "example.com") -> SPFResult:
    return SPFResult(result, domain, "mailfrom", f"bounce@{domain}")  # type: ignore[arg-type]


def dkim(result: str, domain: str = "example.com") -> DKIMResult:
    return DKIMResult(result, domain, "sel", "rsa-sha256", "abcdefgh")  # type: ignore[arg-type]


REJECT = DMARCRecord(p="reject")


@pytest.mark.parametrize(
    ("spf_result", "dkim_results", "record", "expected", "spf_al", "dkim_al"),
    [
        (spf("pass"), [], REJECT, "pass", True, False),
        (spf("fail"), [dkim("pass")], REJECT, "pass", False, True),
        (spf("pass", "bounces.example.com"), [], REJECT, "pass", True, False),  # relaxed
        (spf("pass", "bounces.example.com"), [], DMARCRecord(p="reject", aspf="s"), "fail", False, False),
        (spf("none"), [dkim("pass", "mail.example.com")], REJECT, "pass", False, True),
        (
            spf("none"),
            [dkim("pass", "mail.example.com")],
            DMARCRecord(p="reject", adkim="s"),
            "fail",
            False,
            False,
        ),
        (spf("pass", "esp.example.net"), [dkim("pass", "esp.example.net")], REJECT, "fail", False, False),
        (spf("softfail"), [dkim("fail")], REJECT, "fail", False, False),
        (spf("neutral"), [dkim("permerror"), dkim("pass", "other.example")], REJECT, "fail", False, False),
        (None, [dkim("pass")], REJECT, "pass", False, True),  # SPF check off
        (None, [], REJECT, "fail", False, False),
        (spf("temperror"), [], REJECT, "temperror", False, False),
        (spf("fail"), [dkim("temperror")], REJECT, "temperror", False, False),
        (spf("temperror", "example.net"), [], REJECT, "fail", False, False),  # not aligned: cannot help
        (spf("fail"), [dkim("temperror", "example.net")], REJECT, "fail", False, False),
        (spf("temperror"), [dkim("pass")], REJECT, "pass", False, True),  # a pass wins anyway
    ],
)
def test_evaluate(
    spf_result: SPFResult | None,
    dkim_results: list[DKIMResult],
    record: DMARCRecord,
    expected: str,
    spf_al: bool,
    dkim_al: bool,
) -> None:
    result = evaluate("example.com", record, "example.com", spf_result, dkim_results)
    assert (result.result, result.spf_aligned, result.dkim_aligned) == (expected, spf_al, dkim_al)
    assert result.policy == "reject"
    assert result.disposition == ("reject" if expected == "fail" else "none")


def test_sp_applies_to_subdomains_of_the_policy_domain() -> None:
    rec = DMARCRecord(p="reject", sp="quarantine")
    sub = evaluate("news.example.com", rec, "example.com", spf("fail"), [])
    assert (sub.policy, sub.disposition) == ("quarantine", "quarantine")
    top = evaluate("example.com", rec, "example.com", spf("fail"), [])
    assert (top.policy, top.disposition) == ("reject", "reject")
    # A record found at the subdomain itself: its p applies, not sp.
    own = evaluate("news.example.com", rec, "news.example.com", spf("fail", "x.example"), [])
    assert own.policy == "reject"


def test_sp_defaults_to_p() -> None:
    sub = evaluate("news.example.com", DMARCRecord(p="quarantine"), "example.com", spf("fail"), [])
    assert sub.disposition == "quarantine"


@pytest.mark.parametrize(
    ("p", "pct", "roll", "disposition"),
    [
        ("reject", 100, 0.999, "reject"),
        ("reject", 50, 0.49, "reject"),  # sampled
        ("reject", 50, 0.50, "quarantine"),  # not sampled: next weaker policy
        ("quarantine", 50, 0.70, "none"),
        ("quarantine", 50, 0.10, "quarantine"),
        ("reject", 0, 0.0, "quarantine"),
        ("none", 10, 0.99, "none"),
    ],
)
def test_pct_sampling(p: str, pct: int, roll: float, disposition: str) -> None:
    rec = DMARCRecord(p=p, pct=pct)  # type: ignore[arg-type]
    result = evaluate("example.com", rec, "example.com", spf("fail"), [], rng=lambda: roll)
    assert (result.result, result.policy, result.disposition) == ("fail", p, disposition)


def test_pct_100_never_calls_rng() -> None:
    def boom() -> float:
        raise AssertionError("rng called")

    evaluate("example.com", REJECT, "example.com", spf("fail"), [], rng=boom)


# ----------------------------------------------------------------- discovery (DNS)


async def test_record_at_from_domain(dns_server: DNSServer, dns_resolver: Resolver) -> None:
    dns_server.add("_dmarc.example.com", "TXT", "v=DMARC1; p=reject")
    result = await check_dmarc(dns_resolver, "example.com", spf("pass"), [])
    assert (result.result, result.policy_domain, result.record) == ("pass", "example.com", REJECT)


async def test_fallback_to_org_domain(dns_server: DNSServer, dns_resolver: Resolver) -> None:
    dns_server.add("_dmarc.example.com", "TXT", "v=DMARC1; p=reject; sp=quarantine")
    result = await check_dmarc(dns_resolver, "a.b.example.com", spf("fail", "a.b.example.com"), [])
    assert (result.result, result.policy_domain) == ("fail", "example.com")
    assert (result.policy, result.disposition) == ("quarantine", "quarantine")
    asked = [q.name for q in dns_server.queries]
    assert asked == ["_dmarc.a.b.example.com.", "_dmarc.example.com."]  # never the levels between


async def test_subdomain_record_wins_over_org(dns_server: DNSServer, dns_resolver: Resolver) -> None:
    dns_server.add("_dmarc.example.com", "TXT", "v=DMARC1; p=reject")
    dns_server.add("_dmarc.news.example.com", "TXT", "v=DMARC1; p=none")
    result = await check_dmarc(dns_resolver, "news.example.com", spf("fail"), [])
    assert (result.result, result.policy_domain, result.disposition) == ("fail", "news.example.com", "none")


async def test_non_dmarc_txt_is_ignored(dns_server: DNSServer, dns_resolver: Resolver) -> None:
    dns_server.add("_dmarc.example.com", "TXT", "some verification token")
    dns_server.add("_dmarc.example.com", "TXT", "v=DMARC1; p=quarantine")
    result = await check_dmarc(dns_resolver, "example.com", spf("fail"), [])
    assert result.disposition == "quarantine"


async def test_no_record_is_none(dns_server: DNSServer, dns_resolver: Resolver) -> None:
    result = await check_dmarc(dns_resolver, "example.com", spf("fail"), [])
    assert (result.result, result.record, result.disposition) == ("none", None, "none")


async def test_multiple_records_is_none(dns_server: DNSServer, dns_resolver: Resolver) -> None:
    dns_server.add("_dmarc.example.com", "TXT", "v=DMARC1; p=reject")
    dns_server.add("_dmarc.example.com", "TXT", "v=DMARC1; p=none")
    result = await check_dmarc(dns_resolver, "example.com", spf("fail"), [])
    assert (result.result, result.disposition) == ("none", "none")
    assert "more than one" in result.reason


async def test_multiple_records_at_from_domain_do_not_fall_back(
    dns_server: DNSServer, dns_resolver: Resolver
) -> None:
    dns_server.add("_dmarc.news.example.com", "TXT", "v=DMARC1; p=none")
    dns_server.add("_dmarc.news.example.com", "TXT", "v=DMARC1; p=none; pct=5")
    dns_server.add("_dmarc.example.com", "TXT", "v=DMARC1; p=reject")
    result = await check_dmarc(dns_resolver, "news.example.com", spf("fail"), [])
    assert result.result == "none"


async def test_invalid_record_is_permerror(dns_server: DNSServer, dns_resolver: Resolver) -> None:
    dns_server.add("_dmarc.example.com", "TXT", "v=DMARC1; p=reject; pct=200")
    result = await check_dmarc(dns_resolver, "example.com", spf("fail"), [])
    assert (result.result, result.disposition) == ("permerror", "none")
    assert "pct" in result.reason


async def test_dns_failure_is_temperror(dns_server: DNSServer, dns_resolver: Resolver) -> None:
    dns_server.servfail("_dmarc.example.com")
    result = await check_dmarc(dns_resolver, "example.com", spf("pass"), [])
    assert (result.result, result.record) == ("temperror", None)


async def test_dns_failure_at_org_level_is_temperror(dns_server: DNSServer, dns_resolver: Resolver) -> None:
    dns_server.servfail("_dmarc.example.com")
    result = await check_dmarc(dns_resolver, "news.example.com", spf("pass"), [])
    assert result.result == "temperror"


async def test_dkim_pass_with_subdomain_signature(dns_server: DNSServer, dns_resolver: Resolver) -> None:
    dns_server.add("_dmarc.example.com", "TXT", "v=DMARC1; p=reject")
    result = await check_dmarc(
        dns_resolver, "example.com", spf("fail", "evil.example"), [dkim("pass", "mail.example.com")]
    )
    assert (result.result, result.dkim_aligned) == ("pass", True)


async def test_idn_from_domain(dns_server: DNSServer, dns_resolver: Resolver) -> None:
    dns_server.add("_dmarc.xn--bcher-kva.example", "TXT", "v=DMARC1; p=reject")
    result = await check_dmarc(dns_resolver, "Bücher.example", spf("pass", "xn--bcher-kva.example"), [])
    assert (result.result, result.from_domain) == ("pass", "xn--bcher-kva.example")


async def test_invalid_from_domain_is_permerror(dns_resolver: Resolver) -> None:
    result = await check_dmarc(dns_resolver, "bad..domain", spf("pass"), [])
    assert result.result == "permerror"


async def test_policy_lookups_are_cached(dns_server: DNSServer, dns_resolver: Resolver) -> None:
    dns_server.add("_dmarc.example.com", "TXT", "v=DMARC1; p=reject")
    for _ in range(3):
        await check_dmarc(dns_resolver, "news.example.com", spf("pass"), [])
    assert len(dns_server.queries) == 2  # _dmarc.news (NXDOMAIN, cached) + _dmarc.example.com
