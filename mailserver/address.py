"""RFC 5321 path and mailbox parsing (pure functions, no I/O).

Strict on purpose: relay tricks (``%``, ``!``, quoted ``@``, source routes, trailing dots)
are resolved here into one canonical (local, domain) pair, so the relay decision is made on
the domain the mail would really go to, and never on what a client wrote around it.
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass


class AddressError(ValueError):
    """The path is not a valid RFC 5321 reverse-path/forward-path."""


class NeedsSMTPUTF8Error(AddressError):
    """A non-ASCII address used without the SMTPUTF8 parameter (RFC 6531: 553 5.6.7)."""


class ParameterError(AddressError):
    """The MAIL/RCPT parameters after the path are malformed (501 5.5.4, not an address error)."""


@dataclass(frozen=True, slots=True)
class Address:
    local: str  # as written (quoted-string unquoted); case preserved
    domain: str  # lowercased, no trailing dot; "[1.2.3.4]" for address literals

    def __str__(self) -> str:
        local = self.local
        if not _DOT_STRING_UTF8.fullmatch(local):
            local = '"' + local.replace("\\", "\\\\").replace('"', '\\"') + '"'
        return f"{local}@{self.domain}"

    @property
    def is_literal(self) -> bool:
        return self.domain.startswith("[")


# atext of RFC 5322 (ASCII); UTF-8 bytes above 0x7f are allowed only with SMTPUTF8.
_ATEXT = r"A-Za-z0-9!#$%&'*+/=?^_`{|}~-"
_DOT_STRING = re.compile(rf"[{_ATEXT}]+(?:\.[{_ATEXT}]+)*")
# The non-ASCII range goes *before* _ATEXT's trailing "-": appended after it, "~-\u0080" would
# read as a range (taking in DEL) and everything above U+0080 would be refused.
_ATEXT_UTF8 = r"\u0080-\U0010ffff" + _ATEXT
_DOT_STRING_UTF8 = re.compile(rf"[{_ATEXT_UTF8}]+(?:\.[{_ATEXT_UTF8}]+)*")
_LABEL = r"[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?"
_DOMAIN = re.compile(rf"{_LABEL}(?:\.{_LABEL})*")
_ULABEL = r"[A-Za-z0-9\u0080-\U0010ffff](?:[A-Za-z0-9\u0080-\U0010ffff-]{0,61}[A-Za-z0-9\u0080-\U0010ffff])?"
_DOMAIN_UTF8 = re.compile(rf"{_ULABEL}(?:\.{_ULABEL})*")
_ROUTE = re.compile(rf"@{_LABEL}(?:\.{_LABEL})*(?:,@{_LABEL}(?:\.{_LABEL})*)*:")
# [0-9], not \d: \d matches every Unicode digit and int() would happily convert them.
_IPV4_LITERAL = re.compile(r"\[([0-9]{1,3})\.([0-9]{1,3})\.([0-9]{1,3})\.([0-9]{1,3})\]")
_IPV6_LITERAL = re.compile(r"\[IPv6:([0-9A-Fa-f:.]+)\]", re.IGNORECASE)

MAX_LOCAL = 64  # octets (RFC 5321 4.5.3.1.1)
MAX_DOMAIN = 255  # octets (RFC 5321 4.5.3.1.2)
MAX_PATH = 256  # octets, angle brackets included (RFC 5321 4.5.3.1.3)


def parse_path(text: str, *, utf8: bool = False, allow_empty: bool = False) -> Address | None:
    """Parse ``<local@domain>`` (the angle brackets are required, RFC 5321 4.1.2).

    Returns None for the null path ``<>`` when ``allow_empty`` (MAIL FROM only).
    Source routes ``<@a,@b:user@c>`` are accepted and ignored, as RFC 5321 C requires.
    Raises ``NeedsSMTPUTF8Error`` for a non-ASCII path when ``utf8`` is false.
    """
    if not (len(text) >= 2 and text.startswith("<") and text.endswith(">")):
        raise AddressError("address must be enclosed in <>")
    inner = text[1:-1]
    if inner == "":
        if allow_empty:
            return None
        raise AddressError("empty address not allowed here")
    if len(text.encode("utf-8", "surrogatepass")) > MAX_PATH:
        raise AddressError("address too long")
    if any(ord(c) < 32 or ord(c) == 127 for c in inner):
        raise AddressError("control characters in address")
    if not inner.isascii():
        if not utf8:
            raise NeedsSMTPUTF8Error("non-ASCII address requires SMTPUTF8")
        if any(0x80 <= ord(c) < 0xA0 for c in inner):
            raise AddressError("control characters in address")
    if inner.startswith("@"):
        m = _ROUTE.match(inner)
        if not m:
            raise AddressError("malformed source route")
        inner = inner[m.end() :]
    return parse_mailbox(inner, utf8=utf8)


def parse_mailbox(text: str, *, utf8: bool = False) -> Address:
    """Parse ``local@domain`` (no brackets)."""
    if text.startswith('"'):
        local, rest = _parse_quoted(text, utf8=utf8)
        written = text[: len(text) - len(rest)]
    else:
        at = text.rfind("@")
        if at <= 0:
            raise AddressError("address needs local@domain")
        local, rest = text[:at], text[at:]
        written = local
        pattern = _DOT_STRING_UTF8 if utf8 else _DOT_STRING
        if not pattern.fullmatch(local):
            raise AddressError("invalid local part")
    if not rest.startswith("@"):
        raise AddressError("address needs local@domain")
    if local == "":
        # RFC 5321 4.1.2 allows "" only in theory; nothing can deliver to it.
        raise AddressError("empty local part")
    if len(written.encode("utf-8", "surrogatepass")) > MAX_LOCAL:
        raise AddressError("local part longer than 64 octets")
    return Address(local, _parse_domain(rest[1:], utf8=utf8))


def _parse_quoted(text: str, *, utf8: bool) -> tuple[str, str]:
    """``"quoted string"rest`` -> (unquoted content, rest). RFC 5321 qtextSMTP/quoted-pairSMTP."""
    out: list[str] = []
    i = 1
    while i < len(text):
        c = text[i]
        if c == "\\":
            if i + 1 >= len(text):
                break
            escaped = text[i + 1]
            if not (" " <= escaped <= "~"):
                raise AddressError("invalid quoted-pair in local part")
            out.append(escaped)
            i += 2
            continue
        if c == '"':
            return "".join(out), text[i + 1 :]
        if not (" " <= c <= "~" or (utf8 and ord(c) >= 0xA0)):
            raise AddressError("invalid character in quoted local part")
        out.append(c)
        i += 1
    raise AddressError("unterminated quoted local part")


def _parse_address_literal(domain: str) -> str:
    """``[1.2.3.4]`` / ``[IPv6:...]`` in one canonical spelling (so "is it us?" has one answer)."""
    m4 = _IPV4_LITERAL.fullmatch(domain)
    if m4:
        octets = [int(g) for g in m4.groups()]
        if all(o < 256 for o in octets):
            return "[" + ".".join(str(o) for o in octets) + "]"
        raise AddressError("invalid address literal")
    m6 = _IPV6_LITERAL.fullmatch(domain)
    if m6:
        try:
            return f"[IPv6:{ipaddress.IPv6Address(m6.group(1)).compressed}]"
        except ValueError:
            raise AddressError("invalid IPv6 address literal") from None
    raise AddressError("invalid address literal")


def _parse_domain(domain: str, *, utf8: bool) -> str:
    if not domain:
        raise AddressError("missing domain")
    if domain.startswith("["):
        return _parse_address_literal(domain)
    if domain.endswith("."):
        # "user@example.org." is not valid RFC 5321 syntax; refusing it outright removes a
        # whole class of is-this-domain-local ambiguities.
        raise AddressError("domain must not end with a dot")
    if len(domain.encode("utf-8", "surrogatepass")) > MAX_DOMAIN:
        raise AddressError("domain too long")
    pattern = _DOMAIN_UTF8 if utf8 else _DOMAIN
    if not pattern.fullmatch(domain):
        raise AddressError("invalid domain")
    if not domain.isascii():
        domain = _to_a_labels(domain)
    domain = domain.lower()
    if domain.rsplit(".", 1)[-1].isdigit():
        # "user@192.0.2.1" is a host name with an all-numeric TLD, which does not exist
        # (RFC 3696 2): a bracketless IP address. Address literals must be written [..].
        raise AddressError("all-numeric top-level domain (use an address literal [a.b.c.d])")
    return domain


def _to_a_labels(domain: str) -> str:
    """U-labels -> A-labels, refusing anything the IDNA 2003 mapping would *change*.

    The stdlib codec (IDNA 2003 nameprep) maps e.g. ``ß`` -> ``ss`` and fullwidth letters to
    ASCII, where IDNA 2008 keeps ``ß`` distinct: the relay decision and the delivery would then
    concern a different domain than the one the client wrote. Only domains whose encoding
    round-trips to the same (lowercased) text are accepted.
    """
    try:
        encoded = domain.encode("idna")
        back = encoded.decode("idna")
    except UnicodeError:
        raise AddressError("invalid internationalised domain") from None
    if back.lower() != domain.lower():
        raise AddressError("internationalised domain is not in canonical form")
    ascii_domain = encoded.decode("ascii")
    if len(ascii_domain) > MAX_DOMAIN or not _DOMAIN.fullmatch(ascii_domain):
        raise AddressError("invalid internationalised domain")
    return ascii_domain


_PARAM_KEY = re.compile(r"[A-Za-z0-9][A-Za-z0-9-]*")


def split_path_and_params(arg: str) -> tuple[str, dict[str, str | None]]:
    """``<a@b> SIZE=123 BODY=8BITMIME`` -> ("<a@b>", {"SIZE": "123", "BODY": "8BITMIME"}).

    Raises ``AddressError`` when the path cannot be delimited and ``ParameterError`` when
    the parameters are malformed or repeated.
    """
    arg = arg.strip(" ")
    if not arg.startswith("<"):
        raise AddressError("address must be enclosed in <>")
    # The path may contain spaces inside a quoted local part: find the matching '>'.
    end = _find_path_end(arg)
    path, rest = arg[: end + 1], arg[end + 1 :]
    if rest and not rest.startswith(" "):
        raise AddressError("expected a space after the address")
    params: dict[str, str | None] = {}
    for token in rest.split(" "):
        if not token:
            continue
        key, eq, value = token.partition("=")
        if not _PARAM_KEY.fullmatch(key):
            raise ParameterError(f"malformed parameter {token[:40]!r}")
        # esmtp-value = 1*(%d33-60 / %d62-126), plus UTF-8 under RFC 6531.
        if eq and (not value or any(c == "=" or ord(c) < 33 or 127 <= ord(c) < 160 for c in value)):
            raise ParameterError(f"malformed value for parameter {key[:20]}")
        key = key.upper()
        if key in params:
            raise ParameterError(f"parameter {key[:20]} given twice")
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
