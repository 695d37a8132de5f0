"""DKIM signing: real keys from ensure_keys(), real signatures, three verifiers.

Every signature is checked by dkimpy (each index), by our verify_dkim() against the
loopback DNS server, and by opendkim-testmsg (libopendkim, Debian package
``opendkim-tools``), an independent C implementation.

opendkim-testmsg has no option to take a key from a file: libopendkim looks keys up
with the system stub resolver (res_nquery, /etc/resolv.conf, port 53). So it runs
inside its own network and mount namespaces (``unshare``): only a loopback interface,
a resolv.conf bind-mounted to say ``nameserver 127.0.0.1``, and a small UDP responder
on 127.0.0.1:53 answering from tests.support.dnsserver's zone. No packet can leave the
machine, and the key it verifies against is the one the test published.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import dkim
import dkim.crypto
import pytest
from dkim.util import parse_tag_value

from mailserver import dkim_crypto
from mailserver.config import Config, config_from_dict
from mailserver.dkim_keys import ED25519_ALGORITHM, RSA_ALGORITHM, DKIMKey, ensure_keys, load_keys
from mailserver.dns.resolver import Resolver
from mailserver.pipeline import dkim_sign
from mailserver.pipeline.dkim_sign import DKIMSigner, DKIMSignError, headers_to_sign, signing_domain
from mailserver.pipeline.dkim_verify import verify_dkim
from tests.support.dnsserver import DNSServer
from tests.support.fixtures import dns_resolver_fixture, dns_server_fixture  # noqa: F401
from tests.support.tools import require_tool

REPO = Path(__file__).resolve().parent.parent
T0 = 1_780_000_000  # a fixed t= so two signing paths can be compared byte for byte

MESSAGE = (
    b"Received: from localhost by mx1.example.org; Mon, 02 Nov 2026 10:00:00 +0000\r\n"
    b"From: Alice <alice@example.org>\r\n"
    b"To: bob@example.com,\r\n"
    b"  carol@example.net\r\n"
    b"Cc: dave@example.com\r\n"
    b"Subject: quarterly   numbers\r\n"
    b"Date: Mon, 02 Nov 2026 10:00:00 +0000\r\n"
    b"Message-ID: <1@example.org>\r\n"
    b"MIME-Version: 1.0\r\n"
    b"Content-Type: text/plain; charset=utf-8\r\n"
    b"List-Unsubscribe: <https://example.org/u/1>\r\n"
    b"List-Unsubscribe-Post: List-Unsubscribe=One-Click\r\n"
    b"Bcc: secret@example.com\r\n"
    b"\r\n"
    b"Hello Bob,  \r\n"
    b"the numbers\t are fine.\r\n"
    b"\r\n"
    b"\r\n"
)


# ----------------------------------------------------------------- keys and helpers


def make_cfg(state: Path, **extra: object) -> Config:
    raw: dict[str, object] = {
        "hostname": "mx1.example.org",
        "primary_domain": "example.org",
        "local_domains": ["example.org", "example.net"],
        "state_dir": str(state),
        "tls": {"self_signed": True},
        "dkim": {"selector": "s2024"},
    }
    raw.update(extra)
    return config_from_dict(raw)


@dataclass(frozen=True)
class KeySet:
    cfg: Config
    keys: list[DKIMKey]  # load_keys() order, including the extra on-disk rsa selector

    def key(self, domain: str, selector: str) -> DKIMKey:
        return next(k for k in self.keys if k.domain == domain and k.selector == selector)


@pytest.fixture(scope="module")
def keyset(tmp_path_factory: pytest.TempPathFactory) -> KeySet:
    """example.org/.net with the configured rsa "s2024" and ed25519 "s2024-ed25519",
    plus a second rsa key "s2025" for example.org dropped into the directory (a
    rotation being prepared). RSA generation is the slow part: once per module."""
    state = tmp_path_factory.mktemp("state")
    cfg = make_cfg(state)
    ensure_keys(cfg)
    future = make_cfg(state, dkim={"selector": "s2025"}, local_domains=["example.org"])
    ensure_keys(future)  # writes example.org.s2025.key (+ an ed25519 one we delete)
    (cfg.dkim_dir / "example.org.s2025-ed25519.key").unlink()
    (cfg.dkim_dir / "example.org.s2025-ed25519.dns").unlink()
    keys = load_keys(cfg)
    return KeySet(cfg, keys)


@pytest.fixture(scope="module")
def signer(keyset: KeySet) -> DKIMSigner:
    return DKIMSigner(keyset.keys)


def txt_records(keys: list[DKIMKey]) -> dict[str, str]:
    return {k.dns_name: k.dns_txt for k in keys}


def dnsfunc_for(keys: list[DKIMKey]):
    records = {name.lower(): txt.encode() for name, txt in txt_records(keys).items()}

    def dnsfunc(name: bytes, timeout: float = 5) -> bytes | None:
        return records.get(name.decode().rstrip(".").lower())

    return dnsfunc


def dkimpy_results(message: bytes, keys: list[DKIMKey]) -> list[bool]:
    """dkim.verify() looks at the first signature only: check each index."""
    n = len(re.findall(rb"(?im)^dkim-signature:", message))
    d = dkim.DKIM(message)
    results = []
    for i in range(n):
        try:
            results.append(bool(d.verify(idx=i, dnsfunc=dnsfunc_for(keys))))
        except dkim.ValidationError:  # how dkimpy reports a body hash mismatch
            results.append(False)
    return results


def split_signatures(block: bytes) -> list[bytes]:
    parts = re.split(rb"(?=^DKIM-Signature:)", block, flags=re.M)
    return [p for p in parts if p]


def tags(signature: bytes) -> dict[bytes, bytes]:
    value = signature.split(b":", 1)[1]
    return {k: re.sub(rb"\s+", b"", v) for k, v in parse_tag_value(value).items()}


def h_list(signature: bytes) -> list[bytes]:
    return tags(signature)[b"h"].split(b":")


# ----------------------------------------------------------------- crypto swap


def test_install_swaps_sign_and_verify() -> None:
    dkim_crypto.install()
    assert dkim.RSASSA_PKCS1_v1_5_sign is dkim_crypto.rsassa_pkcs1_v1_5_sign
    assert dkim.RSASSA_PKCS1_v1_5_verify is dkim_crypto.rsassa_pkcs1_v1_5_verify


@pytest.mark.parametrize("hash_name", ["sha256", "sha1"])
def test_openssl_sign_equals_pure_python(keyset: KeySet, hash_name: str) -> None:
    import hashlib

    pk = dkim.crypto.parse_pem_private_key(keyset.key("example.org", "s2024").dkimpy_privkey)
    for data in (b"", b"message", os.urandom(300)):
        h = getattr(hashlib, hash_name)(data)
        assert dkim_crypto.rsassa_pkcs1_v1_5_sign(h, pk) == dkim.crypto.RSASSA_PKCS1_v1_5_sign(h, pk)


def test_signature_byte_identical_to_dkimpy_pure_python(
    keyset: KeySet, signer: DKIMSigner, monkeypatch: pytest.MonkeyPatch
) -> None:
    ours = split_signatures(signer.sign(MESSAGE, "example.org", timestamp=T0))
    # dkimpy's own DKIM.sign(), its RSA back to the pure-Python pow(), the clock at T0.
    monkeypatch.setattr(dkim, "RSASSA_PKCS1_v1_5_sign", dkim.crypto.RSASSA_PKCS1_v1_5_sign)
    monkeypatch.setattr(time, "time", lambda: T0 + 0.25)
    include = headers_to_sign(dkim.DKIM(MESSAGE).headers)
    for signature, key in zip(ours, signer.keys_for("example.org"), strict=True):
        reference = dkim.sign(
            MESSAGE,
            key.selector.encode(),
            b"example.org",
            key.dkimpy_privkey,
            signature_algorithm=key.dkimpy_algorithm,
            canonicalize=(b"relaxed", b"relaxed"),
            include_headers=include,
        )
        assert signature == reference, key.selector


# ----------------------------------------------------------------- signature content


def test_dual_signed_rsa_on_top_with_sensible_tags(signer: DKIMSigner) -> None:
    before = int(time.time())
    block = signer.sign(MESSAGE, "example.org")
    assert block.endswith(b"\r\n") and b"\n" not in block.replace(b"\r\n", b"")
    sigs = split_signatures(block)
    assert [tags(s)[b"a"] for s in sigs] == [b"rsa-sha256", b"ed25519-sha256"]
    assert [tags(s)[b"s"] for s in sigs] == [b"s2024", b"s2024-ed25519"]
    for s in sigs:
        t = tags(s)
        assert t[b"c"] == b"relaxed/relaxed" and t[b"d"] == b"example.org"
        assert before <= int(t[b"t"]) <= int(time.time())
        assert b"l" not in t and b"x" not in t


def test_header_list_oversigns_singletons(signer: DKIMSigner) -> None:
    h = h_list(split_signatures(signer.sign(MESSAGE, "example.org"))[0])
    assert h.count(b"from") == 2  # one From present, listed twice
    for name in (b"to", b"cc", b"subject", b"date", b"message-id", b"mime-version", b"content-type"):
        assert h.count(name) == 2, name
    # signed once (may legitimately repeat / be added by lists), not oversigned
    assert h.count(b"list-unsubscribe") == 1 and h.count(b"list-unsubscribe-post") == 1
    # never: trace fields change in transit, Bcc must not be exposed
    assert b"received" not in h and b"bcc" not in h and b"dkim-signature" not in h
    # absent fields are not listed (except by oversigning, which needs presence)
    assert b"reply-to" not in h and b"sender" not in h


def test_two_present_copies_listed_three_times() -> None:
    headers = [(b"From", b" a@example.org"), (b"Received", b" x"), (b"Received", b" y"),
               (b"To", b" b@example.com"), (b"to", b" c@example.com")]
    assert headers_to_sign(headers) == [b"from", b"to", b"to", b"from", b"to"]


def test_refuses_without_from_or_key(signer: DKIMSigner) -> None:
    with pytest.raises(DKIMSignError, match="From"):
        signer.sign(b"To: b@example.com\r\nSubject: x\r\n\r\nbody\r\n", "example.org")
    with pytest.raises(DKIMSignError, match=r"example\.com"):
        signer.sign(MESSAGE, "example.com")


# ----------------------------------------------------------------- verification


def test_verifies_with_dkimpy_each_signature(keyset: KeySet, signer: DKIMSigner) -> None:
    for domain, sender in (("example.org", b"alice@example.org"), ("example.net", b"bob@example.net")):
        msg = MESSAGE.replace(b"alice@example.org", sender)
        signed = signer.sign(msg, domain) + msg
        assert dkimpy_results(signed, keyset.keys) == [True, True]


def test_verifies_with_our_verifier(
    keyset: KeySet, signer: DKIMSigner, dns_server: DNSServer, dns_resolver: Resolver
) -> None:
    for name, txt in txt_records(keyset.keys).items():
        dns_server.add(name + ".", "TXT", txt)
    signed = signer.sign(MESSAGE, "example.org") + MESSAGE
    results = asyncio.run(verify_dkim(dns_resolver, signed))
    assert [(r.result, r.algorithm, r.selector) for r in results] == [
        ("pass", "rsa-sha256", "s2024"),
        ("pass", "ed25519-sha256", "s2024-ed25519"),
    ]
    altered = signed.replace(b"are fine", b"are bad")
    results = asyncio.run(verify_dkim(dns_resolver, altered))
    assert [(r.result, r.reason) for r in results] == [("fail", "body hash mismatch")] * 2


def test_relaxed_survives_refolding_and_whitespace(keyset: KeySet, signer: DKIMSigner) -> None:
    signed = signer.sign(MESSAGE, "example.org") + MESSAGE
    relayed = signed.replace(b"Subject: quarterly   numbers", b"Subject: quarterly\r\n numbers")
    relayed = relayed.replace(b"Hello Bob,  \r\n", b"Hello Bob,\r\n")
    assert relayed != signed
    assert dkimpy_results(relayed, keyset.keys) == [True, True]


def test_altered_body_or_header_fails(keyset: KeySet, signer: DKIMSigner) -> None:
    signed = signer.sign(MESSAGE, "example.org") + MESSAGE
    assert dkimpy_results(signed.replace(b"are fine", b"are bad"), keyset.keys) == [False, False]
    assert dkimpy_results(signed + b"P.S. appended\r\n", keyset.keys) == [False, False]
    assert dkimpy_results(signed.replace(b"Subject: q", b"Subject: Q"), keyset.keys) == [False, False]


def plain_signature(keyset: KeySet, include: list[bytes]) -> bytes:
    """A control: the same rsa key, but every field in h= once (no oversigning)."""
    key = keyset.key("example.org", "s2024")
    return dkim.sign(MESSAGE, b"s2024", b"example.org", key.dkimpy_privkey,
                     canonicalize=(b"relaxed", b"relaxed"), include_headers=include)


def test_second_from_or_subject_breaks_signature(keyset: KeySet, signer: DKIMSigner) -> None:
    signed = signer.sign(MESSAGE, "example.org") + MESSAGE
    head, _, body = signed.partition(b"\r\n\r\n")
    for evil in (b"From: CEO <ceo@example.org>", b"Subject: please wire the money"):
        on_top = evil + b"\r\n" + signed
        at_bottom = head + b"\r\n" + evil + b"\r\n\r\n" + body
        assert dkimpy_results(on_top, keyset.keys) == [False, False], evil
        assert dkimpy_results(at_bottom, keyset.keys) == [False, False], evil
    # Control: with Subject signed only once, an added Subject on top passes (RFC 6376
    # §5.4.2 hashes the bottom-most instance), so the failure above is the oversigning.
    # (dkimpy's verifier counts an extra From by itself, bug #644046, so From cannot
    # serve as the control here; the opendkim test below has one.)
    plain = plain_signature(keyset, [b"from", b"subject"])
    assert dkimpy_results(b"Subject: please wire the money\r\n" + plain + MESSAGE, keyset.keys) == [True]


@pytest.mark.parametrize(
    "body",
    [b"", b"\r\n\r\n", b"bare\nLF\nlines\n", b"no final newline", b"x" * 100 + b"\r\n" * 3],
    ids=["empty", "blank-lines", "bare-lf", "no-eol", "trailing-blank"],
)
def test_body_edge_cases(keyset: KeySet, signer: DKIMSigner, body: bytes) -> None:
    msg = b"From: a@example.org\r\nSubject: s\r\n\r\n" + body
    assert dkimpy_results(signer.sign(msg, "example.org") + msg, keyset.keys) == [True, True]


@pytest.mark.parametrize("inline_max", [0, 64 * 1024])
def test_sign_async_thread_or_inline_same_bytes(
    keyset: KeySet, signer: DKIMSigner, monkeypatch: pytest.MonkeyPatch, inline_max: int
) -> None:
    monkeypatch.setattr(dkim_sign, "INLINE_MAX", inline_max)
    big = MESSAGE + b"".join(b"line %d of a long body\r\n" % i for i in range(20_000))
    assert len(MESSAGE) <= 64 * 1024 < len(big)
    threads: list[str] = []
    real_sign = DKIMSigner.sign

    def spy(self: DKIMSigner, data: bytes, domain: str, *, timestamp: int | None = None) -> bytes:
        threads.append(threading.current_thread().name)
        return real_sign(self, data, domain, timestamp=timestamp)

    monkeypatch.setattr(DKIMSigner, "sign", spy)

    async def both() -> tuple[bytes, bytes]:
        return (await signer.sign_async(big, "example.org", timestamp=T0),
                await signer.sign_async(MESSAGE, "example.org", timestamp=T0))

    big_block, small_block = asyncio.run(both())
    assert threads[0].startswith("dkim-sign")  # big: always off the loop
    assert (threads[1] == "MainThread") == (inline_max > 0)
    # Both algorithms are deterministic: same input and t= give the same bytes.
    assert big_block == real_sign(signer, big, "example.org", timestamp=T0)
    assert small_block == real_sign(signer, MESSAGE, "example.org", timestamp=T0)
    assert dkimpy_results(big_block + big, keyset.keys) == [True, True]


# ----------------------------------------------------------------- selectors / rotation


def test_default_policy_one_key_per_algorithm_configured_first(keyset: KeySet, signer: DKIMSigner) -> None:
    # s2025 is on disk and loaded (so `pymaild dns` can show it) but does not sign.
    assert "s2025" in [k.selector for k in keyset.keys if k.domain == "example.org"]
    assert [(k.selector, k.algorithm) for k in signer.keys_for("example.org")] == [
        ("s2024", RSA_ALGORITHM),
        ("s2024-ed25519", ED25519_ALGORITHM),
    ]
    assert signer.domains == {"example.org", "example.net"}


def test_rotation_config_switch_and_explicit_selectors(keyset: KeySet) -> None:
    # Config now names s2025: load_keys puts it first, so it becomes the rsa signer.
    switched = {"selector": "s2025", "ed25519_selector": "s2024-ed25519"}
    after = load_keys(make_cfg(keyset.cfg.state_path, dkim=switched))
    rotated = DKIMSigner(after)
    assert [k.selector for k in rotated.keys_for("example.org")] == ["s2025", "s2024-ed25519"]
    # Overlap period, explicitly: both rsa selectors sign.
    both = DKIMSigner(keyset.keys, selectors={"example.org": ["s2024", "s2025"]})
    block = both.sign(MESSAGE, "example.org")
    assert [tags(s)[b"s"] for s in split_signatures(block)] == [b"s2024", b"s2025"]
    assert dkimpy_results(block + MESSAGE, keyset.keys) == [True, True]
    # Domains not named keep the default policy.
    assert [k.selector for k in both.keys_for("example.net")] == ["s2024", "s2024-ed25519"]
    with pytest.raises(ValueError, match="s2026"):
        DKIMSigner(keyset.keys, selectors={"example.org": ["s2026"]})
    with pytest.raises(ValueError, match=r"example\.com"):
        DKIMSigner(keyset.keys, selectors={"example.com": ["s2024"]})


# ----------------------------------------------------------------- signing domain

LOCAL = {"example.org", "example.net", "xn--bcher-kva.example"}


@pytest.mark.parametrize(
    ("from_field", "expected"),
    [
        (b"From: Alice <alice@example.org>", "example.org"),
        (b"From: alice@EXAMPLE.NET.", "example.net"),
        (b'From: "Smith, Al (x@example.com)" <al@example.org>', "example.org"),
        (b"From: =?utf-8?q?J=C3=B6rg?=\r\n <j@example.org>", "example.org"),
        (b"From: a@example.org, b@example.org", "example.org"),
        (b"From: a@example.org, b@example.net", None),  # two domains: ambiguous
        (b"From: someone@example.com", None),  # not ours
        (b"From: someone@sub.example.org", None),  # subdomain: no key for it
        (b"From: undisclosed-recipients:;", None),
        (b"From: no-at-sign", None),
        (b"From: b@b\xc3\xbccher.example", "xn--bcher-kva.example"),
        # Obsolete empty list elements (RFC 5322 4.4) are skipped, as DMARC reads them.
        (b"From: a@example.org, , b@example.org", "example.org"),
        # A From the strict parser (DMARC's, submission's) cannot read without guessing
        # is not signed for, though a lenient parser would find example.org in it.
        (b"From: <a@example.org> <b@example.org>", None),
        (b"From: a@example.org (unterminated comment", None),
        (b'From: "unterminated <a@example.org>', None),
    ],
)
def test_signing_domain(from_field: bytes, expected: str | None) -> None:
    msg = b"To: x@example.com\r\n" + from_field + b"\r\nSubject: s\r\n\r\nFrom: body@example.org\r\n"
    assert signing_domain(msg, LOCAL) == expected


def test_signing_domain_none_for_zero_or_two_from() -> None:
    assert signing_domain(b"Subject: s\r\n\r\nFrom: a@example.org\r\n", LOCAL) is None
    two = b"From: a@example.org\r\nFrom: b@example.org\r\n\r\nbody\r\n"
    assert signing_domain(two, LOCAL) is None


# ----------------------------------------------------------------- opendkim-testmsg

# Runs as PID 1 of the namespaces' shell: loopback up, a UDP DNS responder on
# 127.0.0.1:53 serving the test zone, then opendkim-testmsg once per message file.
_NS_HELPER = r"""
import fcntl, json, socket, struct, subprocess, sys, threading
sys.path.insert(0, sys.argv[1])
from tests.support.dnsserver import DNSServer

spec = json.load(open(sys.argv[2]))
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
IFF_UP, IFF_LOOPBACK, IFF_RUNNING = 0x1, 0x8, 0x40
fcntl.ioctl(s, 0x8914, struct.pack("16sH14x", b"lo", IFF_UP | IFF_LOOPBACK | IFF_RUNNING))  # SIOCSIFFLAGS
s.close()
zone = DNSServer()
for name, txt in spec["records"].items():
    zone.add(name + ".", "TXT", txt)
sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
sock.bind(("127.0.0.1", 53))

def serve():
    while True:
        wire, peer = sock.recvfrom(4096)
        answer = zone.handle_wire(wire, "udp")
        if answer is not None:
            sock.sendto(answer, peer)

threading.Thread(target=serve, daemon=True).start()
results = []
for path in spec["messages"]:
    with open(path, "rb") as f:
        p = subprocess.run(["opendkim-testmsg"], stdin=f, capture_output=True, timeout=30)
    results.append([p.returncode, p.stderr.decode(errors="replace").strip()])
print(json.dumps(results))
"""


def _unshare_cmd() -> list[str]:
    # As root no user namespace is needed (and some hosts forbid unprivileged ones).
    return ["unshare", "-mn"] if os.geteuid() == 0 else ["unshare", "-rmn"]


@pytest.fixture(scope="module")
def opendkim(tmp_path_factory: pytest.TempPathFactory) -> Iterator[object]:
    require_tool("opendkim-testmsg", "opendkim-tools")
    require_tool("unshare", "util-linux")
    require_tool("mount", "mount")
    probe = subprocess.run([*_unshare_cmd(), "true"], capture_output=True, text=True)
    if probe.returncode != 0:
        pytest.skip(f"cannot create namespaces for an offline resolver: {probe.stderr.strip()}")
    work = tmp_path_factory.mktemp("opendkim")
    (work / "helper.py").write_text(_NS_HELPER)
    (work / "resolv.conf").write_text("nameserver 127.0.0.1\noptions attempts:1 timeout:2\n")
    counter = iter(range(10**6))

    def verify(messages: list[bytes], records: dict[str, str]) -> list[tuple[int, str]]:
        """opendkim-testmsg's (exit status, stderr) per message; 0 = verified."""
        paths = []
        for msg in messages:
            path = work / f"msg{next(counter)}.eml"
            path.write_bytes(msg)
            paths.append(str(path))
        spec = work / f"spec{next(counter)}.json"
        spec.write_text(json.dumps({"records": records, "messages": paths}))
        script = (f"mount --bind {work / 'resolv.conf'} /etc/resolv.conf && "
                  f"exec {sys.executable} {work / 'helper.py'} {REPO} {spec}")
        proc = subprocess.run([*_unshare_cmd(), "sh", "-c", script],
                              capture_output=True, text=True, timeout=120)
        assert proc.returncode == 0, proc.stderr
        return [(rc, err) for rc, err in json.loads(proc.stdout)]

    yield verify


def test_opendkim_testmsg_verifies_each_signature(keyset: KeySet, signer: DKIMSigner, opendkim) -> None:
    rsa_sig, ed_sig = split_signatures(signer.sign(MESSAGE, "example.org"))
    records = txt_records(keyset.keys)
    other = {k: v for k, v in records.items() if "example.net" in k}
    wrong_key = {"s2024._domainkey.example.org": records["s2024._domainkey.example.net"],
                 "s2024-ed25519._domainkey.example.org": records["s2024-ed25519._domainkey.example.net"]}
    bad, syntax, nokey = "Bad signature", "Syntax error", "Key retrieval failed"
    cases = [  # (name, message, zone, "" for verified or the expected error)
        ("rsa alone", rsa_sig + MESSAGE, records, ""),
        ("ed25519 alone", ed_sig + MESSAGE, records, ""),
        ("both", rsa_sig + ed_sig + MESSAGE, records, ""),
        ("rsa, body altered", rsa_sig + MESSAGE.replace(b"are fine", b"are bad"), records, bad),
        ("ed25519, body altered", ed_sig + MESSAGE.replace(b"are fine", b"are bad"), records, bad),
        ("ed25519, subject altered", ed_sig + MESSAGE.replace(b"Subject: q", b"Subject: Q"), records, bad),
        # libopendkim refuses two From (or Subject, ...) fields by itself, before any
        # signature check: the oversigning proof is the dkimpy test above, with its
        # control. Here the point is only that such a message never passes.
        ("rsa, second From", b"From: ceo@example.org\r\n" + rsa_sig + MESSAGE, records, syntax),
        ("rsa, key not published", rsa_sig + MESSAGE, other, nokey),
        ("rsa, another domain's key", rsa_sig + MESSAGE, wrong_key, bad),
        ("ed25519, another domain's key", ed_sig + MESSAGE, wrong_key, bad),
    ]
    # One namespace per distinct zone; all messages of that zone in one run.
    outcome: dict[str, tuple[int, str]] = {}
    for zone in (records, other, wrong_key):
        batch = [c for c in cases if c[2] is zone]
        for case, result in zip(batch, opendkim([c[1] for c in batch], zone), strict=True):
            outcome[case[0]] = result
    for name, _msg, _zone, expected in cases:
        rc, err = outcome[name]
        if expected:
            assert rc != 0 and expected in err, f"{name}: exit {rc} {err}"
        else:
            assert rc == 0 and not err, f"{name}: exit {rc} {err}"
