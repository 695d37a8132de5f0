"""``pymaild dns [DOMAIN] [--json] [--ip ADDRESS]``: print the DNS records to publish;
``pymaild dns check [DOMAIN] [--json] [--ip ADDRESS]``: compare them with live DNS.

Keys are created first when missing (``ensure_keys``): printing a DKIM record for a key
that does not exist yet would send the operator to publish something useless.

Stdout carries only the zone text (or JSON) so it can be redirected into a file or a
script; notes such as "created DKIM key ..." go to stderr.

A domain always contains a dot, so the word ``check`` never collides with DOMAIN: it is
dispatched on ``args.domain == "check"``, with a second optional positional for the
domain to check. A real argparse subcommand cannot share the position with an optional
DOMAIN (``pymaild dns example.org`` would be rejected as an unknown subcommand), and
``pymaild dns [DOMAIN]`` must keep working exactly as before.

``check`` only reads keys (``load_keys``): a check must not create a key and then
report it as missing from DNS.
"""

from __future__ import annotations

import argparse
import ipaddress
import sys
from typing import Any

from mailserver.commands import CommandError
from mailserver.config import Config, parse_domain
from mailserver.dkim_keys import DKIMKeyError, ensure_keys, load_keys
from mailserver.dns.records import detect_addresses, expected_records, render_json, render_zone


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "dns",
        help="print the DNS records to publish (zone-file style); `dns check`: compare with live DNS",
        usage="pymaild dns [DOMAIN] [--json] [--ip ADDRESS]... [-c FILE]\n"
        "       pymaild dns check [DOMAIN] [--json] [--ip ADDRESS]... [-c FILE]",
        description="Print every DNS record to publish for DOMAIN, or for every local domain:"
        " MX, A/AAAA, SPF, DKIM, DMARC, MTA-STS, TLS-RPT, SRV, autoconfig, and the reverse"
        " DNS (PTR) to ask your hosting provider for. Creates the DKIM keys if missing."
        " `pymaild dns check [DOMAIN]` instead queries live DNS and prints one line per record:"
        " ok, missing, wrong (with the fix), warn or error; exit status 1 if any is missing,"
        " wrong or unanswered.",
    )
    parser.add_argument("domain", nargs="?", metavar="DOMAIN",
                        help="one of local_domains (default: all), or the word check")
    # Only meaningful after "check" (see the module docstring); hidden from the help list,
    # the usage lines above show it.
    parser.add_argument("check_domain", nargs="?", metavar="DOMAIN", help=argparse.SUPPRESS)
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
    if args.domain == "check":
        return check_handler(args, cfg)
    if args.check_domain is not None:
        # What argparse said before `check` existed: same message, same usage-error status.
        print(f"pymaild: unrecognized arguments: {args.check_domain} (see pymaild --help)", file=sys.stderr)
        return 2
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


def check_handler(args: argparse.Namespace, cfg: Config) -> int:
    """``pymaild dns check``: exit 0 when every record is ok (warnings allowed), else 1."""
    import asyncio

    from mailserver.commands.dnscheck import exit_code, render_json, render_text, run_checks

    domains = _domains(cfg, args.check_domain)
    ipv4, ipv6 = _addresses(cfg, args.ip)
    try:
        keys = load_keys(cfg)
    except DKIMKeyError as exc:
        raise CommandError(str(exc)) from None
    results = asyncio.run(run_checks(cfg, keys, domains, ipv4, ipv6))
    sys.stdout.write(render_json(results) if args.json else render_text(results))
    return exit_code(results)
