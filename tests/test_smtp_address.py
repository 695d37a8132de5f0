"""RFC 5321 path parsing (mailserver.address): what the relay decision gets to see."""

from __future__ import annotations

import pytest

from mailserver.address import (
    MAX_DOMAIN,
    MAX_LOCAL,
    Address,
    AddressError,
    NeedsSMTPUTF8Error,
    ParameterError,
    parse_mailbox,
    parse_path,
    split_path_and_params,
)

# ------------------------------------------------------------------ parse_path: accepted


@pytest.mark.parametrize(
    ("path", "local", "domain"),
    [
        ("<user@example.org>", "user", "example.org"),
        ("<User@EXAMPLE.Org>", "User", "example.org"),  # local case kept, domain lowered
        ("<first.last@sub.example.org>", "first.last", "sub.example.org"),
        ("<a+tag@example.org>", "a+tag", "example.org"),
        ("<!#$%&'*+/=?^_`{|}~-@example.org>", "!#$%&'*+/=?^_`{|}~-", "example.org"),
        ("<user@localhost>", "user", "localhost"),
        ("<user@a-b.c-d.example>", "user", "a-b.c-d.example"),
        ("<user@123.example>", "user", "123.example"),
        ("<user@xn--bcher-kva.example>", "user", "xn--bcher-kva.example"),
        # quoted local parts: unquoted in the result, '@' and spaces are just characters
        ('<"john doe"@example.org>', "john doe", "example.org"),
        ('<"a@b"@example.org>', "a@b", "example.org"),
        ('<"a@evil.example"@example.org>', "a@evil.example", "example.org"),
        ('<"a\\"b"@example.org>', 'a"b', "example.org"),
        ('<"a\\\\b"@example.org>', "a\\b", "example.org"),
        ('<"a\\ b"@example.org>', "a b", "example.org"),
        ('<"simple"@example.org>', "simple", "example.org"),
        ('<".dot."@example.org>', ".dot.", "example.org"),
        # source routes are accepted and ignored (RFC 5321 C / 4.1.1.3)
        ("<@relay.example:user@example.org>", "user", "example.org"),
        ("<@a.example,@b.example:user@example.org>", "user", "example.org"),
        ("<@a.example,@b.example,@c.example:u@example.org>", "u", "example.org"),
        # "%" and "!" are local-part characters: the domain is what is after the last "@"
        ("<user%other.example@example.org>", "user%other.example", "example.org"),
        ("<other.example!user@example.org>", "other.example!user", "example.org"),
        ("<a%b%c@example.org>", "a%b%c", "example.org"),
        # address literals, canonicalised
        ("<user@[192.0.2.1]>", "user", "[192.0.2.1]"),
        ("<user@[010.000.002.001]>", "user", "[10.0.2.1]"),
        ("<user@[255.255.255.255]>", "user", "[255.255.255.255]"),
        ("<user@[IPv6:2001:db8::1]>", "user", "[IPv6:2001:db8::1]"),
        ("<user@[ipv6:2001:DB8:0:0::1]>", "user", "[IPv6:2001:db8::1]"),
        ("<user@[IPv6:::1]>", "user", "[IPv6:::1]"),
        ("<user@[IPv6:::ffff:192.0.2.1]>", "user", "[IPv6:::ffff:c000:201]"),
        # length limits, exactly at the maximum
        ("<" + "a" * MAX_LOCAL + "@example.org>", "a" * MAX_LOCAL, "example.org"),
        ("<a@" + "b" * 63 + ".example>", "a", "b" * 63 + ".example"),
    ],
)
def test_parse_path_ok(path: str, local: str, domain: str) -> None:
    assert parse_path(path) == Address(local, domain)


def test_null_path() -> None:
    assert parse_path("<>", allow_empty=True) is None
    with pytest.raises(AddressError):
        parse_path("<>")


@pytest.mark.parametrize(
    "path",
    [
        "",
        "<",
        ">",
        "user@example.org",  # brackets are required
        "<user@example.org",
        "user@example.org>",
        " <user@example.org>",
        "<user@example.org> ",
        "<user>",
        "<user@>",
        "<@example.org>",
        "<@>",
        "<user@@example.org>",
        "<us er@example.org>",
        "<user@exam ple.org>",
        "<.user@example.org>",
        "<user.@example.org>",
        "<us..er@example.org>",
        "<us(er@example.org>",
        "<us,er@example.org>",
        "<us[er@example.org>",
        "<user@example.org.>",  # trailing dot
        "<user@example.org..>",
        "<user@.example.org>",
        "<user@example..org>",
        "<user@-example.org>",
        "<user@example-.org>",
        "<user@exa_mple.org>",
        "<user@" + "b" * 64 + ".org>",
        "<user@192.0.2.1>",  # an IP address without brackets
        "<user@example.123>",
        # address literals
        "<user@[192.0.2.256]>",
        "<user@[192.0.2]>",
        "<user@[192.0.2.1.5]>",
        "<user@[1234.0.0.1]>",
        "<user@[ 192.0.2.1]>",
        "<user@[IPv6:2001:db8::g]>",
        "<user@[IPv6:1:2:3:4:5:6:7:8:9]>",
        "<user@[IPv6:]>",
        "<user@[2001:db8::1]>",
        "<user@[tag:content]>",
        "<user@[192.0.2.1>",
        "<user@192.0.2.1]>",
        # quoted strings
        '<"unterminated@example.org>',
        '<"a"b@example.org>',
        '<"a""b"@example.org>',
        '<""@example.org>',
        '<"a"@>',
        '<"a">',
        '<"a\\',
        # source routes
        "<@relay.example user@example.org>",
        "<@relay.example,user@example.org>",
        "<@:user@example.org>",
        "<@relay.example:>",
        "<@relay..example:user@example.org>",
        # control characters, anywhere
        "<us\x00er@example.org>",
        "<us\ter@example.org>",
        "<user@example.org\r>",
        "<user@exa\nmple.org>",
        "<us\x7fer@example.org>",
        '<"us\x01er"@example.org>',
        '<"us\ter"@example.org>',
    ],
)
def test_parse_path_refused(path: str) -> None:
    with pytest.raises(AddressError):
        parse_path(path, allow_empty=True)
    with pytest.raises(AddressError):
        parse_path(path, utf8=True)


def test_overlong_local_part() -> None:
    with pytest.raises(AddressError, match="64"):
        parse_path("<" + "a" * (MAX_LOCAL + 1) + "@example.org>")
    # the quoted form counts as written on the wire
    with pytest.raises(AddressError):
        parse_path('<"' + "a" * 63 + '"@example.org>')
    assert parse_path('<"' + "a" * 62 + '"@example.org>') == Address("a" * 62, "example.org")


def test_overlong_domain() -> None:
    label = "b" * 63
    domain = ".".join([label] * 3) + "." + "c" * (MAX_DOMAIN - 3 * 64)  # exactly 255
    assert len(domain) == MAX_DOMAIN
    with pytest.raises(AddressError):  # the whole path would be > 256 octets
        parse_path(f"<a@{domain}>")
    assert parse_mailbox(f"a@{domain}") == Address("a", domain)
    with pytest.raises(AddressError):
        parse_mailbox(f"a@{domain}c")


def test_overlong_path() -> None:
    path = "<" + "a" * 64 + "@" + ".".join(["b" * 60] * 3) + ".example>"
    assert len(path) > 256
    with pytest.raises(AddressError, match="too long"):
        parse_path(path)


# ------------------------------------------------------------------ SMTPUTF8


@pytest.mark.parametrize(
    ("path", "local", "domain"),
    [
        ("<jörg@example.org>", "jörg", "example.org"),
        ("<user@bücher.example>", "user", "xn--bcher-kva.example"),
        ("<user@BÜCHER.example>", "user", "xn--bcher-kva.example"),
        ("<用户@例子.广告>", "用户", "xn--fsqu00a.xn--4rr70v"),
        ("<δοκιμή@παράδειγμα.δοκιμή>", "δοκιμή", "xn--hxajbheg2az3al.xn--jxalpdlp"),
        ('<"jörg müller"@example.org>', "jörg müller", "example.org"),
        ("<a.ö.b@example.org>", "a.ö.b", "example.org"),
    ],
)
def test_utf8_paths(path: str, local: str, domain: str) -> None:
    with pytest.raises(NeedsSMTPUTF8Error):
        parse_path(path)
    assert parse_path(path, utf8=True) == Address(local, domain)


@pytest.mark.parametrize(
    "path",
    [
        "<a@straße.example>",  # IDNA 2003 would map to strasse.example, IDNA 2008 does not
        "<a@\uff45\uff58\uff41\uff4d\uff50\uff4c\uff45.org>",  # fullwidth "example": nameprep -> ASCII
        "<a@example.org\u3002>",  # ideographic full stop
        "<a@exa\u00a0mple.org>",
        "<a\u0085b@example.org>",  # C1 control
        "<a@bü_cher.example>",
        "<a@" + "ü" * 60 + ".example>",  # A-label longer than 63
    ],
)
def test_utf8_paths_refused(path: str) -> None:
    with pytest.raises(AddressError):
        parse_path(path, utf8=True)


def test_non_ascii_error_is_an_address_error() -> None:
    assert issubclass(NeedsSMTPUTF8Error, AddressError)
    assert issubclass(ParameterError, AddressError)


# ------------------------------------------------------------------ Address


@pytest.mark.parametrize(
    ("address", "text"),
    [
        (Address("user", "example.org"), "user@example.org"),
        (Address("first.last", "example.org"), "first.last@example.org"),
        (Address("john doe", "example.org"), '"john doe"@example.org'),
        (Address("a@b", "example.org"), '"a@b"@example.org'),
        (Address('a"b', "example.org"), '"a\\"b"@example.org'),
        (Address("a\\b", "example.org"), '"a\\\\b"@example.org'),
        (Address(".dot", "example.org"), '".dot"@example.org'),
        (Address("a..b", "example.org"), '"a..b"@example.org'),
        (Address("jörg", "example.org"), "jörg@example.org"),
        (Address("user", "[192.0.2.1]"), "user@[192.0.2.1]"),
    ],
)
def test_address_str(address: Address, text: str) -> None:
    assert str(address) == text
    # and it parses back to the same address
    assert parse_path(f"<{text}>", utf8=True) == address


def test_is_literal() -> None:
    assert parse_path("<a@[192.0.2.1]>").is_literal  # type: ignore[union-attr]
    assert parse_path("<a@[IPv6:::1]>").is_literal  # type: ignore[union-attr]
    assert not parse_path("<a@example.org>").is_literal  # type: ignore[union-attr]


# ------------------------------------------------------------------ split_path_and_params


@pytest.mark.parametrize(
    ("arg", "path", "params"),
    [
        ("<a@b.example>", "<a@b.example>", {}),
        ("<>", "<>", {}),
        (" <a@b.example> ", "<a@b.example>", {}),
        ("<a@b.example> SIZE=123", "<a@b.example>", {"SIZE": "123"}),
        ("<a@b.example> size=123 body=8BITMIME", "<a@b.example>", {"SIZE": "123", "BODY": "8BITMIME"}),
        ("<a@b.example>  SMTPUTF8   SIZE=1", "<a@b.example>", {"SMTPUTF8": None, "SIZE": "1"}),
        ("<a@b.example> X-FOO=bar", "<a@b.example>", {"X-FOO": "bar"}),
        ("<a@b.example> AUTH=<>", "<a@b.example>", {"AUTH": "<>"}),
        ("<a@b.example> ORCPT=rfc822;a+40b.example", "<a@b.example>", {"ORCPT": "rfc822;a+40b.example"}),
        ('<"a b"@c.example> SIZE=1', '<"a b"@c.example>', {"SIZE": "1"}),
        ('<"a>b"@c.example> SIZE=1', '<"a>b"@c.example>', {"SIZE": "1"}),
        ('<"a\\">b"@c.example>', '<"a\\">b"@c.example>', {}),
        ("<@r.example:a@b.example> BODY=7BIT", "<@r.example:a@b.example>", {"BODY": "7BIT"}),
    ],
)
def test_split_ok(arg: str, path: str, params: dict[str, str | None]) -> None:
    assert split_path_and_params(arg) == (path, params)


@pytest.mark.parametrize(
    "arg",
    [
        "",
        "a@b.example",
        "a@b.example SIZE=1",
        "<a@b.example",
        '<"a@b.example>',
        "<a@b.example>SIZE=1",
        "<a@b.example>\tSIZE=1",
        "\t<a@b.example>",
    ],
)
def test_split_path_errors(arg: str) -> None:
    with pytest.raises(AddressError) as info:
        split_path_and_params(arg)
    assert not isinstance(info.value, ParameterError)


@pytest.mark.parametrize(
    "arg",
    [
        "<a@b.example> SIZE=1 SIZE=2",
        "<a@b.example> SIZE=1 size=2",
        "<a@b.example> SMTPUTF8 smtputf8",
        "<a@b.example> =1",
        "<a@b.example> -X=1",
        "<a@b.example> S_IZE=1",
        "<a@b.example> SIZE=",
        "<a@b.example> SIZE==1",
        "<a@b.example> SIZE=1=2",
        "<a@b.example> SIZE=1\x00",
        "<a@b.example> SIZE=1\x7f",
        "<a@b.example> SIZE=1\tBODY=7BIT",
        "<a@b.example> SIZE=1\x1cBODY=7BIT",  # str.split() would split on this
        "<a@b.example> KEY\u00e9=1",
    ],
)
def test_split_parameter_errors(arg: str) -> None:
    with pytest.raises(ParameterError):
        split_path_and_params(arg)
