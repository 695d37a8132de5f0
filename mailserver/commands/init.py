"""``pymaild init``: the quickstart. From nothing to a server ready to start, in one command.

Asks for (or takes as flags) the mail domain, the host name and the first account, then:
writes the config with its comments (config/pymaild.toml filled in), creates the state
directory, the DKIM keys, a self-signed certificate if no real one is given, the first
account with a generated password shown once, and prints the DNS records and next steps.

Re-running is safe: an existing config, keys, certificate, account or mail are never
replaced (``--force-config`` is the one way to rewrite the config, and it keeps a copy).
The checks it makes (host name resolves here, ports free, state dir writable) only warn:
a machine being prepared before its DNS or firewall is ready is the normal case.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import errno
import ipaddress
import os
import re
import secrets
import shutil
import socket
import sys
import textwrap
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..auth.store import AccountError, AccountStore, normalize_address
from ..config import DEFAULT_CONFIG_PATH, Config, ConfigError, config_from_dict, load_config, parse_domain
from ..dkim_keys import DKIMKeyError, ensure_keys
from ..dns.records import first_start_banner, interface_addresses, resolve_host
from . import CommandError

# The commented production example; found in a source checkout or an editable install.
TEMPLATE = Path(__file__).resolve().parents[2] / "config" / "pymaild.toml"
DEFAULT_STATE_DIR = "/var/lib/pymaild"
DEFAULT_USER = "pymaild"
RESOLVE_TIMEOUT = 5.0

# Used when config/pymaild.toml is not installed (a wheel carries only the package).
_FALLBACK_TEMPLATE = """\
# pymaild configuration. Every key is described in docs/configuration.md; the full
# commented example is config/pymaild.toml in the pymaild sources.

# The name of this machine: EHLO name, TLS certificate name, MX target, PTR target.
hostname = "mx.example.org"
# The main mail domain; it must be one of local_domains.
primary_domain = "example.org"
# Every domain this server receives mail for.
local_domains = ["example.org"]
# Accounts database, mailboxes, DKIM keys, queue, self-signed certificate. Back it up.
state_dir = "/var/lib/pymaild"

[tls]
# Certificate chain and key for hostname (certbot, acme.sh), readable by pymaild.
cert = "/etc/pymaild/tls/fullchain.pem"
key = "/etc/pymaild/tls/privkey.pem"
# true: generate a self-signed pair when cert/key are missing (state_dir/tls/ if unset).
#self_signed = false

[listen]
# "host:port" lists; IPv6 as "[::]:25"; an empty list turns a service off.
smtp = ["0.0.0.0:25", "[::]:25"]
#submission = ["0.0.0.0:587", "[::]:587"]
#submissions = ["0.0.0.0:465", "[::]:465"]

[accounts]
# Receives postmaster@ and abuse@ (and so DMARC/TLS reports) of every local domain.
#postmaster = ""
"""


@dataclass
class Answers:
    domain: str
    hostname: str
    account: str
    state_dir: str
    listen_ips: list[str]
    cert: str = ""
    key: str = ""
    ports: dict[str, int] = field(default_factory=dict)  # listen.<kind> -> port, 0 = off

    @property
    def self_signed(self) -> bool:
        return not self.cert


# ---------------------------------------------------------------------------- command line


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "init",
        help="quickstart: write the config, keys, first account; print DNS records",
        description="Set up pymaild: write the config (-c, default " + DEFAULT_CONFIG_PATH + "),"
        " create the state directory, DKIM keys, TLS certificate (self-signed unless given)"
        " and the first account, then print the DNS records and next steps. Asks for"
        " what is missing when run on a terminal. Re-running keeps everything that exists.",
    )
    parser.add_argument("--domain", help="the mail domain, e.g. example.org")
    parser.add_argument("--hostname", help="this server's name (default: the machine's FQDN if it"
                        " is under DOMAIN, else mx.DOMAIN)")
    parser.add_argument("--account", metavar="ADDRESS", help="the first account, e.g. you@example.org")
    parser.add_argument("--cert", metavar="FILE", help="certificate chain (PEM) for HOSTNAME")
    parser.add_argument("--key", metavar="FILE", help="its private key (PEM)")
    parser.add_argument("--self-signed", action="store_true",
                        help="use a self-signed certificate until you have a real one")
    parser.add_argument("--state-dir", metavar="DIR", default=DEFAULT_STATE_DIR,
                        help=f"accounts, mail, keys (default {DEFAULT_STATE_DIR})")
    parser.add_argument("--listen-ip", action="append", default=[], metavar="ADDRESS",
                        help="address to listen on (repeatable; default 0.0.0.0, and :: with IPv6)")
    for kind, port, what in (("smtp", 25, "mail from other servers"),
                             ("submission", 587, "mail clients, STARTTLS"),
                             ("submissions", 465, "mail clients, implicit TLS"),
                             ("imap", 143, "mail clients reading, STARTTLS"),
                             ("imaps", 993, "mail clients reading, implicit TLS")):
        parser.add_argument(f"--{kind}-port", type=int, default=port, metavar="PORT",
                            help=f"port for {what} (default {port}; 0 turns it off)")
    parser.add_argument("--user", default=DEFAULT_USER,
                        help=f"when run as root: the user the daemon runs as, who must own what"
                        f" init creates (default {DEFAULT_USER}, if that user exists)")
    parser.add_argument("--force-config", action="store_true",
                        help="write a new config even if one exists (the old one is kept as .bak-DATE)")
    parser.add_argument("-y", "--yes", action="store_true",
                        help="ask nothing (implied when standard input is not a terminal)")
    parser.set_defaults(func=handler, needs_config=False)


def _ask(question: str, default: str = "") -> str:
    suffix = f" [{default}]" if default else ""
    try:
        answer = input(f"{question}{suffix}: ").strip()
    except EOFError:
        answer = ""
    return answer or default


def _default_hostname(domain: str) -> str:
    fqdn = socket.getfqdn().rstrip(".").lower()
    return fqdn if fqdn.endswith("." + domain) else f"mx.{domain}"


def _default_listen_ips() -> list[str]:
    ips = ["0.0.0.0"]
    # Listing [::] on a machine without IPv6 stops the daemon at start: only if it binds.
    with contextlib.suppress(OSError), socket.socket(socket.AF_INET6, socket.SOCK_STREAM) as s:
        s.bind(("::", 0))
        ips.append("::")
    return ips


def _gather(args: argparse.Namespace, interactive: bool) -> Answers:
    if args.self_signed and (args.cert or args.key):
        raise CommandError("--self-signed and --cert/--key exclude each other")
    if bool(args.cert) != bool(args.key):
        raise CommandError("--cert and --key go together")
    domain = args.domain or (_ask("Mail domain (the part after @)") if interactive else "")
    if not domain:
        raise CommandError("--domain is required (no terminal to ask on, or --yes)")
    try:
        domain = parse_domain(domain)
    except ValueError as exc:
        raise CommandError(f"--domain: {exc}") from None
    hostname = args.hostname or (_ask("Host name of this server (MX, TLS name, PTR)",
                                      _default_hostname(domain)) if interactive
                                 else _default_hostname(domain))
    try:
        hostname = parse_domain(hostname)
    except ValueError as exc:
        raise CommandError(f"--hostname: {exc}") from None
    account = args.account or (_ask("First account", f"postmaster@{domain}") if interactive else "")
    if not account:
        raise CommandError("--account is required (no terminal to ask on, or --yes)")
    try:
        account = normalize_address(account)
    except AccountError as exc:
        raise CommandError(f"--account: {exc}") from None
    if account.rpartition("@")[2] != domain:
        raise CommandError(f"--account: {account} is not an address of {domain}")
    cert, key = args.cert or "", args.key or ""
    if interactive and not (cert or args.self_signed):
        cert = _ask("Certificate chain for " + hostname + " (empty: self-signed for now)")
        if cert:
            key = _ask("Its private key")
    for flag, value in (("--cert", cert), ("--key", key)):
        if value and not os.path.isfile(value):
            raise CommandError(f"{flag}: file not found: {value}")
    ips = args.listen_ip or _default_listen_ips()
    for ip in ips:
        try:
            ipaddress.ip_address(ip)
        except ValueError:
            raise CommandError(f"--listen-ip: {ip!r} is not an IP address") from None
    ports = {"smtp": args.smtp_port, "submission": args.submission_port,
             "submissions": args.submissions_port, "imap": args.imap_port, "imaps": args.imaps_port}
    for kind, port in ports.items():
        if not 0 <= port < 65536:
            raise CommandError(f"--{kind}-port: {port} is not a port (0-65535)")
    return Answers(domain=domain, hostname=hostname, account=account,
                   state_dir=os.path.abspath(args.state_dir), listen_ips=list(ips),
                   cert=os.path.abspath(cert) if cert else "",
                   key=os.path.abspath(key) if key else "", ports=ports)


# ---------------------------------------------------------------------------- config text


def _toml(value: str | list[str]) -> str:
    if isinstance(value, list):
        return "[" + ", ".join(_toml(v) for v in value) + "]"
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _listen(ips: list[str], port: int) -> list[str]:
    if not port:
        return []
    return [f"[{ip}]:{port}" if ":" in ip else f"{ip}:{port}" for ip in ips]


def config_values(a: Answers) -> dict[str, str | None]:
    """``key`` / ``section.key`` -> TOML value text; None comments the key out."""
    values: dict[str, str | None] = {
        "hostname": _toml(a.hostname),
        "primary_domain": _toml(a.domain),
        "local_domains": _toml([a.domain]),
        "state_dir": _toml(a.state_dir),
        "accounts.postmaster": _toml(a.account),
    }
    if a.self_signed:
        # No cert/key: the pair goes to state_dir/tls/, the one place the unit may write.
        values.update({"tls.cert": None, "tls.key": None, "tls.self_signed": "true"})
    else:
        values.update({"tls.cert": _toml(a.cert), "tls.key": _toml(a.key), "tls.self_signed": None})
    for kind, port in a.ports.items():
        values[f"listen.{kind}"] = _toml(_listen(a.listen_ips, port))
    return values


def render_config(template: str, values: dict[str, str | None], header: str) -> str:
    """``template`` with ``values`` filled in where the keys are (set or commented out),
    keys it lacks added under their section, and its first comment block replaced by
    ``header``. Everything else, comments included, is kept as it is."""
    lines = template.splitlines()
    start = 0
    while start < len(lines) and lines[start].startswith("#"):
        start += 1
    lines = header.rstrip("\n").splitlines() + lines[start:]
    section, done = "", set()
    for i, line in enumerate(lines):
        if m := re.fullmatch(r"\[([a-z_]+)\]\s*(#.*)?", line):
            section = m.group(1)
        elif m := re.fullmatch(r"(#?)([a-z_0-9]+) = (.*)", line):
            key = f"{section}.{m.group(2)}" if section else m.group(2)
            if key in values and key not in done:
                value = values[key]
                if value is None:
                    lines[i] = line if m.group(1) else f"#{m.group(2)} = {m.group(3)}"
                else:
                    lines[i] = f"{m.group(2)} = {value}"
                done.add(key)
    for key, value in values.items():
        if key in done or value is None:
            continue
        sect, _, name = key.rpartition(".")
        headers = [i for i, line in enumerate(lines) if re.fullmatch(rf"\[{sect}\]\s*(#.*)?", line)]
        if not sect:
            first = next((i for i, line in enumerate(lines) if line.startswith("[")), len(lines))
            lines.insert(first, f"{name} = {value}\n")
        elif headers:
            lines.insert(headers[0] + 1, f"{name} = {value}")
        else:
            lines += ["", f"[{sect}]", f"{name} = {value}"]
    return "\n".join(lines) + "\n"


def _template() -> str:
    try:
        return TEMPLATE.read_text()
    except OSError:
        return _FALLBACK_TEMPLATE


def build_config_text(a: Answers, path: str) -> str:
    today = datetime.date.today().isoformat()
    header = (f"# pymaild configuration for {a.domain}, written by `pymaild init` on {today}.\n"
              "# Re-running `pymaild init` keeps this file.\n"
              "#\n"
              f"# Check it after an edit: `pymaild dns -c {path}`\n"
              "# (it loads and validates the file, then prints the DNS records to publish).\n"
              "#\n"
              "# Lines \"#key = value\" show a default: uncomment one only to change it.\n"
              "# docs/configuration.md describes every key.\n"
              "#\n"
              "# Formats:   sizes \"25M\", \"100K\", \"1G\" or a number of bytes\n"
              "#            durations \"30s\", \"5m\", \"1h\", \"5d\", \"1h30m\" or a number of seconds\n"
              "#            addresses \"0.0.0.0:25\", \"[::]:25\", \"192.0.2.10:25\"\n")
    text = render_config(_template(), config_values(a), header)
    # Never write a file the daemon would refuse; and catch a template whose layout no
    # longer has the keys where we look for them.
    try:
        cfg = config_from_dict(tomllib.loads(text), path)
    except (ConfigError, tomllib.TOMLDecodeError) as exc:
        raise CommandError(f"the generated config does not load: {exc}") from None
    if (cfg.hostname, cfg.primary_domain, cfg.tls.self_signed) != (a.hostname, a.domain, a.self_signed):
        raise CommandError("the generated config lost a value (template changed?); please report")
    return text


def _write_new(path: Path, text: str, force: bool) -> str | None:
    """Create ``path`` (0640) unless it exists; with ``force`` move the old one aside.
    Returns the backup's name, if any."""
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o750)
    backup = None
    if force and path.exists():
        backup = f"{path}.bak-{datetime.datetime.now():%Y%m%d-%H%M%S}"
        shutil.copy2(path, backup)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o640)
    try:
        os.write(fd, text.encode())
        os.fsync(fd)
    finally:
        os.close(fd)
    try:
        if force:
            os.replace(tmp, path)
        else:
            os.link(tmp, path)  # fails if the file appeared meanwhile: never overwrite
    finally:
        tmp.unlink(missing_ok=True)
    return backup


# ---------------------------------------------------------------------------- checks


def _resolve(host: str) -> list[str] | None:
    """Addresses of ``host`` by the system resolver, sorted; None when it takes too long."""
    found = resolve_host(host, resolve=socket.getaddrinfo, timeout=RESOLVE_TIMEOUT)
    return None if found is None else sorted(set(found))


def check_hostname(cfg: Config) -> list[str]:
    found = _resolve(cfg.hostname)
    if found is None:
        return [f"{cfg.hostname}: no answer from the resolver within {RESOLVE_TIMEOUT:.0f}s"]
    if not found:
        return [f"{cfg.hostname} does not resolve (yet): publish its A/AAAA record (below)"]
    local = set(interface_addresses()) | {h for kind in ("smtp", "submission", "submissions")
                                          for h, _ in getattr(cfg.listen, kind)}
    if not local & set(found):
        return [f"{cfg.hostname} resolves to {', '.join(found)}, not an address of this machine"
                " (fine behind NAT with port forwarding; otherwise fix its A/AAAA record)"]
    return []


def check_ports(cfg: Config) -> list[str]:
    out: list[str] = []
    for kind in ("smtp", "submission", "submissions", "imap", "imaps", "https"):
        for host, port in getattr(cfg.listen, kind):
            problem = _bind_problem(host, port)
            if problem:
                where = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
                out.append(f"cannot listen on {where} (listen.{kind}): {problem}")
    return out


def _bind_problem(host: str, port: int) -> str:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    try:
        with socket.socket(family, socket.SOCK_STREAM) as s:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as the daemon does
            if family == socket.AF_INET6:
                s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            s.bind((host, port))
    except OSError as exc:
        if exc.errno == errno.EADDRINUSE:
            return (f"in use (another mail server? `ss -ltnp 'sport = :{port}'`;"
                    " or pymaild itself, if already running)")
        if exc.errno == errno.EACCES and port < 1024:
            return ("not checked: binding ports below 1024 needs root or CAP_NET_BIND_SERVICE"
                    " (the systemd unit grants it)")
        if exc.errno == errno.EADDRNOTAVAIL:
            return f"{host} is not an address of this machine"
        if exc.errno == errno.EAFNOSUPPORT:
            return "no IPv6 on this machine: remove the [::] entries (or pass --listen-ip)"
        return exc.strerror or str(exc)
    return ""


# ---------------------------------------------------------------------------- ownership


def _owner(user: str) -> tuple[int, int] | None:
    """(uid, gid) of ``user`` when we are root and it exists: what we create must be theirs."""
    if os.geteuid() != 0:
        return None
    import pwd

    try:
        entry = pwd.getpwnam(user)
    except KeyError:
        return None
    return entry.pw_uid, entry.pw_gid


def _hand_over(state: Path, owner: tuple[int, int], state_is_new: bool) -> None:
    """Give what init made in ``state`` (root-owned) to ``owner``, the daemon's user. Only
    pymaild's own entries, and ``state`` itself only if init created it: a mistyped
    --state-dir such as /var must never have its other files chowned."""
    paths = [state] if state_is_new else []
    for name in ("accounts.db", "accounts.db-wal", "accounts.db-shm", "dkim", "tls", "mail"):
        top = state / name
        if top.exists():
            paths.append(top)
            if top.is_dir() and not top.is_symlink():
                for dirpath, dirnames, filenames in os.walk(top):
                    paths += [Path(dirpath, n) for n in [*dirnames, *filenames]]
    for p in paths:
        st = os.lstat(p)
        if st.st_uid == 0 and not p.is_symlink():
            os.chown(p, *owner)


# ---------------------------------------------------------------------------- the command


def handler(args: argparse.Namespace, _cfg: object) -> int:
    path = Path(getattr(args, "config_path", None) or DEFAULT_CONFIG_PATH)
    interactive = sys.stdin.isatty() and not args.yes
    owner = _owner(args.user)

    def warn(text: str) -> None:
        sys.stdout.flush()  # keep the order on a terminal that shows both streams
        print(f"pymaild: warning: {text}", file=sys.stderr)

    account = ""

    if path.exists() and not args.force_config:
        print(f"Keeping the existing config {path} (--force-config writes a new one).")
        cfg = load_config(path)  # a ConfigError is the usual one line, exit 2 (cli.py)
        if args.domain and not cfg.is_local_domain(args.domain):
            warn(f"--domain {args.domain} is not in local_domains of {path}: the file wins")
        if args.account:
            try:
                account = normalize_address(args.account)
            except AccountError as exc:
                raise CommandError(f"--account: {exc}") from None
    else:
        answers = _gather(args, interactive)
        account = answers.account
        text = build_config_text(answers, str(path))
        if interactive and _ask(f"Write {path}? [Y/n]").lower() not in ("", "y", "yes"):
            raise CommandError("nothing written")
        created_dir = not path.parent.exists()
        try:
            backup = _write_new(path, text, args.force_config)
        except FileExistsError:
            raise CommandError(f"{path} appeared meanwhile: not overwritten") from None
        except OSError as exc:
            raise CommandError(f"{path}: {exc.strerror or exc}") from None
        if owner:  # root:pymaild 0640, as docs/install.md sets it up by hand
            os.chown(path, 0, owner[1])
            if created_dir:
                os.chown(path.parent, 0, owner[1])
        print(f"Wrote {path}" + (f" (the previous one is {backup})" if backup else "") + ".")
        cfg = load_config(path)

    for problem in check_hostname(cfg) + check_ports(cfg):
        warn(problem)

    state = cfg.state_path
    try:
        new_state = not state.exists()
        state.mkdir(parents=True, exist_ok=True, mode=0o750)
        if owner and new_state:
            os.chown(state, *owner)  # before the keys: ensure_keys hands files to this owner
        probe = state / f".init-probe-{os.getpid()}"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as exc:
        raise CommandError(f"state directory {state} is not writable: {exc.strerror or exc}") from None

    _tls(cfg)
    try:
        keys = ensure_keys(cfg)
    except DKIMKeyError as exc:
        raise CommandError(str(exc)) from None
    created = [k for k in keys if k.created]
    print(f"DKIM keys: {len(keys)} in {cfg.dkim_dir}" + (f" ({len(created)} new)." if created else
                                                          " (all kept)."))
    password = _account(cfg, account)
    if owner:
        _hand_over(state, owner, new_state)

    print()
    print(first_start_banner(cfg, keys))
    _next_steps(cfg, path)
    if password:
        # Last, so it is not scrolled away by the DNS records.
        print(f"First account: {account}\n  password: {password}\n"
              "  (shown only this once; change it with `pymaild creds password "
              f"{account}`)")
    return 0


def _tls(cfg: Config) -> None:
    from ..tls import TLSError, generate_self_signed, server_context

    if cfg.tls.self_signed and not (cfg.cert_path.exists() and cfg.key_path.exists()):
        generate_self_signed(cfg.hostname, cfg.cert_path, cfg.key_path)
        print(f"TLS: created a self-signed certificate for {cfg.hostname} in {cfg.cert_path.parent}.")
        return
    try:
        server_context(cfg.cert_path, cfg.key_path, cfg.tls.min_version)
    except (TLSError, OSError, ValueError) as exc:
        raise CommandError(f"TLS: {exc}") from None
    print(f"TLS: {cfg.cert_path} loads" + (" (self-signed)." if cfg.tls.self_signed else "."))


def _account(cfg: Config, address: str) -> str:
    """Create ``address`` with a generated password (returned), or leave it alone."""
    if not address:
        return ""
    if not cfg.is_local_domain(address.rpartition("@")[2]):
        raise CommandError(f"{address}: its domain is not in local_domains of {cfg.path}")
    store = AccountStore.in_state_dir(cfg.state_path)
    try:
        if store.get_account(address) is not None:
            print(f"Account {address} exists: kept, password unchanged.")
            return ""
        password = secrets.token_urlsafe(18)  # 24 characters, ~144 bits
        store.create_account(address, password)
    except AccountError as exc:
        raise CommandError(str(exc)) from None
    finally:
        store.close()
    return password


def _next_steps(cfg: Config, path: Path) -> None:
    c = "" if str(path) == DEFAULT_CONFIG_PATH else f" -c {path}"
    ports = sorted({p for kind in ("smtp", "submission", "submissions", "imap", "imaps")
                    for _, p in getattr(cfg.listen, kind)})
    steps = [
        "Publish the DNS records above at your DNS provider.",
        f"Open the firewall: TCP {', '.join(map(str, ports)) or '25, 143, 465, 587, 993'} (e.g. `ufw allow"
        f" {','.join(map(str, ports)) or '25,143,465,587,993'}/tcp`), and 443 for MTA-STS/autoconfig"
        " (listen.https); your provider's firewall too.",
        f"Ask your provider to set the PTR (reverse DNS) of this server's address to {cfg.hostname},"
        " and to open port 25.",
        "Install the unit (systemd/pymaild.service -> /etc/systemd/system/), then start it:"
        " `systemctl enable --now pymaild`",
        f"Once DNS is published: `pymaild dns check{c}`",
    ]
    if cfg.tls.self_signed:
        steps.append("Get a real certificate (docs/install.md, step 4), set tls.cert and tls.key,"
                     " self_signed = false, and `systemctl reload pymaild`.")
    if str(path) != DEFAULT_CONFIG_PATH:
        steps.append(f"The unit reads {DEFAULT_CONFIG_PATH}: point ExecStart= at {path}"
                     " with `systemctl edit pymaild`.")
    print("Next steps:")
    for i, step in enumerate(steps, 1):
        print(textwrap.fill(step, 88, initial_indent=f"  {i}. ", subsequent_indent="     "))
    print()
