"""DKIM (RFC 6376) signing of outgoing mail, rsa-sha256 and ed25519-sha256 (RFC 8463).

Which domain signs
    The From: domain, when it is one of ours (``signing_domain``): that is the domain
    DMARC aligns against, so a signature with any other d= would not help delivery. A
    From: with several domains, no address, or two From: fields gets no signature.

Which keys sign (per domain)
    By default one key per algorithm: the *first* key of each algorithm in the list
    given, which for ``load_keys()``/``ensure_keys()`` is the configured selector
    (``dkim.selector`` for rsa, ``ed25519_selector`` for ed25519). So every message is
    dual-signed as RFC 8463 §3 recommends, and a key file that merely appears on disk
    (the old selector during a rotation, or a new one being pre-published) does not
    sign: rotation is "create the new key, publish its TXT record, wait for the TTL,
    then point the config at it", and nothing signs with a key receivers cannot find
    yet. ``selectors={"example.com": ["s2024", "s2025"]}`` overrides this per domain
    (every selector listed signs, in that order); a selector with no loaded key is a
    start-up error, not a silent "unsigned".

What a signature looks like
    relaxed/relaxed (survives the header refolding and trailing-space changes that
    relays do), the recommended header list below, each present singleton (From, To,
    Subject, ...) listed once more than it occurs so that a second copy cannot be added
    without breaking the signature (RFC 6376 §8.15), ``t=``, no ``l=`` (a body length
    lets anyone append content), no ``x=``: a signature that expires fails re-checks
    after long queue retries, forwarding and later filtering, and the replay attacks
    x= would limit need the message unchanged anyway.

Speed
    dkimpy builds the header and the signature; RSA goes through OpenSSL via
    ``dkim_crypto`` (~12x dkimpy's pure-Python pow()). Keys are parsed once, and the
    body is hashed once per message (not once per signature) with ``body_hash``, the
    streaming canonicalization the verifier uses (dkimpy's whole-body regex passes hold
    the GIL for long on big messages).
"""

from __future__ import annotations

import asyncio
import base64
import concurrent.futures
import logging
import os
import time
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import dkim
import dkim.crypto
import nacl.encoding
import nacl.signing
from dkim.canonicalization import CanonicalizationPolicy

from mailserver import dkim_crypto
from mailserver.dkim_keys import ED25519_ALGORITHM, RSA_ALGORITHM, DKIMKey
from mailserver.message import FromHeaderError, field_spans, field_value, header_end, parse_mailbox_list
from mailserver.pipeline.dkim_verify import body_hash, body_start

log = logging.getLogger(__name__)

dkim_crypto.install()  # RSA signing through OpenSSL, not dkimpy's pure-Python pow()

# RFC 6376 §5.4.1's list (dkimpy's SHOULD), plus List-Unsubscribe-Post, which RFC 8058
# §4 requires to be signed for one-click unsubscribe to be honoured.
SIGNED_HEADERS: tuple[str, ...] = (
    "from", "sender", "reply-to", "subject", "date", "message-id", "to", "cc",
    "in-reply-to", "references",
    "mime-version", "content-type", "content-transfer-encoding", "content-id",
    "content-description",
    "resent-date", "resent-from", "resent-sender", "resent-to", "resent-cc",
    "resent-message-id",
    "list-id", "list-help", "list-unsubscribe", "list-unsubscribe-post", "list-subscribe",
    "list-post", "list-owner", "list-archive",
)  # fmt: skip

# Fields a message has at most once (RFC 5322 §3.6, RFC 2045 for the MIME ones): a
# second copy is an attack (a MUA may show either), so h= names each one once more than
# it occurs. From is always there (we refuse to sign without it).
OVERSIGNED: frozenset[str] = frozenset({
    "from", "sender", "reply-to", "subject", "date", "message-id", "to", "cc",
    "in-reply-to", "references", "mime-version", "content-type", "content-transfer-encoding",
})  # fmt: skip

# sign_async() signs messages up to this size on the event loop, bigger ones in a
# worker thread. 0: always a thread. Measured (bench/dkim_sign.py, 2 KB, rsa+ed25519):
# inline is at best ~15% faster for one message at a time, no faster with 32 concurrent
# senders, and then stalls the loop for 170+ ms (every queued signature back to back)
# against ~9 ms through the pool. The cost is the RSA operation, not the size, so a
# size threshold would not buy anything.
INLINE_MAX = 0

_CANON = CanonicalizationPolicy.from_c_value(b"relaxed/relaxed")
_POOL = concurrent.futures.ThreadPoolExecutor(
    max_workers=max(2, os.cpu_count() or 2), thread_name_prefix="dkim-sign"
)
_DKIMPY_LOG = logging.getLogger("mailserver.pipeline.dkim_sign.dkimpy")


class DKIMSignError(Exception):
    """The message cannot be signed (no From:, no key for the domain)."""


@dataclass(frozen=True, slots=True)
class _Signer:
    key: DKIMKey
    pk: Any  # what dkimpy's gen_header takes: parsed RSA dict or nacl SigningKey


def _prepare(key: DKIMKey) -> _Signer:
    if key.algorithm == RSA_ALGORITHM:
        return _Signer(key, dkim.crypto.parse_pem_private_key(key.dkimpy_privkey))
    if key.algorithm == ED25519_ALGORITHM:
        return _Signer(key, nacl.signing.SigningKey(key.dkimpy_privkey, encoder=nacl.encoding.Base64Encoder))
    raise ValueError(f"{key.private_key_path}: unsupported DKIM algorithm {key.algorithm!r}")


def headers_to_sign(headers: Sequence[tuple[bytes, bytes]]) -> list[bytes]:
    """The h= list for these (name, value) fields, lowercased: every occurrence of a
    field in ``SIGNED_HEADERS`` in message order, then the oversigned extra entries."""
    wanted = set(SIGNED_HEADERS)
    present = [name.strip().lower() for name, _ in headers]
    names = [n for n in present if n.decode("ascii", "replace") in wanted]
    if b"from" not in names:
        raise DKIMSignError("message has no From: field (RFC 6376 §5.4 requires signing it)")
    counts = Counter(names)
    extra = [n for n in counts if n.decode("ascii") in OVERSIGNED]
    return names + extra


def signing_domain(data: bytes, local_domains: Iterable[str]) -> str | None:
    """The From: domain if it is local and unambiguous, else None (do not sign).

    The From is read with the strict parser DMARC and submission use, so the domain
    signed for is the one receivers align with (RFC 7489 3.1); a From it cannot read
    without guessing (FromHeaderError) is not signed for.
    """
    spans = field_spans(data, "From")
    if len(spans) != 1:
        return None
    try:
        addresses = parse_mailbox_list(field_value(data, spans[0]))
    except FromHeaderError:
        return None
    domains = set()
    for addr in addresses:
        local, at, domain = addr.rpartition("@")
        if not at or not local or not domain:
            return None
        domains.add(domain.strip().rstrip(".").lower())
    if len(domains) != 1:
        return None
    domain = domains.pop()
    if not domain.isascii():
        try:  # config holds A-labels; From may carry the U-label (RFC 6532)
            domain = domain.encode("idna").decode("ascii")
        except UnicodeError:
            return None
    return domain if domain in {d.rstrip(".").lower() for d in local_domains} else None


class DKIMSigner:
    """Signs messages for the domains it has keys for; thread-safe, reusable."""

    def __init__(self, keys: Iterable[DKIMKey], *, selectors: dict[str, list[str]] | None = None) -> None:
        by_domain: dict[str, list[DKIMKey]] = {}
        for key in keys:
            by_domain.setdefault(key.domain.rstrip(".").lower(), []).append(key)
        wanted = {d.rstrip(".").lower(): list(s) for d, s in (selectors or {}).items()}
        self._signers: dict[str, list[_Signer]] = {}
        for domain, domain_keys in by_domain.items():
            if domain in wanted:
                by_selector = {k.selector: k for k in domain_keys}
                missing = [s for s in wanted[domain] if s not in by_selector]
                if missing:
                    raise ValueError(f"DKIM selectors {missing} of {domain} have no key loaded")
                chosen = [by_selector[s] for s in wanted[domain]]
            else:
                chosen, seen = [], set()
                for key in domain_keys:
                    if key.algorithm not in seen:
                        seen.add(key.algorithm)
                        chosen.append(key)
                # RSA on top: verifiers that only look at the first signature
                # (dkim.verify() does) mostly know rsa-sha256, not always ed25519.
                chosen.sort(key=lambda k: k.algorithm != RSA_ALGORITHM)
            self._signers[domain] = [_prepare(k) for k in chosen]
        unknown = set(wanted) - set(by_domain)
        if unknown:
            raise ValueError(f"DKIM selectors given for domains without keys: {sorted(unknown)}")

    @property
    def domains(self) -> frozenset[str]:
        return frozenset(self._signers)

    def keys_for(self, domain: str) -> list[DKIMKey]:
        """The keys that sign for ``domain``, in signature order (topmost first)."""
        return [s.key for s in self._signers.get(domain.rstrip(".").lower(), [])]

    def sign(self, data: bytes, domain: str, *, timestamp: int | None = None) -> bytes:
        """The DKIM-Signature field(s) to put on top of ``data``, CRLF-terminated.

        CPU-bound (~1 ms plus the body hash): call ``sign_async`` from the event loop.
        """
        domain = domain.rstrip(".").lower()
        signers = self._signers.get(domain)
        if not signers:
            raise DKIMSignError(f"no DKIM key for {domain}")
        # dkimpy parses and canonicalizes headers only; the body is hashed once below.
        message = dkim.DKIM(data[: header_end(data)] + b"\r\n", logger=_DKIMPY_LOG)
        include = headers_to_sign(message.headers)
        bh = base64.b64encode(body_hash(data, body_start(data), "relaxed"))
        t = str(int(time.time()) if timestamp is None else timestamp).encode("ascii")
        d = domain.encode("ascii")
        out = []
        for signer in signers:
            algorithm = signer.key.dkimpy_algorithm
            # gen_header reads these two attributes; sign() would set them the same way.
            message.signature_algorithm = algorithm
            message.hasher = dkim.HASH_ALGORITHMS[algorithm]
            # Field order as in dkimpy's DKIM.sign(), so the output is byte-identical to it.
            fields = [
                (b"v", b"1"),
                (b"a", algorithm),
                (b"c", _CANON.to_c_value()),
                (b"d", d),
                (b"i", b"@" + d),
                (b"q", b"dns/txt"),
                (b"s", signer.key.selector.encode("ascii")),
                (b"t", t),
                (b"h", b" : ".join(include)),
                (b"bh", bh),
                (b"b", b"0" * 60),  # placeholder: folds b= onto its own line, as dkimpy does
            ]
            value = message.gen_header(fields, include, _CANON, b"DKIM-Signature", signer.pk)
            out.append(b"DKIM-Signature: " + value)
        return b"".join(out)

    async def sign_async(self, data: bytes, domain: str, *, timestamp: int | None = None) -> bytes:
        """``sign`` in the worker pool (see ``INLINE_MAX``), not on the event loop."""
        if len(data) <= INLINE_MAX:
            return self.sign(data, domain, timestamp=timestamp)
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(_POOL, lambda: self.sign(data, domain, timestamp=timestamp))


__all__ = [
    "INLINE_MAX",
    "OVERSIGNED",
    "SIGNED_HEADERS",
    "DKIMSignError",
    "DKIMSigner",
    "headers_to_sign",
    "signing_domain",
]
