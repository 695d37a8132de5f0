"""Certificates and SSL contexts.

One ``TLSManager`` owns the server certificate: it generates a self-signed end-entity pair
when asked to, builds the server ``SSLContext`` (TLS 1.2+), and reloads the certificate when
the files change (certbot renewals) or on SIGHUP. Listeners keep a reference to the
manager's *current* context via ``sni_callback``: swapping ``ssl_obj.context`` inside the
callback makes new handshakes use the new certificate without restarting listeners.
"""

from __future__ import annotations

import contextlib
import datetime
import ipaddress
import logging
import ssl
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from .fsutil import write_file_atomic

log = logging.getLogger("pymaild.tls")

# Mozilla "intermediate" TLS 1.2 suites: forward secrecy and AEAD only. TLS 1.3 suites are
# not configurable through set_ciphers and are all fine.
_TLS12_CIPHERS = ":".join(
    [
        "ECDHE-ECDSA-AES128-GCM-SHA256",
        "ECDHE-RSA-AES128-GCM-SHA256",
        "ECDHE-ECDSA-AES256-GCM-SHA384",
        "ECDHE-RSA-AES256-GCM-SHA384",
        "ECDHE-ECDSA-CHACHA20-POLY1305",
        "ECDHE-RSA-CHACHA20-POLY1305",
        "DHE-RSA-AES128-GCM-SHA256",
        "DHE-RSA-AES256-GCM-SHA384",
    ]
)


class TLSError(Exception):
    """The certificate or key cannot be used; the text says which file and why."""


def generate_self_signed(hostname: str, cert_path: Path, key_path: Path, days: int = 825) -> None:
    """Write a self-signed *end-entity* certificate for ``hostname`` (SAN = hostname).

    Not a CA (BasicConstraints ca=False): Thunderbird refuses a CA certificate used as a
    server certificate even when the user adds an exception. 825 days is the longest
    validity Apple clients accept.
    """
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, hostname)])
    now = datetime.datetime.now(datetime.UTC)
    sans: list[x509.GeneralName] = [x509.DNSName(hostname)]
    with contextlib.suppress(ValueError):
        sans = [x509.IPAddress(ipaddress.ip_address(hostname))]
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=days))
        .add_extension(x509.SubjectAlternativeName(sans), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True, key_encipherment=False, content_commitment=False,
                data_encipherment=False, key_agreement=False, key_cert_sign=False,
                crl_sign=False, encipher_only=False, decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .sign(key, hashes.SHA256())
    )
    key_pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    write_file_atomic(key_path, key_pem, mode=0o600)
    write_file_atomic(cert_path, cert.public_bytes(serialization.Encoding.PEM), mode=0o644)


def server_context(cert_path: Path, key_path: Path, min_version: str = "1.2") -> ssl.SSLContext:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = (
        ssl.TLSVersion.TLSv1_3 if min_version == "1.3" else ssl.TLSVersion.TLSv1_2
    )
    ctx.set_ciphers(_TLS12_CIPHERS)
    ctx.options |= ssl.OP_NO_COMPRESSION | ssl.OP_CIPHER_SERVER_PREFERENCE
    ctx.options |= ssl.OP_NO_RENEGOTIATION
    try:
        ctx.load_cert_chain(str(cert_path), str(key_path))
    except FileNotFoundError as exc:
        raise TLSError(f"{exc.filename}: file not found") from None
    except PermissionError as exc:
        raise TLSError(f"{exc.filename}: permission denied") from None
    except ssl.SSLError as exc:
        reason = exc.reason or exc.strerror or "not a PEM certificate chain and matching private key"
        raise TLSError(f"{cert_path} / {key_path}: cannot load certificate and key: {reason}") from None
    return ctx


@dataclass
class _Stamp:
    cert_mtime: float
    key_mtime: float


class TLSManager:
    """Owns the current server context; listeners get ``context`` once and stay current."""

    def __init__(
        self,
        hostname: str,
        cert_path: Path,
        key_path: Path,
        *,
        self_signed: bool = False,
        min_version: str = "1.2",
    ) -> None:
        self.hostname = hostname
        self.cert_path = cert_path
        self.key_path = key_path
        self.self_signed = self_signed
        self.min_version = min_version
        self._current: ssl.SSLContext | None = None
        self._stamp: _Stamp | None = None
        self.generated = False

    def load(self) -> None:
        """First load: generate the self-signed pair if allowed and missing."""
        if self.self_signed and not (self.cert_path.exists() and self.key_path.exists()):
            log.info("generating self-signed certificate for %s in %s", self.hostname, self.cert_path)
            generate_self_signed(self.hostname, self.cert_path, self.key_path)
            self.generated = True
        self._current = server_context(self.cert_path, self.key_path, self.min_version)
        self._stamp = self._read_stamp()

    def _read_stamp(self) -> _Stamp | None:
        try:
            return _Stamp(self.cert_path.stat().st_mtime, self.key_path.stat().st_mtime)
        except OSError:
            return None

    def reload(self, *, only_if_changed: bool = False) -> bool:
        """Re-read the files; keep the old context if the new pair is broken."""
        stamp = self._read_stamp()
        if only_if_changed and (stamp is None or stamp == self._stamp):
            return False
        try:
            ctx = server_context(self.cert_path, self.key_path, self.min_version)
        except TLSError as exc:
            # A renewal caught half-way (cert written, key not yet) must not take TLS down.
            log.error("tls reload failed, keeping the previous certificate: %s", exc)
            return False
        self._current = ctx
        self._stamp = stamp
        log.info("tls certificate reloaded from %s", self.cert_path)
        return True

    @property
    def current(self) -> ssl.SSLContext:
        if self._current is None:
            raise TLSError("TLS not loaded")
        return self._current

    def listener_context(self) -> ssl.SSLContext:
        """A context for a listener whose handshakes always use the *current* certificate."""
        base = server_context(self.cert_path, self.key_path, self.min_version)

        def pick_current(ssl_obj: ssl.SSLObject, server_name: str | None, _ctx: ssl.SSLContext) -> None:
            if self._current is not None and self._current is not base:
                ssl_obj.context = self._current

        base.sni_callback = pick_current
        return base
