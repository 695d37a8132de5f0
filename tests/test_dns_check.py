"""``pymaild dns check``: pure judges, then whole checks against real parts on loopback.

The zone is served by the loopback DNS server (``[dns] nameservers`` points at it, and
checkdmarc gets the same server with its port), the MTA-STS policy by an HTTPS server
on 127.0.0.2 with a certificate from the test CA (``[delivery] ca_file``,
``mta_sts_port``). The published zone is exactly what ``expected_records`` says, so
"everything right" means "what `pymaild dns` told the operator to publish".
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from mailserver.commands import dns as dns_command
from mailserver.commands.dnscheck import (
    CheckResult,
    dkim_tags,
    exit_code,
    judge_addresses,
    judge_dkim,
    judge_dmarc,
    judge_mta_sts_policy,
    judge_mta_sts_txt,
    judge_mx,
    judge_ptr,
    judge_spf,
    judge_tlsrpt,
    render_json,
    render_text,
    spf_records,
)
from mailserver.config import Config, load_config
from mailserver.delivery.mtasts import Policy
from mailserver.dkim_keys import RSA_ALGORITHM, DKIMKey, dns_txt_for, ensure_keys, generate_private_key
from mailserver.dns.records import Record, expected_records, mta_sts_policy
from tests.support.ca import TestCA
from tests.support.dnsserver import DNSServer
from tests.support.smtpsink import HTTPResponse, PolicyServer

ROOT = Path(__file__).resolve().parents[1]
HOST = "mx1.example.org"
IP = "127.0.0.2"


def rec(name: str, rtype: str, value: str) -> Record:
    return Record(name + ".", rtype, value)


MX_REC = rec("example.org", "MX", f"10 {HOST}.")
SPF_REC = rec("example.org", "TXT", "v=spf1 mx ~all")
DMARC_REC = rec("_dmarc.example.org", "TXT", "v=DMARC1; p=none; rua=mailto:postmaster@example.org")
STS_REC = rec("_mta-sts.example.org", "TXT", "v=STSv1; id=abc123")
TLSRPT_REC = rec("_smtp._tls.example.org", "TXT", "v=TLSRPTv1; rua=mailto:postmaster@example.org")


# ---------------------------------------------------------------------------- pure judges


@pytest.mark.parametrize(
    ("mx", "status", "text"),
    [
        ([(10, HOST)], "ok", f"-> {HOST}"),
        ([(10, HOST.upper() + ".")], "ok", f"-> {HOST}"),
        ([(10, HOST), (20, "backup.example.net")], "ok", "backups: backup.example.net"),
        ([(10, HOST), (10, "twin.example.net")], "ok", "backups: twin.example.net"),
        ([(5, "other.example.net"), (10, HOST)], "wrong", "5 other.example.net is preferred to 10"),
        ([(10, "mx.elsewhere.net")], "wrong", "not mx1.example.org"),
        ([(0, ".")], "wrong", "null MX"),
        ([], "missing", "no MX record"),
        (None, "missing", "no MX record"),
    ],
)
def test_judge_mx(mx: list[tuple[int, str]] | None, status: str, text: str) -> None:
    r = judge_mx("example.org", HOST, mx, MX_REC)
    assert (r.kind, r.name, r.status) == ("MX", "example.org", status)
    assert text in r.line()
    if status != "ok":
        assert r.fix


def test_judge_mx_fix_names_the_record() -> None:
    r = judge_mx("example.org", HOST, None, MX_REC)
    assert r.line() == f"missing MX        example.org: no MX record; publish MX 10 {HOST}."


@pytest.mark.parametrize(
    ("expected", "found", "required", "status"),
    [
        ([IP], [IP], True, "ok"),
        ([IP], [], True, "missing"),
        ([IP], ["192.0.2.9"], True, "wrong"),
        ([IP], [IP, "192.0.2.9"], True, "wrong"),
        ([IP, "127.0.0.3"], [IP], True, "wrong"),
        ([], [IP], True, "ok"),  # nothing known: reports what is published
        ([], [], True, "missing"),
        ([], [], False, None),
    ],
)
def test_judge_addresses(expected: list[str], found: list[str], required: bool, status: str | None) -> None:
    r = judge_addresses(HOST, "A", expected, found, None, required=required)
    assert (r.status if r else None) == status
    if r and not expected and found:
        assert "not compared" in r.detail
    if r and r.status == "missing" and expected:
        assert r.fix == f"publish A {IP}" or "publish A" in r.fix


@pytest.mark.parametrize(
    ("ptr", "forward", "status", "text"),
    [
        ([HOST], [IP], "ok", f"-> {HOST} -> {IP}"),
        ([HOST + "."], [IP], "ok", ""),
        ([], [IP], "missing", "no PTR"),
        (["host-127-0-0-2.isp.net"], [IP], "wrong", "PTR is host-127-0-0-2.isp.net"),
        ([HOST, "other.example.org"], [IP], "wrong", "PTR is"),
        ([HOST], ["192.0.2.9"], "wrong", "does not resolve back"),
    ],
)
def test_judge_ptr(ptr: list[str], forward: list[str], status: str, text: str) -> None:
    r = judge_ptr(IP, HOST, ptr, forward)
    assert r.status == status and text in r.line()
    if status != "ok":
        assert IP in r.fix


def test_spf_records_selects_only_spf1() -> None:
    txts = ["v=spf1 mx ~all", "V=SPF1 -all", "v=spf10 -all", "v=spf1", "site-verification=x", "v=spf1x"]
    assert spf_records(txts) == ["v=spf1 mx ~all", "V=SPF1 -all", "v=spf1"]


@pytest.mark.parametrize(
    ("records", "audit", "verdicts", "status", "text"),
    [
        (["v=spf1 mx ~all"], None, [(IP, "pass")], "ok", f"allows {IP}"),
        ([], None, [], "missing", 'publish TXT "v=spf1 mx ~all"'),
        (["v=spf1 mx ~all", "v=spf1 a -all"], None, [], "wrong", "2 v=spf1 records"),
        (["v=spf1 -all"], None, [(IP, "fail")], "wrong",
         f'"v=spf1 -all" does not allow {IP} (fail); use "v=spf1 mx ~all"'),
        (["v=spf1 ?all"], None, [(IP, "neutral")], "wrong", "neutral"),
        (["v=spf1 mx ~all"], None, [(IP, "pass"), ("::1", "softfail")], "wrong", "::1 (softfail)"),
        (["v=spf1 foo"], "foo is not a valid SPF mechanism", [], "wrong", "not a valid"),
        (["v=spf1 mx ~all"], None, [(IP, "temperror")], "error", "DNS did not answer"),
        (["v=spf1 redirect=x"], None, [(IP, "permerror")], "wrong", "permerror"),
        (["v=spf1 mx ~all"], None, [], "warn", "no address"),
    ],
)
def test_judge_spf(records: list[str], audit: str | None, verdicts: list[tuple[str, str]],
                   status: str, text: str) -> None:
    r = judge_spf("example.org", records, audit, verdicts, SPF_REC)
    assert r.status == status
    assert text in r.line()


KEY = "MIIBIjANBgkqhkiG9w0BAQEFAAOCAQ8AMIIBCgKCAQEAtest+key/AB=="
EXPECTED_DKIM = f"v=DKIM1; k=rsa; p={KEY}"


@pytest.mark.parametrize(
    ("found", "status"),
    [
        ([EXPECTED_DKIM], "ok"),
        ([f"v=DKIM1;k=rsa;p={KEY}"], "ok"),
        ([f"p={KEY}; k=rsa; v=DKIM1"], "ok"),  # tag order
        ([f"v=DKIM1; p={KEY}"], "ok"),  # k= defaults to rsa
        ([f"v=DKIM1; k=rsa; p={KEY[:20]} {KEY[20:40]}\t{KEY[40:]}"], "ok"),  # FWS inside base64
        ([f"V=DKIM1; K=rsa; P={KEY}"], "wrong"),  # tag names are case-sensitive
        ([], "missing"),
        ([""], "missing"),
        (["some unrelated text"], "wrong"),
        ([f"v=DKIM1; k=rsa; p={KEY[:-4]}AAA="], "wrong"),
        ([f"v=DKIM1; k=ed25519; p={KEY}"], "wrong"),
        (["v=DKIM1; k=rsa; p="], "wrong"),
        ([f'v=DKIM1; k=rsa; p={KEY[:20]}" "{KEY[20:]}'], "wrong"),  # pasted with quotes
        ([EXPECTED_DKIM, EXPECTED_DKIM], "wrong"),
    ],
)
def test_judge_dkim(found: list[str], status: str) -> None:
    r = judge_dkim("default._domainkey.example.org", EXPECTED_DKIM, found)
    assert r.status == status, r.line()
    if status != "ok":
        assert r.fix.endswith(f'publish TXT "{EXPECTED_DKIM}"')


def test_dkim_tags() -> None:
    assert dkim_tags(" v = DKIM1 ;K=rsa; p = ab c\td ; ;x") == {"v": "DKIM1", "K": "rsa", "p": "abcd"}


@pytest.mark.parametrize(
    ("txts", "status", "text"),
    [
        (["v=DMARC1; p=none; rua=mailto:postmaster@example.org"], "ok", "p=none, reports to mailto:"),
        (["v=DMARC1; p=reject"], "ok", "no rua"),
        (["v=DMARC1; rua=mailto:a@example.org"], "ok", "taken as none"),
        (["unrelated", "v=DMARC1; p=quarantine"], "ok", "p=quarantine"),
        ([], "missing", 'publish TXT "v=DMARC1; p=none'),
        (["v=DMARC2; p=none"], "missing", ""),
        (["v=DMARC1; p=none", "v=DMARC1; p=reject"], "wrong", "2 DMARC records"),
        (["v=DMARC1; p=bogus"], "wrong", "missing or invalid p="),
        (["v=DMARC1; p=none; pct=200"], "wrong", "pct"),
    ],
)
def test_judge_dmarc(txts: list[str], status: str, text: str) -> None:
    r = judge_dmarc("_dmarc.example.org", txts, DMARC_REC)
    assert r.status == status and text in r.line()


@pytest.mark.parametrize(
    ("txts", "status", "policy_id"),
    [
        (["v=STSv1; id=abc123"], None, "abc123"),
        (["v=STSv1;id=20240101T0"], "wrong", ""),  # "T0" fine, but 10 chars ok -> check below
        ([], "missing", ""),
        (["v=STSv2; id=1"], "missing", ""),
        (["v=STSv1; id=a", "v=STSv1; id=b"], "wrong", ""),
        (["v=STSv1; id=bad-id!"], "wrong", ""),
        (["v=STSv1"], "wrong", ""),
    ],
)
def test_judge_mta_sts_txt(txts: list[str], status: str | None, policy_id: str) -> None:
    if txts == ["v=STSv1;id=20240101T0"]:
        status, policy_id = None, "20240101T0"  # alphanumeric: valid
    r, got_id = judge_mta_sts_txt("_mta-sts.example.org", txts, STS_REC)
    assert (r.status if r else None) == status
    assert got_id == policy_id


@pytest.mark.parametrize(
    ("policy", "status", "text"),
    [
        (Policy("testing", [HOST], 604800, "abc"), "ok", "mode testing"),
        (Policy("enforce", ["*.example.org"], 604800, "abc"), "ok", "mode enforce"),
        (Policy("enforce", ["mx.other.net"], 604800, "abc"), "wrong", "does not match mx1.example.org"),
        (Policy("testing", ["*.org"], 604800, "abc"), "wrong", "report failures"),
        (Policy("none", [], 604800, "abc"), "warn", "mode none"),
        (None, "wrong", "HTTP status 404"),
    ],
)
def test_judge_mta_sts_policy(policy: Policy | None, status: str, text: str) -> None:
    text_served = "version: STSv1\r\nmode: x\r\n"
    r = judge_mta_sts_policy("example.org", "abc", policy, "HTTP status 404", HOST, text_served)
    assert r.status == status and text in r.line()
    if status == "wrong":
        assert "version: STSv1; mode: x" in r.fix


@pytest.mark.parametrize(
    ("txts", "status"),
    [
        (["v=TLSRPTv1; rua=mailto:postmaster@example.org"], "ok"),
        (["v=TLSRPTv1;rua=https://reports.example.org/tls"], "ok"),
        ([], "missing"),
        (["v=tlsrptv1; rua=mailto:a@b.org"], "missing"),  # version is case-sensitive
        (["v=TLSRPTv1; rua=foo"], "wrong"),
        (["v=TLSRPTv1; rua=mailto:a@example.org", "v=TLSRPTv1; rua=mailto:b@example.org"], "wrong"),
    ],
)
def test_judge_tlsrpt(txts: list[str], status: str) -> None:
    r = judge_tlsrpt("_smtp._tls.example.org", txts, TLSRPT_REC)
    assert r.status == status, r.line()


def test_output_and_exit_code() -> None:
    ok = CheckResult("MX", "example.org", "ok", f"-> {HOST}")
    warn = CheckResult("PTR", HOST, "warn", "not checked", "pass --ip ADDRESS")
    missing = CheckResult("DKIM", "default._domainkey.example.org", "missing", "",
                          'publish TXT "v=DKIM1; p=x"')
    assert ok.line() == f"ok      MX        example.org -> {HOST}"
    assert missing.line() == 'missing DKIM      default._domainkey.example.org: publish TXT "v=DKIM1; p=x"'
    assert exit_code([ok, warn]) == 0
    assert exit_code([ok, missing]) == 1
    assert exit_code([CheckResult("MX", "x", "error")]) == 1
    assert exit_code([CheckResult("MX", "x", "wrong")]) == 1
    assert render_text([ok, warn]).count("\n") == 2
    assert json.loads(render_json([missing]))[0] == {
        "kind": "DKIM", "name": "default._domainkey.example.org", "status": "missing", "detail": "",
        "fix": 'publish TXT "v=DKIM1; p=x"',
    }


# ---------------------------------------------------------------------------- a live zone on loopback


@dataclass
class World:
    cfg: Config
    config_path: Path
    keys: list[DKIMKey]
    dns: DNSServer
    policy: PolicyServer
    records: list[Record]

    def publish_all(self) -> None:
        self.dns.clear()
        for r in self.records:
            if r.placeholder:
                continue
            self.dns.add(r.name, r.type, r.value)

    def record(self, name: str, rtype: str) -> Record:
        return next(r for r in self.records if r.name == name + "." and r.type == rtype)


@pytest.fixture
def policy_server(ca: TestCA) -> Iterator[PolicyServer]:
    """The HTTPS policy server on its own event loop thread, so the (synchronous) command
    under test can run its own asyncio.run() and a subprocess can reach it too."""
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, daemon=True, name="policy-server")
    thread.start()
    server = PolicyServer(IP, ca.issue("mta-sts.example.org", stem="check-mta-sts"))
    asyncio.run_coroutine_threadsafe(server.start(), loop).result(10)
    yield server
    asyncio.run_coroutine_threadsafe(server.stop(), loop).result(10)
    loop.call_soon_threadsafe(loop.stop)
    thread.join(5)
    loop.close()


@pytest.fixture
def world(tmp_path: Path, dns_server: DNSServer, policy_server: PolicyServer, ca: TestCA) -> World:
    path = tmp_path / "pymaild.toml"
    path.write_text(f"""\
hostname = "{HOST}"
primary_domain = "example.org"
local_domains = ["example.org"]
state_dir = "state"

[tls]
self_signed = true

[listen]
smtp = ["{IP}:2525"]
submissions = ["{IP}:4465"]

[dns]
nameservers = ["{dns_server.nameserver}"]

[delivery]
ca_file = "{ca.cert_path}"
mta_sts_port = {policy_server.port}
""")
    cfg = load_config(path)
    keys = ensure_keys(cfg)
    policy_server.serve_policy(mta_sts_policy(cfg))
    w = World(cfg, path, keys, dns_server, policy_server, expected_records(cfg, keys, ipv4=[IP], ipv6=[]))
    w.publish_all()
    return w


def run_check(cfg: Config, capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, list[str]]:
    parser = argparse.ArgumentParser(prog="pymaild")
    dns_command.register(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(["dns", "check", *argv])
    code = args.func(args, cfg)
    return code, capsys.readouterr().out.splitlines()


def by_kind(lines: list[str], kind: str, name: str | None = None) -> list[str]:
    return [line for line in lines if line[8:18].strip() == kind and (name is None or name in line)]


def test_everything_right_is_all_ok(world: World, capsys: pytest.CaptureFixture[str]) -> None:
    code, lines = run_check(world.cfg, capsys)
    assert code == 0, "\n".join(lines)
    assert all(line.startswith("ok      ") for line in lines), "\n".join(lines)
    kinds = {line[8:18].strip() for line in lines}
    assert kinds == {"A", "PTR", "MX", "SPF", "DKIM", "DMARC", "MTA-STS", "TLSRPT"}
    assert by_kind(lines, "MX") == [f"ok      MX        example.org -> {HOST}"]
    assert by_kind(lines, "PTR") == [f"ok      PTR       {IP} -> {HOST} -> {IP}"]
    assert len(by_kind(lines, "DKIM")) == len(world.keys) == 2
    assert "mode testing" in by_kind(lines, "MTA-STS")[0]
    # SPF of the domain and of the HELO name (bounces), each evaluated for our address.
    assert [line.split()[2] for line in by_kind(lines, "SPF")] == ["example.org:", f"{HOST}:"]
    # The policy really came over HTTPS from the test server, with SNI for mta-sts.
    assert any("Host: mta-sts.example.org:" in r for r in world.policy.requests)


def test_one_domain_and_json(world: World, capsys: pytest.CaptureFixture[str]) -> None:
    code, lines = run_check(world.cfg, capsys, "EXAMPLE.ORG.", "--json")
    assert code == 0
    items = json.loads("\n".join(lines))
    assert {i["status"] for i in items} == {"ok"}
    assert {"kind", "name", "status", "detail", "fix"} == set(items[0])


def test_unknown_domain_is_refused(world: World, capsys: pytest.CaptureFixture[str]) -> None:
    from mailserver.commands import CommandError

    with pytest.raises(CommandError, match=r"example\.com is not in local_domains"):
        run_check(world.cfg, capsys, "example.com")
    assert world.dns.queries == []  # refused before asking anything


def test_check_creates_no_key(world: World, capsys: pytest.CaptureFixture[str]) -> None:
    for key in world.keys:
        key.private_key_path.unlink()
        key.dns_path.unlink()
    code, lines = run_check(world.cfg, capsys)
    assert code == 1
    first = by_kind(lines, "DKIM")[0]
    assert first.startswith("missing DKIM      default._domainkey.example.org: no local key")
    assert not list(world.cfg.dkim_dir.glob("*.key"))


MISSING = [
    ("MX", "example.org", "MX"),
    ("SPF", "example.org", "TXT"),
    ("DKIM", "default._domainkey.example.org", "TXT"),
    ("DMARC", "_dmarc.example.org", "TXT"),
    ("MTA-STS", "_mta-sts.example.org", "TXT"),
    ("TLSRPT", "_smtp._tls.example.org", "TXT"),
    ("A", HOST, "A"),
    ("PTR", "2.0.0.127.in-addr.arpa", "PTR"),
]


@pytest.mark.parametrize(("kind", "name", "rtype"), MISSING, ids=[m[0] for m in MISSING])
def test_missing_record(
    world: World, capsys: pytest.CaptureFixture[str], kind: str, name: str, rtype: str
) -> None:
    world.dns.remove(name, rtype)
    code, lines = run_check(world.cfg, capsys)
    assert code == 1
    shown = IP if kind == "PTR" else name
    line = by_kind(lines, kind, shown)[0]
    assert line.startswith(f"missing {kind:<10}{shown}"), line
    if kind == "PTR":
        assert f"set the reverse DNS of {IP} to {HOST}" in line
    else:
        expected = world.record(name, rtype)
        value = f'"{expected.value}"' if rtype == "TXT" else expected.value
        assert f"publish {rtype} {value}" in line
    # Everything else is unaffected (a missing A also breaks what depends on it).
    others = [ln for ln in lines if ln != line and not ln.startswith("ok ")]
    if kind not in ("A", "MX"):
        assert others == [], "\n".join(lines)


def set_txt(world: World, name: str, *values: str) -> None:
    world.dns.set(name, "TXT", list(values))


def test_mx_elsewhere(world: World, capsys: pytest.CaptureFixture[str]) -> None:
    world.dns.set("example.org", "MX", ["10 mx.elsewhere.net."])
    code, lines = run_check(world.cfg, capsys)
    assert code == 1
    assert by_kind(lines, "MX") == [
        f"wrong   MX        example.org: MX is 10 mx.elsewhere.net, not {HOST};"
        f" replace it: publish MX 10 {HOST}."
    ]


def test_mx_other_host_preferred(world: World, capsys: pytest.CaptureFixture[str]) -> None:
    world.dns.add("example.org", "MX", "5 backup.example.net.")
    code, lines = run_check(world.cfg, capsys)
    assert code == 1 and "5 backup.example.net is preferred" in by_kind(lines, "MX")[0]


def test_spf_without_our_ip(world: World, capsys: pytest.CaptureFixture[str]) -> None:
    set_txt(world, "example.org", "v=spf1 -all")
    code, lines = run_check(world.cfg, capsys)
    assert code == 1
    assert by_kind(lines, "SPF", "example.org:")[0] == (
        f'wrong   SPF       example.org: "v=spf1 -all" does not allow {IP} (fail); use "v=spf1 mx ~all"'
    )


def test_spf_with_eleven_lookups(world: World, capsys: pytest.CaptureFixture[str]) -> None:
    # ip4: first, so pyspf passes at once for our address: only the static audit (which
    # walks the whole record, as a receiver checking another address would) sees it.
    hosts = [f"h{i}.example.org" for i in range(11)]
    for h in hosts:
        world.dns.add(h, "A", "192.0.2.1")
    set_txt(world, "example.org", f"v=spf1 ip4:{IP} " + " ".join(f"a:{h}" for h in hosts) + " -all")
    code, lines = run_check(world.cfg, capsys)
    assert code == 1
    line = by_kind(lines, "SPF", "example.org:")[0]
    assert line.startswith("wrong   SPF       example.org:"), line
    assert "11/10" in line and "limit is 10" in line, line
    # checkdmarc asked *our* server (with its port) about the hosts, not the system
    # resolver (it stops counting at the one over the limit, which it need not resolve).
    assert all(world.dns.count(h, "A") == 1 for h in hosts[:10])


def test_two_spf_records(world: World, capsys: pytest.CaptureFixture[str]) -> None:
    set_txt(world, "example.org", "v=spf1 mx ~all", "v=spf1 a ~all")
    code, lines = run_check(world.cfg, capsys)
    assert code == 1 and "2 v=spf1 records" in by_kind(lines, "SPF", "example.org:")[0]


def test_dkim_key_different(world: World, capsys: pytest.CaptureFixture[str]) -> None:
    rsa = next(k for k in world.keys if k.algorithm == RSA_ALGORITHM)
    set_txt(world, rsa.dns_name, dns_txt_for(generate_private_key(RSA_ALGORITHM)))
    code, lines = run_check(world.cfg, capsys)
    assert code == 1
    line = by_kind(lines, "DKIM", rsa.dns_name)[0]
    assert line.startswith(f"wrong   DKIM      {rsa.dns_name}: publishes a different key")
    assert line.endswith(f'publish TXT "{rsa.dns_txt}"')
    assert next(ln for ln in by_kind(lines, "DKIM") if ln != line).startswith("ok ")  # ed25519 untouched


def test_two_dmarc_records(world: World, capsys: pytest.CaptureFixture[str]) -> None:
    set_txt(world, "_dmarc.example.org", "v=DMARC1; p=none", "v=DMARC1; p=reject")
    code, lines = run_check(world.cfg, capsys)
    assert code == 1
    assert "wrong   DMARC     _dmarc.example.org: 2 DMARC records" in by_kind(lines, "DMARC")[0]


def test_policy_mx_does_not_match(world: World, capsys: pytest.CaptureFixture[str]) -> None:
    world.policy.serve_policy("version: STSv1\r\nmode: enforce\r\nmx: mx.other.net\r\nmax_age: 86400\r\n")
    code, lines = run_check(world.cfg, capsys)
    assert code == 1
    line = by_kind(lines, "MTA-STS")[0]
    assert line.startswith(f"wrong   MTA-STS   example.org: policy mx mx.other.net does not match {HOST}")
    assert f"mx: {HOST}" in line  # the fix: the policy to serve


def test_policy_not_served(world: World, capsys: pytest.CaptureFixture[str]) -> None:
    world.policy.response = HTTPResponse(status=404)
    code, lines = run_check(world.cfg, capsys)
    assert code == 1 and "HTTP status 404" in by_kind(lines, "MTA-STS")[0]


def test_policy_certificate_not_trusted(
    world: World, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    other = TestCA(tmp_path / "other-ca")  # the config trusts only the first CA
    world.policy.ctx.load_cert_chain(*map(str, other.issue("mta-sts.example.org")))
    code, lines = run_check(world.cfg, capsys)
    assert code == 1 and "CERTIFICATE_VERIFY_FAILED" in by_kind(lines, "MTA-STS")[0]


def test_ptr_mismatch(world: World, capsys: pytest.CaptureFixture[str]) -> None:
    world.dns.remove("2.0.0.127.in-addr.arpa", "PTR")
    world.dns.add_ptr(IP, "host-2.isp.example.net.")
    code, lines = run_check(world.cfg, capsys)
    assert code == 1
    assert by_kind(lines, "PTR")[0] == (
        f"wrong   PTR       {IP}: PTR is host-2.isp.example.net, not {HOST}; ask your hosting provider to set"
        f" the reverse DNS of {IP} to {HOST}"
    )


def test_host_address_wrong(world: World, capsys: pytest.CaptureFixture[str]) -> None:
    world.dns.set(HOST, "A", ["127.0.0.9"])
    code, lines = run_check(world.cfg, capsys)
    assert code == 1
    assert by_kind(lines, "A")[0].startswith(f"wrong   A         {HOST}: publishes 127.0.0.9")
    assert "does not resolve back" in by_kind(lines, "PTR")[0]  # FCrDNS broken too


def test_explicit_ip_is_what_is_compared(world: World, capsys: pytest.CaptureFixture[str]) -> None:
    code, lines = run_check(world.cfg, capsys, "--ip", "127.0.0.3", "--ip", "::1")
    assert code == 1
    assert "missing: 127.0.0.3" in by_kind(lines, "A")[0]
    assert by_kind(lines, "AAAA")[0].startswith(f"missing AAAA      {HOST}: publish AAAA ::1")


@pytest.mark.parametrize(("name", "kinds"), [
    ("_dmarc.example.org", {"DMARC"}),
    ("example.org", {"MX", "SPF"}),
    (HOST, {"A", "SPF"}),
    ("mta-sts.example.org", {"MTA-STS"}),
])
def test_servfail_is_error(
    world: World, capsys: pytest.CaptureFixture[str], name: str, kinds: set[str]
) -> None:
    world.dns.servfail(name)
    code, lines = run_check(world.cfg, capsys)
    assert code == 1
    errors = [ln for ln in lines if ln.startswith("error ")]
    assert {ln[8:18].strip() for ln in errors} >= kinds, "\n".join(lines)
    assert all("DNS did not answer" in ln for ln in errors)
    assert not [ln for ln in lines if ln.startswith(("missing", "wrong"))], "\n".join(lines)


# ---------------------------------------------------------------------------- the real CLI


def test_real_cli(world: World) -> None:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    started = time.monotonic()
    proc = subprocess.run(
        [sys.executable, "-m", "mailserver.cli", "dns", "check", "-c", str(world.config_path)],
        capture_output=True, text=True, env=env, timeout=60, cwd=ROOT,
    )
    elapsed = time.monotonic() - started
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert proc.stderr == ""
    assert f"ok      MX        example.org -> {HOST}" in proc.stdout.splitlines()
    print(f"full check through the CLI: {elapsed:.2f} s")  # shown with -s

    world.dns.remove("_smtp._tls.example.org", "TXT")
    proc = subprocess.run(
        [sys.executable, "-m", "mailserver.cli", "dns", "check", "example.org", "--json", "-c",
         str(world.config_path)],
        capture_output=True, text=True, env=env, timeout=60, cwd=ROOT,
    )
    assert proc.returncode == 1
    bad = [i for i in json.loads(proc.stdout) if i["status"] != "ok"]
    assert [(i["kind"], i["status"]) for i in bad] == [("TLSRPT", "missing")]


def test_plain_dns_still_rejects_two_domains(world: World) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "mailserver.cli", "dns", "example.org", "example.net",
         "-c", str(world.config_path)],
        capture_output=True, text=True, env={**os.environ, "PYTHONPATH": str(ROOT)}, timeout=60, cwd=ROOT,
    )
    assert proc.returncode == 2
    assert proc.stderr == "pymaild: unrecognized arguments: example.net (see pymaild --help)\n"
