"""For a domain: the hosts to try, in order, with the TLS mode they require.

``mx_route`` looks up the MX records (RFC 5321 5.1: preference order, random among
equals; no MX -> the domain itself; RFC 7505 null MX -> bounce), drops the hosts we must
not use (ourselves and anything after us), and applies the domain's MTA-STS policy
(RFC 8461: only the hosts it names, with a verified certificate). ``host_addresses``
gives a host's IPv6 then IPv4 addresses. The resolver and the MTA-STS cache are the
caller's; nothing here keeps state.

A lookup that fails is a ``DeliveryResult`` with the reply we would have given (DNS
timeout: 451 4.4.3), which the remote delivery hands to every recipient of the domain.
"""

from __future__ import annotations

import asyncio
import logging
import random
import socket
from dataclasses import dataclass
from typing import Literal

from mailserver.delivery.mtasts import MTASTS, Policy
from mailserver.delivery.results import DeliveryResult, perm, temp
from mailserver.dns.resolver import DNSTempError, Resolver

log = logging.getLogger(__name__)

# "verify": STARTTLS (or implicit TLS) required, certificate valid for the host name.
# "testing": MTA-STS testing mode: try "verify", fall back to "opportunistic" and log.
TLSMode = Literal["verify", "testing", "opportunistic", "implicit", "none"]

_MODULE = "routes"  # SMTPReply.module of the failures decided here


@dataclass(frozen=True, slots=True)
class Route:
    """Host names to try, in order, and the TLS every session with them must have."""

    hosts: tuple[str, ...]
    tls: TLSMode


async def mx_route(
    resolver: Resolver, domain: str, *, own_hostname: str, mta_sts: MTASTS | None
) -> Route | DeliveryResult:
    """Where mail for ``domain`` goes, or the failure that stops it going anywhere."""
    try:
        records = await resolver.mx(domain)
    except DNSTempError as exc:
        return temp(451, "4.4.3", f"MX lookup for {domain} failed: {exc}", module=_MODULE)
    if records is None:
        return perm(550, "5.1.2", f"domain {domain} does not exist", module=_MODULE)
    real = [(pref, host) for pref, host in records if host not in (".", "")]
    if records and not real:
        # RFC 7505 null MX: the domain accepts no mail; bounce at once.
        return perm(556, "5.1.10", f"domain {domain} does not accept mail (null MX)", module=_MODULE)
    # No MX: the domain itself is the implicit MX (RFC 5321 §5.1).
    hosts = order(real) if real else [domain]
    own = own_hostname.rstrip(".").lower()
    if own in hosts:
        # We are one of the MX hosts: only better-preference hosts may get it (§5.1).
        hosts = hosts[: hosts.index(own)]
        if not hosts:
            return perm(554, "5.4.6", f"mail for {domain} loops back to myself", module=_MODULE)
    mode: TLSMode = "opportunistic"
    policy = await _policy(mta_sts, domain)
    if policy is not None and policy.mode in ("enforce", "testing"):
        allowed = [h for h in hosts if policy.matches(h)]
        if policy.mode == "testing":
            mode = "testing"
            for h in hosts:
                if h not in allowed:
                    log.warning("MTA-STS testing %s: MX %s not in policy (would not be used)", domain, h)
        else:
            mode = "verify"
            if not allowed:
                return temp(451, "4.7.5", f"no MX of {domain} matches its MTA-STS policy", module=_MODULE)
            hosts = allowed
    return Route(tuple(hosts), mode)


async def _policy(mta_sts: MTASTS | None, domain: str) -> Policy | None:
    """The domain's MTA-STS policy, None without one (or without MTA-STS configured)."""
    if mta_sts is None:
        return None
    try:
        return await mta_sts.policy_for(domain)
    except Exception:  # a bug there must not stop mail: log it loudly, deliver as before
        log.exception("MTA-STS policy lookup for %s failed", domain)
        return None


async def host_addresses(resolver: Resolver, host: str, *, source_address: str | None) -> list[str]:
    """``host``'s IPv6 then IPv4 addresses (an IP literal is its own address), only of
    the family of ``source_address`` when one is set. Raises DNSTempError when both
    lookups failed; an empty list means the host has no usable address."""
    try:
        literal = socket.inet_pton(socket.AF_INET6 if ":" in host else socket.AF_INET, host)
    except OSError:
        literal = None
    if literal is not None:
        addresses = [host]
    else:
        v6, v4 = await asyncio.gather(resolver.aaaa(host), resolver.a(host), return_exceptions=True)
        if isinstance(v6, BaseException) and isinstance(v4, BaseException):
            raise v4 if isinstance(v4, DNSTempError) else DNSTempError(str(v4))
        addresses = (v6 if isinstance(v6, list) else []) + (v4 if isinstance(v4, list) else [])
    if source_address:
        v6_source = ":" in source_address
        addresses = [a for a in addresses if (":" in a) == v6_source]
    return addresses


def order(records: list[tuple[int, str]]) -> list[str]:
    """Host names by preference, shuffled among equal preferences (RFC 5321 §5.1)."""
    by_pref: dict[int, list[str]] = {}
    for pref, host in records:
        by_pref.setdefault(pref, []).append(host.rstrip(".").lower())
    ordered: list[str] = []
    for pref in sorted(by_pref):
        hosts = by_pref[pref]
        random.shuffle(hosts)
        ordered.extend(h for h in hosts if h not in ordered)
    return ordered
