"""The DNS records an operator must publish for pymaild, and how to print them.

``expected_records`` decides *what* (pure, given the addresses); ``render_zone`` /
``render_json`` / ``first_start_banner`` decide *how it reads* (pure).
``detect_addresses`` is the only part that looks at the machine: listen addresses,
``getaddrinfo(hostname)`` and the local interfaces. It never sends a packet off the machine.

Later, ``pymaild dns check`` compares these same records with live DNS.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import ipaddress
import json
import socket
import struct
import textwrap
import threading
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass
from typing import Any

from mailserver.config import Config
from mailserver.dkim_keys import ED25519_ALGORITHM, DKIMKey

DEFAULT_TTL = 3600  # an hour: short enough to fix a mistake the same day, long enough to cache

# Defaults of [mta_sts] mode and max_age. "testing" makes senders report TLS problems
# (TLS-RPT) without refusing delivery: the same start-soft-then-tighten path as DMARC
# p=none, and safe with a self-signed certificate.
MTA_STS_MODE = "testing"
MTA_STS_MAX_AGE = 7 * 86400

IPV4_PLACEHOLDER = "<your server's public IPv4>"
IPV6_PLACEHOLDER = "<your server's public IPv6>"

# RFC 6186 services. RFC 8314 prefers implicit TLS, so those get the lower priority value.
_SRV_SERVICES = (
    ("_submissions._tcp", "submissions", 0),
    ("_submission._tcp", "submission", 10),
    ("_imaps._tcp", "imaps", 0),
    ("_imap._tcp", "imap", 10),
)


@dataclass(frozen=True)
class Record:
    name: str  # absolute, with the trailing dot
    type: str  # "MX", "A", "AAAA", "TXT", "CNAME", "SRV", "PTR"
    value: str  # presentation form, except TXT: the raw text (unquoted, unsplit)
    comment: str = ""
    ttl: int = DEFAULT_TTL
    zone: str = ""  # the zone that holds the name, with trailing dot ("" for PTR)
    placeholder: bool = False  # value is a "<fill me in>" text: rendered commented out

    @property
    def publishable(self) -> bool:
        """False for PTR (set at the address owner, not in the domain's zone) and placeholders."""
        return self.type != "PTR" and not self.placeholder


# ---------------------------------------------------------------------------- names


def _abs(name: str) -> str:
    return name.rstrip(".") + "."


def _under(name: str, domain: str) -> bool:
    return name == domain or name.endswith("." + domain)


def hostname_zone(cfg: Config) -> str:
    """The zone that holds ``cfg.hostname`` (no trailing dot): the longest local domain it
    is under, else its parent (a guess: mx1.provider.net -> provider.net)."""
    homes = [d for d in cfg.local_domains if _under(cfg.hostname, d)]
    if homes:
        return max(homes, key=len)
    _, _, parent = cfg.hostname.partition(".")
    return parent if "." in parent else cfg.hostname


def _hostname_home(cfg: Config) -> str:
    """The local domain whose output carries the hostname's own records (A/AAAA, PTR...)."""
    zone = hostname_zone(cfg)
    return zone if zone in cfg.local_domains else cfg.primary_domain


def reverse_name(address: str) -> str:
    return ipaddress.ip_address(address).reverse_pointer + "."


# ---------------------------------------------------------------------------- addresses


def _all_listen(cfg: Config) -> list[tuple[str, int]]:
    listen = cfg.listen
    return [*listen.smtp, *listen.submission, *listen.submissions, *listen.imap, *listen.imaps]


def served_families(cfg: Config) -> set[int]:
    """IP versions the listeners serve; no listener configured -> assume IPv4."""
    families: set[int] = set()
    for host, _ in _all_listen(cfg):
        try:
            families.add(ipaddress.ip_address(host).version)
        except ValueError:
            families.update((4, 6))  # a host name: could be either
    return families or {4}


# socket.getaddrinfo's shape: (family, type, proto, canonname, sockaddr) tuples.
Resolver = Callable[..., list[tuple[Any, ...]]]


RESOLVE_TIMEOUT = 5.0  # getaddrinfo cannot be given a timeout; a dead resolver takes ~20 s


def resolve_host(host: str, *, resolve: Resolver = socket.getaddrinfo,
                 timeout: float = RESOLVE_TIMEOUT) -> list[str] | None:
    """Addresses of ``host`` by the system resolver ([] when it has none or fails), or
    None after ``timeout``: the lookup is then left to finish in a daemon thread, so a
    dead resolver holds up neither the first start's banner nor ``pymaild init``."""
    result: list[str] = []

    def lookup() -> None:
        try:
            infos = resolve(host, None, 0, socket.SOCK_STREAM)
        except (OSError, UnicodeError):
            return
        result.extend(str(info[4][0]).split("%")[0] for info in infos)

    thread = threading.Thread(target=lookup, name=f"getaddrinfo {host}", daemon=True)
    thread.start()
    thread.join(timeout)
    return None if thread.is_alive() else list(result)


def _resolve(resolve: Resolver, host: str, timeout: float = RESOLVE_TIMEOUT) -> list[str]:
    """:func:`resolve_host`, with a timeout read as no addresses."""
    return resolve_host(host, resolve=resolve, timeout=timeout) or []


def interface_addresses() -> list[str]:
    """Addresses of the local interfaces (Linux): the primary IPv4 of each interface by
    ioctl, IPv6 from /proc/net/if_inet6 minus temporary/deprecated (privacy) ones, which
    change and so must never be published."""
    out: list[str] = []
    siocgifaddr = 0x8915
    with contextlib.suppress(OSError), socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        for _, name in socket.if_nameindex():
            with contextlib.suppress(OSError):
                req = struct.pack("256s", name.encode()[:15])
                res = fcntl.ioctl(s.fileno(), siocgifaddr, req)
                out.append(socket.inet_ntoa(res[20:24]))
    with contextlib.suppress(OSError), open("/proc/net/if_inet6") as fh:
        for line in fh:
            parts = line.split()
            if len(parts) >= 5 and not int(parts[4], 16) & (0x01 | 0x20):
                out.append(str(ipaddress.IPv6Address(bytes.fromhex(parts[0]))))
    return out


def detect_addresses(
    cfg: Config,
    *,
    resolve: Resolver = socket.getaddrinfo,
    interfaces: Callable[[], list[str]] = interface_addresses,
) -> tuple[list[str], list[str]]:
    """(ipv4, ipv6) for the hostname's A/AAAA records, per IP version the listeners serve:

    1. explicit listen addresses of that version (as configured, even if private: test
       setups publish loopback addresses in their own DNS server);
    2. else, with a wildcard listener (0.0.0.0 / [::]) or none, the *global* addresses
       ``getaddrinfo(hostname)`` returns (Debian maps the hostname to 127.0.1.1: skipped);
    3. else the global addresses of the local interfaces (first start, hostname not in
       DNS yet, server with a public address on its interface).

    An empty list means unknown: ``expected_records`` then prints a placeholder.
    """
    families = served_families(cfg)
    explicit: dict[int, list[str]] = {4: [], 6: []}
    wildcard: set[int] = set() if _all_listen(cfg) else set(families)
    for host, _ in _all_listen(cfg):
        try:
            addr = ipaddress.ip_address(host)
        except ValueError:
            for a in _resolve(resolve, host):
                explicit[ipaddress.ip_address(a).version].append(a)
            continue
        if addr.is_unspecified:
            wildcard.add(addr.version)
        else:
            explicit[addr.version].append(str(addr))
    found: dict[int, list[str]] = {4: [], 6: []}
    # Each source is asked at most once, and only when an explicit address is missing.
    sources = [lambda: _resolve(resolve, cfg.hostname), interfaces]
    answers: dict[int, list[str]] = {}
    for version in (4, 6):
        if explicit[version]:
            found[version] = explicit[version]
            continue
        if version not in wildcard:
            continue
        for i, source in enumerate(sources):
            if i not in answers:
                answers[i] = source()
            found[version] = [a for a in answers[i] if _is_global_of(a, version)]
            if found[version]:
                break
    return _dedupe(found[4]), _dedupe(found[6])


def _is_global_of(address: str, version: int) -> bool:
    addr = ipaddress.ip_address(address)
    return addr.version == version and addr.is_global


def _dedupe(items: Iterable[str]) -> list[str]:
    return list(dict.fromkeys(items))


# ---------------------------------------------------------------------------- MTA-STS


def mta_sts_policy(cfg: Config) -> str:
    """The policy text to serve at https://mta-sts.<domain>/.well-known/mta-sts.txt
    (RFC 8461 3.2, CRLF lines). Same for every local domain: they share one MX."""
    lines = [
        "version: STSv1",
        f"mode: {cfg.mta_sts.mode}",
        f"mx: {cfg.hostname}",
        f"max_age: {int(cfg.mta_sts.max_age)}",
    ]
    return "\r\n".join(lines) + "\r\n"


def mta_sts_id(policy: str) -> str:
    """A policy id (1-32 alphanumerics) that changes exactly when the policy text does, so
    senders refetch after a change and never otherwise."""
    return hashlib.sha256(policy.encode("utf-8")).hexdigest()[:16]


# ---------------------------------------------------------------------------- records


def _hostname_records(cfg: Config, ipv4: Sequence[str], ipv6: Sequence[str]) -> list[Record]:
    host = _abs(cfg.hostname)
    zone = _abs(hostname_zone(cfg))
    families = served_families(cfg)
    out: list[Record] = []
    per_family = ((4, "A", ipv4, IPV4_PLACEHOLDER), (6, "AAAA", ipv6, IPV6_PLACEHOLDER))
    for version, rtype, addrs, hint in per_family:
        for a in addrs:
            note = f"{cfg.hostname}, the MX and the server mail clients connect to."
            if not ipaddress.ip_address(a).is_global:
                note += f" {a} is not a public address: fine for a test network, unreachable from outside."
            out.append(Record(host, rtype, a, note, zone=zone))
        if not addrs and version in families:
            out.append(Record(
                host, rtype, hint,
                f"FILL IN {hint}: it could not be detected (wildcard listener, {cfg.hostname}"
                f" not resolvable yet). `pymaild dns --ip ADDRESS` prints it filled in.",
                zone=zone, placeholder=True,
            ))
    if cfg.hostname not in cfg.local_domains:
        # Bounces are sent with an empty MAIL FROM, so receivers check SPF on the HELO name.
        out.append(Record(
            host, "TXT", "v=spf1 a -all",
            f"SPF for the HELO name {cfg.hostname} (used for bounces, which have no sender):"
            " only this host uses it, so -all is safe.",
            zone=zone,
        ))
    return out


def _ptr_records(cfg: Config, ipv4: Sequence[str], ipv6: Sequence[str]) -> list[Record]:
    return [
        Record(
            reverse_name(a), "PTR", _abs(cfg.hostname),
            f"Reverse DNS of {a}: ask your hosting/VPS provider to set it to {cfg.hostname}"
            " (receivers distrust mail from addresses whose PTR does not match the HELO name).",
        )
        for a in (*ipv4, *ipv6)
    ]


def _domain_records(cfg: Config, keys: Sequence[DKIMKey], domain: str) -> list[Record]:
    d = _abs(domain)
    host = _abs(cfg.hostname)
    out = [
        Record(d, "MX", f"10 {host}", f"Mail for @{domain} is delivered to {cfg.hostname}.", zone=d),
        Record(
            d, "TXT", "v=spf1 mx ~all",
            f"SPF: only the hosts in the MX record may send as @{domain}. ~all (softfail) while"
            " you make sure nothing else (a website form, a newsletter service) sends as this"
            " domain; then tighten to -all. Keep a single v=spf1 record per name: merge with"
            " an existing one rather than adding a second.",
            zone=d,
        ),
    ]
    for key in keys:
        if key.domain != domain:
            continue
        note = f"DKIM key {key.selector} ({key.algorithm}); the value is also in {key.dns_path}."
        if key.algorithm == ED25519_ALGORITHM:
            note += " ed25519 (RFC 8463) signs alongside rsa: receivers that lack it use the rsa signature."
        out.append(Record(_abs(key.dns_name), "TXT", key.dns_txt, note, zone=d))
    policy = mta_sts_policy(cfg)
    out += [
        Record(
            _abs(f"_dmarc.{domain}"), "TXT", f"v=DMARC1; p=none; rua=mailto:postmaster@{domain}",
            f"DMARC: p=none only collects reports (sent to postmaster@{domain}: make sure that"
            " address reaches you). After a few weeks of clean reports, tighten to"
            " p=quarantine, then p=reject.",
            zone=d,
        ),
        Record(
            _abs(f"_mta-sts.{domain}"), "TXT", f"v=STSv1; id={mta_sts_id(policy)}",
            f"MTA-STS: senders fetch https://mta-sts.{domain}/.well-known/mta-sts.txt (mode"
            f" {cfg.mta_sts.mode}, max_age {int(cfg.mta_sts.max_age)}); the id changes only when that policy"
            " changes. Harmless until the policy is served: senders then ignore it.",
            zone=d,
        ),
    ]
    if cfg.hostname != f"mta-sts.{domain}":
        out.append(Record(
            _abs(f"mta-sts.{domain}"), "CNAME", host,
            f"mta-sts.{domain} must serve the policy over HTTPS with a certificate valid for"
            " that name: point it at the web server that does (here, this server).",
            zone=d,
        ))
    out.append(Record(
        _abs(f"_smtp._tls.{domain}"), "TXT", f"v=TLSRPTv1; rua=mailto:postmaster@{domain}",
        "TLS-RPT: senders report TLS failures delivering to you (RFC 8460).",
        zone=d,
    ))
    for name, kind, priority in _SRV_SERVICES:
        ports = [port for _, port in getattr(cfg.listen, kind)]
        if ports:
            out.append(Record(
                _abs(f"{name}.{domain}"), "SRV", f"{priority} 1 {ports[0]} {host}",
                f"Mail client autodiscovery (RFC 6186): {kind} on port {ports[0]}.",
                zone=d,
            ))
        else:
            out.append(Record(
                _abs(f"{name}.{domain}"), "SRV", "0 0 0 .",
                f"{kind} is not offered (no listen.{kind}): tells clients not to try it (RFC 6186).",
                zone=d,
            ))
    if cfg.hostname != f"autoconfig.{domain}":
        out.append(Record(
            _abs(f"autoconfig.{domain}"), "CNAME", host,
            "Thunderbird autoconfig: fetches https://autoconfig."
            f"{domain}/mail/config-v1.1.xml from this server.",
            zone=d,
        ))
    return out


def expected_records(
    cfg: Config,
    keys: Sequence[DKIMKey],
    *,
    domain: str | None = None,
    ipv4: Sequence[str] | None = None,
    ipv6: Sequence[str] | None = None,
) -> list[Record]:
    """Every record to publish for ``domain`` (None: every local domain), in a stable
    order. The hostname's A/AAAA, HELO SPF and PTR advice come with the local domain whose
    zone holds the hostname (else the primary domain), once.

    ``ipv4``/``ipv6`` default to ``detect_addresses(cfg)``; pass lists to stay pure.
    """
    domains = list(cfg.local_domains) if domain is None else [domain.rstrip(".").lower()]
    if ipv4 is None or ipv6 is None:
        found4, found6 = detect_addresses(cfg)
        ipv4 = found4 if ipv4 is None else ipv4
        ipv6 = found6 if ipv6 is None else ipv6
    out: list[Record] = []
    ptrs: list[Record] = []
    for d in domains:
        if d == _hostname_home(cfg):
            records = _domain_records(cfg, keys, d)
            # Hostname records right after the MX that names the hostname.
            out += [records[0], *_hostname_records(cfg, ipv4, ipv6), *records[1:]]
            ptrs = _ptr_records(cfg, ipv4, ipv6)
        else:
            out += _domain_records(cfg, keys, d)
    return out + ptrs


# ---------------------------------------------------------------------------- rendering


def _escape_txt_chunk(chunk: bytes) -> str:
    parts = []
    for b in chunk:
        if b in (0x22, 0x5C):  # " and \
            parts.append("\\" + chr(b))
        elif 0x20 <= b < 0x7F:
            parts.append(chr(b))
        else:
            parts.append(f"\\{b:03d}")
    return '"' + "".join(parts) + '"'


def txt_strings(value: str) -> list[bytes]:
    """Split a TXT value into the <= 255-byte character-strings a TXT record holds; a
    receiver concatenates them without separators (RFC 7208 3.3, RFC 6376 3.6.2.2)."""
    raw = value.encode("utf-8")
    return [raw[i : i + 255] for i in range(0, len(raw), 255)] or [b""]


def rdata_text(record: Record) -> str:
    """The record's data as a zone file writes it (TXT quoted, split and escaped)."""
    if record.type == "TXT":
        # Split the bytes before escaping so an escape sequence is never cut in two.
        return " ".join(_escape_txt_chunk(c) for c in txt_strings(record.value))
    return record.value


def _comment(text: str, width: int = 100) -> list[str]:
    lines: list[str] = []
    for para in text.splitlines() or [""]:
        lines += ["; " + line for line in textwrap.wrap(para, width - 2)] or [";"]
    return lines


def render_zone(records: Sequence[Record]) -> str:
    """A zone-file block: absolute names, explicit TTL and class on every line, so it can
    be pasted into an existing zone file or imported as is. Records of different zones
    are grouped under a "; zone X" header (publish each group in its own zone); PTR and
    placeholder records are written as comments, since they cannot be published as is."""
    if not records:
        return ""
    ptrs = [r for r in records if r.type == "PTR"]
    # Align the publishable lines; the long ip6.arpa names of PTRs must not widen them.
    width = max((len(r.name) for r in records if r.type != "PTR"), default=0)
    tw = max(len(r.type) for r in records)

    def line(r: Record) -> str:
        return f"{r.name:<{width}} {r.ttl:>5} IN {r.type:<{tw}} {rdata_text(r)}"

    out: list[str] = []
    zones = list(dict.fromkeys(r.zone for r in records if r.type != "PTR"))
    for zone in zones:
        if len(zones) > 1 or out:
            out.append("")
        out.append(f"; ---- zone {zone} ----")
        for r in records:
            if r.zone != zone or r.type == "PTR":
                continue
            out.append("")
            if r.comment:
                out += _comment(r.comment)
            out.append(("; " if r.placeholder else "") + line(r))
    if ptrs:
        out += ["", "; ---- reverse DNS (PTR): not for your zone, set by whoever owns the address ----"]
        for r in ptrs:
            out.append("")
            if r.comment:
                out += _comment(r.comment)
            out.append("; " + line(r))
    return "\n".join(out).lstrip("\n") + "\n"


def render_json(records: Sequence[Record]) -> str:
    """JSON for automation: a list of records, TXT ``value`` raw (what DNS provider APIs
    want), ``rdata`` the zone-file form, ``publishable`` false for PTR and placeholders."""
    items = []
    for r in records:
        item = asdict(r)
        item["rdata"] = rdata_text(r)
        item["publishable"] = r.publishable
        items.append(item)
    return json.dumps(items, indent=2) + "\n"


def first_start_banner(
    cfg: Config,
    keys: Sequence[DKIMKey],
    *,
    ipv4: Sequence[str] | None = None,
    ipv6: Sequence[str] | None = None,
) -> str:
    """What the daemon prints when it has just created DKIM keys: every record per local
    domain, then what cannot go into a zone (PTR, port 25, the MTA-STS policy)."""
    if ipv4 is None or ipv6 is None:
        found4, found6 = detect_addresses(cfg)
        ipv4 = found4 if ipv4 is None else ipv4
        ipv6 = found6 if ipv6 is None else ipv6
    rule = "=" * 78
    out: list[str] = []
    records: list[Record] = []
    for domain in cfg.local_domains:
        recs = expected_records(cfg, keys, domain=domain, ipv4=ipv4, ipv6=ipv6)
        records += recs
        out += [rule, f"Publish these DNS records for {domain}:", rule, "", render_zone(recs)]
    addresses = [*ipv4, *ipv6]
    targets = ", ".join(addresses) if addresses else "your server's public addresses"
    items = [
        f"Reverse DNS: ask your hosting/VPS provider to set the PTR of {targets} to"
        f" {cfg.hostname}: receivers distrust mail from an address whose PTR does not match.",
        "Port 25: many VPS providers block outgoing port 25 by default: ask them to open it,"
        " and open incoming port 25 in your firewall.",
        "TXT values over 255 characters are shown as several quoted strings. A web form"
        " usually wants the value without quotes, in one piece: the DKIM values are also in"
        f" {cfg.dkim_dir}/<domain>.<selector>.dns.",
    ]
    if any(r.placeholder for r in records):
        items.append("Records commented out with <...> need your server's address: fill it in,"
                     " or run `pymaild dns --ip ADDRESS`.")
    items += [
        "MTA-STS: https://mta-sts.<domain>/.well-known/mta-sts.txt must serve this policy,"
        " with a certificate valid for that name:\n"
        + "".join(f"    {line}\n" for line in mta_sts_policy(cfg).splitlines()),
        "Lines starting with ';' are comments. Print all this again with `pymaild dns`"
        " (`--json` for scripts).",
    ]
    advice = [rule, "Also, outside your DNS zone:", rule]
    for item in items:
        head, _, tail = item.partition("\n")
        advice.append(textwrap.fill(head, 78, initial_indent="* ", subsequent_indent="  "))
        if tail:
            advice.append(tail.rstrip("\n"))
    return "\n".join(out + advice) + "\n"


__all__ = [
    "DEFAULT_TTL",
    "MTA_STS_MAX_AGE",
    "MTA_STS_MODE",
    "Record",
    "detect_addresses",
    "expected_records",
    "first_start_banner",
    "hostname_zone",
    "interface_addresses",
    "mta_sts_id",
    "mta_sts_policy",
    "render_json",
    "render_zone",
    "reverse_name",
]
