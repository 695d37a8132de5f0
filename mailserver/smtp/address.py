"""RFC 5321 path and mailbox parsing (pure functions, no I/O).

Strict on purpose: relay tricks (``%``, ``!``, quoted ``@``, source routes, trailing dots)
are resolved here into one canonical (local, domain) pair, so the relay decision is made on
the domain the mail would really go to, and never on what a client wrote around it.
"""

from __future__ import annotations

import re
from dataclasses import dataclass


class AddressError(ValueError):
    """The path is not a valid RFC 5321 reverse-path/forward-path."""


@dataclass(frozen=True, slots=True)
class Address:
    local: str  # as written (quoted-string unquoted); case preserved
    domain: str  # lowercased, no trailing dot; "[1.2.3.4]" for address literals

    def __str__(self) -> str:
        local = self.local
        if not _DOT_STRING.fullmatch(local):
            local = '"' + local.replace("\\", "\\\\").replace('"', '\\"') + '"'
        return f"{local}@{self.domain}"

    @property
    def is_literal(self) -> bool:
        return self.domain.startswith("[")


# atext of RFC 5322 (ASCII); UTF-8 bytes above 0x7f are allowed only with SMTPUTF8.
_ATEXT = r"A-Za-z0-9!#$%&'*+/=?^_`{|}~-"
_DOT_STRING = re.compile(rf"[{_ATEXT}]+(?:\.[{_ATEXT}]+)*")
_DOT_STRING_UTF8 = re.compile(rf"[{_ATEXT}\u0080-\U0010ffff]+(?:\.[{_ATEXT}\u0080-\U0010ffff]+)*")
_LABEL = r"[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?"
_DOMAIN = re.compile(rf"{_LABEL}(?:\.{_LABEL})*")
_ULABEL = r"[A-Za-z0-9\u0080-\U0010ffff](?:[A-Za-z0-9\u0080-\U0010ffff-]{0,61}[A-Za-z0-9\u0080-\U0010ffff])?"
_DOMAIN_UTF8 = re.compile(rf"{_ULABEL}(?:\.{_ULABEL})*")
_ROUTE = re.compile(rf"@{_LABEL}(?:\.{_LABEL})*(?:,@{_LABEL}(?:\.{_LABEL})*)*:")
_IPV4_LITERAL = re.compile(r"\[(\d{1,3})\.(\d{1,3})\.(\d{1,3})\.(\d{1,3})\]")
_IPV6_LITERAL = re.compile(r"\[IPv6:[0-9A-Fa-f:.]+\]", re.IGNORECASE)

MAX_LOCAL = 64
MAX_DOMAIN = 255
MAX_PATH = 256


def parse_path(text: str, *, utf8: bool = False, allow_empty: bool = False) -> Address | None:
    """Parse ``<local@domain>`` (the angle brackets are required, RFC 5321 4.1.2).

    Returns None for the null path ``<>`` when ``allow_empty`` (MAIL FROM only).
    Source routes ``<@a,@b:user@c>`` are accepted and ignored, as RFC 5321 C requires.
    """
    if not (text.startswith("<") and text.endswith(">")):
        raise AddressError("address must be enclosed in <>")
    inner = text[1:-1]
    if inner == "":
        if allow_empty:
            return None
        raise AddressError("empty address not allowed here")
    if len(inner) > MAX_PATH:
        raise AddressError("address too long")
    if any(c in inner for c in "\r\n\0") or any(ord(c) < 32 or ord(c) == 127 for c in inner):
        raise AddressError("control characters in address")
    if not utf8 and not inner.isascii():
        raise AddressError("non-ASCII address requires SMTPUTF8")
    if inner.startswith("@"):
        m = _ROUTE.match(inner)
        if not m:
            raise AddressError("malformed source route")
        inner = inner[m.end() :]
    return parse_mailbox(inner, utf8=utf8)


def parse_mailbox(text: str, *, utf8: bool = False) -> Address:
    """Parse ``local@domain`` (no brackets)."""
    if text.startswith('"'):
        local, rest = _parse_quoted(text)
    else:
        at = text.rfind("@")
        if at <= 0:
            raise AddressError("address needs local@domain")
        local, rest = text[:at], text[at:]
        pattern = _DOT_STRING_UTF8 if utf8 else _DOT_STRING
        if not pattern.fullmatch(local):
            raise AddressError("invalid local part")
    if not rest.startswith("@"):
        raise AddressError("address needs local@domain")
    domain = rest[1:]
    if len(local.encode()) > MAX_LOCAL:
        raise AddressError("local part longer than 64 octets")
    return Address(local, _parse_domain(domain, utf8=utf8))


def _parse_quoted(text: str) -> tuple[str, str]:
    out: list[str] = []
    i = 1
    while i < len(text):
        c = text[i]
        if c == "\\":
            if i + 1 >= len(text):
                break
            out.append(text[i + 1])
            i += 2
            continue
        if c == '"':
            return "".join(out), text[i + 1 :]
        out.append(c)
        i += 1
    raise AddressError("unterminated quoted local part")


def _parse_domain(domain: str, *, utf8: bool) -> str:
    if not domain:
        raise AddressError("missing domain")
    if domain.startswith("["):
        m4 = _IPV4_LITERAL.fullmatch(domain)
        if m4 and all(int(g) < 256 for g in m4.groups()):
            return domain
        if _IPV6_LITERAL.fullmatch(domain):
            return domain.lower().replace("ipv6:", "IPv6:")
        raise AddressError("invalid address literal")
    if domain.endswith("."):
        # "user@example.org." is not valid RFC 5321 syntax; refusing it outright removes a
        # whole class of is-this-domain-local ambiguities.
        raise AddressError("domain must not end with a dot")
    if len(domain) > MAX_DOMAIN:
        raise AddressError("domain too long")
    pattern = _DOMAIN_UTF8 if utf8 else _DOMAIN
    if not pattern.fullmatch(domain):
        raise AddressError("invalid domain")
    if not domain.isascii():
        try:
            domain = domain.encode("idna").decode("ascii")
        except UnicodeError:
            raise AddressError("invalid internationalised domain") from None
    return domain.lower()


_PARAM_KEY = re.compile(r"[A-Za-z0-9][A-Za-z0-9-]*")


def split_path_and_params(arg: str) -> tuple[str, dict[str, str | None]]:
    """``<a@b> SIZE=123 BODY=8BITMIME`` -> ("<a@b>", {"SIZE": "123", "BODY": "8BITMIME"})."""
    arg = arg.strip()
    if arg.startswith("<"):
        # The path may contain spaces inside a quoted local part: find the matching '>'.
        end = _find_path_end(arg)
        path, rest = arg[: end + 1], arg[end + 1 :]
        if rest and not rest.startswith(" "):
            raise AddressError("expected a space after the address")
    else:
        raise AddressError("address must be enclosed in <>")
    params: dict[str, str | None] = {}
    for token in rest.split():
        key, eq, value = token.partition("=")
        if not _PARAM_KEY.fullmatch(key):
            raise AddressError(f"malformed parameter {token!r}")
        key = key.upper()
        if key in params:
            raise AddressError(f"parameter {key} given twice")
        params[key] = value if eq else None
    return path, params


def _find_path_end(arg: str) -> int:
    in_quote = False
    i = 1
    while i < len(arg):
        c = arg[i]
        if in_quote and c == "\\":
            i += 2
            continue
        if c == '"':
            in_quote = not in_quote
        elif c == ">" and not in_quote:
            return i
        i += 1
    raise AddressError("unterminated address")
