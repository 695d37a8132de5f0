"""SPF (RFC 7208) check of the SMTP client against the MAIL FROM or HELO domain.

The evaluation itself is pyspf's (mature, passes the RFC 7208 suite). pyspf does
synchronous DNS through a module-level function ``spf.DNSLookup``; we replace that
function once, with a dispatcher that sends each lookup to the ``Resolver`` bound to
the calling thread. The check runs in a worker thread that binds our resolver, so:

* the event loop never blocks (the thread waits, the loop does the DNS),
* pyspf shares the daemon's cache and configured nameservers,
* pyspf can never reach the system resolver: a thread with no resolver bound gets a
  TempError instead of a lookup.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import ipaddress
import re
import threading
import warnings
from dataclasses import dataclass
from typing import Any, Literal, cast, get_args

from dns.rdtypes.IN.A import A
from dns.rdtypes.IN.AAAA import AAAA
from dns.rdtypes.mxbase import MXBase
from dns.rdtypes.nsbase import NSBase
from dns.rdtypes.txtbase import TXTBase

from mailserver.dns.resolver import DNSError, DNSTempError, Resolver

with warnings.catch_warnings():
    # pyspf 2.0.14 has invalid escape sequences in regex literals (SyntaxWarning on 3.12,
    # DeprecationWarning on 3.11) and imports a deprecated dnspython API.
    warnings.simplefilter("ignore", SyntaxWarning)
    warnings.simplefilter("ignore", DeprecationWarning)
    import spf as pyspf

SPFResultCode = Literal["pass", "fail", "softfail", "neutral", "none", "temperror", "permerror"]
_KNOWN_RESULTS: frozenset[str] = frozenset(get_args(SPFResultCode))

# pyspf checks wait on the event loop for DNS, they do not compute: a pool of its own
# keeps them from starving the default executor (and DKIM crypto) under load.
_POOL = concurrent.futures.ThreadPoolExecutor(max_workers=32, thread_name_prefix="spf")

# RFC 7208 §4.3 / RFC 1035: a usable HELO identity is a multi-label domain name.
_HELO_DOMAIN = re.compile(
    r"^(?=.{1,253}\.?$)(?:[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?\.)+[a-z0-9-]{1,63}\.?$",
    re.IGNORECASE,
)


@dataclass(frozen=True, slots=True)
class SPFResult:
    """Outcome of one SPF check, with what RFC 8601 and DMARC need from it."""

    result: SPFResultCode
    domain: str  # the domain whose policy was checked ("" if none could be)
    identity: Literal["mailfrom", "helo"]  # which identity: RFC 7208 §2.4 / §2.3
    sender: str  # the checked identity's value: MAIL FROM address, or the HELO name
    explanation: str = ""  # pyspf's explanation or the error text; attacker-influenced

    @property
    def ar_property(self) -> tuple[str, str]:
        """("smtp.mailfrom", "a@b") or ("smtp.helo", "host"): the RFC 8601 property."""
        return ("smtp." + self.identity, self.sender)


# ---------------------------------------------------------------- DNS dispatch

_bound = threading.local()


def _dns_lookup(name: str, qtype: str, strict: Any = True, timeout: float = 20) -> list[Any]:
    """Replacement for ``spf.DNSLookup``: same signature, answers from our Resolver.

    pyspf expects [((name, qtype), data), ...] with data an address string (A/AAAA),
    (preference, exchange) (MX), a name string (PTR) or a tuple of bytes (TXT/SPF).
    CNAMEs are already followed by the resolver, so every answer is keyed by ``name``.
    """
    resolver: Resolver | None = getattr(_bound, "resolver", None)
    loop: asyncio.AbstractEventLoop | None = getattr(_bound, "loop", None)
    if resolver is None or loop is None:
        # Deliberately not the system resolver: nothing in pymaild may use it silently.
        raise pyspf.TempError("DNS: no resolver bound to this thread")
    try:
        answer = resolver.query_from_thread(name, qtype, timeout, loop=loop)
    except DNSTempError as exc:
        raise pyspf.TempError(f"DNS {exc}") from exc
    except DNSError as exc:
        raise pyspf.TempError(f"DNS {exc}") from exc
    key = (name, qtype)
    out: list[Any] = []
    # By record class (what dnspython gives for each type): anything else in the answer
    # is not what pyspf asked for and is left out.
    for rdata in answer.records:
        if isinstance(rdata, A | AAAA):
            out.append((key, rdata.address))
        elif isinstance(rdata, MXBase):
            out.append((key, (rdata.preference, rdata.exchange.to_text(omit_final_dot=True))))
        elif isinstance(rdata, NSBase):  # PTR
            out.append((key, rdata.target.to_text(omit_final_dot=True)))
        elif isinstance(rdata, TXTBase):  # TXT and SPF
            out.append((key, tuple(rdata.strings)))
    return out


# Module-level, once: pyspf looks the function up as a global on every query.
pyspf.DNSLookup = _dns_lookup


def _run_bound(
    resolver: Resolver,
    loop: asyncio.AbstractEventLoop,
    ip: str,
    sender: str,
    helo: str,
    timeout: float,
) -> tuple[str, str]:
    """In a worker thread: bind the resolver, run pyspf, unbind."""
    _bound.resolver, _bound.loop = resolver, loop
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            # querytime > 0 makes ``timeout`` a budget for the whole check (RFC 7208
            # §4.6.4 suggests 20 s), not per lookup. strict=True: RFC processing limits
            # (10 DNS mechanisms, 2 void lookups) are permerrors.
            q = pyspf.query(i=ip, s=sender, h=helo, strict=True, timeout=timeout, querytime=timeout)
            result, _code, explanation = q.check()
            return result, explanation
    except pyspf.PermError as exc:  # e.g. unparsable client IP, raised by the constructor
        return "permerror", f"SPF Permanent Error: {exc}"
    finally:
        _bound.resolver = _bound.loop = None


def _domain_of(address: str) -> str:
    _local, at, domain = address.rpartition("@")
    return domain.strip().rstrip(".").lower() if at else ""


def _helo_is_domain(helo: str) -> bool:
    # "[192.0.2.1]" address literals and bare IPs cannot carry an SPF record.
    if not helo or helo.startswith("["):
        return False
    try:
        ipaddress.ip_address(helo)
        return False
    except ValueError:
        return bool(_HELO_DOMAIN.match(helo))


async def check_spf(
    resolver: Resolver, ip: str, mail_from: str, helo: str, *, timeout: float = 20
) -> SPFResult:
    """SPF verdict for client ``ip``: MAIL FROM's domain, or the HELO name for <>.

    Never raises for DNS or syntax trouble: those are the temperror and permerror results.
    """
    if mail_from:
        identity: Literal["mailfrom", "helo"] = "mailfrom"
        sender, domain = mail_from, _domain_of(mail_from)
        if not domain:
            # "MAIL FROM:<user>" without a domain: pyspf would silently use the HELO name.
            return SPFResult("none", "", identity, sender, "MAIL FROM has no domain")
    else:
        # RFC 7208 §2.4: for the null reverse-path check "postmaster@<HELO>".
        identity, sender, domain = "helo", helo, helo.rstrip(".").lower()
        if not _helo_is_domain(helo):
            return SPFResult("none", "", identity, sender, "HELO is not a domain name")
    loop = asyncio.get_running_loop()
    try:
        result, explanation = await asyncio.wait_for(
            loop.run_in_executor(_POOL, _run_bound, resolver, loop, ip, mail_from, helo, timeout),
            # Slack above pyspf's own budget so its clearer temperror normally wins.
            timeout + 1.0,
        )
    except TimeoutError:
        # The thread finishes on its own: every lookup it still makes has a deadline.
        return SPFResult("temperror", domain, identity, sender, "SPF check timed out")
    if result not in _KNOWN_RESULTS:  # "ambiguous" exists only in pyspf's harsh mode
        result = "permerror"
    return SPFResult(cast(SPFResultCode, result), domain, identity, sender, explanation)  # checked above
