"""Expected DNS records and their renderings, checked by parsing them back with dnspython
and by verifying a real dkimpy signature against the TXT value read from the zone."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from pathlib import Path

import dkim
import dns.name
import dns.rdata
import dns.rdataclass
import dns.rdatatype
import dns.resolver
import dns.zone
import pytest

from mailserver.config import Config, config_from_dict
from mailserver.dkim_keys import DKIMKey, ensure_keys
from mailserver.dns import records as rec
from mailserver.dns.records import (
    IPV4_PLACEHOLDER,
    MTA_STS_MAX_AGE,
    MTA_STS_MODE,
    Record,
    detect_addresses,
    expected_records,
    first_start_banner,
    hostname_zone,
    mta_sts_id,
    mta_sts_policy,
    rdata_text,
    render_json,
    render_zone,
    reverse_name,
    served_families,
    txt_strings,
)

V4 = ["203.0.113.5"]
V6 = ["2001:db8::5"]
LISTEN = {
    "smtp": ["0.0.0.0:25"],
    "submission": ["0.0.0.0:587"],
    "submissions": ["0.0.0.0:465"],
    "imap": ["0.0.0.0:143"],
    "imaps": ["0.0.0.0:993"],
}


def make_cfg(state_dir: Path, **extra: object) -> Config:
    raw: dict[str, object] = {
        "hostname": "mx1.example.org",
        "primary_domain": "example.org",
        "local_domains": ["example.org", "example.net"],
        "state_dir": str(state_dir),
        "tls": {"self_signed": True},
        "listen": LISTEN,
    }
    raw.update(extra)
    return config_from_dict(raw)


@pytest.fixture(scope="module")
def state(tmp_path_factory: pytest.TempPathFactory) -> tuple[Config, list[DKIMKey]]:
    cfg = make_cfg(tmp_path_factory.mktemp("dns"))
    return cfg, ensure_keys(cfg)


def parse_zone(text: str, origin: str) -> dns.zone.Zone:
    zone = dns.zone.from_text(text, origin=origin, relativize=False, check_origin=False)
    apex = dns.name.from_text(origin)
    for name in zone.nodes:  # dnspython keeps out-of-zone names silently: check ourselves
        assert name.is_subdomain(apex), f"{name} is outside {origin}"
    return zone


def split_groups(text: str) -> dict[str, str]:
    """Zone groups of render_zone output by their '; ---- zone X ----' headers."""
    groups: dict[str, str] = {}
    current = None
    for line in text.splitlines():
        m = re.match(r"; ---- zone (\S+) ----", line)
        if m:
            current = m.group(1)
            groups[current] = ""
        elif line.startswith("; ---- "):
            current = None
        elif current:
            groups[current] += line + "\n"
    return groups


def by_name_type(records: list[Record]) -> dict[tuple[str, str], list[Record]]:
    out: dict[tuple[str, str], list[Record]] = {}
    for r in records:
        out.setdefault((r.name, r.type), []).append(r)
    return out


def values(records: list[Record], name: str, rtype: str) -> list[str]:
    return [r.value for r in by_name_type(records).get((name, rtype), [])]


# ---------------------------------------------------------------------------- content


def test_every_record_for_the_primary_domain(state: tuple[Config, list[DKIMKey]]) -> None:
    cfg, keys = state
    records = expected_records(cfg, keys, domain="example.org", ipv4=V4, ipv6=V6)
    assert values(records, "example.org.", "MX") == ["10 mx1.example.org."]
    assert values(records, "mx1.example.org.", "A") == V4
    assert values(records, "mx1.example.org.", "AAAA") == V6
    assert values(records, "example.org.", "TXT") == ["v=spf1 mx ~all"]
    assert values(records, "mx1.example.org.", "TXT") == ["v=spf1 a -all"]
    for key in keys[:2]:
        assert values(records, f"{key.selector}._domainkey.example.org.", "TXT") == [key.dns_txt]
    assert values(records, "_dmarc.example.org.", "TXT") == [
        "v=DMARC1; p=none; rua=mailto:postmaster@example.org"
    ]
    sts_id = mta_sts_id(mta_sts_policy(cfg))
    assert values(records, "_mta-sts.example.org.", "TXT") == [f"v=STSv1; id={sts_id}"]
    assert values(records, "mta-sts.example.org.", "CNAME") == ["mx1.example.org."]
    assert values(records, "_smtp._tls.example.org.", "TXT") == [
        "v=TLSRPTv1; rua=mailto:postmaster@example.org"
    ]
    assert values(records, "_submissions._tcp.example.org.", "SRV") == ["0 1 465 mx1.example.org."]
    assert values(records, "_submission._tcp.example.org.", "SRV") == ["10 1 587 mx1.example.org."]
    assert values(records, "_imaps._tcp.example.org.", "SRV") == ["0 1 993 mx1.example.org."]
    assert values(records, "_imap._tcp.example.org.", "SRV") == ["10 1 143 mx1.example.org."]
    assert values(records, "autoconfig.example.org.", "CNAME") == ["mx1.example.org."]
    assert values(records, "5.113.0.203.in-addr.arpa.", "PTR") == ["mx1.example.org."]
    assert values(records, reverse_name(V6[0]), "PTR") == ["mx1.example.org."]
    # Only the other domain's DKIM keys are absent.
    assert not [r for r in records if "example.net" in r.name]
    assert all(r.comment for r in records)
    assert all(r.name.endswith(".") for r in records)


def test_spf_and_dmarc_comments_explain_the_soft_start(state: tuple[Config, list[DKIMKey]]) -> None:
    cfg, keys = state
    records = expected_records(cfg, keys, domain="example.org", ipv4=V4, ipv6=V6)
    spf = by_name_type(records)[("example.org.", "TXT")][0]
    assert "~all" in spf.comment and "-all" in spf.comment
    dmarc = by_name_type(records)[("_dmarc.example.org.", "TXT")][0]
    assert "quarantine" in dmarc.comment and "reject" in dmarc.comment


def test_secondary_domain_has_no_hostname_records(state: tuple[Config, list[DKIMKey]]) -> None:
    cfg, keys = state
    records = expected_records(cfg, keys, domain="example.net", ipv4=V4, ipv6=V6)
    assert values(records, "example.net.", "MX") == ["10 mx1.example.org."]
    assert not [r for r in records if r.name.startswith("mx1.") or r.type == "PTR"]
    assert {r.zone for r in records} == {"example.net."}
    assert values(records, "default._domainkey.example.net.", "TXT") == [keys[2].dns_txt]


def test_all_domains_carry_hostname_records_once(state: tuple[Config, list[DKIMKey]]) -> None:
    cfg, keys = state
    records = expected_records(cfg, keys, ipv4=V4, ipv6=V6)
    assert len(values(records, "mx1.example.org.", "A")) == 1
    assert len([r for r in records if r.type == "PTR"]) == 2
    assert len([r for r in records if r.type == "MX"]) == 2
    assert [r.type for r in records][-2:] == ["PTR", "PTR"]


def test_srv_for_services_not_listening_says_not_offered(tmp_path: Path) -> None:
    cfg = make_cfg(tmp_path, listen={"smtp": ["127.0.0.2:25"], "imaps": ["127.0.0.2:10993"]})
    records = expected_records(cfg, [], domain="example.org", ipv4=V4, ipv6=[])
    assert values(records, "_imaps._tcp.example.org.", "SRV") == ["0 1 10993 mx1.example.org."]
    for svc in ("_submissions", "_submission", "_imap"):
        assert values(records, f"{svc}._tcp.example.org.", "SRV") == ["0 0 0 ."]


def test_hostname_outside_local_domains_gets_its_own_zone(tmp_path: Path) -> None:
    cfg = make_cfg(tmp_path, hostname="mail.provider.net")
    assert hostname_zone(cfg) == "provider.net"
    records = expected_records(cfg, [], domain="example.org", ipv4=V4, ipv6=[])
    a = by_name_type(records)[("mail.provider.net.", "A")][0]
    assert a.zone == "provider.net."
    text = render_zone(records)
    groups = split_groups(text)
    assert list(groups) == ["example.org.", "provider.net."]
    for origin, block in groups.items():
        parse_zone(block, origin)


def test_hostname_is_the_apex(tmp_path: Path) -> None:
    cfg = make_cfg(tmp_path, hostname="example.org")
    records = expected_records(cfg, [], domain="example.org", ipv4=V4, ipv6=[])
    # One SPF record only at the apex (two v=spf1 records are a permerror).
    assert values(records, "example.org.", "TXT") == ["v=spf1 mx ~all"]
    assert values(records, "example.org.", "A") == V4
    assert values(records, "mta-sts.example.org.", "CNAME") == ["example.org."]


def test_no_cname_where_the_hostname_itself_lives(tmp_path: Path) -> None:
    for host in ("mta-sts.example.org", "autoconfig.example.org"):
        cfg = make_cfg(tmp_path, hostname=host)
        records = expected_records(cfg, [], domain="example.org", ipv4=V4, ipv6=[])
        assert not values(records, host + ".", "CNAME")
        assert values(records, host + ".", "A") == V4


def test_subdomain_hostname_goes_to_the_longest_local_zone(tmp_path: Path) -> None:
    cfg = make_cfg(
        tmp_path, hostname="mx.mail.example.org", local_domains=["example.org", "mail.example.org"]
    )
    assert hostname_zone(cfg) == "mail.example.org"
    assert values(expected_records(cfg, [], domain="mail.example.org", ipv4=V4, ipv6=[]),
                  "mx.mail.example.org.", "A") == V4
    assert not values(expected_records(cfg, [], domain="example.org", ipv4=V4, ipv6=[]),
                      "mx.mail.example.org.", "A")


def test_private_address_is_published_with_a_warning(tmp_path: Path) -> None:
    cfg = make_cfg(tmp_path)
    records = expected_records(cfg, [], domain="example.org", ipv4=["127.0.0.2"], ipv6=[])
    a = by_name_type(records)[("mx1.example.org.", "A")][0]
    assert a.value == "127.0.0.2" and "not a public address" in a.comment


def test_unknown_address_is_a_commented_placeholder(tmp_path: Path) -> None:
    cfg = make_cfg(tmp_path)  # IPv4 wildcard listeners only
    records = expected_records(cfg, [], domain="example.org", ipv4=[], ipv6=[])
    a = by_name_type(records)[("mx1.example.org.", "A")]
    assert [(r.value, r.placeholder, r.publishable) for r in a] == [(IPV4_PLACEHOLDER, True, False)]
    assert ("mx1.example.org.", "AAAA") not in by_name_type(records)  # no IPv6 listener
    assert not [r for r in records if r.type == "PTR"]
    text = render_zone(records)
    assert f"; mx1.example.org. 3600 IN A     {IPV4_PLACEHOLDER}" in re.sub(r"  +(3600)", r" \1", text)
    zone = parse_zone(text, "example.org.")
    assert zone.get_rdataset("mx1.example.org.", "A") is None


def test_ipv6_wildcard_asks_for_an_ipv6_address(tmp_path: Path) -> None:
    cfg = make_cfg(tmp_path, listen={"smtp": ["[::]:25"]})
    records = expected_records(cfg, [], domain="example.org", ipv4=[], ipv6=[])
    assert [r.type for r in records if r.placeholder] == ["AAAA"]


# ---------------------------------------------------------------------------- MTA-STS


def test_mta_sts_policy_text(state: tuple[Config, list[DKIMKey]]) -> None:
    cfg, _ = state
    policy = mta_sts_policy(cfg)
    assert policy == (
        f"version: STSv1\r\nmode: {MTA_STS_MODE}\r\nmx: mx1.example.org\r\nmax_age: {MTA_STS_MAX_AGE}\r\n"
    )


def test_mta_sts_id_changes_only_with_the_policy(tmp_path: Path) -> None:
    a = mta_sts_id(mta_sts_policy(make_cfg(tmp_path)))
    assert a == mta_sts_id(mta_sts_policy(make_cfg(tmp_path / "other")))
    assert a != mta_sts_id(mta_sts_policy(make_cfg(tmp_path, hostname="mx2.example.org")))
    assert re.fullmatch(r"[A-Za-z0-9]{1,32}", a)


def test_published_values_pass_checkdmarc_parsers(state: tuple[Config, list[DKIMKey]]) -> None:
    """An independent parser of the record syntaxes (RFC 8461, 8460, 7489)."""
    mta_sts = pytest.importorskip("checkdmarc.mta_sts")
    tlsrpt = pytest.importorskip("checkdmarc.smtp_tls_reporting")
    dmarc = pytest.importorskip("checkdmarc.dmarc")
    cfg, keys = state
    records = by_name_type(expected_records(cfg, keys, domain="example.org", ipv4=V4, ipv6=V6))
    parsed = mta_sts.parse_mta_sts_record(records[("_mta-sts.example.org.", "TXT")][0].value)
    assert parsed["tags"]["id"] == mta_sts_id(mta_sts_policy(cfg))
    policy = mta_sts.parse_mta_sts_policy(mta_sts_policy(cfg))
    assert policy["policy"]["mx"] == ["mx1.example.org"] and policy["policy"]["mode"] == MTA_STS_MODE
    parsed = tlsrpt.parse_smtp_tls_reporting_record(records[("_smtp._tls.example.org.", "TXT")][0].value)
    assert parsed["tags"]["rua"]["value"] == ["mailto:postmaster@example.org"]
    # DMARC parsing looks up the rua domain's MX: point it at a closed loopback port so
    # nothing leaves the machine (the failed lookup is only a warning).
    resolver = dns.resolver.Resolver(configure=False)
    resolver.nameservers = ["127.0.0.1"]
    resolver.port = 9
    resolver.lifetime = 1.0
    parsed = dmarc.parse_dmarc_record(
        records[("_dmarc.example.org.", "TXT")][0].value, "example.org", resolver=resolver, timeout=1.0
    )
    assert parsed["tags"]["p"]["value"] == "none"


# ---------------------------------------------------------------------------- zone text


def test_zone_parses_back_to_the_same_records(state: tuple[Config, list[DKIMKey]]) -> None:
    cfg, keys = state
    records = expected_records(cfg, keys, domain="example.org", ipv4=V4, ipv6=V6)
    text = render_zone(records)
    zone = parse_zone(text, "example.org.")
    publishable = [r for r in records if r.publishable]
    parsed = {(str(n), dns.rdatatype.to_text(rds.rdtype)): rds for n, rds in zone.iterate_rdatasets()}
    expected = by_name_type(publishable)
    assert set(parsed) == set(expected)
    for (name, rtype), recs in expected.items():
        rds = parsed[(name, rtype)]
        assert rds.ttl == 3600
        want = {dns.rdata.from_text(dns.rdataclass.IN, rtype, rdata_text(r)) for r in recs}
        assert set(rds) == want, (name, rtype)


def test_dkim_txt_round_trips_and_verifies(state: tuple[Config, list[DKIMKey]]) -> None:
    cfg, keys = state
    text = render_zone(expected_records(cfg, keys, domain="example.org", ipv4=V4, ipv6=V6))
    zone = parse_zone(text, "example.org.")
    published: dict[str, bytes] = {}
    for key in keys[:2]:
        rds = zone.get_rdataset(key.dns_name + ".", "TXT")
        assert rds is not None and len(rds) == 1
        strings = next(iter(rds)).strings
        assert all(len(s) <= 255 for s in strings)
        assert b"".join(strings).decode() == key.dns_txt
        published[key.dns_name] = b"".join(strings)
    assert len(next(iter(zone.get_rdataset(keys[0].dns_name + ".", "TXT"))).strings) == 2  # rsa > 255

    def dnsfunc(name: bytes, timeout: int = 5) -> bytes | None:
        return published.get(name.decode().rstrip("."))

    message = b"From: a@example.org\r\nTo: b@example.net\r\nSubject: zone\r\n\r\nbody\r\n"
    for key in keys[:2]:
        sig = dkim.sign(message, key.selector.encode(), key.domain.encode(), key.dkimpy_privkey,
                        signature_algorithm=key.dkimpy_algorithm)
        assert dkim.verify(sig + message, dnsfunc=dnsfunc)


def test_every_record_line_has_name_ttl_class_type(state: tuple[Config, list[DKIMKey]]) -> None:
    cfg, keys = state
    text = render_zone(expected_records(cfg, keys, ipv4=V4, ipv6=V6))
    for line in text.splitlines():
        if line and not line.startswith(";"):
            assert re.match(r"^\S+\. +3600 IN (MX|A|AAAA|TXT|CNAME|SRV) +\S", line), line
    assert "$ORIGIN" not in text  # pasting into an existing zone must not change its origin


def test_multi_domain_output_parses_per_zone(state: tuple[Config, list[DKIMKey]]) -> None:
    cfg, keys = state
    text = render_zone(expected_records(cfg, keys, ipv4=V4, ipv6=V6))
    groups = split_groups(text)
    assert list(groups) == ["example.org.", "example.net."]
    for origin, block in groups.items():
        assert parse_zone(block, origin).get_rdataset(origin, "MX") is not None


def test_ptr_records_are_comments(state: tuple[Config, list[DKIMKey]]) -> None:
    cfg, keys = state
    text = render_zone(expected_records(cfg, keys, domain="example.org", ipv4=V4, ipv6=V6))
    ptr_lines = [line for line in text.splitlines() if " IN PTR " in line]
    assert len(ptr_lines) == 2 and all(line.startswith("; ") for line in ptr_lines)
    assert "5.113.0.203.in-addr.arpa." in ptr_lines[0]
    # PTR names do not widen the columns of the records to publish.
    mx_line = next(line for line in text.splitlines() if " MX " in line)
    assert len(mx_line.split(" 3600 ")[0]) < 45


@pytest.mark.parametrize(
    ("value", "chunks"),
    [
        ("", [b""]),
        ("a" * 255, [b"a" * 255]),
        ("a" * 256, [b"a" * 255, b"a"]),
        ("b" * 600, [b"b" * 255, b"b" * 255, b"b" * 90]),
    ],
)
def test_txt_strings_split_at_255_bytes(value: str, chunks: list[bytes]) -> None:
    assert txt_strings(value) == chunks


@pytest.mark.parametrize(
    "value",
    [
        'say "hi"; then \\ leave',
        "x" * 254 + '"' + "y" * 300,  # escape right at a chunk border
        "\\" * 300,
        "tab\there, nul \x00, é and ; semicolon",
        "",
    ],
)
def test_txt_escaping_round_trips_through_dnspython(value: str) -> None:
    record = Record("t.example.org.", "TXT", value, "c", zone="example.org.")
    zone = parse_zone(render_zone([record]), "example.org.")
    rds = zone.get_rdataset("t.example.org.", "TXT")
    assert rds is not None
    assert b"".join(next(iter(rds)).strings) == value.encode("utf-8")


def test_txt_rdata_text_format() -> None:
    assert rdata_text(Record("a.", "TXT", 'v="1"\\')) == '"v=\\"1\\"\\\\"'
    assert rdata_text(Record("a.", "TXT", "a" * 256)) == f'"{"a" * 255}" "a"'
    assert rdata_text(Record("a.", "TXT", "\x01")) == '"\\001"'
    assert rdata_text(Record("a.", "MX", "10 b.")) == "10 b."


def test_multiline_comments_stay_comments() -> None:
    comment = "line one\nline two " + "w " * 80
    record = Record("t.example.org.", "A", "192.0.2.1", comment, zone="example.org.")
    text = render_zone([record])
    assert all(line.startswith(";") for line in text.splitlines()[:-1] if line)
    assert all(len(line) <= 100 for line in text.splitlines()[:-1])
    parse_zone(text, "example.org.")


def test_render_empty() -> None:
    assert render_zone([]) == ""
    assert json.loads(render_json([])) == []


# ---------------------------------------------------------------------------- JSON


def test_json_has_raw_values_and_flags(state: tuple[Config, list[DKIMKey]]) -> None:
    cfg, keys = state
    records = expected_records(cfg, keys, domain="example.org", ipv4=V4, ipv6=V6)
    items = json.loads(render_json(records))
    assert len(items) == len(records)
    assert set(items[0]) == {"name", "type", "value", "comment", "ttl", "zone", "placeholder",
                             "rdata", "publishable"}
    dkim_item = next(i for i in items if i["name"] == f"{keys[0].dns_name}.")
    assert dkim_item["value"] == keys[0].dns_txt
    assert dkim_item["rdata"].count('"') == 4
    ptr = next(i for i in items if i["type"] == "PTR")
    assert ptr["publishable"] is False and ptr["zone"] == ""
    fields = [{k: v for k, v in i.items() if k not in ("rdata", "publishable")} for i in items]
    assert [Record(**f) for f in fields] == records


# ---------------------------------------------------------------------------- banner


def test_first_start_banner(state: tuple[Config, list[DKIMKey]]) -> None:
    cfg, keys = state
    text = first_start_banner(cfg, keys, ipv4=V4, ipv6=V6)
    flat = " ".join(text.split())  # the advice is wrapped at 78 columns
    assert "Publish these DNS records for example.org:" in text
    assert "Publish these DNS records for example.net:" in text
    assert text.index("for example.org:") < text.index("for example.net:")
    for key in keys:
        assert key.dns_txt[:200] in text
    assert "PTR of 203.0.113.5, 2001:db8::5 to mx1.example.org" in flat
    assert "Port 25" in text
    assert "\n    mx: mx1.example.org\n" in text
    assert "`pymaild dns`" in flat
    assert "<...>" not in text  # nothing to fill in


def test_banner_with_unknown_address_says_so(state: tuple[Config, list[DKIMKey]]) -> None:
    cfg, keys = state
    flat = " ".join(first_start_banner(cfg, keys, ipv4=[], ipv6=[]).split())
    assert "PTR of your server's public addresses to mx1.example.org" in flat
    assert "pymaild dns --ip ADDRESS" in flat


# ---------------------------------------------------------------------------- addresses


def fake_resolver(table: dict[str, list[str]]):
    calls: list[str] = []

    def resolve(host: str, port: object, family: int = 0, type: int = 0) -> list[tuple]:
        calls.append(host)
        if host not in table:
            raise OSError("no such host")
        return [(0, type, 0, "", (a, 0)) for a in table[host]]

    resolve.calls = calls  # type: ignore[attr-defined]
    return resolve


def no_interfaces() -> list[str]:
    return []


def test_explicit_listen_addresses_win(tmp_path: Path) -> None:
    cfg = make_cfg(tmp_path, listen={"smtp": ["127.0.0.2:25", "[::1]:25"], "imaps": ["127.0.0.2:993"]})
    resolve = fake_resolver({})
    assert detect_addresses(cfg, resolve=resolve, interfaces=no_interfaces) == (["127.0.0.2"], ["::1"])
    assert resolve.calls == []  # nothing resolved when the config says it all


def test_wildcard_uses_global_addresses_of_the_hostname(tmp_path: Path) -> None:
    cfg = make_cfg(tmp_path, listen={"smtp": ["0.0.0.0:25", "[::]:25"]})
    resolve = fake_resolver({"mx1.example.org": ["127.0.1.1", "93.184.216.7", "2a01:4f8::7", "fe80::1"]})
    found = detect_addresses(cfg, resolve=resolve, interfaces=no_interfaces)
    assert found == (["93.184.216.7"], ["2a01:4f8::7"])


def test_wildcard_falls_back_to_interfaces(tmp_path: Path) -> None:
    cfg = make_cfg(tmp_path, listen={"smtp": ["0.0.0.0:25"]})
    resolve = fake_resolver({"mx1.example.org": ["127.0.1.1"]})

    def interfaces() -> list[str]:
        return ["127.0.0.1", "10.0.0.5", "93.184.216.8", "2a01:4f8::8"]

    # IPv4 listener only: the interface's global IPv6 address is not offered.
    assert detect_addresses(cfg, resolve=resolve, interfaces=interfaces) == (["93.184.216.8"], [])


def test_nothing_found_is_empty(tmp_path: Path) -> None:
    cfg = make_cfg(tmp_path)
    assert detect_addresses(cfg, resolve=fake_resolver({}), interfaces=no_interfaces) == ([], [])


def test_no_listeners_assumes_ipv4(tmp_path: Path) -> None:
    cfg = make_cfg(tmp_path, listen={})
    assert served_families(cfg) == {4}
    resolve = fake_resolver({"mx1.example.org": ["93.184.216.9", "2a01:4f8::9"]})
    assert detect_addresses(cfg, resolve=resolve, interfaces=no_interfaces) == (["93.184.216.9"], [])


def test_listen_host_name_is_resolved(tmp_path: Path) -> None:
    cfg = make_cfg(tmp_path, listen={"smtp": ["mx-listen.example.org:25"]})
    assert served_families(cfg) == {4, 6}
    resolve = fake_resolver({"mx-listen.example.org": ["192.0.2.10", "2001:db8::10", "192.0.2.10"]})
    found = detect_addresses(cfg, resolve=resolve, interfaces=no_interfaces)
    assert found == (["192.0.2.10"], ["2001:db8::10"])


def test_interface_listing_is_local_and_valid() -> None:
    import ipaddress

    found = rec.interface_addresses()
    for a in found:
        ipaddress.ip_address(a)
    assert "127.0.0.1" in found  # lo is always there on Linux


# Skipped locally without the tool; under CI (which installs bind9-utils) a missing
# named-checkzone fails the test instead of skipping it.
@pytest.mark.skipif(shutil.which("named-checkzone") is None and not os.environ.get("CI"),
                    reason="bind9-utils not installed")
def test_bind_accepts_the_zone(state: tuple[Config, list[DKIMKey]], tmp_path: Path) -> None:
    """BIND's own checker (with its MX/SRV target integrity checks) loads the block as is,
    after the SOA and NS a real zone already has."""
    cfg, keys = state
    head = (
        "example.org. 3600 IN SOA ns1.example.org. hostmaster.example.org. 1 7200 3600 1209600 3600\n"
        "example.org. 3600 IN NS ns1.example.org.\n"
        "ns1.example.org. 3600 IN A 192.0.2.53\n"
    )
    # The PTR advice is included, as comments.
    records = expected_records(cfg, keys, domain="example.org", ipv4=V4, ipv6=[])
    path = tmp_path / "example.org.zone"
    path.write_text(head + render_zone(records))
    result = subprocess.run(
        ["named-checkzone", "example.org", str(path)], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "OK" in result.stdout


def test_slow_resolver_is_abandoned(tmp_path: Path) -> None:
    import threading

    release = threading.Event()

    def hanging(host: str, *args: object) -> list[tuple]:
        release.wait(10)
        return [(0, 0, 0, "", ("93.184.216.1", 0))]

    try:
        assert rec._resolve(hanging, "mx1.example.org", timeout=0.2) == []
    finally:
        release.set()


def test_hostname_is_resolved_once_for_both_families(tmp_path: Path) -> None:
    cfg = make_cfg(tmp_path, listen={"smtp": ["0.0.0.0:25", "[::]:25"]})
    resolve = fake_resolver({"mx1.example.org": ["93.184.216.7"]})
    calls: list[int] = []

    def interfaces() -> list[str]:
        calls.append(1)
        return ["2a01:4f8::8"]

    found = detect_addresses(cfg, resolve=resolve, interfaces=interfaces)
    assert found == (["93.184.216.7"], ["2a01:4f8::8"])
    assert resolve.calls == ["mx1.example.org"] and calls == [1]
