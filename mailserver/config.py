"""TOML configuration -> frozen dataclasses.

Every problem is reported as one ``ConfigError`` whose text names the file, the key and
what is wrong, so ``pymaild`` can print it on one line and exit 2 (systemd's
``RestartPreventExitStatus=2`` then stops restart loops on a broken config).

The schema is declared once, as dataclasses; ``_build`` walks the TOML tables against the
dataclass fields, so unknown keys and wrong types are caught generically and the docs in
``docs/configuration.md`` can be checked against ``schema_keys()``.
"""

from __future__ import annotations

import ipaddress
import math
import os
import re
import tomllib
import typing
from collections.abc import Callable
from dataclasses import MISSING, dataclass, field, fields, is_dataclass
from pathlib import Path
from typing import Any

DEFAULT_CONFIG_PATH = "/etc/pymaild/pymaild.toml"


class ConfigError(Exception):
    """A configuration problem: ``file: key: problem``."""

    def __init__(self, file: str, key: str, problem: str) -> None:
        self.file, self.key, self.problem = file, key, problem
        where = f"{file}: {key}: " if key else f"{file}: "
        super().__init__(where + problem)


# ---------------------------------------------------------------------------- value parsers


_SIZE_RE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([KMGT]?)(i?B?)?\s*$", re.IGNORECASE)
_SIZE_UNITS = {"": 1, "K": 1024, "M": 1024**2, "G": 1024**3, "T": 1024**4}


def parse_size(value: object) -> int:
    """``25M`` / ``100K`` / ``1.5G`` / ``1048576`` -> bytes (binary units, as Postfix does)."""
    if isinstance(value, bool):
        raise ValueError("expected a size like 25M or a number of bytes")
    if isinstance(value, int):
        if value < 0:
            raise ValueError("a size cannot be negative")
        return value
    if not isinstance(value, str):
        raise ValueError("expected a size like 25M or a number of bytes")
    m = _SIZE_RE.match(value)
    if not m:
        raise ValueError(f"cannot parse size {value!r}: use a number with K, M or G, e.g. 25M")
    return int(float(m.group(1)) * _SIZE_UNITS[m.group(2).upper()])


_DURATION_RE = re.compile(r"(\d+(?:\.\d+)?)(ms|s|m|h|d)")
_DURATION_UNITS = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400}


def parse_duration(value: object) -> float:
    """``30s`` / ``5m`` / ``1h30m`` / ``5d`` / a number of seconds -> seconds."""
    if isinstance(value, bool):
        raise ValueError("expected a duration like 30s, 5m, 1h or 5d")
    if isinstance(value, int | float):
        if not math.isfinite(value):
            raise ValueError(f"expected a finite duration, got {value!r}")
        if value < 0:
            raise ValueError("a duration cannot be negative")
        return float(value)
    if not isinstance(value, str):
        raise ValueError("expected a duration like 30s, 5m, 1h or 5d")
    text = value.strip().lower().replace(" ", "")
    pos, total = 0, 0.0
    for m in _DURATION_RE.finditer(text):
        if m.start() != pos:
            break
        total += float(m.group(1)) * _DURATION_UNITS[m.group(2)]
        pos = m.end()
    if pos != len(text) or not text:
        raise ValueError(f"cannot parse duration {value!r}: use e.g. 30s, 5m, 1h or 5d")
    return total


def parse_listen_address(value: object) -> tuple[str, int]:
    """``0.0.0.0:25`` / ``[::]:25`` / ``127.0.0.1:2525`` -> (host, port)."""
    if not isinstance(value, str):
        raise ValueError("expected a \"host:port\" string")
    text = value.strip()
    if text.startswith("["):
        end = text.find("]")
        if end < 0 or text[end + 1 : end + 2] != ":":
            raise ValueError(f"cannot parse address {value!r}: IPv6 is written [::1]:25")
        host, port_text = text[1:end], text[end + 2 :]
        try:
            ipaddress.IPv6Address(host)
        except ValueError:
            raise ValueError(f"cannot parse address {value!r}: {host!r} is not IPv6") from None
    else:
        host, sep, port_text = text.rpartition(":")
        if not sep or not host:
            raise ValueError(f"cannot parse address {value!r}: expected host:port, e.g. 0.0.0.0:25")
        if ":" in host:
            raise ValueError(f"cannot parse address {value!r}: IPv6 is written [::1]:25")
        if not _is_ip(host) and not _HOSTNAME_RE.match(host):
            raise ValueError(f"cannot parse address {value!r}: {host!r} is not a host")
    if not port_text.isdigit() or not 0 < int(port_text) < 65536:
        raise ValueError(f"cannot parse address {value!r}: port must be 1-65535")
    return host, int(port_text)


def _is_ip(text: str) -> bool:
    try:
        ipaddress.ip_address(text)
    except ValueError:
        return False
    return True


_HOSTNAME_RE = re.compile(
    r"^(?=.{1,253}$)([a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?)(\.[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?)*$",
    re.IGNORECASE,
)


def parse_domain(value: object) -> str:
    if not isinstance(value, str):
        raise ValueError("expected a domain name string")
    text = value.strip().rstrip(".").lower()
    try:
        text = text.encode("idna").decode("ascii")  # IDN -> A-labels, as DNS and EHLO use them
    except UnicodeError:
        raise ValueError(f"{value!r} is not a valid domain name") from None
    if not _HOSTNAME_RE.match(text) or "." not in text:
        raise ValueError(f"{value!r} is not a valid domain name (expected e.g. example.org)")
    return text


def parse_hostport(value: object) -> str:
    """Optional ``host:port``; empty string means unset."""
    if value == "":
        return ""
    host, port = parse_listen_address(value)
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def _choice(*allowed: str) -> Callable[[object], str]:
    def parse(value: object) -> str:
        if not isinstance(value, str) or value not in allowed:
            raise ValueError(f"expected one of {', '.join(repr(a) for a in allowed)}, got {value!r}")
        return value

    return parse


def _positive_int(value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"expected a positive whole number, got {value!r}")
    return value


def _growth(value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not 1 <= value <= 10:
        raise ValueError(f"expected a number from 1 to 10, got {value!r}")
    return float(value)


def _selector(value: object) -> str:
    if not isinstance(value, str) or not re.fullmatch(r"[a-zA-Z0-9](?:[a-zA-Z0-9._-]{0,62})", value):
        raise ValueError(f"{value!r} is not a valid DKIM selector (letters, digits, - _ .)")
    return value


def _ip_or_empty(value: object) -> str:
    if value == "":
        return ""
    if not isinstance(value, str) or not _is_ip(value):
        raise ValueError(f"expected an IP address of this host, got {value!r}")
    return value


def _positive_duration(value: object) -> float:
    seconds = parse_duration(value)
    if seconds < 1:
        raise ValueError(f"must be at least 1s, got {value!r}")
    return seconds


def _parser(fn: Callable[[object], Any]) -> dict[str, Any]:
    return {"parse": fn}


# ---------------------------------------------------------------------------- schema


@dataclass(frozen=True)
class TLSConfig:
    cert: str = ""  # PEM chain; empty with self_signed=true -> state_dir/tls/fullchain.pem
    key: str = ""
    self_signed: bool = False  # generate a self-signed end-entity cert on first start if missing
    min_version: str = field(default="1.2", metadata=_parser(_choice("1.2", "1.3")))
    reload_interval: float = field(default=60.0, metadata=_parser(_positive_duration))


@dataclass(frozen=True)
class ListenConfig:
    smtp: tuple[tuple[str, int], ...] = ()
    submission: tuple[tuple[str, int], ...] = ()
    submissions: tuple[tuple[str, int], ...] = ()
    imap: tuple[tuple[str, int], ...] = ()
    imaps: tuple[tuple[str, int], ...] = ()
    https: tuple[tuple[str, int], ...] = ()  # MTA-STS policy + Thunderbird autoconfig
    metrics: tuple[tuple[str, int], ...] = ()  # Prometheus text format, plain HTTP: keep on loopback


def _non_negative_int(value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ValueError(f"expected a whole number, 0 or more, got {value!r}")
    return value


def _fraction(value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not 0 < value <= 1:
        raise ValueError(f"expected a fraction above 0 and at most 1 (e.g. 0.8), got {value!r}")
    return float(value)


@dataclass(frozen=True)
class SMTPConfig:
    """Limits of the SMTP listeners (all of them; submission may get its own later)."""

    max_message_size: int = field(default=25 * 1024**2, metadata=_parser(parse_size))
    max_recipients: int = field(default=100, metadata=_parser(_positive_int))
    max_line_length: int = field(default=2048, metadata=_parser(_positive_int))
    command_timeout: float = field(default=300.0, metadata=_parser(parse_duration))
    data_timeout: float = field(default=600.0, metadata=_parser(parse_duration))
    max_connections: int = field(default=1000, metadata=_parser(_positive_int))
    max_connections_per_ip: int = field(default=20, metadata=_parser(_positive_int))
    # Like Postfix's smtpd_hard_error_limit: refused RCPTs count, so a dictionary attack
    # is cut off, while a list server with a few stale addresses is not.
    max_errors: int = field(default=20, metadata=_parser(_positive_int))
    max_received_headers: int = field(default=50, metadata=_parser(_positive_int))
    reject_bare_newlines: bool = True
    # Connection floods and slow senders (see [stress] for the load-dependent timeouts).
    greeting_delay: float = field(default=0.0, metadata=_parser(parse_duration))
    data_deadline: float = field(default=1800.0, metadata=_parser(_positive_duration))
    data_min_rate: int = field(default=500, metadata=_parser(_non_negative_int))
    data_rate_grace: float = field(default=30.0, metadata=_parser(parse_duration))


@dataclass(frozen=True)
class StressConfig:
    """Load-dependent timeouts of every SMTP and IMAP service (like Postfix's stress mode)."""

    threshold: float = field(default=0.8, metadata=_parser(_fraction))  # of max_connections
    idle_timeout: float = field(default=10.0, metadata=_parser(parse_duration))


@dataclass(frozen=True)
class SubmissionConfig:
    """Ports 587/465: authenticated clients sending mail."""

    hide_client_ip: bool = True  # Received header without the user's IP (privacy)
    # ---- logins, for submission and IMAP alike (auth/ratelimit.py, auth/cache.py)
    max_auth_failures_per_ip: int = field(default=10, metadata=_parser(_positive_int))
    max_auth_failures_per_ip_account: int = field(default=5, metadata=_parser(_positive_int))
    # Past this many failures (all addresses) the account's suspect lane is spaced out.
    max_auth_failures_per_account: int = field(default=10, metadata=_parser(_positive_int))
    auth_failure_window: float = field(default=900.0, metadata=_parser(_positive_duration))
    auth_account_delay: float = field(default=1.0, metadata=_parser(parse_duration))
    auth_account_delay_growth: float = field(default=2.0, metadata=_parser(_growth))
    auth_account_delay_max: float = field(default=60.0, metadata=_parser(parse_duration))
    auth_max_wait: float = field(default=1.0, metadata=_parser(parse_duration))
    auth_failure_delay: float = field(default=0.5, metadata=_parser(parse_duration))
    max_auth_failures_per_connection: int = field(default=3, metadata=_parser(_positive_int))
    auth_throttle_max_entries: int = field(default=50_000, metadata=_parser(_positive_int))
    auth_cache_ttl: float = field(default=3600.0, metadata=_parser(parse_duration))  # 0 = no cache
    auth_cache_max_entries: int = field(default=10_000, metadata=_parser(_positive_int))


@dataclass(frozen=True)
class IMAPConfig:
    """Ports 143/993. Failed logins share [submission]'s limits: one password, one throttle."""

    max_line_length: int = field(default=65536, metadata=_parser(_positive_int))
    max_append_size: int = field(default=64 * 1024**2, metadata=_parser(parse_size))
    login_timeout: float = field(default=120.0, metadata=_parser(_positive_duration))
    idle_timeout: float = field(default=1800.0, metadata=_parser(_positive_duration))  # RFC 3501: >= 30m
    idle_keepalive: float = field(default=120.0, metadata=_parser(_positive_duration))
    poll_interval: float = field(default=1.0, metadata=_parser(_positive_duration))
    max_connections: int = field(default=5000, metadata=_parser(_positive_int))
    max_connections_per_ip: int = field(default=100, metadata=_parser(_positive_int))
    max_sessions_per_user: int = field(default=50, metadata=_parser(_positive_int))
    max_errors: int = field(default=50, metadata=_parser(_positive_int))
    max_keywords_per_message: int = field(default=50, metadata=_parser(_positive_int))
    max_keywords_per_folder: int = field(default=200, metadata=_parser(_positive_int))
    max_folders: int = field(default=1000, metadata=_parser(_positive_int))
    max_command_size: int = field(default=1024**2, metadata=_parser(parse_size))  # not APPEND
    max_literals_per_command: int = field(default=1000, metadata=_parser(_positive_int))
    sort_cache_size: int = field(default=64 * 1024**2, metadata=_parser(parse_size))  # 0 = off


@dataclass(frozen=True)
class QueueConfig:
    """The outbound queue in state_dir/queue."""

    retry_schedule: tuple[float, ...] = field(
        default=(0.0, 450.0, 900.0, 1800.0, 3600.0, 7200.0, 14400.0, 28800.0, 57600.0),
        metadata={"item": parse_duration},
    )
    max_age: float = field(default=5 * 86400.0, metadata=_parser(_positive_duration))
    delay_notice_after: float = field(default=4 * 3600.0, metadata=_parser(parse_duration))  # 0 = off
    concurrency: int = field(default=20, metadata=_parser(_positive_int))


@dataclass(frozen=True)
class AccountsConfig:
    plus_separator: str = "+"
    postmaster: str = ""  # account that receives postmaster@/abuse@ when no alias exists


@dataclass(frozen=True)
class QuotaConfig:
    """Default per-account limits (RFC 9208); ``pymaild creds quota`` sets an account's own."""

    default_storage: int = field(default=0, metadata=_parser(parse_size))  # 0 = unlimited
    default_messages: int = field(default=0, metadata=_parser(_non_negative_int))  # 0 = unlimited


@dataclass(frozen=True)
class ChecksConfig:
    spf: bool = True
    dkim: bool = True
    dmarc: bool = True
    dmarc_reject_action: str = field(
        default="reject", metadata=_parser(_choice("reject", "junk", "accept"))
    )
    dmarc_quarantine_action: str = field(
        default="junk", metadata=_parser(_choice("junk", "accept", "reject"))
    )
    spf_fail_action: str = field(
        default="accept", metadata=_parser(_choice("accept", "junk", "reject"))
    )
    dns_temperror_action: str = field(
        default="tempfail", metadata=_parser(_choice("tempfail", "accept"))
    )
    max_dkim_signatures: int = field(default=5, metadata=_parser(_positive_int))
    timeout: float = field(default=20.0, metadata=_parser(_positive_duration))


@dataclass(frozen=True)
class DKIMConfig:
    selector: str = field(default="default", metadata=_parser(_selector))  # rsa-2048
    ed25519_selector: str = field(default="", metadata=_parser(lambda v: v and _selector(v)))


@dataclass(frozen=True)
class MTASTSConfig:
    """The MTA-STS policy we publish for our own domains (RFC 8461)."""

    mode: str = field(default="testing", metadata=_parser(_choice("testing", "enforce", "none")))
    max_age: float = field(default=604800.0, metadata=_parser(_positive_duration))


@dataclass(frozen=True)
class DNSConfig:
    nameservers: tuple[str, ...] = ()
    timeout: float = field(default=10.0, metadata=_parser(parse_duration))


@dataclass(frozen=True)
class DeliveryConfig:
    mx_port: int = field(default=25, metadata=_parser(_positive_int))
    relay: str = field(default="", metadata=_parser(parse_hostport))
    relay_tls: str = field(default="starttls", metadata=_parser(_choice("starttls", "implicit", "none")))
    relay_username: str = ""
    relay_password_file: str = ""  # a file holding the relay password, so it is not in the config
    mta_sts: bool = True
    mta_sts_port: int = field(default=443, metadata=_parser(_positive_int))
    ca_file: str = ""  # CA bundle for MTA-STS and relay certificates; empty = the system's
    connect_timeout: float = field(default=30.0, metadata=_parser(_positive_duration))
    command_timeout: float = field(default=300.0, metadata=_parser(_positive_duration))
    data_timeout: float = field(default=600.0, metadata=_parser(_positive_duration))
    source_address: str = field(default="", metadata=_parser(lambda v: _ip_or_empty(v)))


@dataclass(frozen=True)
class LogConfig:
    level: str = field(default="info", metadata=_parser(_choice("debug", "info", "warning", "error")))


@dataclass(frozen=True)
class Config:
    hostname: str = field(metadata=_parser(parse_domain))
    primary_domain: str = field(metadata=_parser(parse_domain))
    local_domains: tuple[str, ...] = field(metadata={"item": parse_domain})
    state_dir: str
    tls: TLSConfig = field(default_factory=TLSConfig)
    listen: ListenConfig = field(default_factory=ListenConfig)
    smtp: SMTPConfig = field(default_factory=SMTPConfig)
    stress: StressConfig = field(default_factory=StressConfig)
    submission: SubmissionConfig = field(default_factory=SubmissionConfig)
    imap: IMAPConfig = field(default_factory=IMAPConfig)
    queue: QueueConfig = field(default_factory=QueueConfig)
    accounts: AccountsConfig = field(default_factory=AccountsConfig)
    quota: QuotaConfig = field(default_factory=QuotaConfig)
    checks: ChecksConfig = field(default_factory=ChecksConfig)
    dkim: DKIMConfig = field(default_factory=DKIMConfig)
    mta_sts: MTASTSConfig = field(default_factory=MTASTSConfig)
    dns: DNSConfig = field(default_factory=DNSConfig)
    delivery: DeliveryConfig = field(default_factory=DeliveryConfig)
    log: LogConfig = field(default_factory=LogConfig)
    path: str = field(default="", metadata={"internal": True})

    # ---- derived paths: one place decides the state layout
    @property
    def state_path(self) -> Path:
        return Path(self.state_dir)

    @property
    def mail_dir(self) -> Path:
        return self.state_path / "mail"

    @property
    def dkim_dir(self) -> Path:
        return self.state_path / "dkim"

    @property
    def queue_dir(self) -> Path:
        return self.state_path / "queue"

    @property
    def accounts_db(self) -> Path:
        return self.state_path / "accounts.db"

    @property
    def cert_path(self) -> Path:
        return Path(self.tls.cert) if self.tls.cert else self.state_path / "tls" / "fullchain.pem"

    @property
    def key_path(self) -> Path:
        return Path(self.tls.key) if self.tls.key else self.state_path / "tls" / "privkey.pem"

    @property
    def ed25519_selector(self) -> str:
        return self.dkim.ed25519_selector or f"{self.dkim.selector}-ed25519"

    def is_local_domain(self, domain: str) -> bool:
        return domain.rstrip(".").lower() in self.local_domains




# ---------------------------------------------------------------------------- loader


def _type_name(tp: Any) -> str:
    if tp is str:
        return "a string"
    if tp is bool:
        return "true or false"
    if tp is int:
        return "a whole number"
    if tp is float:
        return "a number"
    return "a list" if typing.get_origin(tp) is tuple else "a table"


def _convert(value: Any, tp: Any, meta: typing.Mapping[str, Any], file: str, key: str) -> Any:
    parse = meta.get("parse")
    try:
        if parse is not None:
            return parse(value)
        origin = typing.get_origin(tp)
        if origin is tuple:
            if not isinstance(value, list):
                raise ValueError(f"expected a list, got {type(value).__name__}")
            item_type = typing.get_args(tp)[0]
            item_parse = meta.get("item")
            if item_parse is None and item_type == tuple[str, int]:
                item_parse = parse_listen_address
            out = []
            for i, item in enumerate(value):
                item_key = f"{key}[{i}]"
                if item_parse is not None:
                    try:
                        out.append(item_parse(item))
                    except ValueError as exc:
                        raise ConfigError(file, item_key, str(exc)) from None
                else:
                    out.append(_convert(item, item_type, {}, file, item_key))
            return tuple(out)
        if tp is bool:
            if not isinstance(value, bool):
                raise ValueError(f"expected true or false, got {value!r}")
            return value
        if tp is int:
            if isinstance(value, bool) or not isinstance(value, int):
                raise ValueError(f"expected a whole number, got {value!r}")
            return value
        if tp is float:
            if isinstance(value, bool) or not isinstance(value, int | float):
                raise ValueError(f"expected a number, got {value!r}")
            if not math.isfinite(value):
                raise ValueError(f"expected a finite number, got {value!r}")
            return float(value)
        if tp is str:
            if not isinstance(value, str):
                raise ValueError(f"expected a string, got {type(value).__name__} {value!r}")
            _check_text(value)
            return value
    except ValueError as exc:
        raise ConfigError(file, key, str(exc)) from None
    raise ConfigError(file, key, f"expected {_type_name(tp)}")


_CONTROL_RE = re.compile(r"[\x00-\x1f\x7f]")


def _check_text(value: str) -> None:
    """No control characters in any string value: a NUL in a path is a crash later, a
    CR/LF in a name an injection later. Only the string parsers see strings that have
    their own grammar, so plain strings are checked here."""
    m = _CONTROL_RE.search(value)
    if m:
        raise ValueError(f"contains the control character U+{ord(m.group()):04X}")


def _build(cls: type, table: dict[str, Any], file: str, prefix: str) -> Any:
    hints = typing.get_type_hints(cls)
    known = {f.name: f for f in fields(cls) if not f.metadata.get("internal")}
    for key in table:
        if key not in known:
            full = f"{prefix}{key}"
            hint = _suggest(key, known)
            raise ConfigError(file, full, "unknown key" + (f" (did you mean {hint!r}?)" if hint else ""))
    kwargs: dict[str, Any] = {}
    for name, f in known.items():
        full = f"{prefix}{name}"
        tp = hints[name]
        if name not in table:
            if f.default is MISSING and f.default_factory is MISSING:
                raise ConfigError(file, full, "missing required key")
            continue
        value = table[name]
        if isinstance(tp, type) and is_dataclass(tp):
            if not isinstance(value, dict):
                raise ConfigError(file, full, f"expected a [{full}] table")
            kwargs[name] = _build(tp, value, file, full + ".")
        else:
            kwargs[name] = _convert(value, tp, f.metadata, file, full)
    return cls(**kwargs)


def _suggest(key: str, known: typing.Iterable[str]) -> str | None:
    import difflib

    matches = difflib.get_close_matches(key, list(known), n=1, cutoff=0.7)
    return matches[0] if matches else None


def _validate(cfg: Config, file: str) -> None:
    if not cfg.local_domains:
        raise ConfigError(file, "local_domains", "must name at least one domain")
    if cfg.primary_domain not in cfg.local_domains:
        raise ConfigError(
            file, "primary_domain", f"{cfg.primary_domain!r} is not in local_domains"
        )
    if cfg.accounts.plus_separator and (
        len(cfg.accounts.plus_separator) != 1 or cfg.accounts.plus_separator in '@". \\'
    ):
        raise ConfigError(file, "accounts.plus_separator", "must be one character such as + or -")
    if not cfg.state_dir:
        raise ConfigError(file, "state_dir", "must not be empty")
    if os.path.exists(cfg.state_dir) and not os.path.isdir(cfg.state_dir):
        raise ConfigError(file, "state_dir", f"{cfg.state_dir} exists and is not a directory")
    # TLS: with self_signed the pair is generated when missing; otherwise the files must exist.
    if cfg.tls.cert or cfg.tls.key or not cfg.tls.self_signed:
        if bool(cfg.tls.cert) != bool(cfg.tls.key):
            raise ConfigError(file, "tls.key" if cfg.tls.cert else "tls.cert",
                              "tls.cert and tls.key must be given together")
        if not cfg.tls.self_signed and not cfg.tls.cert:
            # Every listener offers TLS (STARTTLS on 25 too), so a certificate is required.
            raise ConfigError(file, "tls.cert", "required: give tls.cert and tls.key"
                              " (or set tls.self_signed = true)")
        if not cfg.tls.self_signed:
            for key, value in (("tls.cert", cfg.tls.cert), ("tls.key", cfg.tls.key)):
                if value and not os.path.isfile(value):
                    raise ConfigError(file, key, f"file not found: {value}")
                if value and not os.access(value, os.R_OK):
                    raise ConfigError(file, key, f"file not readable: {value}")
    for ns_index, ns in enumerate(cfg.dns.nameservers):
        try:
            if (":" in ns and not ns.startswith("[") and ns.count(":") == 1) or ns.startswith("["):
                parse_listen_address(ns)
            else:
                ipaddress.ip_address(ns)
        except ValueError as exc:
            raise ConfigError(file, f"dns.nameservers[{ns_index}]", str(exc)) from None
    seen: dict[tuple[str, int], str] = {}
    for kind in ("smtp", "submission", "submissions", "imap", "imaps", "https", "metrics"):
        for i, addr in enumerate(getattr(cfg.listen, kind)):
            if addr in seen:
                raise ConfigError(file, f"listen.{kind}[{i}]",
                                  f"{addr[0]}:{addr[1]} is already used by listen.{seen[addr]}")
            seen[addr] = kind
    for key, value in (("delivery.ca_file", cfg.delivery.ca_file),
                       ("delivery.relay_password_file", cfg.delivery.relay_password_file)):
        if value and not os.path.isfile(value):
            raise ConfigError(file, key, f"file not found: {value}")
    if not cfg.queue.retry_schedule:
        raise ConfigError(file, "queue.retry_schedule", "needs at least one delay (e.g. [\"0s\"])")
    if cfg.accounts.postmaster and "@" not in cfg.accounts.postmaster:
        raise ConfigError(file, "accounts.postmaster", "expected an address like admin@example.org")


# A config is a few KiB of text; reading more than this means the wrong file was named
# (a log, an mbox, /dev/zero) and must not take the memory of the machine.
MAX_CONFIG_SIZE = 1024 * 1024


def read_config_text(file: str) -> str:
    """The file's text, or ConfigError(file, "", problem) for anything that is not a
    readable UTF-8 text file: missing, unreadable, a directory, too big, binary, not UTF-8.
    Every OSError is covered (not only the expected ones), so no input gives a traceback."""
    try:
        with open(file, "rb") as fh:
            data = fh.read(MAX_CONFIG_SIZE + 1)
    except FileNotFoundError:
        raise ConfigError(file, "", "config file not found (use -c FILE or PYMAILD_CONFIG)") from None
    except PermissionError:
        raise ConfigError(file, "", "config file not readable (permission denied)") from None
    except IsADirectoryError:
        raise ConfigError(file, "", "is a directory, not a config file") from None
    except (OSError, ValueError) as exc:  # ValueError: a NUL in the path
        reason = getattr(exc, "strerror", None) or exc
        raise ConfigError(file, "", f"cannot read config file: {reason}") from None
    if len(data) > MAX_CONFIG_SIZE:
        raise ConfigError(file, "", f"larger than {MAX_CONFIG_SIZE // 1024} KiB: not a config file")
    if b"\0" in data:
        raise ConfigError(file, "", "binary file (contains NUL bytes), not a TOML config")
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = data.count(b"\n", 0, exc.start) + 1
        column = exc.start - (data.rfind(b"\n", 0, exc.start) + 1) + 1
        raise ConfigError(file, "", f"not UTF-8 text: byte 0x{data[exc.start]:02x} at line {line}, "
                          f"column {column} (TOML files are UTF-8)") from None


def load_config(path: str | os.PathLike[str]) -> Config:
    """Read and validate a config file; raise ConfigError naming file, key and problem."""
    file = os.fspath(path)
    text = read_config_text(file)
    try:
        raw = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(file, "", f"not valid TOML: {exc}") from None
    except RecursionError:  # tomllib recurses per nesting level of arrays and tables
        raise ConfigError(file, "", "not valid TOML: nested too deeply") from None
    return config_from_dict(raw, file)


def config_from_dict(raw: dict[str, Any], file: str = "<config>") -> Config:
    cfg: Config = _build(Config, raw, file, "")
    # Relative paths are relative to the config file, so a demo folder is self-contained.
    base = os.path.dirname(os.path.abspath(file)) if file != "<config>" else os.getcwd()

    def absolute(path: str) -> str:
        return path if not path or os.path.isabs(path) else os.path.normpath(os.path.join(base, path))

    cfg = _replace(cfg, state_dir=absolute(cfg.state_dir),
                   tls=_replace(cfg.tls, cert=absolute(cfg.tls.cert), key=absolute(cfg.tls.key)),
                   delivery=_replace(cfg.delivery, ca_file=absolute(cfg.delivery.ca_file),
                                     relay_password_file=absolute(cfg.delivery.relay_password_file)))
    cfg = _replace(cfg, path=file)
    _validate(cfg, file)
    return cfg


def _replace(obj: Any, **changes: Any) -> Any:
    import dataclasses

    return dataclasses.replace(obj, **changes)


def schema_keys(cls: type = Config, prefix: str = "") -> list[str]:
    """Every config key as a dotted name, for docs checks."""
    out: list[str] = []
    hints = typing.get_type_hints(cls)
    for f in fields(cls):
        if f.metadata.get("internal"):
            continue
        tp = hints[f.name]
        if isinstance(tp, type) and is_dataclass(tp):
            out.extend(schema_keys(tp, f"{prefix}{f.name}."))
        else:
            out.append(prefix + f.name)
    return out


def resolve_config_path(cli_value: str | None) -> str:
    return cli_value or os.environ.get("PYMAILD_CONFIG") or DEFAULT_CONFIG_PATH


__all__ = [
    "DEFAULT_CONFIG_PATH",
    "Config",
    "ConfigError",
    "config_from_dict",
    "load_config",
    "parse_duration",
    "parse_size",
    "resolve_config_path",
    "schema_keys",
]


