"""Fast RSA for dkimpy: RSASSA-PKCS1-v1_5 through `cryptography` (OpenSSL).

dkimpy 1.1.x does RSA in pure Python (``int2str`` + ``pow``): half of the time of
verifying a message with an rsa-sha256 and an ed25519 signature went there (0.5 ms of
1.04 ms). ``install()`` swaps the one function dkimpy calls for one with the same contract
(hash object, signature bytes, parsed public key dict -> bool). Signatures and results are
unchanged; the tests verify messages signed by dkimpy itself through it.
"""

from __future__ import annotations

import functools
from typing import Any

import dkim
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import padding, rsa, utils

_HASHES: dict[str, hashes.HashAlgorithm] = {"sha256": hashes.SHA256(), "sha1": hashes.SHA1()}


@functools.lru_cache(maxsize=1024)
def _public_key(modulus: int, exponent: int) -> rsa.RSAPublicKey:
    return rsa.RSAPublicNumbers(exponent, modulus).public_key()


def rsassa_pkcs1_v1_5_verify(hash_obj: Any, signature: bytes, public_key: dict[str, int]) -> bool:
    """Drop-in for ``dkim.crypto.RSASSA_PKCS1_v1_5_verify``."""
    algorithm = _HASHES.get(hash_obj.name)
    if algorithm is None:
        return False
    try:
        key = _public_key(public_key["modulus"], public_key["publicExponent"])
        key.verify(signature, hash_obj.digest(), padding.PKCS1v15(), utils.Prehashed(algorithm))
    except (InvalidSignature, ValueError):
        return False
    return True


def install() -> None:
    """Make dkimpy use OpenSSL for RSA verification (idempotent)."""
    dkim.RSASSA_PKCS1_v1_5_verify = rsassa_pkcs1_v1_5_verify  # type: ignore[attr-defined]


install()
