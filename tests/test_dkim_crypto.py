"""The OpenSSL RSA verifier installed into dkimpy agrees with dkimpy's own."""

from __future__ import annotations

import hashlib

import dkim
import dkim.crypto
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa

from mailserver import dkim_crypto


@pytest.fixture(scope="module")
def key():
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


def parsed_public(key: rsa.RSAPrivateKey) -> dict[str, int]:
    der = key.public_key().public_bytes(serialization.Encoding.DER,
                                        serialization.PublicFormat.SubjectPublicKeyInfo)
    return dkim.crypto.parse_public_key(der)


@pytest.mark.parametrize("algorithm", ["sha256", "sha1"])
def test_agrees_with_dkimpy(key, algorithm):
    digest_cls = getattr(hashlib, algorithm)
    from cryptography.hazmat.primitives import hashes

    signature = key.sign(b"message", padding.PKCS1v15(), getattr(hashes, algorithm.upper())())
    pk = parsed_public(key)
    good = digest_cls(b"message")
    bad = digest_cls(b"messagf")
    assert dkim.crypto.RSASSA_PKCS1_v1_5_verify(good, signature, pk) is True
    assert dkim_crypto.rsassa_pkcs1_v1_5_verify(good, signature, pk) is True
    assert dkim.crypto.RSASSA_PKCS1_v1_5_verify(bad, signature, pk) is False
    assert dkim_crypto.rsassa_pkcs1_v1_5_verify(bad, signature, pk) is False
    flipped = bytes([signature[0] ^ 1]) + signature[1:]
    assert dkim_crypto.rsassa_pkcs1_v1_5_verify(good, flipped, pk) is False
    assert dkim_crypto.rsassa_pkcs1_v1_5_verify(good, b"short", pk) is False


def test_installed_into_dkimpy_and_verifies_its_signatures(key):
    dkim_crypto.install()
    assert dkim.RSASSA_PKCS1_v1_5_verify is dkim_crypto.rsassa_pkcs1_v1_5_verify
    pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.TraditionalOpenSSL,
                            serialization.NoEncryption())
    msg = b"From: a@example.com\r\nTo: b@example.org\r\nSubject: x\r\n\r\nbody\r\n"
    sig = dkim.sign(msg, b"s", b"example.com", pem, include_headers=[b"from", b"to", b"subject"])
    import base64

    der = key.public_key().public_bytes(serialization.Encoding.DER,
                                        serialization.PublicFormat.SubjectPublicKeyInfo)
    record = b"v=DKIM1; k=rsa; p=" + base64.b64encode(der)

    def dnsfunc(name, timeout=5):
        return record

    assert dkim.verify(sig + msg, dnsfunc=dnsfunc)
    assert not dkim.verify(sig + msg.replace(b"body", b"bodY"), dnsfunc=dnsfunc)
