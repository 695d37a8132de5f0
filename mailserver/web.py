"""HTTPS for the MTA-STS policy and Thunderbird autoconfig, on a tiny HTTP/1.1 server.

Two fixed documents need HTTPS on the mail domains (RFC 8461's policy and Mozilla's
autoconfig XML). A web framework would be a large dependency for that, so this module has:

* in :mod:`mailserver.net.http`, a sans-I/O part: ``find_head_end``, ``parse_request`` and
  ``Response.encode`` (pure, unit-tested without sockets);
* there too, ``HTTPListener``: one request per connection (``Connection: close``), GET/HEAD
  only, the head limited in size and the whole exchange in time, a cap on concurrent
  connections;
* here, ``WebServer``: the routes. Only fixed paths are compared as exact strings and the
  documents are built in memory once, so no file is ever opened from a request and there
  is nothing to traverse.

``metrics.MetricsServer`` reuses ``HTTPListener`` for plain-HTTP ``/metrics``.
"""

from __future__ import annotations

import ssl
import sys
import xml.etree.ElementTree as ET
from collections.abc import Callable, Iterable
from pathlib import Path
from urllib.parse import parse_qs

from .config import Config
from .dns.records import mta_sts_policy
from .net.http import MAX_CONNECTIONS, TIMEOUT, HTTPListener, Request, Response, error_response

MTA_STS_PATH = "/.well-known/mta-sts.txt"
AUTOCONFIG_PATHS = ("/mail/config-v1.1.xml", "/.well-known/autoconfig/mail/config-v1.1.xml")


# ---------------------------------------------------------------------------- the routes


def required_names(cfg: Config) -> list[str]:
    """Every DNS name the certificate must cover when ``listen.https`` is on: the mail host
    name, and ``mta-sts.<domain>`` (RFC 8461 3.3: senders check it) and
    ``autoconfig.<domain>`` (Thunderbird's first try) for each local domain."""
    names = [cfg.hostname]
    for domain in cfg.local_domains:
        names += [f"mta-sts.{domain}", f"autoconfig.{domain}"]
    return list(dict.fromkeys(names))


def uncovered_names(names: Iterable[str], cert_pem: bytes) -> list[str]:
    """Which of ``names`` the (first) certificate in ``cert_pem`` does not cover, with
    RFC 6125 single-label wildcards. For a start-up warning: a policy served under a
    certificate without ``mta-sts.<domain>`` is ignored by every sender."""
    from cryptography import x509

    cert = x509.load_pem_x509_certificate(cert_pem)
    try:
        sans = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        patterns = [n.lower().rstrip(".") for n in sans.get_values_for_type(x509.DNSName)]
    except x509.ExtensionNotFound:
        patterns = []

    def covered(name: str) -> bool:
        name = name.lower().rstrip(".")
        for pattern in patterns:
            if pattern == name:
                return True
            if pattern.startswith("*.") and "." in name and name.split(".", 1)[1] == pattern[2:]:
                return True
        return False

    return [n for n in names if not covered(n)]


def _first_port(addresses: tuple[tuple[str, int], ...], default: int) -> int:
    return addresses[0][1] if addresses else default


def autoconfig_xml(cfg: Config, domain: str) -> str:
    """Mozilla's autoconfig ("ISPDB") format, clientConfig version 1.1.

    Implicit TLS first (RFC 8314 prefers it), STARTTLS as the alternative. The ports are
    the first configured listener of each kind, or the standard port when it is off (the
    usual setup behind a port forward that the config cannot see).
    """
    listen = cfg.listen
    root = ET.Element("clientConfig", version="1.1")
    provider = ET.SubElement(root, "emailProvider", id=domain)
    for d in cfg.local_domains:
        ET.SubElement(provider, "domain").text = d
    ET.SubElement(provider, "displayName").text = domain
    ET.SubElement(provider, "displayShortName").text = domain.split(".")[0]
    servers = [
        ("incomingServer", "imap", _first_port(listen.imaps, 993), "SSL"),
        ("incomingServer", "imap", _first_port(listen.imap, 143), "STARTTLS"),
        ("outgoingServer", "smtp", _first_port(listen.submissions, 465), "SSL"),
        ("outgoingServer", "smtp", _first_port(listen.submission, 587), "STARTTLS"),
    ]
    for tag, kind, port, socket_type in servers:
        server = ET.SubElement(provider, tag, type=kind)
        ET.SubElement(server, "hostname").text = cfg.hostname
        ET.SubElement(server, "port").text = str(port)
        ET.SubElement(server, "socketType").text = socket_type
        ET.SubElement(server, "authentication").text = "password-cleartext"  # safe: TLS only
        ET.SubElement(server, "username").text = "%EMAILADDRESS%"
    ET.indent(root)
    return '<?xml version="1.0" encoding="UTF-8"?>\n' + ET.tostring(root, encoding="unicode") + "\n"


class WebServer:
    """``listen.https``: the MTA-STS policy on ``mta-sts.<domain>`` and the autoconfig XML
    on any host name. Everything is rendered once here; requests only pick a document."""

    def __init__(
        self,
        cfg: Config,
        tls_context: Callable[[], ssl.SSLContext],
        *,
        timeout: float = TIMEOUT,
        max_connections: int = MAX_CONNECTIONS,
    ) -> None:
        self.cfg = cfg
        self.policy = mta_sts_policy(cfg).encode("utf-8")
        self.sts_hosts = frozenset(f"mta-sts.{d}" for d in cfg.local_domains)
        self.autoconfig = {d: autoconfig_xml(cfg, d).encode("utf-8") for d in cfg.local_domains}
        self.listener = HTTPListener("https", self.route, tls_context=tls_context, timeout=timeout,
                                     max_connections=max_connections)

    async def listen(self, host: str, port: int) -> None:
        await self.listener.listen(host, port)

    async def close(self) -> None:
        await self.listener.close()

    @property
    def sockets(self) -> list[tuple[str, int]]:
        return self.listener.sockets

    def route(self, request: Request) -> Response:
        if request.path == MTA_STS_PATH:
            # RFC 8461 3.3: the policy lives only at mta-sts.<domain>; elsewhere it would be
            # a policy for a domain nobody asked about.
            if request.host not in self.sts_hosts:
                return error_response(404)
            return Response(200, self.policy)
        if request.path in AUTOCONFIG_PATHS:
            return Response(200, self.autoconfig[self._provider_domain(request)],
                            content_type="application/xml; charset=utf-8")
        return error_response(404)

    def _provider_domain(self, request: Request) -> str:
        """The domain the client asked about (?emailaddress=, else the host name), when it is
        ours; else the primary domain. Never echoes client input into the document."""
        address = parse_qs(request.query).get("emailaddress", [""])[0]
        candidates = [address.rpartition("@")[2].lower()]
        host = request.host
        candidates += [host.removeprefix("autoconfig."), host]
        for candidate in candidates:
            if candidate in self.autoconfig:
                return candidate
        primary = self.cfg.primary_domain
        return primary if primary in self.autoconfig else self.cfg.local_domains[0]


# ---------------------------------------------------------------------------- another web server


def write_static_files(cfg: Config, directory: Path) -> list[Path]:
    """The documents as files, laid out like their URLs, for operators who serve them from
    nginx or another web server instead of ``listen.https`` (docs/web.md). Byte-identical
    to what ``WebServer`` sends, so the ``_mta-sts`` id ``pymaild dns`` prints still matches.
    The autoconfig file is the primary domain's; Thunderbird only needs the server names."""
    from .fsutil import write_file_atomic

    xml = autoconfig_xml(cfg, cfg.primary_domain).encode("utf-8")
    files = {MTA_STS_PATH: mta_sts_policy(cfg).encode("utf-8"), **{p: xml for p in AUTOCONFIG_PATHS}}
    written = []
    for url_path, data in files.items():
        target = directory / url_path.lstrip("/")
        write_file_atomic(target, data, mode=0o644)
        target.parent.chmod(0o755)  # write_file_atomic makes directories 0700: a web server reads these
        written.append(target)
    return written


def main(argv: list[str] | None = None) -> int:
    """``python -m mailserver.web [-c CONFIG] DIRECTORY``: write the files for nginx."""
    import argparse

    from .config import ConfigError, load_config, resolve_config_path

    parser = argparse.ArgumentParser(
        prog="python -m mailserver.web",
        description="Write the MTA-STS policy and autoconfig XML under DIRECTORY.")
    parser.add_argument("-c", "--config", default=None)
    parser.add_argument("directory", type=Path)
    args = parser.parse_args(argv)
    try:
        cfg = load_config(resolve_config_path(args.config))
    except ConfigError as exc:  # like pymaild: config errors exit 2
        print(f"pymaild: config error: {exc}", file=sys.stderr)
        return 2
    try:
        for path in write_static_files(cfg, args.directory):
            print(path)
    except OSError as exc:
        print(f"pymaild: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
