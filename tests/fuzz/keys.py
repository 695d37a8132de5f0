"""DKIM keys for the fuzz targets, made once per process."""

from __future__ import annotations

import base64
import functools

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519, rsa


def _spki(key: rsa.RSAPrivateKey) -> bytes:
    der = key.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return base64.b64encode(der)


# cryptography refuses to generate keys under 1024 bits: a 512-bit public key made by openssl.
_RSA512 = (
    b"MFwwDQYJKoZIhvcNAQEBBQADSwAwSAJBAM4/S/76gG+3UOchuAOhvRxdtiqIu2RrUW5MP0LnW6lSOtHCxeLVHfISs4A3LWiG"
    b"Jk9EZvvSGm+w3xyrDSTHuksCAwEAAQ=="
)


@functools.cache
def rsa_private() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=1024)


@functools.cache
def rsa_private_pem() -> bytes:
    return rsa_private().private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.TraditionalOpenSSL,
        serialization.NoEncryption(),
    )


@functools.cache
def public_keys() -> dict[str, bytes]:
    """base64 ``p=`` values: rsa (1024 bits, usable), rsa512 (too short), ed25519."""
    ed = (
        ed25519.Ed25519PrivateKey.generate()
        .public_key()
        .public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    )
    return {"rsa": _spki(rsa_private()), "rsa512": _RSA512, "ed25519": base64.b64encode(ed)}
