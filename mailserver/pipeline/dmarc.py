"""DMARC (RFC 7489) evaluation of a received message: our own, no library does it.

Pure parts, each unit-tested on its own:
  ``parse_dmarc_record``     the TXT record -> DMARCRecord (or DMARCRecordError)
  ``organizational_domain``  public-suffix-list based (RFC 7489 §3.2)
  ``aligned``                relaxed / strict identifier alignment (§3.1)
  ``author_domain``          the RFC5322.From domain of a message (§6.6.1)
  ``evaluate``               record + SPF + DKIM -> DMARCResult, with pct sampling

``check_dmarc`` adds the DNS part: policy discovery at ``_dmarc.<from-domain>``,
then ``_dmarc.<organizational domain>`` (§6.6.3).

Decisions (RFC leaves them to the receiver):
* From header (§6.6.1): the message must have exactly one From field holding exactly
  one mailbox with a domain; otherwise ``author_domain`` raises FromHeaderError and
  the inbound stage treats it as a DMARC permerror with the reject action. Many
  addresses, several From fields and unparsable ones are the classic ways to show the
  reader one author and let the checks see another.
* Record syntax: errors in tags that change the evaluation (pct, adkim, aspf) make the
  record invalid (permerror, no policy applied). A missing or invalid p= (or sp=)
  follows §6.6.3: p=none if the record has a valid rua, else invalid. Errors in the
  reporting-only tags (rua, ruf, fo, rf, ri) just drop that tag: we send no reports,
  and a typo there must not switch off the domain's protection.
* Temporary errors: if nothing aligned passed but an aligned SPF or DKIM check failed
  temporarily, the result is temperror (it might have passed), not fail.
"""

from __future__ import annotations

import asyncio
import functools
import random
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import dns.exception
import dns.name
from publicsuffixlist import PublicSuffixList

from mailserver.dns.resolver import DNSTempError, Resolver
from mailserver.message import (
    FromHeaderError,
    field_spans,
    field_value,
    header_end,
    parse_mailbox_list,
)
from mailserver.pipeline.dkim_verify import DKIMResult
from mailserver.pipeline.spf import SPFResult

Policy = Literal["none", "quarantine", "reject"]
Alignment = Literal["r", "s"]
DMARCResultCode = Literal["pass", "fail", "none", "temperror", "permerror"]

_POLICIES: frozenset[str] = frozenset({"none", "quarantine", "reject"})


class DMARCRecordError(ValueError):
    """A TXT record that starts with v=DMARC1 but cannot be used."""


# ----------------------------------------------------------------- the record


@dataclass(frozen=True, slots=True)
class DMARCRecord:
    p: Policy
    sp: Policy | None = None  # None: subdomains get p
    pct: int = 100
    adkim: Alignment = "r"
    aspf: Alignment = "r"
    rua: tuple[str, ...] = ()
    ruf: tuple[str, ...] = ()
    fo: tuple[str, ...] = ("0",)
    rf: tuple[str, ...] = ("afrf",)
    ri: int = 86400
    p_inferred: bool = False  # p was missing/invalid; p=none taken per §6.6.3

    @property
    def subdomain_policy(self) -> Policy:
        return self.sp or self.p


_VERSION = re.compile(r"^[ \t]*v[ \t]*=[ \t]*DMARC1[ \t]*(;|$)")
_TAG = re.compile(r"[A-Za-z][A-Za-z0-9_]*")
_DIGITS = re.compile(r"[0-9]{1,10}")
_URI = re.compile(r"[A-Za-z][A-Za-z0-9+.\-]*:[^\s,!;]+(![0-9]+[kmgtKMGT]?)?")


def is_dmarc_record(txt: str) -> bool:
    """Does this TXT record claim to be DMARC? (§6.6.3: others are discarded.)
    The version value is case-sensitive (§6.4 ABNF uses %x codes)."""
    return bool(_VERSION.match(txt))


def _uris(value: str) -> tuple[str, ...] | None:
    uris = tuple(u.strip() for u in value.split(","))
    return uris if all(_URI.fullmatch(u) for u in uris) else None


def parse_dmarc_record(txt: str) -> DMARCRecord:
    """Parse a DMARC policy record; raises DMARCRecordError if it cannot be used."""
    if not is_dmarc_record(txt):
        raise DMARCRecordError("not a DMARC1 record (must start with v=DMARC1)")
    tags: dict[str, str] = {}
    for part in txt.split(";"):
        part = part.strip(" \t")
        if not part:
            continue  # "a=b;;" and trailing ";" are common and harmless
        name, eq, value = part.partition("=")
        name, value = name.strip(" \t").lower(), value.strip(" \t")
        if not eq or not _TAG.fullmatch(name):
            raise DMARCRecordError(f"malformed tag {part[:40]!r}")
        if name in tags:
            raise DMARCRecordError(f"tag {name}= appears twice")
        tags[name] = value

    rua = _uris(tags["rua"]) if "rua" in tags else None
    p = tags.get("p", "").lower()
    sp = tags.get("sp", "").lower() if "sp" in tags else None
    p_inferred = False
    if p not in _POLICIES or (sp is not None and sp not in _POLICIES):
        if not rua:
            raise DMARCRecordError("missing or invalid p= (or sp=) and no valid rua=")
        p, sp, p_inferred = "none", None, True

    pct_text = tags.get("pct", "100")
    # ASCII digits only: str.isdigit() also accepts "²", which int() refuses.
    if not _DIGITS.fullmatch(pct_text) or not 0 <= int(pct_text) <= 100:
        raise DMARCRecordError(f"pct={pct_text[:10]!r} is not 0..100")
    alignment: dict[str, str] = {}
    for tag in ("adkim", "aspf"):
        mode = tags.get(tag, "r").lower()
        if mode not in ("r", "s"):
            raise DMARCRecordError(f"{tag}={mode[:10]!r} is not r or s")
        alignment[tag] = mode

    # Reporting-only tags: invalid ones are dropped, see the module docstring.
    ruf = _uris(tags["ruf"]) if "ruf" in tags else None
    fo = tuple(tags.get("fo", "0").replace(" ", "").split(":"))
    if not all(f in ("0", "1", "d", "s") for f in fo):
        fo = ("0",)
    rf = tuple(tags.get("rf", "afrf").replace(" ", "").lower().split(":"))
    ri_text = tags.get("ri", "86400")
    return DMARCRecord(
        p=p,  # type: ignore[arg-type]  # one of _POLICIES, checked above
        sp=sp,  # type: ignore[arg-type]  # one of _POLICIES or None, checked above
        pct=int(pct_text),
        adkim=alignment["adkim"],  # type: ignore[arg-type]  # "r" or "s", checked above
        aspf=alignment["aspf"],  # type: ignore[arg-type]  # "r" or "s", checked above
        rua=rua or (),
        ruf=ruf or (),
        fo=fo,
        rf=rf,
        ri=int(ri_text) if _DIGITS.fullmatch(ri_text) else 86400,
        p_inferred=p_inferred,
    )


# ----------------------------------------------------------------- domains


@functools.cache
def _psl() -> PublicSuffixList:
    # Building the list takes ~0.1 s: once per process, never per message.
    return PublicSuffixList()


def normalize_domain(domain: str) -> str:
    """Lowercase A-label form without the final dot; raises ValueError if invalid."""
    text = domain.strip().rstrip(".")
    if not text:
        raise ValueError("empty domain")
    try:
        name = dns.name.from_text(text.lower(), origin=dns.name.root)
    except (dns.exception.DNSException, UnicodeError) as exc:
        raise ValueError(f"invalid domain {text[:80]!r}") from exc
    return name.to_text(omit_final_dot=True).lower()


def organizational_domain(domain: str) -> str:
    """The registrable domain (public suffix + one label), or the domain itself when it
    is a public suffix or unknown to the list."""
    domain = domain.rstrip(".").lower()
    return _psl().privatesuffix(domain) or domain


def aligned(identifier: str, from_domain: str, mode: Alignment) -> bool:
    """RFC 7489 §3.1: strict = same domain; relaxed = same organizational domain."""
    if not identifier or not from_domain:
        return False
    try:
        a, b = normalize_domain(identifier), normalize_domain(from_domain)
    except ValueError:
        return False
    if mode == "s":
        return a == b
    return organizational_domain(a) == organizational_domain(b)


# ----------------------------------------------------------------- the From header


def author_domain(data: bytes) -> str:
    """The domain of the message's single From address (A-label, lowercase)."""
    spans = field_spans(data, "From", header_end(data))
    if not spans:
        raise FromHeaderError("message has no From header")
    if len(spans) > 1:
        raise FromHeaderError("message has more than one From header")
    addresses = parse_mailbox_list(field_value(data, spans[0]))
    if not addresses:
        raise FromHeaderError("From header has no address")
    if len(addresses) > 1:
        raise FromHeaderError("From header has more than one address")
    _local, at, domain = addresses[0].rpartition("@")
    if not at or not domain.strip():
        raise FromHeaderError("From address has no domain")
    if domain.strip().startswith("["):
        raise FromHeaderError("From address is an address literal")
    try:
        return normalize_domain(domain)
    except ValueError:
        raise FromHeaderError("From address has an invalid domain") from None


# ----------------------------------------------------------------- evaluation


@dataclass(frozen=True, slots=True)
class DMARCResult:
    result: DMARCResultCode
    from_domain: str  # RFC5322.From domain ("" if it could not be determined)
    policy_domain: str = ""  # where the record was found (from or organizational domain)
    record: DMARCRecord | None = None
    policy: Policy = "none"  # what the domain asks for this message: p or sp
    disposition: Policy = "none"  # what applies after pct sampling (fail only)
    spf_aligned: bool = False  # SPF passed for an aligned domain
    dkim_aligned: bool = False  # some DKIM signature passed for an aligned d=
    reason: str = ""


def evaluate(
    from_domain: str,
    record: DMARCRecord,
    policy_domain: str,
    spf: SPFResult | None,
    dkim: Sequence[DKIMResult],
    *,
    rng: Callable[[], float] = random.random,
) -> DMARCResult:
    """Apply a discovered record to the SPF and DKIM outcomes (RFC 7489 §6.6.2, §6.6.4)."""
    # sp= applies when the record came from the organizational domain above us.
    policy = record.subdomain_policy if policy_domain != from_domain else record.p
    spf_ok = bool(spf is not None and spf.result == "pass" and aligned(spf.domain, from_domain, record.aspf))
    dkim_ok = any(d.result == "pass" and aligned(d.domain, from_domain, record.adkim) for d in dkim)
    common: dict[str, Any] = {  # the fields every result below shares (typed in DMARCResult)
        "from_domain": from_domain,
        "policy_domain": policy_domain,
        "record": record,
        "policy": policy,
        "spf_aligned": spf_ok,
        "dkim_aligned": dkim_ok,
    }
    if spf_ok or dkim_ok:
        how = "SPF" if spf_ok else "DKIM"
        return DMARCResult("pass", reason=f"aligned {how} pass", **common)
    maybe = (
        spf is not None and spf.result == "temperror" and aligned(spf.domain, from_domain, record.aspf)
    ) or any(d.result == "temperror" and aligned(d.domain, from_domain, record.adkim) for d in dkim)
    if maybe:
        return DMARCResult(
            "temperror",
            reason="an aligned check failed temporarily",
            **common,
        )
    disposition: Policy = policy
    # pct (§6.6.4): unsampled messages get the next weaker policy.
    if policy != "none" and record.pct < 100 and not rng() * 100 < record.pct:
        disposition = "quarantine" if policy == "reject" else "none"
    return DMARCResult(
        "fail",
        disposition=disposition,
        reason="no aligned SPF or DKIM pass",
        **common,
    )


async def _records_at(resolver: Resolver, domain: str) -> list[str]:
    return [t for t in await resolver.txt(f"_dmarc.{domain}") if is_dmarc_record(t)]


async def discover_policy(
    resolver: Resolver, from_domain: str
) -> tuple[DMARCResultCode | None, DMARCRecord | None, str, str]:
    """(early result or None, record, domain it was found at, reason) per §6.6.3."""
    org = organizational_domain(from_domain)
    for domain in dict.fromkeys((from_domain, org)):
        try:
            found = await _records_at(resolver, domain)
        except DNSTempError as exc:
            return "temperror", None, domain, f"policy lookup failed: {exc}"
        if len(found) > 1:
            return "none", None, domain, f"more than one DMARC record at _dmarc.{domain}"
        if found:
            try:
                return None, parse_dmarc_record(found[0]), domain, ""
            except DMARCRecordError as exc:
                return "permerror", None, domain, f"invalid DMARC record: {exc}"
    return "none", None, "", "no DMARC record"


async def check_dmarc(
    resolver: Resolver,
    from_domain: str,
    spf: SPFResult | None,
    dkim: Sequence[DKIMResult],
    *,
    rng: Callable[[], float] = random.random,
) -> DMARCResult:
    """DMARC result for a message whose From domain is ``from_domain``.

    ``spf`` None means SPF was not checked (it then cannot align). Never raises for
    DNS trouble: that is the temperror result.
    """
    try:
        from_domain = normalize_domain(from_domain)
    except ValueError as exc:
        return DMARCResult("permerror", from_domain, reason=str(exc))
    if _psl.cache_info().currsize == 0:
        await asyncio.to_thread(_psl)  # first use: build the list off the loop
    early, record, policy_domain, reason = await discover_policy(resolver, from_domain)
    if record is None:
        return DMARCResult(early or "none", from_domain, policy_domain, reason=reason)
    return evaluate(from_domain, record, policy_domain, spf, dkim, rng=rng)
