"""``pymaild dns [DOMAIN] [--json] [--ip ADDRESS]``: print the DNS records to publish.

Keys are created first when missing (``ensure_keys``): printing a DKIM record for a key
that does not exist yet would send the operator to publish something useless.

Stdout carries only the zone text (or JSON) so it can be redirected into a file or a
script; notes such as "created DKIM key ..." go to stderr.

``pymaild dns check`` (compare with live DNS) is a later addition. A domain always
contains a dot, so the word ``check`` never collides with DOMAIN: it can be dispatched on
``args.domain == "check"`` or the positional can become a subcommand then.
"""

from __future__ import annotations

import argparse
import ipaddress
import sys
from typing import Any

from mailserver.commands import CommandError
from mailserver.config import Config, parse_domain
from mailserver.dkim_keys import DKIMKeyError, ensure_keys
from mailserver.dns.records import detect_addresses, expected_records, render_json, render_zone


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "dns",
        help="print the DNS records to publish (zone-file style)",
        description="Print every DNS record to publish for DOMAIN, or for every local domain:"
        " MX, A/AAAA, SPF, DKIM, DMARC, MTA-STS, TLS-RPT, SRV, autoconfig, and the reverse"
        " DNS (PTR) to ask your hosting provider for. Creates the DKIM keys if missing.",
    )
    parser.add_argument("domain", nargs="?", metavar="DOMAIN", help="one of local_domains (default: all)")
    parser.add_argument("--json", action="store_true", help="print JSON for scripts instead of a zone file")
    parser.add_argument(
        "--ip", action="append", default=[], metavar="ADDRESS",
        help="the server's public address (repeatable), when it cannot be detected, e.g. behind NAT",
    )
    parser.set_defaults(func=handler)


def _domains(cfg: Config, wanted: str | None) -> list[str]:
    if wanted is None:
        return list(cfg.local_domains)
    try:
        domain = parse_domain(wanted)
    except ValueError:
        domain = wanted
    if domain not in cfg.local_domains:
        raise CommandError(
            f"{wanted} is not in local_domains ({cfg.path}: {', '.join(cfg.local_domains)})"
        )
    return [domain]


def _addresses(cfg: Config, given: list[str]) -> tuple[list[str], list[str]]:
    by_version: dict[int, list[str]] = {4: [], 6: []}
    for text in given:
        try:
            addr = ipaddress.ip_address(text)
        except ValueError:
            raise CommandError(f"--ip {text}: not an IP address") from None
        by_version[addr.version].append(str(addr))
    if by_version[4] and by_version[6]:
        return by_version[4], by_version[6]
    detected4, detected6 = detect_addresses(cfg)
    return by_version[4] or detected4, by_version[6] or detected6


def handler(args: argparse.Namespace, cfg: Config) -> int:
    domains = _domains(cfg, args.domain)
    ipv4, ipv6 = _addresses(cfg, args.ip)
    try:
        keys = ensure_keys(cfg)
    except DKIMKeyError as exc:
        raise CommandError(str(exc)) from None
    for key in keys:
        if key.created:
            print(f"created DKIM key {key.private_key_path} ({key.algorithm})", file=sys.stderr)
    if args.json:
        records = [r for d in domains for r in expected_records(cfg, keys, domain=d, ipv4=ipv4, ipv6=ipv6)]
        sys.stdout.write(render_json(records))
        return 0
    blocks = [
        f"; DNS records for {', '.join(domains)}, mail server {cfg.hostname} (printed by pymaild dns)\n"
    ]
    for d in domains:
        blocks.append(render_zone(expected_records(cfg, keys, domain=d, ipv4=ipv4, ipv6=ipv6)))
    sys.stdout.write("\n".join(blocks))
    return 0
