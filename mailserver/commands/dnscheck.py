"""``pymaild dns check``: compare what live DNS publishes with what pymaild needs.

Two layers, so the judging can be tested exhaustively without a network:

* ``judge_*`` functions are pure: given what was expected and what DNS answered, they
  return one ``CheckResult`` (``ok`` / ``missing`` / ``wrong`` / ``warn``) whose ``fix``
  says in one line what to publish.
* ``check_*`` coroutines do the lookups through our ``Resolver`` (so ``[dns]
  nameservers`` applies, and tests only ever ask the loopback server), then call the
  judges. A ``DNSTempError`` anywhere in one check turns that check into ``error``
  ("DNS did not answer"): we cannot tell "missing" from "not answered", and saying
  "missing" would send the operator to publish a record that may well be there.

What each part reuses rather than re-implements:

* SPF evaluation: ``pipeline.spf.check_spf`` (pyspf over our Resolver) answers "would
  mail from this host's address pass SPF for the domain?", exactly as a receiver asks.
* SPF syntax and the 10-lookup limit: checkdmarc's ``parse_spf_record``, which counts
  lookups statically over the whole include tree (pyspf stops at the first match, so
  a record that passes for us can still break for a receiver that walks further).
  checkdmarc takes ``dns.nameserver.Do53Nameserver`` objects, which carry a port, so
  it asks the same nameservers as our Resolver (the loopback server in tests). It is
  imported lazily: 0.3-0.5 s and ~50 MiB, see library-notes.
* DMARC syntax: ``pipeline.dmarc.parse_dmarc_record`` (what our receiver accepts).
* MTA-STS: ``delivery.mtasts`` (``parse_txt``, ``MTASTS.fetch``): the very code that
  enforces policies when we send. checkdmarc's MTA-STS fetch goes through httpx with the
  system resolver to port 443, which can be pointed neither at our nameservers nor at
  ``delivery.mta_sts_port``, so it is not used.
* TLS-RPT syntax: checkdmarc's pure ``parse_smtp_tls_reporting_record``.
* The fixes: ``dns.records.expected_records``, so ``pymaild dns`` and the check never
  disagree about what to publish.
"""

from __future__ import annotations

import asyncio
import json
import re
import warnings
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Literal

from mailserver.config import Config
from mailserver.delivery.mtasts import MTASTS, Policy, PolicyError, parse_txt
from mailserver.dkim_keys import DKIMKey
from mailserver.dns.records import Record, expected_records, mta_sts_policy, rdata_text, served_families
from mailserver.dns.resolver import DNSTempError, Resolver, parse_nameserver
from mailserver.pipeline.dmarc import DMARCRecordError, is_dmarc_record, parse_dmarc_record
from mailserver.pipeline.spf import check_spf

# checkdmarc imports dnspython's DNSSEC algorithms, whose DSA module touches names that
# cryptography >= 51 marks deprecated: four CryptographyDeprecationWarnings on stderr of
# every `pymaild dns check`, about code we never run (we validate no DNSSEC here). Only
# that warning from that module is silenced; set once at import, on the main thread
# (warnings filters are process-global, and the SPF audit imports checkdmarc in a thread).
warnings.filterwarnings("ignore", message="DSA is deprecated", module=r"dns\.dnssecalgs\.")

Status = Literal["ok", "missing", "wrong", "warn", "error"]
FAILING: frozenset[str] = frozenset({"missing", "wrong", "error"})  # warn does not fail
SPF_LOOKUP_LIMIT = 10  # RFC 7208 4.6.4

_SPF = re.compile(r"v=spf1(\s|$)", re.IGNORECASE)
_TLSRPT = re.compile(r"v=TLSRPTv1\s*(;|$)")  # RFC 8460 3: case-sensitive
_STS = re.compile(r"v=STSv1\s*(;|$)")


@dataclass(frozen=True, slots=True)
class CheckResult:
    kind: str  # "MX", "A", "AAAA", "PTR", "SPF", "DKIM", "DMARC", "MTA-STS", "TLSRPT"
    name: str  # the DNS name looked at (an address for PTR), without trailing dot
    status: Status
    detail: str = ""  # what was found, or why it is wrong
    fix: str = ""  # one line: what to publish or change

    @property
    def failing(self) -> bool:
        return self.status in FAILING

    def line(self) -> str:
        text = "; ".join(p for p in (self.detail, self.fix) if p)
        # "example.org -> mx.example.org" reads better than "example.org: -> ...".
        sep = " " if text.startswith("->") else ": "
        return f"{self.status:<8}{self.kind:<10}{self.name}{sep + text if text else ''}"


# ---------------------------------------------------------------------------- output


def render_text(results: Sequence[CheckResult]) -> str:
    return "".join(r.line() + "\n" for r in results)


def render_json(results: Sequence[CheckResult]) -> str:
    return json.dumps([asdict(r) for r in results], indent=2) + "\n"


def exit_code(results: Sequence[CheckResult]) -> int:
    """0 when nothing is missing, wrong or unanswered (``warn`` lines do not fail)."""
    return 1 if any(r.failing for r in results) else 0


# ---------------------------------------------------------------------------- fixes


def _publish(record: Record | None) -> str:
    """The "publish ..." fix for an expected record (TXT quoted, in one piece)."""
    if record is None:
        return ""
    value = f'"{record.value}"' if record.type == "TXT" else rdata_text(record)
    return f"publish {record.type} {value}"


def _quoted(text: str, limit: int = 120) -> str:
    # Found values come from DNS, i.e. from anyone: shorten and keep them on one line.
    text = text.replace("\n", " ").replace("\r", " ")
    return '"' + (text if len(text) <= limit else text[: limit - 3] + "...") + '"'


def _bare(name: str) -> str:
    return name.rstrip(".").lower()


# ---------------------------------------------------------------------------- pure judges


def judge_mx(domain: str, hostname: str, mx: Sequence[tuple[int, str]] | None,
             expected: Record | None) -> CheckResult:
    """Our host must be an MX, and no other host may be preferred (lower value) to it:
    senders try the lowest value first, so mail would not come here. Others at an equal
    or higher value are backups, which is the operator's choice."""
    host = _bare(hostname)
    fix = _publish(expected)
    if not mx:
        return CheckResult("MX", domain, "missing", "no MX record", fix)
    pairs = [(pref, _bare(name)) for pref, name in mx]
    if any(name in ("", ".") for _, name in pairs):
        return CheckResult("MX", domain, "wrong", "null MX (RFC 7505): the domain refuses all mail",
                           "replace it: " + fix)
    ours = [pref for pref, name in pairs if name == host]
    shown = ", ".join(f"{p} {n}" for p, n in sorted(pairs))
    if not ours:
        return CheckResult("MX", domain, "wrong", f"MX is {shown}, not {host}", "replace it: " + fix)
    preferred = sorted((p, n) for p, n in pairs if n != host and p < min(ours))
    if preferred:
        others = ", ".join(f"{p} {n}" for p, n in preferred)
        return CheckResult("MX", domain, "wrong", f"{others} is preferred to {min(ours)} {host}",
                           f"give {host} the lowest preference value, or remove the others")
    backups = [n for p, n in pairs if n != host]
    note = f" (backups: {', '.join(backups)})" if backups else ""
    return CheckResult("MX", domain, "ok", f"-> {host}{note}")


def judge_addresses(host: str, rtype: str, expected: Sequence[str], found: Sequence[str],
                    expected_record: Record | None, *, required: bool) -> CheckResult | None:
    """A or AAAA of the host name. ``expected`` empty = not known (wildcard listener, no
    --ip): then only what is published is reported. None: nothing to say (no address of
    this family expected nor published, and the family is not ``required``)."""
    exp, got = set(expected), set(found)
    shown = ", ".join(sorted(got))
    if not exp:
        if got:
            return CheckResult(rtype, host, "ok", f"{shown} (published; not compared: pass --ip to check)")
        if required:
            return CheckResult(rtype, host, "missing", f"no {rtype} record",
                               f"publish {rtype} <your server's public address> (or pass --ip)")
        return None
    if not got:
        return CheckResult(rtype, host, "missing", "",
                           "; ".join(f"publish {rtype} {a}" for a in sorted(exp)))
    if got != exp:
        lacking = ", ".join(sorted(exp - got)) or "-"
        extra = ", ".join(sorted(got - exp)) or "-"
        return CheckResult(rtype, host, "wrong", f"publishes {shown} (missing: {lacking}; not ours: {extra})",
                           f"make it exactly {', '.join(sorted(exp))}")
    return CheckResult(rtype, host, "ok", shown)


def judge_ptr(ip: str, hostname: str, ptr_names: Sequence[str], forward: Sequence[str]) -> CheckResult:
    """Forward-confirmed reverse DNS: PTR(ip) == hostname and hostname resolves to ip.
    Receivers compare it with the HELO name; only the address owner can set the PTR."""
    host = _bare(hostname)
    ask = f"ask your hosting provider to set the reverse DNS of {ip} to {host}"
    names = [_bare(n) for n in ptr_names]
    if not names:
        return CheckResult("PTR", ip, "missing", "no PTR record", ask)
    if names != [host]:
        return CheckResult("PTR", ip, "wrong", f"PTR is {', '.join(names)}, not {host}", ask)
    if ip not in forward:
        return CheckResult("PTR", ip, "wrong", f"-> {host}, but {host} does not resolve back to {ip}",
                           f"add {ip} to the A/AAAA records of {host}")
    return CheckResult("PTR", ip, "ok", f"-> {host} -> {ip}")


def spf_records(txts: Sequence[str]) -> list[str]:
    """The TXT records that are SPF records (RFC 7208 4.5: "v=spf1" then space or end)."""
    return [t for t in txts if _SPF.match(t.strip())]


def judge_spf(domain: str, records: Sequence[str], audit_error: str | None,
              verdicts: Sequence[tuple[str, str]], expected: Record | None) -> CheckResult:
    """One SPF record, valid and within the lookup limit (``audit_error``: checkdmarc's
    complaint, None if clean), that lets every host address pass. ``verdicts``: (ip,
    pyspf result) for each host address."""
    want = f'"{expected.value}"' if expected else '"v=spf1 mx ~all"'
    if not records:
        return CheckResult("SPF", domain, "missing", "no v=spf1 record", _publish(expected))
    if len(records) > 1:
        return CheckResult("SPF", domain, "wrong",
                           f"{len(records)} v=spf1 records (receivers then fail SPF with permerror)",
                           f"merge them into one, e.g. {want}")
    found = _quoted(records[0])
    if audit_error:
        return CheckResult("SPF", domain, "wrong", f"{found}: {audit_error}", f"use {want}")
    if not verdicts:
        return CheckResult("SPF", domain, "warn", f"{found}: no address of this host known to test it with",
                           "pass --ip ADDRESS")
    temp = [ip for ip, result in verdicts if result == "temperror"]
    if temp:
        return CheckResult("SPF", domain, "error",
                           f"{found}: DNS did not answer while evaluating it for {', '.join(temp)}", "retry")
    perm = [ip for ip, result in verdicts if result == "permerror"]
    if perm:
        return CheckResult("SPF", domain, "wrong", f"{found}: permerror evaluating it", f"use {want}")
    denied = [f"{ip} ({result})" for ip, result in verdicts if result != "pass"]
    if denied:
        return CheckResult("SPF", domain, "wrong", f"{found} does not allow {', '.join(denied)}",
                           f"use {want}")
    return CheckResult("SPF", domain, "ok", f"{found} allows {', '.join(ip for ip, _ in verdicts)}")


def dkim_tags(txt: str) -> dict[str, str]:
    """Tag=value pairs of a DKIM key record (RFC 6376 3.2), values with all whitespace
    removed (FWS is allowed inside base64; DNS web forms insert it). Tag names are
    case-sensitive (3.2), so "P=" is not a key: left as is for the judge to reject."""
    tags: dict[str, str] = {}
    for part in txt.split(";"):
        name, eq, value = part.partition("=")
        if eq:
            tags.setdefault(name.strip(), re.sub(r"\s+", "", value))
    return tags


def judge_dkim(name: str, expected_txt: str, found: Sequence[str]) -> CheckResult:
    """The published key must be ours: same k= (default rsa) and p=, whatever the tag
    order, spacing, or how the value was split into strings."""
    fix = f'publish TXT "{expected_txt}"'
    # The name is dedicated to the key (RFC 6376 3.6.2.1): any TXT there is an attempt.
    keys = [t for t in found if t.strip()]
    if not keys:
        return CheckResult("DKIM", name, "missing", "", fix)
    if len(keys) > 1:
        return CheckResult("DKIM", name, "wrong", f"{len(keys)} key records (receivers pick one at random)",
                           "keep only: " + fix)
    want, got = dkim_tags(expected_txt), dkim_tags(keys[0])
    if '"' in got.get("p", ""):
        # Pasting the zone-file form ("..." "...") into a web form leaves the quotes in.
        return CheckResult("DKIM", name, "wrong", "p= contains quote characters (pasted with quotes?)",
                           "publish the value without quotes: " + fix)
    if "p" not in got:
        return CheckResult("DKIM", name, "wrong", f"{_quoted(keys[0], 60)} has no p= tag (tag names are"
                           " case-sensitive)", fix)
    if not got["p"]:
        return CheckResult("DKIM", name, "wrong", "p= is empty: the key is revoked", fix)
    if got.get("p") != want.get("p") or got.get("k", "rsa") != want.get("k", "rsa"):
        return CheckResult("DKIM", name, "wrong",
                           f"publishes a different key (k={got.get('k', 'rsa')}, p={got['p'][:12]}...)"
                           " than the local one", fix)
    return CheckResult("DKIM", name, "ok", f"k={want.get('k', 'rsa')} key matches")


def judge_dmarc(name: str, txts: Sequence[str], expected: Record | None) -> CheckResult:
    records = [t for t in txts if is_dmarc_record(t)]
    fix = _publish(expected)
    if not records:
        return CheckResult("DMARC", name, "missing", "", fix)
    if len(records) > 1:
        # RFC 7489 6.6.3: more than one record -> no policy at all.
        return CheckResult("DMARC", name, "wrong", f"{len(records)} DMARC records: receivers ignore them all",
                           "keep one: " + fix)
    try:
        rec = parse_dmarc_record(records[0])
    except DMARCRecordError as exc:
        return CheckResult("DMARC", name, "wrong", f"{_quoted(records[0])}: {exc}", fix)
    inferred = " (p= missing or invalid: taken as none)" if rec.p_inferred else ""
    reports = f", reports to {', '.join(rec.rua)}" if rec.rua else ", no rua (no reports)"
    return CheckResult("DMARC", name, "ok", f"p={rec.p}{inferred}{reports}")


def judge_mta_sts_txt(
    name: str, txts: Sequence[str], expected: Record | None
) -> tuple[CheckResult | None, str]:
    """(a failing result or None, the policy id). RFC 8461 3.1: several STSv1 records or
    an invalid one mean "no policy" to senders."""
    records = [t for t in txts if _STS.match(t)]
    fix = _publish(expected)
    if not records:
        return CheckResult("MTA-STS", name, "missing", "", fix), ""
    if len(records) > 1:
        return CheckResult("MTA-STS", name, "wrong", f"{len(records)} v=STSv1 records: senders ignore them",
                           "keep one: " + fix), ""
    policy_id = parse_txt(records)
    if policy_id is None:
        return CheckResult("MTA-STS", name, "wrong",
                           f"{_quoted(records[0])}: no valid id= (1-32 letters/digits)", fix), ""
    return None, policy_id


def judge_mta_sts_policy(domain: str, policy_id: str, policy: Policy | None, error: str,
                         hostname: str, policy_text: str) -> CheckResult:
    url = f"https://mta-sts.{domain}/.well-known/mta-sts.txt"
    one_line = policy_text.strip().replace("\r\n", "; ")
    if policy is None:
        return CheckResult("MTA-STS", domain, "wrong", f"id={policy_id}, but {url}: {error}",
                           f"serve {url} (text/plain, certificate for mta-sts.{domain}): {one_line}")
    if policy.mode != "none" and not policy.matches(hostname):
        effect = "refuse to deliver" if policy.mode == "enforce" else "report failures"
        return CheckResult("MTA-STS", domain, "wrong",
                           f"policy mx {', '.join(policy.mx_patterns)} does not match {_bare(hostname)}"
                           f" (mode {policy.mode}: senders {effect})",
                           f"serve: {one_line}")
    status: Status = "warn" if policy.mode == "none" else "ok"
    return CheckResult("MTA-STS", domain, status,
                       f"id={policy_id}, mode {policy.mode}, mx {', '.join(policy.mx_patterns) or '-'},"
                       f" max_age {policy.max_age}")


def judge_tlsrpt(name: str, txts: Sequence[str], expected: Record | None) -> CheckResult:
    records = [t for t in txts if _TLSRPT.match(t)]
    fix = _publish(expected)
    if not records:
        return CheckResult("TLSRPT", name, "missing", "", fix)
    if len(records) > 1:
        # RFC 8460 3: several records -> no reporting.
        return CheckResult("TLSRPT", name, "wrong", f"{len(records)} v=TLSRPTv1 records", "keep one: " + fix)
    from checkdmarc.smtp_tls_reporting import SMTPTLSReportingError, parse_smtp_tls_reporting_record

    try:
        parsed = parse_smtp_tls_reporting_record(records[0])
    except SMTPTLSReportingError as exc:
        return CheckResult("TLSRPT", name, "wrong", f"{_quoted(records[0])}: {exc}", fix)
    rua = parsed["tags"].get("rua", {}).get("value", [])
    return CheckResult("TLSRPT", name, "ok", f"reports to {', '.join(rua)}")


# ---------------------------------------------------------------------------- lookups


@dataclass
class Context:
    cfg: Config
    resolver: Resolver
    keys: Sequence[DKIMKey]
    ipv4: Sequence[str]  # expected addresses of the host (empty: unknown)
    ipv6: Sequence[str]
    expected: dict[tuple[str, str], Record]  # (bare name, type) -> the record to publish
    mta_sts: MTASTS
    checkdmarc_nameservers: list[Any] | None  # Do53Nameserver objects; None = system

    def want(self, name: str, rtype: str) -> Record | None:
        return self.expected.get((_bare(name), rtype))


def _error(kind: str, name: str, exc: Exception) -> CheckResult:
    return CheckResult(kind, name, "error", f"DNS did not answer ({exc})",
                       "retry; if it persists, check the zone's name servers and [dns] nameservers")


async def _guard(kind: str, name: str, work: Awaitable[list[CheckResult]]) -> list[CheckResult]:
    try:
        return await work
    except DNSTempError as exc:
        return [_error(kind, name, exc)]


async def check_host(ctx: Context) -> tuple[list[CheckResult], list[str]]:
    """A/AAAA of the host name and FCrDNS of each of its addresses. Also returns the
    addresses to test SPF with: the expected ones, else what is published."""
    host = _bare(ctx.cfg.hostname)
    families = served_families(ctx.cfg)
    try:
        found4, found6 = await asyncio.gather(ctx.resolver.a(host), ctx.resolver.aaaa(host))
    except DNSTempError as exc:
        return [_error("A", host, exc)], [*ctx.ipv4, *ctx.ipv6]
    results = [
        r for r in (
            judge_addresses(host, "A", ctx.ipv4, found4, ctx.want(host, "A"),
                            required=4 in families and not ctx.ipv6 and not found6),
            judge_addresses(host, "AAAA", ctx.ipv6, found6, ctx.want(host, "AAAA"), required=False),
        ) if r is not None
    ]
    addresses = [*ctx.ipv4, *ctx.ipv6] or [*found4, *found6]
    forward = [*found4, *found6]

    async def ptr(ip: str) -> list[CheckResult]:
        return [judge_ptr(ip, host, await ctx.resolver.ptr(ip), forward)]

    for group in await asyncio.gather(*(_guard("PTR", ip, ptr(ip)) for ip in addresses)):
        results += group
    if not addresses:
        results.append(CheckResult("PTR", host, "warn", "no address known or published: not checked",
                                   "pass --ip ADDRESS"))
    return results, addresses


async def check_mx(ctx: Context, domain: str) -> list[CheckResult]:
    return [judge_mx(domain, ctx.cfg.hostname, await ctx.resolver.mx(domain), ctx.want(domain, "MX"))]


def _spf_audit(record: str, domain: str, nameservers: list[Any] | None) -> str | None:
    """checkdmarc's static audit (syntax, include tree, lookup limits); in a thread."""
    import checkdmarc.utils
    from checkdmarc.spf import SPFError, SPFTooManyDNSLookups, parse_spf_record

    # Its module-level DNS cache outlives one check: a fixed record must show as fixed
    # on the next run within the same process (tests run many against changing zones).
    checkdmarc.utils.DNS_CACHE.clear()
    try:
        parse_spf_record(record, domain, nameservers=nameservers, timeout=5.0, retries=1)
    except SPFTooManyDNSLookups as exc:
        return f"{exc} (the limit is {SPF_LOOKUP_LIMIT}: receivers fail it with permerror)"
    except SPFError as exc:
        return str(exc)
    except checkdmarc.utils.DNSException as exc:
        raise DNSTempError(str(exc)) from exc
    return None


async def check_spf_domain(
    ctx: Context, domain: str, addresses: Sequence[str], *, helo: bool = False
) -> list[CheckResult]:
    """SPF of a local domain (MAIL FROM postmaster@domain), or with ``helo`` of the host
    name itself (what receivers check for bounces, which have an empty MAIL FROM)."""
    records = spf_records(await ctx.resolver.txt(domain))
    audit = None
    if len(records) == 1:
        audit = await asyncio.to_thread(_spf_audit, records[0], domain, ctx.checkdmarc_nameservers)
    verdicts: list[tuple[str, str]] = []
    if len(records) == 1 and not audit:
        mail_from = "" if helo else f"postmaster@{domain}"
        outcomes = await asyncio.gather(*(check_spf(ctx.resolver, ip, mail_from, ctx.cfg.hostname, timeout=10)
                                          for ip in addresses))
        verdicts = [(ip, o.result) for ip, o in zip(addresses, outcomes, strict=True)]
    return [judge_spf(domain, records, audit, verdicts, ctx.want(domain, "TXT"))]


async def check_dkim(ctx: Context, domain: str) -> list[CheckResult]:
    keys = [k for k in ctx.keys if k.domain == domain]
    if not keys:
        name = f"{ctx.cfg.dkim.selector}._domainkey.{domain}"
        return [CheckResult("DKIM", name, "missing", "no local key in the state directory",
                            "run `pymaild dns` (creates it and prints the record), then publish it")]

    async def one(key: DKIMKey) -> list[CheckResult]:
        return [judge_dkim(key.dns_name, key.dns_txt, await ctx.resolver.txt(key.dns_name))]

    groups = await asyncio.gather(*(_guard("DKIM", k.dns_name, one(k)) for k in keys))
    return [r for g in groups for r in g]


async def check_dmarc(ctx: Context, domain: str) -> list[CheckResult]:
    name = f"_dmarc.{domain}"
    return [judge_dmarc(name, await ctx.resolver.txt(name), ctx.want(name, "TXT"))]


async def check_mta_sts(ctx: Context, domain: str) -> list[CheckResult]:
    name = f"_mta-sts.{domain}"
    failed, policy_id = judge_mta_sts_txt(name, await ctx.resolver.txt(name), ctx.want(name, "TXT"))
    if failed is not None:
        return [failed]
    policy, error = None, ""
    try:
        policy = await ctx.mta_sts.fetch(domain, policy_id)
    except PolicyError as exc:
        if isinstance(exc.__cause__, DNSTempError):
            raise exc.__cause__ from exc  # mta-sts.<domain> unanswered: error, not wrong
        error = str(exc)
    return [judge_mta_sts_policy(domain, policy_id, policy, error, ctx.cfg.hostname, mta_sts_policy(ctx.cfg))]


async def check_tlsrpt(ctx: Context, domain: str) -> list[CheckResult]:
    name = f"_smtp._tls.{domain}"
    return [judge_tlsrpt(name, await ctx.resolver.txt(name), ctx.want(name, "TXT"))]


def checkdmarc_nameservers(nameservers: Sequence[str]) -> list[Any] | None:
    """Our "host:port" strings as dnspython Nameserver objects, the only form in which
    checkdmarc accepts a port. Empty -> None: the system resolver, as our Resolver does."""
    if not nameservers:
        return None
    import dns.nameserver

    return [dns.nameserver.Do53Nameserver(*parse_nameserver(ns)) for ns in nameservers]


async def run_checks(
    cfg: Config,
    keys: Sequence[DKIMKey],
    domains: Sequence[str],
    ipv4: Sequence[str],
    ipv6: Sequence[str],
    *,
    resolver: Resolver | None = None,
) -> list[CheckResult]:
    """Every check for ``domains``: the host's own records first, then per domain."""
    resolver = resolver or Resolver(list(cfg.dns.nameservers) or None, lifetime=5.0, attempt_timeout=2.0)
    expected = {(_bare(r.name), r.type): r for r in expected_records(cfg, keys, ipv4=ipv4, ipv6=ipv6)}
    mta_sts = MTASTS(
        resolver,
        cache_dir=Path(cfg.state_dir) / "mta-sts",  # unused: fetch() never touches the cache
        ca_file=cfg.delivery.ca_file or None,
        https_port=cfg.delivery.mta_sts_port,
        fetch_timeout=10,
    )
    # Imported here, once, before any check runs: the SPF audit runs in a worker thread
    # while the TLS-RPT judge runs on the loop, and two threads importing the package
    # for the first time at once can fail (KeyError: 'checkdmarc', seen in tests).
    import checkdmarc.smtp_tls_reporting
    import checkdmarc.spf  # noqa: F401

    ctx = Context(cfg, resolver, keys, ipv4, ipv6, expected, mta_sts,
                  checkdmarc_nameservers(cfg.dns.nameservers))
    results, addresses = await check_host(ctx)
    per_domain: list[Callable[[Context, str], Awaitable[list[CheckResult]]]] = [
        check_mx,
        lambda c, d: check_spf_domain(c, d, addresses),
        check_dkim, check_dmarc, check_mta_sts, check_tlsrpt,
    ]
    kinds = ["MX", "SPF", "DKIM", "DMARC", "MTA-STS", "TLSRPT"]
    jobs = [_guard(kind, d, fn(ctx, d)) for d in domains for kind, fn in zip(kinds, per_domain, strict=True)]
    if _bare(cfg.hostname) not in cfg.local_domains:
        jobs.append(_guard("SPF", _bare(cfg.hostname),
                           check_spf_domain(ctx, _bare(cfg.hostname), addresses, helo=True)))
    for group in await asyncio.gather(*jobs):
        results += group
    return results
