"""DKIM verification: messages signed here with dkimpy, keys published in the test DNS."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import random
import re
from dataclasses import dataclass

import dkim
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519, rsa
from dkim.canonicalization import CanonicalizationPolicy

from mailserver.dns.resolver import Resolver
from mailserver.pipeline import dkim_verify
from mailserver.pipeline.dkim_verify import body_hash, body_start, verify_dkim
from tests.support.dnsserver import DNSServer
from tests.support.fixtures import dns_resolver_fixture, dns_server_fixture  # noqa: F401

MESSAGE = (
    b"From: Alice <alice@example.com>\r\n"
    b"To: bob@example.org\r\n"
    b"Subject: quarterly numbers\r\n"
    b"Date: Mon, 02 Nov 2026 10:00:00 +0000\r\n"
    b"Message-ID: <1@example.com>\r\n"
    b"\r\n"
    b"Hello Bob,\r\n"
    b"the numbers are fine.\r\n"
)


@dataclass(frozen=True)
class Keys:
    rsa_pem: bytes
    rsa_txt: str
    ed_seed_b64: bytes
    ed_txt: str
    other_rsa_txt: str  # a different key, for "wrong key" cases


def _rsa_pair() -> tuple[bytes, str]:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.TraditionalOpenSSL,
        serialization.NoEncryption(),
    )
    der = key.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return pem, f"v=DKIM1; k=rsa; p={base64.b64encode(der).decode()}"


@pytest.fixture(scope="module")
def keys() -> Keys:
    # RSA generation is the slow part: once per module.
    rsa_pem, rsa_txt = _rsa_pair()
    _, other = _rsa_pair()
    ed = ed25519.Ed25519PrivateKey.generate()
    seed = ed.private_bytes(
        serialization.Encoding.Raw, serialization.PrivateFormat.Raw, serialization.NoEncryption()
    )
    pub = ed.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return Keys(
        rsa_pem,
        rsa_txt,
        base64.b64encode(seed),
        f"v=DKIM1; k=ed25519; p={base64.b64encode(pub).decode()}",
        other,
    )


def sign_rsa(
    keys: Keys, msg: bytes = MESSAGE, *, selector: bytes = b"rsa", domain: bytes = b"example.com", **kw
) -> bytes:
    return dkim.sign(msg, selector, domain, keys.rsa_pem, **kw) + msg


def sign_ed(
    keys: Keys, msg: bytes = MESSAGE, *, selector: bytes = b"ed", domain: bytes = b"example.com"
) -> bytes:
    return dkim.sign(msg, selector, domain, keys.ed_seed_b64, signature_algorithm=b"ed25519-sha256") + msg


def publish(server: DNSServer, keys: Keys) -> None:
    server.add("rsa._domainkey.example.com", "TXT", keys.rsa_txt)
    server.add("ed._domainkey.example.com", "TXT", keys.ed_txt)


def b_tag(signed: bytes, index: int = 0) -> str:
    sigs = re.findall(rb"DKIM-Signature:.*?(?=\r\n[^ \t])", signed, re.S)
    b = re.search(rb"\bb=([^;]*)", sigs[index]).group(1)
    return re.sub(rb"\s+", b"", b).decode()


# ----------------------------------------------------------------- pass


async def test_rsa_sha256_pass(dns_server: DNSServer, dns_resolver: Resolver, keys: Keys) -> None:
    publish(dns_server, keys)
    signed = sign_rsa(keys)
    (result,) = await verify_dkim(dns_resolver, signed)
    assert result.result == "pass", result.reason
    assert (result.domain, result.selector, result.algorithm) == ("example.com", "rsa", "rsa-sha256")
    assert len(result.header_b) >= 8 and b_tag(signed).startswith(result.header_b)
    assert result.reason == ""


async def test_ed25519_pass(dns_server: DNSServer, dns_resolver: Resolver, keys: Keys) -> None:
    publish(dns_server, keys)
    (result,) = await verify_dkim(dns_resolver, sign_ed(keys))
    assert (result.result, result.algorithm, result.selector) == ("pass", "ed25519-sha256", "ed")


async def test_relaxed_canonicalization_survives_whitespace(
    dns_server: DNSServer, dns_resolver: Resolver, keys: Keys
) -> None:
    publish(dns_server, keys)
    signed = sign_rsa(keys, canonicalize=(b"relaxed", b"relaxed"))
    mangled = signed.replace(b"Subject: quarterly", b"Subject:   quarterly").replace(
        b"are fine.", b"are  fine."
    )
    (result,) = await verify_dkim(dns_resolver, mangled)
    assert result.result == "pass"


async def test_unsigned_gives_no_results(dns_server: DNSServer, dns_resolver: Resolver) -> None:
    assert await verify_dkim(dns_resolver, MESSAGE) == []
    assert dns_server.queries == []


async def test_key_over_tcp(keys: Keys) -> None:
    with DNSServer(udp_limit=300) as server:  # the 2048-bit key record does not fit
        publish(server, keys)
        resolver = Resolver([server.nameserver], lifetime=2)
        (result,) = await verify_dkim(resolver, sign_rsa(keys))
        assert result.result == "pass"
        assert [q.proto for q in server.queries] == ["udp", "tcp"]


async def test_key_split_in_several_strings(
    dns_server: DNSServer, dns_resolver: Resolver, keys: Keys
) -> None:
    txt = keys.rsa_txt
    dns_server.add("rsa._domainkey.example.com", "TXT", [txt[:100], txt[100:300], txt[300:]])
    (result,) = await verify_dkim(dns_resolver, sign_rsa(keys))
    assert result.result == "pass"


# ----------------------------------------------------------------- fail


async def test_body_altered_fails(dns_server: DNSServer, dns_resolver: Resolver, keys: Keys) -> None:
    publish(dns_server, keys)
    for signed in (sign_rsa(keys), sign_ed(keys)):
        (result,) = await verify_dkim(dns_resolver, signed.replace(b"are fine", b"are bad!"))
        assert (result.result, result.reason) == ("fail", "body hash mismatch")


async def test_header_altered_fails(dns_server: DNSServer, dns_resolver: Resolver, keys: Keys) -> None:
    publish(dns_server, keys)
    for signed in (sign_rsa(keys), sign_ed(keys)):
        (result,) = await verify_dkim(dns_resolver, signed.replace(b"quarterly", b"QUARTERLY"))
        assert (result.result, result.reason) == ("fail", "signature did not verify")


async def test_added_second_from_fails(dns_server: DNSServer, dns_resolver: Resolver, keys: Keys) -> None:
    # The classic trick: a second From above the signed one. dkimpy hashes it in.
    publish(dns_server, keys)
    signed = sign_rsa(keys)
    forged = signed.replace(b"From: Alice", b"From: CEO <ceo@example.com>\r\nFrom: Alice", 1)
    (result,) = await verify_dkim(dns_resolver, forged)
    assert result.result == "fail"


async def test_wrong_key_fails(dns_server: DNSServer, dns_resolver: Resolver, keys: Keys) -> None:
    dns_server.add("rsa._domainkey.example.com", "TXT", keys.other_rsa_txt)
    (result,) = await verify_dkim(dns_resolver, sign_rsa(keys))
    assert (result.result, result.reason) == ("fail", "signature did not verify")


async def test_expired_signature_fails(dns_server: DNSServer, dns_resolver: Resolver, keys: Keys) -> None:
    publish(dns_server, keys)
    header = dkim.sign(MESSAGE, b"rsa", b"example.com", keys.rsa_pem)
    # x= long past (RFC 6376 §3.5): refused before the crypto, so b= need not match.
    expired = header.replace(b"; h=", b"; x=1000000000; h=", 1) + MESSAGE
    (result,) = await verify_dkim(dns_resolver, expired)
    assert (result.result, result.reason) == ("fail", "signature expired")


# ----------------------------------------------------------------- several signatures


async def test_every_signature_is_reported(dns_server: DNSServer, dns_resolver: Resolver, keys: Keys) -> None:
    publish(dns_server, keys)
    dns_server.add("other._domainkey.example.net", "TXT", keys.other_rsa_txt)
    good = dkim.sign(MESSAGE, b"ed", b"example.com", keys.ed_seed_b64, signature_algorithm=b"ed25519-sha256")
    bad = dkim.sign(MESSAGE, b"other", b"example.net", keys.rsa_pem)  # signed with a key not published
    results = await verify_dkim(dns_resolver, bad + good + MESSAGE)
    assert [(r.result, r.domain) for r in results] == [("fail", "example.net"), ("pass", "example.com")]
    results = await verify_dkim(dns_resolver, good + bad + MESSAGE)
    assert [(r.result, r.domain) for r in results] == [("pass", "example.com"), ("fail", "example.net")]


async def test_rsa_and_ed25519_together(dns_server: DNSServer, dns_resolver: Resolver, keys: Keys) -> None:
    publish(dns_server, keys)
    r = dkim.sign(MESSAGE, b"rsa", b"example.com", keys.rsa_pem)
    e = dkim.sign(MESSAGE, b"ed", b"example.com", keys.ed_seed_b64, signature_algorithm=b"ed25519-sha256")
    results = await verify_dkim(dns_resolver, e + r + MESSAGE)
    assert [(x.result, x.algorithm) for x in results] == [("pass", "ed25519-sha256"), ("pass", "rsa-sha256")]


async def test_max_signatures(dns_server: DNSServer, dns_resolver: Resolver, keys: Keys) -> None:
    publish(dns_server, keys)
    sig = dkim.sign(MESSAGE, b"rsa", b"example.com", keys.rsa_pem)
    results = await verify_dkim(dns_resolver, sig * 8 + MESSAGE, max_signatures=3)
    assert [r.result for r in results] == ["pass"] * 3
    assert dns_server.count("rsa._domainkey.example.com", "TXT") == 1  # one key, one lookup


# ----------------------------------------------------------------- key problems


async def test_missing_key_is_permerror(dns_server: DNSServer, dns_resolver: Resolver, keys: Keys) -> None:
    (result,) = await verify_dkim(dns_resolver, sign_rsa(keys))
    assert (result.result, result.reason) == ("permerror", "no key")


async def test_non_key_txt_is_no_key(dns_server: DNSServer, dns_resolver: Resolver, keys: Keys) -> None:
    dns_server.add("rsa._domainkey.example.com", "TXT", "hello")
    (result,) = await verify_dkim(dns_resolver, sign_rsa(keys))
    assert result.result == "permerror"


async def test_key_tempfail_is_temperror(dns_server: DNSServer, dns_resolver: Resolver, keys: Keys) -> None:
    publish(dns_server, keys)
    dns_server.servfail("rsa._domainkey.example.com")
    results = await verify_dkim(dns_resolver, sign_ed(keys, sign_rsa(keys)))
    assert [(r.result, r.selector) for r in results] == [("pass", "ed"), ("temperror", "rsa")]


async def test_key_timeout_is_temperror(dns_server: DNSServer, keys: Keys) -> None:
    resolver = Resolver([dns_server.nameserver], lifetime=0.3, attempt_timeout=0.1)
    dns_server.drop("rsa._domainkey.example.com")
    (result,) = await verify_dkim(resolver, sign_rsa(keys))
    assert result.result == "temperror"


async def test_revoked_key_is_permerror(dns_server: DNSServer, dns_resolver: Resolver, keys: Keys) -> None:
    dns_server.add("rsa._domainkey.example.com", "TXT", "v=DKIM1; k=rsa; p=")
    (result,) = await verify_dkim(dns_resolver, sign_rsa(keys))
    assert (result.result, result.reason) == ("permerror", "key revoked (empty p=)")


async def test_garbage_key_is_permerror(dns_server: DNSServer, dns_resolver: Resolver, keys: Keys) -> None:
    dns_server.add("rsa._domainkey.example.com", "TXT", "v=DKIM1; k=rsa; p=AAAAnotakey")
    (result,) = await verify_dkim(dns_resolver, sign_rsa(keys))
    assert result.result == "permerror" and result.reason.startswith("unusable key")


async def test_key_type_mismatch_is_permerror(
    dns_server: DNSServer, dns_resolver: Resolver, keys: Keys
) -> None:
    dns_server.add("rsa._domainkey.example.com", "TXT", keys.ed_txt)
    (result,) = await verify_dkim(dns_resolver, sign_rsa(keys))
    assert (result.result, result.reason) == ("permerror", "key type does not match a=")


async def test_key_hash_restriction(dns_server: DNSServer, dns_resolver: Resolver, keys: Keys) -> None:
    dns_server.add("rsa._domainkey.example.com", "TXT", keys.rsa_txt.replace("k=rsa;", "k=rsa; h=sha1;"))
    (result,) = await verify_dkim(dns_resolver, sign_rsa(keys))
    assert result.result == "permerror" and "h=" in result.reason


async def test_short_rsa_key_is_policy(dns_server: DNSServer, dns_resolver: Resolver, keys: Keys) -> None:
    # A 512-bit public key (RFC 8301 forbids < 1024): refused before any crypto.
    n = (1 << 511) | 0xF1  # any odd 512-bit modulus parses as a key
    small = rsa.RSAPublicNumbers(65537, n).public_key()
    der = small.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    dns_server.add("rsa._domainkey.example.com", "TXT", f"v=DKIM1; p={base64.b64encode(der).decode()}")
    (result,) = await verify_dkim(dns_resolver, sign_rsa(keys))
    assert result.result == "policy" and "512 bits" in result.reason


async def test_rsa_sha1_is_policy(dns_server: DNSServer, dns_resolver: Resolver, keys: Keys) -> None:
    publish(dns_server, keys)
    signed = sign_rsa(keys, signature_algorithm=b"rsa-sha1")
    (result,) = await verify_dkim(dns_resolver, signed)
    assert (result.result, result.algorithm) == ("policy", "rsa-sha1")
    assert dns_server.queries == []  # not even worth a key lookup


# ----------------------------------------------------------------- malformed signatures


@pytest.mark.parametrize(
    ("signature", "reason_part"),
    [
        (b"v=1; a=rsa-sha256; d=example.com; s=rsa; h=from; b=AAAA", "bh="),
        (b"v=1; a=rsa-sha256; bh=AAAA; s=rsa; h=from; b=AAAA", "d="),
        (b"v=1; a=rsa-md5; bh=AAAA; d=example.com; s=rsa; h=from; b=AAAA", "algorithm"),
        (b"v=1; a=rsa-sha256; a=rsa-sha256; d=example.com", "malformed"),
        (b"garbage without tags", "malformed"),
    ],
)
async def test_malformed_signature_is_permerror(
    dns_server: DNSServer, dns_resolver: Resolver, signature: bytes, reason_part: str
) -> None:
    msg = b"DKIM-Signature: " + signature + b"\r\n" + MESSAGE
    (result,) = await verify_dkim(dns_resolver, msg)
    assert result.result == "permerror" and reason_part in result.reason


async def test_invalid_i_tag_is_permerror(dns_server: DNSServer, dns_resolver: Resolver, keys: Keys) -> None:
    publish(dns_server, keys)
    signed = sign_rsa(keys).replace(b"i=@example.com", b"i=@evil.example")
    (result,) = await verify_dkim(dns_resolver, signed)
    assert result.result == "permerror"


async def test_crlf_injection_in_selector_does_not_escape(
    dns_server: DNSServer, dns_resolver: Resolver
) -> None:
    msg = (
        b"DKIM-Signature: v=1; a=rsa-sha256; bh=AAAA; d=example.com; s=a\r\n b; h=from; b=AAAA\r\n" + MESSAGE
    )
    (result,) = await verify_dkim(dns_resolver, msg)
    assert "\n" not in result.selector or result.result != "pass"
    assert result.result != "pass"


async def test_many_messages_concurrently(dns_server: DNSServer, dns_resolver: Resolver, keys: Keys) -> None:
    publish(dns_server, keys)
    signed = [sign_ed(keys, MESSAGE.replace(b"Bob", f"Bob{i}".encode())) for i in range(20)]
    results = await asyncio.gather(*(verify_dkim(dns_resolver, m) for m in signed))
    assert all(r[0].result == "pass" for r in results)
    assert dns_server.count("ed._domainkey.example.com") == 1  # concurrent lookups coalesced


# ----------------------------------------------------------------- body hash == dkimpy's


def dkimpy_body_hash(message: bytes, canon: str, limit: int | None) -> bytes:
    _, body = dkim.rfc822_parse(message)
    body = CanonicalizationPolicy.from_c_value(b"simple/" + canon.encode()).canonicalize_body(body)
    return hashlib.sha256(body if limit is None else body[:limit]).digest()


BODIES = [
    b"",
    b"\r\n",
    b"\r\n\r\n\r\n",
    b"line",
    b"line\r\n",
    b"line\r\n\r\n\r\n",
    b"  \r\n\t\r\n",
    b"a  b\t\tc \r\n  d\t\r\n\r\n",
    b"bare\nlf\n\nmixed\r\nend\n",
    b"cr\ralone\r\r\n",
    b"trailing space at end  ",
    b"x" * 200_000 + b"\r\n" + b"y  \t" * 40_000 + b"\r\n\r\n",  # lines longer than a chunk
    b"".join(b"%d  \t line\r\n" % i + (b"\r\n" if i % 7 == 0 else b"") for i in range(30_000)),
]


@pytest.mark.parametrize("canon", ["simple", "relaxed"])
@pytest.mark.parametrize("body", BODIES, ids=range(len(BODIES)))
@pytest.mark.parametrize("limit", [None, 0, 5, 70_001])
def test_body_hash_matches_dkimpy(body: bytes, canon: str, limit: int | None) -> None:
    message = b"Subject: x\r\n\r\n" + body
    assert body_hash(message, body_start(message), canon, limit) == dkimpy_body_hash(message, canon, limit)


def test_body_hash_random_bodies() -> None:
    rng = random.Random(7026)
    pieces = [b"a", b"b", b" ", b"\t", b"\r\n", b"\n", b"\r", b"\r\n\r\n", b"  \r\n"]
    for _ in range(300):
        body = b"".join(rng.choice(pieces) for _ in range(rng.randrange(0, 60)))
        message = b"Subject: x\r\n\r\n" + body
        for canon in ("simple", "relaxed"):
            got = body_hash(message, body_start(message), canon)
            assert got == dkimpy_body_hash(message, canon, None), (body, canon)


def test_body_hash_with_small_chunks(monkeypatch: pytest.MonkeyPatch) -> None:
    # Chunk boundaries everywhere: the streaming must not depend on where they fall.
    monkeypatch.setattr(dkim_verify, "_BODY_CHUNK", 7)
    rng = random.Random(11)
    pieces = [b"word", b" ", b"\t", b"\r\n", b"\n", b"\r\n\r\n", b"  \r\n"]
    for _ in range(200):
        body = b"".join(rng.choice(pieces) for _ in range(rng.randrange(0, 40)))
        message = b"Subject: x\n\n" + body
        for canon in ("simple", "relaxed"):
            for limit in (None, 3):
                got = body_hash(message, body_start(message), canon, limit)
                assert got == dkimpy_body_hash(message, canon, limit), (body, canon, limit)


@pytest.mark.parametrize(
    ("message", "start"),
    [(b"A: 1\r\n\r\nbody", 8), (b"A: 1\n\nbody", 6), (b"A: 1\r\n", 6), (b"\r\nbody", 2)],
)
def test_body_start(message: bytes, start: int) -> None:
    assert body_start(message) == start


async def test_length_tag(dns_server: DNSServer, dns_resolver: Resolver, keys: Keys) -> None:
    publish(dns_server, keys)
    signed = sign_rsa(keys, length=True)
    (result,) = await verify_dkim(dns_resolver, signed + b"appended by a list\r\n")
    assert result.result == "pass"  # what l= means; DMARC alignment is a separate matter
